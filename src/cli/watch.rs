//! `keytrail watch`: follows a trail as it is written and raises an alert, one JSON line,
//! when a rule of `[watch]` matches.
//!
//! Files are followed by identity (device and inode), not by name: rotation starts new
//! files and never renames one, and each process with `{pid}` in its path has its own, so
//! a directory is looked at again on every round for files it did not hold before. Only
//! whole lines are evaluated; a line still being written waits for its newline.
//!
//! Every line also goes through the same chain checks as `keytrail verify`
//! ([`super::verify::Incremental`]), so a tampered, missing or reordered record is an
//! alert as soon as it is read.
//!
//! Rules that count (failed logins) use the records' own times, so reading a trail after
//! the fact raises the same alerts as following it live. Only `checkpoint_overdue`
//! compares with the clock.

use super::input::{self, Line, MAX_LINE, OVERLONG_TAIL};
use super::record::{KeyRec, Rec};
use super::verify::{self, Incremental};
use anyhow::{Context, Result, bail};
use keytrail::config::{
    AlertOutput, ConfigError, DEFAULT_CONFIG_PATH, ENV_CONFIG, IntegrityMode, RuleConfig, Severity,
    WatchConfig, WatchSettings,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// Exit status of `--once`: no alert.
pub const EXIT_QUIET: u8 = 0;
/// Exit status of `--once`: at least one alert.
pub const EXIT_ALERTS: u8 = 1;

/// Options of `keytrail watch`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Rules and outputs come from the [watch] section of the configuration (--config, else \
KEYTRAIL_CONFIG, else /etc/keytrail/keytrail.toml when it exists). Without FILES|DIR, \
watch follows [watch] paths, else the directory of [trail] path.\n\n\
Each alert is one JSON line: rule, severity, message, the records that raised it \
(stream and seq), and the key, user and process where there are any.\n\n\
Exit status: with --once, 0 when no alert was raised and 1 when some were; following, \
0 after SIGINT or SIGTERM; 2 on bad usage or unreadable input.")]
pub struct WatchArgs {
    /// Trail files, or directories (every *.jsonl* file in them, including those that
    /// appear later).
    #[arg(value_name = "FILES|DIR")]
    pub inputs: Vec<PathBuf>,
    /// The configuration file holding the [watch] section.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read what the trail holds now, raise its alerts and exit.
    #[arg(long)]
    pub once: bool,
    /// The HMAC key file of a keyed trail (default: `[integrity] key_file`).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The initial key file of a forward-secure trail (default: `[integrity]
    /// initial_key_file`).
    #[arg(long, value_name = "FILE")]
    pub initial_key: Option<PathBuf>,
    /// Keep what was learnt and read in this file across restarts (default: `[watch]
    /// state_file`).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Append alerts to this file instead of the configured output.
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
}

/// Set by SIGINT and SIGTERM: finish the round, save the state, leave.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Runs `keytrail watch`; returns the exit status.
pub fn run(args: &WatchArgs) -> Result<u8> {
    let settings = load_settings(args.config.as_deref())?;
    let mut w = settings.watch.clone();
    if let Some(p) = &args.alerts {
        w.output = AlertOutput::File;
        w.file = Some(p.clone());
    }
    if let Some(p) = &args.state {
        w.state_file = Some(p.clone());
    }
    let inputs = if !args.inputs.is_empty() {
        args.inputs.clone()
    } else if !w.paths.is_empty() {
        w.paths.clone()
    } else {
        let p = &settings.trail.path;
        vec![
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        ]
    };
    let (key, initial_key) = chain_keys(args, &settings);
    let chain = Incremental::new(key.as_deref(), initial_key.as_deref())?;
    let rules = Rules::new(&w.rules, settings.integrity.checkpoint_interval.0);
    let out = Output::open(&w)?;
    let mut watcher = Watcher {
        sources: inputs,
        tails: Vec::new(),
        chain,
        rules,
        out,
        state_file: w.state_file.clone(),
        suppress: HashMap::new(),
        dirty: false,
        last_error: None,
        buf: Vec::new(),
        skip: [
            w.file.as_deref().filter(|_| w.output == AlertOutput::File),
            w.state_file.as_deref(),
            settings.integrity.anchor_file.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect(),
    };
    watcher.load_state()?;
    if !args.once {
        // SAFETY: installing a handler that only stores to an atomic, before any thread
        // is started; SIGINT and SIGTERM then end the loop below cleanly.
        unsafe {
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        }
    }
    let poll = Duration::from_millis(w.poll_ms);
    loop {
        watcher.round(args.once)?;
        if args.once || STOP.load(Ordering::Relaxed) {
            break;
        }
        // Short naps, so that a signal is answered promptly.
        let mut slept = Duration::ZERO;
        while slept < poll && !STOP.load(Ordering::Relaxed) {
            let step = (poll - slept).min(Duration::from_millis(50));
            std::thread::sleep(step);
            slept += step;
        }
    }
    watcher.save_state()?;
    watcher.out.finish();
    Ok(if args.once && watcher.out.raised > 0 {
        EXIT_ALERTS
    } else {
        EXIT_QUIET
    })
}

fn load_settings(explicit: Option<&Path>) -> Result<WatchSettings> {
    let (path, must_exist) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => match std::env::var_os(ENV_CONFIG).filter(|v| !v.is_empty()) {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        },
    };
    WatchSettings::resolve(&path, must_exist).map_err(|e: ConfigError| anyhow::anyhow!(e))
}

