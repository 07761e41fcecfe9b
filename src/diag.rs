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
///
/// The message is a `tracing` event, dispatched to keytrail's own subscriber only for the
/// duration of the call: keytrail never sets a global subscriber in its host process, and
/// the host's own subscriber never sees keytrail's diagnostics.
pub fn report(message: &str) {
    let dispatch = DISPATCH.get_or_init(|| {
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_writer(Tee)
                .without_time()
                .with_level(false)
                .with_target(true)
                .with_ansi(false)
                .finish(),
        )
    });
    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tracing::dispatcher::with_default(dispatch, || {
            tracing::warn!(target: "keytrail", "{message}");
        })
    }));
    if sent.is_err() {
        // Thread-local state may be gone (thread or process teardown): write directly.
        let _ = Tee.write_all(format!("keytrail: {message}\n").as_bytes());
    }
}

static DISPATCH: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();

/// Where a formatted diagnostic goes: stderr, and the diagnostics file when one is set.
#[derive(Clone, Copy)]
struct Tee;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Tee {
    type Writer = Tee;

    fn make_writer(&'a self) -> Tee {
        Tee
    }
}

impl Write for Tee {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(line);
        let path = DIAGNOSTICS_FILE.lock().clone();
        if let Some(path) = path {
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path);
            match opened {
                Ok(mut f) => {
                    let _ = f.write_all(line);
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
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
