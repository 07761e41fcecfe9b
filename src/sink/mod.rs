//! The writer: a bounded queue between callers and one writer thread that formats,
//! batches and writes the trail — or, when the application forbids threads
//! (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`), the same work done synchronously.
//!
//! The calling thread only fills an [`Event`] (plain data) in a slot of the queue. What
//! cannot be written is never lost silently: records dropped on a full queue (policy
//! `drop`) and records lost while the trail could not be written are counted, reported on
//! stderr and in the diagnostics file, and the trail itself carries a record saying how
//! many and since when.

pub mod chain;
pub mod dir;
pub mod file;
pub mod json;
pub mod ocsf;
pub mod route;
mod slots;
pub mod syslog;

use crate::audit::event::{Event, WallClock};
use crate::config::{IntegrityConfig, OnFailure, OnFull, SyslogConfig, TrailConfig, TrailMode};
use crate::diag;
use chain::Chain;
use crossbeam_queue::ArrayQueue;
use file::{Note, TrailFile};
use json::Origin;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime};

pub use file::open_trail;

/// Records written in one batch at most.
const BATCH: usize = 1024;
/// How long a busy writer sleeps between batches. Callers never wake it while it is busy,
/// so handing over a record costs no system call.
const NAP: Duration = Duration::from_millis(1);
/// How long an idle writer sleeps; the first record after an idle spell wakes it.
const TICK: Duration = Duration::from_millis(500);
/// Idle naps before the writer counts as asleep.
const NAPS_BEFORE_SLEEP: u32 = 20;

/// State shared by callers and the writer.
#[derive(Default)]
struct Shared {
    /// The trail cannot be written right now.
    failing: AtomicBool,
    /// Calls refused while failing closed, not yet reported in the trail.
    refused: AtomicU64,
    /// Records dropped on a full queue and not yet reported in the trail.
    dropped: AtomicU64,
    /// When the first of those was dropped (µs since the epoch).
    dropped_since: AtomicU64,
    /// Some of the dropped records were dropped because the writer was stuck.
    stuck: AtomicBool,
    /// Records lost to write failures and not yet reported in the trail.
    unwritten: AtomicU64,
    /// The writer is in a long sleep: the next caller must wake it.
    asleep: AtomicBool,
    /// Flush requests: acknowledged once everything queued before them is written.
    flushes: Mutex<Vec<SyncSender<bool>>>,
    /// The writer thread is to end (its stream has ended: see [`Sink::finish`]).
    stop: AtomicBool,
    /// The writer thread has ended, its file closed.
    stopped: AtomicBool,
}

/// Records the writer hands back to callers at most (see [`Queue::spent`]).
const SPENT: usize = 256;
/// Records the writer keeps for callers to free when the return queue is full; past it
/// (no caller has queued a record of its own for that long), the writer frees them.
const RETURNS_HELD: usize = 4096;
/// Buffers in the pool that encoded record bodies travel in (see [`Queue::bodies`]), and
/// the size of each: a creation record's body with its template is well under it.
const BODIES: usize = 256;
const BODY_BYTES: usize = 2048;

/// The queue to a writer thread.
struct Queue {
    /// Record slots, each claimed by a caller and filled in place ([`Sink::send`]).
    records: slots::Slots,
    /// Written records that still own memory a caller allocated (a creation template, the
    /// last reference to a destroyed key's identity). The writer never frees them: glibc
    /// would then take the calling thread's malloc arena lock while that thread allocates
    /// in it (inside the module, say). The next caller that queues such a record itself
    /// drops them, on its own arena.
    spent: ArrayQueue<Event>,
    /// Buffers, allocated when the stream starts and never freed, in which callers encode
    /// the rarer parts of their records (templates, user names, messages): a record then
    /// carries no heap memory of the caller's to the writer, which puts the buffer back.
    bodies: ArrayQueue<Vec<u8>>,
    /// Whether callers encode bodies: only the ECS encoder works on the calling thread (an
    /// OCSF record's rarer parts are laid out by the writer, so they travel as they are).
    encode_bodies: bool,
    writer: Thread,
}

impl Queue {
    /// Encodes a record's rarer parts (and with them its `pkcs11` object, labels, message
    /// and detail) into a pool buffer, and frees them here, on the caller's own arena.
    /// With no buffer free, into one of the caller's, which the writer hands back.
    fn encode_body(&self, e: &mut Event) {
        let mut body = match self.bodies.pop() {
            Some(bytes) => crate::audit::event::Body {
                bytes,
                pooled: true,
            },
            None => crate::audit::event::Body::default(),
        };
        body.bytes.clear();
        json::encode_body(e, &mut body.bytes);
        if body.pooled && body.bytes.capacity() > BODY_BYTES {
            // It outgrew its buffer: the pool gets one of its own size instead, and this
            // one goes back to a caller to free, so the pool's memory stays fixed.
            let mut fresh = Vec::new();
            if fresh.try_reserve_exact(BODY_BYTES).is_ok() {
                let _ = self.bodies.push(fresh);
            }
            body.pooled = false;
        }
        e.extra = None;
        e.labels = None;
        e.body = Some(body);
    }
}

/// Where a record goes ([`Sink::claim`]).
pub enum Room<'a> {
    /// A slot of the writer thread's queue, to fill in place.
    Slot(Slot<'a>),
    /// No writer thread: [`Sink::send`] hands the record on (the agent's ring, or a
    /// synchronous write).
    Direct,
    /// None: the record is dropped (a full queue, a stuck writer), and counted.
    None,
}

/// A claimed slot of the writer thread's queue. Dropped without [`Slot::queue`] (a
/// panic while filling it), it still goes to the writer as it is.
pub struct Slot<'a> {
    sink: &'a Sink,
    queue: &'a Queue,
    claim: slots::Claim<'a>,
}