/// The keys the chains are verified with: the options, else the configuration's files
/// when this user can read them (a watcher may run without the writers' key, and then
/// counts keyed records as unverified).
fn chain_keys(args: &WatchArgs, s: &WatchSettings) -> (Option<PathBuf>, Option<PathBuf>) {
    let readable = |p: &Option<PathBuf>| p.as_ref().filter(|p| File::open(p).is_ok()).cloned();
    let key = args.key.clone().or_else(|| match s.integrity.mode {
        IntegrityMode::Chained => readable(&s.integrity.key_file),
        // The forward-secure key file moves on with every epoch: only the initial key
        // verifies.
        IntegrityMode::ForwardSecure => None,
    });
    let initial = args
        .initial_key
        .clone()
        .or_else(|| readable(&s.integrity.initial_key_file));
    (key, initial)
}

/// A file being followed.
struct Tail {
    path: PathBuf,
    /// The path as alerts name it.
    name: std::rc::Rc<str>,
    file: File,
    dev: u64,
    ino: u64,
    /// Bytes read so far.
    offset: u64,
    /// The verifier's index of the file.
    index: usize,
    /// Lines passed on.
    lines: u64,
    /// The line being written, not yet ended by a newline.
    partial: Vec<u8>,
    /// For a line past [`MAX_LINE`]: its length so far (`partial` then holds its tail).
    overlong: Option<u64>,
    /// Alerts from records that end at or before this offset were raised before a
    /// restart (from the state file).
    quiet_until: u64,
    /// Seen on the latest look at the sources.
    present: bool,
}

/// One record's place, as alerts name it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Place {
    stream: String,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    file: String,
    line: u64,
}

/// A record's place while it is evaluated, borrowed from its line: most records raise
/// nothing, and then nothing is copied.
#[derive(Clone, Copy)]
struct At<'a> {
    stream: &'a str,
    seq: u64,
    time: Option<&'a str>,
    file: &'a str,
    line: u64,
}

impl At<'_> {
    fn place(&self) -> Place {
        Place {
            stream: self.stream.to_string(),
            seq: self.seq,
            time: self.time.map(str::to_string),
            file: self.file.to_string(),
            line: self.line,
        }
    }

    /// Makes `p` this place, reusing its strings.
    fn store(&self, p: &mut Place) {
        p.stream.clear();
        p.stream.push_str(self.stream);
        p.seq = self.seq;
        match (&mut p.time, self.time) {
            (Some(t), Some(new)) => {
                t.clear();
                t.push_str(new);
            }
            (t, new) => *t = new.map(str::to_string),
        }
        p.file.clear();
        p.file.push_str(self.file);
        p.line = self.line;
    }
}

struct Watcher {
    sources: Vec<PathBuf>,
    tails: Vec<Tail>,
    chain: Incremental,
    rules: Rules,
    out: Output,
    state_file: Option<PathBuf>,
    /// From the state file: how far each file (device:inode) was read before.
    suppress: HashMap<String, u64>,
    dirty: bool,
    /// The latest problem finding files, said once until it changes.
    last_error: Option<String>,
    /// Files never read as trail even in a trail directory: the alert file (alerts would
    /// raise alerts), the state file and the anchor file (copies of records, which would
    /// read as duplicates).
    skip: Vec<(u64, u64)>,
    /// The read buffer, kept from round to round.
    buf: Vec<u8>,
}

fn file_id(dev: u64, ino: u64) -> String {
    format!("{dev}:{ino}")
}

impl Watcher {
    /// One look at the trail: new files, new lines, then the clock's rules.
    fn round(&mut self, once: bool) -> Result<()> {
        match self.discover(once) {
            Ok(()) => self.last_error = None,
            Err(e) if once => return Err(e),
            // Following, a passing problem (a directory being replaced, permissions being
            // fixed) must not end the watch: it is said once, and tried again.
            Err(e) => {
                let text = format!("{e:#}");
                if self.last_error.as_deref() != Some(&text) {
                    super::text::errln!("keytrail watch: {text}; trying again");
                    self.last_error = Some(text);
                }
            }
        }
        for i in 0..self.tails.len() {
            self.read_tail(i);
        }
        // Files that are gone (retention) and read to their end are let go.
        self.tails
            .retain(|t| t.present || t.file.metadata().is_ok_and(|m| m.len() > t.offset));
        let now = SystemTime::now();
        let alerts = self.rules.clock(now);
        for a in alerts {
            self.out.raise(a);
            self.dirty = true;
        }
        self.out.reap();
        if self.dirty
            && !once
            && let Err(e) = self.save_state()
        {
            super::text::errln!("keytrail watch: {e:#}");
        }
        Ok(())
    }

