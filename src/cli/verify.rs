//! `keytrail verify`: recomputes every stream's hash chain, streaming, with memory in
//! proportion to the number of streams (not records), a few hundred bytes each.
//!
//! Per stream only what its verdict needs is kept: counters, the hash of its latest
//! record (to check the next one's `prev`), where it was, who started it (strings that
//! repeat across streams — module, versions, user and process names — are stored once),
//! and, for the rare stream with findings, those findings and its open gaps. The report
//! is written stream by stream, never built whole in memory.

use super::input::{self, Line, Progress};
use super::text::{self, outln};
use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use keytrail::seal::SealKey;
use keytrail::sink::chain::epoch::{ALG_FS, EpochKeys};
use keytrail::sink::chain::{self, ALG_HMAC, Hasher, Key};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;

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
reordered or duplicated records, damaged lines, truncation against --head, a head \
that contradicts the trail); 2 on bad usage or unreadable files; 3 when nothing is \
wrong but not everything could be proven (a stream without a stop record: crash, kill, \
still running or truncated; keyed records without --key; with --seal-key, records after \
the last valid seal of a closed stream).\n\n\
Every head given with --head is checked: one whose record differs, or that lies past \
the end of its stream, is a finding whatever the other heads say.")]
pub struct VerifyArgs {
    /// Trail files, or directories (every *.jsonl* file in them).
    #[arg(required = true, value_name = "FILES|DIR")]
    pub inputs: Vec<PathBuf>,
    /// The HMAC key file of a keyed trail (`[integrity] key_file`).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The initial key file of a forward-secure trail (`[integrity] initial_key_file`).
    #[arg(long, value_name = "FILE")]
    pub initial_key: Option<PathBuf>,
    /// A head of the chain kept elsewhere: a checkpoint (or stop) record's JSON line, a
    /// file whose lines are such records, or STREAM:SEQ:HASH. Detects truncation.
    #[arg(long, value_name = "RECORD|FILE|STREAM:SEQ:HASH")]
    pub head: Vec<String>,
    /// The public key (PEM) of the token key that seals checkpoints (`keytrail seal-key`):
    /// checks every seal, and reports unsealed or badly sealed checkpoints and the records
    /// after the last valid seal.
    #[arg(long, value_name = "PUBKEY.pem")]
    pub seal_key: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Read files in the order given instead of by their first record's time.
    #[arg(long)]
    pub keep_order: bool,
    /// The files are a syslog collector's copy: a line identical to one of the last
    /// records read (sent again after a reconnect) is counted as a repeat, not a
    /// duplicate. A repeat that differs from the first copy is still a finding.
    #[arg(long)]
    pub collected: bool,
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
    HashMismatch {
        seq: u64,
        at: At,
    },
    PrevMismatch {
        seq: u64,
        at: At,
    },
    Damaged {
        seq: u64,
        at: At,
        reason: String,
    },
    Missing {
        from: u64,
        to: u64,
        at: Option<At>,
    },
    Reordered {
        seq: u64,
        at: At,
    },
    Duplicate {
        seq: u64,
        at: At,
    },
    NotKeyed {
        seq: u64,
        at: At,
    },
    OtherKey {
        seq: u64,
        at: At,
        key: String,
    },
    BadStart {
        seq: u64,
        at: At,
    },
    /// A head lies past the last record of its stream.
    Truncated {
        head_seq: u64,
        last_seq: u64,
        head: String,
    },
    /// A head's hash differs from the record it names.
    HeadMismatch {
        seq: u64,
        head: String,
    },
    /// A checkpoint's or stop's seal does not verify with `--seal-key`.
    BadSeal {
        seq: u64,
        at: At,
        reason: String,
    },
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
                seq.saturating_sub(1),
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
            Problem::Truncated {
                head_seq,
                last_seq,
                head,
            } => format!(
                "TRUNCATED: the head at seq {head_seq} ({head}) lies past the end of the trail at seq {last_seq}"
            ),
            Problem::HeadMismatch { seq, head } => format!(
                "INVALID at seq {seq}: the record's hash differs from the head ({head}): the trail or that head was forged"
            ),
            Problem::BadSeal { seq, at: a, reason } => format!(
                "INVALID at seq {seq}: badly sealed checkpoint: {reason}; the records before it were rewritten, or the seal forged ({})",
                at(a)
            ),
        }
    }
}

/// A record's hash, when it is stated as 64 lowercase hex digits (the only form the
/// writer produces; anything else fails the hash check anyway).
type Hash = [u8; 32];

fn parse_hash(text: &str) -> Option<Hash> {
    let b = text.as_bytes();
    if b.len() != 64 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut h = [0u8; 32];
    hex::decode_to_slice(b, &mut h).ok()?;
    Some(h)
}

/// Whether `prev` (as stated) names the record whose hash is `hash`.
fn links(prev: &str, hash: &Hash) -> bool {
    parse_hash(prev).as_ref() == Some(hash)
}

#[derive(Debug, Clone)]
struct Gap {
    from: u64,
    to: u64,
    /// Hash of record `from - 1`.
    hash_before: Option<Hash>,
    /// `prev` of record `to + 1`.
    prev_after: Option<Box<str>>,
}

/// Who started a stream, from its `trail_start` record. Strings that repeat from stream
/// to stream are shared.
#[derive(Debug, Default)]
struct Start {
    time: Option<Box<str>>,
    pid: Option<u64>,
    user: Option<Rc<str>>,
    process: Option<Rc<str>>,
    module: Option<Rc<str>>,
    module_sha256: Option<Rc<str>>,
    config_sha256: Option<Rc<str>>,
    version: Option<Rc<str>>,
}

/// [`Start`] as printed.
#[derive(Debug, Serialize)]
struct StartInfo<'a> {
    time: Option<&'a str>,
    pid: Option<u64>,
    user: Option<&'a str>,
    process: Option<&'a str>,
    module: Option<&'a str>,
    module_sha256: Option<&'a str>,
    config_sha256: Option<&'a str>,
    version: Option<&'a str>,
}

impl Start {
    fn info(&self) -> StartInfo<'_> {
        StartInfo {
            time: self.time.as_deref(),
            pid: self.pid,
            user: self.user.as_deref(),
            process: self.process.as_deref(),
            module: self.module.as_deref(),
            module_sha256: self.module_sha256.as_deref(),
            config_sha256: self.config_sha256.as_deref(),
            version: self.version.as_deref(),
        }
    }
}