impl Slot<'_> {
    /// The record to fill: a vacant one ([`Event::vacant`]).
    #[inline(always)]
    pub fn event(&mut self) -> &mut Event {
        self.claim.event()
    }

    /// Hands the filled record to the writer.
    #[inline(always)]
    pub fn queue(mut self) {
        let q = self.queue;
        let e = self.claim.event();
        let owns = e.owns_memory();
        if owns && q.encode_bodies && !annotated_by_chain(e.action) {
            q.encode_body(e);
        }
        let sink = self.sink;
        // Hands the slot to the writer.
        drop(self);
        if owns {
            // Only callers that allocate reclaim: frees stay with allocations.
            while let Some(spent) = q.spent.pop() {
                drop(spent);
            }
        }
        sink.wake_if_asleep(q);
    }
}

/// Records the chain completes on the writer thread from their detail: they keep it.
fn annotated_by_chain(action: &str) -> bool {
    matches!(
        action,
        "trail_start" | "trail_stop" | "trail_resume" | "checkpoint"
    )
}

/// The pool of body buffers, allocated fallibly (a process at its address-space limit
/// starts no writer rather than aborting).
fn body_pool() -> std::io::Result<ArrayQueue<Vec<u8>>> {
    let pool = ArrayQueue::new(BODIES);
    for _ in 0..BODIES {
        let mut v = Vec::new();
        v.try_reserve_exact(BODY_BYTES)
            .map_err(|e| std::io::Error::other(format!("the trail's buffers: {e}")))?;
        let _ = pool.push(v);
    }
    Ok(pool)
}

enum Mode {
    Thread(Arc<Queue>),
    Sync(Box<Mutex<Writer>>),
    /// `[trail] mode = "agent"`: records go into a ring the agent drains (no thread
    /// here), or to the embedded writer it falls back to.
    Agent(Box<route::Route>),
}

/// The calling side of one stream's writer.
pub struct Sink {
    mode: Mode,
    on_full: OnFull,
    on_failure: OnFailure,
    /// The longest a call waits for room under `on_full = "wait"`.
    wait: Duration,
    shared: Arc<Shared>,
    /// The syslog sinks' state, for their `deny` policies and for draining at exit.
    forwarders: Vec<syslog::Handle>,
}

impl Sink {
    /// Starts a stream whose first record is `start`: a writer thread, or a synchronous
    /// writer when `threads` is false. `chain` seals every record.
    pub fn start(
        config: &TrailConfig,
        chain: Chain,
        origin: Origin,
        threads: bool,
        start: &Event,
    ) -> std::io::Result<Sink> {
        Self::start_with(config, &[], chain, origin, threads, start)
    }

    /// As [`Sink::start`], and every record also goes to the `syslog` sinks.
    pub fn start_with(
        config: &TrailConfig,
        syslog: &[SyslogConfig],
        chain: Chain,
        origin: Origin,
        threads: bool,
        start: &Event,
    ) -> std::io::Result<Sink> {
        let deny = config.on_failure == OnFailure::Deny;
        if let Some(anchor) = chain.anchor_file() {
            // Under `deny`, an anchor file that cannot be written means no trail: the
            // stream is not started, and audited calls are refused until it can be.
            if let Err(e) = dir::probe_checked(anchor) {
                let e = format!(
                    "the anchor file {} cannot be written: {e}",
                    anchor.display()
                );
                if deny {
                    return Err(std::io::Error::other(e));
                }
                diag::report(&e);
            }
        }
        // After the checks that may refuse the stream: a sink's thread is started once.
        let mut forward = Vec::with_capacity(syslog.len());
        let mut unusable = Vec::new();
        for s in syslog {
            match syslog::SyslogSink::start(s, config, threads) {
                Ok(f) => forward.push(f),
                // A sink that cannot be set up (an unreadable CA file) is reported and left
                // out; under its `deny` policy, audited calls are refused (the trail file
                // is still written).
                Err(e) if s.on_failure.unwrap_or(config.on_failure) == OnFailure::Deny => {
                    diag::report(&format!(
                        "syslog sink cannot be set up: {e}; audited calls are refused \
                         (its on_failure = \"deny\")"
                    ));
                    unusable.push(syslog::unusable(s));
                }
                Err(e) => diag::report(&format!(
                    "syslog sink left out: {e}; records are not sent to it"
                )),
            }
        }
        let mut forwarders: Vec<syslog::Handle> =
            forward.iter().map(syslog::SyslogSink::handle).collect();
        forwarders.extend(unusable);
        let shared = Arc::new(Shared::default());
        let path = expand(&config.path);
        let file = TrailFile::new(path, config.rotate, config.max_bytes, config.keep);
        let mut writer = Writer::new(file, origin, chain, shared.clone());
        writer.forward = forward;
        writer.push(start);
        let mode = if threads {
            let (tx, rx) = sync_channel::<Arc<Queue>>(1);
            let handle = std::thread::Builder::new()
                .name("keytrail-writer".into())
                .spawn(move || match rx.recv() {
                    Ok(queue) => writer.run(&queue),
                    Err(_) => diag::report("the trail writer could not start"),
                })?;
            let queue = Arc::new(Queue {
                records: slots::Slots::new(config.queue)?,
                spent: ArrayQueue::new(SPENT),
                bodies: body_pool()?,
                encode_bodies: config.format == crate::config::Format::Ecs,
                writer: handle.thread().clone(),
            });
            let _ = tx.send(queue.clone());
            Mode::Thread(queue)
        } else {
            Mode::Sync(Box::new(Mutex::new(writer)))
        };
        let sink = Sink {
            mode,
            on_full: config.on_full,
            on_failure: config.on_failure,
            wait: Duration::from_millis(config.wait_ms),
            shared,
            forwarders,
        };
        // Fail closed from the first call: under `deny`, the stream's first record must be
        // on the trail before any audited call is served. A trail that cannot be written
        // (or a writer stuck past wait_ms) fails now, and calls are refused until it
        // recovers, exactly as for a failure later on.
        if deny && !sink.flush(sink.wait) && !sink.shared.failing.swap(true, Ordering::Relaxed) {
            // Not a write error (the writer reports those): the writer is stuck.
            diag::report(&format!(
                "the trail writer is stuck: the stream's first record was not written within \
                 [trail] wait_ms ({} ms); audited calls are refused until it is",
                config.wait_ms
            ));
        }
        Ok(sink)
    }