    /// Finds the files of the sources; opens those not followed yet, oldest first.
    fn discover(&mut self, once: bool) -> Result<()> {
        for t in &mut self.tails {
            t.present = false;
        }
        let mut found: Vec<PathBuf> = Vec::new();
        for src in &self.sources {
            let meta = match std::fs::metadata(src) {
                Ok(m) => m,
                // Following, a trail directory may appear later; read once, it must exist.
                Err(e) if !once && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => bail!("cannot read {}: {e}", src.display()),
            };
            if meta.is_dir() {
                let list = std::fs::read_dir(src)
                    .with_context(|| format!("cannot list the directory {}", src.display()))?;
                for entry in list.flatten() {
                    let name = entry.file_name();
                    if name.to_string_lossy().contains(".jsonl") && entry.path().is_file() {
                        found.push(entry.path());
                    }
                }
            } else {
                found.push(src.clone());
            }
        }
        let mut new = Vec::new();
        for p in found {
            let Ok(m) = std::fs::metadata(&p) else {
                continue;
            };
            if self.skip.contains(&(m.dev(), m.ino())) {
                continue;
            }
            match self
                .tails
                .iter_mut()
                .find(|t| t.dev == m.dev() && t.ino == m.ino())
            {
                Some(t) => t.present = true,
                None => new.push(p),
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        // Oldest first: a stream's rotated file before its current one.
        let new = input::trail_files(&new, false)?;
        for path in new {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    super::text::errln!("keytrail watch: cannot open {}: {e}", path.display());
                    continue;
                }
            };
            let m = file.metadata()?;
            let id = file_id(m.dev(), m.ino());
            let index = self.chain.add_file(path.clone());
            self.tails.push(Tail {
                name: path.display().to_string().into(),
                path,
                file,
                dev: m.dev(),
                ino: m.ino(),
                offset: 0,
                index,
                lines: 0,
                partial: Vec::new(),
                overlong: None,
                quiet_until: self.suppress.get(&id).copied().unwrap_or(0),
                present: true,
            });
        }
        Ok(())
    }

    /// Reads what was appended to a file and evaluates each whole line.
    fn read_tail(&mut self, i: usize) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(64 * 1024, 0);
        self.read_into(i, &mut buf);
        self.buf = buf;
    }

    fn read_into(&mut self, i: usize, buf: &mut [u8]) {
        loop {
            let t = &mut self.tails[i];
            if let Ok(m) = t.file.metadata()
                && m.len() < t.offset
            {
                // Truncated in place: start again from its beginning.
                super::text::errln!(
                    "keytrail watch: {} was truncated; reading it again from the start",
                    t.path.display()
                );
                let _ = t.file.seek(SeekFrom::Start(0));
                t.offset = 0;
                t.partial.clear();
                t.overlong = None;
            }
            let n = match t.file.read(buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    super::text::errln!("keytrail watch: cannot read {}: {e}", t.path.display());
                    return;
                }
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let t = &mut self.tails[i];
                match memchr::memchr(b'\n', rest) {
                    Some(j) => {
                        t.offset += j as u64 + 1;
                        t.lines += 1;
                        let (index, number, live) = (t.index, t.lines, t.offset > t.quiet_until);
                        let name = t.name.clone();
                        if t.partial.is_empty() && t.overlong.is_none() && j <= MAX_LINE {
                            // The whole line is in the buffer: no copy.
                            self.line(index, number, &rest[..j], None, live, &name);
                        } else {
                            take(t, &rest[..j]);
                            let line = std::mem::take(&mut t.partial);
                            let overlong = t.overlong.take();
                            self.line(index, number, &line, overlong, live, &name);
                            let t = &mut self.tails[i];
                            if t.partial.capacity() == 0 {
                                t.partial = line;
                                t.partial.clear();
                            }
                        }
                        rest = &rest[j + 1..];
                    }
                    None => {
                        take(t, rest);
                        t.offset += rest.len() as u64;
                        rest = &[];
                    }
                }
            }
        }
    }

    /// Evaluates one whole line: its chain first, then the record's rules.
    fn line(
        &mut self,
        file: usize,
        number: u64,
        bytes: &[u8],
        overlong: Option<u64>,
        live: bool,
        path: &str,
    ) {
        let findings = self.chain.check_line(Line {
            file,
            number,
            bytes,
            complete: true,
            overlong,
        });
        let mut alerts = Vec::new();
        for f in findings {
            self.rules.chain_finding(f, path, number, &mut alerts);
        }
        if overlong.is_none()
            && let Ok(rec) = serde_json::from_slice::<Rec<'_>>(bytes)
        {
            self.rules.record(&rec, path, number, &mut alerts);
        }
        self.dirty |= !alerts.is_empty() || self.rules.learnt;
        self.rules.learnt = false;
        if live {
            for a in alerts {
                self.out.raise(a);
            }
        }
    }

    fn load_state(&mut self) -> Result<()> {
        let Some(p) = &self.state_file else {
            return Ok(());
        };
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => bail!("cannot read the state file {}: {e}", p.display()),
        };
        let s: State = serde_json::from_str(&text)
            .with_context(|| format!("the state file {} is not keytrail watch's", p.display()))?;
        if s.version != STATE_VERSION {
            bail!(
                "the state file {} has version {}; this keytrail writes version {STATE_VERSION}",
                p.display(),
                s.version
            );
        }
        self.suppress = s.read;
        self.rules.key_users = s.key_users;
        self.rules.overdue_alerted = s.overdue;
        Ok(())
    }

    /// Writes the state file whole, then renames it into place, so that a crash leaves
    /// the old one or the new one.
    fn save_state(&mut self) -> Result<()> {
        let Some(p) = &self.state_file else {
            return Ok(());
        };
        let mut read = BTreeMap::new();
        for t in &self.tails {
            // Only what was read to a line's end counts as seen.
            // (`overlong` is the unfinished line's whole length; `partial` only its end.)
            let unfinished = t.overlong.unwrap_or(t.partial.len() as u64);
            let done = t.offset.saturating_sub(unfinished);
            read.insert(file_id(t.dev, t.ino), done.max(t.quiet_until));
        }
        let state = StateOut {
            version: STATE_VERSION,
            read,
            key_users: &self.rules.key_users,
            overdue: &self.rules.overdue_alerted,
        };
        let tmp = p.with_extension("tmp");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write the state file {}", tmp.display()))?;
            serde_json::to_writer(&mut f, &state)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, p)
            .with_context(|| format!("cannot write the state file {}", p.display()))?;
        self.dirty = false;
        Ok(())
    }
}