/// What few streams have: findings and open gaps.
#[derive(Debug, Default)]
struct Rare {
    gaps: Vec<Gap>,
    gaps_overflow: bool,
    problems: Vec<Problem>,
    more_problems: u64,
    /// The worst verdict any finding calls for, kept or only counted.
    worst: Verdict,
}

/// The verdict on a stream, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
enum Verdict {
    #[default]
    Valid,
    Open,
    Unsealed,
    Unverified,
    Reordered,
    MissingRecords,
    Truncated,
    Invalid,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Open => "OPEN",
            Verdict::Unsealed => "UNSEALED",
            Verdict::Unverified => "UNVERIFIED",
            Verdict::Reordered => "REORDERED",
            Verdict::MissingRecords => "MISSING RECORDS",
            Verdict::Truncated => "TRUNCATED",
            Verdict::Invalid => "INVALID",
        }
    }
}

/// One stream's state while reading, and its verdict afterwards.
#[derive(Debug, Default)]
struct Stream {
    first_seq: u64,
    max_seq: u64,
    records: u64,
    unverified: u64,
    checkpoints: u64,
    last_anchor: u64,
    /// The highest seq of a head that matched its record.
    anchored_by_head: Option<u64>,
    /// Hash stated by the record with `max_seq` (None if damaged).
    last_hash: Option<Hash>,
    /// Whether the record with `max_seq` is a `trail_stop`.
    closed: bool,
    keyed: bool,
    invalid: bool,
    verdict: Verdict,
    /// The file of the first record, of the latest, and any others, in order of first
    /// appearance.
    first_file: u32,
    last_file: u32,
    other_files: Vec<u32>,
    last_time: Option<Box<str>>,
    start: Option<Box<Start>>,
    rare: Option<Box<Rare>>,
    /// The seals found, with `--seal-key`.
    seals: Option<Box<Seals>>,
}

/// A stream's seals (`--seal-key`).
#[derive(Debug, Default, Serialize)]
struct Seals {
    /// Heads whose seal verified.
    valid: u64,
    /// The seq of the last head whose seal verified (0: none).
    last_valid_seq: u64,
    /// Heads without a seal.
    unsealed: u64,
    /// Heads whose seal did not verify.
    bad: u64,
    /// The first head without a valid seal.
    first_failure: Option<SealFailure>,
    /// Runs of unsealed heads with no valid seal between them.
    unsealed_spans: Vec<UnsealedSpan>,
    more_spans: u64,
}

/// A head without a valid seal.
#[derive(Debug, Clone, Serialize)]
struct SealFailure {
    seq: u64,
    at: At,
    /// `unsealed` or `bad`.
    kind: &'static str,
    reason: String,
}

/// Consecutive unsealed heads.
#[derive(Debug, Clone, Serialize)]
struct UnsealedSpan {
    from_seq: u64,
    to_seq: u64,
    checkpoints: u64,
    /// The reason the first of them states.
    reason: String,
    /// Whether a valid seal came after the span (which then proves its records).
    sealed_after: bool,
}

impl Stream {
    fn problem(&mut self, p: Problem, file_problems: &mut FileState) {
        if file_problems.collect {
            file_problems.fresh.push(p.clone());
        }
        if p.is_invalid() {
            self.invalid = true;
            file_problems.invalid += 1;
        }
        let rare = self.rare.get_or_insert_with(Default::default);
        rare.worst = rare.worst.max(severity(&p));
        if rare.problems.len() < KEEP {
            rare.problems.push(p);
        } else {
            rare.more_problems += 1;
        }
    }

    fn problems(&self) -> &[Problem] {
        self.rare.as_ref().map_or(&[], |r| &r.problems)
    }

    fn gaps(&self) -> &[Gap] {
        self.rare.as_ref().map_or(&[], |r| &r.gaps)
    }

    fn gaps_mut(&mut self) -> &mut Vec<Gap> {
        &mut self.rare.get_or_insert_with(Default::default).gaps
    }

    fn has_file(&self, file: u32) -> bool {
        self.first_file == file || self.other_files.contains(&file)
    }

    /// Notes that a record of this stream is in `file`; true when the stream had none
    /// there before.
    fn seen_in(&mut self, file: u32) -> bool {
        let new = self.records > 0 && self.last_file != file && !self.has_file(file);
        if self.records == 0 {
            self.first_file = file;
        } else if new {
            self.other_files.push(file);
        }
        self.last_file = file;
        new || self.records == 0
    }

    fn files(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.first_file)
            .chain(self.other_files.iter().copied())
            .map(|f| f as usize)
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
    /// Whether findings are also handed out as they are made ([`Verifier::check_line`]).
    #[serde(skip)]
    collect: bool,
    /// Findings made since they were last handed out.
    #[serde(skip)]
    fresh: Vec<Problem>,
}

/// The part of a record verify reads, in ECS or OCSF (`[trail] format`): [`Rec::parse`]
/// moves the OCSF fields to where ECS has them.
#[derive(Deserialize)]
struct Rec<'a> {
    #[serde(rename = "@timestamp", alias = "time_dt", borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Ev<'a>>,
    #[serde(borrow)]
    integrity: Option<Integrity<'a>>,
    keytrail: Option<serde_json::Value>,
    #[serde(borrow)]
    process: Option<Proc<'a>>,
    #[serde(borrow)]
    user: Option<User<'a>>,
    /// OCSF: `metadata.event_code` is the action.
    #[serde(borrow)]
    metadata: Option<Meta<'a>>,
    /// OCSF: the process and its user.
    #[serde(borrow)]
    actor: Option<Actor<'a>>,
    /// OCSF: `integrity` and `keytrail`.
    #[serde(borrow)]
    unmapped: Option<Unmapped<'a>>,
}

impl<'a> Rec<'a> {
    fn parse(bytes: &'a [u8]) -> serde_json::Result<Rec<'a>> {
        let mut r: Rec<'a> = serde_json::from_slice(bytes)?;
        if let Some(u) = r.unmapped.take() {
            r.integrity = r.integrity.or(u.integrity);
            r.keytrail = r.keytrail.or(u.keytrail);
        }
        if let Some(m) = r.metadata.take() {
            r.event = r.event.or(Some(Ev {
                action: m.event_code,
            }));
        }
        if let Some(a) = r.actor.take() {
            r.process = a.process.or(r.process);
            r.user = a.user.or(r.user);
        }
        Ok(r)
    }
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    event_code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Actor<'a> {
    #[serde(borrow)]
    process: Option<Proc<'a>>,
    #[serde(borrow)]
    user: Option<User<'a>>,
}

#[derive(Deserialize)]
struct Unmapped<'a> {
    #[serde(borrow)]
    integrity: Option<Integrity<'a>>,
    keytrail: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Ev<'a> {
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Proc<'a> {
    pid: Option<u64>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct User<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, alias = "uid")]
    id: Option<Cow<'a, str>>,
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
    epoch: Option<u64>,
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

