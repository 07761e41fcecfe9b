//! The hash chain: every record of a stream carries its stream id, a gap-free sequence
//! number and the hash of the previous record of the stream.
//!
//! # Record format
//!
//! [`json::encode`] writes a record as `{...}\n`. The chain replaces the closing `}\n` with
//!
//! ```text
//! ,"integrity":{"stream":"<32 hex>","seq":N,"prev":"<64 hex>"|null[,"alg":"hmac-sha256","key":"<8 hex>"]
//! ```
//!
//! computes the hash over the line's bytes from its `{` up to that point (the *signed
//! prefix*), and appends `,"hash":"<64 hex>"}}\n`. The hash is SHA-256 of the signed prefix,
//! or HMAC-SHA256 with the configured key in keyed mode. No canonical JSON form is needed:
//! a verifier recomputes the hash over the exact bytes of the line up to `,"hash":"`, which
//! is always the last 76 bytes of the line. `prev` is the `hash` of the previous record of
//! the stream (`null` on the first), so a record changed, removed, inserted or moved breaks
//! the chain at a known sequence number.
//!
//! # Stream life
//!
//! A stream is one process. Its first record is `trail_start` (the chain adds the module's
//! SHA-256 and the stream's integrity settings on the writer thread); `C_Finalize` writes
//! `trail_stop`; a later `C_Initialize` in the same process writes `trail_resume` and the
//! same stream goes on. `checkpoint` records are written every `checkpoint_interval`, even
//! when idle, carrying the head of the chain (the sequence number and hash of the record
//! before them), so that a copy kept elsewhere anchors the trail against truncation.
//! After `fork()` the child starts a stream of its own: a new `Chain` (new id, sequence
//! from 1) whose first record is the child's `trail_start` (see `SinkSlot`).

pub mod epoch;

use super::json::{self, Origin};
use super::ocsf;
use crate::audit::event::{Event, WallClock};
use crate::config::{Format, IntegrityConfig};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The bytes that follow the signed prefix of a record: `,"hash":"` + 64 hex + `"}}`.
pub const HASH_SUFFIX_LEN: usize = 76;
/// The marker that ends the signed prefix.
pub const HASH_MARKER: &[u8] = b",\"hash\":\"";
/// The `alg` of keyed records.
pub const ALG_HMAC: &str = "hmac-sha256";
/// Smallest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// A secret HMAC key. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Key {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {})", self.id())
    }
}

impl Key {
    /// Reads a key file: its bytes are the key. The file must be readable by its owner
    /// only and hold at least [`MIN_KEY_LEN`] bytes.
    pub fn load(path: &Path) -> Result<Key, String> {
        let mut bytes = read_key_file(path)?;
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!(
                "the key file {} holds {} bytes; a key needs at least {MIN_KEY_LEN} (make one with `head -c 32 /dev/urandom > {}`)",
                path.display(),
                bytes.len(),
                path.display()
            ));
        }
        Ok(Key {
            bytes: std::mem::take(&mut *bytes),
        })
    }

    /// A short public identifier of the key: the first 8 hex digits of SHA-256 over
    /// `keytrail key id` and the key. It tells which key a stream used, not the key.
    pub fn id(&self) -> String {
        Key::id_of(&self.bytes)
    }

    /// The public identifier of key bytes (see [`Key::id`]).
    pub fn id_of(bytes: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(b"keytrail key id\0");
        h.update(bytes);
        hex::encode(&h.finalize()[..4])
    }

    fn mac(&self) -> Result<HmacSha256, String> {
        <HmacSha256 as KeyInit>::new_from_slice(&self.bytes).map_err(|e| e.to_string())
    }
}

/// The longest secret file read (an HMAC key, an epoch key, a PIN, a TLS private key).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads a secret file (an HMAC or epoch key, a PIN, a TLS private key): opened by its
/// resolved path without following a link, and checked on the opened descriptor, so that
/// the file read is the file checked ([`check_key_file`]'s rules). The bytes are zeroed
/// when dropped.
pub fn read_key_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let cannot = |e: std::io::Error| format!("the key file {} cannot be read: {e}", path.display());
    let resolved = std::fs::canonicalize(path).map_err(cannot)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&resolved)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    check_key_meta(path, &resolved, &meta)?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "the key file {} is larger than {MAX_KEY_FILE} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Checks that a key file exists, is a regular file, and is neither readable nor