/// Adds bytes to a tail's unfinished line, keeping only the end of an over-long one.
fn take(t: &mut Tail, chunk: &[u8]) {
    if let Some(n) = &mut t.overlong {
        *n += chunk.len() as u64;
    } else if t.partial.len() + chunk.len() > MAX_LINE {
        t.overlong = Some((t.partial.len() + chunk.len()) as u64);
    } else {
        t.partial.extend_from_slice(chunk);
        return;
    }
    t.partial.extend_from_slice(chunk);
    let excess = t.partial.len().saturating_sub(OVERLONG_TAIL);
    t.partial.drain(..excess);
}

/// The state file's format.
const STATE_VERSION: u32 = 1;

/// What the state file keeps.
#[derive(Deserialize)]
struct State {
    version: u32,
    #[serde(default)]
    read: HashMap<String, u64>,
    #[serde(default)]
    key_users: BTreeMap<String, KeyUsers>,
    #[serde(default)]
    overdue: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct StateOut<'a> {
    version: u32,
    read: BTreeMap<String, u64>,
    key_users: &'a BTreeMap<String, KeyUsers>,
    overdue: &'a BTreeMap<String, u64>,
}

/// The executables and users seen using a key.
#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyUsers {
    executables: BTreeSet<String>,
    uids: BTreeSet<String>,
}

/// A rule's settings with its defaults filled in.
#[derive(Debug, Clone)]
struct Rule {
    enabled: bool,
    severity: Severity,
}

/// What one stream's checkpoints look like.
#[derive(Debug)]
struct StreamClock {
    /// From its `trail_start`, else the configuration's.
    interval: Option<Duration>,
    /// Time of the latest checkpoint (or start) record.
    last_anchor: SystemTime,
    last: Place,
    /// The seq of its latest anchor.
    anchor_seq: u64,
}

/// Records named in one alert at most.
const MAX_NAMED: usize = 50;

/// The rules and what they remember.
struct Rules {
    rules: HashMap<&'static str, Rule>,
    login_threshold: u64,
    login_window: Duration,
    login_per_process: bool,
    /// Failed logins per user or process: their times and places.
    failures: HashMap<String, VecDeque<(SystemTime, Place)>>,
    /// Per key: who used it.
    key_users: BTreeMap<String, KeyUsers>,
    /// Whether `key_users` changed on the latest record.
    learnt: bool,
    slack: Duration,
    default_interval: Option<Duration>,
    streams: HashMap<String, StreamClock>,
    /// Per stream: the seq of the anchor after which an overdue alert was raised.
    overdue_alerted: BTreeMap<String, u64>,
}

fn secs(d: Option<keytrail::config::Interval>) -> Option<Option<Duration>> {
    d.map(|i| i.0)
}

