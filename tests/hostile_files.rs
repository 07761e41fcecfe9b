//! The trail's files on a hostile host (issue 14): a directory or name replaced by a link,
//! a directory others can change, planted files that retention must not trust, every way
//! the trail can fail to start under `on_failure = "deny"`, and a forked child with no
//! file descriptor left.

mod common;

use common::raw::{self, Raw};
use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki_sys::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each trail line is JSON"))
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// C_OpenSession through the raw list.
fn open_session(l: &CK_FUNCTION_LIST) -> CK_RV {
    let slot = raw::slots(l)[0];
    let mut h: CK_SESSION_HANDLE = 0;
    // SAFETY (test): valid out-pointer.
    unsafe {
        (l.C_OpenSession.expect("f"))(slot, CKF_SERIAL_SESSION, std::ptr::null_mut(), None, &mut h)
    }
}

/// Under `deny`, with a trail that cannot start: C_Initialize succeeds (the module's
/// answer), every audited call from the first one on is refused, C_Finalize returns, and
/// the diagnostics say why. Runs the calls in a thread so a hang fails the test.
fn assert_deny_refuses_from_the_first_call(fx: &Fixture, why: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let raw = Raw::load(&keytrail_module());
        let l = raw.list();
        let init = raw::initialize(l);
        let opens: Vec<CK_RV> = (0..5).map(|_| open_session(l)).collect();
        let fin = raw::finalize(l);
        let _ = tx.send((init, opens, fin));
    });
    let (init, opens, fin) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the calls return");
    assert_eq!(init, CKR_OK, "C_Initialize is the module's answer");
    assert_eq!(
        opens,
        vec![CKR_FUNCTION_FAILED; 5],
        "every audited call is refused, the first one too"
    );
    assert_eq!(fin, CKR_OK);
    let diagnostics = fx.diagnostics();
    assert!(diagnostics.contains(why), "{why:?} not in: {diagnostics}");
}

fn deny_trail(trail: &Path) -> String {
    format!(
        "[trail]\npath = \"{}\"\non_failure = \"deny\"\n",
        trail.display()
    )
}

#[test]
fn a_linked_trail_directory_is_refused_and_nothing_reaches_its_target() {
    let fx = Fixture::new();
    let victim = fx.path().join("victim");
    std::fs::create_dir(&victim).expect("victim");
    let dir = fx.path().join("logs");
    std::os::unix::fs::symlink(&victim, &dir).expect("planted link");
    fx.configure(&deny_trail(&dir.join("keytrail.jsonl")));
    assert_deny_refuses_from_the_first_call(&fx, "is a symbolic link");
    assert!(
        fx.diagnostics().contains(&dir.display().to_string()),
        "names the directory"
    );
    assert!(
        names(&victim).is_empty(),
        "nothing written through the link"
    );
}

#[test]
fn a_directory_others_can_write_is_refused_unless_sticky_and_ours() {
    let fx = Fixture::new();
    let dir = fx.path().join("shared");
    std::fs::create_dir(&dir).expect("dir");
    chmod(&dir, 0o777);
    let trail = dir.join("keytrail.jsonl");
    fx.configure(&deny_trail(&trail));
    assert_deny_refuses_from_the_first_call(&fx, "mode 0777");
    let d = fx.diagnostics();
    assert!(
        d.contains(&dir.display().to_string()),
        "names the path: {d}"
    );
    // SAFETY (test): geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert!(d.contains(&format!("uid {me})")), "names the owner: {d}");
    assert!(!trail.exists(), "no trail in a directory others can change");
}

#[test]
fn an_own_sticky_directory_is_accepted() {
    let fx = Fixture::new();
    let dir = fx.path().join("sticky");
    std::fs::create_dir(&dir).expect("dir");
    chmod(&dir, 0o1777);
    let trail = dir.join("keytrail.jsonl");
    fx.configure(&deny_trail(&trail));
    let p = open(&keytrail_module());
    let s = user_session(&p);
    drop(s);
    p.finalize().expect("finalize");
    let r = records(&trail);
    assert!(r.iter().any(|r| record_action(r) == "login"), "{r:?}");
}

