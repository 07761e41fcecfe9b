//! `[trail] mode = "agent"`: the choice between the agent and, under
//! `on_failure = "continue"`, the embedded writer it falls back to, both ways.
//!
//! - The agent unavailable at the first record: the process records with the embedded
//!   writer to its own `[trail] path`, and looks for the agent again at most once a second
//!   (a coarse clock read per call, no system call).
//! - The agent gone later: the process goes on writing into its ring (a restarted agent
//!   takes it over with everything in it) for [`GRACE`], or until the ring is full, then
//!   falls back; the fallback stream's `trail_start` says why and since when.
//! - The agent back: everything queued for the embedded writer is written, its stream ends
//!   with `trail_stop` (`reason = "agent_returned"`, with how many records it holds), its
//!   thread ends, and the hello tells the agent where and since when the process recorded
//!   (`client_connected` with `fell_back`). Each thread's records go on in the ring after
//!   the last it put in the fallback stream: nothing is lost or written twice.
//!
//! Under `on_failure = "deny"` there is no fallback: a ring whose agent went away is
//! handed to a restarted one (looked for at most once a second, and whenever the ring is
//! full), and the calls are refused once the ring stays full past `wait_ms`.

use super::Sink;
use super::chain::Chain;
use super::json::Origin;
use crate::agent::client::{self, Connection, FellBack, Sent};
use crate::audit::event::{Event, OpRecord};
use crate::config::{IntegrityConfig, OnFailure, OnFull, TrailConfig};
use crate::diag;
use parking_lot::{Mutex, RwLock};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Records go into the agent's ring.
const AGENT: u8 = 0;
/// Records go to the embedded writer.
const FALLBACK: u8 = 1;
/// One thread moves the stream from one to the other; callers wait (milliseconds).
const SWITCHING: u8 = 2;

/// How often, at most, the agent is looked for (fallen back) or at (connected): each
/// look is a system call or two.
const EVERY_MS: u64 = 1000;
/// How long a process whose agent went away goes on writing into its ring (for a
/// restarted agent to take over) before it falls back under `on_failure = "continue"`.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long a process waits before asking again an agent that refused it.
const REFUSED_MS: u64 = 30_000;
/// How long taking over a ring waits for records other threads are still writing.
const SETTLE: Duration = Duration::from_millis(100);
/// How long ending the fallback stream may take (its last records written).
const FINISH: Duration = Duration::from_secs(10);

