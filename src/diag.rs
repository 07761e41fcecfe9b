//! keytrail's own diagnostics: configuration and loading problems, audit faults.
//!
//! They go to stderr (never stdout, which belongs to the application) and, once a
//! configuration names one, to a diagnostics file as well, because many hosts (Java,
//! daemons) discard stderr. Messages never carry call arguments, so they cannot carry a
//! secret.

use parking_lot::Mutex;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

static DIAGNOSTICS_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets the file that receives a copy of every diagnostic from now on.
pub fn set_file(path: Option<PathBuf>) {
    *DIAGNOSTICS_FILE.lock() = path;
}

/// Reports a problem to the operator. Never fails: a diagnostic that cannot be written
/// must not disturb the host application.
pub fn report(message: &str) {
    let line = format!("keytrail: {message}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let path = DIAGNOSTICS_FILE.lock().clone();
    if let Some(path) = path {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path);
        match opened {
            Ok(mut f) => {
                let _ = f.write_all(line.as_bytes());
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "keytrail: diagnostics file {} cannot be written: {e}",
                    path.display()
                );
            }
        }
    }
}

/// Takes the diagnostics lock before fork() (see [`crate::audit::fork`]).
pub fn lock_for_fork() {
    std::mem::forget(DIAGNOSTICS_FILE.lock());
}

/// Releases the lock taken by [`lock_for_fork`].
///
/// # Safety
/// Only after `lock_for_fork` on this thread.
pub unsafe fn unlock_after_fork() {
    // SAFETY: the caller guarantees the lock is held with its guard forgotten.
    unsafe { DIAGNOSTICS_FILE.force_unlock() };
}
