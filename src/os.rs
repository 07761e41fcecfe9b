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

/// Whether this process runs in secure-execution mode (the kernel's `AT_SECURE`): it was
/// started setuid or setgid, or gained capabilities on exec, so its environment belongs
/// to a less privileged user. glibc's `secure_getenv` refuses every variable then, and
/// keytrail does the same with its own (see [`crate::config::env_override`]).
pub fn secure_execution() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave this process; an
    // unknown type yields 0.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// The effective user id: the user whose privileges this process acts with, and so the
/// only user besides root whose files it may trust.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The user and groups a process acts as (its effective ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The effective credentials of process `pid`, from `/proc/PID/status`.
pub fn credentials_of(pid: u32) -> std::io::Result<Credentials> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let bad = || std::io::Error::other(format!("/proc/{pid}/status has no Uid/Gid lines"));
    let field = |name: &str| -> Option<Vec<u32>> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .split_whitespace()
            .map(|n| n.parse().ok())
            .collect()
    };
    // Uid: and Gid: list real, effective, saved and filesystem ids.
    let uid = field("Uid:")
        .and_then(|v| v.get(1).copied())
        .ok_or_else(bad)?;
    let gid = field("Gid:")
        .and_then(|v| v.get(1).copied())
        .ok_or_else(bad)?;
    let groups = field("Groups:").unwrap_or_default();
    Ok(Credentials { uid, gid, groups })
}

/// Whether process `pid` runs in secure-execution mode (`AT_SECURE` in
/// `/proc/PID/auxv`); `None` when its auxiliary vector cannot be read.
pub fn secure_execution_of(pid: u32) -> Option<bool> {
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).ok()?;
    const WORD: usize = std::mem::size_of::<libc::c_ulong>();
    let word = |b: &[u8]| {
        let mut a = [0u8; WORD];
        a.copy_from_slice(b);
        libc::c_ulong::from_ne_bytes(a)
    };
    for pair in auxv.chunks_exact(2 * WORD) {
        let (key, value) = (word(&pair[..WORD]), word(&pair[WORD..]));
        if key == libc::AT_SECURE {
            return Some(value != 0);
        }
        if key == libc::AT_NULL {
            break;
        }
    }
    Some(false)
}

/// What a child started by [`run_as`] printed, and how it ended.
#[derive(Debug)]
pub struct ChildOutput {
    /// Its exit status (128 + signal number when a signal ended it).
    pub status: i32,
    /// Its stdout and stderr, interleaved, at most `limit` bytes.
    pub output: Vec<u8>,
    /// Whether more was printed than was kept.
    pub truncated: bool,
}

/// Exit status of a [`run_as`] child that could not take on the credentials.
pub const RUN_AS_FAILED: i32 = 125;

/// Runs `body` in a forked child that holds exactly `creds` (supplementary groups, group
/// and user, real, effective and saved, checked afterwards), in a session of its own (no
/// controlling terminal to push input into), with stdin from /dev/null, every other
/// inherited descriptor closed, the parent's environment wiped and `env` installed, and
/// stdout and stderr into a pipe whose first `limit` bytes are returned. What runs in the
/// child — a PKCS#11 module named by another user, say — gets that user's privileges and
/// nothing of the caller's: not its terminal, files, memory of its environment, nor its
/// output stream except as bytes for the caller to escape.
///
/// The caller must be single-threaded (the child runs `body` after `fork`).
pub fn run_as(
    creds: &Credentials,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    cwd: Option<&std::path::Path>,
    limit: usize,
    body: impl FnOnce() -> u8,
) -> std::io::Result<ChildOutput> {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // Everything the child needs is prepared before fork: it must not allocate in ways
    // that could meet a lock held by another thread (there is none, but keep it cheap).
    let to_c = |s: &[u8]| std::ffi::CString::new(s).ok();
    let env_c: Vec<(std::ffi::CString, std::ffi::CString)> = env
        .iter()
        .filter_map(|(k, v)| Some((to_c(k.as_bytes())?, to_c(v.as_bytes())?)))
        .collect();
    let cwd_c = cwd.and_then(|p| to_c(p.as_os_str().as_bytes()));
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fork has no preconditions; the caller promises a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        drop(read_end);
        let status = match become_child(creds, &write_end, &env_c, cwd_c.as_deref()) {
            Ok(()) => {
                let code = body();
                let _ = std::io::stdout().flush();
                code as i32
            }
            Err(what) => {
                let _ = writeln!(std::io::stderr(), "keytrail: {what}");
                RUN_AS_FAILED
            }
        };
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(status) };
    }
    drop(write_end);
    let mut output = Vec::new();
    let mut truncated = false;
    let mut reader = std::fs::File::from(read_end);
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = limit.saturating_sub(output.len());
                output.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let mut wstatus = 0;
    loop {
        // SAFETY: pid is our child; wstatus is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut wstatus, 0) };
        if rc == pid {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(std::io::Error::last_os_error());
        }
    }
    let status = if libc::WIFEXITED(wstatus) {
        libc::WEXITSTATUS(wstatus)
    } else {
        128 + libc::WTERMSIG(wstatus)
    };
    Ok(ChildOutput {
        status,
        output,
        truncated,
    })
}