/// Where a head came from: the `--head` argument (0-based) and, for a file, its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeadSource {
    arg: u32,
    line: Option<u64>,
}

/// A head given with --head, and what the trail said to it.
#[derive(Debug, Clone)]
struct HeadCheck {
    seq: u64,
    hash: Hash,
    source: HeadSource,
    /// Whether every record with this seq carries this hash (None: no such record seen).
    found: Option<bool>,
}

/// Every head given with --head, by stream. All of them are checked: a head kept
/// elsewhere proves something only if no other head can outvote it, and anyone who can
/// write to syslog can add one.
#[derive(Debug, Default)]
struct Heads {
    /// The arguments, to say where a head came from.
    args: Vec<String>,
    by_stream: HashMap<Box<str>, Vec<HeadCheck>>,
}

impl Heads {
    fn parse(args: &[String]) -> Result<Heads> {
        let mut heads = Heads {
            args: args.to_vec(),
            by_stream: HashMap::new(),
        };
        for (n, a) in args.iter().enumerate() {
            let arg = u32::try_from(n).context("too many --head arguments")?;
            let text = a.trim();
            let source = HeadSource { arg, line: None };
            if text.starts_with('{') {
                let (stream, seq, hash) =
                    head_from_record(text.as_bytes()).with_context(|| format!("--head {text}"))?;
                heads.add(stream, seq, hash, source);
            } else if let Some((stream, seq, hash)) = head_from_triple(text) {
                heads.add(stream, seq, hash, source);
            } else {
                heads.read_file(text, arg)?;
            }
        }
        for list in heads.by_stream.values_mut() {
            list.sort_by_key(|h| h.seq);
            // The same head from two places (an anchor file and syslog) is one head.
            list.dedup_by(|a, b| a.seq == b.seq && a.hash == b.hash);
        }
        Ok(heads)
    }

    /// Reads a file of head records, one per line (a syslog prefix before each is
    /// allowed), with the trail readers' bounds.
    fn read_file(&mut self, path: &str, arg: u32) -> Result<()> {
        let files = [PathBuf::from(path)];
        let mut unreadable = None;
        let mut bad = None;
        let mut found = 0u64;
        input::for_each_line(
            &files,
            &mut Progress::new(&files, true),
            |_, e| unreadable = Some(e),
            |l| {
                if bad.is_some() {
                    return;
                }
                if let Some(reason) = l.overlong_reason() {
                    bad = Some((l.number, anyhow::anyhow!(reason)));
                    return;
                }
                let line = l.bytes.trim_ascii();
                if line.is_empty() {
                    return;
                }
                let json = memchr::memchr(b'{', line).map_or(line, |i| &line[i..]);
                match head_from_record(json) {
                    Ok((stream, seq, hash)) => {
                        let source = HeadSource {
                            arg,
                            line: Some(l.number),
                        };
                        self.add(stream, seq, hash, source);
                        found += 1;
                    }
                    Err(e) => bad = Some((l.number, e)),
                }
            },
        );
        if let Some(e) = unreadable {
            bail!("--head {path}: neither a record, STREAM:SEQ:HASH nor a readable file ({e})");
        }
        if let Some((n, e)) = bad {
            return Err(e.context(format!("--head {path}, line {n}")));
        }
        if found == 0 {
            bail!("--head {path}: the file holds no records");
        }
        Ok(())
    }

    fn add(&mut self, stream: String, seq: u64, hash: Hash, source: HeadSource) {
        self.by_stream
            .entry(stream.into_boxed_str())
            .or_default()
            .push(HeadCheck {
                seq,
                hash,
                source,
                found: None,
            });
    }

    /// Compares the heads of `stream` at `seq` with a record's stated hash.
    fn check(&mut self, stream: &str, seq: u64, stated: &str) {
        let Some(list) = self.by_stream.get_mut(stream) else {
            return;
        };
        let stated = parse_hash(stated);
        let from = list.partition_point(|h| h.seq < seq);
        for h in list[from..].iter_mut().take_while(|h| h.seq == seq) {
            h.found = Some(h.found != Some(false) && stated == Some(h.hash));
        }
    }

    fn describe(&self, s: HeadSource) -> String {
        let arg = self.args.get(s.arg as usize).map_or("", String::as_str);
        match s.line {
            Some(n) => format!("{arg}:{n}"),
            None if arg.trim_start().starts_with('{') => {
                format!("--head record #{}", s.arg + 1)
            }
            None => format!("--head {arg}"),
        }
    }
}

fn head_from_record(text: &[u8]) -> Result<(String, u64, Hash)> {
    let r = Rec::parse(text).context("not a trail record")?;
    let i = r.integrity.context("the record has no integrity fields")?;
    let hash = parse_hash(&i.hash).context("its hash is not 64 lowercase hex digits")?;
    Ok((i.stream.into_owned(), i.seq, hash))
}

