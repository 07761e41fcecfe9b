//! What keytrail knows of the application's sessions: their slot, read/write flag, login
//! state, and the cryptographic operations under way in each, so that one record can
//! cover an operation from its *Init to the call that ends it.

use super::event::{KeyRef, OperationInfo, Started, TokenRef};
use super::mechanism::Mechanism;
use cryptoki_sys::*;
use parking_lot::{Mutex, MutexGuard};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::hash_map::Entry;
use std::sync::Arc;

/// A kind of cryptographic operation that can be under way in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// C_EncryptInit …
    Encrypt,
    /// C_DecryptInit …
    Decrypt,
    /// C_SignInit …
    Sign,
    /// C_SignRecoverInit …
    SignRecover,
    /// C_VerifyInit …
    Verify,
    /// C_VerifyRecoverInit …
    VerifyRecover,
    /// C_MessageEncryptInit …
    MessageEncrypt,
    /// C_MessageDecryptInit …
    MessageDecrypt,
    /// C_MessageSignInit …
    MessageSign,
    /// C_MessageVerifyInit …
    MessageVerify,
}

impl OpKind {
    /// The name in the trail (also its `event.action`).
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Encrypt => "encrypt",
            OpKind::Decrypt => "decrypt",
            OpKind::Sign => "sign",
            OpKind::SignRecover => "sign_recover",
            OpKind::Verify => "verify",
            OpKind::VerifyRecover => "verify_recover",
            OpKind::MessageEncrypt => "message_encrypt",
            OpKind::MessageDecrypt => "message_decrypt",
            OpKind::MessageSign => "message_sign",
            OpKind::MessageVerify => "message_verify",
        }
    }

    /// The CKF_ flag C_SessionCancel uses for this kind.
    pub fn cancel_flag(self) -> CK_FLAGS {
        match self {
            OpKind::Encrypt => CKF_ENCRYPT,
            OpKind::Decrypt => CKF_DECRYPT,
            OpKind::Sign => CKF_SIGN,
            OpKind::SignRecover => CKF_SIGN_RECOVER,
            OpKind::Verify => CKF_VERIFY,
            OpKind::VerifyRecover => CKF_VERIFY_RECOVER,
            OpKind::MessageEncrypt => CKF_MESSAGE_ENCRYPT,
            OpKind::MessageDecrypt => CKF_MESSAGE_DECRYPT,
            OpKind::MessageSign => CKF_MESSAGE_SIGN,
            OpKind::MessageVerify => CKF_MESSAGE_VERIFY,
        }
    }
}

/// An operation under way.
#[derive(Debug, Clone)]
pub struct Operation {
    /// When its *Init was called.
    pub started: Started,
    /// The mechanism.
    pub mechanism: Option<Mechanism>,
    /// The key.
    pub key: KeyRef,
    /// Progress so far.
    pub info: OperationInfo,
}

/// One session.
#[derive(Debug, Clone)]
pub struct SessionState {
    /// Its slot.
    pub slot: CK_SLOT_ID,
    /// Opened read/write.
    pub rw: bool,
    /// The token in its slot, once looked up (C_InitToken, which relabels a token,
    /// cannot run while the token has sessions).
    token: Option<Arc<TokenRef>>,
    ops: Vec<(OpKind, Operation)>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<CK_SESSION_HANDLE, SessionState>,
    /// Who is logged in on each slot (login state is per application and token).
    logins: HashMap<CK_SLOT_ID, CK_USER_TYPE>,
}

/// The session table.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

/// Where a session stands, for a record.
#[derive(Debug, Clone)]
pub struct Place {
    /// The slot.
    pub slot: CK_SLOT_ID,
    /// ro_public, rw_public, ro_user, rw_user or rw_so.
    pub state: &'static str,
    /// The token in the slot, when already known.
    pub token: Option<Arc<TokenRef>>,
}

