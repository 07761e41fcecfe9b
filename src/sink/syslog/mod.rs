//! The syslog sink: every record of the trail, after it is sealed into the chain, goes to
//! a collector as an RFC 5424 message (see [`frame`]) over a local socket, TCP or TLS (see
//! [`transport`]).
//!
//! The writer hands each sink the sealed lines of a batch; the sink holds them in a
//! bounded queue of its own, and a delivery thread of its own sends them, so that a slow
//! or absent collector never slows the trail file. The queue follows the writer's
//! policies, each sink on its own: when it is full, the writer waits for room (`wait`, at
//! most `wait_ms`) or drops the record (`drop`); under `on_failure = "deny"`, audited
//! calls are refused while the sink cannot deliver. Whatever a sink never delivers is
//! counted, and the trail gets a `records_lost` record naming the sink. A broken TCP or
//! TLS connection is opened again, with a growing pause between attempts, and the last
//! `resend` messages are sent again: the collector may not have read them, and their
//! stream and seq tell it which ones it already has.

pub mod frame;
pub mod transport;

use crate::config::{OnFailure, OnFull, SyslogConfig, SyslogTransport, TrailConfig};
use crate::diag;
use frame::Framer;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use transport::{Connection, Target};

/// Messages sent in one write at most.
const BATCH: usize = 256;
/// The first pause before connecting again; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While a sink keeps losing records, how often the trail says so.
const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// State shared by the writer and a sink's delivery thread.
struct Shared {
    queue: Mutex<VecDeque<Vec<u8>>>,
    capacity: usize,
    /// Records queued (for the delivery thread), or the queue emptied (for the writer).
    changed: Condvar,
    /// Messages being sent that are no longer in the queue.
    sending: AtomicU64,
    /// The collector cannot be reached right now.
    failing: Arc<AtomicBool>,
    /// Records never delivered, not yet reported in the trail.
    lost: AtomicU64,
    /// When the first of those was lost (µs since the epoch).
    lost_since: AtomicU64,
    /// Why: the last reason.
    reason: Mutex<String>,
    /// The sink is being shut down: the delivery thread ends.
    closing: AtomicBool,
}

impl Shared {
    fn new(capacity: usize) -> Shared {
        Shared {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            changed: Condvar::new(),
            sending: AtomicU64::new(0),
            failing: Arc::new(AtomicBool::new(false)),
            lost: AtomicU64::new(0),
            lost_since: AtomicU64::new(0),
            reason: Mutex::new(String::new()),
            closing: AtomicBool::new(false),
        }
    }

