//! What an audit record is and how the calling thread builds it: the event model, the
//! attribute allow-list, key identities, session and operation tracking, thread context.
//!
//! Everything here runs on the application's thread, after the real module has returned,
//! and does no I/O: a record is plain data handed to the writer ([`crate::sink`]).

pub mod attrs;
pub mod context;
pub mod event;
pub mod keys;
pub mod mechanism;
pub mod session_summary;
pub mod sessions;
pub mod summary;

use crate::audit::event::Flag;
use crate::backend::Backend;
use crate::config::{AuditConfig, Lifecycle, SessionDetail, UsageDetail};
use crate::sink::{Room, SinkSlot};
use cryptoki_sys::*;
use event::{Event, KeyRef, OpRecord, OperationInfo, Outcome, Started, TokenRef};
use keys::{KeyCache, KeyIdentity};
use mechanism::Mechanism;
use parking_lot::Mutex;
use rustc_hash::FxHashMap as HashMap;
use sessions::{Closing, OpKind, Operation, Sessions};
use std::sync::{Arc, OnceLock};

/// The audit state of the process.
pub struct Auditor {
    /// What is audited.
    pub config: AuditConfig,
    /// The real module, for identity look-ups.
    pub backend: &'static Backend,
    /// Key identities.
    pub keys: KeyCache,
    /// Sessions and operations.
    pub sessions: Sessions,
    tokens: Mutex<HashMap<CK_SLOT_ID, Arc<TokenRef>>>,
    sink: SinkSlot,
    /// Set by [`Auditor::stop`] (C_Finalize, exit); a later C_Initialize resumes the stream.
    stopped: std::sync::atomic::AtomicBool,
    /// Usage summaries, under `usage = "summary"`.
    summaries: Option<summary::Summaries>,
    /// Session summaries, under `sessions = "summary"` (and session records enabled).
    session_summaries: Option<session_summary::SessionSummaries>,
    /// `config.enabled(c)` for every category, one bit per category: what [`active`]
    /// asks on every audited call, as one test instead of a walk over the list.
    enabled: u32,
}

/// Drops the rarer parts of a record, out of line.
#[cold]
#[inline(never)]
fn drop_rare(extra: Option<Box<event::Extra>>, body: Option<event::Body>) {
    drop((extra, body));
}

/// The categories `config` records, one bit per category (`1 << c as u32`).
fn enabled_mask(config: &AuditConfig) -> u32 {
    Lifecycle::ALL
        .iter()
        .chain(&[Lifecycle::Audit])
        .filter(|c| config.enabled(**c))
        .fold(0, |m, c| m | 1 << *c as u32)
}

static AUDITOR: OnceLock<Auditor> = OnceLock::new();

/// The auditor, once the trail is running.
#[inline]
pub fn get() -> Option<&'static Auditor> {
    AUDITOR.get()
}

/// Starts the trail for a loaded backend (once per process). `threads` is false when
/// the application forbids keytrail to create threads: records are then written
/// synchronously.
pub fn start(backend: &'static Backend, threads: bool) -> &'static Auditor {
    if let Some(a) = AUDITOR.get() {
        a.resume();
        return a;
    }
    let config = &backend.config;
    let mut created = false;
    let auditor = AUDITOR.get_or_init(|| {
        created = true;
        let start = start_detail(backend, threads);
        Auditor {
            config: config.audit.clone(),
            backend,
            keys: KeyCache::default(),
            sessions: Sessions::default(),
            tokens: Mutex::new(HashMap::default()),
            sink: SinkSlot::new(
                config.trail.clone(),
                config.integrity.clone(),
                config.service.clone(),
                threads,
                start,
            )
            .forward_to(config.syslog.clone()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            enabled: enabled_mask(&config.audit),
            summaries: (config.audit.usage == UsageDetail::Summary).then(|| {
                summary::Summaries::new(std::time::Duration::from_secs(
                    config.audit.summary_interval,
                ))
            }),
            session_summaries: (config.audit.sessions == SessionDetail::Summary
                && config.audit.enabled(Lifecycle::Session))
            .then(|| {
                session_summary::SessionSummaries::new(std::time::Duration::from_secs(
                    config.audit.summary_interval,
                ))
            }),
        }
    });
    if created {
        crate::os::register_process_hooks();
    }
    auditor
}

/// What every stream's first record says (the writer adds the module's SHA-256 and the
/// chain's settings).
fn start_detail(backend: &Backend, threads: bool) -> serde_json::Value {
    let config = &backend.config;
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "module": backend.path.display().to_string(),
        "config": config.source.as_ref().map(|p| p.display().to_string()),
        "config_sha256": config.source_sha256,
        "trail": config.trail.path.display().to_string(),
        "writer": match (config.trail.mode, threads) {
            (crate::config::TrailMode::Agent, _) => "agent",
            (_, true) => "thread",
            (_, false) => "synchronous",
        },
    })
}