fn head_from_triple(text: &str) -> Option<(String, u64, Hash)> {
    let mut it = text.split(':');
    let (stream, seq, hash) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some((
        stream.to_string(),
        seq.parse().ok()?,
        parse_hash(&hash.to_ascii_lowercase())?,
    ))
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

/// A string shared by every stream that has it.
fn intern(strings: &mut HashSet<Rc<str>>, s: &str) -> Rc<str> {
    if let Some(r) = strings.get(s) {
        return r.clone();
    }
    let r: Rc<str> = Rc::from(s);
    strings.insert(r.clone());
    r
}

/// What each kind of finding makes of a stream's verdict.
fn severity(p: &Problem) -> Verdict {
    match p {
        Problem::HashMismatch { .. }
        | Problem::PrevMismatch { .. }
        | Problem::Damaged { .. }
        | Problem::NotKeyed { .. }
        | Problem::BadStart { .. }
        | Problem::HeadMismatch { .. }
        | Problem::BadSeal { .. } => Verdict::Invalid,
        Problem::Truncated { .. } => Verdict::Truncated,
        Problem::Missing { .. } => Verdict::MissingRecords,
        Problem::Reordered { .. } | Problem::Duplicate { .. } => Verdict::Reordered,
        Problem::OtherKey { .. } => Verdict::Valid,
    }
}

struct Verifier {
    files: Vec<PathBuf>,
    file_state: Vec<FileState>,
    streams: IndexMap<Box<str>, Stream>,
    strings: HashSet<Rc<str>>,
    hasher: Option<Hasher>,
    key_id: Option<String>,
    /// Forward-secure trails: the keys of every epoch, from the initial key.
    epochs: Option<EpochKeys>,
    heads: Heads,
    hex: [u8; 64],
    /// `--seal-key`.
    seal_key: Option<SealKey>,
    /// The stream of the latest record read.
    touched: Option<usize>,
}

impl Verifier {
    fn new(
        files: Vec<PathBuf>,
        hasher: Option<Hasher>,
        key_id: Option<String>,
        heads: Heads,
    ) -> Verifier {
        Verifier {
            file_state: files.iter().map(|_| FileState::default()).collect(),
            files,
            streams: IndexMap::new(),
            strings: HashSet::new(),
            hasher,
            key_id,
            epochs: None,
            heads,
            hex: [0u8; 64],
            seal_key: None,
            touched: None,
        }
    }

    /// A verifier with the HMAC key file of a keyed trail and the initial key file of a
    /// forward-secure one, when given.
    fn with_keys(
        files: Vec<PathBuf>,
        key: Option<&std::path::Path>,
        initial_key: Option<&std::path::Path>,
        heads: Heads,
    ) -> Result<Verifier> {
        let (hasher, key_id) = match key {
            Some(p) => {
                let key = Key::load(p).map_err(anyhow::Error::msg)?;
                (
                    Some(Hasher::new(Some(&key)).map_err(anyhow::Error::msg)?),
                    Some(key.id()),
                )
            }
            None => (None, None),
        };
        let mut v = Verifier::new(files, hasher, key_id, heads);
        if let Some(p) = initial_key {
            v.epochs = Some(EpochKeys::load(p).map_err(anyhow::Error::msg)?);
        }
        Ok(v)
    }

    /// The stream `id`, made on its first record, and the state of the file a record of
    /// it is in; counts the record.
    fn stream_at<'a>(
        streams: &'a mut IndexMap<Box<str>, Stream>,
        touched: &mut Option<usize>,
        file_state: &'a mut [FileState],
        id: &str,
        file: usize,
    ) -> (&'a mut Stream, &'a mut FileState) {
        let index = match streams.get_index_of(id) {
            Some(i) => i,
            None => streams.insert_full(id.into(), Stream::default()).0,
        };
        let fs = &mut file_state[file];
        fs.records += 1;
        let s = &mut streams[index];
        touched.replace(index);
        if s.seen_in(file as u32) {
            fs.streams += 1;
        }
        s.records += 1;
        (s, fs)
    }

    fn line(&mut self, l: Line<'_>) {
        self.file_state[l.file].lines += 1;
        let at = At {
            file: l.file,
            line: l.number,
        };
        if let Some(reason) = l.overlong_reason() {
            match salvage(l.bytes) {
                Some((stream, seq, hash)) => self.record_damaged(at, &stream, seq, hash, reason),
                None => self.damaged_line(at, reason),
            }
            return;
        }
        if l.bytes.iter().all(u8::is_ascii_whitespace) {
            if !l.complete || !l.bytes.is_empty() {
                self.damaged_line(at, "blank line".into());
            }
            return;
        }
        let parsed = Rec::parse(l.bytes);
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
        let fs = integrity.alg.as_deref() == Some(ALG_FS);
        let keyed = fs || integrity.alg.as_deref() == Some(ALG_HMAC);
        let check = match (&self.hasher, keyed) {
            _ if fs => self.epoch_check(
                integrity,
                rec.timestamp.as_deref(),
                prefix,
                stated,
                suffix_hash,
            ),
            (Some(Hasher::Keyed { .. }), false) => Check::NotKeyed,
            (Some(h @ Hasher::Keyed { .. }), true) => {
                let kid = integrity.key.as_deref().unwrap_or("");
                if Some(kid) != self.key_id.as_deref() {
                    Check::OtherKey(kid.to_string())
                } else {
                    let computed = h.hash(prefix);
                    self.hash_check(computed, stated, suffix_hash)
                }
            }
            (_, true) => Check::NoKey,
            (_, false) => self.hash_check(Hasher::Plain.hash(prefix), stated, suffix_hash),
        };
        let stream_id = integrity.stream.as_ref();
        let seq = integrity.seq;
        let hash = integrity.hash.as_ref();
        self.heads.check(stream_id, seq, hash);
        let action = rec
            .event
            .as_ref()
            .and_then(|e| e.action.as_deref())
            .unwrap_or("");
        let start = (action == "trail_start").then(|| self.start_of(&rec));
        let (s, fs) = Self::stream_at(
            &mut self.streams,
            &mut self.touched,
            &mut self.file_state,
            stream_id,
            l.file,
        );
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
        let prev = integrity.prev.as_deref();
        if (seq == 1) != prev.is_none() {
            s.problem(Problem::BadStart { seq, at }, fs);
        }
        if s.start.is_none() {
            s.start = start;
        }
        if action == "checkpoint" {
            s.checkpoints += 1;
        }
        let anchor = matches!(action, "checkpoint" | "trail_stop");
        if anchor && let Some(key) = &self.seal_key {
            seal_check(s, key, stream_id, seq, prev, rec.keytrail.as_ref(), at, fs);
        }
        Self::sequence(s, seq, prev, Some(hash), action == "trail_stop", at, fs);
        if anchor && seq > s.last_anchor {
            s.last_anchor = seq;
        }
        if seq == s.max_seq {
            s.last_time = rec.timestamp.as_deref().map(Box::from);
        }
    }

    /// Who started a stream, from its `trail_start` record.
    fn start_of(&mut self, rec: &Rec<'_>) -> Box<Start> {
        let strings = &mut self.strings;
        let d = rec.keytrail.as_ref();
        let mut text = |k: &str| {
            d.and_then(|d| d.get(k))
                .and_then(|v| v.as_str())
                .map(|v| intern(strings, v))
        };
        let (module, module_sha256, config_sha256, version) = (
            text("module"),
            text("module_sha256"),
            text("config_sha256"),
            text("version"),
        );
        let process = rec.process.as_ref();
        let user = rec
            .user
            .as_ref()
            .and_then(|u| u.name.as_deref().or(u.id.as_deref()));
        Box::new(Start {
            time: rec.timestamp.as_deref().map(Box::from),
            pid: process.and_then(|p| p.pid),
            process: process
                .and_then(|p| p.name.as_deref())
                .map(|n| intern(strings, n)),
            user: user.map(|u| intern(strings, u)),
            module,
            module_sha256,
            config_sha256,
            version,
        })
    }

    /// Checks a forward-secure record: its epoch's key from the initial key, and an epoch
    /// that fits the record's time (a record forged with a later epoch's key cannot claim
    /// an earlier time).
    fn epoch_check(
        &mut self,
        integrity: &Integrity<'_>,
        timestamp: Option<&str>,
        prefix: &[u8],
        stated: &[u8],
        suffix: &[u8],
    ) -> Check {
        let kid = integrity.key.as_deref().unwrap_or("");
        let Some(keys) = &mut self.epochs else {
            return Check::NoKey;
        };
        if kid != keys.id() {
            return Check::OtherKey(kid.to_string());
        }
        let epoch = integrity.epoch.unwrap_or(u64::MAX);
        let t_ms = timestamp
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        if !t_ms.is_some_and(|t| keys.plausible(epoch, t)) {
            return Check::Bad;
        }
        match keys.hash(epoch, prefix) {
            Some(h) => self.hash_check(h, stated, suffix),
            None => Check::Bad,
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
        stop: bool,
        at: At,
        fs: &mut FileState,
    ) {
        if s.records == 1 {
            s.first_seq = seq;
            s.max_seq = seq;
            s.last_hash = hash.and_then(parse_hash);
            s.closed = stop;
            if seq > 1 {
                s.gaps_mut().push(Gap {
                    from: 1,
                    to: seq - 1,
                    hash_before: None,
                    prev_after: prev.map(Box::from),
                });
            }
            return;
        }
        if Some(seq) == s.max_seq.checked_add(1) {
            if let (Some(p), Some(h)) = (prev, s.last_hash.as_ref()) {
                if !links(p, h) {
                    s.problem(Problem::PrevMismatch { seq, at }, fs);
                }
            }
        } else if seq > s.max_seq {
            if fs.collect {
                // Read as it is written, a stream's records arrive in order: a gap is
                // missing records now, not a rotated file still to come.
                fs.fresh.push(Problem::Missing {
                    from: s.max_seq + 1,
                    to: seq - 1,
                    at: Some(at),
                });
            }
            if s.gaps().len() < MAX_GAPS {
                let gap = Gap {
                    from: s.max_seq + 1,
                    to: seq - 1,
                    hash_before: s.last_hash,
                    prev_after: prev.map(Box::from),
                };
                s.gaps_mut().push(gap);
            } else if !s.rare.as_ref().is_some_and(|r| r.gaps_overflow) {
                s.rare.get_or_insert_with(Default::default).gaps_overflow = true;
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
            match s.gaps().iter().position(|g| g.from <= seq && seq <= g.to) {
                Some(i) => {
                    let g = s.gaps_mut().remove(i);
                    if g.from == 1 && seq < s.first_seq {
                        s.first_seq = seq;
                    }
                    if seq == g.from {
                        if let (Some(p), Some(h)) = (prev, g.hash_before.as_ref()) {
                            if !links(p, h) {
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
                    let gaps = s.gaps_mut();
                    if seq > g.from {
                        gaps.insert(
                            i,
                            Gap {
                                from: g.from,
                                to: seq - 1,
                                hash_before: g.hash_before,
                                prev_after: prev.map(Box::from),
                            },
                        );
                    }
                    if seq < g.to {
                        let j = if seq > g.from { i + 1 } else { i };
                        gaps.insert(
                            j,
                            Gap {
                                from: seq + 1,
                                to: g.to,
                                hash_before: hash.and_then(parse_hash),
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
        s.last_hash = hash.and_then(parse_hash);
        s.closed = stop;
    }

    fn record_damaged(
        &mut self,
        at: At,
        stream: &str,
        seq: u64,
        hash: Option<String>,
        reason: String,
    ) {
        let (s, fs) = Self::stream_at(
            &mut self.streams,
            &mut self.touched,
            &mut self.file_state,
            stream,
            at.file,
        );
        s.problem(Problem::Damaged { seq, at, reason }, fs);
        Self::sequence(s, seq, None, hash.as_deref(), false, at, fs);
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

    /// Settles every stream's verdict once the input is read: open gaps become missing
    /// records, and every head is held against its stream. Returns the exit status and
    /// the streams that heads name but the trail lacks.
    fn finish(&mut self) -> (u8, Vec<String>) {
        let mut any_invalid = self
            .file_state
            .iter()
            .any(|f| f.invalid > 0 && f.streams == 0);
        let mut any_unproven = false;
        let heads = &self.heads;
        let sealing = self.seal_key.is_some();
        for (id, s) in self.streams.iter_mut() {
            let mut found = FileState::default();
            let gaps = s.rare.as_mut().map(|r| std::mem::take(&mut r.gaps));
            for g in gaps.unwrap_or_default() {
                s.problem(
                    Problem::Missing {
                        from: g.from,
                        to: g.to,
                        at: None,
                    },
                    &mut found,
                );
            }
            for h in heads.by_stream.get(id).map_or(&[][..], Vec::as_slice) {
                match h.found {
                    Some(true) => {
                        s.anchored_by_head = s.anchored_by_head.max(Some(h.seq));
                        s.last_anchor = s.last_anchor.max(h.seq);
                    }
                    Some(false) => s.problem(
                        Problem::HeadMismatch {
                            seq: h.seq,
                            head: heads.describe(h.source),
                        },
                        &mut found,
                    ),
                    None if h.seq > s.max_seq => s.problem(
                        Problem::Truncated {
                            head_seq: h.seq,
                            last_seq: s.max_seq,
                            head: heads.describe(h.source),
                        },
                        &mut found,
                    ),
                    None => {} // within a gap, already reported missing
                }
            }
            if found.invalid > 0 {
                self.file_state[s.last_file as usize].invalid += found.invalid;
            }
            s.verdict = if s.invalid {
                s.rare.as_ref().map_or(Verdict::Invalid, |r| r.worst)
            } else if s.unverified > 0 {
                Verdict::Unverified
            } else if sealing && s.closed && unsealed_tail(s) > 0 {
                Verdict::Unsealed
            } else if !s.closed {
                Verdict::Open
            } else {
                Verdict::Valid
            };
            match s.verdict {
                Verdict::Valid => {}
                Verdict::Unverified | Verdict::Open | Verdict::Unsealed => any_unproven = true,
                _ => any_invalid = true,
            }
        }
        let mut missing: Vec<String> = heads
            .by_stream
            .keys()
            .filter(|id| !self.streams.contains_key(&***id))
            .map(|id| id.to_string())
            .collect();
        missing.sort();
        any_invalid |= !missing.is_empty();
        any_invalid |= self.file_state.iter().any(|f| file_verdict(f) != "valid");
        let exit = if any_invalid {
            EXIT_INVALID
        } else if any_unproven {
            EXIT_UNPROVEN
        } else {
            EXIT_VALID
        };
        (exit, missing)
    }
}

/// Checks the seal of a head record (checkpoint or stop) at `seq`: it must sign the head
/// before it, which the chain states as `prev` (record `seq - 1`), so any rewrite of the
/// records before it changes the message.
#[allow(clippy::too_many_arguments)]
fn seal_check(
    s: &mut Stream,
    key: &SealKey,
    stream: &str,
    seq: u64,
    prev: Option<&str>,
    detail: Option<&serde_json::Value>,
    at: At,
    fs: &mut FileState,
) {
    let seal = detail.and_then(|d| d.get("seal"));
    // The head a record states must be the one the chain (and so the seal) has: the seal
    // covers `prev`, and a head edited apart from it would mislead whoever copies it.
    let stated = detail.and_then(|d| d.get("head"));
    let head_agrees = stated.is_none_or(|h| {
        h.get("seq").and_then(|n| n.as_u64()) == Some(seq.saturating_sub(1))
            && h.get("hash").and_then(|x| x.as_str()) == prev
    });
    let outcome: Result<(), (&'static str, String)> = match seal {
        Some(_) if !head_agrees => Err((
            "bad",
            "the head it states is not the record before it".into(),
        )),
        None => Err(("unsealed", "no seal".into())),
        Some(v) => match (
            v.get("unsealed"),
            v.get("alg").and_then(|a| a.as_str()),
            v.get("sig").and_then(|a| a.as_str()),
        ) {
            (Some(reason), _, _) => Err((
                "unsealed",
                reason.as_str().unwrap_or("no reason given").to_string(),
            )),
            (None, Some(alg), Some(sig)) => {
                let head = match prev {
                    None => Some(None),
                    Some(p) => parse_hash(p).map(Some),
                };
                match (head, hex::decode(sig)) {
                    (Some(head), Ok(sig)) => {
                        let message =
                            chain::seal_message(stream, seq.saturating_sub(1), head.as_ref());
                        key.verify(alg, &message, &sig).map_err(|e| ("bad", e))
                    }
                    (None, _) => Err(("bad", "the record's prev is not a hash".into())),
                    (_, Err(_)) => Err(("bad", "the signature is not hex".into())),
                }
            }
            _ => Err((
                "bad",
                "the seal has neither alg and sig nor unsealed".into(),
            )),
        },
    };
    let seals = s.seals.get_or_insert_with(Default::default);
    match outcome {
        Ok(()) => {
            seals.valid += 1;
            seals.last_valid_seq = seals.last_valid_seq.max(seq);
            if let Some(last) = seals.unsealed_spans.last_mut() {
                last.sealed_after = true;
            }
        }
        Err((kind, reason)) => {
            if seals.first_failure.is_none() {
                seals.first_failure = Some(SealFailure {
                    seq,
                    at,
                    kind,
                    reason: reason.clone(),
                });
            }
            if kind == "bad" {
                seals.bad += 1;
                s.problem(Problem::BadSeal { seq, at, reason }, fs);
                return;
            }
            seals.unsealed += 1;
            let open_span = seals.unsealed_spans.last().is_some_and(|x| !x.sealed_after);
            let room = seals.unsealed_spans.len() < KEEP;
            match seals.unsealed_spans.last_mut() {
                Some(span) if open_span => {
                    span.to_seq = seq;
                    span.checkpoints += 1;
                }
                _ if room => {
                    seals.unsealed_spans.push(UnsealedSpan {
                        from_seq: seq,
                        to_seq: seq,
                        checkpoints: 1,
                        reason,
                        sealed_after: false,
                    });
                }
                _ => seals.more_spans += 1,
            }
        }
    }
}

fn file_verdict(state: &FileState) -> &'static str {
    if state.error.is_some() {
        "UNREADABLE"
    } else if state.invalid > 0 {
        "INVALID"
    } else {
        "valid"
    }
}

/// The records after the last valid seal (the whole stream when none verified).
fn unsealed_tail(s: &Stream) -> u64 {
    let last = s.seals.as_ref().map_or(0, |x| x.last_valid_seq);
    s.max_seq.saturating_sub(last)
}

/// A stream's seals, for output (`--seal-key`).
#[derive(Debug, Serialize)]
struct SealReport<'a> {
    valid_seals: u64,
    last_valid_seal_seq: Option<u64>,
    unsealed_checkpoints: u64,
    bad_seals: u64,
    first_failure: Option<&'a SealFailure>,
    unsealed_spans: &'a [UnsealedSpan],
    more_unsealed_spans: u64,
    /// Records after the last valid seal.
    unsealed_tail: u64,
}

/// The verdict on one stream, for output.
#[derive(Debug, Serialize)]
struct StreamReport<'a> {
    stream: &'a str,
    verdict: &'static str,
    first_seq: u64,
    last_seq: u64,
    records: u64,
    files: Vec<&'a str>,
    start: Option<StartInfo<'a>>,
    last_time: Option<&'a str>,
    closed: bool,
    keyed: bool,
    unverified_records: u64,
    checkpoints: u64,
    last_anchor_seq: Option<u64>,
    unanchored_tail: Option<(u64, u64)>,
    anchored_by_head: Option<u64>,
    problems: Vec<String>,
    more_problems: u64,
    findings: &'a [Problem],
    #[serde(skip_serializing_if = "Option::is_none")]
    seal: Option<SealReport<'a>>,
}

#[derive(Debug, Serialize)]
struct FileReport<'a> {
    file: &'a str,
    verdict: &'static str,
    #[serde(flatten)]
    state: &'a FileState,
}

/// The whole report; its streams are produced one at a time as it is written.
#[derive(Serialize)]
struct Report<'a> {
    verdict: &'static str,
    exit_status: u8,
    files: Vec<FileReport<'a>>,
    streams: Streams<'a>,
    missing_streams: &'a [String],
    /// With `--collected`: exact repeats of records, left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    repeats: Option<u64>,
}

/// Lines a collector received twice: a syslog sink sends its last records again after a
/// reconnect, so a repeat follows its first copy within a bounded distance.
#[derive(Default)]
struct Repeats {
    recent: std::collections::VecDeque<[u8; 32]>,
    set: std::collections::HashSet<[u8; 32]>,
    count: u64,
}

impl Repeats {
    /// How many earlier lines a repeat is looked for among: far more than a sink resends.
    const WINDOW: usize = 65_536;

    /// Whether `line` repeats one of the last lines seen; remembers it otherwise.
    fn seen(&mut self, line: &[u8]) -> bool {
        use sha2::Digest;
        let id: [u8; 32] = sha2::Sha256::digest(line.trim_ascii_end()).into();
        if self.set.contains(&id) {
            self.count += 1;
            return true;
        }
        if self.recent.len() == Self::WINDOW {
            if let Some(old) = self.recent.pop_front() {
                self.set.remove(&old);
            }
        }
        self.recent.push_back(id);
        self.set.insert(id);
        false
    }
}

struct Streams<'a> {
    v: &'a Verifier,
    names: &'a [String],
}

impl Serialize for Streams<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(self.v.streams.iter().map(|(id, s)| {
            stream_report(id, s, self.names, &self.v.files, self.v.seal_key.is_some())
        }))
    }
}

fn stream_report<'a>(
    id: &'a str,
    s: &'a Stream,
    names: &'a [String],
    paths: &[PathBuf],
    sealing: bool,
) -> StreamReport<'a> {
    let mut files: Vec<&str> = Vec::new();
    for f in s.files() {
        if !files.contains(&names[f].as_str()) {
            files.push(&names[f]);
        }
    }
    StreamReport {
        stream: id,
        verdict: s.verdict.as_str(),
        first_seq: s.first_seq,
        last_seq: s.max_seq,
        records: s.records,
        files,
        start: s.start.as_ref().map(|st| st.info()),
        last_time: s.last_time.as_deref(),
        closed: s.closed,
        keyed: s.keyed,
        unverified_records: s.unverified,
        checkpoints: s.checkpoints,
        last_anchor_seq: (s.last_anchor > 0).then_some(s.last_anchor),
        unanchored_tail: (s.max_seq > s.last_anchor).then(|| (s.last_anchor + 1, s.max_seq)),
        anchored_by_head: s.anchored_by_head,
        problems: s.problems().iter().map(|p| p.describe(paths)).collect(),
        more_problems: s.rare.as_ref().map_or(0, |r| r.more_problems),
        findings: s.problems(),
        seal: sealing.then(|| {
            let x = s.seals.as_deref();
            SealReport {
                valid_seals: x.map_or(0, |x| x.valid),
                last_valid_seal_seq: x.map(|x| x.last_valid_seq).filter(|n| *n > 0),
                unsealed_checkpoints: x.map_or(0, |x| x.unsealed),
                bad_seals: x.map_or(0, |x| x.bad),
                first_failure: x.and_then(|x| x.first_failure.as_ref()),
                unsealed_spans: x.map_or(&[], |x| &x.unsealed_spans),
                more_unsealed_spans: x.map_or(0, |x| x.more_spans),
                unsealed_tail: unsealed_tail(s),
            }
        }),
    }
}

/// A finding of the incremental verifier: what `keytrail watch` alerts on.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The stream, when the line could be told to belong to one.
    pub stream: Option<String>,
    /// The record's sequence number (for missing records, the first missing one).
    pub seq: Option<u64>,
    /// What is wrong, in words.
    pub message: String,
}

/// The hash chains of a trail verified as its lines arrive, by the same checks as
/// `keytrail verify`: each line is checked on arrival and its findings handed back at
/// once instead of in a report at the end.
pub struct Incremental {
    v: Verifier,
}

impl Incremental {
    /// A verifier with the HMAC key of a keyed trail and the initial key of a
    /// forward-secure one, when given (records sealed with a key that is not given are
    /// counted as unverified, not as findings).
    pub fn new(
        key: Option<&std::path::Path>,
        initial_key: Option<&std::path::Path>,
    ) -> Result<Self> {
        Ok(Incremental {
            v: Verifier::with_keys(Vec::new(), key, initial_key, Heads::default())?,
        })
    }

    /// Registers a file; its index is the `file` of its [`Line`]s.
    pub fn add_file(&mut self, path: PathBuf) -> usize {
        self.v.files.push(path);
        self.v.file_state.push(FileState {
            collect: true,
            ..FileState::default()
        });
        self.v.files.len() - 1
    }

    /// Checks one line (complete, or over-long) and returns what it revealed.
    pub fn check_line(&mut self, l: Line<'_>) -> Vec<Finding> {
        let file = l.file;
        let number = l.number;
        let invalid_before = self.v.file_state[file].invalid;
        self.v.touched = None;
        self.v.line(l);
        let fs = &mut self.v.file_state[file];
        let fresh = std::mem::take(&mut fs.fresh);
        let unattributed = (fs.invalid - invalid_before)
            .saturating_sub(fresh.iter().filter(|p| p.is_invalid()).count() as u64);
        let stream = self
            .v
            .touched
            .and_then(|i| self.v.streams.get_index(i))
            .map(|(id, _)| id.to_string());
        let mut out: Vec<Finding> = fresh
            .iter()
            .filter(|p| !matches!(p, Problem::OtherKey { .. }))
            .map(|p| Finding {
                stream: stream.clone(),
                seq: match p {
                    Problem::Missing { from, .. } => Some(*from),
                    Problem::HashMismatch { seq, .. }
                    | Problem::PrevMismatch { seq, .. }
                    | Problem::Damaged { seq, .. }
                    | Problem::Reordered { seq, .. }
                    | Problem::Duplicate { seq, .. }
                    | Problem::NotKeyed { seq, .. }
                    | Problem::BadStart { seq, .. }
                    | Problem::HeadMismatch { seq, .. }
                    | Problem::BadSeal { seq, .. } => Some(*seq),
                    Problem::OtherKey { .. } | Problem::Truncated { .. } => None,
                },
                message: p.describe(&self.v.files),
            })
            .collect();
        if unattributed > 0 {
            let last = fs.damaged_lines.last().filter(|(n, _)| *n == number);
            out.push(Finding {
                stream: None,
                seq: None,
                message: format!(
                    "INVALID line {}:{number}: {}",
                    self.v.files[file].display(),
                    last.map_or("a record without integrity fields", |(_, r)| r.as_str())
                ),
            });
        }
        out
    }
}

/// Runs `keytrail verify`; returns the exit status.
pub fn run(args: &VerifyArgs) -> Result<u8> {
    let files = input::trail_files(&args.inputs, args.keep_order)?;
    let heads = Heads::parse(&args.head)?;
    let mut v = Verifier::with_keys(
        files.clone(),
        args.key.as_deref(),
        args.initial_key.as_deref(),
        heads,
    )?;
    if let Some(p) = &args.seal_key {
        let pem = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the seal key {}", p.display()))?;
        v.seal_key = Some(
            SealKey::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("the seal key {}: {e}", p.display()))?,
        );
    }
    let mut progress = Progress::new(&files, args.quiet);
    let mut errors = Vec::new();
    let mut repeats = Repeats::default();
    input::for_each_line(
        &files,
        &mut progress,
        |i, e| errors.push((i, e)),
        |l| {
            if !(args.collected && repeats.seen(l.bytes)) {
                v.line(l)
            }
        },
    );
    for (i, e) in errors {
        v.file_state[i].error = Some(e);
        v.file_state[i].invalid += 1;
    }
    let (exit_status, missing_streams) = v.finish();
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let report = Report {
        verdict: match exit_status {
            EXIT_VALID => "valid",
            EXIT_INVALID => "INVALID",
            _ => "UNPROVEN",
        },
        exit_status,
        files: v
            .file_state
            .iter()
            .zip(&names)
            .map(|(state, file)| FileReport {
                file,
                verdict: file_verdict(state),
                state,
            })
            .collect(),
        streams: Streams {
            v: &v,
            names: &names,
        },
        missing_streams: &missing_streams,
        repeats: args.collected.then_some(repeats.count),
    };
    if args.json {
        text::print_json(&report)?;
    } else {
        print_text(&report);
    }
    Ok(exit_status)
}