    /// A stream recorded by the agent at `config.agent_socket`: connects, receives the
    /// process's ring, and puts `start` in it. When the agent cannot be reached, `deny`
    /// is an error, and `continue` records with the embedded writer until it can.
    pub fn start_agent(
        config: &TrailConfig,
        integrity: &IntegrityConfig,
        service: Option<&str>,
        threads: bool,
        start: &Event,
    ) -> Result<Sink, String> {
        let shared = Arc::new(Shared::default());
        let route = route::Route::start(
            config,
            integrity,
            service,
            threads,
            start.clone(),
            &shared.failing,
        )?;
        Ok(Sink {
            mode: Mode::Agent(Box::new(route)),
            on_full: config.on_full,
            on_failure: config.on_failure,
            wait: Duration::from_millis(config.wait_ms),
            shared,
            forwarders: Vec::new(),
        })
    }

    /// Ends the writer once everything sent so far is written (at most `timeout`): its
    /// thread ends and its file is closed. True when all was written and the thread ended.
    pub fn finish(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let written = self.flush(timeout);
        let Mode::Thread(q) = &self.mode else {
            return written;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        q.writer.unpark();
        while !self.shared.stopped.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        written
    }

    /// Queues a record (or, synchronously, writes it). With a writer thread, the record is
    /// moved once, into the queue slot the writer reads it from ([`Sink::claim`]).
    #[inline(always)]
    pub fn send(&self, event: Event) {
        match self.claim() {
            Room::Slot(mut slot) => {
                *slot.event() = event;
                slot.queue();
            }
            Room::Direct => self.send_direct(&mut { event }),
            Room::None => {}
        }
    }

    /// Where the next record goes: with a writer thread, a slot of its queue, claimed for
    /// the caller to fill in place and [`Slot::queue`] (a record is 416 bytes: built, or
    /// moved, anywhere else, it would be copied there). The writer waits for a claimed
    /// slot: filling it only sets what the caller already knows, never calls into the
    /// module.
    #[inline(always)]
    pub fn claim(&self) -> Room<'_> {
        let Mode::Thread(q) = &self.mode else {
            return Room::Direct;
        };
        // The common case, room in the queue, claims a slot at once.
        match q.records.claim().or_else(|| self.wait_for_room(q)) {
            Some(claim) => Room::Slot(Slot {
                sink: self,
                queue: q,
                claim,
            }),
            None => {
                self.wake_if_asleep(q);
                Room::None
            }
        }
    }

    /// A full queue: waits for a slot under `on_full = "wait"` (within `wait`), or counts
    /// the record as dropped.
    #[cold]
    fn wait_for_room<'q>(&self, q: &'q Queue) -> Option<slots::Claim<'q>> {
        let mut tries = 0u32;
        let mut waiting_since = None;
        loop {
            if let Some(claim) = q.records.claim() {
                return Some(claim);
            }
            // A writer stuck in open() or write() (a FIFO nobody reads, a hung mount)
            // never makes room: once a wait has run out, the trail is failing, and later
            // calls do not wait again until it recovers.
            if self.shared.failing.load(Ordering::Relaxed) {
                self.count_drop(DropReason::Stuck);
                return None;
            }
            if self.on_full != OnFull::Wait {
                self.count_drop(DropReason::Full);
                return None;
            }
            if waiting_since.get_or_insert_with(Instant::now).elapsed() >= self.wait {
                self.shared.failing.store(true, Ordering::Relaxed);
                self.count_drop(DropReason::Stuck);
                return None;
            }
            // Full: the writer is behind. Wake it, and wait for a slot: yield first (a
            // slot frees within microseconds once the writer runs), then sleep in short
            // steps.
            q.writer.unpark();
            tries += 1;
            if tries < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(10));
            }
        }
    }

    /// An operation's record straight into the agent's ring ([`route::Route::send_op`]): false
    /// in any other mode, or when the record must take the general path.
    #[inline]
    pub(crate) fn send_op(&self, r: &crate::audit::event::OpRecord<'_>) -> bool {
        match &self.mode {
            Mode::Agent(route) => route.send_op(r, &self.shared.failing),
            _ => false,
        }
    }

    /// Without a writer thread: into the agent's ring, or written at once. (For a caller
    /// that has claimed [`Room::Direct`]; [`Sink::send`] otherwise.) By reference: the
    /// record is 416 bytes, which a move would copy on every call; the caller drops it.
    #[inline(never)]
    pub(crate) fn send_direct(&self, event: &mut Event) {
        match &self.mode {
            Mode::Agent(r) => {
                if !r.send(event, self.on_full, self.wait, &self.shared.failing) {
                    self.count_drop(DropReason::Full);
                }
            }
            Mode::Sync(w) => {
                let mut w = w.lock();
                w.push(event);
                w.commit();
            }
            Mode::Thread(_) => self.send(std::mem::replace(event, Event::vacant(event.started))),
        }
    }

    #[inline]
    fn wake_if_asleep(&self, q: &Queue) {
        if self.shared.asleep.load(Ordering::SeqCst)
            && self.shared.asleep.swap(false, Ordering::SeqCst)
        {
            q.writer.unpark();
        }
    }

    fn count_drop(&self, reason: DropReason) {
        if let Mode::Agent(c) = &self.mode {
            // The agent reads the count from the ring and records the gap.
            c.count_drop();
            if self.shared.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                diag::report(
                    "the agent's ring is full; records are being dropped and counted \
                     (the agent records how many)",
                );
            }
            return;
        }
        if matches!(reason, DropReason::Stuck) {
            self.shared.stuck.store(true, Ordering::Relaxed);
        }
        if self.shared.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            self.shared.dropped_since.store(now, Ordering::Relaxed);
            diag::report(match reason {
                DropReason::Full => {
                    "the trail queue is full; records are being dropped (policy on_full = \"drop\")"
                }
                DropReason::Stuck => {
                    "the trail writer is stuck (the queue stayed full past [trail] wait_ms); \
                     records are being dropped and counted"
                }
            });
        }
    }

    /// Waits until everything queued so far is written (at most `timeout`); true when it
    /// was written successfully.
    pub fn flush(&self, timeout: Duration) -> bool {
        match &self.mode {
            Mode::Thread(q) => {
                let (ack_tx, ack_rx) = sync_channel(1);
                self.shared.flushes.lock().push(ack_tx);
                self.shared.asleep.store(false, Ordering::Release);
                q.writer.unpark();
                ack_rx.recv_timeout(timeout).unwrap_or(false)
            }
            Mode::Sync(w) => {
                let mut w = w.lock();
                w.commit();
                w.file.sync();
                !self.shared.failing.load(Ordering::Relaxed)
            }
            Mode::Agent(r) => r.flush(timeout),
        }
    }

    /// In a child after fork: lets go of what the parent's stream holds open (the
    /// agent's socket), so that the agent sees the parent end when it does.
    fn forget_in_child(&self) {
        if let Mode::Agent(c) = &self.mode {
            c.close_in_child();
        }
    }

    /// What is lost and not yet reported in the trail: records that could not be
    /// written, records dropped before reaching the writer, and calls refused.
    pub fn unreported_loss(&self) -> Option<String> {
        if let Mode::Agent(r) = &self.mode {
            // Drops are counted in the ring and recorded by the agent; the embedded
            // writer it fell back to counts its own.
            return r.unreported_loss();
        }
        let lost = self.shared.unwritten.load(Ordering::Relaxed);
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        let refused = self.shared.refused.load(Ordering::Relaxed);
        (lost + dropped + refused > 0).then(|| {
            format!(
                "{lost} records could not be written and {dropped} were dropped; \
                 {refused} calls were refused"
            )
        })
    }

    /// Whether audited calls must be refused now (policy `deny` and the trail failing, or
    /// a syslog sink under `deny` failing).
    #[inline]
    pub fn refusing(&self) -> bool {
        (self.on_failure == OnFailure::Deny && self.shared.failing.load(Ordering::Relaxed))
            || self.forwarders.iter().any(syslog::Handle::refusing)
    }

    /// Waits (at most `timeout` in all) until the syslog sinks have handed everything to
    /// their collectors; returns each sink that has not, with how many records it still
    /// holds and how many it lost that the trail does not say.
    pub fn drain_forwarders(&self, timeout: Duration) -> Vec<(String, u64, u64)> {
        let deadline = Instant::now() + timeout;
        let mut left = Vec::new();
        match &self.mode {
            Mode::Thread(_) => {
                for f in &self.forwarders {
                    let n = f.drain(deadline.saturating_duration_since(Instant::now()));
                    let lost = f.unreported_loss();
                    if n + lost > 0 {
                        left.push((f.name().to_string(), n, lost));
                    }
                }
            }
            Mode::Sync(w) => {
                let mut w = w.lock();
                for f in &mut w.forward {
                    let n = f.drain_inline(deadline.saturating_duration_since(Instant::now()));
                    let lost = f.handle().unreported_loss();
                    if n + lost > 0 {
                        left.push((f.name().to_string(), n, lost));
                    }
                }
            }
            // The agent forwards what it records; a process in agent mode has no sinks.
            Mode::Agent(_) => {}
        }
        left
    }

    /// Counts a call refused under the fail-closed policy.
    pub fn count_refused(&self) {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The fail-closed policy is in force.
    pub fn fail_closed(&self) -> bool {
        self.on_failure == OnFailure::Deny
    }
}