#[test]
fn another_users_directory_is_refused() {
    // SAFETY (test): geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Only root can give a directory to another user; trust.rs's unit tests cover
        // the rule itself.
        return;
    }
    let fx = Fixture::new();
    let dir = fx.path().join("theirs");
    std::fs::create_dir(&dir).expect("dir");
    chmod(&dir, 0o755);
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
    fx.configure(&deny_trail(&dir.join("keytrail.jsonl")));
    assert_deny_refuses_from_the_first_call(&fx, "belongs to another user");
    assert!(
        fx.diagnostics().contains("uid 65534)"),
        "{}",
        fx.diagnostics()
    );
}

#[test]
fn deny_with_a_linked_trail_file_refuses_from_the_first_call() {
    let fx = Fixture::new();
    let dir = fx.path().join("logs");
    std::fs::create_dir(&dir).expect("dir");
    chmod(&dir, 0o700);
    let victim = fx.path().join("victim.txt");
    std::fs::write(&victim, b"").expect("victim");
    let trail = dir.join("keytrail.jsonl");
    std::os::unix::fs::symlink(&victim, &trail).expect("planted link");
    fx.configure(&deny_trail(&trail));
    assert_deny_refuses_from_the_first_call(&fx, "is a symbolic link");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"");
}

#[test]
fn deny_with_a_key_file_that_cannot_key_refuses_from_the_first_call() {
    let fx = Fixture::new();
    // Private and ours, so the configuration accepts it; too short to be a key, so no
    // stream can start.
    let key = fx.path().join("short.key");
    std::fs::write(&key, b"short").expect("key");
    chmod(&key, 0o600);
    fx.configure(&format!(
        "{}[integrity]\nkey_file = \"{}\"\n",
        deny_trail(&fx.trail_path()),
        key.display()
    ));
    assert_deny_refuses_from_the_first_call(&fx, "holds 5 bytes");
    assert!(fx.trail().is_empty());
}

#[test]
fn deny_with_an_anchor_file_that_cannot_be_written_refuses_from_the_first_call() {
    let fx = Fixture::new();
    let victim = fx.path().join("victim.txt");
    std::fs::write(&victim, b"").expect("victim");
    let anchor = fx.path().join("heads.jsonl");
    std::os::unix::fs::symlink(&victim, &anchor).expect("planted link");
    fx.configure(&format!(
        "{}[integrity]\nanchor_file = \"{}\"\n",
        deny_trail(&fx.trail_path()),
        anchor.display()
    ));
    assert_deny_refuses_from_the_first_call(&fx, "the anchor file");
    assert_eq!(
        fx.diagnostics()
            .matches("cannot start the trail writer")
            .count(),
        1,
        "reported once, not once per refused call: {}",
        fx.diagnostics()
    );
    assert_eq!(std::fs::read(&victim).expect("victim"), b"");
    assert!(
        fx.trail().is_empty(),
        "no stream started without its anchor"
    );
}

/// Child of `deny_with_a_queue_that_cannot_be_allocated_refuses_calls`: under an address
/// space limit too small for the queue, initialises and calls.
#[test]
#[ignore = "run as a child process by deny_with_a_queue_that_cannot_be_allocated_refuses_calls"]
fn child_with_little_address_space() {
    let raw = Raw::load(&keytrail_module());
    let l = raw.list();
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let vm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize");
    // Room for the real module and the writer thread, not for a 98 MB queue.
    let limit = (vm_kb << 10) + (48 << 20);
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY (test): a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
    assert_eq!(raw::initialize(l), CKR_OK);
    let opens: Vec<CK_RV> = (0..3).map(|_| open_session(l)).collect();
    assert_eq!(opens, vec![CKR_FUNCTION_FAILED; 3]);
    assert_eq!(raw::finalize(l), CKR_OK);
}

