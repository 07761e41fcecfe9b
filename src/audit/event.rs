//! What one audit record holds: plain data built on the calling thread, formatted on the
//! writer thread.

use super::attrs::Attr;
use super::keys::{KeyIdentity, WireBytes};
use super::mechanism::Mechanism;
use crate::config::Lifecycle;
use arrayvec::ArrayVec;
use cryptoki_sys::*;
use std::sync::Arc;

/// Most keys one record names (a key pair, or a key and its wrapping, unwrapping, base or
/// source key). Records hold them inline: a record on the hot path allocates nothing, so
/// the writer thread never frees memory of the caller's malloc arena.
pub const MAX_KEYS: usize = 2;
use std::time::{Instant, SystemTime};

/// When a call started, on the monotonic clock. Reading one clock per call start is what
/// the calling thread pays; the writer turns it into wall-clock time when it formats the
/// record ([`Started::wall_time`]).
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// Monotonic time.
    pub instant: Instant,
}

impl Started {
    /// Now.
    #[inline]
    pub fn now() -> Started {
        Started {
            instant: Instant::now(),
        }
    }

    /// The wall-clock time this was, as the system clock says now: the record's time is
    /// consistent with the clock the writer sees, even if the clock was stepped meanwhile.
    pub fn wall_time(&self) -> SystemTime {
        self.wall_time_at(&WallClock::now())
    }

    /// The wall-clock time this was, as the system clock said at `now`: the wall time then
    /// minus the monotonic time elapsed from this start to then (plus, for a start after
    /// `now`, the time from then to it). With `now` read once for a batch of records,
    /// each record's time is what [`Started::wall_time`] would give, but for the clock
    /// being stepped while the batch is formatted.
    #[inline]
    pub fn wall_time_at(&self, now: &WallClock) -> SystemTime {
        match now.instant.checked_duration_since(self.instant) {
            Some(ago) => now.wall.checked_sub(ago).unwrap_or(now.wall),
            None => now.wall + self.instant.duration_since(now.instant),
        }
    }
}

/// The monotonic and the wall clock, read together: what turns [`Started`] times into
/// wall-clock times ([`Started::wall_time_at`]). A writer that formats many records at once
/// reads it once for them instead of twice per record.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// Monotonic time.
    pub instant: Instant,
    /// The system clock at the same moment.
    pub wall: SystemTime,
}

impl WallClock {
    /// Both clocks, now.
    #[inline]
    pub fn now() -> WallClock {
        WallClock {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// How a call or operation ended, in ECS terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// CKR_OK (or a result that means the operation did what was asked).
    Success,
    /// Any other CK_RV.
    Failure,
    /// The operation never finished (abandoned, cancelled).
    Unknown,
}

impl Outcome {
    /// From a return value.
    pub fn of(rv: CK_RV) -> Outcome {
        if rv == CKR_OK {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    /// The ECS value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Unknown => "unknown",
        }
    }
}

/// A key taking part in a call: its handle and, when known, its identity.
#[derive(Debug, Clone)]
pub struct KeyRef {
    /// What part the key plays: `key`, `wrapping`, `unwrapping`, `base`, `source`,
    /// `public`, `private`, `new`, `wrapped`.
    pub role: &'static str,
    /// The handle.
    pub handle: CK_OBJECT_HANDLE,
    /// The non-secret identity.
    pub identity: Option<Arc<KeyIdentity>>,
}

/// A token's identity, cached per slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef {
    /// CK_TOKEN_INFO.label, trimmed.
    pub label: String,
    /// CK_TOKEN_INFO.serialNumber, trimmed.
    pub serial: String,
    /// Its `token` object in the trail, once the agent's reader of a ring has formatted it
    /// (`sink::json::token`).
    pub json: WireBytes,
}

impl TokenRef {
    /// A token of this label and serial number.
    pub fn new(label: String, serial: String) -> TokenRef {
        TokenRef {
            label,
            serial,
            json: WireBytes::default(),
        }
    }
}

/// Progress of a multi-part operation.
#[derive(Debug, Clone, Copy, Default)]
pub struct OperationInfo {
    /// The kind: encrypt, decrypt, sign, verify, sign_recover, verify_recover,
    /// message_encrypt, …
    pub kind: &'static str,
    /// The *Init function that started it.
    pub init: &'static str,
    /// Calls that carried data (Update calls, or messages for message-based operations).
    pub parts: u64,
    /// Input bytes.
    pub in_len: u64,
    /// Output bytes.
    pub out_len: u64,
    /// How it ended: `completed`, `failed`, `abandoned` (another *Init, the session
    /// closed, C_Finalize), `cancelled`.
    pub end: &'static str,
}

/// Notable facts about a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Flag {
    /// A session opened read/write.
    ReadWrite = 1,
    /// A key was created or unwrapped from plaintext key material in the call.
    PlaintextKeyMaterial = 2,
    /// An attribute read returned (or was refused) a secret value.
    SecretValueRead = 4,
    /// C_InitToken wiped the token.
    TokenWiped = 8,
    /// Written before the call was forwarded (fail-closed policy).
    Intent = 16,
    /// An attribute read may have returned a secret value: keytrail could not tell the
    /// object's class, or the module's answer did not say which values it returned.
    PossibleSecretRead = 32,
}

