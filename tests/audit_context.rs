//! Application context: `keytrail_set_context` / `keytrail_clear_context`, loaded from the
//! built library with libloading as a C application would, tag the calling thread only.

mod common;
mod support;

use common::*;
use std::ffi::{c_char, c_int};
use support::*;

type SetContext = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
type ClearContext = unsafe extern "C" fn();

struct Api {
    set: SetContext,
    clear: ClearContext,
    _lib: libloading::Library,
}

fn api() -> Api {
    // SAFETY: loading keytrail runs no constructors; the symbols have the signatures
    // declared in include/keytrail.h.
    unsafe {
        let lib = libloading::Library::new(keytrail_module()).expect("dlopen keytrail");
        let set = *lib
            .get::<SetContext>(b"keytrail_set_context\0")
            .expect("keytrail_set_context");
        let clear = *lib
            .get::<ClearContext>(b"keytrail_clear_context\0")
            .expect("keytrail_clear_context");
        Api {
            set,
            clear,
            _lib: lib,
        }
    }
}

fn tid() -> u64 {
    // SAFETY: gettid has no preconditions.
    u64::try_from(unsafe { libc::gettid() }).expect("tid")
}

#[test]
fn context_labels_tag_only_the_calling_thread() {
    let fx = Fixture::new();
    let api = api();
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    std::thread::scope(|scope| {
        let tagged = scope.spawn(|| {
            // SAFETY: NUL-terminated literals, valid for the calls.
            unsafe {
                assert_eq!((api.set)(c"request_id".as_ptr(), c"req-42".as_ptr()), 0);
                assert_eq!((api.set)(c"end_user".as_ptr(), c"alice".as_ptr()), 0);
                assert_eq!((api.set)(std::ptr::null(), c"x".as_ptr()), -1);
                let not_utf8 = [0xc3u8, 0x28, 0];
                assert_eq!((api.set)(c"k".as_ptr(), not_utf8.as_ptr().cast()), -1);
            }
            let s_ = user_session(&p);
            aes_key(&s_, "tagged-1", &[1], false);
            // SAFETY: as above; NULL value removes the key.
            unsafe { assert_eq!((api.set)(c"end_user".as_ptr(), std::ptr::null()), 0) };
            aes_key(&s_, "tagged-2", &[2], false);
            // SAFETY: takes no arguments.
            unsafe { (api.clear)() };
            aes_key(&s_, "tagged-3", &[3], false);
            drop(s_);
            tid()
        });
        let tagged = tagged.join().expect("tagged thread");
        let plain = scope
            .spawn(|| {
                let s_ = p.open_rw_session(slot).expect("session");
                drop(s_);
                tid()
            })
            .join()
            .expect("plain thread");
        assert_ne!(tagged, plain);
    });
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let generated = category(&t, "generate");
    assert_eq!(generated.len(), 3, "{}", dump(&t));
    let tagged_tid = n(&generated[0], "process.thread.id");
    assert_eq!(
        at(&generated[0], "labels"),
        &serde_json::json!({"request_id": "req-42", "end_user": "alice"})
    );
    assert_eq!(
        at(&generated[1], "labels"),
        &serde_json::json!({"request_id": "req-42"})
    );
    assert!(at(&generated[2], "labels").is_null(), "{}", generated[2]);
    // The login and session open on the tagged thread carry both labels.
    for a in ["login", "session_open"] {
        let r = &action(&t, a)[0];
        assert_eq!(n(r, "process.thread.id"), tagged_tid, "{r}");
        assert_eq!(s(r, "labels.request_id"), "req-42", "{r}");
    }
    // Records from the other thread carry none.
    let other: Vec<_> = t
        .iter()
        .filter(|r| n(r, "process.thread.id") != tagged_tid)
        .collect();
    assert_eq!(
        other.len(),
        2,
        "open and close on the plain thread: {}",
        dump(&t)
    );
    for r in other {
        assert!(at(r, "labels").is_null(), "{r}");
    }
    // The main thread's own records (finalize) carry none either.
    let fin = only(&fx.trail(), "finalize");
    assert!(at(&fin, "labels").is_null(), "{fin}");
}

#[test]
fn header_declares_the_exported_functions() {
    let header =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/keytrail.h"))
            .expect("include/keytrail.h");
    assert!(header.contains("int keytrail_set_context(const char *key, const char *value);"));
    assert!(header.contains("void keytrail_clear_context(void);"));
    // And the library exports them.
    let api = api();
    // SAFETY: empty key is rejected without being dereferenced beyond its NUL.
    assert_eq!(unsafe { (api.set)(c"".as_ptr(), c"v".as_ptr()) }, -1);
}