#[test]
fn deny_with_a_queue_that_cannot_be_allocated_refuses_calls() {
    let fx = Fixture::new();
    fx.configure(&format!("{}queue = 262144\n", deny_trail(&fx.trail_path())));
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_with_little_address_space",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        // One malloc arena: each thread's own arena reserves 64 MB of address space.
        .env("MALLOC_ARENA_MAX", "1")
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "the child neither aborts nor fails: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let d = fx.diagnostics();
    assert!(d.contains("cannot be allocated"), "{d}");
}

#[test]
fn a_link_at_a_rotated_name_is_refused() {
    let fx = Fixture::new();
    let dir = fx.path().join("trail");
    std::fs::create_dir(&dir).expect("dir");
    chmod(&dir, 0o700);
    let victim = fx.path().join("victim.txt");
    std::fs::write(&victim, b"").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.join("keytrail.0001.jsonl")).expect("link");
    fx.configure(&format!(
        "[trail]\npath = \"{}\"\nmax_bytes = 4000\n",
        dir.join("keytrail.jsonl").display()
    ));
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 1);
    for _ in 0..10 {
        s.sign(&Mechanism::Sha256Hmac, key, b"data").expect("sign");
    }
    drop(s);
    p.finalize().expect("finalize");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"");
    assert!(
        fx.diagnostics().contains("is a symbolic link"),
        "{}",
        fx.diagnostics()
    );
}

fn genuine(dir: &Path, planted: &[&str]) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| !planted.contains(&n.as_str()))
        .collect()
}

#[test]
fn retention_keeps_planted_files_and_deletes_only_older_genuine_ones() {
    let fx = Fixture::new();
    let dir = fx.path().join("trail");
    std::fs::create_dir(&dir).expect("dir");
    chmod(&dir, 0o700);
    // Names that sort after every genuine one, one that keytrail never makes, and one
    // under a genuine-looking name that holds no trail.
    let planted = [
        "keytrail.9999.jsonl",
        "keytrail.zzzz.jsonl",
        "keytrail.99999.jsonl",
    ];
    for name in planted {
        std::fs::write(dir.join(name), b"planted\n").expect("plant");
    }
    fx.configure(&format!(
        "[trail]\npath = \"{}\"\nmax_bytes = 4000\nkeep = 3\n",
        dir.join("keytrail.jsonl").display()
    ));
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 2);
    // Small batches (the writer naps 1 ms between them), so that files rotate often.
    for _ in 0..60 {
        s.sign(&Mechanism::Sha256Hmac, key, b"data").expect("sign");
        std::thread::sleep(Duration::from_millis(3));
    }
    drop(s);
    p.finalize().expect("finalize");
    for name in planted {
        assert_eq!(
            std::fs::read(dir.join(name)).expect("planted file kept"),
            b"planted\n"
        );
    }
    let kept = genuine(&dir, &planted);

    assert_eq!(kept.len(), 3, "the three newest genuine files: {kept:?}");
    // The newest are kept, the file last written among them, and they continue one
    // another: the last ends with the stream's stop record.
    let indexes: Vec<u32> = kept
        .iter()
        .map(|n| {
            n["keytrail.".len()..n.len() - ".jsonl".len()]
                .parse()
                .expect("index")
        })
        .collect();
    assert!(indexes.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
    assert!(indexes[0] > 0, "older files were rotated away: {kept:?}");
    let last = records(&dir.join(kept.last().expect("newest")));
    assert_eq!(last.last().map(record_action), Some("trail_stop"));
}

/// The trail's files and their records, checking that none is empty.
fn rotated_files(dir: &Path) -> (Vec<String>, Vec<Value>) {
    let files = names(dir);
    for f in &files {
        let len = std::fs::metadata(dir.join(f)).expect("file").len();
        assert!(len > 0, "{f} is empty: {files:?}");
    }
    let all = files.iter().flat_map(|f| records(&dir.join(f))).collect();
    (files, all)
}

