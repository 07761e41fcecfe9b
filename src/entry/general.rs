//! General-purpose functions (PKCS#11 §5.4): initialisation, finalisation, library info
//! and the function list.

use super::ops;
use crate::audit::{self, event::Event, event::Started, sessions::Closing};
use crate::backend;
use crate::backend::Backend;
use crate::config::Lifecycle;
use crate::diag;
use crate::entry::tables::FUNCTION_LIST_2_40;
use crate::entry::{args, guard};
use crate::names::rv_name;
use cryptoki_sys::*;

/// Loads the real module on first use and forwards `pInitArgs` untouched: NSS and Java put
/// non-standard data in `pReserved`, which only the real module may interpret.
///
/// # Safety
///
/// The caller keeps the PKCS#11 contract for this function's pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Initialize(init_args: CK_VOID_PTR) -> CK_RV {
    guard("C_Initialize", move || {
        let backend = match backend::load() {
            Ok(b) => b,
            Err(e) => {
                diag::report(&format!("C_Initialize returns CKR_GENERAL_ERROR: {e}"));
                return CKR_GENERAL_ERROR;
            }
        };
        let Some(f) = backend.fns.C_Initialize else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let started = Started::now();
        // SAFETY: pInitArgs goes to the real module unchanged.
        let rv = unsafe { f(init_args) };
        if rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED {
            diag::report(&format!(
                "the real module {} returned {} from C_Initialize",
                backend.path.display(),
                rv_name(rv)
            ));
        }
        if rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED {
            // SAFETY: the module accepted pInitArgs, so it is NULL or a valid struct.
            let flags = unsafe { args::init_flags(init_args) };
            let a = audit::start(backend, flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS == 0);
            a.emit(Event::call(
                started,
                "C_Initialize",
                "initialize",
                Lifecycle::Audit,
                rv,
            ));
        } else {
            audit::initialize_refused(
                backend,
                Event::call(started, "C_Initialize", "initialize", Lifecycle::Audit, rv),
            );
        }
        rv
    })
}

/// Hands out keytrail's own 2.40 table. It does not load the real module: applications
/// call this many times, from several consumers, before `C_Initialize`, and configuration
/// errors are reported by `C_Initialize` with a defined CK_RV.
///
/// # Safety
///
/// The caller keeps the PKCS#11 contract for this function's pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    guard("C_GetFunctionList", move || {
        if list.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        // SAFETY: checked non-NULL; the application passes a pointer to its pointer.
        unsafe { *list = &raw const FUNCTION_LIST_2_40 as CK_FUNCTION_LIST_PTR };
        CKR_OK
    })
}

forward! {
    /// Forwarded; keytrail keeps the real module loaded so that `C_Initialize` may follow.
    fn C_Finalize(reserved: CK_VOID_PTR) => finalize;
    /// Forwarded unchanged: the application sees the real module's library information.
    fn C_GetInfo(info: CK_INFO_PTR) => get_info;
}

/// Unfinished operations are recorded as abandoned, and the trail is flushed before the
/// application may exit.
fn finalize(_: &Backend, forward: impl FnOnce() -> CK_RV, _: CK_VOID_PTR) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    if rv == CKR_OK {
        a.sessions_closed(Closing::All, "C_Finalize");
    }
    a.emit(Event::call(
        started,
        "C_Finalize",
        "finalize",
        Lifecycle::Audit,
        rv,
    ));
    if rv == CKR_OK {
        a.stop("C_Finalize");
    }
    a.flush_and_report("C_Finalize");
    rv
}

fn get_info(_: &Backend, forward: impl FnOnce() -> CK_RV, _: CK_INFO_PTR) -> CK_RV {
    ops::discovery("C_GetInfo", "library_info", forward, ops::Where::Library)
}
