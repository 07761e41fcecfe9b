//! `keytrail verify`: recomputes every stream's hash chain, streaming, with memory in
//! proportion to the number of streams (not records).

use super::input::{self, Line, Progress};
use anyhow::{Context, Result, bail};
use keytrail::sink::chain::{self, ALG_HMAC, Hasher, Key};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;

/// Exit status: every stream verified, complete and anchored.
pub const EXIT_VALID: u8 = 0;
/// Exit status: evidence of tampering or loss.
pub const EXIT_INVALID: u8 = 1;
/// Exit status: bad usage or unreadable input (also clap's usage-error status).
pub const EXIT_ERROR: u8 = 2;
/// Exit status: nothing wrong found, but not everything could be proven: a stream without
/// a stop record (crash, kill, still running, or a truncated tail), or keyed records
/// without the key.
pub const EXIT_UNPROVEN: u8 = 3;

/// Problems kept per stream and per file; the rest are counted.
const KEEP: usize = 50;
/// Open gaps tracked per stream.
const MAX_GAPS: usize = 10_000;

/// Options of `keytrail verify`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Exit status: 0 when every stream verifies, is closed by its stop record and has no \
unanchored tail; 1 on evidence of tampering or loss (a hash mismatch, missing, \
reordered or duplicated records, damaged lines, truncation against --head); 2 on \
bad usage or unreadable files; 3 when nothing is wrong but not everything could be \
proven (a stream without a stop record: crash, kill, still running or truncated; \
keyed records without --key).")]
pub struct VerifyArgs {
    /// Trail files, or directories (every *.jsonl* file in them).
    #[arg(required = true, value_name = "FILES|DIR")]
    pub inputs: Vec<PathBuf>,
    /// The HMAC key file of a keyed trail (`[integrity] key_file`).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A head of the chain kept elsewhere: a checkpoint (or stop) record's JSON line, a
    /// file whose lines are such records, or STREAM:SEQ:HASH. Detects truncation.
    #[arg(long, value_name = "RECORD|FILE|STREAM:SEQ:HASH")]
    pub head: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Read files in the order given instead of by their first record's time.
    #[arg(long)]
    pub keep_order: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Where a record is.
#[derive(Debug, Clone, Copy, Serialize)]
struct At {
    file: usize,
    line: u64,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Problem {
    HashMismatch { seq: u64, at: At },
    PrevMismatch { seq: u64, at: At },
    Damaged { seq: u64, at: At, reason: String },
    Missing { from: u64, to: u64, at: Option<At> },
    Reordered { seq: u64, at: At },
    Duplicate { seq: u64, at: At },
    NotKeyed { seq: u64, at: At },
    OtherKey { seq: u64, at: At, key: String },
    BadStart { seq: u64, at: At },
    Truncated { head_seq: u64, last_seq: u64 },
    HeadMismatch { seq: u64 },
}

impl Problem {
    /// Whether this is evidence of tampering or loss (rather than something unprovable).
    fn is_invalid(&self) -> bool {
        !matches!(self, Problem::OtherKey { .. })
    }

