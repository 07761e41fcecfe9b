//! The C ABI: every function keytrail exports, grouped by chapter of the PKCS#11
//! specification, and the function tables it hands out.
//!
//! Each exported function is a thin wrapper written by [`forward!`]: it catches panics,
//! finds the loaded real module, forwards the arguments untouched and returns the module's
//! CK_RV unchanged. It never dereferences an argument itself.

#![allow(non_snake_case)]

use cryptoki_sys::{CK_RV, CKR_GENERAL_ERROR};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Writes exported forwarding functions.
///
/// `fn C_Name(arg: TYPE, ...);` forwards to the real module's `C_Name`; before the module
/// is loaded it answers `CKR_CRYPTOKI_NOT_INITIALIZED` (as the module itself would), and
/// when the module lacks the function, `CKR_FUNCTION_NOT_SUPPORTED`.
///
/// `fn C_Name(...) => hook;` hands the call to `hook(backend, forward, args...)`, which
/// must call `forward()` exactly once and return its CK_RV: that is where the audit path
/// looks at the call before and after the module sees it.
macro_rules! forward {
    ($( $(#[$attr:meta])* fn $name:ident( $($arg:ident : $ty:ty),* $(,)? ) $(=> $hook:path)?; )*) => { $(
        $(#[$attr])*
        ///
        /// # Safety
        ///
        /// The caller keeps the PKCS#11 contract for this function's pointers.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> cryptoki_sys::CK_RV {
            $crate::entry::guard(stringify!($name), move || {
                let Some(backend) = $crate::backend::loaded() else {
                    return cryptoki_sys::CKR_CRYPTOKI_NOT_INITIALIZED;
                };
                let Some(f) = backend.fns.$name else {
                    return cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED;
                };
                // SAFETY: the application's arguments go to the real module unchanged; the
                // module's contract for them is the application's contract with us.
                let forward = move || unsafe { f($($arg),*) };
                forward!(@call $name, backend, forward, ($($arg),*) $(, $hook)?)
            })
        }
    )* };
    (@call $name:ident, $b:ident, $fwd:ident, ($($arg:ident),*)) => { { let _ = $b; $fwd() } };
    (@call $name:ident, $b:ident, $fwd:ident, ($($arg:ident),*), $hook:path) => {
        {
            // Calls that always pass (decided when compiling) skip the trail's state.
            const ALWAYS_PASSES: bool = $crate::audit::always_passes(stringify!($name));
            match if ALWAYS_PASSES { None } else { $crate::audit::refusal(stringify!($name)) } {
                Some(rv) => rv,
                None => $hook($b, $fwd, $($arg),*),
            }
        }
    };
}

/// Writes `*Init` hooks (`hook: "C_XInit" => OpKind::X;`): each records the start, or the
/// failure, of its kind of operation through [`ops::init`].
macro_rules! init_hooks {
    ($($hook:ident: $function:literal => $kind:expr;)*) => { $(
        fn $hook(
            _: &$crate::backend::Backend,
            forward: impl FnOnce() -> cryptoki_sys::CK_RV,
            session: cryptoki_sys::CK_SESSION_HANDLE,
            mechanism: cryptoki_sys::CK_MECHANISM_PTR,
            key: cryptoki_sys::CK_OBJECT_HANDLE,
        ) -> cryptoki_sys::CK_RV {
            $crate::entry::ops::init($function, $kind, forward, session, mechanism, key)
        }
    )* };
}

pub mod args;
mod context;
mod crypto;
mod general;
mod interface;
mod keys;
mod message;
mod object;
mod ops;
mod proof;
mod session;
mod slot;
mod tables;

pub use general::{C_Finalize, C_GetFunctionList, C_GetInfo, C_Initialize};
pub use interface::{C_GetInterface, C_GetInterfaceList};
pub use tables::{FUNCTION_LIST_2_40, FUNCTION_LIST_3_0};

/// Runs one exported call so that a panic never crosses the C boundary: it becomes
/// `CKR_GENERAL_ERROR` and a diagnostic naming the function (never its arguments).
#[inline(always)]
pub(crate) fn guard(function: &'static str, call: impl FnOnce() -> CK_RV) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(rv) => rv,
        Err(_) => {
            crate::diag::report(&format!(
                "internal error in {function}; returned CKR_GENERAL_ERROR to the application"
            ));
            CKR_GENERAL_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::CKR_OK;

    #[test]
    fn a_panic_becomes_general_error() {
        let rv = guard("C_Test", || panic!("boom"));
        assert_eq!(rv, CKR_GENERAL_ERROR);
        assert_eq!(guard("C_Test", || CKR_OK), CKR_OK);
    }
}
