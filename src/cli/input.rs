//! Reading trails: which files, in which order, line by line with constant memory, with
//! progress on stderr for large inputs.
//!
//! Each input is opened once and read front to back, so a FIFO or a device works as well
//! as a file. No line is held whole beyond [`MAX_LINE`] bytes: a longer one is passed on
//! as damaged with its length and last bytes only, and reading goes on after it, in
//! constant memory — an endless line (`/dev/zero`) is read like `wc` reads it.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
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

/// The `@timestamp` of a regular file's first record. Anything else (a FIFO, a device) is
/// not opened here: it can be read only once, by [`for_each_line`].
fn first_timestamp(p: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct First {
        #[serde(rename = "@timestamp", alias = "time_dt")]
        timestamp: String,
    }
    if !std::fs::metadata(p).ok()?.is_file() {
        return None;
    }
    let mut line = Vec::new();
    BufReader::new(File::open(p).ok()?.take(MAX_LINE as u64))
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

/// The longest line the readers take whole, in bytes (without its newline): 1 MiB. The
/// writer's records are far smaller (see "Record sizes" in docs/events.md); a longer line
/// is reported as damaged.
pub const MAX_LINE: usize = 1 << 20;

/// Bytes kept from the end of a line longer than [`MAX_LINE`]: enough for the integrity
/// fields that end a record, so that verify can still tell whose record it was.
pub const OVERLONG_TAIL: usize = 4096;

/// One line of a trail file.
pub struct Line<'a> {
    /// Index of the file in the list.
    pub file: usize,
    /// 1-based line number.
    pub number: u64,
    /// The bytes without the newline; for an over-long line, only its last
    /// [`OVERLONG_TAIL`] bytes.
    pub bytes: &'a [u8],
    /// Whether the line ended with a newline (the last line of a truncated file does not).
    pub complete: bool,
    /// For a line longer than [`MAX_LINE`]: its length. Such a line is damaged.
    pub overlong: Option<u64>,
}

impl Line<'_> {
    /// Why an over-long line is damaged, in words.
    pub fn overlong_reason(&self) -> Option<String> {
        self.overlong
            .map(|n| format!("{n} bytes long, over the {MAX_LINE}-byte limit of a trail line"))
    }
}

/// Calls `each` for every line of every file, in order, opening each once. A file that
/// cannot be opened or read is reported through `unreadable` and skipped.
pub fn for_each_line(
    files: &[PathBuf],
    progress: &mut Progress,
    mut unreadable: impl FnMut(usize, String),
    mut each: impl FnMut(Line<'_>),
) {
    let mut lines = LineReader::default();
    for (index, path) in files.iter().enumerate() {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                unreadable(index, format!("cannot open {}: {e}", path.display()));
                continue;
            }
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        if let Err((number, e)) = lines.read(&mut reader, index, progress, &mut each) {
            unreadable(
                index,
                format!("cannot read {} after line {number}: {e}", path.display()),
            );
        }
    }
    progress.finish();
}

/// Splits a stream into lines without ever holding more than [`MAX_LINE`] bytes of one.
#[derive(Default)]
struct LineReader {
    /// The line so far, when it spans reads.
    buf: Vec<u8>,
    /// The last bytes of an over-long line.
    tail: Vec<u8>,
    /// The length so far of an over-long line.
    overlong: Option<u64>,
}

impl LineReader {
    /// Reads `reader` to its end; on a read error, returns the number of the last line
    /// passed on.
    fn read(
        &mut self,
        reader: &mut impl BufRead,
        file: usize,
        progress: &mut Progress,
        each: &mut impl FnMut(Line<'_>),
    ) -> std::result::Result<(), (u64, std::io::Error)> {
        let mut number = 0u64;
        self.buf.clear();
        self.tail.clear();
        self.overlong = None;
        loop {
            let avail = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((number, e)),
            };
            if avail.is_empty() {
                if !self.buf.is_empty() || self.overlong.is_some() {
                    number += 1;
                    self.emit(file, number, None, false, each);
                }
                return Ok(());
            }
            let (chunk_len, newline) = match memchr::memchr(b'\n', avail) {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            let used = chunk_len + usize::from(newline);
            if newline && self.buf.is_empty() && self.overlong.is_none() && chunk_len <= MAX_LINE {
                // The whole line is in the read buffer: no copy.
                number += 1;
                self.emit(file, number, Some(&avail[..chunk_len]), true, each);
            } else {
                self.take(&avail[..chunk_len]);
                if newline {
                    number += 1;
                    self.emit(file, number, None, true, each);
                }
            }
            reader.consume(used);
            progress.add(used as u64);
        }
    }

    /// Adds bytes to the current line, switching to counting and keeping the tail once it
    /// passes [`MAX_LINE`].
    fn take(&mut self, chunk: &[u8]) {
        if let Some(n) = &mut self.overlong {
            *n += chunk.len() as u64;
        } else if self.buf.len() + chunk.len() > MAX_LINE {
            self.overlong = Some((self.buf.len() + chunk.len()) as u64);
            self.tail = std::mem::take(&mut self.buf);
        } else {
            self.buf.extend_from_slice(chunk);
            return;
        }
        if chunk.len() >= OVERLONG_TAIL {
            self.tail.clear();
            self.tail
                .extend_from_slice(&chunk[chunk.len() - OVERLONG_TAIL..]);
        } else {
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(OVERLONG_TAIL);
            self.tail.drain(..excess);
        }
        if self.tail.capacity() > 4 * OVERLONG_TAIL {
            self.tail.shrink_to(2 * OVERLONG_TAIL);
        }
    }

    /// Passes on the line ended at a newline or at the end of the input.
    fn emit(
        &mut self,
        file: usize,
        number: u64,
        direct: Option<&[u8]>,
        complete: bool,
        each: &mut impl FnMut(Line<'_>),
    ) {
        let overlong = self.overlong.take();
        let bytes = match (direct, overlong) {
            (Some(b), _) => b,
            (None, Some(_)) => &self.tail[..],
            (None, None) => &self.buf[..],
        };
        each(Line {
            file,
            number,
            bytes,
            complete,
            overlong,
        });
        self.buf.clear();
        self.tail.clear();
        if self.buf.capacity() > 4 * 65536 {
            // One long line must not pin its buffer for the rest of the input.
            self.buf.shrink_to(65536);
        }
    }
}