impl Flag {
    /// Every flag, in the order the trail lists them.
    pub const ALL: [Flag; 6] = [
        Flag::ReadWrite,
        Flag::PlaintextKeyMaterial,
        Flag::SecretValueRead,
        Flag::PossibleSecretRead,
        Flag::TokenWiped,
        Flag::Intent,
    ];

    /// The name in the trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::ReadWrite => "read_write",
            Flag::PlaintextKeyMaterial => "plaintext_key_material",
            Flag::SecretValueRead => "secret_value_read",
            Flag::TokenWiped => "token_wiped",
            Flag::Intent => "intent",
            Flag::PossibleSecretRead => "possible_secret_read",
        }
    }
}

/// A set of [`Flag`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u8);

impl Flags {
    /// Whether `f` is set.
    pub fn has(self, f: Flag) -> bool {
        self.0 & f as u8 != 0
    }

    /// The set as a byte (the ring's layout).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// A set from a byte; `None` when it holds an unknown flag.
    pub fn from_bits(bits: u8) -> Option<Flags> {
        let known = Flag::ALL.iter().fold(0u8, |m, f| m | *f as u8);
        (bits & !known == 0).then_some(Flags(bits))
    }

    /// Whether none is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags set, in trail order.
    pub fn iter(self) -> impl Iterator<Item = Flag> {
        Flag::ALL.into_iter().filter(move |f| self.has(*f))
    }
}

