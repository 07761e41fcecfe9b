//! What one audit record holds: plain data built on the calling thread, formatted on the
//! writer thread.

use super::attrs::Attr;
use super::keys::KeyIdentity;
use super::mechanism::Mechanism;
use crate::config::Lifecycle;
use arrayvec::ArrayVec;
use cryptoki_sys::*;
use std::sync::Arc;

/// Most keys one record names (a key pair, or a key and its wrapping, unwrapping, base or
/// source key). Records hold them inline: a record on the hot path allocates nothing, so
/// the writer thread never frees memory of the caller's malloc arena.
pub const MAX_KEYS: usize = 2;
/// Most flags one record carries.
pub const MAX_FLAGS: usize = 4;
use std::time::{Instant, SystemTime};

/// When a call started: wall-clock time for the record, monotonic time for its duration.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// Wall-clock time.
    pub at: SystemTime,
    /// Monotonic time.
    pub instant: Instant,
}

impl Started {
    /// Now.
    #[inline]
    pub fn now() -> Started {
        Started {
            at: SystemTime::now(),
            instant: Instant::now(),
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
}

/// Progress of a multi-part operation.
#[derive(Debug, Clone, Default)]
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
    /// The user name of a C_LoginUser.
    pub username: Option<String>,
    /// The mechanism.
    pub mechanism: Option<Mechanism>,
    /// The keys involved.
    pub keys: ArrayVec<KeyRef, MAX_KEYS>,
    /// Sanitized attribute lists by role: `template` (creation), `public_template` and
    /// `private_template` (key pairs), `set` (modify), `read` (export).
    pub attributes: Vec<(&'static str, Vec<Attr>)>,
    /// Operation progress (use records).
    pub operation: Option<OperationInfo>,
    /// Input/output lengths of a single call (wrap, random, …).
    pub data: Option<(Option<u64>, Option<u64>)>,
    /// Notable facts: `plaintext_key_material`, `token_wiped`, `secret_value_read`, …
    pub flags: ArrayVec<&'static str, MAX_FLAGS>,
    /// Free text for keytrail's own records.
    pub message: Option<String>,
    /// Structured detail for keytrail's own records (`audit` category).
    pub detail: Option<serde_json::Value>,
}

impl Event {
    /// A record of `function` returning `rv`, with everything else empty.
    pub fn call(
        started: Started,
        function: &'static str,
        action: &'static str,
        lifecycle: Lifecycle,
        rv: CK_RV,
    ) -> Event {
        Event {
            duration_ns: Some(started.instant.elapsed().as_nanos() as u64),
            started,
            function,
            action,
            lifecycle,
            outcome: Outcome::of(rv),
            rv: Some(rv),
            thread_id: 0,
            labels: None,
            slot_id: None,
            token: None,
            session: None,
            session_state: None,
            user_type: None,
            username: None,
            mechanism: None,
            keys: ArrayVec::new(),
            attributes: Vec::new(),
            operation: None,
            data: None,
            flags: ArrayVec::new(),
            message: None,
            detail: None,
        }
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
        e.message = Some(message);
        e.detail = Some(detail);
        e
    }

    /// Adds a flag.
    pub fn flag(&mut self, flag: &'static str) {
        let _ = self.flags.try_push(flag);
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
