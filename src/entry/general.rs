//! General-purpose functions (PKCS#11 §5.4): initialisation, finalisation, library info
//! and the function list.

use crate::backend;
use crate::diag;
use crate::entry::guard;
use crate::entry::tables::FUNCTION_LIST_2_40;
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
        // SAFETY: pInitArgs goes to the real module unchanged.
        let rv = unsafe { f(init_args) };
        if rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED {
            diag::report(&format!(
                "the real module {} returned {} from C_Initialize",
                backend.path.display(),
                rv_name(rv)
            ));
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
    fn C_Finalize(reserved: CK_VOID_PTR);
    /// Forwarded unchanged: the application sees the real module's library information.
    fn C_GetInfo(info: CK_INFO_PTR);
}
