//! The shared audit path of operation calls: *Init, data-carrying calls and Finals, for
//! both the classic (§5.8–5.13) and the message-based (3.0 §5.19–5.22) functions.

use crate::audit::{self, event::Started, sessions::OpKind};
pub use crate::audit::{Ending, Output};
use crate::config::Lifecycle;
use crate::entry::args;
use cryptoki_sys::*;

/// An *Init call: the mechanism is read whole only after the module accepted it, its type
/// alone after the module rejected it (see [`super::proof::mechanism`]).
pub fn init(
    function: &'static str,
    kind: OpKind,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Use) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let summary = super::proof::mechanism(rv, mechanism);
    a.op_init(
        started,
        function,
        kind,
        session,
        summary,
        !mechanism.is_null(),
        key,
        rv,
    );
    rv
}

/// A call within an operation. `input` is the input length for calls that carry data;
/// `out` the output buffer and its length pointer, read only after CKR_OK.
pub fn call(
    function: &'static str,
    kinds: &[OpKind],
    ending: Ending,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    input: Option<CK_ULONG>,
    out: Option<(CK_BYTE_PTR, CK_ULONG_PTR)>,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Use) else {
        return forward();
    };
    let rv = forward();
    let output = match out {
        Some((buf, len)) if rv == CKR_OK => {
            if buf.is_null() {
                Output::Query
            } else {
                // SAFETY: the module accepted the call and wrote the output length.
                unsafe { args::read_ulong(len) }.map_or(Output::None, Output::Written)
            }
        }
        _ => Output::None,
    };
    for kind in kinds {
        a.op_call(function, *kind, session, rv, input, output, ending);
    }
    rv
}

/// Where a discovery call happened.
pub enum Where {
    /// Library-wide (C_GetInfo, C_GetSlotList).
    Library,
    /// A slot.
    Slot(CK_SLOT_ID),
    /// A session.
    Session(CK_SESSION_HANDLE),
}

/// A discovery call (C_Get*Info, C_GetSlotList, C_GetMechanism*, C_GetObjectSize,
/// C_FindObjectsFinal): recorded only at level `trace`, with nothing it returned. Inlined
/// into the entry point: at the default level such a call costs the entry point one test
/// before it forwards, and no call of keytrail's own.
#[inline(always)]
pub fn discovery(
    function: &'static str,
    action: &'static str,
    forward: impl FnOnce() -> CK_RV,
    place: Where,
) -> CK_RV {
    match audit::active(Lifecycle::Discovery) {
        None => forward(),
        Some(a) => discovery_recorded(a, function, action, forward, place),
    }
}

/// [`discovery`] at level `trace`.
#[inline(never)]
fn discovery_recorded(
    a: &audit::Auditor,
    function: &'static str,
    action: &'static str,
    forward: impl FnOnce() -> CK_RV,
    place: Where,
) -> CK_RV {
    let started = Started::now();
    let rv = forward();
    let mut e =
        crate::audit::event::Event::call(started, function, action, Lifecycle::Discovery, rv);
    match place {
        Where::Library => {}
        Where::Slot(slot) => a.place_slot(&mut e, slot),
        Where::Session(session) => a.place(&mut e, session),
    }
    a.emit(e);
    rv
}