/// Records a C_Initialize the real module refused (`e`). A refusal is an event even when
/// no stream runs yet: it then gets a short stream of its own — `trail_start`, the refusal,
/// `trail_stop` — written synchronously on this thread (the refused arguments cannot be
/// trusted to say whether the application allows threads) and closed at once, so that a
/// later C_Initialize the module accepts starts the trail exactly as it would have. After
/// C_Finalize, the stopped stream is resumed for the refusal and stopped again.
pub fn initialize_refused(backend: &'static Backend, mut e: Event) {
    if let Some(a) = get() {
        if a.stopped.load(std::sync::atomic::Ordering::Acquire) {
            a.resume();
            a.emit(e);
            a.stop("a refused C_Initialize");
            a.flush_and_report("C_Initialize");
        } else {
            a.emit(e);
        }
        return;
    }
    let config = &backend.config;
    let slot = SinkSlot::new(
        config.trail.clone(),
        config.integrity.clone(),
        config.service.clone(),
        false,
        start_detail(backend, false),
    );
    if let Some(sink) = slot.get() {
        e.thread_id = context::thread_id();
        e.labels = context::labels();
        sink.send(e);
        let mut stop = Event::audit(
            "trail_stop",
            "trail stopped at a refused C_Initialize".into(),
            serde_json::json!({ "reason": "a refused C_Initialize" }),
        );
        stop.thread_id = context::thread_id();
        sink.send(stop);
        if !sink.flush(std::time::Duration::from_secs(5)) {
            crate::diag::report("the record of a refused C_Initialize may not be on the trail");
        }
    }
    slot.close();
}

/// CK_RV of an audited call refused because the trail cannot be written and the operator
/// chose `on_failure = "deny"`.
pub const REFUSED: CK_RV = CKR_FUNCTION_FAILED;

/// Functions that pass even when a fail-closed trail is refusing calls: those that end
/// work or give up privileges (refusing them would only make things worse) and read-only
/// information calls, which touch no key.
const ALWAYS_PASS: [&str; 13] = [
    "C_Logout",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_Finalize",
    "C_GetInfo",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_GetSessionInfo",
    "C_GetObjectSize",
    "C_FindObjectsFinal",
];