/// Why a record was dropped before reaching the writer.
#[derive(Clone, Copy)]
enum DropReason {
    /// The queue was full under `on_full = "drop"`.
    Full,
    /// The queue stayed full past the wait limit: the writer is stuck.
    Stuck,
}

/// `{pid}` in a trail path becomes this process's id.
fn expand(path: &std::path::Path) -> std::path::PathBuf {
    let s = path.to_string_lossy();
    if s.contains("{pid}") {
        std::path::PathBuf::from(s.replace("{pid}", &crate::os::pid().to_string()))
    } else {
        path.to_path_buf()
    }
}

/// Records that could not be written, and why.
struct Lost {
    count: u64,
    since: SystemTime,
    reason: String,
}

/// The writing side of a stream: formats, batches, writes, and keeps count of losses.
struct Writer {
    file: TrailFile,
    origin: Origin,
    shared: Arc<Shared>,
    /// Assigns sequence numbers and seals each record into the stream's hash chain.
    chain: Chain,
    buf: Vec<u8>,
    pending: u64,
    lost: Option<Lost>,
    /// The stream has ended with `trail_stop` and not resumed.
    stopped: bool,
    /// Syslog sinks: each gets every sealed line.
    forward: Vec<syslog::SyslogSink>,
}

impl Writer {
    fn new(file: TrailFile, origin: Origin, chain: Chain, shared: Arc<Shared>) -> Writer {
        Writer {
            file,
            origin,
            shared,
            chain,
            buf: Vec::with_capacity(256 * 1024),
            pending: 0,
            lost: None,
            stopped: false,
            forward: Vec::new(),
        }
    }

