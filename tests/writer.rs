//! The writer (issue 4): ordering under threads, fork, sink failures and policies, exit
//! without C_Finalize, and applications that forbid threads.

mod common;

use common::raw::{self, Raw};
use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki_sys::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn action(r: &Value) -> &str {
    r["event"]["action"].as_str().unwrap_or("")
}

fn of_action<'a>(records: &'a [Value], a: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| action(r) == a).collect()
}

/// Each stream's sequence numbers are 1..=n in file order.
fn assert_gapless(records: &[Value]) {
    let mut next: HashMap<u64, u64> = HashMap::new();
    for r in records {
        let pid = r["process"]["pid"].as_u64().expect("pid");
        let seq = r["event"]["sequence"].as_u64().expect("sequence");
        let want = next.entry(pid).or_insert(1);
        assert_eq!(
            seq, *want,
            "stream of pid {pid}: sequence {seq} where {want} was due"
        );
        *want += 1;
    }
}

fn gettid() -> u64 {
    // SAFETY (test): gettid has no preconditions.
    unsafe { libc::gettid() as u64 }
}

#[test]
fn eight_threads_ten_thousand_operations_each_in_order() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let login = user_session(&p);
    let slot = token_slot(&p);
    let workers: Vec<_> = (0..8u8)
        .map(|t| {
            let p: Pkcs11 = p.clone();
            std::thread::spawn(move || {
                let s = p.open_rw_session(slot).expect("session");
                let key = hmac_key(&s, t + 1);
                let data = vec![t; 10_000];
                for k in 0..10_000 {
                    s.sign(&Mechanism::Sha256Hmac, key, &data[..=k])
                        .expect("sign");
                }
                gettid()
            })
        })
        .collect();
    let tids: Vec<u64> = workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .collect();
    drop(login);
    p.finalize().expect("finalize");
    let trail = fx.trail();
    assert_gapless(&trail);
    let signs = of_action(&trail, "sign");
    assert_eq!(signs.len(), 80_000);
    for tid in tids {
        let lens: Vec<u64> = signs
            .iter()
            .filter(|r| r["process"]["thread"]["id"].as_u64() == Some(tid))
            .map(|r| r["pkcs11"]["data"]["in_len"].as_u64().expect("in_len"))
            .collect();
        let expected: Vec<u64> = (1..=10_000).collect();
        assert_eq!(lens, expected, "thread {tid}: its records in its order");
    }
}