    fn count_lost(&self, n: u64, reason: &str) {
        if n == 0 {
            return;
        }
        if self.lost.fetch_add(n, Ordering::Relaxed) == 0 {
            self.lost_since.store(now_micros(), Ordering::Relaxed);
        }
        let mut r = self.reason.lock();
        if *r != reason {
            *r = reason.to_string();
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The writer's side of one syslog sink.
pub struct SyslogSink {
    name: String,
    shared: Arc<Shared>,
    on_full: OnFull,
    on_failure: OnFailure,
    wait: Duration,
    /// Without threads: delivery happens on the writer's own turn.
    inline: Option<Box<Delivery>>,
    last_report: Option<Instant>,
}

/// A loss to put on the trail.
pub struct Loss {
    /// The sink's name.
    pub sink: String,
    /// Records never delivered.
    pub lost: u64,
    /// Since when (RFC 3339).
    pub since: String,
    /// Why.
    pub reason: String,
}

impl SyslogSink {
    /// Starts a sink from its configuration (`trail` gives the default policies): its
    /// delivery thread, or, when `threads` is false, delivery on the writer's turn.
    pub fn start(
        config: &SyslogConfig,
        trail: &TrailConfig,
        threads: bool,
    ) -> Result<SyslogSink, String> {
        let target = target(config)?;
        let name = config.name.clone().unwrap_or_else(|| target.describe());
        let facility = frame::facility_code(&config.facility).unwrap_or(10);
        let shared = Arc::new(Shared::new(config.queue.max(1)));
        let delivery = Delivery {
            name: name.clone(),
            resend_max: if target.resends() { config.resend } else { 0 },
            target,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
            framer: Framer::new(facility, &config.app_name),
            conn: None,
            broken: false,
            next_try: Instant::now(),
            backoff: MIN_BACKOFF,
            batch: Vec::new(),
            resend: VecDeque::new(),
            scratch: Vec::new(),
            shared: shared.clone(),
            reported: false,
        };
        let inline = if threads {
            std::thread::Builder::new()
                .name("keytrail-syslog".into())
                .spawn(move || delivery.run())
                .map_err(|e| format!("{name}: the delivery thread cannot start: {e}"))?;
            None
        } else {
            Some(Box::new(delivery))
        };
        Ok(SyslogSink {
            name,
            shared,
            on_full: config.on_full.unwrap_or(trail.on_full),
            on_failure: config.on_failure.unwrap_or(trail.on_failure),
            wait: Duration::from_millis(config.wait_ms.unwrap_or(trail.wait_ms)),
            inline,
            last_report: None,
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the calling side needs of this sink: its failing state and its queue.
    pub fn handle(&self) -> Handle {
        Handle {
            name: self.name.clone(),
            shared: self.shared.clone(),
            deny: self.on_failure == OnFailure::Deny,
        }
    }

    /// Queues the sealed lines of `batch` (whole lines, each ending in `\n`).
    pub fn push(&mut self, batch: &[u8]) {
        let mut q = self.shared.queue.lock();
        let mut waited: Option<Instant> = None;
        for line in batch.split_inclusive(|b| *b == b'\n') {
            loop {
                if q.len() < self.shared.capacity {
                    q.push_back(line.to_vec());
                    break;
                }
                if self.inline.is_some() {
                    // Delivery runs on this thread: there is nobody to wait for.
                    drop(q);
                    self.pump();
                    q = self.shared.queue.lock();
                    if q.len() < self.shared.capacity {
                        continue;
                    }
                    self.shared.count_lost(1, "the sink's queue was full");
                    break;
                }
                if self.on_full == OnFull::Wait {
                    let since = *waited.get_or_insert_with(Instant::now);
                    let left = self.wait.saturating_sub(since.elapsed());
                    if !left.is_zero() && !self.shared.failing.load(Ordering::Relaxed) {
                        self.shared.changed.notify_all();
                        self.shared.changed.wait_for(&mut q, left.min(MAX_BACKOFF));
                        continue;
                    }
                }
                self.shared.count_lost(
                    1,
                    if self.shared.failing.load(Ordering::Relaxed) {
                        "the sink's queue was full while the collector could not be reached"
                    } else {
                        "the sink's queue was full"
                    },
                );
                break;
            }
        }
        drop(q);
        self.shared.changed.notify_all();
        if self.inline.is_some() {
            self.pump();
        }
    }

    /// Without threads: one delivery attempt now.
    pub fn pump(&mut self) {
        if let Some(d) = self.inline.as_mut() {
            d.round();
        }
    }

    /// The loss to put on the trail, if any and if it is time (or `now`): at once, then
    /// every minute while the sink cannot deliver, and once it delivers again.
    pub fn take_loss(&mut self, now: bool) -> Option<Loss> {
        if self.shared.lost.load(Ordering::Relaxed) == 0 {
            return None;
        }
        if !now
            && self.shared.failing.load(Ordering::Relaxed)
            && self
                .last_report
                .is_some_and(|t| t.elapsed() < LOSS_REPORT_INTERVAL)
        {
            return None;
        }
        self.last_report = Some(Instant::now());
        let since = self.shared.lost_since.load(Ordering::Relaxed);
        let lost = self.shared.lost.swap(0, Ordering::Relaxed);
        let since = SystemTime::UNIX_EPOCH + Duration::from_micros(since);
        Some(Loss {
            sink: self.name.clone(),
            lost,
            since: humantime::format_rfc3339_micros(since).to_string(),
            reason: self.shared.reason.lock().clone(),
        })
    }

    /// Without threads: delivers what it can, for at most `timeout`; returns how many
    /// records are still undelivered.
    pub fn drain_inline(&mut self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            let left = self.handle().undelivered();
            if left == 0
                || self.shared.failing.load(Ordering::Relaxed)
                || Instant::now() >= deadline
            {
                return left;
            }
        }
    }
}

/// The calling side's view of a sink under `deny` that could not be set up: it fails
/// for good, so audited calls are refused.
pub fn unusable(config: &SyslogConfig) -> Handle {
    let shared = Shared::new(1);
    shared.failing.store(true, Ordering::Relaxed);
    Handle {
        name: config.name.clone().unwrap_or_else(|| "syslog sink".into()),
        shared: Arc::new(shared),
        deny: true,
    }
}

/// The calling side's view of a sink.
#[derive(Clone)]
pub struct Handle {
    name: String,
    shared: Arc<Shared>,
    deny: bool,
}

impl Handle {
    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether audited calls must be refused because of this sink (`deny` and failing).
    #[inline]
    pub fn refusing(&self) -> bool {
        self.deny && self.shared.failing.load(Ordering::Relaxed)
    }

    /// Records lost and not yet reported in the trail.
    pub fn unreported_loss(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }

    /// Records queued or being sent.
    pub fn undelivered(&self) -> u64 {
        let q = self.shared.queue.lock();
        q.len() as u64 + self.shared.sending.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until the delivery thread has handed everything queued
    /// to the collector; a sink that cannot reach its collector is not waited for.
    /// Returns how many records are still undelivered.
    pub fn drain(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.queue.lock();
        loop {
            let left = q.len() as u64 + self.shared.sending.load(Ordering::Relaxed);
            if left == 0
                || self.shared.failing.load(Ordering::Relaxed)
                || Instant::now() >= deadline
            {
                return left;
            }
            self.shared.changed.notify_all();
            self.shared
                .changed
                .wait_for(&mut q, Duration::from_millis(20));
        }
    }
}

impl Drop for SyslogSink {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
    }
}

/// The target a configuration names.
fn target(config: &SyslogConfig) -> Result<Target, String> {
    Ok(match config.transport {
        SyslogTransport::Local => Target::Local(
            config
                .path
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_SYSLOG_PATH.into()),
        ),
        SyslogTransport::Tcp => Target::Tcp(config.address.clone().unwrap_or_default()),
        SyslogTransport::Tls => {
            let address = config.address.clone().unwrap_or_default();
            let host = config.server_name.clone().unwrap_or_else(|| {
                let host = address
                    .rsplit_once(':')
                    .map_or(address.as_str(), |(h, _)| h);
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            });
            let server_name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("`{host}` is not a server name: {e}"))?;
            let ca = config
                .ca_file
                .as_deref()
                .ok_or("transport \"tls\" needs ca_file")?;
            let client = config.cert_file.as_deref().zip(config.key_file.as_deref());
            Target::Tls {
                address,
                server_name,
                config: transport::tls_config(ca, client)?,
            }
        }
    })
}

/// The delivery side of one sink: connects, frames, sends, reconnects.
struct Delivery {
    name: String,
    target: Target,
    timeout: Duration,
    framer: Framer,
    conn: Option<Connection>,
    /// The last connection broke: what it carried last is sent again on the next.
    broken: bool,
    next_try: Instant,
    backoff: Duration,
    /// Framed messages taken from the queue, not yet handed over.
    batch: Vec<Vec<u8>>,
    /// The last messages handed over, for sending again after a broken connection.
    resend: VecDeque<Vec<u8>>,
    resend_max: usize,
    scratch: Vec<u8>,
    shared: Arc<Shared>,
    /// The current outage has been reported on stderr.
    reported: bool,
}

impl Delivery {
    fn run(mut self) {
        loop {
            if self.shared.closing.load(Ordering::Relaxed) {
                return;
            }
            let busy = self.round();
            let mut q = self.shared.queue.lock();
            if q.is_empty() && self.batch.is_empty() {
                self.shared.changed.notify_all();
                self.shared
                    .changed
                    .wait_for(&mut q, Duration::from_millis(500));
            } else if !busy {
                // Waiting to connect again.
                let pause = self.next_try.saturating_duration_since(Instant::now());
                drop(q);
                std::thread::sleep(pause.max(Duration::from_millis(1)));
            }
        }
    }

    /// Takes queued records, frames them and sends them; returns whether it made progress.
    /// Records are taken from the queue only once connected: while the collector is
    /// away they stay there, within the queue's bound.
    fn round(&mut self) -> bool {
        if self.batch.is_empty() && self.shared.queue.lock().is_empty() {
            return false;
        }
        if self.conn.as_mut().is_some_and(|c| c.closed_by_peer()) {
            self.conn = None;
            self.broken = true;
        }
        if self.conn.is_none() {
            if Instant::now() < self.next_try {
                return false;
            }
            match self.target.connect(self.timeout) {
                Ok(mut c) => {
                    if self.broken && !self.resend.is_empty() {
                        let again: Vec<Vec<u8>> = self.resend.iter().cloned().collect();
                        if let (_, Some(e)) = c.send(&again, &mut self.scratch) {
                            self.fail(e);
                            return false;
                        }
                    }
                    self.broken = false;
                    self.conn = Some(c);
                }
                Err(e) => {
                    self.fail(e);
                    return false;
                }
            }
        }
        if self.batch.is_empty() {
            let mut q = self.shared.queue.lock();
            let n = q.len().min(BATCH);
            let lines: Vec<Vec<u8>> = q.drain(..n).collect();
            self.shared.sending.store(n as u64, Ordering::Relaxed);
            drop(q);
            self.shared.changed.notify_all();
            for line in lines {
                let mut msg = Vec::with_capacity(line.len() + 160);
                self.framer.message(&line, &mut msg);
                self.batch.push(msg);
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let (sent, err) = conn.send(&self.batch, &mut self.scratch);
        let done: Vec<Vec<u8>> = self.batch.drain(..sent).collect();
        self.shared
            .sending
            .fetch_sub(sent as u64, Ordering::Relaxed);
        if self.resend_max > 0 {
            for m in done {
                if self.resend.len() == self.resend_max {
                    self.resend.pop_front();
                }
                self.resend.push_back(m);
            }
        }
        match err {
            None => {
                self.recovered();
                true
            }
            Some(e) => {
                self.conn = None;
                self.broken = true;
                self.fail(e);
                sent > 0
            }
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        self.shared.failing.store(true, Ordering::Relaxed);
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        if !self.reported {
            self.reported = true;
            diag::report(&format!(
                "{}: cannot deliver to the collector: {e}; records are kept (up to the sink's \
                 queue) and sent once it can be reached",
                self.name
            ));
        }
    }

    fn recovered(&mut self) {
        self.backoff = MIN_BACKOFF;
        if self.shared.failing.swap(false, Ordering::Relaxed) && self.reported {
            self.reported = false;
            diag::report(&format!("{}: delivering to the collector again", self.name));
        }
    }
}
