//! The few operating-system facts keytrail needs that std does not give: thread id,
//! user name, host name. Each call is a thin, checked wrapper around libc.

use std::ffi::CStr;

/// The kernel's id of the calling thread (what `ps -L` and `top -H` show).
pub fn thread_id() -> u64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as u64 }
}

/// The real user id of the process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The process id.
pub fn pid() -> u32 {
    std::process::id()
}

/// The login name of `uid`, if the user database knows it.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain data; all-zero is a valid value to be overwritten.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf's length is passed with it.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside buf.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The host name.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Registers keytrail's process-wide hooks once: fork handlers (a child gets a stream of
/// its own; no lock is inherited held) and an exit handler (the trail is drained even
/// when the application never calls C_Finalize).
pub fn register_process_hooks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are plain extern "C" functions that live for the whole
        // process (libkeytrail.so is linked NODELETE).
        let rc = unsafe {
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child))
        };
        if rc != 0 {
            crate::diag::report(
                "could not register fork handlers; a forked child may lose records",
            );
        }
        // SAFETY: as above.
        if unsafe { libc::atexit(exit_handler) } != 0 {
            crate::diag::report(
                "could not register the exit handler; records queued at exit may be lost",
            );
        }
    });
}

extern "C" fn fork_prepare() {
    crate::audit::fork::prepare();
}

extern "C" fn fork_parent() {
    // SAFETY: runs after fork_prepare on the forking thread.
    unsafe { crate::audit::fork::release() };
}

extern "C" fn fork_child() {
    // SAFETY: runs after fork_prepare on the forking thread (the child's only thread).
    unsafe { crate::audit::fork::release() };
    crate::audit::fork::child();
}

extern "C" fn exit_handler() {
    let _ = std::panic::catch_unwind(crate::audit::at_exit);
}

/// Sends one line to syslog (facility authpriv, priority notice, ident "keytrail").
pub fn syslog_line(line: &[u8]) {
    static OPEN: std::sync::Once = std::sync::Once::new();
    OPEN.call_once(|| {
        // SAFETY: the ident is a static NUL-terminated string, as openlog keeps the pointer.
        unsafe {
            libc::openlog(
                c"keytrail".as_ptr(),
                libc::LOG_PID | libc::LOG_NDELAY,
                libc::LOG_AUTHPRIV,
            )
        };
    });
    let Ok(text) = std::ffi::CString::new(line) else {
        return;
    };
    // SAFETY: a constant format string whose one %s argument is a NUL-terminated string.
    unsafe { libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), text.as_ptr()) };
}