#[test]
fn fork_after_initialize_gives_the_child_its_own_stream() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 7);
    let pid = sign_in_parent_and_child(p, s, key, 100, 150);
    let trail = fx.trail();
    assert_gapless(&trail);
    let signs = of_action(&trail, "sign");
    let by_pid = |want: u64| {
        signs
            .iter()
            .filter(|r| r["process"]["pid"].as_u64() == Some(want))
            .count()
    };
    assert_eq!(
        by_pid(std::process::id() as u64),
        100,
        "parent's records, once"
    );
    assert_eq!(by_pid(pid as u64), 150, "child's records, once");
    assert_eq!(signs.len(), 250);
    let starts: Vec<u64> = of_action(&trail, "trail_start")
        .iter()
        .map(|r| r["process"]["pid"].as_u64().expect("pid"))
        .collect();
    assert_eq!(starts, vec![std::process::id() as u64, pid as u64]);
    // The child's stream begins with its own start record, sequence 1, naming the parent.
    let child_first = trail
        .iter()
        .find(|r| r["process"]["pid"].as_u64() == Some(pid as u64))
        .expect("child stream");
    assert_eq!(action(child_first), "trail_start");
    assert_eq!(child_first["event"]["sequence"], 1);
    assert_eq!(child_first["keytrail"]["forked_from"], std::process::id());
    assert_ne!(
        child_first["integrity"]["stream"],
        trail[0]["integrity"]["stream"]
    );
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills a file system: writes until ENOSPC.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = [0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn full_disk_continue_serves_calls_and_the_trail_reports_the_loss() {
    let fx = Fixture::new();
    let mnt = fx.path().join("mnt");
    let Some(_mount) = Mount::tmpfs(&mnt, "256k") else {
        // Not allowed to mount: /dev/full is the other real way to make writes fail.
        fx.configure("[trail]\npath = \"/dev/full\"\n");
        let p = open(&keytrail_module());
        let s = user_session(&p);
        let key = hmac_key(&s, 1);
        for _ in 0..20 {
            s.sign(&Mechanism::Sha256Hmac, key, b"data")
                .expect("served");
        }
        drop(s);
        p.finalize().expect("finalize");
        assert!(
            fx.diagnostics().contains("No space left on device"),
            "{}",
            fx.diagnostics()
        );
        return;
    };
    let trail = mnt.join("trail.jsonl");
    fx.configure(&format!("[trail]\npath = \"{}\"\n", trail.display()));
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 1);
    std::thread::sleep(Duration::from_millis(100));
    fill(&mnt.join("filler"));
    for _ in 0..500 {
        s.sign(&Mechanism::Sha256Hmac, key, b"data")
            .expect("served while the disk is full");
    }
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(mnt.join("filler")).expect("free space");
    s.sign(&Mechanism::Sha256Hmac, key, b"after").expect("sign");
    drop(s);
    p.finalize().expect("finalize");
    let records: Vec<Value> = std::fs::read_to_string(&trail)
        .expect("trail")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let lost = of_action(&records, "records_lost");
    assert_eq!(lost.len(), 1, "one loss report");
    let n = lost[0]["keytrail"]["lost"].as_u64().expect("count");
    let written = of_action(&records, "sign").len() as u64;
    assert!(n > 0, "some records were lost");
    // Only sign records were queued while the disk was full.
    assert_eq!(written + n, 501, "every sign is written or counted");
    assert!(
        lost[0]["keytrail"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("No space")
    );
    assert!(
        fx.diagnostics().contains("No space left on device"),
        "{}",
        fx.diagnostics()
    );
    assert!(
        fx.diagnostics().contains("writable again"),
        "{}",
        fx.diagnostics()
    );
}

/// Polls `f` until it returns true, for at most `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn unwritable_directory_with_deny_refuses_audited_calls_until_it_recovers() {
    let fx = Fixture::new();
    let dir = fx.path().join("logs");
    let trail = dir.join("trail.jsonl");
    fx.configure(&format!(
        "[trail]\npath = \"{}\"\non_failure = \"deny\"\n",
        trail.display()
    ));
    let raw = Raw::load(&keytrail_module());
    let l = raw.list();
    assert_eq!(raw::initialize(l), CKR_OK);
    let s = raw::open_rw(l);
    let s2 = raw::open_rw(l);
    assert!(eventually(Duration::from_secs(3), || trail.exists()));
    // A file where the trail's directory was: the trail can no longer be written.
    std::fs::remove_dir_all(&dir).expect("remove");
    std::fs::write(&dir, b"not a directory").expect("blocker");
    assert!(
        eventually(Duration::from_secs(5), || raw::login(l, s)
            == CKR_FUNCTION_FAILED),
        "audited calls are refused once the trail is known to fail"
    );
    let mut h: CK_SESSION_HANDLE = 0;
    let slot = raw::slots(l)[0];
    // SAFETY (test): valid out-pointer.
    let rv = unsafe {
        (l.C_OpenSession.expect("f"))(slot, CKF_SERIAL_SESSION, std::ptr::null_mut(), None, &mut h)
    };
    assert_eq!(
        rv, CKR_FUNCTION_FAILED,
        "C_OpenSession is audited, so refused"
    );
    // SAFETY (test): CK_SESSION_INFO is plain data.
    let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
    // SAFETY (test): valid out-pointer.
    let rv = unsafe { (l.C_GetSessionInfo.expect("f"))(s, &mut info) };
    assert_eq!(rv, CKR_OK, "read-only info calls pass");
    // SAFETY (test): a session we opened.
    let rv = unsafe { (l.C_CloseSession.expect("f"))(s2) };
    assert_eq!(rv, CKR_OK, "C_CloseSession passes");
    assert!(
        fx.diagnostics().contains("cannot write the trail"),
        "{}",
        fx.diagnostics()
    );
    std::fs::remove_file(&dir).expect("fix the directory");
    assert!(
        eventually(Duration::from_secs(5), || {
            matches!(raw::login(l, s), CKR_OK | CKR_USER_ALREADY_LOGGED_IN)
        }),
        "calls pass again once the trail is writable"
    );
    assert_eq!(raw::finalize(l), CKR_OK);
    let records: Vec<Value> = std::fs::read_to_string(&trail)
        .expect("trail recreated")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let lost = of_action(&records, "records_lost");
    assert_eq!(lost.len(), 1, "{records:?}");
    assert!(
        lost[0]["keytrail"]["refused_calls"]
            .as_u64()
            .expect("refused")
            >= 2
    );
    assert!(lost[0]["keytrail"]["lost"].as_u64().expect("lost") >= 1);
    let logins = of_action(&records, "login");
    let last = &logins.last().expect("login")["pkcs11"]["rv_name"];
    assert!(
        last == "CKR_OK" || last == "CKR_USER_ALREADY_LOGGED_IN",
        "{last}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "recreated 0700");
}

#[test]
fn directory_removed_while_running_is_recreated_and_the_trail_says_so() {
    let fx = Fixture::new();
    let dir = fx.path().join("logs");
    let trail = dir.join("trail.jsonl");
    fx.configure(&format!("[trail]\npath = \"{}\"\n", trail.display()));
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 3);
    s.sign(&Mechanism::Sha256Hmac, key, b"before")
        .expect("sign");
    assert!(eventually(Duration::from_secs(3), || {
        std::fs::read_to_string(&trail).is_ok_and(|t| t.contains("\"action\":\"sign\""))
    }));
    std::fs::remove_dir_all(&dir).expect("remove the log directory");
    for _ in 0..5 {
        s.sign(&Mechanism::Sha256Hmac, key, b"after")
            .expect("served");
    }
    drop(s);
    p.finalize().expect("finalize");
    let records: Vec<Value> = std::fs::read_to_string(&trail)
        .expect("trail recreated")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let reopened = of_action(&records, "trail_reopened");
    assert_eq!(reopened.len(), 1, "the trail says the file was recreated");
    assert_eq!(
        of_action(&records, "sign").len(),
        5,
        "records after the removal are kept"
    );
    assert!(
        fx.diagnostics().contains("removed or replaced"),
        "{}",
        fx.diagnostics()
    );
}