    /// The writer thread: drains the queue in batches, naps briefly while busy, and sleeps
    /// when idle until a caller wakes it.
    fn run(mut self, queue: &Queue) {
        // The batch buffer was made on the thread that started the stream; made again
        // here, its growth never frees that thread's memory.
        let mut buf = Vec::with_capacity(self.buf.capacity());
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
        #[cfg(test)]
        crate::test_alloc::mark_writer();
        let mut idle = 0u32;
        // Records for callers to free that did not fit the return queue.
        let mut returns: Vec<Event> = Vec::new();
        loop {
            while let Some(e) = returns.pop() {
                if let Err(e) = queue.spent.push(e) {
                    returns.push(e);
                    break;
                }
            }
            // Flush requests are taken before draining: everything queued before them is
            // then written by the time they are acknowledged.
            let acks = std::mem::take(&mut *self.shared.flushes.lock());
            let mut drained = 0usize;
            if self.chain.tick(&self.origin, &mut self.buf) {
                self.pending += 1;
            }
            while let Some(mut e) = queue.records.pop() {
                if e.is_vacant() {
                    // A slot whose filling panicked.
                    continue;
                }
                #[cfg(test)]
                crate::test_alloc::record_reached_writer(e.extra.is_some());
                self.push(&e);
                drained += 1;
                if let Some(body) = e.body.take_if(|b| b.pooled) {
                    let _ = queue.bodies.push(body.bytes);
                }
                if e.holds_last_memory() {
                    if let Err(e) = queue.spent.push(e) {
                        // Held for callers while there is room; past that no caller has
                        // queued a record of its own for thousands of records, so none is
                        // busy allocating either: freeing here then contends with nobody.
                        if returns.len() < RETURNS_HELD {
                            returns.push(e);
                        }
                    }
                }
                if self.pending >= BATCH as u64 {
                    self.commit();
                }
            }
            self.commit();
            if !acks.is_empty() {
                self.file.sync();
                let ok = !self.shared.failing.load(Ordering::Relaxed);
                for ack in acks {
                    let _ = ack.send(ok);
                }
            }
            if self.shared.stop.load(Ordering::SeqCst)
                && queue.records.is_empty()
                && self.shared.flushes.lock().is_empty()
            {
                // The stream has ended (the agent is back): the file is closed before the
                // owner learns that the thread is done.
                let shared = self.shared.clone();
                drop(returns);
                drop(self);
                shared.stopped.store(true, Ordering::Release);
                return;
            }
            if drained > 0 {
                idle = 0;
                std::thread::park_timeout(NAP);
                continue;
            }
            idle += 1;
            if idle < NAPS_BEFORE_SLEEP {
                std::thread::park_timeout(NAP);
                continue;
            }
            self.shared.asleep.store(true, Ordering::SeqCst);
            // A record queued between the last drain and `asleep` would wait a whole tick.
            if queue.records.ready() || !self.shared.flushes.lock().is_empty() {
                self.shared.asleep.store(false, Ordering::Release);
                continue;
            }
            std::thread::park_timeout(TICK);
            self.shared.asleep.store(false, Ordering::Release);
            self.tick();
        }
    }

    /// Formats one record into the batch.
    fn push(&mut self, e: &Event) {
        self.push_as(e, None);
    }

    /// Formats one record of the process `origin` (the stream's own when `None`).
    fn push_as(&mut self, e: &Event, origin: Option<&Origin>) {
        // A call that raced C_Finalize, or came after it (the module answers
        // CKR_CRYPTOKI_NOT_INITIALIZED), must not follow the stream's `trail_stop`: a
        // stream that ends with its stop record verifies as closed. Deciding here, in the
        // one thread that orders the stream, leaves no window between check and append.
        match e.action {
            "trail_stop" => {
                // The stream's last word includes what its collectors missed.
                self.report_forward_losses(true);
                self.stopped = true;
            }
            "trail_resume" => self.stopped = false,
            _ if self.stopped => return,
            _ => {}
        }
        self.report_drops();
        let origin = origin.unwrap_or(&self.origin);
        if e.reason.is_some() {
            // trail_stop, trail_resume: their message and detail are made here.
            let mut marked = e.clone();
            marked.spell_reason();
            self.chain.append(&marked, origin, &mut self.buf);
        } else {
            self.chain.append(e, origin, &mut self.buf);
        }
        self.pending += 1;
    }

    fn push_audit(&mut self, action: &'static str, message: String, detail: serde_json::Value) {
        let mut e = Event::audit(action, message, detail);
        e.thread_id = crate::audit::context::thread_id();
        self.chain.append(&e, &self.origin, &mut self.buf);
        self.pending += 1;
    }

    /// Puts a record of dropped records into the batch, if any were dropped.
    fn report_drops(&mut self) {
        let n = self.shared.dropped.swap(0, Ordering::Relaxed);
        if n == 0 {
            return;
        }
        let since = self.shared.dropped_since.load(Ordering::Relaxed);
        let since = SystemTime::UNIX_EPOCH + Duration::from_micros(since);
        let since = humantime::format_rfc3339_micros(since).to_string();
        let (why, reason) = if self.shared.stuck.swap(false, Ordering::Relaxed) {
            ("the writer was stuck past [trail] wait_ms", "writer stuck")
        } else {
            ("the queue was full (on_full = \"drop\")", "queue full")
        };
        self.push_audit(
            "records_dropped",
            format!("{n} records were dropped because {why}"),
            serde_json::json!({"lost": n, "since": since, "reason": reason}),
        );
    }

    /// Writes the batch in one write. On failure the batch is counted as lost. Head
    /// records then go to their anchors too.
    fn commit(&mut self) {
        self.report_forward_losses(false);
        self.write_batch();
        let file = &self.file;
        self.chain.send_anchors(|path| file.open_sibling(path));
    }

    /// Puts on the trail what each syslog sink could not deliver (`now`: whether or not
    /// it is time). Not after the stream's `trail_stop`: a loss then waits for
    /// `trail_resume`, or is reported at exit.
    fn report_forward_losses(&mut self, now: bool) {
        if self.stopped {
            return;
        }
        for i in 0..self.forward.len() {
            let Some(loss) = self.forward[i].take_loss(now) else {
                continue;
            };
            diag::report(&format!(
                "{}: {} records were not delivered since {}: {}",
                loss.sink, loss.lost, loss.since, loss.reason
            ));
            self.push_audit(
                "records_lost",
                format!(
                    "{} records were not delivered to {}: {}",
                    loss.lost, loss.sink, loss.reason
                ),
                serde_json::json!({"lost": loss.lost, "since": loss.since, "reason": loss.reason, "sink": loss.sink}),
            );
        }
    }

    /// Hands the sealed lines in the batch to every syslog sink.
    fn forward(&mut self) {
        for f in &mut self.forward {
            f.push(&self.buf);
        }
    }