impl Rules {
    fn new(config: &BTreeMap<String, RuleConfig>, default_interval: Option<Duration>) -> Rules {
        let defaults: [(&'static str, Severity); 9] = [
            ("key_destroyed", Severity::High),
            ("key_exported", Severity::High),
            ("secret_attribute_read", Severity::Medium),
            ("failed_logins", Severity::Medium),
            ("token_initialized", Severity::Critical),
            ("new_key_user", Severity::Medium),
            ("records_lost", Severity::High),
            ("chain_invalid", Severity::Critical),
            ("checkpoint_overdue", Severity::High),
        ];
        let mut rules = HashMap::new();
        for (name, severity) in defaults {
            let c = config.get(name).cloned().unwrap_or_default();
            rules.insert(
                name,
                Rule {
                    enabled: c.enabled.unwrap_or(true),
                    severity: c.severity.unwrap_or(severity),
                },
            );
        }
        let logins = config.get("failed_logins").cloned().unwrap_or_default();
        let overdue = config
            .get("checkpoint_overdue")
            .cloned()
            .unwrap_or_default();
        Rules {
            rules,
            login_threshold: logins.threshold.unwrap_or(5),
            login_window: secs(logins.window)
                .flatten()
                .unwrap_or(Duration::from_secs(60)),
            login_per_process: logins.per.as_deref() == Some("process"),
            failures: HashMap::new(),
            key_users: BTreeMap::new(),
            learnt: false,
            slack: secs(overdue.slack)
                .map(Option::unwrap_or_default)
                .unwrap_or(Duration::from_secs(30)),
            default_interval,
            streams: HashMap::new(),
            overdue_alerted: BTreeMap::new(),
        }
    }

    fn on(&self, name: &str) -> Option<Severity> {
        self.rules
            .get(name)
            .filter(|r| r.enabled)
            .map(|r| r.severity)
    }

    fn chain_finding(&mut self, f: verify::Finding, path: &str, line: u64, out: &mut Vec<Alert>) {
        let Some(severity) = self.on("chain_invalid") else {
            return;
        };
        let records = match (&f.stream, f.seq) {
            (Some(stream), Some(seq)) => vec![Place {
                stream: stream.clone(),
                seq,
                time: None,
                file: path.to_string(),
                line,
            }],
            _ => Vec::new(),
        };
        out.push(alert(
            "chain_invalid",
            severity,
            format!("the trail does not verify: {}", f.message),
            records,
            None,
            Value::Null,
        ));
    }

    /// The rules that look at one record.
    fn record(&mut self, rec: &Rec<'_>, path: &str, line: u64, out: &mut Vec<Alert>) {
        let Some((Some(stream), Some(seq))) =
            rec.integrity.as_ref().map(|i| (i.stream.as_deref(), i.seq))
        else {
            return;
        };
        let time = rec
            .timestamp
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        let place = At {
            stream,
            seq,
            time: rec.timestamp.as_deref(),
            file: path,
            line,
        };
        let action = rec.action();
        let success = rec.outcome() == "success";
        let p11 = rec.pkcs11.as_ref();
        let key = p11.and_then(|p| p.key.as_ref());
        let flag = |f: &str| p11.is_some_and(|p| p.flags.iter().any(|g| g == f));
        let token = p11.and_then(|p| p.token.as_ref());
        let serial = token.and_then(|t| t.serial.as_deref());
        let one = |rule: &'static str, sev: Severity, message: String| {
            alert(
                rule,
                sev,
                message,
                vec![place.place()],
                key.map(|k| key_json(k, token)),
                who(rec),
            )
        };
        self.clock_record(action, place, time, rec);
        match action {
            "object_destroy" if success => {
                let is_key = key
                    .and_then(|k| k.class.as_deref())
                    .is_none_or(|c| c.ends_with("_KEY"));
                // A session key goes with its session anyway; a token key is gone for
                // good.
                let token_object = key.and_then(|k| k.token) != Some(false);
                if let Some(sev) = self.on("key_destroyed")
                    && is_key
                    && token_object
                {
                    out.push(one(
                        "key_destroyed",
                        sev,
                        format!("key {} was destroyed", key_name(key)),
                    ));
                }
            }
            "key_wrap" if success => {
                if let Some(sev) = self.on("key_exported") {
                    let wrapping = p11.and_then(|p| p.keys.get("wrapping"));
                    out.push(one(
                        "key_exported",
                        sev,
                        format!(
                            "key {} was wrapped (exported) under key {}",
                            key_name(key),
                            key_name(wrapping)
                        ),
                    ));
                }
            }
            "attribute_read_secret" => {
                if flag("secret_value_read") && success {
                    if let Some(sev) = self.on("key_exported") {
                        out.push(one(
                            "key_exported",
                            sev,
                            format!(
                                "the secret value of key {} was read by the application",
                                key_name(key)
                            ),
                        ));
                    }
                } else if let Some(sev) = self.on("secret_attribute_read") {
                    let how = if flag("possible_secret_read") {
                        "possibly read".to_string()
                    } else {
                        format!(
                            "asked for and refused ({})",
                            p11.and_then(|p| p.rv_name.as_deref()).unwrap_or("?")
                        )
                    };
                    out.push(one(
                        "secret_attribute_read",
                        sev,
                        format!("a secret attribute of key {} was {how}", key_name(key)),
                    ));
                }
            }
            "token_init" if success => {
                if let Some(sev) = self.on("token_initialized") {
                    let previous = rec
                        .keytrail
                        .as_ref()
                        .and_then(|k| k.get("previous_token"))
                        .cloned();
                    let was = previous
                        .as_ref()
                        .and_then(|p| p.get("label"))
                        .and_then(Value::as_str)
                        .map(|l| format!(" (it was \"{l}\")"))
                        .unwrap_or_default();
                    let mut a = one(
                        "token_initialized",
                        sev,
                        format!("a token was initialized: everything on it was wiped{was}"),
                    );
                    a.more.insert(
                        "token".into(),
                        json!({
                            "label": token.and_then(|t| t.label.as_deref()),
                            "serial": serial,
                            "previous": previous,
                        }),
                    );
                    out.push(a);
                }
            }
            "records_lost" | "records_dropped" => {
                if let Some(sev) = self.on("records_lost") {
                    let lost = rec
                        .keytrail
                        .as_ref()
                        .and_then(|k| k.get("lost"))
                        .and_then(Value::as_u64);
                    let mut a = one(
                        "records_lost",
                        sev,
                        rec.message.as_deref().map_or_else(
                            || format!("{} records were lost", lost.unwrap_or(0)),
                            str::to_string,
                        ),
                    );
                    a.more.insert("lost".into(), json!(lost));
                    out.push(a);
                }
            }
            "login" if !success => self.failed_login(rec, place, time, out),
            _ => {}
        }
        // Who uses a token key: its creator and first user are learnt, others alert.
        let lifecycle = rec.lifecycle();
        if let Some(k) = key
            && k.token == Some(true)
            && matches!(lifecycle, "use" | "export" | "generate" | "import")
            && let Some(id) = key_id(k, serial)
        {
            let exe = rec
                .process
                .as_ref()
                .and_then(|p| p.executable.as_deref().or(p.name.as_deref()))
                .unwrap_or("?");
            let uid = rec
                .user
                .as_ref()
                .and_then(|u| u.id.as_deref())
                .unwrap_or("?");
            let seen = self.key_users.get(&id);
            let known = seen.is_some();
            let new_exe = seen.is_none_or(|u| !u.executables.contains(exe));
            let new_uid = seen.is_none_or(|u| !u.uids.contains(uid));
            if new_exe || new_uid {
                let users = self.key_users.entry(id).or_default();
                users.executables.insert(exe.to_string());
                users.uids.insert(uid.to_string());
            }
            self.learnt |= new_exe || new_uid;
            if known
                && (new_exe || new_uid)
                && let Some(sev) = self.on("new_key_user")
            {
                let mut what = Vec::new();
                if new_exe {
                    what.push(format!("executable {exe}"));
                }
                if new_uid {
                    what.push(format!("uid {uid}"));
                }
                out.push(one(
                    "new_key_user",
                    sev,
                    format!(
                        "key {} was used by {} never seen using it before",
                        key_name(key),
                        what.join(" and ")
                    ),
                ));
            }
        }
    }