/// writable by group or others. Readers use [`read_key_file`], which applies the same
/// rules to the descriptor it reads.
pub fn check_key_file(path: &Path) -> Result<(), String> {
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| format!("the key file {} cannot be read: {e}", path.display()))?;
    let meta = std::fs::metadata(&resolved)
        .map_err(|e| format!("the key file {} cannot be read: {e}", path.display()))?;
    check_key_meta(path, &resolved, &meta)
}

fn check_key_meta(path: &Path, resolved: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.is_file() {
        return Err(format!("the key file {} is not a file", path.display()));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the key file {} is accessible by group or others (mode {mode:03o}); only its owner may read it: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    // Its owner knows the key: only root or the user keytrail runs as may own it.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if let Err(crate::trust::TrustError::Untrusted(u)) =
        crate::trust::check_opened(path, resolved, meta, euid)
    {
        return Err(format!("the key file {u}"));
    }
    Ok(())
}

/// How records are hashed.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256: anyone can recompute the chain.
    Plain,
    /// HMAC-SHA256 with a secret key (the MAC state keyed once, cloned per record).
    Keyed {
        /// The keyed MAC state.
        mac: Box<HmacSha256>,
        /// The key's public identifier.
        id: String,
    },
}

impl Hasher {
    /// The hasher for a key (or plain SHA-256 without one).
    pub fn new(key: Option<&Key>) -> Result<Hasher, String> {
        Ok(match key {
            None => Hasher::Plain,
            Some(k) => Hasher::Keyed {
                mac: Box::new(k.mac()?),
                id: k.id(),
            },
        })
    }

    /// The hash of a signed prefix.
    #[inline]
    pub fn hash(&self, bytes: &[u8]) -> [u8; 32] {
        match self {
            Hasher::Plain => Sha256::digest(bytes).into(),
            Hasher::Keyed { mac, .. } => {
                let mut m = (**mac).clone();
                m.update(bytes);
                m.finalize().into_bytes().into()
            }
        }
    }
}

/// A new random stream id: 128 bits, hex.
pub fn new_stream_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness (very early boot, seccomp): fall back to what is unique here.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut h = Sha256::new();
        h.update(now.to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(crate::os::thread_id().to_le_bytes());
        b.copy_from_slice(&h.finalize()[..16]);
    }
    hex::encode(b)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Signs the heads of a chain (checkpoints and `trail_stop`) with a key kept elsewhere,
/// such as a private key inside an HSM.
pub trait Sealer: Send {
    /// Signs `message` (see [`seal_message`]); returns the algorithm's name and the
    /// signature, or why it could not sign (the checkpoint then says it is unsealed).
    fn seal(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), String>;

    /// Called before each head is taken (and so before [`Sealer::seal`]): gets ready to
    /// sign (an HSM sealer logs in again after a failure) and returns records of the
    /// sealer's own use of its key since the last call, which the chain writes before the
    /// head, so that the seal covers them. They must never hold a secret.
    fn prepare(&mut self) -> Vec<Event> {
        Vec::new()
    }
}

impl<S: Sealer + ?Sized> Sealer for Box<S> {
    fn seal(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), String> {
        (**self).seal(message)
    }

    fn prepare(&mut self) -> Vec<Event> {
        (**self).prepare()
    }
}

/// The bytes a seal signs: a fixed label, the stream id, the head's sequence number and
/// the head's hash (all zero before the first record).
pub fn seal_message(stream: &str, seq: u64, head: Option<&[u8; 32]>) -> Vec<u8> {
    let mut m = b"keytrail seal v1\0".to_vec();
    m.extend_from_slice(stream.as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head.unwrap_or(&[0u8; 32]));
    m
}

