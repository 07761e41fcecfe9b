//! Forward-secure epochs (`[integrity] mode = "forward-secure"`): one MAC key per epoch,
//! each derived one-way from the previous one, the previous one erased when an epoch ends.
//!
//! Epoch `n` covers the time `[t0 + n·interval, t0 + (n+1)·interval)`, so every process
//! sharing a key file agrees on the epoch without talking to the others. The key of epoch
//! `n+1` is `HMAC-SHA256(k_n, "keytrail epoch" || n+1 as 8 big-endian bytes)`. See
//! docs/integrity.md for what this proves and what it does not.
//!
//! A key file is one line, always of the same length, so that the next epoch's key is
//! written over the previous one in place:
//!
//! ```text
//! keytrail-fs v1 t0_ms=<20 digits> interval_ms=<20 digits> id=<8 hex> epoch=<20 digits> key=<64 hex>
//! ```

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::{Zeroize, Zeroizing};

/// The `alg` of forward-secure records.
pub const ALG_FS: &str = "hmac-sha256-fs";

type HmacSha256 = Hmac<Sha256>;

/// The key of one epoch, with what a verifier or writer needs to place it in time.
#[derive(Clone)]
pub struct EpochKey {
    /// Start of epoch 0, milliseconds since 1970.
    pub t0_ms: u64,
    /// Length of an epoch in milliseconds (at least 1).
    pub interval_ms: u64,
    /// The public id of the initial key: names the sequence of keys, reveals none.
    pub id: String,
    /// The epoch this key belongs to.
    pub epoch: u64,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochKey(id {}, epoch {})", self.id, self.epoch)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EpochKey {
    /// A fresh random initial key (epoch 0 starting now).
    pub fn generate(interval: Duration) -> Result<EpochKey, String> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut key[..]).map_err(|e| format!("no OS randomness for a key: {e}"))?;
        let id = super::Key::id_of(&key[..]);
        Ok(EpochKey {
            t0_ms: now_ms(),
            interval_ms: (interval.as_millis() as u64).max(1),
            id,
            epoch: 0,
            key,
        })
    }

    /// The epoch a time (ms since 1970) falls in.
    pub fn epoch_at(&self, t_ms: u64) -> u64 {
        t_ms.saturating_sub(self.t0_ms) / self.interval_ms
    }

    /// The epoch of the present time.
    pub fn current_epoch(&self) -> u64 {
        self.epoch_at(now_ms())
    }

    /// Moves this key forward to `epoch` (never backwards), erasing every earlier key.
    pub fn advance_to(&mut self, epoch: u64) {
        while self.epoch < epoch {
            let next = self.epoch + 1;
            let Ok(mut m) = <HmacSha256 as KeyInit>::new_from_slice(&self.key[..]) else {
                return;
            };
            m.update(b"keytrail epoch");
            m.update(&next.to_be_bytes());
            let mut out = m.finalize().into_bytes();
            // Assigning over the array overwrites the old key in place; the temporary is
            // wiped too.
            self.key.copy_from_slice(&out);
            out.as_mut_slice().zeroize();
            self.epoch = next;
        }
    }

    /// The HMAC state keyed with this epoch's key.
    pub fn mac(&self) -> Result<HmacSha256, String> {
        <HmacSha256 as KeyInit>::new_from_slice(&self.key[..]).map_err(|e| e.to_string())
    }

    /// The key file's line for this key.
    fn line(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "keytrail-fs v1 t0_ms={:020} interval_ms={:020} id={} epoch={:020} key={}\n",
            self.t0_ms,
            self.interval_ms,
            self.id,
            self.epoch,
            hex::encode(&self.key[..])
        ))
    }

    /// Parses a key file's line.
    pub fn parse(text: &str) -> Result<EpochKey, String> {
        let mut f = text.trim_end().split(' ');
        if f.next() != Some("keytrail-fs") || f.next() != Some("v1") {
            return Err("not a keytrail forward-secure key file".into());
        }
        let mut field = |name: &str| -> Result<String, String> {
            f.next()
                .and_then(|w| w.strip_prefix(name))
                .and_then(|w| w.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| format!("the key file lacks {name}"))
        };
        let num = |s: String, name: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("the key file's {name} is not a number"))
        };
        let t0_ms = num(field("t0_ms")?, "t0_ms")?;
        let interval_ms = num(field("interval_ms")?, "interval_ms")?.max(1);
        let id = field("id")?;
        let epoch = num(field("epoch")?, "epoch")?;
        let key_hex = Zeroizing::new(field("key")?);
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(key_hex.as_bytes(), &mut key[..])
            .map_err(|_| "the key file's key is not 64 hex digits".to_string())?;
        Ok(EpochKey {
            t0_ms,
            interval_ms,
            id,
            epoch,
            key,
        })
    }

    /// Reads a key file (which must be readable by its owner only).
    pub fn load(path: &Path) -> Result<EpochKey, String> {
        let bytes = super::read_key_file(path)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| format!("the key file {} is not text: {e}", path.display()))?;
        EpochKey::parse(text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The writer's epoch state: the current key and the file that holds only it.
pub struct Epochs {
    key: EpochKey,
    path: PathBuf,
}

impl std::fmt::Debug for Epochs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Epochs({:?}, {})", self.key, self.path.display())
    }
}

impl Clone for Epochs {
    fn clone(&self) -> Self {
        Epochs {
            key: self.key.clone(),
            path: self.path.clone(),
        }
    }
}