    fn failed_login(
        &mut self,
        rec: &Rec<'_>,
        place: At<'_>,
        time: Option<SystemTime>,
        out: &mut Vec<Alert>,
    ) {
        let rv = rec
            .pkcs11
            .as_ref()
            .and_then(|p| p.rv_name.as_deref())
            .unwrap_or("");
        // Logging in twice is a mistake, not a guess at a PIN.
        if matches!(
            rv,
            "CKR_USER_ALREADY_LOGGED_IN" | "CKR_USER_ANOTHER_ALREADY_LOGGED_IN"
        ) {
            return;
        }
        let Some(sev) = self.on("failed_logins") else {
            return;
        };
        let Some(t) = time else {
            return;
        };
        let group = if self.login_per_process {
            format!("process {}", place.stream)
        } else {
            format!("user {}", rec.user().unwrap_or("?"))
        };
        let window = self.login_window;
        let list = self.failures.entry(group.clone()).or_default();
        list.push_back((t, place.place()));
        list.retain(|(u, _)| t.duration_since(*u).map_or(true, |d| d <= window));
        if list.len() as u64 >= self.login_threshold {
            let count = list.len();
            // An alert stays one datagram: the latest failures are named, all counted.
            let records: Vec<Place> = list
                .drain(..)
                .skip(count.saturating_sub(MAX_NAMED))
                .map(|(_, p)| p)
                .collect();
            let mut a = alert(
                "failed_logins",
                sev,
                format!(
                    "{count} failed logins within {} by {group}",
                    humantime::format_duration(window)
                ),
                records,
                None,
                who(rec),
            );
            a.more.insert("count".into(), json!(count));
            out.push(a);
        }
        if list.is_empty() {
            self.failures.remove(&group);
        }
    }

