//! Reading trails: which files, in which order, line by line with constant memory, with
//! progress on stderr for large inputs.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The trail files named on the command line: files as given, directories expanded to
/// every file whose name contains `.jsonl`. Unless `keep_order`, files are ordered by the
/// timestamp of their first record (then modification time, then name), which puts
/// rotated files before the current one whatever their naming scheme.
pub fn trail_files(inputs: &[PathBuf], keep_order: bool) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta =
            std::fs::metadata(input).with_context(|| format!("cannot read {}", input.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(input)
                .with_context(|| format!("cannot list the directory {}", input.display()))?
            {
                let entry = entry
                    .with_context(|| format!("cannot list the directory {}", input.display()))?;
                let name = entry.file_name();
                if name.to_string_lossy().contains(".jsonl") && entry.path().is_file() {
                    found.push(entry.path());
                }
            }
            if found.is_empty() {
                bail!("{} holds no trail files (*.jsonl*)", input.display());
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    if files.is_empty() {
        bail!("no trail files given");
    }
    if !keep_order {
        let mut keyed: Vec<(Option<String>, Option<std::time::SystemTime>, PathBuf)> = files
            .into_iter()
            .map(|p| (first_timestamp(&p), mtime(&p), p))
            .collect();
        // Files without a readable first record go last, where their errors are reported.
        keyed.sort_by(|a, b| {
            (a.0.is_none(), &a.0, a.1, &a.2).cmp(&(b.0.is_none(), &b.0, b.1, &b.2))
        });
        files = keyed.into_iter().map(|(_, _, p)| p).collect();
    }
    Ok(files)
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn first_timestamp(p: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct First {
        #[serde(rename = "@timestamp")]
        timestamp: String,
    }
    let mut line = Vec::new();
    BufReader::new(File::open(p).ok()?)
        .read_until(b'\n', &mut line)
        .ok()?;
    serde_json::from_slice::<First>(&line)
        .ok()
        .map(|f| f.timestamp)
}

/// Reports reading progress on stderr when the input is large.
pub struct Progress {
    total: u64,
    done: u64,
    last: Instant,
    started: Instant,
    enabled: bool,
    tty: bool,
}

/// Inputs smaller than this are read without progress reports.
const PROGRESS_THRESHOLD: u64 = 64 * 1024 * 1024;

impl Progress {
    /// Progress over `files`, shown when they add up to a large input and not `quiet`.
    pub fn new(files: &[PathBuf], quiet: bool) -> Progress {
        let total = files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Progress {
            total,
            done: 0,
            last: Instant::now(),
            started: Instant::now(),
            enabled: !quiet && total >= PROGRESS_THRESHOLD,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Counts bytes read; reports at most once a second.
    #[inline]
    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.done & 0xfffff < n && self.last.elapsed() >= Duration::from_secs(1)
        {
            self.last = Instant::now();
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let line = format!(
                "keytrail: read {:.0} of {:.0} MiB ({:.0}%), {:.0}s",
                mib(self.done),
                mib(self.total),
                100.0 * self.done as f64 / self.total.max(1) as f64,
                self.started.elapsed().as_secs_f64()
            );
            let mut err = std::io::stderr();
            let _ = if self.tty {
                write!(err, "\r{line}")
            } else {
                writeln!(err, "{line}")
            };
        }
    }

    /// Ends the progress line.
    pub fn finish(&self) {
        if self.enabled && self.tty && self.started.elapsed() >= Duration::from_secs(1) {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// One line of a trail file.
pub struct Line<'a> {
    /// Index of the file in the list.
    pub file: usize,
    /// 1-based line number.
    pub number: u64,
    /// The bytes without the newline.
    pub bytes: &'a [u8],
    /// Whether the line ended with a newline (the last line of a truncated file does not).
    pub complete: bool,
}

/// Calls `each` for every line of every file, in order, reusing one buffer. A file that
/// cannot be opened or read is reported through `unreadable` and skipped.
pub fn for_each_line(
    files: &[PathBuf],
    progress: &mut Progress,
    mut unreadable: impl FnMut(usize, String),
    mut each: impl FnMut(Line<'_>),
) {
    let mut buf = Vec::with_capacity(4096);
    for (index, path) in files.iter().enumerate() {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                unreadable(index, format!("cannot open {}: {e}", path.display()));
                continue;
            }
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut number = 0u64;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    progress.add(n as u64);
                    number += 1;
                    let complete = buf.last() == Some(&b'\n');
                    let bytes = if complete {
                        &buf[..buf.len() - 1]
                    } else {
                        &buf[..]
                    };
                    each(Line {
                        file: index,
                        number,
                        bytes,
                        complete,
                    });
                }
                Err(e) => {
                    unreadable(
                        index,
                        format!("cannot read {} after line {number}: {e}", path.display()),
                    );
                    break;
                }
            }
        }
    }
    progress.finish();
}
