//! Session management (PKCS#11 §5.6), including the 3.0 `C_SessionCancel` and
//! `C_LoginUser`. Audited: lifecycle `session` and `auth`.

use super::ops::{self, Where};
use crate::audit::event::Flag;
use crate::audit::session_summary::Change;
use crate::audit::{self, event::Event, event::Started, sessions::Closing};
use crate::backend::Backend;
use crate::config::Lifecycle;
use crate::entry::args;
use cryptoki_sys::*;

forward! {
    fn C_OpenSession(slot: CK_SLOT_ID, flags: CK_FLAGS, application: CK_VOID_PTR, notify: CK_NOTIFY, session: CK_SESSION_HANDLE_PTR) => open_session;
    fn C_CloseSession(session: CK_SESSION_HANDLE) => close_session;
    fn C_CloseAllSessions(slot: CK_SLOT_ID) => close_all_sessions;
    fn C_GetSessionInfo(session: CK_SESSION_HANDLE, info: CK_SESSION_INFO_PTR) => get_session_info;
    fn C_SessionCancel(session: CK_SESSION_HANDLE, flags: CK_FLAGS) => session_cancel;
    fn C_GetOperationState(session: CK_SESSION_HANDLE, state: CK_BYTE_PTR, state_len: CK_ULONG_PTR);
    fn C_SetOperationState(session: CK_SESSION_HANDLE, state: CK_BYTE_PTR, state_len: CK_ULONG, encryption_key: CK_OBJECT_HANDLE, authentication_key: CK_OBJECT_HANDLE);
    fn C_Login(session: CK_SESSION_HANDLE, user_type: CK_USER_TYPE, pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG) => login;
    fn C_LoginUser(session: CK_SESSION_HANDLE, user_type: CK_USER_TYPE, pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG, username: CK_UTF8CHAR_PTR, username_len: CK_ULONG) => login_user;
    fn C_Logout(session: CK_SESSION_HANDLE) => logout;
}

fn open_session(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _: CK_VOID_PTR,
    _: CK_NOTIFY,
    session: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let opened = if rv == CKR_OK {
        // SAFETY: the module accepted the call and wrote the new handle through `session`.
        unsafe { args::read_ulong(session) }
    } else {
        None
    };
    let record = a.config.enabled(Lifecycle::Session);
    let rw = flags & CKF_RW_SESSION != 0;
    // Under `sessions = "summary"` a session opened is counted, not recorded; a failure
    // still has its record.
    let counted = record && a.summarizes_sessions() && opened.is_some();
    // The table learns the session and, when its record is written, the slot's token in
    // the same pass.
    let place = opened.map(|h| {
        let token = (record && !counted).then(|| a.token(slot)).flatten();
        (h, a.sessions.opened_with(h, slot, rw, token))
    });
    if counted {
        a.count_session(slot, started, Change::Opened(rw));
    } else if record {
        let mut e = Event::call(
            started,
            "C_OpenSession",
            "session_open",
            Lifecycle::Session,
            rv,
        );
        match place {
            Some((h, p)) => a.place_at(&mut e, h, p),
            None => a.place_slot(&mut e, slot),
        }
        if rw {
            e.flag(Flag::ReadWrite);
        }
        a.emit_from(&mut e);
    }
    rv
}

/// Records a closing call; `which` names the sessions, `session` the one named (if any).
fn closing(
    forward: impl FnOnce() -> CK_RV,
    function: &'static str,
    which: Closing,
    session: Option<CK_SESSION_HANDLE>,
    slot: Option<CK_SLOT_ID>,
) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    if a.summarizes_sessions() {
        return closing_counted(a, forward, function, which, session, slot);
    }
    if !a.config.enabled(Lifecycle::Session) {
        let rv = forward();
        if rv == CKR_OK {
            a.sessions_closed(which, function);
        }
        return rv;
    }
    // The record's place is taken before the call (the session is gone after it). The
    // record stays in one place until it is queued (not in an Option: each move of its
    // 416 bytes is a copy).
    let mut e = Event::before(
        Started::now(),
        function,
        "session_close",
        Lifecycle::Session,
    );
    if let Some(s) = session {
        a.place(&mut e, s);
    }
    if let Some(s) = slot {
        a.place_slot(&mut e, s);
    }
    let rv = forward();
    if rv == CKR_OK {
        a.sessions_closed(which, function);
    }
    e.finish(rv);
    a.emit_from(&mut e);
    rv
}