fn print_text(r: &Report<'_>) {
    outln!("files:");
    for f in &r.files {
        let s = f.state;
        outln!(
            "  {}: {} — {} lines, {} records, {} streams",
            f.file,
            f.verdict,
            s.lines,
            s.records,
            s.streams
        );
        if let Some(e) = &s.error {
            outln!("    {e}");
        }
        for (line, reason) in &s.damaged_lines {
            outln!("    damaged line {}:{line}: {reason}", f.file);
        }
        if s.more_damaged > 0 {
            outln!("    … and {} more damaged lines", s.more_damaged);
        }
        if !s.unchained_lines.is_empty() {
            let lines: Vec<String> = s.unchained_lines.iter().map(u64::to_string).collect();
            outln!(
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
    outln!("streams:");
    for (id, st) in &r.streams.v.streams {
        let s = stream_report(
            id,
            st,
            r.streams.names,
            &r.streams.v.files,
            r.streams.v.seal_key.is_some(),
        );
        let who = s
            .start
            .as_ref()
            .map(|st| {
                format!(
                    " pid {} {} user {}, started {}",
                    st.pid.map_or("?".into(), |p| p.to_string()),
                    st.process.unwrap_or("?"),
                    st.user.unwrap_or("?"),
                    st.time.unwrap_or("?")
                )
            })
            .unwrap_or_default();
        outln!("  stream {}{who}", s.stream);
        outln!(
            "    {}: seq {}..{}, {} records{} in {}",
            s.verdict,
            s.first_seq,
            s.last_seq,
            s.records,
            if s.keyed { " (keyed)" } else { "" },
            s.files.join(", ")
        );
        for p in &s.problems {
            outln!("    {p}");
        }
        if s.more_problems > 0 {
            outln!("    … and {} more problems", s.more_problems);
        }
        if s.unverified_records > 0 {
            outln!(
                "    {} keyed records not verified: give the key with --key",
                s.unverified_records
            );
        }
        if !s.closed {
            outln!(
                "    no stop record: the process crashed, was killed, is still running, or the tail was truncated (last record {})",
                s.last_time.unwrap_or("?")
            );
        }
        if let (Some((a, b)), false) = (s.unanchored_tail, s.closed) {
            outln!(
                "    unanchored tail: records {a}..{b} come after the last checkpoint{}; truncation there is detectable only with --head",
                s.last_anchor_seq
                    .map(|n| format!(" (seq {n})"))
                    .unwrap_or_default()
            );
        }
        if let Some(h) = s.anchored_by_head {
            outln!("    anchored by --head at seq {h}");
        }
        if let Some(x) = &s.seal {
            print_seals(x, &r.streams.v.files);
        }
    }
    for m in r.missing_streams {
        outln!("  stream {m}: MISSING — named by --head but absent from the trail");
    }
    if let Some(n) = r.repeats {
        outln!("repeats: {n} records received twice, each identical to its first copy, left out");
    }
    outln!("verdict: {}", r.verdict);
}

fn print_seals(x: &SealReport<'_>, files: &[PathBuf]) {
    outln!(
        "    seals: {} valid{}, {} unsealed, {} bad",
        x.valid_seals,
        x.last_valid_seal_seq
            .map(|n| format!(" (last at seq {n})"))
            .unwrap_or_default(),
        x.unsealed_checkpoints,
        x.bad_seals
    );
    if let Some(f) = x.first_failure {
        outln!(
            "    first {} checkpoint: seq {} ({}:{}): {}",
            if f.kind == "bad" {
                "badly sealed"
            } else {
                "unsealed"
            },
            f.seq,
            files[f.at.file].display(),
            f.at.line,
            f.reason
        );
    }
    for span in x.unsealed_spans {
        outln!(
            "    unsealed span: {} checkpoint{} at seq {}..{}: {}{}",
            span.checkpoints,
            if span.checkpoints == 1 { "" } else { "s" },
            span.from_seq,
            span.to_seq,
            span.reason,
            if span.sealed_after {
                "; a later seal covers its records"
            } else {
                ""
            }
        );
    }
    if x.more_unsealed_spans > 0 {
        outln!("    … and {} more unsealed spans", x.more_unsealed_spans);
    }
    if x.unsealed_tail > 0 {
        outln!(
            "    unsealed tail of {} records: after the last valid seal{}, nothing proves them against a rewrite",
            x.unsealed_tail,
            x.last_valid_seal_seq
                .map(|n| format!(" (seq {n})"))
                .unwrap_or_default()
        );
    }
}