/// The parts of a record that only rarer calls have (creation, export, modification,
/// logins with a user name, keytrail's own records). Kept out of line so that the
/// records of frequent calls stay small to build and to queue.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// The user name of a C_LoginUser.
    pub username: Option<String>,
    /// Sanitized attribute lists by role: `template` (creation), `public_template` and
    /// `private_template` (key pairs), `set` (modify), `read` (export).
    pub attributes: Vec<(&'static str, Vec<Attr>)>,
    /// How many attributes the application passed in each list (its `ulCount`): on
    /// record whether or not the list itself could be read.
    pub attribute_counts: Vec<(&'static str, u64)>,
    /// Input/output lengths of a single call (wrap, random, …).
    pub data: Option<(Option<u64>, Option<u64>)>,
    /// Free text for keytrail's own records.
    pub message: Option<String>,
    /// Structured detail for keytrail's own records (`audit` category).
    pub detail: Option<serde_json::Value>,
    /// What a usage summary stands for (`usage = "summary"`).
    pub summary: Option<UseSummary>,
    /// What a session summary stands for (`sessions = "summary"`).
    pub sessions: Option<SessionSummary>,
}

/// Successful operations of one key, operation and mechanism that one summary record
/// stands for. The record's own time is the first one's start.
#[derive(Debug, Clone, Copy)]
pub struct UseSummary {
    /// Operations that succeeded.
    pub successes: u64,
    /// Operations that failed meanwhile (each also has a record of its own).
    pub failures: u64,
    /// When the last one started.
    pub last: Started,
}

/// The sessions of one slot that one session summary record stands for, over one
/// interval. The record's own time is the first call's start.
#[derive(Debug, Clone, Copy)]
pub struct SessionSummary {
    /// Sessions opened read/write.
    pub opened_rw: u64,
    /// Sessions opened read-only.
    pub opened_ro: u64,
    /// Sessions closed by C_CloseSession.
    pub closed: u64,
    /// Sessions closed by C_CloseAllSessions.
    pub closed_all: u64,
    /// Sessions still open when the interval ended.
    pub open: u64,
    /// The most sessions open at once during the interval.
    pub max_open: u64,
    /// When the last call counted started (the first's is the record's time).
    pub last: Started,
}

/// A record's `pkcs11` object, labels, message and detail, encoded by the calling thread
/// ([`crate::sink::json::encode_body`]) when the record has rarer parts: the record then
/// carries bytes in a buffer of the writer's pool instead of the caller's heap memory.
#[derive(Debug, Clone, Default)]
pub struct Body {
    /// The encoded bytes.
    pub bytes: Vec<u8>,
    /// A buffer of the writer's pool (allocated once when the stream started, never
    /// freed), which the writer puts back; otherwise the caller's own, which goes back to a
    /// caller to free.
    pub pooled: bool,
}

/// The record of an operation that ended, read from the operation's state where it is:
/// what [`crate::audit::Auditor`] would otherwise copy into an [`Event`] (lifecycle `use`,
/// the operation's kind as action, its one key, its session's place and token, no labels
/// and nothing rarer). The agent route encodes it straight into a ring slot
/// (`agent::wire::encode_op_to`), giving the bytes of that [`Event`]: the most frequent
/// record skips building the 416-byte record and the general path's code.
#[derive(Debug, Clone, Copy)]
pub struct OpRecord<'a> {
    /// When the operation's *Init was called.
    pub started: Started,
    /// Nanoseconds from then to the return of the call that ended it.
    pub duration_ns: u64,
    /// The function that ended it.
    pub function: &'static str,
    /// The operation's kind, the record's action.
    pub action: &'static str,
    /// The outcome.
    pub outcome: Outcome,
    /// The module's return value (`None`: the operation was abandoned, no call ended it).
    pub rv: Option<CK_RV>,
    /// Kernel thread id of the caller.
    pub thread_id: u64,
    /// The session's slot.
    pub slot: CK_SLOT_ID,
    /// The session.
    pub session: CK_SESSION_HANDLE,
    /// The session's state.
    pub state: &'static str,
    /// The token in the slot.
    pub token: &'a Arc<TokenRef>,
    /// The mechanism.
    pub mechanism: Option<&'a Mechanism>,
    /// The operation's progress, with how it ended.
    pub info: &'a OperationInfo,
    /// The key.
    pub key: &'a KeyRef,
}

