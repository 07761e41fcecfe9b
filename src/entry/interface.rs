//! `C_GetInterfaceList` and `C_GetInterface` (PKCS#11 3.0 §5.4).
//!
//! keytrail offers a 3.0 interface only when the real module does, and the 2.40 one
//! always, each with the real module's flags for that interface. The `CK_INTERFACE`
//! records are keytrail's own; the real module's are never handed out.

use crate::backend::{self, Backend, INTERFACE_NAME};
use crate::entry::guard;
use crate::entry::tables::{FUNCTION_LIST_2_40, FUNCTION_LIST_3_0};
use cryptoki_sys::*;
use std::ffi::{CStr, c_void};
use std::sync::OnceLock;

/// keytrail's interface records. They point only at immutable statics.
struct Interfaces(Vec<CK_INTERFACE>);

// SAFETY: the records are never mutated after construction and their pointers lead to
// immutable statics (the interface name and the function tables).
unsafe impl Sync for Interfaces {}
// SAFETY: as above.
unsafe impl Send for Interfaces {}

static OFFERED: OnceLock<Interfaces> = OnceLock::new();

fn record(list: *const c_void, flags: CK_FLAGS) -> CK_INTERFACE {
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: list as *mut c_void,
        flags,
    }
}

fn build(backend: &Backend) -> Interfaces {
    let mut list = Vec::with_capacity(2);
    if let Some(flags) = backend.v3_flags {
        list.push(record(&raw const FUNCTION_LIST_3_0 as *const c_void, flags));
    }
    list.push(record(
        &raw const FUNCTION_LIST_2_40 as *const c_void,
        backend.v2_flags,
    ));
    Interfaces(list)
}

/// The interfaces on offer. When the real module cannot be loaded, only the 2.40 one (no
/// flags), so the application reaches `C_Initialize`, which reports why.
fn offered() -> &'static [CK_INTERFACE] {
    static FALLBACK: OnceLock<Interfaces> = OnceLock::new();
    match backend::load() {
        Ok(b) => &OFFERED.get_or_init(|| build(b)).0,
        Err(_) => {
            &FALLBACK
                .get_or_init(|| {
                    Interfaces(vec![record(
                        &raw const FUNCTION_LIST_2_40 as *const c_void,
                        0,
                    )])
                })
                .0
        }
    }
}

/// Lists keytrail's interfaces with the usual two-call size convention.
///
/// # Safety
///
/// The caller keeps the PKCS#11 contract for this function's pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterfaceList(list: CK_INTERFACE_PTR, count: CK_ULONG_PTR) -> CK_RV {
    guard("C_GetInterfaceList", move || {
        if count.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        let offered = offered();
        let n = offered.len() as CK_ULONG;
        if list.is_null() {
            // SAFETY: checked non-NULL.
            unsafe { *count = n };
            return CKR_OK;
        }
        // SAFETY: checked non-NULL.
        let room = unsafe { *count };
        // SAFETY: checked non-NULL.
        unsafe { *count = n };
        if room < n {
            return CKR_BUFFER_TOO_SMALL;
        }
        // SAFETY: the application says `list` has room for `room` >= n records.
        unsafe { std::ptr::copy_nonoverlapping(offered.as_ptr(), list, offered.len()) };
        CKR_OK
    })
}

/// Finds an interface by name (NULL: the default, the first offered), version (NULL: any)
/// and required flags. `*interface` is written only on success.
///
/// # Safety
///
/// The caller keeps the PKCS#11 contract for this function's pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterface(
    name: CK_UTF8CHAR_PTR,
    version: CK_VERSION_PTR,
    interface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_GetInterface", move || {
        if interface.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        if !name.is_null() {
            // SAFETY: a non-NULL name is a NUL-terminated string by the function's contract.
            let wanted = unsafe { CStr::from_ptr(name as *const std::ffi::c_char) };
            if wanted.to_bytes_with_nul() != INTERFACE_NAME {
                return CKR_ARGUMENTS_BAD;
            }
        }
        let wanted_version = if version.is_null() {
            None
        } else {
            // SAFETY: checked non-NULL.
            Some(unsafe { *version })
        };
        let found = offered().iter().find(|i| {
            // SAFETY: every offered record points at one of our tables, each of which
            // starts with its CK_VERSION.
            let v = unsafe { *(i.pFunctionList as *const CK_VERSION) };
            let version_ok =
                wanted_version.is_none_or(|w| w.major == v.major && w.minor == v.minor);
            version_ok && i.flags & flags == flags
        });
        match found {
            Some(i) => {
                // SAFETY: checked non-NULL; the record lives in a static for the process.
                unsafe { *interface = i as *const CK_INTERFACE as CK_INTERFACE_PTR };
                CKR_OK
            }
            None => CKR_ARGUMENTS_BAD,
        }
    })
}