    /// Keeps each stream's latest checkpoint for `checkpoint_overdue`.
    fn clock_record(
        &mut self,
        action: &str,
        place: At<'_>,
        time: Option<SystemTime>,
        rec: &Rec<'_>,
    ) {
        if action == "trail_stop" {
            self.streams.remove(place.stream);
            self.overdue_alerted.remove(place.stream);
            return;
        }
        let Some(t) = time else {
            return;
        };
        if !self.streams.contains_key(place.stream) {
            let clock = StreamClock {
                interval: self.default_interval,
                last_anchor: t,
                last: place.place(),
                anchor_seq: place.seq,
            };
            self.streams.insert(place.stream.to_string(), clock);
        }
        let Some(s) = self.streams.get_mut(place.stream) else {
            return;
        };
        if action == "trail_start" {
            let k = rec.keytrail.as_ref();
            let synchronous =
                k.and_then(|k| k.get("writer")).and_then(Value::as_str) == Some("synchronous");
            // A synchronous writer checkpoints only when it writes: idle is not stalled.
            s.interval = if synchronous {
                None
            } else {
                k.and_then(|k| k.pointer("/integrity/checkpoint_interval_s"))
                    .and_then(Value::as_f64)
                    .filter(|s| *s > 0.0)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
            };
        }
        if matches!(action, "trail_start" | "checkpoint") && t >= s.last_anchor {
            s.last_anchor = t;
            s.anchor_seq = place.seq;
        }
        if place.seq >= s.last.seq {
            place.store(&mut s.last);
        }
    }

    /// `checkpoint_overdue`: streams silent past their interval and slack.
    fn clock(&mut self, now: SystemTime) -> Vec<Alert> {
        let mut out = Vec::new();
        let Some(sev) = self.on("checkpoint_overdue") else {
            return out;
        };
        for (id, s) in &self.streams {
            let Some(interval) = s.interval else {
                continue;
            };
            let Ok(silent) = now.duration_since(s.last_anchor) else {
                continue;
            };
            if silent <= interval + self.slack
                || self
                    .overdue_alerted
                    .get(id)
                    .is_some_and(|a| *a >= s.anchor_seq)
            {
                continue;
            }
            out.push(alert(
                "checkpoint_overdue",
                sev,
                format!(
                    "stream {id} has written no checkpoint for {}s (its interval is {}s): the process is stopped, hung, killed without a stop record, or its records are withheld",
                    silent.as_secs(),
                    interval.as_secs_f64()
                ),
                vec![s.last.clone()],
                None,
                Value::Null,
            ));
            self.overdue_alerted.insert(id.clone(), s.anchor_seq);
            self.learnt = true;
        }
        out
    }
}

/// The user and process of a record, as alerts carry them.
fn who(rec: &Rec<'_>) -> Value {
    json!({
        "user": {
            "name": rec.user.as_ref().and_then(|u| u.name.as_deref()),
            "id": rec.user.as_ref().and_then(|u| u.id.as_deref()),
        },
        "process": {
            "pid": rec.pid(),
            "name": rec.process.as_ref().and_then(|p| p.name.as_deref()),
            "executable": rec.process.as_ref().and_then(|p| p.executable.as_deref()),
        },
    })
}

/// A key's identity across processes: its token and its unique id, else CKA_ID, else
/// label. None when it has none of them.
fn key_id(k: &KeyRec<'_>, serial: Option<&str>) -> Option<String> {
    let class = k.class.as_deref().unwrap_or("?");
    let which = if let Some(u) = &k.unique_id {
        format!("unique_id:{u}")
    } else if let Some(i) = &k.id_hex {
        format!("id:{i}")
    } else {
        format!("label:{}", k.label.as_deref()?)
    };
    Some(format!("{}/{class}/{which}", serial.unwrap_or("?")))
}

fn key_name(k: Option<&KeyRec<'_>>) -> String {
    let Some(k) = k else {
        return "(unknown)".into();
    };
    let mut parts = Vec::new();
    if let Some(l) = &k.label {
        parts.push(format!("\"{l}\""));
    }
    if let Some(i) = &k.id_hex {
        parts.push(format!("id {i}"));
    }
    if let Some(c) = &k.key_type {
        parts.push(c.to_string());
    }
    if parts.is_empty() {
        parts.push(format!("handle {}", k.handle.unwrap_or(0)));
    }
    parts.join(" ")
}