    fn write_batch(&mut self) {
        if self.pending == 0 {
            return;
        }
        // The chain has moved on whether or not the file takes the batch: the collectors
        // get it either way.
        self.forward();
        let result = self.file.write(&self.buf, SystemTime::now());
        let n = self.pending;
        match result {
            Ok(note) => {
                self.buf.clear();
                self.pending = 0;
                self.report_recovery(note);
            }
            Err(err) => {
                // Whole lines that reached the file before the failure are not lost.
                let whole = self.buf[..err.written]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count() as u64;
                self.buf.clear();
                self.pending = 0;
                self.failed(n - whole, err.error);
            }
        }
    }

    fn failed(&mut self, n: u64, err: std::io::Error) {
        self.shared.failing.store(true, Ordering::Relaxed);
        self.shared.unwritten.fetch_add(n, Ordering::Relaxed);
        match &mut self.lost {
            Some(l) => l.count += n,
            None => {
                let reason = err.to_string();
                diag::report(&format!(
                    "cannot write the trail {}: {reason}; records are being lost until it is writable",
                    self.file.current_path().display()
                ));
                self.lost = Some(Lost {
                    count: n,
                    since: SystemTime::now(),
                    reason,
                });
            }
        }
    }

    /// Says in the trail what was lost, or what happened to the file, once it can be
    /// written. The report is its own probe: when it cannot be written it is not counted
    /// as lost, and the loss stays pending.
    fn report_recovery(&mut self, note: Option<Note>) {
        if note.is_none() && self.lost.is_none() {
            self.shared.failing.store(false, Ordering::Relaxed);
            return;
        }
        let before = self.chain.clone();
        if let Some(Note::Reopened { path }) = &note {
            let msg = format!(
                "the trail file {} was removed or replaced while in use; it was recreated",
                path.display()
            );
            self.push_audit(
                "trail_reopened",
                msg,
                serde_json::json!({"path": path.display().to_string()}),
            );
        }
        let refused = self.shared.refused.load(Ordering::Relaxed);
        if let Some(lost) = &self.lost {
            let since = humantime::format_rfc3339_micros(lost.since).to_string();
            let (message, detail) = (
                format!(
                    "{} records could not be written: {}; {refused} calls were refused meanwhile",
                    lost.count, lost.reason
                ),
                serde_json::json!({"lost": lost.count, "since": since, "reason": lost.reason, "refused_calls": refused}),
            );
            self.push_audit("records_lost", message, detail);
        }
        let result = self.file.write(&self.buf, SystemTime::now());
        if result.is_ok() {
            self.forward();
        }
        self.buf.clear();
        self.pending = 0;
        if result.is_err() {
            // Nothing of the report reached the file: the chain goes on as if it had not
            // been made.
            self.chain = before;
            return;
        }
        if let Some(Note::Reopened { path }) = &note {
            diag::report(&format!(
                "the trail file {} was removed or replaced while in use; it was recreated",
                path.display()
            ));
        }
        if let Some(lost) = self.lost.take() {
            self.shared.refused.fetch_sub(refused, Ordering::Relaxed);
            self.shared
                .unwritten
                .fetch_sub(lost.count, Ordering::Relaxed);
            diag::report(&format!(
                "the trail {} is writable again; {} records were lost since {} ({})",
                self.file.current_path().display(),
                lost.count,
                humantime::format_rfc3339_seconds(lost.since),
                lost.reason
            ));
        }
        self.shared.failing.store(false, Ordering::Relaxed);
    }

    /// Idle: report drops, and probe a failed sink, so a fail-closed keytrail recovers
    /// even while every audited call is being refused.
    fn tick(&mut self) {
        self.report_drops();
        if self.chain.tick(&self.origin, &mut self.buf) {
            self.pending += 1;
        }
        if self.pending == 0 && self.lost.is_some() {
            self.report_recovery(None);
        }
        self.commit();
    }
}

/// The current stream's sink, replaced in a child after fork: the child never touches the
/// parent's queue or writer (which it did not inherit), and starts a stream of its own on
/// its first record.
pub struct SinkSlot {
    current: AtomicPtr<Sink>,
    creating: AtomicBool,
    /// Why the last start failed: each audited call retries, and a failure is reported
    /// once, not once per call.
    start_failure: Mutex<String>,
    config: TrailConfig,
    integrity: IntegrityConfig,
    service: Option<String>,
    threads: bool,
    /// What every stream's `trail_start` record says.
    start: serde_json::Value,
    /// The process that started the first stream (a child after fork has another pid).
    first_pid: u32,
    /// Syslog sinks every stream also writes to.
    syslog: Vec<SyslogConfig>,
    /// Agent mode under `deny` with the agent unreachable: when to try again.
    agent_retry: Mutex<Option<Instant>>,
}

impl SinkSlot {
    /// A slot that starts its first stream on first use; `start` is the detail of each
    /// stream's `trail_start` record.
    pub fn new(
        config: TrailConfig,
        integrity: IntegrityConfig,
        service: Option<String>,
        threads: bool,
        start: serde_json::Value,
    ) -> SinkSlot {
        SinkSlot {
            current: AtomicPtr::new(std::ptr::null_mut()),
            creating: AtomicBool::new(false),
            start_failure: Mutex::new(String::new()),
            config,
            integrity,
            service,
            threads,
            start,
            first_pid: crate::os::pid(),
            syslog: Vec::new(),
            agent_retry: Mutex::new(None),
        }
    }

    /// Every stream also sends its records to these syslog sinks.
    pub fn forward_to(mut self, syslog: Vec<SyslogConfig>) -> SinkSlot {
        self.syslog = syslog;
        self
    }

    /// The `trail_start` record of a new stream.
    fn start_record(&self) -> Event {
        let mut detail = self.start.clone();
        let pid = crate::os::pid();
        if pid != self.first_pid {
            if let Some(m) = detail.as_object_mut() {
                m.insert("forked_from".into(), serde_json::json!(self.first_pid));
            }
        }
        let module = detail.get("module").and_then(|m| m.as_str()).unwrap_or("?");
        let message = format!("keytrail {} auditing {module}", env!("CARGO_PKG_VERSION"));
        let mut e = Event::audit("trail_start", message, detail);
        e.thread_id = crate::audit::context::thread_id();
        e
    }

