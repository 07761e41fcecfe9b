//! What the benchmark harnesses share: loading a module's function table, building
//! attributes and mechanisms, checking return values, reading the machine's load.
// Each harness uses a part of this module.
#![allow(dead_code)]

use cryptoki_sys::*;
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::ffi::c_void;
use std::path::Path;

/// Panics unless `rv` is one of `ok`.
#[track_caller]
pub fn expect_rv(rv: CK_RV, ok: &[CK_RV], what: &str) {
    assert!(ok.contains(&rv), "{what} returned {rv:#x}");
}

/// Panics unless `rv` is CKR_OK.
#[track_caller]
pub fn check(rv: CK_RV, what: &str) {
    expect_rv(rv, &[CKR_OK], what);
}

/// An attribute pointing at a plain value.
pub fn attr<T>(type_: CK_ATTRIBUTE_TYPE, value: &T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_,
        pValue: value as *const T as *mut c_void,
        ulValueLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

/// An attribute pointing at bytes.
pub fn attr_bytes(type_: CK_ATTRIBUTE_TYPE, value: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_,
        pValue: value.as_ptr() as *mut c_void,
        ulValueLen: value.len() as CK_ULONG,
    }
}

/// A mechanism without parameters.
pub fn mechanism(mechanism: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// Loads a PKCS#11 module for good (it is never unloaded: a module's threads outlive
/// unloading it or a shim holding it before then crashes the process), and returns its
/// `C_GetFunctionList` table.
pub fn load_table(path: &Path) -> &'static CK_FUNCTION_LIST {
    // SAFETY: loading a PKCS#11 module runs its initialisers, which is what using it
    // asks for; RTLD_LOCAL keeps its C_* symbols out of the global namespace.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
    // SAFETY: C_GetFunctionList has this type in the PKCS#11 specification.
    let get_function_list = unsafe { library.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }
        .ok()
        .and_then(|s| *s)
        .unwrap_or_else(|| panic!("{} has no C_GetFunctionList", path.display()));
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer for the duration of the call.
    check(unsafe { get_function_list(&mut list) }, "C_GetFunctionList");
    assert!(
        !list.is_null(),
        "{}: C_GetFunctionList gave NULL",
        path.display()
    );
    std::mem::forget(library);
    // SAFETY: the module returned a pointer to its function table, which lives as long as
    // the module stays loaded, and it is never unloaded (the Library was forgotten). The
    // harness only reads it.
    unsafe { &*list }
}

/// The slot holding the token labelled `label`, as the module behind `fns` numbers slots;
/// `None` when no token has that label.
pub fn find_slot(fns: &CK_FUNCTION_LIST, label: &str) -> Option<CK_SLOT_ID> {
    let get_slots = fns
        .C_GetSlotList
        .expect("C_GetSlotList missing from the table");
    let get_info = fns
        .C_GetTokenInfo
        .expect("C_GetTokenInfo missing from the table");
    let mut count: CK_ULONG = 0;
    // SAFETY: a NULL list asks for the count only; `count` is a live local.
    check(
        unsafe { get_slots(CK_TRUE, std::ptr::null_mut(), &mut count) },
        "C_GetSlotList",
    );
    let mut slots = vec![0 as CK_SLOT_ID; count as usize];
    // SAFETY: `slots` holds `count` entries, as the call is told.
    check(
        unsafe { get_slots(CK_TRUE, slots.as_mut_ptr(), &mut count) },
        "C_GetSlotList",
    );
    slots.truncate(count as usize);
    slots.into_iter().find(|&slot| {
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: `info` is a live CK_TOKEN_INFO the call fills.
        let rv = unsafe { get_info(slot, &mut info) };
        rv == CKR_OK && String::from_utf8_lossy(&info.label).trim_end() == label
    })
}

/// The 1-minute load average (Linux), to tell a quiet run from a disturbed one.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