/// The writer's side of the chain of one stream.
#[derive(Clone)]
pub struct Chain {
    stream: String,
    seq: u64,
    prev: Option<[u8; 32]>,
    /// `prev` in hex, as the record before spelled its own hash.
    prev_hex: [u8; 64],
    hasher: Hasher,
    interval: Option<Duration>,
    last_checkpoint: Instant,
    since_checkpoint: u64,
    stopped: bool,
    /// Where copies of the chain's heads go (`[integrity] anchor_file`, `syslog`).
    anchor_file: Option<std::path::PathBuf>,
    syslog: bool,
    /// Head records (start, checkpoint, stop) waiting to be copied there.
    anchors: Vec<u8>,
    /// Forward-secure mode: the current epoch's key, which replaces `hasher`.
    epochs: Option<epoch::Epochs>,
    /// The epoch `hasher` is keyed for (forward-secure mode).
    hasher_epoch: u64,
    /// Signs each checkpoint's and `trail_stop`'s head, when set.
    sealer: Option<std::sync::Arc<std::sync::Mutex<dyn Sealer>>>,
    /// ECS or OCSF records.
    format: Format,
    /// The clocks that date the records being appended, when their writer read them once
    /// for a batch ([`Chain::set_wall_clock`]); otherwise read for each record.
    wall: Option<WallClock>,
}

impl Chain {
    /// A new stream with the configured key (read now) and checkpoint interval.
    pub fn new(config: &IntegrityConfig) -> Result<Chain, String> {
        if config.mode == crate::config::IntegrityMode::ForwardSecure {
            let Some(path) = &config.key_file else {
                return Err("forward-secure mode needs [integrity] key_file".into());
            };
            let interval = config
                .epoch_interval
                .0
                .unwrap_or(crate::config::DEFAULT_EPOCH_INTERVAL);
            let epochs = epoch::Epochs::open(path, config.initial_key_file.as_deref(), interval)?;
            let mut chain = Chain::forward_secure(epochs, config.checkpoint_interval.0)?;
            chain.anchor_file = config.anchor_file.clone();
            chain.syslog = config.syslog;
            return Ok(chain);
        }
        let key = match &config.key_file {
            Some(p) => Some(Key::load(p)?),
            None => None,
        };
        let mut chain = Chain::with(Hasher::new(key.as_ref())?, config.checkpoint_interval.0);
        chain.anchor_file = config.anchor_file.clone();
        chain.syslog = config.syslog;
        Ok(chain)
    }

    /// A new stream with a given hasher and checkpoint interval.
    pub fn with(hasher: Hasher, interval: Option<Duration>) -> Chain {
        Chain {
            stream: new_stream_id(),
            seq: 0,
            prev: None,
            prev_hex: [0; 64],
            wall: None,
            hasher,
            interval,
            last_checkpoint: Instant::now(),
            since_checkpoint: 0,
            stopped: false,
            anchor_file: None,
            syslog: false,
            anchors: Vec::new(),
            epochs: None,
            hasher_epoch: 0,
            sealer: None,
            format: Format::Ecs,
        }
    }

    /// Writes records in `format` from now on (ECS unless set).
    pub fn set_format(&mut self, format: Format) {
        self.format = format;
    }

    /// A new forward-secure stream: every record is keyed with its epoch's key.
    pub fn forward_secure(
        mut epochs: epoch::Epochs,
        interval: Option<Duration>,
    ) -> Result<Chain, String> {
        let k = epochs.current();
        let hasher = Hasher::Keyed {
            mac: Box::new(k.mac()?),
            id: k.id.clone(),
        };
        let hasher_epoch = k.epoch;
        let mut c = Chain::with(hasher, interval);
        c.epochs = Some(epochs);
        c.hasher_epoch = hasher_epoch;
        Ok(c)
    }