#[test]
fn deny_puts_a_destroy_on_record_before_forwarding_it() {
    let fx = Fixture::new();
    fx.configure("[trail]\non_failure = \"deny\"\n");
    fx.configure(&format!(
        "[trail]\npath = \"{}\"\non_failure = \"deny\"\n",
        fx.trail_path().display()
    ));
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 9);
    s.destroy_object(key).expect("destroy");
    drop(s);
    p.finalize().expect("finalize");
    let destroys = of_action(&fx.trail(), "object_destroy")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(destroys.len(), 2, "intent, then outcome");
    assert_eq!(
        destroys[0]["pkcs11"]["flags"],
        serde_json::json!(["intent"])
    );
    assert_eq!(destroys[0]["event"]["outcome"], "unknown");
    assert_eq!(destroys[1]["event"]["outcome"], "success");
    assert_eq!(
        destroys[0]["pkcs11"]["key"]["handle"],
        destroys[1]["pkcs11"]["key"]["handle"]
    );
}

#[test]
fn deny_with_an_unreadable_key_file_serves_no_call() {
    let fx = Fixture::new();
    fx.configure(&format!(
        "[trail]\npath = \"{}\"\non_failure = \"deny\"\n[integrity]\nkey_file = \"{}\"\n",
        fx.trail_path().display(),
        fx.path().join("missing.key").display()
    ));
    let raw = Raw::load(&keytrail_module());
    let l = raw.list();
    assert_ne!(
        raw::initialize(l),
        CKR_OK,
        "no trail can start, so the module is never served"
    );
}

/// Child of `exit_without_finalize_loses_nothing`: signs and exits without C_Finalize.
#[test]
#[ignore = "run as a child process by exit_without_finalize_loses_nothing"]
fn child_exits_without_finalize() {
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 5);
    for i in 0..25u8 {
        s.sign(&Mechanism::Sha256Hmac, key, &[i; 8]).expect("sign");
    }
    std::mem::forget(s);
    std::mem::forget(p);
    std::process::exit(0);
}

#[test]
fn exit_without_finalize_loses_nothing() {
    let fx = Fixture::new();
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_exits_without_finalize",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trail = fx.trail();
    assert_eq!(of_action(&trail, "sign").len(), 25);
    assert_eq!(
        of_action(&trail, "finalize").len(),
        0,
        "the child never finalized"
    );
    let last = trail.last().expect("records");
    assert_eq!(action(last), "trail_stop", "the trail shows where it ended");
    assert_eq!(last["keytrail"]["reason"], "exit");
    assert_gapless(&trail);
}