#[test]
fn size_rotation_leaves_no_empty_file() {
    let fx = Fixture::new();
    let dir = fx.path().join("trail");
    // Every record is larger than the limit, and without a writer thread each record is
    // written as it is made: each starts a file of its own.
    fx.configure(&format!(
        "[trail]\npath = \"{}\"\nmax_bytes = 1\n",
        dir.join("keytrail.jsonl").display()
    ));
    let raw = Raw::load(&keytrail_module());
    let l = raw.list();
    let mut args = raw::init_args();
    args.flags |= CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    // SAFETY (test): valid arguments.
    let rv = unsafe { (l.C_Initialize.expect("f"))(&mut args as *mut _ as CK_VOID_PTR) };
    assert_eq!(rv, CKR_OK);
    let expected =
        |n: usize| -> Vec<String> { (0..n).map(|i| format!("keytrail.{i:04}.jsonl")).collect() };
    let check = || {
        let (files, all) = rotated_files(&dir);
        // trail_start and initialize share the first file; every later record has one.
        assert_eq!(files, expected(all.len() - 1), "after each rotation");
    };
    for _ in 0..10 {
        let s = raw::open_rw(l);
        check();
        // SAFETY (test): a session we opened.
        assert_eq!(unsafe { (l.C_CloseSession.expect("f"))(s) }, CKR_OK);
        check();
    }
    assert_eq!(raw::finalize(l), CKR_OK);
    let (files, all) = rotated_files(&dir);
    assert_eq!(
        all.len(),
        2 + 20 + 2,
        "start, initialize, 10 × open and close, finalize, stop"
    );
    assert_eq!(files, expected(all.len() - 1));
    assert_eq!(all.last().map(record_action), Some("trail_stop"));
}

/// The open descriptors of this process.
fn open_descriptors() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
fn a_forked_child_with_no_descriptor_left_keeps_its_records() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 4);
    s.sign(&Mechanism::Sha256Hmac, key, b"parent")
        .expect("sign");
    // The writer has the trail open before the fork.
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(fx.trail_path()).is_ok_and(|t| t.contains("\"sign\"")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the parent's sign is written"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY (test): the child makes PKCS#11 calls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // No descriptor left: the limit is the highest one in use, and every free one
        // below it is taken.
        let highest = open_descriptors().into_iter().max().unwrap_or(2);
        let rl = libc::rlimit {
            rlim_cur: highest as u64 + 1,
            rlim_max: highest as u64 + 1,
        };
        // SAFETY (test): a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
        // SAFETY (test): a NUL-terminated path.
        while unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) } >= 0 {}
        let mut ok = 0;
        for i in 0..30u8 {
            if s.sign(&Mechanism::Sha256Hmac, key, &[i; 8]).is_ok() {
                ok += 1;
            }
        }
        std::mem::forget(s);
        let _ = p.finalize();
        // SAFETY (test): leave the child without running the parent's harness.
        unsafe { libc::_exit(if ok == 30 { 0 } else { 3 }) };
    }
    let mut status = 0;
    // SAFETY (test): waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(status, 0, "the child's calls were served");
    drop(s);
    p.finalize().expect("finalize");
    let trail = fx.trail();
    let child: Vec<&Value> = trail
        .iter()
        .filter(|r| r["process"]["pid"].as_u64() == Some(pid as u64))
        .collect();
    let signs = child.iter().filter(|r| record_action(r) == "sign").count() as u64;
    // The child's records are on the trail, or its loss is, with the right count.
    let lost: u64 = trail
        .iter()
        .filter(|r| matches!(record_action(r), "records_lost" | "records_dropped"))
        .filter_map(|r| r["keytrail"]["lost"].as_u64())
        .sum();
    assert_eq!(signs + lost.min(30), 30, "child records: {child:?}");
    assert_eq!(signs, 30, "the child wrote through its parent's descriptor");
    assert_eq!(child.first().map(|r| record_action(r)), Some("trail_start"));
    assert_eq!(child.last().map(|r| record_action(r)), Some("trail_stop"));
}