    /// Whether this process has a stream (a child after fork has none until its first
    /// record).
    pub fn started(&self) -> bool {
        !self.current.load(Ordering::Acquire).is_null()
    }

    /// The current sink, starting a stream when there is none. `None` only when no
    /// writer could be started (reported).
    #[inline]
    pub fn get(&self) -> Option<&Sink> {
        let p = self.current.load(Ordering::Acquire);
        // SAFETY: a non-null pointer here came from Box::leak below and is never freed.
        if let Some(s) = unsafe { p.as_ref() } {
            return Some(s);
        }
        self.create()
    }

    #[cold]
    fn create(&self) -> Option<&Sink> {
        while self
            .creating
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        let mut p = self.current.load(Ordering::Acquire);
        if p.is_null() {
            let origin = Origin::current(self.service.clone());
            // A panic while starting (a failed allocation, a bug) must leave the slot usable:
            // it is caught here, reported, and `creating` is cleared below.
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if self.config.mode == TrailMode::Agent {
                    return self.start_agent(origin);
                }
                Chain::new(&self.integrity).and_then(|mut chain| {
                    chain.set_format(self.config.format);
                    Sink::start_with(
                        &self.config,
                        &self.syslog,
                        chain,
                        origin,
                        self.threads,
                        &self.start_record(),
                    )
                    .map_err(|e| e.to_string())
                })
            }))
            .unwrap_or_else(|_| Err("the writer panicked while starting".into()));
            match started {
                Ok(s) => {
                    p = Box::leak(Box::new(s));
                    self.current.store(p, Ordering::Release);
                }
                Err(e) => {
                    // try_lock: a child after fork must not wait on a lock its parent held.
                    let last = self.start_failure.try_lock();
                    if last.as_ref().is_none_or(|last| **last != e) {
                        diag::report(&format!("cannot start the trail writer: {e}"));
                    }
                    if let Some(mut last) = last {
                        *last = e;
                    }
                }
            }
        }
        self.creating.store(false, Ordering::Release);
        // SAFETY: as in `get`.
        unsafe { p.as_ref() }
    }

    /// Agent mode: the agent records the stream. When it cannot be reached, `deny` refuses
    /// audited calls (they retry the connection, at most once a second), and `continue`
    /// falls back to the embedded writer, whose first record says why, until it can.
    fn start_agent(&self, _origin: Origin) -> Result<Sink, String> {
        let now = Instant::now();
        // try_lock: a child after fork must not wait on a lock its parent held.
        if let Some(Some(at)) = self.agent_retry.try_lock().map(|g| *g) {
            if now < at {
                // Refused at once: a connection attempt per audited call would cost each
                // of them system calls while the agent is away.
                return Err(self
                    .start_failure
                    .try_lock()
                    .map(|f| f.clone())
                    .unwrap_or_default());
            }
        }
        let started = Sink::start_agent(
            &self.config,
            &self.integrity,
            self.service.as_deref(),
            self.threads,
            &self.start_record(),
        );
        if let Some(mut retry) = self.agent_retry.try_lock() {
            *retry = started.is_err().then(|| now + Duration::from_secs(1));
        }
        started
    }

    /// The fail-closed policy is in force: with no writer at all, audited calls are refused.
    pub fn fail_closed(&self) -> bool {
        self.config.on_failure == OnFailure::Deny
    }

    /// Ends a slot that carried one short synchronous stream, closing its files. (The
    /// process's own slot lives as long as the process and is never closed.)
    pub fn close(self) {
        let p = self.current.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            debug_assert!(!self.threads, "only a synchronous slot is closed");
            // SAFETY: a non-null pointer came from Box::leak in `create`; `self` is consumed,
            // so no reference handed out by `get` remains.
            drop(unsafe { Box::from_raw(p) });
        }
    }

    /// In a child after fork: forget (and deliberately leak) the parent's sink.
    pub fn after_fork_in_child(&self) {
        let p = self.current.load(Ordering::Acquire);
        // SAFETY: as in `get`.
        if let Some(s) = unsafe { p.as_ref() } {
            s.forget_in_child();
        }
        self.current.store(std::ptr::null_mut(), Ordering::Release);
        self.creating.store(false, Ordering::Release);
    }
}

/// A writer driven by its owner instead of a thread of its own: the agent's, which
/// records the streams of many processes into one chain, each record with the
/// identity of the process it came from.
pub struct Recorder {
    writer: Writer,
}