fn writer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "keytrail-writer")
        .count()
}

#[test]
fn cant_create_os_threads_writes_synchronously_without_a_thread() {
    let fx = Fixture::new();
    let raw = Raw::load(&keytrail_module());
    let l = raw.list();
    let mut args = raw::init_args();
    args.flags |= CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    // SAFETY (test): valid arguments.
    let rv = unsafe { (l.C_Initialize.expect("f"))(&mut args as *mut _ as CK_VOID_PTR) };
    assert_eq!(rv, CKR_OK);
    let s = raw::open_rw(l);
    assert_eq!(raw::login(l, s), CKR_OK);
    // Written before C_Finalize, by the calling thread.
    let records = fx.trail();
    assert_eq!(of_action(&records, "login").len(), 1, "{records:?}");
    assert_eq!(of_action(&records, "session_open").len(), 1);
    assert_eq!(records[0]["keytrail"]["writer"], "synchronous");
    assert_eq!(writer_threads(), 0, "no thread was created");
    assert_eq!(raw::finalize(l), CKR_OK);
    assert_eq!(writer_threads(), 0);
    assert_eq!(of_action(&fx.trail(), "finalize").len(), 1);
}

#[test]
fn with_threads_allowed_there_is_one_writer_thread() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let _s = user_session(&p);
    assert_eq!(writer_threads(), 1);
    drop(_s);
    p.finalize().expect("finalize");
    assert!(!fx.trail().is_empty());
}

#[test]
fn drop_policy_counts_every_dropped_record() {
    let fx = Fixture::new();
    dropping_burst(&fx);
    let trail = fx.trail();
    let dropped: u64 = of_action(&trail, "records_dropped")
        .iter()
        .map(|r| r["keytrail"]["lost"].as_u64().expect("lost"))
        .sum();
    let written = trail
        .iter()
        .filter(|r| action(r) != "records_dropped")
        .count() as u64;
    // trail_start, initialize, 2 × 8000 session records, finalize, trail_stop.
    assert_eq!(
        written + dropped,
        4 + 16_000,
        "each record is written or counted"
    );
    assert_gapless(&trail);
}

#[test]
fn a_forked_child_that_makes_no_call_leaves_no_stream() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let pid = fork();
    if pid == 0 {
        std::process::exit(0);
    }
    wait_child(pid);
    drop(s);
    p.finalize().expect("finalize");
    let trail = fx.trail();
    assert!(
        trail
            .iter()
            .all(|r| r["process"]["pid"].as_u64() == Some(std::process::id() as u64)),
        "no record of the child"
    );
    assert_gapless(&trail);
}

#[test]
fn calls_after_finalize_leave_the_stream_closed() {
    let fx = Fixture::new();
    let raw = Raw::load(&keytrail_module());
    let l = raw.list();
    assert_eq!(raw::initialize(l), CKR_OK);
    let s = raw::open_rw(l);
    assert_eq!(raw::finalize(l), CKR_OK);
    for _ in 0..100 {
        assert_eq!(
            raw::login(l, s),
            CKR_CRYPTOKI_NOT_INITIALIZED,
            "the module's answer, unchanged"
        );
    }
    // Give the writer time to write anything it was (wrongly) given.
    std::thread::sleep(Duration::from_millis(300));
    let trail = fx.trail();
    assert_gapless(&trail);
    assert_eq!(
        trail.last().map(action),
        Some("trail_stop"),
        "the stream ends with its stop record"
    );
    assert!(
        of_action(&trail, "login").is_empty(),
        "no record after the stop"
    );
}