    fn describe(&self, files: &[PathBuf]) -> String {
        let at = |a: &At| format!("{}:{}", files[a.file].display(), a.line);
        match self {
            Problem::HashMismatch { seq, at: a } => {
                format!("INVALID at seq {seq}: hash mismatch ({})", at(a))
            }
            Problem::PrevMismatch { seq, at: a } => format!(
                "INVALID at seq {seq}: its prev is not the hash of seq {} (a record was altered, removed or inserted before it) ({})",
                seq - 1,
                at(a)
            ),
            Problem::Damaged { seq, at: a, reason } => {
                format!("INVALID at seq {seq}: damaged line: {reason} ({})", at(a))
            }
            Problem::Missing { from, to, at: a } => {
                let r = if from == to {
                    format!("missing record {from}")
                } else {
                    format!("missing records {from}..{to}")
                };
                match a {
                    Some(a) => format!("{r} (before {})", at(a)),
                    None => r,
                }
            }
            Problem::Reordered { seq, at: a } => {
                format!("reordered: seq {seq} is out of place ({})", at(a))
            }
            Problem::Duplicate { seq, at: a } => {
                format!("duplicate: seq {seq} appears again ({})", at(a))
            }
            Problem::NotKeyed { seq, at: a } => format!(
                "INVALID at seq {seq}: not keyed (plain SHA-256 where --key expects HMAC) ({})",
                at(a)
            ),
            Problem::OtherKey { seq, at: a, key } => format!(
                "seq {seq} is keyed with another key (id {key}); not verified ({})",
                at(a)
            ),
            Problem::BadStart { seq, at: a } => format!(
                "INVALID at seq {seq}: the first record of a stream must have prev null, and only it ({})",
                at(a)
            ),
            Problem::Truncated { head_seq, last_seq } => format!(
                "TRUNCATED: the head given with --head is seq {head_seq}, the trail ends at seq {last_seq}"
            ),
            Problem::HeadMismatch { seq } => format!(
                "INVALID at seq {seq}: the record's hash differs from the head given with --head"
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Gap {
    from: u64,
    to: u64,
    /// Hash of record `from - 1`.
    hash_before: Option<String>,
    /// `prev` of record `to + 1`.
    prev_after: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct StartInfo {
    time: Option<String>,
    pid: Option<u64>,
    user: Option<String>,
    process: Option<String>,
    module: Option<String>,
    module_sha256: Option<String>,
    config_sha256: Option<String>,
    version: Option<String>,
}

#[derive(Debug, Default)]
struct Stream {
    first_seq: u64,
    max_seq: u64,
    /// Hash stated by the record with `max_seq` (None if damaged).
    last_hash: Option<String>,
    last_action: String,
    last_time: Option<String>,
    records: u64,
    files: Vec<usize>,
    gaps: Vec<Gap>,
    gaps_overflow: bool,
    problems: Vec<Problem>,
    more_problems: u64,
    invalid: bool,
    unverified: u64,
    keyed: bool,
    last_anchor: u64,
    checkpoints: u64,
    start: Option<StartInfo>,
    /// Head seqs given with --head and the hash each must have, and what was found.
    heads: Vec<(u64, String, Option<bool>)>,
}

impl Stream {
    fn problem(&mut self, p: Problem, file_problems: &mut FileState) {
        if p.is_invalid() {
            self.invalid = true;
            file_problems.invalid += 1;
        }
        if self.problems.len() < KEEP {
            self.problems.push(p);
        } else {
            self.more_problems += 1;
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct FileState {
    lines: u64,
    records: u64,
    streams: u64,
    /// Problems found at records of this file.
    invalid: u64,
    damaged_lines: Vec<(u64, String)>,
    more_damaged: u64,
    unchained_lines: Vec<u64>,
    more_unchained: u64,
    error: Option<String>,
}

/// The part of a record verify reads.
#[derive(Deserialize)]
struct Rec<'a> {
    #[serde(rename = "@timestamp", borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Ev<'a>>,
    #[serde(borrow)]
    integrity: Option<Integrity<'a>>,
    keytrail: Option<serde_json::Value>,
    process: Option<Proc>,
    user: Option<User>,
}

#[derive(Deserialize)]
struct Ev<'a> {
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Proc {
    pid: Option<u64>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct User {
    name: Option<String>,
    id: Option<String>,
}

#[derive(Deserialize)]
struct Integrity<'a> {
    #[serde(borrow)]
    stream: Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    prev: Option<Cow<'a, str>>,
    #[serde(borrow)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
}

/// The outcome of a record's hash check.
enum Check {
    Ok,
    Bad,
    NotKeyed,
    OtherKey(String),
    NoKey,
}

/// A head given with --head.
#[derive(Debug, Clone)]
struct Head {
    stream: String,
    seq: u64,
    hash: String,
}

fn parse_heads(args: &[String]) -> Result<Vec<Head>> {
    let mut heads = Vec::new();
    for a in args {
        let text = a.trim();
        if text.starts_with('{') {
            heads.push(head_from_record(text).with_context(|| format!("--head {text}"))?);
        } else if let Some(h) = head_from_triple(text) {
            heads.push(h);
        } else {
            let content = std::fs::read_to_string(text).with_context(|| {
                format!("--head {text}: neither a record, STREAM:SEQ:HASH nor a readable file")
            })?;
            let mut found = 0;
            for (n, line) in content.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                // A syslog line may carry a prefix before the JSON record.
                let json = line.find('{').map_or(line, |i| &line[i..]);
                heads.push(
                    head_from_record(json)
                        .with_context(|| format!("--head {text}, line {}", n + 1))?,
                );
                found += 1;
            }
            if found == 0 {
                bail!("--head {text}: the file holds no records");
            }
        }
    }
    // Per stream only the latest head matters.
    let mut latest: HashMap<String, Head> = HashMap::new();
    for h in heads {
        match latest.get(&h.stream) {
            Some(old) if old.seq >= h.seq => {}
            _ => {
                latest.insert(h.stream.clone(), h);
            }
        }
    }
    Ok(latest.into_values().collect())
}

fn head_from_record(text: &str) -> Result<Head> {
    let r: Rec<'_> = serde_json::from_str(text).context("not a trail record")?;
    let i = r.integrity.context("the record has no integrity fields")?;
    Ok(Head {
        stream: i.stream.into_owned(),
        seq: i.seq,
        hash: i.hash.into_owned(),
    })
}

fn head_from_triple(text: &str) -> Option<Head> {
    let mut it = text.split(':');
    let (stream, seq, hash) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Head {
        stream: stream.to_string(),
        seq: seq.parse().ok()?,
        hash: hash.to_ascii_lowercase(),
    })
}

/// What the integrity part of a damaged line still tells: stream, seq and stated hash.
fn salvage(line: &[u8]) -> Option<(String, u64, Option<String>)> {
    let text = String::from_utf8_lossy(line);
    let i = text.rfind(",\"integrity\":{\"stream\":\"")?;
    let rest = &text[i + 24..];
    let stream: String = rest.chars().take_while(|c| *c != '"').collect();
    let seq_at = rest.find("\"seq\":")? + 6;
    let seq: u64 = rest[seq_at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    let hash = chain::split_signed(line)
        .map(|(_, h)| String::from_utf8_lossy(h).into_owned())
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    (!stream.is_empty()).then_some((stream, seq, hash))
}

struct Verifier {
    files: Vec<PathBuf>,
    file_state: Vec<FileState>,
    streams: HashMap<String, Stream>,
    order: Vec<String>,
    hasher: Option<Hasher>,
    key_id: Option<String>,
    heads: Vec<Head>,
    hex: [u8; 64],
}

impl Verifier {
    fn line(&mut self, l: Line<'_>) {
        let fs = &mut self.file_state[l.file];
        fs.lines += 1;
        let at = At {
            file: l.file,
            line: l.number,
        };
        if l.bytes.iter().all(u8::is_ascii_whitespace) {
            if !l.complete || !l.bytes.is_empty() {
                self.damaged_line(at, "blank line".into());
            }
            return;
        }
        let parsed = serde_json::from_slice::<Rec<'_>>(l.bytes);
        let rec = match parsed {
            Ok(r) => r,
            Err(e) => {
                let mut reason = format!("not a JSON record ({e})");
                if !l.complete {
                    reason =
                        "incomplete last line (the file was truncated or is being written)".into();
                }
                match salvage(l.bytes) {
                    Some((stream, seq, hash)) => {
                        self.record_damaged(at, &stream, seq, hash, reason);
                    }
                    None => self.damaged_line(at, reason),
                }
                return;
            }
        };
        let Some(integrity) = &rec.integrity else {
            let fs = &mut self.file_state[l.file];
            fs.records += 1;
            if fs.unchained_lines.len() < KEEP {
                fs.unchained_lines.push(l.number);
            } else {
                fs.more_unchained += 1;
            }
            fs.invalid += 1;
            return;
        };
        let Some((prefix, suffix_hash)) = chain::split_signed(l.bytes) else {
            self.record_damaged(
                at,
                &integrity.stream,
                integrity.seq,
                Some(integrity.hash.to_string()),
                "the integrity fields do not end the line".into(),
            );
            return;
        };
        let stated = integrity.hash.as_bytes();
        // Check the hash over the signed prefix.
        let keyed = integrity.alg.as_deref() == Some(ALG_HMAC);
        let check = match (&self.hasher, keyed) {
            (Some(Hasher::Keyed { .. }), false) => Check::NotKeyed,
            (Some(h @ Hasher::Keyed { .. }), true) => {
                let kid = integrity.key.as_deref().unwrap_or("");
                if Some(kid) != self.key_id.as_deref() {
                    Check::OtherKey(kid.to_string())
                } else {
                    self.hash_check(h.hash(prefix), stated, suffix_hash)
                }
            }
            (_, true) => Check::NoKey,
            (_, false) => self.hash_check(Hasher::Plain.hash(prefix), stated, suffix_hash),
        };
        // Stream bookkeeping.
        let stream_id = integrity.stream.as_ref();
        let fs = &mut self.file_state[l.file];
        fs.records += 1;
        if !self.streams.contains_key(stream_id) {
            self.order.push(stream_id.to_string());
            let mut s = Stream::default();
            for h in self.heads.iter().filter(|h| h.stream == stream_id) {
                s.heads.push((h.seq, h.hash.clone(), None));
            }
            self.streams.insert(stream_id.to_string(), s);
        }
        let Some(s) = self.streams.get_mut(stream_id) else {
            return;
        };
        if s.files.last() != Some(&l.file) {
            if !s.files.contains(&l.file) {
                fs.streams += 1;
            }
            s.files.push(l.file);
        }
        s.records += 1;
        let seq = integrity.seq;
        match check {
            Check::Ok => {}
            Check::Bad => s.problem(Problem::HashMismatch { seq, at }, fs),
            Check::NotKeyed => s.problem(Problem::NotKeyed { seq, at }, fs),
            Check::OtherKey(key) => {
                s.unverified += 1;
                s.problem(Problem::OtherKey { seq, at, key }, fs)
            }
            Check::NoKey => s.unverified += 1,
        }
        s.keyed |= keyed;
        let action = rec
            .event
            .as_ref()
            .and_then(|e| e.action.as_deref())
            .unwrap_or("");
        let prev = integrity.prev.as_deref();
        let hash = integrity.hash.as_ref();
        if (seq == 1) != prev.is_none() {
            s.problem(Problem::BadStart { seq, at }, fs);
        }
        if action == "trail_start" && s.start.is_none() {
            let d = rec.keytrail.as_ref();
            let text = |k: &str| {
                d.and_then(|d| d.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            s.start = Some(StartInfo {
                time: rec.timestamp.as_deref().map(str::to_string),
                pid: rec.process.as_ref().and_then(|p| p.pid),
                process: rec.process.as_ref().and_then(|p| p.name.clone()),
                user: rec
                    .user
                    .as_ref()
                    .and_then(|u| u.name.clone().or_else(|| u.id.clone())),
                module: text("module"),
                module_sha256: text("module_sha256"),
                config_sha256: text("config_sha256"),
                version: text("version"),
            });
        }
        for h in s.heads.iter_mut().filter(|h| h.0 == seq) {
            h.2 = Some(h.1 == hash);
        }
        if action == "checkpoint" {
            s.checkpoints += 1;
        }
        let anchor = matches!(action, "checkpoint" | "trail_stop");
        Self::sequence(s, seq, prev, Some(hash), action, at, fs);
        if anchor && seq > s.last_anchor {
            s.last_anchor = seq;
        }
        if seq == s.max_seq {
            s.last_time = rec.timestamp.as_deref().map(str::to_string);
        }
    }

    fn hash_check<T: AsRef<[u8]>>(&mut self, computed: T, stated: &[u8], suffix: &[u8]) -> Check {
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(computed.as_ref(), &mut self.hex);
        if self.hex[..] == *stated && stated == suffix {
            Check::Ok
        } else {
            Check::Bad
        }
    }

    /// Places a record in its stream's sequence: gaps, reorders, duplicates, links.
    fn sequence(
        s: &mut Stream,
        seq: u64,
        prev: Option<&str>,
        hash: Option<&str>,
        action: &str,
        at: At,
        fs: &mut FileState,
    ) {
        if s.records == 1 {
            s.first_seq = seq;
            s.max_seq = seq;
            s.last_hash = hash.map(str::to_string);
            s.last_action = action.to_string();
            if seq > 1 {
                s.gaps.push(Gap {
                    from: 1,
                    to: seq - 1,
                    hash_before: None,
                    prev_after: prev.map(str::to_string),
                });
            }
            return;
        }
        if seq == s.max_seq + 1 {
            if let (Some(p), Some(h)) = (prev, s.last_hash.as_deref()) {
                if p != h {
                    s.problem(Problem::PrevMismatch { seq, at }, fs);
                }
            }
        } else if seq > s.max_seq {
            if s.gaps.len() < MAX_GAPS {
                s.gaps.push(Gap {
                    from: s.max_seq + 1,
                    to: seq - 1,
                    hash_before: s.last_hash.clone(),
                    prev_after: prev.map(str::to_string),
                });
            } else if !s.gaps_overflow {
                s.gaps_overflow = true;
                s.problem(
                    Problem::Missing {
                        from: s.max_seq + 1,
                        to: seq - 1,
                        at: Some(at),
                    },
                    fs,
                );
            }
        } else {
            // A record from the past: it fills a gap (reordered) or repeats one.
            match s.gaps.iter().position(|g| g.from <= seq && seq <= g.to) {
                Some(i) => {
                    let g = s.gaps.remove(i);
                    if g.from == 1 && seq < s.first_seq {
                        s.first_seq = seq;
                    }
                    if seq == g.from {
                        if let (Some(p), Some(h)) = (prev, g.hash_before.as_deref()) {
                            if p != h {
                                s.problem(Problem::PrevMismatch { seq, at }, fs);
                            }
                        }
                    }
                    if seq == g.to {
                        if let (Some(h), Some(p)) = (hash, g.prev_after.as_deref()) {
                            if p != h {
                                s.problem(Problem::PrevMismatch { seq: seq + 1, at }, fs);
                            }
                        }
                    }
                    if seq > g.from {
                        s.gaps.insert(
                            i,
                            Gap {
                                from: g.from,
                                to: seq - 1,
                                hash_before: g.hash_before.clone(),
                                prev_after: prev.map(str::to_string),
                            },
                        );
                    }
                    if seq < g.to {
                        let j = if seq > g.from { i + 1 } else { i };
                        s.gaps.insert(
                            j,
                            Gap {
                                from: seq + 1,
                                to: g.to,
                                hash_before: hash.map(str::to_string),
                                prev_after: g.prev_after,
                            },
                        );
                    }
                    // Records that belong before the first one seen are a rotated file
                    // read late, not a reorder, when they come from another file.
                    s.problem(Problem::Reordered { seq, at }, fs);
                }
                None => s.problem(Problem::Duplicate { seq, at }, fs),
            }
            return;
        }
        s.max_seq = seq;
        s.last_hash = hash.map(str::to_string);
        s.last_action = action.to_string();
    }

    fn record_damaged(
        &mut self,
        at: At,
        stream: &str,
        seq: u64,
        hash: Option<String>,
        reason: String,
    ) {
        let fs = &mut self.file_state[at.file];
        fs.records += 1;
        if !self.streams.contains_key(stream) {
            self.order.push(stream.to_string());
            self.streams.insert(stream.to_string(), Stream::default());
        }
        let Some(s) = self.streams.get_mut(stream) else {
            return;
        };
        if !s.files.contains(&at.file) {
            fs.streams += 1;
        }
        if s.files.last() != Some(&at.file) {
            s.files.push(at.file);
        }
        s.records += 1;
        s.problem(Problem::Damaged { seq, at, reason }, fs);
        Self::sequence(s, seq, None, hash.as_deref(), "", at, fs);
    }

    fn damaged_line(&mut self, at: At, reason: String) {
        let fs = &mut self.file_state[at.file];
        fs.invalid += 1;
        if fs.damaged_lines.len() < KEEP {
            fs.damaged_lines.push((at.line, reason));
        } else {
            fs.more_damaged += 1;
        }
    }
}

/// The verdict on one stream, for output.
#[derive(Debug, Serialize)]
struct StreamReport {
    stream: String,
    verdict: &'static str,
    first_seq: u64,
    last_seq: u64,
    records: u64,
    files: Vec<String>,
    start: Option<StartInfo>,
    last_time: Option<String>,
    closed: bool,
    keyed: bool,
    unverified_records: u64,
    checkpoints: u64,
    last_anchor_seq: Option<u64>,
    unanchored_tail: Option<(u64, u64)>,
    anchored_by_head: Option<u64>,
    problems: Vec<String>,
    more_problems: u64,
    findings: Vec<Problem>,
}

#[derive(Debug, Serialize)]
struct FileReport {
    file: String,
    verdict: &'static str,
    #[serde(flatten)]
    state: FileState,
}

#[derive(Debug, Serialize)]
struct Report {
    verdict: &'static str,
    exit_status: u8,
    files: Vec<FileReport>,
    streams: Vec<StreamReport>,
    missing_streams: Vec<String>,
}

/// Runs `keytrail verify`; returns the exit status.
pub fn run(args: &VerifyArgs) -> Result<u8> {
    let files = input::trail_files(&args.inputs, args.keep_order)?;
    let (hasher, key_id) = match &args.key {
        Some(p) => {
            let key = Key::load(p).map_err(anyhow::Error::msg)?;
            (
                Some(Hasher::new(Some(&key)).map_err(anyhow::Error::msg)?),
                Some(key.id()),
            )
        }
        None => (None, None),
    };
    let heads = parse_heads(&args.head)?;
    let mut v = Verifier {
        file_state: files.iter().map(|_| FileState::default()).collect(),
        files: files.clone(),
        streams: HashMap::new(),
        order: Vec::new(),
        hasher,
        key_id,
        heads: heads.clone(),
        hex: [0u8; 64],
    };
    let mut progress = Progress::new(&files, args.quiet);
    let mut errors = Vec::new();
    input::for_each_line(
        &files,
        &mut progress,
        |i, e| errors.push((i, e)),
        |l| v.line(l),
    );
    for (i, e) in errors {
        v.file_state[i].error = Some(e);
        v.file_state[i].invalid += 1;
    }
    let report = finish(v, &heads);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(report.exit_status)
}

fn finish(mut v: Verifier, heads: &[Head]) -> Report {
    let mut streams = Vec::new();
    let mut any_invalid = v.file_state.iter().any(|f| f.invalid > 0 && f.streams == 0);
    let mut any_unproven = false;
    let names: Vec<String> = v.files.iter().map(|p| p.display().to_string()).collect();
    for id in &v.order {
        let Some(mut s) = v.streams.remove(id) else {
            continue;
        };
        let last_file = s.files.last().copied().unwrap_or(0);
        let mut dummy = FileState::default();
        let gaps = std::mem::take(&mut s.gaps);
        for g in gaps {
            s.problem(
                Problem::Missing {
                    from: g.from,
                    to: g.to,
                    at: None,
                },
                &mut dummy,
            );
        }
        let mut anchored_by_head = None;
        let heads_here = std::mem::take(&mut s.heads);
        for (seq, _, found) in heads_here {
            match found {
                Some(true) => {
                    anchored_by_head = Some(seq);
                    s.last_anchor = s.last_anchor.max(seq);
                }
                Some(false) => s.problem(Problem::HeadMismatch { seq }, &mut dummy),
                None if seq > s.max_seq => s.problem(
                    Problem::Truncated {
                        head_seq: seq,
                        last_seq: s.max_seq,
                    },
                    &mut dummy,
                ),
                None => {} // within a gap, already reported missing
            }
        }
        if dummy.invalid > 0 {
            v.file_state[last_file].invalid += dummy.invalid;
        }
        let closed = s.last_action == "trail_stop";
        let tail = (s.max_seq > s.last_anchor).then(|| (s.last_anchor + 1, s.max_seq));
        let verdict = if s.invalid {
            if s.problems.iter().any(|p| {
                matches!(
                    p,
                    Problem::HashMismatch { .. }
                        | Problem::PrevMismatch { .. }
                        | Problem::Damaged { .. }
                        | Problem::NotKeyed { .. }
                        | Problem::BadStart { .. }
                        | Problem::HeadMismatch { .. }
                )
            }) {
                "INVALID"
            } else if s
                .problems
                .iter()
                .any(|p| matches!(p, Problem::Truncated { .. }))
            {
                "TRUNCATED"
            } else if s
                .problems
                .iter()
                .any(|p| matches!(p, Problem::Missing { .. }))
            {
                "MISSING RECORDS"
            } else {
                "REORDERED"
            }
        } else if s.unverified > 0 {
            "UNVERIFIED"
        } else if !closed {
            "OPEN"
        } else {
            "valid"
        };
        match verdict {
            "valid" => {}
            "UNVERIFIED" | "OPEN" => any_unproven = true,
            _ => any_invalid = true,
        }
        let problems = s.problems.iter().map(|p| p.describe(&v.files)).collect();
        let mut files: Vec<String> = Vec::new();
        for f in &s.files {
            if !files.contains(&names[*f]) {
                files.push(names[*f].clone());
            }
        }
        streams.push(StreamReport {
            stream: id.clone(),
            verdict,
            first_seq: s.first_seq,
            last_seq: s.max_seq,
            records: s.records,
            files,
            start: s.start,
            last_time: s.last_time,
            closed,
            keyed: s.keyed,
            unverified_records: s.unverified,
            checkpoints: s.checkpoints,
            last_anchor_seq: (s.last_anchor > 0).then_some(s.last_anchor),
            unanchored_tail: tail,
            anchored_by_head,
            problems,
            more_problems: s.more_problems,
            findings: s.problems,
        });
    }
    let seen: std::collections::HashSet<&str> = streams.iter().map(|s| s.stream.as_str()).collect();
    let missing_streams: Vec<String> = heads
        .iter()
        .filter(|h| !seen.contains(h.stream.as_str()))
        .map(|h| h.stream.clone())
        .collect();
    if !missing_streams.is_empty() {
        any_invalid = true;
    }
    let files: Vec<FileReport> = v
        .file_state
        .into_iter()
        .zip(names)
        .map(|(state, file)| {
            let verdict = if state.error.is_some() {
                "UNREADABLE"
            } else if state.invalid > 0 {
                "INVALID"
            } else {
                "valid"
            };
            if verdict != "valid" {
                any_invalid = true;
            }
            FileReport {
                file,
                verdict,
                state,
            }
        })
        .collect();
    let exit_status = if any_invalid {
        EXIT_INVALID
    } else if any_unproven {
        EXIT_UNPROVEN
    } else {
        EXIT_VALID
    };
    Report {
        verdict: match exit_status {
            EXIT_VALID => "valid",
            EXIT_INVALID => "INVALID",
            _ => "UNPROVEN",
        },
        exit_status,
        files,
        streams,
        missing_streams,
    }
}

fn print_text(r: &Report) {
    println!("files:");
    for f in &r.files {
        let s = &f.state;
        println!(
            "  {}: {} — {} lines, {} records, {} streams",
            f.file, f.verdict, s.lines, s.records, s.streams
        );
        if let Some(e) = &s.error {
            println!("    {e}");
        }
        for (line, reason) in &s.damaged_lines {
            println!("    damaged line {}:{line}: {reason}", f.file);
        }
        if s.more_damaged > 0 {
            println!("    … and {} more damaged lines", s.more_damaged);
        }
        if !s.unchained_lines.is_empty() {
            let lines: Vec<String> = s.unchained_lines.iter().map(u64::to_string).collect();
            println!(
                "    records without integrity fields at lines {}{}",
                lines.join(", "),
                if s.more_unchained > 0 {
                    format!(" and {} more", s.more_unchained)
                } else {
                    String::new()
                }
            );
        }
    }
    println!("streams:");
    for s in &r.streams {
        let who = s
            .start
            .as_ref()
            .map(|st| {
                format!(
                    " pid {} {} user {}, started {}",
                    st.pid.map_or("?".into(), |p| p.to_string()),
                    st.process.as_deref().unwrap_or("?"),
                    st.user.as_deref().unwrap_or("?"),
                    st.time.as_deref().unwrap_or("?")
                )
            })
            .unwrap_or_default();
        println!("  stream {}{who}", s.stream);
        println!(
            "    {}: seq {}..{}, {} records{} in {}",
            s.verdict,
            s.first_seq,
            s.last_seq,
            s.records,
            if s.keyed { " (keyed)" } else { "" },
            s.files.join(", ")
        );
        for p in &s.problems {
            println!("    {p}");
        }
        if s.more_problems > 0 {
            println!("    … and {} more problems", s.more_problems);
        }
        if s.unverified_records > 0 {
            println!(
                "    {} keyed records not verified: give the key with --key",
                s.unverified_records
            );
        }
        if !s.closed {
            println!(
                "    no stop record: the process crashed, was killed, is still running, or the tail was truncated (last record {})",
                s.last_time.as_deref().unwrap_or("?")
            );
        }
        if let (Some((a, b)), false) = (s.unanchored_tail, s.closed) {
            println!(
                "    unanchored tail: records {a}..{b} come after the last checkpoint{}; truncation there is detectable only with --head",
                s.last_anchor_seq
                    .map(|n| format!(" (seq {n})"))
                    .unwrap_or_default()
            );
        }
        if let Some(h) = s.anchored_by_head {
            println!("    anchored by --head at seq {h}");
        }
    }
    for m in &r.missing_streams {
        println!("  stream {m}: MISSING — named by --head but absent from the trail");
    }
    println!("verdict: {}", r.verdict);
}
