//! Slot and token management (PKCS#11 §5.5). Audited: lifecycle `token_admin`
//! (C_InitToken wipes the token; C_InitPIN, C_SetPIN) — never a PIN.

use super::ops::{self, Where};
use crate::audit::event::Flag;
use crate::audit::{self, event::Event, event::Started};
use crate::backend::Backend;
use crate::config::Lifecycle;
use cryptoki_sys::*;

forward! {
    fn C_GetSlotList(token_present: CK_BBOOL, slot_list: CK_SLOT_ID_PTR, count: CK_ULONG_PTR) => get_slot_list;
    fn C_GetSlotInfo(slot: CK_SLOT_ID, info: CK_SLOT_INFO_PTR) => get_slot_info;
    fn C_GetTokenInfo(slot: CK_SLOT_ID, info: CK_TOKEN_INFO_PTR) => get_token_info;
    fn C_WaitForSlotEvent(flags: CK_FLAGS, slot: CK_SLOT_ID_PTR, reserved: CK_VOID_PTR);
    fn C_GetMechanismList(slot: CK_SLOT_ID, list: CK_MECHANISM_TYPE_PTR, count: CK_ULONG_PTR) => get_mechanism_list;
    fn C_GetMechanismInfo(slot: CK_SLOT_ID, mechanism: CK_MECHANISM_TYPE, info: CK_MECHANISM_INFO_PTR) => get_mechanism_info;
    fn C_InitToken(slot: CK_SLOT_ID, pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG, label: CK_UTF8CHAR_PTR) => init_token;
    fn C_InitPIN(session: CK_SESSION_HANDLE, pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG) => init_pin;
    fn C_SetPIN(session: CK_SESSION_HANDLE, old_pin: CK_UTF8CHAR_PTR, old_len: CK_ULONG, new_pin: CK_UTF8CHAR_PTR, new_len: CK_ULONG) => set_pin;
}

fn init_token(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    slot: CK_SLOT_ID,
    _: CK_UTF8CHAR_PTR,
    _: CK_ULONG,
    _: CK_UTF8CHAR_PTR,
) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    let started = Started::now();
    // The token as it was before the wipe.
    let before = a.token(slot);
    let rv = forward();
    a.forget_token(slot);
    if rv == CKR_OK {
        a.keys.clear();
    }
    if a.config.enabled(Lifecycle::TokenAdmin) {
        let mut e = Event::call(
            started,
            "C_InitToken",
            "token_init",
            Lifecycle::TokenAdmin,
            rv,
        );
        a.place_slot(&mut e, slot);
        if rv == CKR_OK {
            e.flag(Flag::TokenWiped);
            if let Some(old) = before {
                e.extra_mut().detail = Some(serde_json::json!({
                    "previous_token": {"label": old.label, "serial": old.serial}
                }));
            }
        }
        a.emit(e);
    }
    rv
}

/// Records a PIN change in a session.
fn pin_event(
    forward: impl FnOnce() -> CK_RV,
    function: &'static str,
    action: &'static str,
    session: CK_SESSION_HANDLE,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::TokenAdmin) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(started, function, action, Lifecycle::TokenAdmin, rv);
    a.place(&mut e, session);
    a.emit(e);
    rv
}

fn init_pin(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    _: CK_UTF8CHAR_PTR,
    _: CK_ULONG,
) -> CK_RV {
    pin_event(forward, "C_InitPIN", "pin_init", session)
}

fn set_pin(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    _: CK_UTF8CHAR_PTR,
    _: CK_ULONG,
    _: CK_UTF8CHAR_PTR,
    _: CK_ULONG,
) -> CK_RV {
    pin_event(forward, "C_SetPIN", "pin_set", session)
}

fn get_slot_list(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    _: CK_BBOOL,
    _: CK_SLOT_ID_PTR,
    _: CK_ULONG_PTR,
) -> CK_RV {
    ops::discovery("C_GetSlotList", "slots_list", forward, Where::Library)
}

fn get_slot_info(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    slot: CK_SLOT_ID,
    _: CK_SLOT_INFO_PTR,
) -> CK_RV {
    ops::discovery("C_GetSlotInfo", "slot_info", forward, Where::Slot(slot))
}

fn get_token_info(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    slot: CK_SLOT_ID,
    _: CK_TOKEN_INFO_PTR,
) -> CK_RV {
    ops::discovery("C_GetTokenInfo", "token_info", forward, Where::Slot(slot))
}

fn get_mechanism_list(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    slot: CK_SLOT_ID,
    _: CK_MECHANISM_TYPE_PTR,
    _: CK_ULONG_PTR,
) -> CK_RV {
    ops::discovery(
        "C_GetMechanismList",
        "mechanisms_list",
        forward,
        Where::Slot(slot),
    )
}

fn get_mechanism_info(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    slot: CK_SLOT_ID,
    _: CK_MECHANISM_TYPE,
    _: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    ops::discovery(
        "C_GetMechanismInfo",
        "mechanism_info",
        forward,
        Where::Slot(slot),
    )
}