/// Waits while another thread switches the stream: it takes milliseconds, rarely more
/// (the embedded writer finishing its file), so yield first, then sleep in short steps.
fn pause(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// The route of one process's stream in agent mode.
pub struct Route {
    config: TrailConfig,
    integrity: IntegrityConfig,
    service: Option<String>,
    threads: bool,
    /// The stream's `trail_start`, which each fallback stream starts with (saying why).
    start: Event,
    /// The connection, once the agent has been reached (its ring is kept for the life of
    /// the process, and handed to a restarted agent).
    conn: OnceLock<Connection>,
    state: AtomicU8,
    /// The embedded writer while fallen back. Callers hold it read-locked while they use
    /// it: switching back takes it under the write lock, so it is ended only once no
    /// caller is sending to it.
    fallback: RwLock<Option<Box<Sink>>>,
    /// Records put in the current fallback stream.
    records: AtomicU64,
    /// When (coarse ms) the agent may next be looked for or at.
    next: AtomicU64,
    /// When (coarse ms) the agent was found gone while connected; 0 while it is there.
    gone_since: AtomicU64,
    /// One thread switches at a time.
    switching: AtomicBool,
    /// Since when (RFC 3339, and coarse ms) and why the process records with the
    /// embedded writer.
    fell_back: Mutex<Option<(String, u64, String)>>,
}

impl Route {
    /// Connects to the agent and puts `start` in the ring; when it cannot be reached,
    /// `deny` is an error (audited calls are refused), and `continue` starts the embedded
    /// writer with `start` saying why.
    pub fn start(
        config: &TrailConfig,
        integrity: &IntegrityConfig,
        service: Option<&str>,
        threads: bool,
        start: Event,
        failing: &AtomicBool,
    ) -> Result<Route, String> {
        let route = Route {
            config: config.clone(),
            integrity: integrity.clone(),
            service: service.map(str::to_owned),
            threads,
            start,
            conn: OnceLock::new(),
            state: AtomicU8::new(AGENT),
            fallback: RwLock::new(None),
            records: AtomicU64::new(0),
            next: AtomicU64::new(client::coarse_ms() + EVERY_MS),
            gone_since: AtomicU64::new(0),
            switching: AtomicBool::new(false),
            fell_back: Mutex::new(None),
        };
        match Connection::connect(&config.agent_socket, service) {
            Ok(conn) => {
                let _ = route.conn.set(conn);
                let mut start = route.start.clone();
                route.send(
                    &mut start,
                    config.on_full,
                    Duration::from_millis(config.wait_ms),
                    failing,
                );
                Ok(route)
            }
            Err(e) => {
                let why = format!(
                    "the keytrail agent at {} cannot be reached: {e}",
                    config.agent_socket.display()
                );
                if config.on_failure == OnFailure::Deny {
                    return Err(format!(
                        "{why}; audited calls are refused until it can (on_failure = \"deny\")"
                    ));
                }
                route.start_fallback(why, None)?;
                Ok(route)
            }
        }
    }

    /// An operation's record into the agent's ring, written in place: true when it is
    /// there. False, having done nothing else, whenever [`Route::send`] has more to do
    /// than that (not connected, fallen back, time to look at the agent, the ring full or
    /// the record too large for a slot): the caller then sends it as an [`Event`].
    #[inline]
    pub fn send_op(&self, r: &OpRecord<'_>, failing: &AtomicBool) -> bool {
        if self.state.load(Ordering::Acquire) != AGENT || self.is_due() {
            return false;
        }
        match self.conn.get() {
            Some(conn) => conn.send_op(r, failing),
            None => false,
        }
    }

    /// Puts a record in the ring or, fallen back, in the embedded writer's queue (then
    /// `event` is taken, and left vacant); false when it was dropped on a full ring (the
    /// caller counts it). By reference: the record is 416 bytes, which a move would copy
    /// on every call.
    #[inline]
    pub fn send(
        &self,
        event: &mut Event,
        on_full: OnFull,
        wait: Duration,
        failing: &AtomicBool,
    ) -> bool {
        let mut spins = 0u32;
        loop {
            match self.state.load(Ordering::Acquire) {
                AGENT => {
                    let Some(conn) = self.conn.get() else {
                        return false;
                    };
                    if self.due() {
                        self.look_at_agent(conn);
                        continue;
                    }
                    // The ring's layout carries a stop's reason as its detail, which the
                    // agent reads (how the process ended).
                    event.spell_reason();
                    let leave = self.config.on_failure == OnFailure::Continue;
                    let full = client::WhenFull {
                        on_full,
                        wait,
                        failing,
                        leave,
                    };
                    match conn.send(event, &full) {
                        Sent::Ok => return true,
                        Sent::Dropped => return false,
                        Sent::Gone => {
                            let why = format!(
                                "the keytrail agent at {} went away and this process's ring \
                                 is full",
                                self.config.agent_socket.display()
                            );
                            if !self.fall_back_from_agent(why) {
                                return false;
                            }
                        }
                    }
                }
                FALLBACK => {
                    let fallback = self.fallback.read();
                    // None: the stream is being switched back; the next look at the state
                    // says where the record goes.
                    if let Some(sink) = fallback.as_deref() {
                        sink.send(std::mem::replace(event, Event::vacant(event.started)));
                        self.records.fetch_add(1, Ordering::Relaxed);
                        drop(fallback);
                        if self.due() {
                            self.try_return();
                        }
                        return true;
                    }
                }
                _ => pause(&mut spins),
            }
        }
    }

    /// Runs `f` on the embedded writer while fallen back, else `None`.
    fn with_fallback<R>(&self, f: impl FnOnce(&Sink) -> R) -> Option<R> {
        self.fallback.read().as_deref().map(f)
    }

    /// Waits until everything sent so far is recorded (at most `timeout`).
    pub fn flush(&self, timeout: Duration) -> bool {
        let mut spins = 0u32;
        loop {
            match self.state.load(Ordering::Acquire) {
                AGENT => {
                    let Some(conn) = self.conn.get() else {
                        return false;
                    };
                    // Records left in the ring of an agent that is gone and not back would
                    // be lost with the process: under `continue` they go to the embedded
                    // writer now.
                    if self.config.on_failure == OnFailure::Continue
                        && !conn.drained()
                        && conn.agent_gone()
                        && !conn.reconnect_if_gone()
                    {
                        let why = format!(
                            "the keytrail agent at {} went away, and this process's ring \
                             held records when it flushed its trail",
                            self.config.agent_socket.display()
                        );
                        if self.fall_back_from_agent(why) {
                            continue;
                        }
                    }
                    return conn.flush(timeout);
                }
                FALLBACK => {
                    if let Some(ok) = self.with_fallback(|s| s.flush(timeout)) {
                        return ok;
                    }
                }
                _ => pause(&mut spins),
            }
        }
    }

    /// What the embedded writer lost and has not yet reported (the agent reports the
    /// ring's drops itself).
    pub fn unreported_loss(&self) -> Option<String> {
        self.with_fallback(Sink::unreported_loss).flatten()
    }

    /// Counts a record dropped on a full ring, in the ring.
    pub fn count_drop(&self) {
        if let Some(c) = self.conn.get() {
            c.count_drop();
        }
    }

    /// In a child after fork: lets go of the agent's socket.
    pub fn close_in_child(&self) {
        if let Some(c) = self.conn.get() {
            c.close_in_child();
        }
    }

    /// Whether the agent is due a look ([`Route::due`]), without taking the turn.
    #[inline]
    fn is_due(&self) -> bool {
        client::coarse_ms() >= self.next.load(Ordering::Relaxed)
    }

    /// Whether it is time to look at the agent again; true for one caller a second.
    #[inline]
    fn due(&self) -> bool {
        let next = self.next.load(Ordering::Relaxed);
        let now = client::coarse_ms();
        now >= next
            && self
                .next
                .compare_exchange(next, now + EVERY_MS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Connected: whether the agent is still there; gone, hands the ring to one now
    /// listening, or (under `continue`, past [`GRACE`]) falls back.
    #[cold]
    fn look_at_agent(&self, conn: &Connection) {
        if !conn.agent_gone() || conn.reconnect_if_gone() {
            self.gone_since.store(0, Ordering::Relaxed);
            return;
        }
        let now = client::coarse_ms();
        let since = self.gone_since.load(Ordering::Relaxed);
        if since == 0 {
            self.gone_since.store(now, Ordering::Relaxed);
            diag::report(&format!(
                "the keytrail agent at {} went away; records stay in this process's ring for \
                 a restarted agent to take over{}",
                self.config.agent_socket.display(),
                if self.config.on_failure == OnFailure::Continue {
                    format!(
                        " (for {} s at most, then the embedded writer: on_failure = \"continue\")",
                        GRACE.as_secs()
                    )
                } else {
                    String::new()
                }
            ));
            return;
        }
        if self.config.on_failure == OnFailure::Continue
            && now.saturating_sub(since) >= GRACE.as_millis() as u64
        {
            let why = format!(
                "the keytrail agent at {} went away and none took over this process's ring \
                 within {} s",
                self.config.agent_socket.display(),
                GRACE.as_secs()
            );
            self.fall_back_from_agent(why);
        }
    }

    /// Waits for the switching token.
    fn take_token(&self) {
        while self
            .switching
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
    }

    /// Connected and the agent gone: falls back. True when records now go to the
    /// embedded writer.
    #[cold]
    fn fall_back_from_agent(&self, why: String) -> bool {
        self.take_token();
        let ok = match self.state.load(Ordering::Acquire) {
            AGENT => match self.start_fallback(why, self.conn.get()) {
                Ok(()) => true,
                Err(e) => {
                    diag::report(&format!(
                        "cannot fall back to the embedded writer: {e}; records wait in the \
                         ring for the agent, and are dropped and counted when it is full"
                    ));
                    false
                }
            },
            _ => true,
        };
        self.switching.store(false, Ordering::Release);
        ok
    }

    /// Starts an embedded writer whose `trail_start` says `why`, and sends records to it:
    /// first, with `ring` (its agent gone), what is still in the ring. The caller holds
    /// the switching token (or is the only one to know the route).
    fn start_fallback(&self, why: String, ring: Option<&Connection>) -> Result<(), String> {
        let mut start = self.start.clone();
        start.started = crate::audit::event::Started::now();
        if let Some(serde_json::Value::Object(m)) = start.extra_mut().detail.as_mut() {
            m.insert(
                "writer".into(),
                if self.threads { "thread" } else { "sync" }.into(),
            );
            m.insert("agent_unavailable".into(), why.clone().into());
        }
        let mut chain = Chain::new(&self.integrity)?;
        chain.set_format(self.config.format);
        let origin = Origin::current(self.service.clone());
        let sink = Sink::start(&self.config, chain, origin, self.threads, &start)
            .map_err(|e| e.to_string())?;
        let path = super::expand(&self.config.path);
        diag::report(&format!(
            "{why}; recording to {} with the embedded writer until the agent returns \
             (on_failure = \"continue\")",
            path.display()
        ));
        *self.fell_back.lock() = Some((rfc3339_now(), client::coarse_ms(), why));
        let mut records = 0;
        if let Some(conn) = ring {
            // Callers wait while the ring is emptied: each thread's records then follow,
            // in the fallback trail, those it had put in the ring.
            self.state.store(SWITCHING, Ordering::SeqCst);
            let (taken, unreadable) = conn.take_over(SETTLE, |e| {
                // The process's own start, which the agent never took: the fallback
                // stream's `trail_start` says the same.
                if e.action != "trail_start" {
                    records += 1;
                    sink.send(e);
                }
            });
            if taken + unreadable > 0 {
                diag::report(&format!(
                    "{taken} records still in the ring were written to {}{}",
                    path.display(),
                    if unreadable > 0 {
                        format!("; {unreadable} could not be read back")
                    } else {
                        String::new()
                    }
                ));
            }
        }
        self.records.store(records, Ordering::Relaxed);
        *self.fallback.write() = Some(Box::new(sink));
        self.state.store(FALLBACK, Ordering::SeqCst);
        Ok(())
    }

    /// Fallen back: when the agent listens, ends the fallback stream and goes back to it.
    #[cold]
    fn try_return(&self) {
        if self
            .switching
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        if self.state.load(Ordering::Acquire) == FALLBACK {
            // Connecting costs the agent nothing until the hello, which follows at once.
            if let Ok(s) = client::dial(&self.config.agent_socket) {
                self.switch_back(s);
            }
        }
        self.switching.store(false, Ordering::Release);
    }

    /// Ends the fallback stream (every record sent to it written, then `trail_stop`), and
    /// says hello on `s` with where the process recorded meanwhile.
    fn switch_back(&self, s: std::os::unix::net::UnixStream) {
        self.state.store(SWITCHING, Ordering::SeqCst);
        // Waits for the callers still sending to it.
        let Some(sink) = self.fallback.write().take() else {
            self.state.store(FALLBACK, Ordering::SeqCst);
            return;
        };
        let records = self.records.swap(0, Ordering::Relaxed);
        let (since, since_ms, reason) = self.fell_back.lock().take().unwrap_or_default();
        let path = super::expand(&self.config.path).display().to_string();
        let socket = self.config.agent_socket.display().to_string();
        let mut stop = Event::audit(
            "trail_stop",
            format!(
                "trail stopped: the keytrail agent at {socket} is back; this stream holds \
                 {records} records of this process since {since}, which now go to the agent"
            ),
            serde_json::json!({
                "reason": "agent_returned",
                "records": records,
                "agent_socket": socket,
            }),
        );
        stop.thread_id = crate::audit::context::thread_id();
        sink.send(stop);
        if !sink.finish(FINISH) {
            diag::report(&format!(
                "the embedded writer did not finish writing {path} within {} s",
                FINISH.as_secs()
            ));
        }
        drop(sink);
        let note = FellBack {
            since,
            reason,
            path: path.clone(),
            records,
            seconds: client::coarse_ms().saturating_sub(since_ms) / 1000,
        };
        let back = match self.conn.get() {
            Some(conn) => conn.resume_on(s, Some(&note)),
            None => Connection::connect_on(
                s,
                &self.config.agent_socket,
                self.service.as_deref(),
                Some(&note),
            )
            .map(|c| {
                let _ = self.conn.set(c);
            }),
        };
        match back {
            Ok(()) => {
                self.gone_since.store(0, Ordering::Relaxed);
                self.state.store(AGENT, Ordering::SeqCst);
                diag::report(&format!(
                    "the keytrail agent at {socket} is back: this process records to it again \
                     ({records} records went to {path} since {})",
                    note.since
                ));
            }
            Err(e) => {
                let why = format!(
                    "the keytrail agent at {socket} accepted a connection but not this \
                     process: {e}"
                );
                // An agent that refuses (it serves as many processes as it may) is asked
                // again later, not every second: each attempt ends a fallback stream.
                self.next
                    .store(client::coarse_ms() + REFUSED_MS, Ordering::Relaxed);
                if let Err(e) = self.start_fallback(why, None) {
                    diag::report(&format!(
                        "cannot start the embedded writer again: {e}; records are lost"
                    ));
                    self.state.store(FALLBACK, Ordering::SeqCst);
                }
            }
        }
    }
}

// The route is shared by every calling thread of the process.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Route>();
};