/// One audit record.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the call (or operation) started.
    pub started: Started,
    /// Nanoseconds from start to the return of the last call.
    pub duration_ns: Option<u64>,
    /// The PKCS#11 function that produced the record (for operations, the one that ended
    /// it).
    pub function: &'static str,
    /// What happened, in words: `login`, `key_generate`, `sign`, …
    pub action: &'static str,
    /// The lifecycle category.
    pub lifecycle: Lifecycle,
    /// The outcome.
    pub outcome: Outcome,
    /// Notable facts.
    pub flags: Flags,
    /// The module's return value (absent on keytrail's own records).
    pub rv: Option<CK_RV>,
    /// Kernel thread id of the caller.
    pub thread_id: u64,
    /// Context the application attached to the calling thread.
    pub labels: Option<Arc<Vec<(String, String)>>>,
    /// The slot.
    pub slot_id: Option<CK_SLOT_ID>,
    /// The token in it.
    pub token: Option<Arc<TokenRef>>,
    /// The session handle.
    pub session: Option<CK_SESSION_HANDLE>,
    /// The session's state: ro_public, rw_public, ro_user, rw_user, rw_so.
    pub session_state: Option<&'static str>,
    /// The user type of a login.
    pub user_type: Option<CK_USER_TYPE>,
    /// The mechanism.
    pub mechanism: Option<Mechanism>,
    /// The keys involved.
    pub keys: ArrayVec<KeyRef, MAX_KEYS>,
    /// Operation progress (use records).
    pub operation: Option<OperationInfo>,
    /// What only rarer records carry.
    pub extra: Option<Box<Extra>>,
    /// The rarer parts (with everything else of the `pkcs11` object, labels, message and
    /// detail) already encoded, in place of `extra` and `labels`.
    pub body: Option<Body>,
    /// Why keytrail ended or resumed the stream (`trail_stop`, `trail_resume`): the
    /// writer makes those records' message and detail from it.
    pub reason: Option<&'static str>,
}

impl Event {
    /// A record of `function` returning `rv`, with everything else empty.
    #[inline]
    pub fn call(
        started: Started,
        function: &'static str,
        action: &'static str,
        lifecycle: Lifecycle,
        rv: CK_RV,
    ) -> Event {
        let duration = started.instant.elapsed().as_nanos() as u64;
        Event::new(started, Some(duration), function, action, lifecycle, rv)
    }

    /// A record of `function` returning `rv` after `duration_ns`, with everything else
    /// empty. Reads no clock: for a reader that has the duration (`agent::wire`).
    #[inline]
    pub(crate) fn new(
        started: Started,
        duration_ns: Option<u64>,
        function: &'static str,
        action: &'static str,
        lifecycle: Lifecycle,
        rv: CK_RV,
    ) -> Event {
        Event {
            duration_ns,
            started,
            function,
            action,
            lifecycle,
            outcome: Outcome::of(rv),
            flags: Flags::default(),
            rv: Some(rv),
            thread_id: 0,
            labels: None,
            slot_id: None,
            token: None,
            session: None,
            session_state: None,
            user_type: None,
            mechanism: None,
            keys: ArrayVec::new(),
            operation: None,
            extra: None,
            body: None,
            reason: None,
        }
    }

    /// A record that says nothing: what an empty queue slot holds until a caller fills it
    /// (with the slot's own `started`, so that making one reads no clock). The writer
    /// skips it.
    #[inline]
    pub fn vacant(started: Started) -> Event {
        Event::new(started, None, "", "", Lifecycle::Audit, CKR_OK)
    }

    /// Whether this is a vacant record ([`Event::vacant`]): every real record has an
    /// action.
    #[inline]
    pub fn is_vacant(&self) -> bool {
        self.action.is_empty()
    }

    /// A record built before the call (its place is gone after it); [`Event::finish`]
    /// sets the return value and duration.
    #[inline]
    pub fn before(
        started: Started,
        function: &'static str,
        action: &'static str,
        lifecycle: Lifecycle,
    ) -> Event {
        Event::new(started, None, function, action, lifecycle, CKR_OK)
    }

    /// Sets the return value and duration of a record built before the call.
    pub fn finish(&mut self, rv: CK_RV) {
        self.rv = Some(rv);
        self.outcome = Outcome::of(rv);
        self.duration_ns = Some(self.started.instant.elapsed().as_nanos() as u64);
    }

    /// One of keytrail's own records (`audit` category).
    pub fn audit(action: &'static str, message: String, detail: serde_json::Value) -> Event {
        let mut e = Event::call(Started::now(), "", action, Lifecycle::Audit, CKR_OK);
        e.rv = None;
        e.duration_ns = None;
        let x = e.extra_mut();
        x.message = Some(message);
        x.detail = Some(detail);
        e
    }