fn key_json(k: &KeyRec<'_>, token: Option<&super::record::Tok<'_>>) -> Value {
    let mut v = serde_json::Map::new();
    let mut put = |name: &str, value: Value| {
        if !value.is_null() {
            v.insert(name.into(), value);
        }
    };
    put("class", json!(k.class));
    put("key_type", json!(k.key_type));
    put("bits", json!(k.bits));
    put("id_hex", json!(k.id_hex));
    put("label", json!(k.label));
    put("unique_id", json!(k.unique_id));
    put("token", json!(k.token));
    put("handle", json!(k.handle));
    put("token_label", json!(token.and_then(|t| t.label.as_deref())));
    put(
        "token_serial",
        json!(token.and_then(|t| t.serial.as_deref())),
    );
    Value::Object(v)
}

/// One alert, in the order its fields are written.
#[derive(Serialize)]
struct Alert {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    rule: &'static str,
    severity: Severity,
    message: String,
    /// The records that raised it.
    records: Vec<Place>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Value>,
    /// `user` and `process`, and what some rules add (`lost`, `token`).
    #[serde(flatten)]
    more: serde_json::Map<String, Value>,
}

fn alert(
    rule: &'static str,
    severity: Severity,
    message: String,
    records: Vec<Place>,
    key: Option<Value>,
    who: Value,
) -> Alert {
    Alert {
        timestamp: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        rule,
        severity,
        message,
        records,
        key,
        more: match who {
            Value::Object(w) => w,
            _ => serde_json::Map::new(),
        },
    }
}

/// An alert as one line of JSON, with the characters that could drive a terminal (from
/// labels and names in the trail) written as `\uXXXX`, as the other subcommands do.
fn alert_line(a: &Alert) -> Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut out = super::text::JsonEscaper::new(&mut buf);
    serde_json::to_writer(&mut out, a)?;
    out.flush()?;
    drop(out);
    Ok(String::from_utf8(buf)?)
}

/// Where alerts go, and the commands run for them.
struct Output {
    kind: AlertOutput,
    file: Option<File>,
    syslog: Option<(std::os::unix::net::UnixDatagram, PathBuf)>,
    command: Vec<String>,
    children: Vec<std::process::Child>,
    host: String,
    raised: u64,
}

/// Facility of syslog alerts: security/authorization (authpriv).
const FACILITY_AUTHPRIV: u8 = 10;

impl Output {
    fn open(w: &WatchConfig) -> Result<Output> {
        let file = match (&w.output, &w.file) {
            (AlertOutput::File, Some(p)) => {
                use std::os::unix::fs::OpenOptionsExt;
                Some(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .mode(0o640)
                        .open(p)
                        .with_context(|| format!("cannot open the alert file {}", p.display()))?,
                )
            }
            _ => None,
        };
        let syslog = if w.output == AlertOutput::Syslog {
            let s = std::os::unix::net::UnixDatagram::unbound()
                .context("cannot make a socket for syslog")?;
            Some((s, w.syslog_socket.clone()))
        } else {
            None
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or_else(|| "-".into());
        Ok(Output {
            kind: w.output,
            file,
            syslog,
            command: w.command.clone(),
            children: Vec::new(),
            host,
            raised: 0,
        })
    }

    fn raise(&mut self, a: Alert) {
        self.raised += 1;
        let line = match alert_line(&a) {
            Ok(l) => l,
            Err(e) => {
                super::text::errln!("keytrail watch: cannot write an alert: {e}");
                return;
            }
        };
        match self.kind {
            AlertOutput::Stdout => {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{line}").and_then(|()| o.flush());
            }
            AlertOutput::File => {
                if let Some(f) = &mut self.file
                    && let Err(e) = f.write_all(format!("{line}\n").as_bytes())
                {
                    super::text::errln!("keytrail watch: cannot write an alert: {e}; {line}");
                }
            }
            AlertOutput::Syslog => {
                let msg = format!(
                    "<{}>1 {} {} keytrail-watch {} {} - {line}",
                    FACILITY_AUTHPRIV * 8 + a.severity.syslog(),
                    a.timestamp,
                    self.host,
                    std::process::id(),
                    a.rule,
                );
                if let Some((s, path)) = &self.syslog
                    && let Err(e) = s.send_to(msg.as_bytes(), path)
                {
                    super::text::errln!(
                        "keytrail watch: cannot send an alert to {}: {e}; {line}",
                        path.display()
                    );
                }
            }
        }
        self.run_command(&line);
    }

    /// Runs the configured command with the alert on its standard input: the program
    /// and arguments as configured, never a shell, and nothing from the record on its
    /// command line.
    fn run_command(&mut self, line: &str) {
        let Some((program, args)) = self.command.split_first() else {
            return;
        };
        let child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .spawn();
        match child {
            Ok(mut c) => {
                if let Some(mut stdin) = c.stdin.take() {
                    let _ = stdin.write_all(format!("{line}\n").as_bytes());
                }
                self.children.push(c);
            }
            Err(e) => super::text::errln!("keytrail watch: cannot run {program}: {e}"),
        }
    }

    /// Collects the commands that ended.
    fn reap(&mut self) {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
    }

    fn finish(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.wait();
        }
    }
}
