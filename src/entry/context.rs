//! keytrail's own C functions beyond PKCS#11: tagging the calling thread with application
//! context (the end user or request id it acts for). Later records from that thread carry
//! the labels under `labels.*`. Declared in `include/keytrail.h`.

use crate::audit::context;
use std::ffi::{CStr, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs one exported call so that a panic never crosses the C boundary: it becomes -1 and
/// a diagnostic naming the function (never its arguments, which may be personal data).
fn guard(function: &'static str, call: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(rc) => rc,
        Err(_) => {
            crate::diag::report(&format!("internal error in {function}; returned -1"));
            -1
        }
    }
}

/// A NUL-terminated UTF-8 argument, or `None` when it is NULL or not UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn text<'a>(ptr: *const c_char) -> Option<&'a str> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }.to_str().ok()
}

/// Sets the label `key` to `value` on the calling thread, or removes it when `value` is
/// NULL. Returns 0 on success, -1 on bad input (NULL or empty key, text that is not UTF-8,
/// more than 16 labels or more than 256 bytes in a key or value).
///
/// # Safety
///
/// `key` and `value` are NULL or NUL-terminated strings valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keytrail_set_context(key: *const c_char, value: *const c_char) -> c_int {
    guard("keytrail_set_context", move || {
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let Some(key) = (unsafe { text(key) }) else {
            return -1;
        };
        let value = if value.is_null() {
            None
        } else {
            // SAFETY: the caller passes a NUL-terminated string (checked non-NULL).
            match unsafe { text(value) } {
                Some(v) => Some(v),
                None => return -1,
            }
        };
        if context::set_label(key, value) {
            0
        } else {
            -1
        }
    })
}

/// Removes every label from the calling thread.
///
/// # Safety
///
/// Takes no pointers; `unsafe` only because it is part of the C ABI.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keytrail_clear_context() {
    let _ = guard("keytrail_clear_context", || {
        context::clear_labels();
        0
    });
}

/// keytrail's version, as a NUL-terminated string. Also marks a library as keytrail, so
/// that a configuration naming keytrail (or a copy of it) as the real module is refused.
#[unsafe(no_mangle)]
pub extern "C" fn keytrail_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_remove_and_reject() {
        // SAFETY: literals are NUL-terminated and live for the calls.
        unsafe {
            assert_eq!(
                keytrail_set_context(c"request_id".as_ptr(), c"r-7".as_ptr()),
                0
            );
            assert_eq!(
                context::labels().as_deref().map(Vec::as_slice),
                Some(&[("request_id".to_string(), "r-7".to_string())][..])
            );
            assert_eq!(keytrail_set_context(std::ptr::null(), c"x".as_ptr()), -1);
            assert_eq!(keytrail_set_context(c"".as_ptr(), c"x".as_ptr()), -1);
            let bad = [0xffu8, 0xfe, 0];
            assert_eq!(keytrail_set_context(bad.as_ptr().cast(), c"x".as_ptr()), -1);
            assert_eq!(keytrail_set_context(c"k".as_ptr(), bad.as_ptr().cast()), -1);
            assert_eq!(
                keytrail_set_context(c"request_id".as_ptr(), std::ptr::null()),
                0
            );
            assert!(context::labels().is_none());
            assert_eq!(keytrail_set_context(c"a".as_ptr(), c"1".as_ptr()), 0);
            keytrail_clear_context();
            assert!(context::labels().is_none());
        }
    }
}
