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
    /// Open sessions per slot: closing one learns whether it was the slot's last without
    /// walking every open session.
    per_slot: HashMap<CK_SLOT_ID, usize>,
}

impl Inner {
    /// Adds a session (replacing one of the same handle, as the module reuses handles).
    fn insert(&mut self, session: CK_SESSION_HANDLE, state: SessionState) {
        *self.per_slot.entry(state.slot).or_default() += 1;
        if let Some(old) = self.sessions.insert(session, state) {
            self.forget_slot_session(old.slot);
        }
    }

    /// Removes a session; closing a slot's last session logs the application out of
    /// that token.
    fn remove(&mut self, session: CK_SESSION_HANDLE) -> Option<SessionState> {
        let s = self.sessions.remove(&session)?;
        self.forget_slot_session(s.slot);
        Some(s)
    }

    fn forget_slot_session(&mut self, slot: CK_SLOT_ID) {
        if let Entry::Occupied(mut n) = self.per_slot.entry(slot) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
                self.logins.remove(&slot);
            }
        }
    }
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
        self.opened_with(session, slot, rw, None);
    }

    /// A session was opened on a slot whose token is `token` (when known); returns where
    /// it stands, in one pass through the table.
    pub fn opened_with(
        &self,
        session: CK_SESSION_HANDLE,
        slot: CK_SLOT_ID,
        rw: bool,
        token: Option<Arc<TokenRef>>,
    ) -> Place {
        let mut inner = self.lock();
        let state = SessionState {
            slot,
            rw,
            token,
            ops: Vec::new(),
        };
        let place = Place {
            slot,
            state: state_name(rw, inner.logins.get(&slot).copied()),
            token: state.token.clone(),
        };
        inner.insert(session, state);
        place
    }

    /// The slot and state of a known session.
    pub fn place(&self, session: CK_SESSION_HANDLE) -> Option<Place> {
        let inner = self.lock();
        let s = inner.sessions.get(&session)?;
        Some(s.place(&inner.logins))
    }

    /// Before a close of one session or of a slot's sessions: their slot, how many the
    /// close ends, and, when it ends the slot's last session while a user is logged in (which
    /// logs the application out of the token), that user. `None` for a session the table
    /// does not hold, and for C_Finalize.
    pub fn before_close(&self, which: Closing) -> Option<(CK_SLOT_ID, u64, Option<CK_USER_TYPE>)> {
        let inner = self.lock();
        let (slot, n, last) = match which {
            Closing::Session(h) => {
                let slot = inner.sessions.get(&h)?.slot;
                (slot, 1, inner.per_slot.get(&slot) == Some(&1))
            }
            Closing::Slot(slot) => {
                let n = inner.per_slot.get(&slot).copied().unwrap_or(0);
                (slot, n as u64, n > 0)
            }
            Closing::All => return None,
        };
        let logout = last.then(|| inner.logins.get(&slot).copied()).flatten();
        Some((slot, n, logout))
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

    /// Sessions closed: removes them and returns which, with their unfinished operations,
    /// each with where its session stood before the close. `which` is one session, a
    /// slot's sessions, or all. Closing one session allocates nothing unless it had
    /// operations under way.
    pub fn close(&self, which: Closing) -> (Closed, Vec<ClosedOp>) {
        let mut inner = self.lock();
        let mut ops = Vec::new();
        let mut take = |inner: &mut Inner, h: CK_SESSION_HANDLE| {
            // Where it stood is taken before the close, which may log the slot out.
            let Some(s) = inner.sessions.get(&h) else {
                return;
            };
            let place = (!s.ops.is_empty()).then(|| s.place(&inner.logins));
            if let (Some(s), Some(place)) = (inner.remove(h), place) {
                ops.extend(s.ops.into_iter().map(|(k, o)| (h, k, o, place.clone())));
            }
        };
        let closed = match which {
            // One session: a look-up, not a walk over every open session.
            Closing::Session(x) => {
                take(&mut inner, x);
                Closed::One(x)
            }
            _ => {
                let closed: HashSet<CK_SESSION_HANDLE> = inner
                    .sessions
                    .iter()
                    .filter(|(_, s)| match which {
                        Closing::Slot(slot) => s.slot == slot,
                        _ => true,
                    })
                    .map(|(h, _)| *h)
                    .collect();
                for h in &closed {
                    take(&mut inner, *h);
                }
                Closed::Many(closed)
            }
        };
        if matches!(which, Closing::All) {
            inner.logins.clear();
        }
        (closed, ops)
    }

    /// Starts an operation, returning one of the same kind it displaces. A session not
    /// seen opened is added with what `learn` finds out (slot, read/write), or the
    /// operation is not tracked.
    #[inline]
    pub fn start(
        &self,
        session: CK_SESSION_HANDLE,
        kind: OpKind,
        op: Operation,
        learn: impl FnOnce() -> Option<(CK_SLOT_ID, bool)>,
    ) -> Option<Operation> {
        let mut inner = self.lock();
        // The common case, a known session: one look-up.
        if let Some(s) = inner.sessions.get_mut(&session) {
            if let Some(i) = s.ops.iter().position(|(k, _)| *k == kind) {
                return Some(displace(&mut s.ops, i, kind, op));
            }
            // (`None` written as such, not an empty operation copied out.)
            s.ops.push((kind, op));
            return None;
        }
        start_unknown(&mut inner, session, kind, op, learn)
    }

    /// Updates an operation under way; when `f` says it ends, removes it and returns it
    /// with where its session stands. Inlined into its one caller: the operation is
    /// moved out of the table once, not again through a return value.
    #[inline(always)]
    pub fn with_op(
        &self,
        session: CK_SESSION_HANDLE,
        kind: OpKind,
        f: impl FnOnce(&mut Operation) -> bool,
    ) -> Option<(Operation, Place)> {
        let mut inner = self.lock();
        let Inner {
            sessions, logins, ..
        } = &mut *inner;
        let s = sessions.get_mut(&session)?;
        let i = s.ops.iter().position(|(k, _)| *k == kind)?;
        if !f(&mut s.ops[i].1) {
            return None;
        }
        let place = s.place(logins);
        Some((s.ops.remove(i).1, place))
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

/// The sessions a close removed.
#[derive(Debug)]
pub enum Closed {
    /// One session (whether or not the table held it).
    One(CK_SESSION_HANDLE),
    /// Several.
    Many(HashSet<CK_SESSION_HANDLE>),
}

impl Closed {
    /// Whether `session` was closed.
    pub fn contains(&self, session: CK_SESSION_HANDLE) -> bool {
        match self {
            Closed::One(s) => *s == session,
            Closed::Many(set) => set.contains(&session),
        }
    }
}

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

/// [`Sessions::start`] in a session the table does not hold: it is added with what
/// `learn` finds out, or the operation is not tracked.
#[cold]
#[inline(never)]
fn start_unknown(
    inner: &mut Inner,
    session: CK_SESSION_HANDLE,
    kind: OpKind,
    op: Operation,
    learn: impl FnOnce() -> Option<(CK_SLOT_ID, bool)>,
) -> Option<Operation> {
    let (slot, rw) = learn()?;
    inner.insert(
        session,
        SessionState {
            slot,
            rw,
            token: None,
            ops: vec![(kind, op)],
        },
    );
    None
}

/// A new operation of a kind already under way: it displaces the old one, which is
/// returned (and the new one goes last, as any new operation).
#[cold]
#[inline(never)]
fn displace(
    ops: &mut Vec<(OpKind, Operation)>,
    i: usize,
    kind: OpKind,
    op: Operation,
) -> Operation {
    let old = ops.remove(i).1;
    ops.push((kind, op));
    old
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Closing a slot's last session, and only its last, logs the application out of the
    /// token; a handle reused on another slot moves the count with it.
    #[test]
    fn last_session_of_a_slot_logs_out() {
        let t = Sessions::default();
        t.opened(1, 10, true);
        t.opened(2, 10, false);
        t.opened(3, 20, true);
        t.logged_in(1, CKU_USER);
        t.logged_in(3, CKU_USER);
        assert!(matches!(t.close(Closing::Session(1)).0, Closed::One(1)));
        assert_eq!(t.place(2).map(|p| p.state), Some("ro_user"));
        t.close(Closing::Session(2));
        assert_eq!(
            t.opened_with(4, 10, false, None).state,
            "ro_public",
            "slot 10 had no session left"
        );
        // Handle 4 reused on slot 20: slot 10 has none left again.
        t.opened(4, 20, false);
        assert_eq!(t.place(4).map(|p| p.state), Some("ro_user"));
        t.logged_in(4, CKU_USER);
        let (closed, _) = t.close(Closing::Slot(20));
        assert!(closed.contains(3) && closed.contains(4) && !closed.contains(2));
        assert_eq!(t.opened_with(5, 20, true, None).state, "rw_public");
    }

    /// What a close is about to end: the session's slot and, for the slot's last session
    /// with a user logged in, that user.
    #[test]
    fn before_close_says_which_close_logs_out() {
        let t = Sessions::default();
        t.opened(1, 10, true);
        t.opened(2, 10, false);
        t.logged_in(1, CKU_USER);
        assert_eq!(t.before_close(Closing::Session(1)), Some((10, 1, None)));
        assert_eq!(
            t.before_close(Closing::Slot(10)),
            Some((10, 2, Some(CKU_USER)))
        );
        t.close(Closing::Session(1));
        assert_eq!(
            t.before_close(Closing::Session(2)),
            Some((10, 1, Some(CKU_USER)))
        );
        assert_eq!(t.before_close(Closing::Session(9)), None);
        assert_eq!(t.before_close(Closing::Slot(11)), Some((11, 0, None)));
        assert_eq!(t.before_close(Closing::All), None);
    }
}