    /// A `trail_stop` or `trail_resume` record: plain data, whose message and detail the
    /// writer adds from `reason`.
    pub fn stream_mark(action: &'static str, reason: &'static str) -> Event {
        let mut e = Event::call(Started::now(), "", action, Lifecycle::Audit, CKR_OK);
        e.rv = None;
        e.duration_ns = None;
        e.reason = Some(reason);
        e
    }

    /// Turns a stream mark's reason (`trail_stop`, `trail_resume`) into its message and
    /// `detail.reason`, as the trail shows them; other records are left as they are.
    pub fn spell_reason(&mut self) {
        let Some(reason) = self.reason.take() else {
            return;
        };
        let message = match self.action {
            "trail_resume" => format!("trail resumed at {reason}"),
            _ => format!("trail stopped at {reason}"),
        };
        let x = self.extra_mut();
        x.message = Some(message);
        x.detail = Some(serde_json::json!({ "reason": reason }));
    }

    /// Whether the record owns heap memory of its own (allocated by the caller that built
    /// it): its rarer parts, built or encoded outside the writer's pool.
    #[inline]
    pub fn owns_memory(&self) -> bool {
        self.extra.is_some() || self.body.as_ref().is_some_and(|b| !b.pooled)
    }

    /// The encoded body, when the calling thread encoded it.
    #[inline]
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_ref().map(|b| b.bytes.as_slice())
    }

    /// Whether dropping the record would free memory: its rarer parts, or the last
    /// reference to a key identity (a key destroyed meanwhile), to the thread's labels or
    /// to the token's identity.
    pub fn holds_last_memory(&self) -> bool {
        self.owns_memory()
            || self.keys.iter().any(|k| {
                k.identity
                    .as_ref()
                    .is_some_and(|i| Arc::strong_count(i) == 1)
            })
            || self
                .labels
                .as_ref()
                .is_some_and(|l| Arc::strong_count(l) == 1)
            || self
                .token
                .as_ref()
                .is_some_and(|t| Arc::strong_count(t) == 1)
    }

    /// The rarer parts, made on first use.
    pub fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The rarer parts, if any.
    pub fn extra(&self) -> Option<&Extra> {
        self.extra.as_deref()
    }

    /// Records an attribute list of the call: how many attributes the application passed
    /// (`count`, always safe to keep: a number it gave) and, when the module's answer
    /// proved them readable, the sanitized attributes.
    pub fn attributes(&mut self, role: &'static str, count: CK_ULONG, list: Option<Vec<Attr>>) {
        let x = self.extra_mut();
        x.attribute_counts.push((role, count));
        if let Some(list) = list {
            x.attributes.push((role, list));
        }
    }

    /// Adds a flag.
    pub fn flag(&mut self, flag: Flag) {
        self.flags.0 |= flag as u8;
    }

    /// Adds a key.
    pub fn key(
        &mut self,
        role: &'static str,
        handle: CK_OBJECT_HANDLE,
        identity: Option<Arc<KeyIdentity>>,
    ) {
        let _ = self.keys.try_push(KeyRef {
            role,
            handle,
            identity,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_is_now_minus_the_elapsed_time() {
        let s = Started::now();
        let before = SystemTime::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let w = s.wall_time();
        let d = before.duration_since(w).unwrap_or_else(|e| e.duration());
        assert!(d < std::time::Duration::from_millis(5), "{d:?}");
    }

    #[test]
    fn flags_are_listed_in_trail_order() {
        let mut e = Event::call(Started::now(), "C_X", "x", Lifecycle::Use, CKR_OK);
        e.flag(Flag::Intent);
        e.flag(Flag::ReadWrite);
        let names: Vec<&str> = e.flags.iter().map(Flag::as_str).collect();
        assert_eq!(names, ["read_write", "intent"]);
    }
}