/// The child side of [`run_as`]: descriptors, session, environment, credentials.
fn become_child(
    creds: &Credentials,
    out: &std::os::fd::OwnedFd,
    env: &[(std::ffi::CString, std::ffi::CString)],
    cwd: Option<&std::ffi::CStr>,
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let fail = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain descriptor calls on descriptors this process owns; /dev/null is a
    // NUL-terminated constant.
    unsafe {
        if libc::dup2(out.as_raw_fd(), 1) < 0 || libc::dup2(out.as_raw_fd(), 2) < 0 {
            return Err(fail("cannot redirect output"));
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 || libc::dup2(null, 0) < 0 {
            return Err(fail("cannot open /dev/null"));
        }
        // Every descriptor above stderr: the caller's files, terminals and sockets.
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as libc::c_int;
            for fd in 3..max {
                libc::close(fd);
            }
        }
        // A new session has no controlling terminal, so nothing in the child can open
        // /dev/tty and push keystrokes into the caller's terminal (TIOCSTI).
        if libc::setsid() < 0 {
            return Err(fail("cannot start a new session"));
        }
    }
    scrub_environment();
    for (k, v) in env {
        // SAFETY: NUL-terminated strings; the child is single-threaded.
        unsafe { libc::setenv(k.as_ptr(), v.as_ptr(), 1) };
    }
    // SAFETY: every pointer is valid for the calls; group ids are passed with their count.
    unsafe {
        if libc::setgroups(creds.groups.len(), creds.groups.as_ptr()) != 0 {
            return Err(fail("cannot set the supplementary groups"));
        }
        if libc::setresgid(creds.gid, creds.gid, creds.gid) != 0 {
            return Err(fail(&format!("cannot switch to group {}", creds.gid)));
        }
        if libc::setresuid(creds.uid, creds.uid, creds.uid) != 0 {
            return Err(fail(&format!("cannot switch to user {}", creds.uid)));
        }
    }
    let (mut r, mut e, mut s) = (0, 0, 0);
    let (mut gr, mut ge, mut gs) = (0, 0, 0);
    // SAFETY: valid out-pointers.
    let ids_ok = unsafe {
        libc::getresuid(&mut r, &mut e, &mut s) == 0
            && libc::getresgid(&mut gr, &mut ge, &mut gs) == 0
    };
    if !ids_ok
        || [r, e, s] != [creds.uid; 3]
        || [gr, ge, gs] != [creds.gid; 3]
        // SAFETY: an attempt to regain root must fail for an unprivileged user.
        || (creds.uid != 0 && unsafe { libc::setresuid(0, 0, 0) } == 0)
    {
        return Err(format!(
            "could not drop to uid {} gid {} for good",
            creds.uid, creds.gid
        ));
    }
    if let Some(dir) = cwd {
        // SAFETY: a NUL-terminated path. Failure leaves the child in the caller's cwd,
        // which only changes how relative paths resolve.
        unsafe { libc::chdir(dir.as_ptr()) };
    }
    Ok(())
}

/// Overwrites every environment string of this (forked, single-threaded) process with
/// zeros and empties the environment, so that nothing run later in it can read the
/// parent's variables from memory.
fn scrub_environment() {
    unsafe extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: environ is a NULL-terminated array of NUL-terminated strings owned by this
    // process; the child is single-threaded, so nothing reads them concurrently.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let s = *p;
            std::ptr::write_bytes(s, 0, libc::strlen(s));
            p = p.add(1);
        }
        libc::clearenv();
    }
}

/// SIGTERM or SIGINT arrived (the agent stops).
pub static STOP_REQUESTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
/// SIGHUP arrived (the agent reopens its files).
pub static REOPEN_REQUESTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    use std::sync::atomic::Ordering;
    // Only async-signal-safe work: an atomic store.
    if sig == libc::SIGHUP {
        REOPEN_REQUESTED.store(true, Ordering::SeqCst);
    } else {
        STOP_REQUESTED.store(true, Ordering::SeqCst);
    }
}

/// The agent's signals: SIGTERM and SIGINT set [`STOP_REQUESTED`], SIGHUP sets
/// [`REOPEN_REQUESTED`]; SIGPIPE is ignored (a process that closes its socket early must
/// not end the agent).
pub fn catch_agent_signals() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to atomics.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: setting SIGPIPE to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}