    /// Copies the head records written since the last call to the anchor file (opened by
    /// `open`) and to syslog. A copy that cannot be written is reported, never retried
    /// into the trail.
    pub fn send_anchors(&mut self, open: impl FnOnce(&Path) -> std::io::Result<std::fs::File>) {
        if self.anchors.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.anchors);
        if let Some(path) = &self.anchor_file {
            use std::io::Write;
            let written = open(path).and_then(|mut f| f.write_all(&lines));
            if let Err(e) = written {
                crate::diag::report(&format!(
                    "cannot write the anchor file {}: {e}",
                    path.display()
                ));
            }
        }
        if self.syslog {
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                crate::os::syslog_line(line);
            }
        }
    }

    /// The anchor file, if one is configured.
    pub fn anchor_file(&self) -> Option<&Path> {
        self.anchor_file.as_deref()
    }

    /// Seals every later checkpoint and `trail_stop` with `sealer`.
    pub fn set_sealer(&mut self, sealer: std::sync::Arc<std::sync::Mutex<dyn Sealer>>) {
        self.sealer = Some(sealer);
    }

    /// Dates the records appended from now on with `now` (read once for a batch), or with
    /// the clocks read for each record (`None`).
    pub fn set_wall_clock(&mut self, now: Option<WallClock>) {
        self.wall = now;
    }

    /// The stream id.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The sequence number of the last record written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Encodes `e` as the stream's next record and appends it, sealed, to `out`.
    /// `trail_start`, `trail_stop` and `checkpoint` records get their integrity details
    /// here, on the writer thread.
    pub fn append(&mut self, e: &Event, origin: &Origin, out: &mut Vec<u8>) {
        match e.action {
            "trail_start" | "trail_stop" | "trail_resume" | "checkpoint" => {
                if matches!(e.action, "trail_stop" | "checkpoint")
                    && let Some(sealer) = &self.sealer
                {
                    let own = match sealer.lock() {
                        Ok(mut s) => s.prepare(),
                        Err(_) => Vec::new(),
                    };
                    for r in &own {
                        self.encode(r, origin, out);
                    }
                }
                let mut e = e.clone();
                self.annotate(&mut e);
                let from = out.len();
                self.encode(&e, origin, out);
                if self.anchor_file.is_some() || self.syslog {
                    self.anchors.extend_from_slice(&out[from..]);
                }
            }
            _ => self.encode(e, origin, out),
        }
    }

    /// Appends a checkpoint record when the interval has passed (even if nothing else was
    /// written); returns whether it did. Not while the stream is stopped.
    pub fn tick(&mut self, origin: &Origin, out: &mut Vec<u8>) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        if self.stopped || self.seq == 0 || self.last_checkpoint.elapsed() < interval {
            return false;
        }
        let e = Event::audit(
            "checkpoint",
            format!(
                "checkpoint of stream {} at sequence {}",
                self.stream, self.seq
            ),
            serde_json::json!({}),
        );
        self.append(&e, origin, out);
        true
    }

    fn annotate(&mut self, e: &mut Event) {
        let mut detail = match e.extra_mut().detail.take() {
            Some(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        match e.action {
            "trail_start" => {
                if let Some(module) = detail.get("module").and_then(|m| m.as_str()) {
                    let digest = match sha256_file(Path::new(module)) {
                        Ok(d) => serde_json::Value::String(d),
                        Err(_) => serde_json::Value::Null,
                    };
                    detail.insert("module_sha256".into(), digest);
                }
                let mut integrity = serde_json::json!({
                    "alg": match self.hasher {
                        _ if self.epochs.is_some() => epoch::ALG_FS,
                        Hasher::Plain => "sha256",
                        Hasher::Keyed { .. } => ALG_HMAC,
                    },
                    "checkpoint_interval_s": self.interval.map(|d| d.as_secs_f64()),
                });
                if let Hasher::Keyed { id, .. } = &self.hasher {
                    integrity["key"] = serde_json::Value::String(id.clone());
                }
                detail.insert("integrity".into(), integrity);
                self.stopped = false;
            }
            "trail_resume" => self.stopped = false,
            _ => {
                // checkpoint and trail_stop carry the head of the chain before them.
                detail.insert(
                    "head".into(),
                    serde_json::json!({
                        "seq": self.seq,
                        "hash": self.prev.map(hex::encode),
                    }),
                );
                if let Some(sealer) = &self.sealer {
                    let message = seal_message(&self.stream, self.seq, self.prev.as_ref());
                    let outcome = match sealer.lock() {
                        Ok(mut s) => s.seal(&message),
                        Err(_) => Err("the sealer failed earlier (poisoned lock)".into()),
                    };
                    detail.insert(
                        "seal".into(),
                        match outcome {
                            Ok((alg, sig)) => {
                                serde_json::json!({"alg": alg, "sig": hex::encode(sig)})
                            }
                            Err(reason) => serde_json::json!({"unsealed": reason}),
                        },
                    );
                }
                detail.insert(
                    "records_since_checkpoint".into(),
                    serde_json::json!(self.since_checkpoint),
                );
                self.last_checkpoint = Instant::now();
                self.since_checkpoint = 0;
                if e.action == "trail_stop" {
                    self.stopped = true;
                }
            }
        }
        e.extra_mut().detail = Some(serde_json::Value::Object(detail));
    }

    fn encode(&mut self, e: &Event, origin: &Origin, out: &mut Vec<u8>) {
        let start = out.len();
        let seq = self.seq + 1;
        // The bytes that close the record: the integrity object goes before them, at the
        // record's top level in ECS, inside `unmapped` in OCSF.
        let now = self.wall.unwrap_or_else(WallClock::now);
        let close: &[u8] = match self.format {
            Format::Ecs => {
                json::encode(e, origin, seq, &now, out);
                b"}\n"
            }
            Format::Ocsf => {
                ocsf::encode(e, origin, &self.stream, seq, &now, out);
                b"}}\n"
            }
        };
        if out.len() < start + close.len() || !out.ends_with(close) {
            out.truncate(start);
            return;
        }
        out.truncate(out.len() - close.len());
        self.seal(seq, out, start);
        if self.format == Format::Ocsf {
            out.insert(out.len() - 1, b'}');
        }
    }

    /// Appends the integrity object to an open record (`{...` without its closing brace)
    /// that starts at `out[start]`, and closes it with a newline.
    fn seal(&mut self, seq: u64, out: &mut Vec<u8>, start: usize) {
        out.extend_from_slice(b",\"integrity\":{\"stream\":\"");
        out.extend_from_slice(self.stream.as_bytes());
        out.extend_from_slice(b"\",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        out.extend_from_slice(b",\"prev\":");
        match &self.prev {
            Some(_) => {
                out.push(b'"');
                out.extend_from_slice(&self.prev_hex);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        if let Some(epochs) = &mut self.epochs {
            // Forward-secure: key this record with the present epoch's key (moving the key
            // file on, and erasing the old key, when the epoch has changed).
            let k = epochs.current();
            if k.epoch != self.hasher_epoch
                && let Ok(mac) = k.mac()
            {
                self.hasher = Hasher::Keyed {
                    mac: Box::new(mac),
                    id: k.id.clone(),
                };
                self.hasher_epoch = k.epoch;
            }
            out.extend_from_slice(b",\"alg\":\"");
            out.extend_from_slice(epoch::ALG_FS.as_bytes());
            out.extend_from_slice(b"\",\"key\":\"");
            out.extend_from_slice(k.id.as_bytes());
            out.extend_from_slice(b"\",\"epoch\":");
            out.extend_from_slice(itoa::Buffer::new().format(self.hasher_epoch).as_bytes());
        } else if let Hasher::Keyed { id, .. } = &self.hasher {
            out.extend_from_slice(b",\"alg\":\"");
            out.extend_from_slice(ALG_HMAC.as_bytes());
            out.extend_from_slice(b"\",\"key\":\"");
            out.extend_from_slice(id.as_bytes());
            out.push(b'"');
        }
        let hash = self.hasher.hash(&out[start..]);
        out.extend_from_slice(HASH_MARKER);
        self.prev_hex = hex32(&hash);
        out.extend_from_slice(&self.prev_hex);
        out.extend_from_slice(b"\"}}\n");
        self.seq = seq;
        self.prev = Some(hash);
        self.since_checkpoint += 1;
    }
}

/// Each byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    t
};

/// A 32-byte value as 64 lower-case hex digits: one table look-up per byte (once per
/// record: its hash, which the next record repeats as its `prev`).
fn hex32(v: &[u8; 32]) -> [u8; 64] {
    let mut hex = [0u8; 64];
    for (pair, b) in hex.chunks_exact_mut(2).zip(v) {
        pair.copy_from_slice(&HEX_PAIRS[*b as usize]);
    }
    hex
}

/// Splits a trail line (without its newline) into its signed prefix and the hex hash it
/// states, when it has the shape the chain writes: an ECS record ends with the integrity
/// object and the record's brace, an OCSF record with one more, `unmapped`'s.
pub fn split_signed(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let suffix = if line.ends_with(b"\"}}}") {
        HASH_SUFFIX_LEN + 1
    } else if line.ends_with(b"\"}}") {
        HASH_SUFFIX_LEN
    } else {
        return None;
    };
    if line.len() < suffix {
        return None;
    }
    let cut = line.len() - suffix;
    let (prefix, rest) = line.split_at(cut);
    let hash = rest.strip_prefix(HASH_MARKER)?;
    Some((prefix, &hash[..64]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin::current(None)
    }

    fn lines(buf: &[u8]) -> Vec<serde_json::Value> {
        buf.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("JSON line"))
            .collect()
    }

    #[test]
    fn a_key_file_owned_by_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("trail.key");
        std::fs::write(&key, [7u8; 32]).expect("key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        check_key_file(&key).expect("root's own key file");
        std::os::unix::fs::chown(&key, Some(65534), Some(65534)).expect("chown");
        let e = check_key_file(&key).expect_err("another user's key file");
        assert!(e.contains("uid 65534") || e.contains("nobody"), "{e}");
        let e = read_key_file(&key).expect_err("read: another user's key file");
        assert!(e.contains("uid 65534") || e.contains("nobody"), "{e}");
    }

    /// The table's digits are those of `hex::encode` for every byte value.
    #[test]
    fn hex32_spells_every_byte_as_hex_does() {
        for first in [0u8, 32, 64, 96, 128, 160, 192, 224] {
            let v: [u8; 32] = std::array::from_fn(|i| first + i as u8);
            assert_eq!(&hex32(&v)[..], hex::encode(v).as_bytes());
        }
    }

    /// The reader applies the checks to what it reads: a loose mode, a directory, and a
    /// file too large to be a key are refused; a private file is read whole.
    #[test]
    fn read_key_file_checks_the_file_it_reads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("trail.key");
        std::fs::write(&key, [7u8; 32]).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            read_key_file(&key).expect("private key file").as_slice(),
            [7u8; 32]
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = read_key_file(&key).expect_err("loose mode");
        assert!(e.contains("group or others"), "{e}");
        let e = read_key_file(dir.path()).expect_err("a directory");
        assert!(
            e.contains("not a file") || e.contains("cannot be read"),
            "{e}"
        );
        let big = dir.path().join("big.key");
        std::fs::write(&big, vec![1u8; MAX_KEY_FILE as usize + 1]).expect("big");
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let e = read_key_file(&big).expect_err("too large");
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn records_chain_and_verify() {
        let mut c = Chain::with(Hasher::Plain, None);
        let mut buf = Vec::new();
        for i in 0..3 {
            let e = Event::audit("test", format!("r{i}"), serde_json::json!({}));
            c.append(&e, &origin(), &mut buf);
        }
        let recs = lines(&buf);
        assert_eq!(recs.len(), 3);
        let mut prev = serde_json::Value::Null;
        for (i, (r, line)) in recs.iter().zip(buf.split(|b| *b == b'\n')).enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(r["integrity"]["seq"], seq);
            assert_eq!(r["event"]["sequence"], seq);
            assert_eq!(r["integrity"]["stream"], c.stream());
            assert_eq!(r["integrity"]["prev"], prev);
            let (prefix, hash) = split_signed(line).expect("signed line");
            assert_eq!(hex::encode(Sha256::digest(prefix)).as_bytes(), hash);
            prev = r["integrity"]["hash"].clone();
        }
    }

    #[test]
    fn ocsf_records_chain_with_the_integrity_under_unmapped() {
        let mut c = Chain::with(Hasher::Plain, None);
        c.set_format(Format::Ocsf);
        let mut buf = Vec::new();
        for a in ["trail_start", "checkpoint", "trail_stop"] {
            c.append(
                &Event::audit(a, "m".into(), serde_json::json!({})),
                &origin(),
                &mut buf,
            );
        }
        let recs = lines(&buf);
        let mut prev = serde_json::Value::Null;
        for (i, (r, line)) in recs.iter().zip(buf.split(|b| *b == b'\n')).enumerate() {
            let seq = i as u64 + 1;
            let integrity = &r["unmapped"]["integrity"];
            assert_eq!(integrity["seq"], seq, "{r}");
            assert_eq!(integrity["prev"], prev);
            assert_eq!(r["metadata"]["uid"], format!("{}:{seq}", c.stream()));
            assert_eq!(r["class_uid"], 6002);
            let (prefix, hash) = split_signed(line).expect("signed line");
            assert_eq!(hex::encode(Sha256::digest(prefix)).as_bytes(), hash);
            prev = integrity["hash"].clone();
        }
        assert_eq!(recs[1]["unmapped"]["keytrail"]["head"]["seq"], 1);
        assert_eq!(recs[2]["activity_name"], "Stop");
    }

    #[test]
    fn keyed_records_use_hmac() {
        let key = Key {
            bytes: b"0123456789abcdef0123456789abcdef".to_vec(),
        };
        let hasher = Hasher::new(Some(&key)).expect("hmac");
        let mut c = Chain::with(hasher.clone(), None);
        let mut buf = Vec::new();
        c.append(
            &Event::audit("test", "x".into(), serde_json::json!({})),
            &origin(),
            &mut buf,
        );
        let line = &buf[..buf.len() - 1];
        let (prefix, hash) = split_signed(line).expect("signed");
        assert_eq!(hex::encode(hasher.hash(prefix)).as_bytes(), hash);
        assert_ne!(hex::encode(Sha256::digest(prefix)).as_bytes(), hash);
        let r = &lines(&buf)[0];
        assert_eq!(r["integrity"]["alg"], ALG_HMAC);
        assert_eq!(r["integrity"]["key"], key.id());
        assert!(!format!("{key:?}").contains("0123"));
    }

    #[test]
    fn checkpoints_and_stop_carry_the_head() {
        let mut c = Chain::with(Hasher::Plain, Some(Duration::from_millis(1)));
        let mut buf = Vec::new();
        assert!(
            !c.tick(&origin(), &mut buf),
            "no checkpoint before the start"
        );
        c.append(
            &Event::audit("trail_start", "s".into(), serde_json::json!({})),
            &origin(),
            &mut buf,
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.tick(&origin(), &mut buf));
        c.append(
            &Event::audit("trail_stop", "s".into(), serde_json::json!({})),
            &origin(),
            &mut buf,
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(!c.tick(&origin(), &mut buf), "no checkpoint after the stop");
        let recs = lines(&buf);
        assert_eq!(recs[0]["keytrail"]["integrity"]["alg"], "sha256");
        assert_eq!(recs[1]["event"]["action"], "checkpoint");
        assert_eq!(recs[1]["keytrail"]["head"]["seq"], 1);
        assert_eq!(
            recs[1]["keytrail"]["head"]["hash"],
            recs[0]["integrity"]["hash"]
        );
        assert_eq!(recs[2]["keytrail"]["head"]["seq"], 2);
    }

    /// Signs by hashing (a stand-in for an HSM), or fails once asked to.
    struct FakeSealer {
        down: bool,
    }

    impl Sealer for FakeSealer {
        fn seal(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), String> {
            if self.down {
                return Err("token not present".into());
            }
            Ok(("test".into(), Sha256::digest(message).to_vec()))
        }
    }

    #[test]
    fn a_sealer_signs_each_head_or_the_checkpoint_says_why_not() {
        let sealer = std::sync::Arc::new(std::sync::Mutex::new(FakeSealer { down: false }));
        let mut c = Chain::with(Hasher::Plain, Some(Duration::from_millis(1)));
        c.set_sealer(sealer.clone());
        let mut buf = Vec::new();
        let ev = |a| Event::audit(a, "x".into(), serde_json::json!({}));
        c.append(&ev("trail_start"), &origin(), &mut buf);
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.tick(&origin(), &mut buf));
        sealer.lock().expect("lock").down = true;
        c.append(&ev("trail_stop"), &origin(), &mut buf);
        let recs = lines(&buf);
        assert!(
            recs[0]["keytrail"].get("seal").is_none(),
            "the start is not a head"
        );
        let head: [u8; 32] = hex::decode(recs[0]["integrity"]["hash"].as_str().expect("hash"))
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        let want = Sha256::digest(seal_message(c.stream(), 1, Some(&head)));
        assert_eq!(recs[1]["keytrail"]["seal"]["alg"], "test");
        assert_eq!(recs[1]["keytrail"]["seal"]["sig"], hex::encode(want));
        assert_eq!(recs[2]["keytrail"]["seal"]["unsealed"], "token not present");
    }
}