/// Whether `function` passes even when a fail-closed trail is refusing calls
/// ([`ALWAYS_PASS`]); a `const fn`, so that the entry points decide it when compiling.
pub const fn always_passes(function: &str) -> bool {
    let mut i = 0;
    while i < ALWAYS_PASS.len() {
        if str_eq(ALWAYS_PASS[i], function) {
            return true;
        }
        i += 1;
    }
    false
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether an audited call must be refused before it reaches the module.
#[inline]
pub fn refusal(function: &'static str) -> Option<CK_RV> {
    let a = get()?;
    let Some(sink) = a.sink.get() else {
        // No writer could be started: under `deny` that is a failed trail like any other.
        return (a.sink.fail_closed() && !ALWAYS_PASS.contains(&function)).then_some(REFUSED);
    };
    (sink.refusing() && !ALWAYS_PASS.contains(&function)).then(|| {
        sink.count_refused();
        REFUSED
    })
}

/// Called at process exit (registered with atexit): records the exit and drains the
/// queue, for applications that never call C_Finalize.
pub fn at_exit() {
    // A process that never wrote a record (a child after fork that made no PKCS#11 call)
    // has no stream to end, and must not start one on its way out.
    if let Some(a) = get().filter(|a| a.sink.started()) {
        a.stop("exit");
        a.flush_and_report("exit");
    }
}

/// fork() handlers: the auditor's locks are taken before the fork so that neither side
/// inherits one held by a thread that does not exist in the child.
pub mod fork {
    use super::get;

    /// Before fork: take every lock.
    pub fn prepare() {
        if let Some(a) = get() {
            a.sessions.lock_for_fork();
            a.keys.lock_for_fork();
            std::mem::forget(a.tokens.lock());
            if let Some(s) = &a.summaries {
                s.lock_for_fork();
            }
            if let Some(s) = &a.session_summaries {
                s.lock_for_fork();
            }
        }
        crate::diag::lock_for_fork();
    }

    /// After fork, in either process: release them.
    ///
    /// # Safety
    /// Only after `prepare` on this thread.
    pub unsafe fn release() {
        if let Some(a) = get() {
            // SAFETY: prepare() locked each of these and forgot the guards.
            unsafe {
                a.sessions.unlock_after_fork();
                a.keys.unlock_after_fork();
                a.tokens.force_unlock();
                if let Some(s) = &a.summaries {
                    s.unlock_after_fork();
                }
                if let Some(s) = &a.session_summaries {
                    s.unlock_after_fork();
                }
            }
        }
        // SAFETY: as above.
        unsafe { crate::diag::unlock_after_fork() };
    }

    /// In the child: a new stream with a writer of its own.
    pub fn child() {
        super::context::reset_thread_id();
        if let Some(a) = get() {
            a.sink.after_fork_in_child();
            if let Some(s) = &a.summaries {
                s.forget_after_fork();
            }
            if let Some(s) = &a.session_summaries {
                s.forget_after_fork();
            }
            a.stopped.store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

/// The auditor when records of category `c` are written.
#[inline]
pub fn active(c: Lifecycle) -> Option<&'static Auditor> {
    get().filter(|a| a.enabled & (1 << c as u32) != 0)
}

/// What a data-carrying call produced, for operation accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The call has no output buffer.
    None,
    /// The output buffer was NULL: a length query.
    Query,
    /// The module wrote this many bytes.
    Written(u64),
}

/// When a call ends its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// An Update: ends only on an error (other than CKR_BUFFER_TOO_SMALL).
    Update,
    /// A one-shot or Final call: ends unless it was a length query or the buffer was
    /// too small.
    Final,
    /// A call that always ends its operation (C_Verify, C_VerifyFinal).
    Always,
    /// One message of a message-based operation: never ends it.
    Message,
}

impl Auditor {
    /// Completes a record with the thread's facts and queues it, in its queue slot. (A
    /// record is 416 bytes, and moved into a call it is copied: the frequent records go
    /// by reference, through [`Auditor::emit_from`].)
    #[inline(always)]
    pub fn emit(&self, mut e: Event) {
        self.emit_from(&mut e);
    }

    /// [`Auditor::emit`]: with a writer thread, the record is swapped into its queue slot
    /// (one pass over its bytes, where an assignment would copy it out and back in around
    /// the drop of what the slot held) and `e` is left vacant; without one (the agent's
    /// ring, a synchronous writer) it is read where it is, and the caller drops it.
    pub fn emit_from(&self, e: &mut Event) {
        let Some(sink) = self.sink_for(e) else {
            return;
        };
        context::complete(e);
        match sink.claim() {
            Room::Slot(mut slot) => {
                std::mem::swap(slot.event(), e);
                slot.queue();
            }
            Room::Direct => sink.send_direct(e),
            Room::None => {}
        }
    }

    /// The sink a record goes to; `None` when it is not a record. After C_Finalize the
    /// stream has ended: calls made then (the module refuses them) are not records. The
    /// writer holds the same line for calls that race the stop.
    #[inline(always)]
    fn sink_for(&self, e: &Event) -> Option<&crate::sink::Sink> {
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return self.sink_when_stopped(e);
        }
        self.sink.get()
    }

    #[cold]
    #[inline(never)]
    fn sink_when_stopped(&self, e: &Event) -> Option<&crate::sink::Sink> {
        if matches!(e.action, "trail_stop" | "trail_resume") {
            self.sink.get()
        } else {
            None
        }
    }

    /// Queues a summary. It stands for calls of several threads, so it carries none's
    /// labels (its thread is the one that happened to write it).
    fn emit_summary(&self, mut e: Event) {
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        e.thread_id = context::thread_id();
        if let Some(sink) = self.sink.get() {
            sink.send(e);
        }
    }

    /// Ends the stream (C_Finalize, process exit) with a `trail_stop` record, which the
    /// writer completes with the head of the chain. The caller flushes.
    pub fn stop(&self, reason: &'static str) {
        use std::sync::atomic::Ordering;
        if !self.stopped.load(Ordering::Acquire) {
            // The interval's summaries go before the stop: nothing counted is left out.
            let sessions = self.session_summaries.iter().flat_map(|s| s.drain());
            for e in self
                .summaries
                .iter()
                .flat_map(|s| s.drain())
                .chain(sessions)
            {
                self.emit_summary(e);
            }
        }
        if !self.stopped.swap(true, Ordering::AcqRel) {
            self.emit(Event::stream_mark("trail_stop", reason));
        }
    }

    /// Whether session calls are counted into summaries (`sessions = "summary"`) rather
    /// than recorded one by one.
    #[inline]
    pub fn summarizes_sessions(&self) -> bool {
        self.session_summaries.is_some()
    }

    /// Counts a successful session call on `slot` into its summary, writing the
    /// summaries of an interval that has run out. Does nothing unless
    /// [`Auditor::summarizes_sessions`].
    #[inline]
    pub fn count_session(
        &self,
        slot: CK_SLOT_ID,
        started: Started,
        change: session_summary::Change,
    ) {
        let Some(s) = &self.session_summaries else {
            return;
        };
        if let Some(due) = s.count(slot, started, change, || self.token(slot)) {
            for e in due {
                self.emit_summary(e);
            }
        }
    }

    /// Continues a stopped stream (C_Initialize after C_Finalize) with `trail_resume`.
    pub fn resume(&self) {
        use std::sync::atomic::Ordering;
        if self.stopped.swap(false, Ordering::AcqRel) {
            self.emit(Event::stream_mark("trail_resume", "C_Initialize"));
        }
    }

    /// Waits for the writer to drain; true when everything was written.
    pub fn flush(&self) -> bool {
        self.sink
            .get()
            .is_some_and(|s| s.flush(std::time::Duration::from_secs(5)))
    }

    /// Flushes at `when` (C_Finalize, exit) and says on stderr and in the diagnostics what
    /// the trail lost and has not yet recorded, or that the flush did not finish.
    pub fn flush_and_report(&self, when: &str) {
        let flushed = self.flush();
        let undelivered = self.sink.get().map_or_else(Vec::new, |s| {
            s.drain_forwarders(std::time::Duration::from_secs(5))
        });
        for (sink, n, lost) in undelivered {
            crate::diag::report(&format!(
                "at {when}, {n} records had not been delivered to {sink} yet, and {lost} \
                 more were lost that the trail does not record"
            ));
        }
        match self.sink.get().and_then(|s| s.unreported_loss()) {
            Some(loss) => crate::diag::report(&format!(
                "at {when}, the trail has lost what it could not record: {loss}"
            )),
            None if !flushed => crate::diag::report(&format!(
                "the trail could not be flushed within 5 s at {when}"
            )),
            None => {}
        }
    }

    /// Under `on_failure = "deny"`, puts a record of a call on the trail before the call is
    /// forwarded, and says whether that succeeded (if not, the call must be refused).
    /// Under `continue`, does nothing and says yes.
    pub fn on_record_first(&self, intent: impl FnOnce() -> Event) -> bool {
        match self.sink.get() {
            Some(s) if s.fail_closed() => {}
            Some(_) => return true,
            // No writer could be started: nothing can be recorded first.
            None => return !self.sink.fail_closed(),
        }
        let mut intent = intent();
        intent.rv = None;
        intent.outcome = Outcome::Unknown;
        intent.duration_ns = None;
        intent.flag(Flag::Intent);
        self.emit(intent);
        self.flush()
    }

    /// The token in a slot, cached.
    pub fn token(&self, slot: CK_SLOT_ID) -> Option<Arc<TokenRef>> {
        if let Some(t) = self.lock_tokens().get(&slot) {
            return Some(t.clone());
        }
        let (label, serial) = self.backend.token_identity(slot)?;
        let t = Arc::new(TokenRef::new(label, serial));
        self.lock_tokens().insert(slot, t.clone());
        Some(t)
    }

    /// Forgets a slot's token identity (after C_InitToken relabels it).
    pub fn forget_token(&self, slot: CK_SLOT_ID) {
        self.lock_tokens().remove(&slot);
    }

    fn lock_tokens(&self) -> parking_lot::MutexGuard<'_, HashMap<CK_SLOT_ID, Arc<TokenRef>>> {
        self.tokens.lock()
    }

    /// Fills in where a session call happened: slot, token, session and its state. A
    /// session keytrail did not see opened is asked of the module.
    pub fn place(&self, e: &mut Event, session: CK_SESSION_HANDLE) {
        let place = self.sessions.place(session).or_else(|| {
            let (slot, rw) = self.backend.session_slot(session)?;
            self.sessions.opened(session, slot, rw);
            self.sessions.place(session)
        });
        if let Some(p) = place {
            self.place_at(e, session, p);
        } else {
            e.session = Some(session);
        }
    }

    /// Fills in a session call's place as the session table gave it.
    #[inline]
    pub fn place_at(&self, e: &mut Event, session: CK_SESSION_HANDLE, p: sessions::Place) {
        e.session = Some(session);
        e.slot_id = Some(p.slot);
        e.session_state = Some(p.state);
        e.token = match p.token {
            Some(t) => Some(t),
            None => self.learn_token(session, p.slot),
        };
    }

    /// The token of a session's slot, looked up once per session and remembered.
    #[cold]
    #[inline(never)]
    fn learn_token(&self, session: CK_SESSION_HANDLE, slot: CK_SLOT_ID) -> Option<Arc<TokenRef>> {
        let t = self.token(slot)?;
        self.sessions.set_token(session, t.clone());
        Some(t)
    }

    /// A slot (and its token) for calls that name a slot.
    pub fn place_slot(&self, e: &mut Event, slot: CK_SLOT_ID) {
        e.slot_id = Some(slot);
        e.token = self.token(slot);
    }

    /// A key's identity, from the cache or a look-up.
    pub fn key(
        &self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
    ) -> Option<Arc<KeyIdentity>> {
        self.keys
            .get(self.backend, session, handle, self.config.key_lookups)
    }

    /// A key keytrail saw created.
    pub fn created(
        &self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
        stated: KeyIdentity,
    ) -> Arc<KeyIdentity> {
        // A creation record names the key as every later record will: by what the module
        // says of it (a look-up, which also gives a public key's fingerprint, the token
        // flag and CKA_UNIQUE_ID the template may not state).
        self.keys.created(
            self.backend,
            session,
            handle,
            stated,
            self.config.key_lookups,
        )
    }

    /// A *Init call returned.
    pub fn op_init(
        &self,
        started: Started,
        function: &'static str,
        kind: OpKind,
        session: CK_SESSION_HANDLE,
        mechanism: Option<Mechanism>,
        mechanism_given: bool,
        key: CK_OBJECT_HANDLE,
        rv: CK_RV,
    ) {
        if rv != CKR_OK {
            let key = mechanism_given.then_some(key);
            return self.op_failed(rv, started, function, kind, session, mechanism, key);
        }
        if !mechanism_given {
            return self.op_cancelled(session, kind, function);
        }
        let op = Operation {
            started,
            mechanism,
            key: KeyRef {
                role: "key",
                handle: key,
                identity: self.key(session, key),
            },
            info: OperationInfo {
                kind: kind.as_str(),
                init: function,
                ..OperationInfo::default()
            },
        };
        // A session keytrail did not see opened is asked of the module (under the session
        // lock; this happens once per such session).
        let learn = || self.backend.session_slot(session);
        if let Some(old) = self.sessions.start(session, kind, op, learn) {
            self.end_op(session, kind, old, function, None, "abandoned");
        }
    }

    /// [`Auditor::op_init`] that failed (`key` when a mechanism was given): out of line,
    /// so that the code of a started operation stays small.
    #[cold]
    #[inline(never)]
    fn op_failed(
        &self,
        rv: CK_RV,
        started: Started,
        function: &'static str,
        kind: OpKind,
        session: CK_SESSION_HANDLE,
        mechanism: Option<Mechanism>,
        key: Option<CK_OBJECT_HANDLE>,
    ) {
        let mut e = Event::call(started, function, kind.as_str(), Lifecycle::Use, rv);
        self.place(&mut e, session);
        e.mechanism = mechanism;
        if let Some(key) = key {
            e.key("key", key, self.key(session, key));
        }
        e.operation = Some(OperationInfo {
            kind: kind.as_str(),
            init: function,
            end: "failed",
            ..OperationInfo::default()
        });
        self.emit(e);
    }

    /// PKCS#11 3.0: an *Init with a NULL mechanism cancels the operation.
    #[cold]
    #[inline(never)]
    fn op_cancelled(&self, session: CK_SESSION_HANDLE, kind: OpKind, function: &'static str) {
        for (k, op) in self.sessions.cancel(session, kind.cancel_flag()) {
            self.end_op(session, k, op, function, None, "cancelled");
        }
    }

    /// A call within an operation returned.
    pub fn op_call(
        &self,
        function: &'static str,
        kind: OpKind,
        session: CK_SESSION_HANDLE,
        rv: CK_RV,
        input: Option<u64>,
        output: Output,
        ending: Ending,
    ) {
        let ends = match ending {
            Ending::Update => rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL,
            Ending::Final => {
                !(rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && output == Output::Query))
            }
            Ending::Always => true,
            Ending::Message => false,
        };
        let counted = rv == CKR_OK && output != Output::Query;
        let ended = self.sessions.with_op(session, kind, |op| {
            if counted {
                if let Some(n) = input {
                    op.info.parts += 1;
                    op.info.in_len += n;
                }
                if let Output::Written(n) = output {
                    op.info.out_len += n;
                }
            }
            ends
        });
        if let Some((op, place)) = ended {
            let end = if rv == CKR_OK { "completed" } else { "failed" };
            self.end_op_at(session, Some(place), kind, op, function, Some(rv), end);
        }
    }

    /// Writes the record of an operation that ended.
    pub fn end_op(
        &self,
        session: CK_SESSION_HANDLE,
        kind: OpKind,
        op: Operation,
        function: &'static str,
        rv: Option<CK_RV>,
        end: &'static str,
    ) {
        self.end_op_at(session, None, kind, op, function, rv, end);
    }

    /// Writes the record of an operation that ended; `place` is where its session stood
    /// when the session is already gone from the table (closed, finalized).
    fn end_op_at(
        &self,
        session: CK_SESSION_HANDLE,
        place: Option<sessions::Place>,
        kind: OpKind,
        op: Operation,
        function: &'static str,
        rv: Option<CK_RV>,
        end: &'static str,
    ) {
        let outcome = match rv {
            Some(rv) => Outcome::of(rv),
            None => Outcome::Unknown,
        };
        if self.config.usage == UsageDetail::First
            && outcome == Outcome::Success
            && !self.keys.first_use(session, op.key.handle)
        {
            return;
        }
        if self.summaries.is_none()
            && let Some(p) = &place
            && let Some(token) = p.token.as_ref()
            && self.send_op(session, p, token, kind, &op, function, rv, outcome, end)
        {
            return;
        }
        self.end_op_event(session, place, kind, op, function, rv, outcome, end);
    }

    /// [`Auditor::end_op_at`]'s record through an [`Event`]: every mode but the agent's, and
    /// whatever the agent's ring does not take as it is. Out of line, so that the code the
    /// agent's path runs for each operation stays a few cache lines.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn end_op_event(
        &self,
        session: CK_SESSION_HANDLE,
        place: Option<sessions::Place>,
        kind: OpKind,
        op: Operation,
        function: &'static str,
        rv: Option<CK_RV>,
        outcome: Outcome,
        end: &'static str,
    ) {
        let mut e = Event::call(
            op.started,
            function,
            kind.as_str(),
            Lifecycle::Use,
            rv.unwrap_or(CKR_OK),
        );
        e.rv = rv;
        e.outcome = outcome;
        match place {
            Some(p) => self.place_at(&mut e, session, p),
            None => self.place(&mut e, session),
        }
        e.mechanism = op.mechanism;
        let _ = e.keys.try_push(op.key);
        let mut info = op.info;
        info.end = end;
        e.operation = Some(info);
        if self.summaries.is_some() {
            return self.summarize(e);
        }
        self.emit_from(&mut e);
        // What is left (the record, sent by reference, or the vacant one its queue slot
        // held) is dropped by its parts: an operation's record has no rarer parts, and
        // the drop of a whole record would run their code too.
        let Event {
            labels,
            token,
            keys,
            extra,
            body,
            ..
        } = e;
        drop((labels, token, keys));
        if extra.is_some() || body.is_some() {
            drop_rare(extra, body);
        } else {
            // Both are `None`: nothing to free.
            std::mem::forget((extra, body));
        }
    }

    /// [`Auditor::end_op_at`]'s record, when the agent's ring takes it as it is: encoded
    /// from the operation where it lies, without an [`Event`] ([`OpRecord`]). False when
    /// it needs the general path (the stream stopped, the thread has labels, a mode other
    /// than the agent's, or whatever [`crate::sink::Sink::send_op`] leaves to it).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn send_op(
        &self,
        session: CK_SESSION_HANDLE,
        place: &sessions::Place,
        token: &Arc<TokenRef>,
        kind: OpKind,
        op: &Operation,
        function: &'static str,
        rv: Option<CK_RV>,
        outcome: Outcome,
        end: &'static str,
    ) -> bool {
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) || context::has_labels() {
            return false;
        }
        let Some(sink) = self.sink.get() else {
            return false;
        };
        let info = OperationInfo { end, ..op.info };
        sink.send_op(&OpRecord {
            started: op.started,
            duration_ns: op.started.instant.elapsed().as_nanos() as u64,
            function,
            action: kind.as_str(),
            outcome,
            rv,
            thread_id: context::thread_id(),
            slot: place.slot,
            session,
            state: place.state,
            token,
            mechanism: op.mechanism.as_ref(),
            info: &info,
            key: &op.key,
        })
    }

    /// Counts an operation's record into its usage summary (`usage = "summary"`),
    /// writing the summaries that are due and a failure's own record.
    #[cold]
    #[inline(never)]
    fn summarize(&self, e: Event) {
        let Some(s) = &self.summaries else {
            return;
        };
        let mut due = Vec::new();
        let failed = s.add(e, &mut due);
        for d in due {
            self.emit_summary(d);
        }
        if let Some(f) = failed {
            self.emit(f);
        }
    }

    /// Sessions closed (or the library finalized): their unfinished operations are
    /// recorded as abandoned and their session objects forgotten.
    pub fn sessions_closed(&self, which: Closing, function: &'static str) {
        // (A session the table never held may still own cached keys: `closed` names it.)
        let (closed, ops) = self.sessions.close(which);
        for (session, kind, op, place) in ops {
            if self.config.enabled(Lifecycle::Use) {
                self.end_op_at(session, Some(place), kind, op, function, None, "abandoned");
            }
        }
        match which {
            Closing::All => self.keys.clear(),
            _ => self.keys.sessions_closed(Some(&closed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Level;

    /// The mask [`active`] tests says what the configuration says, for every category
    /// and the settings that decide it (the list, and level `trace` for discovery).
    #[test]
    fn the_enabled_mask_agrees_with_the_configuration() {
        let mut configs = vec![AuditConfig::default()];
        for (categories, level) in [
            (vec![Lifecycle::Use, Lifecycle::Destroy], Level::Trace),
            (vec![], Level::Trace),
            (vec![Lifecycle::Session], AuditConfig::default().level),
        ] {
            configs.push(AuditConfig {
                categories,
                level,
                ..AuditConfig::default()
            });
        }
        for config in &configs {
            let mask = enabled_mask(config);
            for c in Lifecycle::ALL.iter().chain(&[Lifecycle::Audit]) {
                assert_eq!(mask & (1 << *c as u32) != 0, config.enabled(*c), "{c:?}");
            }
        }
    }
}