impl SessionState {
    fn place(&self, logins: &HashMap<CK_SLOT_ID, CK_USER_TYPE>) -> Place {
        Place {
            slot: self.slot,
            state: state_name(self.rw, logins.get(&self.slot).copied()),
            token: self.token.clone(),
        }
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Takes the lock before fork() (see [`crate::audit::fork`]).
    pub fn lock_for_fork(&self) {
        std::mem::forget(self.inner.lock());
    }

    /// Releases the lock taken by [`Sessions::lock_for_fork`].
    ///
    /// # Safety
    /// Only after `lock_for_fork` on this thread.
    pub unsafe fn unlock_after_fork(&self) {
        // SAFETY: the caller guarantees the lock is held with its guard forgotten.
        unsafe { self.inner.force_unlock() };
    }

    /// A session was opened.
    pub fn opened(&self, session: CK_SESSION_HANDLE, slot: CK_SLOT_ID, rw: bool) {
        self.lock().sessions.insert(
            session,
            SessionState {
                slot,
                rw,
                token: None,
                ops: Vec::new(),
            },
        );
    }

    /// The slot and state of a known session.
    pub fn place(&self, session: CK_SESSION_HANDLE) -> Option<Place> {
        let inner = self.lock();
        let s = inner.sessions.get(&session)?;
        Some(s.place(&inner.logins))
    }

    /// Remembers the token of a session's slot.
    pub fn set_token(&self, session: CK_SESSION_HANDLE, token: Arc<TokenRef>) {
        if let Some(s) = self.lock().sessions.get_mut(&session) {
            s.token = Some(token);
        }
    }

    /// A login succeeded.
    pub fn logged_in(&self, session: CK_SESSION_HANDLE, user: CK_USER_TYPE) {
        let mut inner = self.lock();
        if let Some(slot) = inner.sessions.get(&session).map(|s| s.slot) {
            inner.logins.insert(slot, user);
        }
    }

    /// A logout succeeded.
    pub fn logged_out(&self, session: CK_SESSION_HANDLE) {
        let mut inner = self.lock();
        if let Some(slot) = inner.sessions.get(&session).map(|s| s.slot) {
            inner.logins.remove(&slot);
        }
    }

    /// Sessions closed: removes them and returns their unfinished operations, each with
    /// where its session stood before the close. `which` is one session, a slot's
    /// sessions, or all.
    pub fn close(&self, which: Closing) -> (HashSet<CK_SESSION_HANDLE>, Vec<ClosedOp>) {
        let mut inner = self.lock();
        let closed: HashSet<CK_SESSION_HANDLE> = match which {
            // One session: a look-up, not a walk over every open session.
            Closing::Session(x) => inner
                .sessions
                .contains_key(&x)
                .then_some(x)
                .into_iter()
                .collect(),
            _ => inner
                .sessions
                .iter()
                .filter(|(_, s)| match which {
                    Closing::Slot(slot) => s.slot == slot,
                    _ => true,
                })
                .map(|(h, _)| *h)
                .collect(),
        };
        let mut ops = Vec::new();
        let mut slots = HashSet::default();
        for h in &closed {
            if let Some(s) = inner.sessions.remove(h) {
                slots.insert(s.slot);
                let place = s.place(&inner.logins);
                ops.extend(s.ops.into_iter().map(|(k, o)| (*h, k, o, place.clone())));
            }
        }
        // Closing a slot's last session logs the application out of that token.
        for slot in slots {
            if !inner.sessions.values().any(|s| s.slot == slot) {
                inner.logins.remove(&slot);
            }
        }
        if matches!(which, Closing::All) {
            inner.logins.clear();
        }
        (closed, ops)
    }

    /// Starts an operation, returning one of the same kind it displaces. A session not
    /// seen opened is added with what `learn` finds out (slot, read/write), or the
    /// operation is not tracked.
    pub fn start(
        &self,
        session: CK_SESSION_HANDLE,
        kind: OpKind,
        op: Operation,
        learn: impl FnOnce() -> Option<(CK_SLOT_ID, bool)>,
    ) -> Option<Operation> {
        let mut inner = self.lock();
        let s = match inner.sessions.entry(session) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let (slot, rw) = learn()?;
                v.insert(SessionState {
                    slot,
                    rw,
                    token: None,
                    ops: Vec::new(),
                })
            }
        };
        let old = take(&mut s.ops, kind);
        s.ops.push((kind, op));
        old
    }

    /// Updates an operation under way; when `f` says it ends, removes it and returns it
    /// with where its session stands.
    pub fn with_op<R>(
        &self,
        session: CK_SESSION_HANDLE,
        kind: OpKind,
        f: impl FnOnce(&mut Operation) -> (bool, R),
    ) -> Option<(R, Option<(Operation, Place)>)> {
        let mut inner = self.lock();
        let Inner { sessions, logins } = &mut *inner;
        let s = sessions.get_mut(&session)?;
        let i = s.ops.iter().position(|(k, _)| *k == kind)?;
        let (end, r) = f(&mut s.ops[i].1);
        let ended = end.then(|| (s.ops.remove(i).1, s.place(logins)));
        Some((r, ended))
    }

    /// Ends the operations of a session whose cancel flags are in `flags`.
    pub fn cancel(&self, session: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Vec<(OpKind, Operation)> {
        let mut inner = self.lock();
        let Some(s) = inner.sessions.get_mut(&session) else {
            return Vec::new();
        };
        let (cancelled, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut s.ops)
            .into_iter()
            .partition(|(k, _)| flags & k.cancel_flag() != 0);
        s.ops = kept;
        cancelled
    }
}

/// An operation left unfinished by a close: its session, kind, state so far, and where
/// the session stood.
pub type ClosedOp = (CK_SESSION_HANDLE, OpKind, Operation, Place);

/// Which sessions a close concerns.
#[derive(Debug, Clone, Copy)]
pub enum Closing {
    /// One session (C_CloseSession).
    Session(CK_SESSION_HANDLE),
    /// A slot's sessions (C_CloseAllSessions).
    Slot(CK_SLOT_ID),
    /// Every session (C_Finalize).
    All,
}

fn take(ops: &mut Vec<(OpKind, Operation)>, kind: OpKind) -> Option<Operation> {
    let i = ops.iter().position(|(k, _)| *k == kind)?;
    Some(ops.remove(i).1)
}

fn state_name(rw: bool, login: Option<CK_USER_TYPE>) -> &'static str {
    match (rw, login) {
        (_, Some(CKU_SO)) => "rw_so",
        (true, Some(_)) => "rw_user",
        (false, Some(_)) => "ro_user",
        (true, None) => "rw_public",
        (false, None) => "ro_public",
    }
}
