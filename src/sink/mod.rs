//! The writer: a bounded queue between callers and one writer thread that formats,
//! batches and writes the trail.
//!
//! The calling thread only moves a boxed [`Event`] into the queue; formatting, I/O and
//! retries happen on the writer thread. When the trail cannot be written, records are
//! counted, the failure is reported on stderr (and the diagnostics file), and the trail
//! itself says how many records were lost once it can be written again.

pub mod chain;
pub mod json;

use crate::audit::event::Event;
use crate::diag;
use chain::Chain;
use json::Origin;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, SystemTime};

/// Records the queue holds before callers wait.
pub const DEFAULT_QUEUE: usize = 65_536;
/// Records written in one batch at most.
const BATCH: usize = 1024;

/// A message to the writer.
pub enum Msg {
    /// A record to write.
    Record(Box<Event>),
    /// Write everything queued before this, then acknowledge.
    Flush(SyncSender<()>),
}

/// The calling side of the writer.
pub struct Sink {
    tx: SyncSender<Msg>,
}

impl Sink {
    /// Starts the writer thread for a trail file; `chain` seals every record.
    pub fn start(path: PathBuf, origin: Origin, chain: Chain) -> std::io::Result<Sink> {
        let (tx, rx) = sync_channel(DEFAULT_QUEUE);
        let writer = Writer::new(path, origin, chain);
        std::thread::Builder::new()
            .name("keytrail-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Sink { tx })
    }

    /// Queues a record; waits while the queue is full.
    #[inline]
    pub fn send(&self, event: Event) {
        if self.tx.send(Msg::Record(Box::new(event))).is_err() {
            diag::report("the trail writer has stopped; a record was not written");
        }
    }

    /// Waits until everything queued so far is written (at most `timeout`).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_err() {
            return false;
        }
        ack_rx.recv_timeout(timeout).is_ok()
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    origin: Origin,
    file: Option<File>,
    /// The hash chain: assigns sequence numbers and seals each record.
    chain: Chain,
    buf: Vec<u8>,
    /// Records that could not be written since the last success, and when that began.
    lost: Option<(u64, SystemTime, String)>,
}

impl Writer {
    fn new(path: PathBuf, origin: Origin, chain: Chain) -> Writer {
        Writer {
            path,
            origin,
            file: None,
            chain,
            buf: Vec::with_capacity(256 * 1024),
            lost: None,
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if self.chain.tick(&self.origin, &mut self.buf) {
                        self.write_batch(1);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut acks = Vec::new();
            let mut count = 0usize;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(e) => {
                        self.chain.append(&e, &self.origin, &mut self.buf);
                        count += 1;
                    }
                    Msg::Flush(ack) => acks.push(ack),
                }
                if count < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if self.chain.tick(&self.origin, &mut self.buf) {
                count += 1;
            }
            self.write_batch(count as u64);
            for ack in acks {
                let _ = ack.send(());
            }
        }
    }

    /// Writes the formatted batch in one `write` (O_APPEND keeps lines of several
    /// processes whole). On failure the batch is counted as lost and dropped.
    fn write_batch(&mut self, records: u64) {
        if self.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        let result = self.ensure_open().and_then(|f| f.write_all(&buf));
        self.buf = buf;
        match result {
            Ok(()) => {
                if let Some((n, since, reason)) = self.lost.take() {
                    diag::report(&format!(
                        "the trail {} is writable again; {n} records were lost since {} ({reason})",
                        self.path.display(),
                        humantime::format_rfc3339_seconds(since)
                    ));
                    self.buf.clear();
                    let e = Event::audit(
                        "records_lost",
                        format!("{n} records could not be written: {reason}"),
                        serde_json::json!({"lost": n, "since": humantime::format_rfc3339_micros(since).to_string(), "reason": reason}),
                    );
                    self.chain.append(&e, &self.origin, &mut self.buf);
                    if let Some(f) = self.file.as_mut() {
                        let _ = f.write_all(&self.buf);
                    }
                }
            }
            Err(err) => {
                self.file = None;
                let reason = err.to_string();
                match &mut self.lost {
                    Some((n, _, _)) => *n += records,
                    None => {
                        diag::report(&format!(
                            "cannot write the trail {}: {reason}; records are being lost until it is writable",
                            self.path.display()
                        ));
                        self.lost = Some((records, SystemTime::now(), reason));
                    }
                }
            }
        }
        self.buf.clear();
    }

    fn ensure_open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            self.file = Some(open_trail(&self.path)?);
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("trail file not open"))
    }
}

/// Opens the trail for appending: the file created 0600, its directory 0700 if missing.
pub fn open_trail(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}