impl Epochs {
    /// Opens the current-key file; when it does not exist yet, makes a new initial key,
    /// writes it once to `initial` (which must not exist: the operator moves it off the
    /// host for the verifier) and starts the current-key file from it.
    pub fn open(path: &Path, initial: Option<&Path>, interval: Duration) -> Result<Epochs, String> {
        let key = match std::fs::symlink_metadata(path) {
            Ok(_) => EpochKey::load(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(initial) = initial else {
                    return Err(format!(
                        "forward-secure mode: the key file {} does not exist and no initial_key_file is configured to start one",
                        path.display()
                    ));
                };
                let key = EpochKey::generate(interval)?;
                write_new(initial, &key.line())?;
                write_new(path, &key.line())?;
                key
            }
            Err(e) => {
                return Err(format!(
                    "the key file {} cannot be read: {e}",
                    path.display()
                ));
            }
        };
        let mut e = Epochs {
            key,
            path: path.to_path_buf(),
        };
        e.roll();
        Ok(e)
    }

    /// The current key, moved forward to the present epoch first (and the key file with
    /// it).
    pub fn current(&mut self) -> &EpochKey {
        self.roll();
        &self.key
    }

    /// Moves to the present epoch. The file is rewritten under a lock, in place, only
    /// when it holds an older epoch: another process may have moved it on already, and it
    /// must never go back.
    fn roll(&mut self) {
        let now = self.key.current_epoch();
        if now <= self.key.epoch {
            return;
        }
        self.key.advance_to(now);
        if let Err(e) = self.store() {
            crate::diag::report(&format!(
                "forward-secure mode: cannot erase the previous epoch's key from {}: {e}",
                self.path.display()
            ));
        }
    }

    fn store(&self) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)?;
        let _lock = Flock::exclusive(&f)?;
        let mut text = Zeroizing::new(String::new());
        f.read_to_string(&mut text)?;
        if let Ok(on_disk) = EpochKey::parse(&text)
            && on_disk.id == self.key.id
            && on_disk.epoch >= self.key.epoch
        {
            return Ok(());
        }
        // Same length every time: this overwrites the previous key's bytes.
        f.seek(std::io::SeekFrom::Start(0))?;
        f.write_all(self.key.line().as_bytes())?;
        f.set_len(self.key.line().len() as u64)?;
        f.sync_all()
    }
}

/// Writes a new file, readable by its owner only; refuses to replace one.
fn write_new(path: &Path, text: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create the key file {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write the key file {}: {e}", path.display()))
}

/// An exclusive `flock` held until dropped.
struct Flock(std::os::fd::RawFd);

impl Flock {
    fn exclusive(f: &std::fs::File) -> std::io::Result<Flock> {
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        // SAFETY: fd is an open descriptor owned by `f`, which outlives the lock.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Flock(fd))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: the descriptor is still open (see `exclusive`).
        unsafe { libc::flock(self.0, libc::LOCK_UN) };
    }
}

/// The verifier's keys: derived from the initial key on demand, kept for every epoch seen.
pub struct EpochKeys {
    initial: EpochKey,
    /// The highest epoch's key derived so far: later epochs start from it.
    last: EpochKey,
    derived: std::collections::BTreeMap<u64, HmacSha256>,
}

/// The largest epoch a verifier derives a key for (a record stating more is bad, not a
/// reason to compute for hours).
pub const MAX_EPOCH: u64 = 1 << 26;

impl EpochKeys {
    /// From the initial key file (epoch 0).
    pub fn load(path: &Path) -> Result<EpochKeys, String> {
        let initial = EpochKey::load(path)?;
        if initial.epoch != 0 {
            return Err(format!(
                "{} holds the key of epoch {}, not the initial key (epoch 0)",
                path.display(),
                initial.epoch
            ));
        }
        Ok(EpochKeys {
            last: initial.clone(),
            initial,
            derived: Default::default(),
        })
    }

    /// The id of the key sequence.
    pub fn id(&self) -> &str {
        &self.initial.id
    }

    /// The epoch a record written at `t_ms` may state, from `epoch_at(t_ms)` to that of
    /// one interval (at most a minute) later: the record is sealed a little after its time.
    pub fn plausible(&self, epoch: u64, t_ms: u64) -> bool {
        let grace = self.initial.interval_ms.min(60_000);
        epoch >= self.initial.epoch_at(t_ms) && epoch <= self.initial.epoch_at(t_ms + grace)
    }

    /// HMAC-SHA256 of `bytes` with the key of `epoch`, or None past [`MAX_EPOCH`].
    pub fn hash(&mut self, epoch: u64, bytes: &[u8]) -> Option<[u8; 32]> {
        if epoch > MAX_EPOCH {
            return None;
        }
        if !self.derived.contains_key(&epoch) {
            let mut k = if epoch >= self.last.epoch {
                self.last.clone()
            } else {
                self.initial.clone()
            };
            k.advance_to(epoch);
            self.derived.insert(epoch, k.mac().ok()?);
            if k.epoch > self.last.epoch {
                self.last = k;
            }
        }
        let mut m = self.derived.get(&epoch)?.clone();
        m.update(bytes);
        Some(m.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_move_one_way_and_the_file_keeps_its_length() {
        let mut k = EpochKey::generate(Duration::from_secs(60)).expect("key");
        let k0 = k.clone();
        let line0 = k.line();
        k.advance_to(3);
        assert_eq!(k.epoch, 3);
        assert_ne!(k.key[..], k0.key[..]);
        let mut again = k0.clone();
        again.advance_to(3);
        assert_eq!(again.key[..], k.key[..], "derivation is deterministic");
        assert_eq!(k.line().len(), line0.len());
        let back = EpochKey::parse(&k.line()).expect("parse");
        assert_eq!(back.epoch, 3);
        assert_eq!(back.key[..], k.key[..]);
        assert!(!format!("{k:?}").contains(&hex::encode(&k.key[..])[..16]));
    }
}