/// On a trail that is a FIFO nobody reads (the writer is stuck once the pipe is full,
/// as on a hung mount), with `on_full = "wait"`, `wait_ms = 200` and `on_failure`: makes
/// `calls` C_OpenSession calls and C_Finalize in a thread, and returns how many calls were
/// served and refused, and C_Finalize's answer. Fails if they do not all return.
fn calls_with_a_stuck_writer(
    fx: &Fixture,
    on_failure: &str,
    calls: usize,
) -> (usize, usize, CK_RV) {
    let trail = fx.path().join("fifo");
    let c = std::ffi::CString::new(trail.to_str().expect("utf-8")).expect("path");
    // SAFETY (test): a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    fx.configure(&format!(
        "[trail]\npath = \"{}\"\nqueue = 16\non_full = \"wait\"\non_failure = \"{on_failure}\"\nwait_ms = 200\n",
        trail.display()
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let raw = Raw::load(&keytrail_module());
        let l = raw.list();
        assert_eq!(raw::initialize(l), CKR_OK);
        let slot = raw::slots(l)[0];
        let (mut served, mut refused) = (0, 0);
        for _ in 0..calls {
            let mut h: CK_SESSION_HANDLE = 0;
            // SAFETY (test): valid out-pointer.
            let rv = unsafe {
                (l.C_OpenSession.expect("f"))(
                    slot,
                    CKF_SERIAL_SESSION,
                    std::ptr::null_mut(),
                    None,
                    &mut h,
                )
            };
            match rv {
                CKR_OK => served += 1,
                CKR_FUNCTION_FAILED => refused += 1,
                _ => {}
            }
        }
        let fin = raw::finalize(l);
        let _ = tx.send((served, refused, fin));
    });
    // Generous: the configured bound is 0.2 s per call at most once, plus C_Finalize's
    // flush wait.
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the calls and C_Finalize return")
}

/// Calls wait at most `wait_ms` for room, then `deny` refuses them; C_Finalize still
/// returns.
#[test]
fn stuck_writer_with_wait_and_deny_neither_hangs_nor_serves_unrecorded() {
    let fx = Fixture::new();
    let (_, refused, fin) = calls_with_a_stuck_writer(&fx, "deny", 200);
    assert!(
        refused > 0,
        "deny refuses calls once the writer is stuck: {}",
        fx.diagnostics()
    );
    assert_eq!(fin, CKR_OK);
    assert!(fx.diagnostics().contains("stuck"), "{}", fx.diagnostics());
}

/// Calls wait at most `wait_ms` once, then `continue` serves them all; the drops are
/// counted and C_Finalize returns and says how many.
#[test]
fn stuck_writer_with_wait_and_continue_serves_calls_and_counts_drops() {
    let fx = Fixture::new();
    let (served, _, fin) = calls_with_a_stuck_writer(&fx, "continue", 3000);
    assert_eq!(served, 3000, "continue serves every call");
    assert_eq!(fin, CKR_OK);
    let d = fx.diagnostics();
    assert!(d.contains("stuck"), "{d}");
    let line = d
        .lines()
        .find(|l| l.contains("at C_Finalize, the trail has lost"))
        .unwrap_or_else(|| panic!("no loss count at C_Finalize: {d}"));
    let dropped: u64 = line
        .split(" were dropped")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a drop count: {line}"));
    assert!(dropped > 0, "{line}");
}

/// A disk that stays full until C_Finalize: C_Finalize says how many records were lost.
#[test]
fn full_disk_until_finalize_reports_the_count_at_finalize() {
    let fx = Fixture::new();
    let mnt = fx.path().join("mnt");
    let mount = Mount::tmpfs(&mnt, "256k");
    let trail = match &mount {
        Some(_) => mnt.join("trail.jsonl"),
        // Not allowed to mount: /dev/full is the other real way to make writes fail.
        None => std::path::PathBuf::from("/dev/full"),
    };
    fx.configure(&format!("[trail]\npath = \"{}\"\n", trail.display()));
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 1);
    std::thread::sleep(Duration::from_millis(100));
    if mount.is_some() {
        fill(&mnt.join("filler"));
    }
    for _ in 0..300 {
        s.sign(&Mechanism::Sha256Hmac, key, b"data")
            .expect("served while the disk is full");
    }
    drop(s);
    p.finalize().expect("finalize");
    let diagnostics = fx.diagnostics();
    let line = diagnostics
        .lines()
        .find(|l| l.contains("at C_Finalize, the trail has lost"))
        .unwrap_or_else(|| panic!("no loss count at C_Finalize: {diagnostics}"));
    let n: u64 = line
        .split("lost what it could not record: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(n >= 300, "every sign is counted lost: {line}");
    assert!(
        !diagnostics.contains("within 5 s"),
        "no claim of a flush wait: {diagnostics}"
    );
}