/// A closing call under `sessions = "summary"`: the sessions it closed are counted; a
/// failed call, or one closing a session whose slot keytrail does not know, is recorded;
/// one that logs the application out of the token (it closes the slot's last session
/// while a user is logged in) is also an implicit `logout` record.
fn closing_counted(
    a: &audit::Auditor,
    forward: impl FnOnce() -> CK_RV,
    function: &'static str,
    which: Closing,
    session: Option<CK_SESSION_HANDLE>,
    slot: Option<CK_SLOT_ID>,
) -> CK_RV {
    let started = Started::now();
    // Which slot, how many sessions, and whether the close ends a login are known only
    // before the call.
    let before = a.sessions.before_close(which);
    let rv = forward();
    if rv == CKR_OK {
        a.sessions_closed(which, function);
        if let Some((slot, n, logout)) = before {
            if let Some(user) = logout.filter(|_| a.config.enabled(Lifecycle::Auth)) {
                // The summary cannot say when the login ended: that close is a record.
                let mut e = Event::call(started, function, "logout", Lifecycle::Auth, rv);
                a.place_slot(&mut e, slot);
                e.session = session;
                e.user_type = Some(user);
                e.extra_mut().message = Some("the last session of the slot closed".into());
                a.emit(e);
            }
            let change = match which {
                Closing::Slot(_) => Change::ClosedAll(n),
                _ => Change::Closed,
            };
            a.count_session(slot, started, change);
            return rv;
        }
    }
    let mut e = Event::call(started, function, "session_close", Lifecycle::Session, rv);
    if let Some(s) = session {
        a.place(&mut e, s);
    }
    if let Some(s) = slot {
        a.place_slot(&mut e, s);
    }
    a.emit(e);
    rv
}

fn close_session(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
) -> CK_RV {
    closing(
        forward,
        "C_CloseSession",
        Closing::Session(session),
        Some(session),
        None,
    )
}

fn close_all_sessions(_: &Backend, forward: impl FnOnce() -> CK_RV, slot: CK_SLOT_ID) -> CK_RV {
    closing(
        forward,
        "C_CloseAllSessions",
        Closing::Slot(slot),
        None,
        Some(slot),
    )
}

fn session_cancel(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    flags: CK_FLAGS,
) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    if rv == CKR_OK {
        for (kind, op) in a.sessions.cancel(session, flags) {
            a.end_op(session, kind, op, "C_SessionCancel", None, "cancelled");
        }
    }
    if a.config.enabled(Lifecycle::Session) {
        let mut e = Event::call(
            started,
            "C_SessionCancel",
            "session_cancel",
            Lifecycle::Session,
            rv,
        );
        a.place(&mut e, session);
        a.emit(e);
    }
    rv
}

/// Records a login. Never the PIN, not even its length.
fn record_login(
    forward: impl FnOnce() -> CK_RV,
    function: &'static str,
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    username: impl FnOnce(CK_RV) -> Option<String>,
) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    if rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN {
        a.sessions.logged_in(session, user_type);
    }
    if a.config.enabled(Lifecycle::Auth) {
        let mut e = Event::call(started, function, "login", Lifecycle::Auth, rv);
        a.place(&mut e, session);
        e.user_type = Some(user_type);
        if let Some(name) = username(rv) {
            e.extra_mut().username = Some(name);
        }
        a.emit(e);
    }
    rv
}

fn login(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    _: CK_UTF8CHAR_PTR,
    _: CK_ULONG,
) -> CK_RV {
    record_login(forward, "C_Login", session, user_type, |_| None)
}

fn login_user(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    _: CK_UTF8CHAR_PTR,
    _: CK_ULONG,
    username: CK_UTF8CHAR_PTR,
    username_len: CK_ULONG,
) -> CK_RV {
    record_login(forward, "C_LoginUser", session, user_type, |rv| {
        // The user name is not secret; read it only when the module's answer shows it
        // checked the credentials, and so read the name.
        matches!(rv, CKR_OK | CKR_PIN_INCORRECT | CKR_USER_ALREADY_LOGGED_IN)
            // SAFETY: the module accepted the user name argument.
            .then(|| unsafe { args::read_text(username, username_len) })
            .flatten()
    })
}

fn logout(_: &Backend, forward: impl FnOnce() -> CK_RV, session: CK_SESSION_HANDLE) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    let started = Started::now();
    let mut e = Event::before(started, "C_Logout", "logout", Lifecycle::Auth);
    a.place(&mut e, session);
    let rv = forward();
    if rv == CKR_OK {
        a.sessions.logged_out(session);
    }
    if a.config.enabled(Lifecycle::Auth) {
        e.finish(rv);
        a.emit(e);
    }
    rv
}

fn get_session_info(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    _: CK_SESSION_INFO_PTR,
) -> CK_RV {
    ops::discovery(
        "C_GetSessionInfo",
        "session_info",
        forward,
        Where::Session(session),
    )
}