impl Recorder {
    /// Starts the chain with `start` (the recorder's own first record, of `origin`), and
    /// the `syslog` sinks that receive every record after it is sealed. A daemon is
    /// started by an operator: a sink that cannot be set up is an error, not a warning.
    pub fn start(
        config: &TrailConfig,
        syslog: &[SyslogConfig],
        chain: Chain,
        origin: Origin,
        start: &Event,
    ) -> std::io::Result<Recorder> {
        let forward = syslog
            .iter()
            .map(|s| syslog::SyslogSink::start(s, config, true))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| std::io::Error::other(format!("syslog sink: {e}")))?;
        let path = expand(&config.path);
        let file = TrailFile::new(path, config.rotate, config.max_bytes, config.keep);
        let mut writer = Writer::new(file, origin, chain, Arc::new(Shared::default()));
        writer.forward = forward;
        writer.push(start);
        writer.commit();
        match writer.lost.as_ref() {
            Some(l) => Err(std::io::Error::other(format!(
                "cannot write the trail {}: {}",
                writer.file.current_path().display(),
                l.reason
            ))),
            None => Ok(Recorder { writer }),
        }
    }

    /// Adds a record of the process `origin` to the batch.
    pub fn push(&mut self, e: &Event, origin: &Origin) {
        self.writer.push_as(e, Some(origin));
        if self.writer.pending >= BATCH as u64 {
            self.writer.commit();
        }
    }

    /// Writes records of the process `origin`, dated with the clocks read once for them
    /// all (they are in the ring before this reads them: each record's time is the same
    /// "now minus the time since it started" that reading the clocks for each one gives).
    pub fn record(&mut self, events: &[Event], origin: &Origin) {
        self.writer.chain.set_wall_clock(Some(WallClock::now()));
        for e in events {
            self.push(e, origin);
        }
        self.writer.chain.set_wall_clock(None);
        self.writer.commit();
    }

    /// Adds one of the recorder's own records (`audit` category) to the batch.
    pub fn own(&mut self, e: &Event) {
        self.writer.push(e);
    }

    /// Writes the batch.
    pub fn commit(&mut self) {
        self.writer.commit();
    }

    /// Checkpoints, and the report of what a failing trail lost once it recovers.
    pub fn tick(&mut self) {
        self.writer.tick();
    }

    /// Closes the trail file; the next write opens it by name again (after logrotate).
    pub fn reopen(&mut self) {
        self.writer.commit();
        self.writer.file.reopen();
    }

    /// Flushes the file to disk.
    pub fn sync(&mut self) {
        self.writer.commit();
        self.writer.file.sync();
    }

    /// Waits (at most `timeout` for each) until the syslog sinks have delivered what they
    /// hold; returns each sink that has not, with how many records it still holds.
    pub fn drain_forwarders(&self, timeout: Duration) -> Vec<(String, u64)> {
        self.writer
            .forward
            .iter()
            .map(|f| (f.name().to_string(), f.handle().drain(timeout)))
            .filter(|(_, left)| *left > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::attrs::{Attr, AttrValue};
    use crate::audit::event::Started;
    use crate::audit::keys::KeyIdentity;
    use crate::config::Lifecycle;
    use crate::test_alloc::{RECORDS_WITH_HEAP, WRITER_FOREIGN_FREES};

    fn creation(i: usize) -> Event {
        let mut e = Event::call(
            Started::now(),
            "C_GenerateKey",
            "key_generate",
            Lifecycle::Generate,
            0,
        );
        let label = Attr {
            type_name: "CKA_LABEL".into(),
            value: AttrValue::Text(format!("key {i}")),
        };
        e.attributes("template", 1, Some(vec![label]));
        e
    }

    /// Records with rarer parts (templates, a user name, labels), the last reference to a
    /// key's identity and more such records than the pool has buffers: the writer frees
    /// none of the calling thread's memory, and no record reaches it with rarer parts on
    /// the caller's heap; the trail says what they said.
    #[test]
    fn records_carry_no_heap_memory_of_the_caller_to_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trail.jsonl");
        let config = TrailConfig {
            path: path.clone(),
            ..TrailConfig::default()
        };
        let chain = Chain::new(&IntegrityConfig::default()).expect("chain");
        let start = Event::audit("trail_start", "start".into(), serde_json::json!({}));
        let sink = Sink::start(&config, chain, Origin::current(None), true, &start).expect("sink");
        let mut sent = 0;
        let mut login = Event::call(Started::now(), "C_LoginUser", "login", Lifecycle::Auth, 0);
        login.user_type = Some(1);
        login.extra_mut().username = Some("alice".into());
        login.labels = Some(Arc::new(vec![("request".into(), "r-1".into())]));
        sink.send(login);
        sent += 1;
        let mut used = Event::call(Started::now(), "C_Sign", "sign", Lifecycle::Use, 0);
        let mut identity = KeyIdentity::default();
        identity.label = Some("gone".into());
        used.key("key", 5, Some(Arc::new(identity)));
        used.labels = Some(Arc::new(vec![("request".into(), "r-2".into())]));
        sink.send(used);
        sent += 1;
        for i in 0..3 * BODIES {
            sink.send(creation(i));
            sent += 1;
        }
        sink.send(Event::stream_mark("trail_stop", "test"));
        sent += 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        let lines = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() > sent || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(lines.lines().count(), sent + 1, "{lines}");
        assert_eq!(WRITER_FOREIGN_FREES.load(Ordering::Relaxed), 0);
        assert_eq!(RECORDS_WITH_HEAP.load(Ordering::Relaxed), 0);
        assert!(lines.contains(r#""username":"alice"}"#), "{lines}");
        assert!(lines.contains(r#""labels":{"request":"r-1"}"#));
        assert!(lines.contains(r#""labels":{"request":"r-2"}"#));
        assert!(lines.contains(r#""label":"gone""#));
        let last = format!(r#""text":"key {}""#, 3 * BODIES - 1);
        assert!(lines.contains(&last), "{last}");
        assert!(lines.contains(r#""message":"trail stopped at test","keytrail":{"#));
    }

    /// Records dropped on a full queue give their body's buffer back to the pool, as
    /// written ones do: the pool never drains, and a body too large for its buffer does
    /// not leave a larger one in the pool.
    #[test]
    fn dropped_records_give_their_buffers_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TrailConfig {
            path: dir.path().join("trail.jsonl"),
            queue: 2,
            on_full: OnFull::Drop,
            ..TrailConfig::default()
        };
        let chain = Chain::new(&IntegrityConfig::default()).expect("chain");
        let start = Event::audit("trail_start", "start".into(), serde_json::json!({}));
        let sink = Sink::start(&config, chain, Origin::current(None), true, &start).expect("sink");
        for i in 0..4 * BODIES {
            sink.send(creation(i));
        }
        // Bodies larger than a buffer.
        for _ in 0..8 {
            let mut e = creation(0);
            e.attributes(
                "set",
                1,
                Some(vec![Attr {
                    type_name: "CKA_LABEL".into(),
                    value: AttrValue::Text("x".repeat(3 * BODY_BYTES)),
                }]),
            );
            sink.send(e);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(sink.flush(Duration::from_secs(20)));
        let trail = std::fs::read_to_string(dir.path().join("trail.jsonl")).expect("trail");
        assert!(
            trail.contains(r#""action":"records_dropped""#),
            "some were dropped"
        );
        let Mode::Thread(q) = &sink.mode else {
            panic!("a writer thread");
        };
        assert_eq!(q.bodies.len(), BODIES);
        let buffers: Vec<Vec<u8>> = std::iter::from_fn(|| q.bodies.pop()).collect();
        assert!(buffers.iter().all(|b| b.capacity() <= BODY_BYTES));
    }
}
