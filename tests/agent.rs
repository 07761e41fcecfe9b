//! `keytrail agent` (issue 9): the trail written by a separate process. Each test starts
//! the real agent binary in the foreground in a temp dir, loads the built libkeytrail.so
//! in agent mode through cryptoki, and reads the agent's trail.

mod common;

use common::*;
use cryptoki::mechanism::Mechanism;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running agent.
struct Agent {
    child: Child,
    socket: PathBuf,
    trail: PathBuf,
}

fn keytrail_bin() -> PathBuf {
    keytrail_module().with_file_name("keytrail")
}

impl Agent {
    /// Starts `keytrail agent --foreground` with its socket and trail under `dir`, and
    /// waits until it listens.
    fn start(dir: &Path) -> Agent {
        Self::start_with(dir, "")
    }

    /// As [`Agent::start`], with `extra` sections appended to its configuration.
    fn start_with(dir: &Path, extra: &str) -> Agent {
        Self::start_at(dir, "agent", 8192, extra)
    }

    /// As [`Agent::start_with`], with its configuration in `NAME.toml`, its trail in
    /// `NAME-trail/` and rings of `slots` slots.
    fn start_at(dir: &Path, name: &str, slots: usize, extra: &str) -> Agent {
        let socket = dir.join("run").join("agent.sock");
        let trail = dir.join(format!("{name}-trail")).join("trail.jsonl");
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[agent]\nsocket = \"{}\"\nring_slots = {slots}\n[trail]\npath = \"{}\"\n{extra}",
                socket.display(),
                trail.display()
            ),
        )
        .expect("agent configuration");
        Self::spawn(&config, socket, trail)
    }

    fn spawn(config: &Path, socket: PathBuf, trail: PathBuf) -> Agent {
        let mut child = Command::new(keytrail_bin())
            .args(["agent", "--foreground", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("agent output");
        assert!(line.contains("listening"), "agent said: {line}");
        Agent {
            child,
            socket,
            trail,
        }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY (test): signalling our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(&mut self) -> Vec<Value> {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("wait for the agent");
        assert!(status.success(), "agent exit: {status}");
        self.records()
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.trail)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points the library at the agent.
fn agent_mode(fx: &Fixture, agent: &Agent, extra: &str) {
    agent_at(fx, &agent.socket, extra);
}

/// Points the library at an agent's socket, whether or not one listens there; `extra`
/// goes in `[trail]`.
fn agent_at(fx: &Fixture, socket: &Path, extra: &str) {
    fx.configure(&format!(
        "[trail]\nmode = \"agent\"\nagent_socket = \"{}\"\npath = \"{}\"\n{extra}",
        socket.display(),
        fx.trail_path().display()
    ));
}

fn of<'a>(records: &'a [Value], action: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| record_action(r) == action)
        .collect()
}

fn pid_of(r: &Value) -> u64 {
    r["process"]["pid"].as_u64().expect("pid")
}

/// `keytrail verify` on the agent's trail: exit status 0.
fn verify(trail: &Path) {
    let out = Command::new(keytrail_bin())
        .arg("verify")
        .arg(trail)
        .output()
        .expect("keytrail verify");
    assert!(
        out.status.success(),
        "verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").expect("tasks").count()
}

/// A fixture, an agent, the library in agent mode, a user session and an HMAC key.
fn with_agent(
    key_byte: u8,
) -> (
    Fixture,
    Agent,
    cryptoki::context::Pkcs11,
    cryptoki::session::Session,
    cryptoki::object::ObjectHandle,
) {
    let fx = Fixture::new();
    let agent = Agent::start(fx.path());
    agent_mode(&fx, &agent, "");
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, key_byte);
    (fx, agent, p, s, key)
}

#[test]
fn records_arrive_in_order_with_kernel_identity_and_verify() {
    let fx = Fixture::new();
    let mut agent = Agent::start(fx.path());
    agent_mode(&fx, &agent, "");
    let before = threads();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 3);
    for i in 0..300usize {
        s.sign(&Mechanism::Sha256Hmac, key, &vec![1u8; i + 1])
            .expect("sign");
    }
    assert_eq!(
        threads(),
        before,
        "agent mode starts no thread in the process"
    );
    drop(s);
    p.finalize().expect("finalize");
    let records = agent.stop();
    let me = std::process::id() as u64;
    let signs = of(&records, "sign");
    assert_eq!(signs.len(), 300);
    let lens: Vec<u64> = signs
        .iter()
        .map(|r| r["pkcs11"]["data"]["in_len"].as_u64().expect("in_len"))
        .collect();
    assert_eq!(lens, (1..=300).collect::<Vec<u64>>(), "in call order");
    // SAFETY (test): getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    for r in &signs {
        assert_eq!(pid_of(r), me);
        assert_eq!(r["user"]["id"], uid.to_string());
        assert_eq!(r["group"]["id"], gid.to_string());
        assert_eq!(r["observer"]["type"], "keytrail-agent");
        assert!(
            r["process"]["executable"]
                .as_str()
                .is_some_and(|e| Path::new(e) == std::env::current_exe().expect("exe"))
        );
    }
    // One chain: the agent's start first, its stop last, the process's stream between.
    let actions: Vec<&str> = records.iter().map(record_action).collect();
    assert_eq!(actions.first(), Some(&"trail_start"));
    assert_eq!(actions.last(), Some(&"trail_stop"));
    for a in [
        "client_connected",
        "client_start",
        "client_stop",
        "client_end",
    ] {
        assert_eq!(of(&records, a).len(), 1, "{a}");
    }
    let end = of(&records, "client_end")[0];
    assert_eq!(end["keytrail"]["how"], "C_Finalize");
    assert_eq!(end["event"]["outcome"], "success");
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| r["event"]["sequence"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
    verify(&agent.trail);
    assert!(!fx.trail_path().exists(), "no embedded trail");
}

#[test]
fn a_sigkilled_client_loses_nothing_it_had_written() {
    let (_fx, mut agent, p, s, key) = with_agent(5);
    let (mut to_parent, mut to_child) = ([0i32; 2], [0i32; 2]);
    // SAFETY (test): two fresh pipes.
    unsafe {
        assert_eq!(libc::pipe(to_parent.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(to_child.as_mut_ptr()), 0);
    }
    const N: usize = 700;
    let child = fork();
    let byte = |fd: i32, write: bool| {
        let mut b = [1u8];
        // SAFETY (test): a one-byte buffer on a pipe end this process holds.
        let n = unsafe {
            if write {
                libc::write(fd, b.as_ptr().cast(), 1)
            } else {
                libc::read(fd, b.as_mut_ptr().cast(), 1)
            }
        };
        assert_eq!(n, 1);
    };
    if child == 0 {
        // Connect (the first record), let the parent stop the agent, then write N records
        // that only the ring holds when the process dies.
        s.sign(&Mechanism::Sha256Hmac, key, &[0; 8]).expect("sign");
        byte(to_parent[1], true);
        byte(to_child[0], false);
        for i in 0..N {
            s.sign(&Mechanism::Sha256Hmac, key, &vec![2; i + 1])
                .expect("sign");
        }
        byte(to_parent[1], true);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    byte(to_parent[0], false);
    agent.signal(libc::SIGSTOP);
    byte(to_child[1], true);
    byte(to_parent[0], false);
    // SAFETY (test): killing and reaping our own child.
    unsafe {
        assert_eq!(libc::kill(child, libc::SIGKILL), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(child, &mut status, 0), child);
    }
    agent.signal(libc::SIGCONT);
    drop(s);
    p.finalize().expect("finalize");
    let records = agent.stop();
    let child_signs: Vec<u64> = of(&records, "sign")
        .iter()
        .filter(|r| pid_of(r) == child as u64)
        .map(|r| r["pkcs11"]["data"]["in_len"].as_u64().expect("in_len"))
        .collect();
    let mut want = vec![8u64];
    want.extend(1..=N as u64);
    assert_eq!(
        child_signs, want,
        "every record the killed process wrote, in order"
    );
    let end = of(&records, "client_end")
        .into_iter()
        .find(|r| pid_of(r) == child as u64)
        .expect("the child's end");
    assert_eq!(end["keytrail"]["how"], "connection_lost");
    assert_eq!(end["event"]["outcome"], "failure");
    verify(&agent.trail);
}

#[test]
fn two_processes_share_one_chain_and_a_forked_child_gets_its_own_ring() {
    let (_fx, mut agent, p, s, key) = with_agent(7);
    let pid = sign_in_parent_and_child(p, s, key, 100, 150);
    let records = agent.stop();
    let count = |want: u64| {
        of(&records, "sign")
            .iter()
            .filter(|r| pid_of(r) == want)
            .count()
    };
    assert_eq!(count(std::process::id() as u64), 100);
    assert_eq!(count(pid as u64), 150);
    let streams: std::collections::BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["integrity"]["stream"].as_str())
        .collect();
    assert_eq!(streams.len(), 1, "one chain for both processes");
    let connected: Vec<u64> = of(&records, "client_connected")
        .iter()
        .map(|r| pid_of(r))
        .collect();
    assert_eq!(connected, vec![std::process::id() as u64, pid as u64]);
    let child_end = of(&records, "client_end")
        .into_iter()
        .find(|r| pid_of(r) == pid as u64)
        .expect("child's end");
    assert_eq!(child_end["keytrail"]["how"], "C_Finalize");
    let child_start = of(&records, "client_start")
        .into_iter()
        .find(|r| pid_of(r) == pid as u64)
        .expect("child's start");
    assert_eq!(
        child_start["keytrail"]["forked_from"],
        std::process::id() as u64
    );
    verify(&agent.trail);
}

#[test]
fn a_process_that_exits_without_finalize_is_recorded_as_exit() {
    let (_fx, mut agent, p, s, key) = with_agent(9);
    let pid = fork();
    if pid == 0 {
        s.sign(&Mechanism::Sha256Hmac, key, &[0; 16]).expect("sign");
        // exit() runs keytrail's exit handler, which ends the stream; no C_Finalize.
        std::process::exit(0);
    }
    wait_child(pid);
    drop(s);
    p.finalize().expect("finalize");
    let records = agent.stop();
    let end = of(&records, "client_end")
        .into_iter()
        .find(|r| pid_of(r) == pid as u64)
        .expect("the child's end");
    assert_eq!(end["keytrail"]["how"], "exit");
    assert_eq!(end["event"]["outcome"], "success");
}

/// Retries what SoftHSM's file store refuses now and then (CKR_GENERAL_ERROR,
/// CKR_TOKEN_NOT_RECOGNIZED) while several processes open sessions and log in at once.
fn retry<T, E: std::fmt::Debug>(mut f: impl FnMut() -> Result<T, E>) -> T {
    let mut last = None;
    for _ in 0..50 {
        match f() {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("still failing: {last:?}");
}

/// One process of the load: logs in, then `threads` threads sign `signs` times each, with
/// inputs of 1, 2, … bytes; true when all went well.
fn busy_process(threads: usize, signs: usize) -> bool {
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    let login = retry(|| p.open_rw_session(slot));
    let pin = cryptoki::types::AuthPin::new(USER_PIN.into());
    retry(|| login.login(cryptoki::session::UserType::User, Some(&pin)));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let s = retry(|| p.open_rw_session(slot));
                let key = hmac_key(&s, t as u8 + 1);
                for i in 0..signs {
                    s.sign(&Mechanism::Sha256Hmac, key, &vec![0; i + 1])
                        .expect("sign");
                }
            })
        })
        .collect();
    let ok = workers.into_iter().all(|w| w.join().is_ok());
    drop(login);
    p.finalize().is_ok() && ok
}

#[test]
fn eight_processes_of_four_threads_keep_exact_counts_and_order() {
    const PROCESSES: usize = 8;
    const THREADS: usize = 4;
    const SIGNS: usize = 300;
    let fx = Fixture::new();
    let mut agent = Agent::start(fx.path());
    agent_mode(&fx, &agent, "");
    let children: Vec<libc::pid_t> = (0..PROCESSES)
        .map(|i| {
            // A token store each: SoftHSM's file store, shared by eight processes logging
            // in and making keys at once, now and then leaves a process with its token
            // unrecognized for good. The agent's side is the same either way.
            fx.fresh_store(&format!("process{i}"));
            let pid = fork();
            if pid == 0 {
                // A failure must not unwind into the test (whose values, the agent among
                // them, this process shares): it is the exit status.
                let ok = std::panic::catch_unwind(|| busy_process(THREADS, SIGNS));
                let ok = ok.unwrap_or(false);
                // SAFETY (test): leave the child without running the test harness.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            pid
        })
        .collect();
    for c in &children {
        wait_child(*c);
    }
    let records = agent.stop();
    let mut lens: std::collections::HashMap<(u64, u64), Vec<u64>> = Default::default();
    for r in of(&records, "sign") {
        let tid = r["process"]["thread"]["id"].as_u64().expect("tid");
        let len = r["pkcs11"]["data"]["in_len"].as_u64().expect("in_len");
        lens.entry((pid_of(r), tid)).or_default().push(len);
    }
    assert_eq!(
        lens.len(),
        PROCESSES * THREADS,
        "every thread of every process"
    );
    for ((pid, tid), l) in &lens {
        assert!(children.contains(&(*pid as libc::pid_t)));
        assert_eq!(
            l,
            &(1..=SIGNS as u64).collect::<Vec<_>>(),
            "process {pid} thread {tid}: every record, in order"
        );
    }
    verify(&agent.trail);
}

#[test]
fn sighup_reopens_the_trail_after_a_rename_and_sigterm_ends_the_chain() {
    let fx = Fixture::new();
    let mut agent = Agent::start(fx.path());
    agent_mode(&fx, &agent, "");
    one_signature();
    // The ring is drained at C_Finalize; the batch reaches the file just after.
    let since = std::time::Instant::now();
    while of(&agent.records(), "client_stop").is_empty() {
        assert!(
            since.elapsed().as_secs() < 30,
            "the first records never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rotated = agent.trail.with_extension("jsonl.1");
    std::fs::rename(&agent.trail, &rotated).expect("rotate");
    agent.signal(libc::SIGHUP);
    // Reopened: the agent no longer holds the renamed file open.
    let holds_rotated = || {
        std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
            .expect("agent fds")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|t| t == rotated)
    };
    let since = std::time::Instant::now();
    while holds_rotated() {
        assert!(
            since.elapsed().as_secs() < 30,
            "the agent kept the old file"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    one_signature();
    let after = agent.stop();
    let before: Vec<Value> = std::fs::read_to_string(&rotated)
        .expect("rotated file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(of(&before, "sign").len(), 1);
    assert_eq!(
        of(&after, "sign").len(),
        1,
        "the second process's records, in the new file"
    );
    assert_eq!(after.last().map(record_action), Some("trail_stop"));
    assert!(
        of(&after, "trail_reopened").is_empty(),
        "a requested reopen is no loss"
    );
}

#[test]
fn hostile_ring_contents_become_malformed_records_naming_the_pid() {
    use keytrail::agent::client::Connection;
    let fx = Fixture::new();
    let mut agent = Agent::start(fx.path());
    let conn = Connection::connect(&agent.socket, Some("hostile")).expect("connect");
    let mut rng = fastrand::Rng::with_seed(99);
    let mut junk = 0;
    for _ in 0..200 {
        let bytes: Vec<u8> = (0..rng.usize(0..2000)).map(|_| rng.u8(..)).collect();
        if conn.push_raw(&bytes) {
            junk += 1;
        }
    }
    // A well-formed record claiming to be the chain's own stop, and one honest record.
    let clock = keytrail::agent::wire::Clock::now();
    let mut buf = Vec::new();
    let forged =
        keytrail::audit::event::Event::audit("checkpoint", "forged".into(), serde_json::json!({}));
    keytrail::agent::wire::encode(&forged, &clock, &mut buf);
    assert!(conn.push_raw(&buf));
    let mut honest = keytrail::audit::event::Event::audit(
        "library_info",
        "honest".into(),
        serde_json::json!({}),
    );
    honest.thread_id = 1;
    keytrail::agent::wire::encode(&honest, &clock, &mut buf);
    assert!(conn.push_raw(&buf));
    assert!(
        conn.flush(std::time::Duration::from_secs(10)),
        "the agent drains"
    );
    // A second, honest process is unaffected.
    agent_mode(&fx, &agent, "");
    one_signature();
    drop(conn);
    let records = agent.stop();
    let me = std::process::id() as u64;
    let malformed = of(&records, "malformed_record");
    assert!(
        malformed.len() >= junk.min(100) / 2,
        "{} of {junk}",
        malformed.len()
    );
    assert!(malformed.iter().all(|r| pid_of(r) == me));
    assert!(
        of(&records, "checkpoint").is_empty(),
        "a forged checkpoint is refused"
    );
    assert_eq!(
        of(&records, "library_info").len(),
        1,
        "the honest record is kept"
    );
    assert_eq!(of(&records, "sign").len(), 1);
    verify(&agent.trail);
}

/// Loads the library, signs once, finalizes.
fn one_signature() {
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 1);
    s.sign(&Mechanism::Sha256Hmac, key, &[0; 4]).expect("sign");
    drop(s);
    p.finalize().expect("finalize");
}

/// Agent mode with no agent listening; `extra` goes in `[trail]`.
fn agent_missing(fx: &Fixture, extra: &str) {
    agent_at(fx, &fx.path().join("nobody.sock"), extra);
}

#[test]
fn agent_unavailable_under_deny_refuses_audited_calls() {
    let fx = Fixture::new();
    agent_missing(&fx, "on_failure = \"deny\"\n");
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    let err = p
        .open_rw_session(slot)
        .expect_err("refused without the agent");
    assert!(format!("{err:?}").contains("FunctionFailed"), "{err:?}");
    p.finalize().expect("finalize");
    assert!(
        fx.diagnostics().contains("cannot be reached"),
        "{}",
        fx.diagnostics()
    );
}

#[test]
fn agent_unavailable_continue_falls_back_to_the_embedded_writer() {
    let fx = Fixture::new();
    agent_missing(&fx, "");
    one_signature();
    let trail = fx.trail();
    let start = of(&trail, "trail_start");
    assert_eq!(start.len(), 1);
    assert!(
        start[0]["keytrail"]["agent_unavailable"]
            .as_str()
            .is_some_and(|m| m.contains("nobody.sock"))
    );
    assert_eq!(of(&trail, "sign").len(), 1);
}

#[test]
fn another_uid_can_neither_write_nor_delete_the_trail_and_is_recorded_as_itself() {
    // SAFETY (test): geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a process as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new();
    // The socket must be reachable by anyone (as /run/keytrail is); the trail stays the
    // agent's alone.
    std::fs::set_permissions(fx.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut agent = Agent::start(fx.path());
    const NOBODY: u32 = 65534;
    let pid = fork();
    if pid == 0 {
        // SAFETY (test): dropping privileges in the forked child, which then exits.
        let dropped = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(NOBODY, NOBODY, NOBODY) == 0
                && libc::setresuid(NOBODY, NOBODY, NOBODY) == 0
        };
        let code = if !dropped {
            10
        } else if std::fs::OpenOptions::new()
            .append(true)
            .open(&agent.trail)
            .is_ok()
        {
            11
        } else if std::fs::remove_file(&agent.trail).is_ok() {
            12
        } else {
            match keytrail::agent::client::Connection::connect(&agent.socket, None) {
                Err(_) => 13,
                Ok(conn) => {
                    let e = keytrail::audit::event::Event::audit(
                        "library_info",
                        "as nobody".into(),
                        serde_json::json!({}),
                    );
                    let mut buf = Vec::new();
                    let clock = keytrail::agent::wire::Clock::now();
                    keytrail::agent::wire::encode(&e, &clock, &mut buf);
                    if conn.push_raw(&buf) && conn.flush(std::time::Duration::from_secs(10)) {
                        0
                    } else {
                        14
                    }
                }
            }
        };
        // SAFETY (test): leave the child without running the test harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY (test): reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "{status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "10: could not drop privileges, 11: opened the trail for writing, 12: deleted it, \
         13: could not connect, 14: record not drained"
    );
    let records = agent.stop();
    let mine = of(&records, "library_info");
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["user"]["id"], NOBODY.to_string());
    assert_eq!(mine[0]["group"]["id"], NOBODY.to_string());
    assert_eq!(pid_of(mine[0]), pid as u64);
    verify(&agent.trail);
}

#[test]
fn an_agent_restart_loses_nothing_already_in_a_ring() {
    let (fx, mut first, p, s, key) = with_agent(4);
    for i in 0..10usize {
        s.sign(&Mechanism::Sha256Hmac, key, &vec![0; i + 1])
            .expect("sign");
    }
    // The first agent dies abruptly; the process goes on filling its ring, unaware.
    assert!(fx.diagnostics().is_empty(), "{}", fx.diagnostics());
    first.child.kill().expect("kill the agent");
    first.child.wait().expect("reap the agent");
    for i in 10..300usize {
        s.sign(&Mechanism::Sha256Hmac, key, &vec![0; i + 1])
            .expect("sign");
    }
    let mut second = Agent::spawn(
        &fx.path().join("agent.toml"),
        first.socket.clone(),
        first.trail.clone(),
    );
    drop(s);
    // C_Finalize flushes the ring: the agent is gone, so the process hands its ring to the
    // one now listening, which drains it from where the first one stopped.
    p.finalize().expect("finalize");
    let records = second.stop();
    let me = std::process::id() as u64;
    let lens: Vec<u64> = of(&records, "sign")
        .iter()
        .filter(|r| pid_of(r) == me)
        .map(|r| r["pkcs11"]["data"]["in_len"].as_u64().expect("in_len"))
        .collect();
    assert_eq!(
        lens,
        (1..=300).collect::<Vec<u64>>(),
        "nothing lost, nothing twice"
    );
    let resumed: Vec<&Value> = of(&records, "client_connected")
        .into_iter()
        .filter(|r| r["keytrail"]["resumed"] == true)
        .collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(pid_of(resumed[0]), me);
    assert!(
        fx.diagnostics().contains("reconnected"),
        "{}",
        fx.diagnostics()
    );
}

/// `[seal]` in the agent: a token key, made with `keytrail seal-key`, signs each checkpoint
/// head and the `trail_stop`. The agent is a PKCS#11 application of its own, so the
/// audited process's login state is untouched (its C_Login succeeds, not
/// CKR_USER_ALREADY_LOGGED_IN); the agent's login is a `seal_login` record, and
/// `verify --seal-key` accepts every seal with no unsealed tail.
#[test]
fn the_agent_seals_its_checkpoints_with_a_token_key() {
    use std::os::unix::fs::PermissionsExt;
    // A PIN no hash, time or count on the trail could contain by chance ("1234" can).
    const SEAL_PIN: &str = "seal-PIN-q7Zx";
    let fx = Fixture::new();
    let module = softhsm_module();
    {
        let direct = open(&module);
        let s = user_session(&direct);
        s.set_pin(
            &cryptoki::types::AuthPin::new(USER_PIN.into()),
            &cryptoki::types::AuthPin::new(SEAL_PIN.into()),
        )
        .expect("set the user PIN");
        drop(s);
        direct.finalize().expect("finalize");
    }
    let pin = fx.path().join("seal.pin");
    std::fs::write(&pin, format!("{SEAL_PIN}\n")).expect("pin file");
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let pem = fx.path().join("seal.pem");
    let out = Command::new(keytrail_bin())
        .args(["seal-key", "--module"])
        .arg(&module)
        .args([
            "--token",
            TOKEN_LABEL,
            "--label",
            "agent-seal",
            "--pin-file",
        ])
        .arg(&pin)
        .arg("--out")
        .arg(&pem)
        .output()
        .expect("keytrail seal-key");
    assert!(out.status.success(), "{out:?}");

    let mut agent = Agent::start_with(
        fx.path(),
        &format!(
            "[integrity]\ncheckpoint_interval = \"1s\"\n[seal]\nmodule = \"{}\"\n\
             token_label = \"{TOKEN_LABEL}\"\nkey_label = \"agent-seal\"\npin_file = \"{}\"\n",
            module.display(),
            pin.display()
        ),
    );
    agent_mode(&fx, &agent, "");
    let p = open(&keytrail_module());
    // Logs in as the user: it would fail if the agent's login were the application's.
    let s = p.open_rw_session(token_slot(&p)).expect("open session");
    s.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::new(SEAL_PIN.into())),
    )
    .expect("login");
    let key = hmac_key(&s, 0x5e);
    for _ in 0..3 {
        s.sign(&Mechanism::Sha256Hmac, key, b"sealed")
            .expect("sign");
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    s.sign(&Mechanism::Sha256Hmac, key, b"sealed")
        .expect("sign");
    drop(s);
    p.finalize().expect("finalize");
    let records = agent.stop();

    let logins = of(&records, "seal_login");
    assert_eq!(logins.len(), 1, "one login of the sealer");
    assert_eq!(logins[0]["event"]["outcome"], "success");
    assert!(
        !serde_json::to_string(&records)
            .expect("json")
            .contains(SEAL_PIN)
    );
    let sealed: Vec<&Value> = records
        .iter()
        .filter(|r| r["keytrail"]["seal"]["sig"].is_string())
        .collect();
    assert!(sealed.len() >= 2, "a checkpoint and the stop are sealed");
    assert_eq!(
        record_action(records.last().expect("records")),
        "trail_stop"
    );
    assert!(records.last().expect("stop")["keytrail"]["seal"]["sig"].is_string());
    assert_eq!(of(&records, "sign").len(), 4);

    let out = Command::new(keytrail_bin())
        .args(["verify", "--json", "--seal-key"])
        .arg(&pem)
        .arg(&agent.trail)
        .output()
        .expect("keytrail verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let v: Value = serde_json::from_str(&text).expect("verify --json");
    assert_eq!(
        v["streams"][0]["seal"]["valid_seals"].as_u64(),
        Some(sealed.len() as u64),
        "{text}"
    );
    assert_eq!(v["streams"][0]["seal"]["unsealed_tail"], 0, "{text}");
}

/// `[[syslog]]` in the agent: every record of the host's chain, sealed, also goes to a
/// collector (here the local transport, to a datagram socket the test reads; the TCP and
/// TLS transports are tested against rsyslog in tests/syslog.rs). Each message carries its
/// record byte for byte, in the chain's order, with the stream and seq in its structured
/// data.
#[test]
fn the_agent_forwards_its_chain_to_a_syslog_collector() {
    use std::os::unix::net::UnixDatagram;
    let fx = Fixture::new();
    let collector_path = fx.path().join("collector.sock");
    let collector = UnixDatagram::bind(&collector_path).expect("collector socket");
    collector
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .expect("timeout");
    // Read as a collector does, while the agent runs: a datagram socket's queue is short.
    let reader = std::thread::spawn(move || {
        let mut received = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = collector.recv(&mut buf) {
            received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        received
    });
    let mut agent = Agent::start_with(
        fx.path(),
        &format!(
            "[[syslog]]\ntransport = \"local\"\npath = \"{}\"\n",
            collector_path.display()
        ),
    );
    agent_mode(&fx, &agent, "");
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 0x51);
    for _ in 0..5 {
        s.sign(&Mechanism::Sha256Hmac, key, b"forwarded")
            .expect("sign");
    }
    drop(s);
    p.finalize().expect("finalize");
    agent.stop();
    let lines: Vec<String> = std::fs::read_to_string(&agent.trail)
        .expect("trail")
        .lines()
        .map(str::to_string)
        .collect();
    // The reader stops after 3 s without a message.
    let received = reader.join().expect("reader");
    assert_eq!(
        received.len(),
        lines.len(),
        "one message per record, no more"
    );
    for (line, msg) in lines.iter().zip(&received) {
        assert!(msg.starts_with('<'), "{msg}");
        assert!(msg.ends_with(line.as_str()), "{msg}\nshould carry\n{line}");
        let r: Value = serde_json::from_str(line).expect("record");
        let sd = format!(
            "stream=\"{}\" seq=\"{}\"",
            r["integrity"]["stream"].as_str().expect("stream"),
            r["integrity"]["seq"]
        );
        assert!(msg.contains(&sd), "{msg}");
    }
    assert_eq!(
        of(
            &lines
                .iter()
                .map(|l| serde_json::from_str(l).expect("json"))
                .collect::<Vec<Value>>(),
            "sign"
        )
        .len(),
        5
    );
}

/// The `in_len` of each `sign` record of this process in `records`, in their order.
fn my_sign_lens(records: &[Value]) -> Vec<u64> {
    let me = std::process::id() as u64;
    of(records, "sign")
        .iter()
        .filter(|r| pid_of(r) == me)
        .map(|r| r["pkcs11"]["data"]["in_len"].as_u64().expect("in_len"))
        .collect()
}

/// Signs with inputs of `*n + 1` bytes, one every 20 ms, until the diagnostics file
/// says `what` (at most 30 s); returns how many it signed.
fn sign_until(
    fx: &Fixture,
    s: &cryptoki::session::Session,
    key: cryptoki::object::ObjectHandle,
    n: &mut usize,
    what: &str,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !fx.diagnostics().contains(what) {
        assert!(
            std::time::Instant::now() < deadline,
            "never said {what:?}: {}",
            fx.diagnostics()
        );
        *n += 1;
        s.sign(&Mechanism::Sha256Hmac, key, &vec![0; *n])
            .expect("sign");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits (at most 20 s) until `agent` has written `count` of this process's signatures to
/// its trail. (A record the agent has taken from the ring but not yet written is lost
/// when it is killed: the tests kill it only once its trail holds what it took.)
fn written_by(agent: &Agent, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let written = || -> Vec<Value> {
        // A line being written as it is read is not counted yet.
        std::fs::read_to_string(&agent.trail)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    while my_sign_lens(&written()).len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never wrote them"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Signs 20 times, waits until the agent has written them, and kills it; returns it to
/// read its trail.
fn signed_then_killed<'a>(
    agent: &'a Agent,
    s: &cryptoki::session::Session,
    key: cryptoki::object::ObjectHandle,
    n: &mut usize,
) -> &'a Agent {
    sign_more(s, key, n, 20);
    written_by(agent, 20);
    // SAFETY (test): killing our own child, reaped when `agent` is dropped.
    assert_eq!(unsafe { libc::kill(agent.pid(), libc::SIGKILL) }, 0);
    let mut status = 0;
    // SAFETY (test): waiting for our own child.
    assert_eq!(
        unsafe { libc::waitpid(agent.pid(), &mut status, 0) },
        agent.pid()
    );
    agent
}

/// The fallback trail's first record says why the process fell back: `why`.
fn fell_back_because(trail: &[Value], why: &str) {
    let said = trail[0]["keytrail"]["agent_unavailable"].as_str();
    assert!(said.is_some_and(|r| r.contains(why)), "{said:?}");
}

/// The signatures of the killed agent's trail, then those of the fallback trail, are
/// calls 1 to `n`: nothing lost, nothing twice.
fn every_call_once(agent: &[Value], fallback: &[Value], n: usize) {
    let mut all = my_sign_lens(agent);
    all.extend(my_sign_lens(fallback));
    assert_eq!(
        all,
        (1..=n as u64).collect::<Vec<u64>>(),
        "nothing lost, nothing twice"
    );
}

/// Signs `count` more times, with inputs of `*n + 1`, … bytes.
fn sign_more(
    s: &cryptoki::session::Session,
    key: cryptoki::object::ObjectHandle,
    n: &mut usize,
    count: usize,
) {
    for _ in 0..count {
        *n += 1;
        s.sign(&Mechanism::Sha256Hmac, key, &vec![0; *n])
            .expect("sign");
    }
}

/// The fallback trail's story: one stream per fallback, each starting with
/// `agent_unavailable` and ending with `trail_stop` (`agent_returned`) whose `records`
/// counts the process's records in it; returns those counts.
fn fallback_streams(trail: &[Value]) -> Vec<u64> {
    let mut counts = Vec::new();
    let mut inside: Option<u64> = None;
    for r in trail {
        match record_action(r) {
            "trail_start" => {
                assert!(inside.is_none(), "a stream starts inside another");
                assert!(r["keytrail"]["agent_unavailable"].as_str().is_some(), "{r}");
                inside = Some(0);
            }
            "trail_stop" => {
                let n = inside.take().expect("a stop ends a stream");
                assert_eq!(r["keytrail"]["reason"], "agent_returned", "{r}");
                assert_eq!(r["keytrail"]["records"].as_u64(), Some(n), "{r}");
                counts.push(n);
            }
            "checkpoint" => {}
            _ => *inside.as_mut().expect("records inside a stream") += 1,
        }
    }
    assert!(inside.is_none(), "the last fallback stream ended");
    counts
}

/// The library loaded in agent mode, pointed at where [`Agent::start`] will listen, with
/// no agent there yet; `extra` goes in `[trail]`.
fn agent_to_come(extra: &str) -> (Fixture, cryptoki::context::Pkcs11) {
    let fx = Fixture::new();
    agent_at(&fx, &fx.path().join("run").join("agent.sock"), extra);
    let p = open(&keytrail_module());
    (fx, p)
}

#[test]
fn a_process_that_fell_back_returns_to_the_agent_and_both_trails_say_so() {
    let (fx, p) = agent_to_come("");
    let s = user_session(&p);
    let key = hmac_key(&s, 6);
    let mut n = 0;
    sign_more(&s, key, &mut n, 20);
    let with_writer = threads();
    let mut agent = Agent::start(fx.path());
    // The process looks for the agent on a call, at most once a second.
    sign_until(&fx, &s, key, &mut n, "records to it again");
    assert_eq!(
        threads(),
        with_writer - 1,
        "the embedded writer's thread has ended"
    );
    sign_more(&s, key, &mut n, 30);
    drop(s);
    p.finalize().expect("finalize");
    let records = agent.stop();
    let trail = fx.trail();
    // Everything before the return is in the fallback trail, everything after in the
    // agent's: each call once, in order.
    let before = my_sign_lens(&trail);
    let after = my_sign_lens(&records);
    assert!(before.len() >= 20, "{}", before.len());
    assert!(after.len() >= 30, "{}", after.len());
    assert_eq!(
        before.iter().chain(&after).copied().collect::<Vec<u64>>(),
        (1..=n as u64).collect::<Vec<u64>>(),
        "nothing lost, nothing twice"
    );
    let counts = fallback_streams(&trail);
    assert_eq!(counts.len(), 1);
    let me = std::process::id() as u64;
    let connected: Vec<&Value> = of(&records, "client_connected")
        .into_iter()
        .filter(|r| pid_of(r) == me)
        .collect();
    assert_eq!(connected.len(), 1);
    let fell_back = &connected[0]["keytrail"]["fell_back"];
    assert_eq!(
        fell_back["records"].as_u64(),
        Some(counts[0]),
        "{fell_back}"
    );
    assert_eq!(
        fell_back["path"].as_str(),
        Some(fx.trail_path().to_str().expect("utf-8"))
    );
    assert!(
        fell_back["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot be reached")),
        "{fell_back}"
    );
    assert!(fell_back["since"].as_str().is_some(), "{fell_back}");
    assert!(fell_back["seconds"].as_u64().is_some(), "{fell_back}");
    // The process's own stream goes on in the agent's trail as usual.
    assert_eq!(
        of(&records, "client_stop")
            .iter()
            .filter(|r| pid_of(r) == me)
            .count(),
        1
    );
    verify(&fx.trail_path());
    verify(&agent.trail);
}

#[test]
fn an_agent_gone_for_good_is_replaced_by_the_embedded_writer_until_it_returns() {
    let (fx, first, p, s, key) = with_agent(7);
    let mut n = 0;
    let first = signed_then_killed(&first, &s, key, &mut n);
    // The process goes on into its ring, then (past the grace period) falls back.
    sign_until(&fx, &s, key, &mut n, "went away");
    sign_until(&fx, &s, key, &mut n, "with the embedded writer");
    sign_more(&s, key, &mut n, 10);
    // The second agent writes a trail of its own: the first one's ends unclosed (killed).
    let mut second = Agent::start_at(fx.path(), "second", 8192, "");
    sign_until(&fx, &s, key, &mut n, "records to it again");
    sign_more(&s, key, &mut n, 30);
    drop(s);
    p.finalize().expect("finalize");
    let records = second.stop();
    let trail = fx.trail();
    let mut in_agent = my_sign_lens(&first.records());
    in_agent.extend(my_sign_lens(&records));
    let in_fallback = my_sign_lens(&trail);
    // The agent's trail holds the calls before the fallback (those still in the ring when
    // the first agent died are drained by the second), the fallback trail the calls
    // between, then the agent's again: each call exactly once.
    let split = in_agent
        .iter()
        .position(|l| Some(l) > in_fallback.first())
        .expect("calls after the return");
    let mut all: Vec<u64> = in_agent[..split].to_vec();
    all.extend(&in_fallback);
    all.extend(&in_agent[split..]);
    assert_eq!(
        all,
        (1..=n as u64).collect::<Vec<u64>>(),
        "nothing lost, nothing twice"
    );
    assert!(in_fallback.len() >= 10, "{}", in_fallback.len());
    let counts = fallback_streams(&trail);
    assert_eq!(counts.len(), 1);
    fell_back_because(&trail, "went away");
    let me = std::process::id() as u64;
    let resumed: Vec<&Value> = of(&records, "client_connected")
        .into_iter()
        .filter(|r| pid_of(r) == me && r["keytrail"]["resumed"] == true)
        .collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        resumed[0]["keytrail"]["fell_back"]["records"].as_u64(),
        Some(counts[0])
    );
    verify(&fx.trail_path());
    verify(&second.trail);
}

#[test]
fn a_user_sending_novel_names_spends_its_own_quota_not_the_agents_table() {
    use keytrail::agent::client::Connection;
    const NOVEL: usize = 5000;
    /// Sends `count` records, each with a name no other record has, from `from` on.
    fn send_novel(conn: &Connection, from: usize, count: usize) {
        let clock = keytrail::agent::wire::Clock::now();
        let mut buf = Vec::new();
        for i in from..from + count {
            let action: &'static str = Box::leak(format!("novel_{i}").into_boxed_str());
            let e = keytrail::audit::event::Event::audit(action, "x".into(), serde_json::json!({}));
            keytrail::agent::wire::encode(&e, &clock, &mut buf);
            while !conn.push_raw(&buf) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert!(conn.flush(std::time::Duration::from_secs(20)));
    }
    let fx = Fixture::new();
    let mut agent = Agent::start(fx.path());
    let conn = Connection::connect(&agent.socket, Some("hostile")).expect("connect");
    send_novel(&conn, 0, NOVEL);
    drop(conn);
    // Connecting again (as another process of the same user would) gives no new quota.
    let again = Connection::connect(&agent.socket, Some("hostile again")).expect("connect");
    send_novel(&again, NOVEL, 10);
    // Another process's records, with names new to the table, are unaffected.
    agent_mode(&fx, &agent, "");
    one_signature();
    drop(again);
    let records = agent.stop();
    let quota = keytrail::agent::wire::NAMES_PER_UID;
    let malformed = of(&records, "malformed_record");
    assert!(!malformed.is_empty());
    assert!(
        malformed.iter().all(|r| r["keytrail"]["reason"]
            .as_str()
            .is_some_and(|w| w.contains("quota"))),
        "{malformed:?}"
    );
    let ends: Vec<_> = of(&records, "client_end")
        .into_iter()
        .filter(|r| r["keytrail"]["malformed"].as_u64() > Some(0))
        .collect();
    assert_eq!(ends.len(), 2, "{ends:?}");
    // The second connection's ten names were all refused.
    assert_eq!(ends[1]["keytrail"]["malformed"].as_u64(), Some(10));
    assert_eq!(ends[1]["keytrail"]["records"].as_u64(), Some(0));
    let hostile_end = &ends[0];
    // Its quota went to its novel names (and to the few names of the record layout the
    // table did not hold yet), the rest are malformed.
    let refused = hostile_end["keytrail"]["malformed"]
        .as_u64()
        .expect("count") as usize;
    assert!(
        (NOVEL - quota..NOVEL - quota + 8).contains(&refused),
        "{refused}"
    );
    assert_eq!(
        hostile_end["keytrail"]["records"].as_u64(),
        Some((NOVEL - refused) as u64)
    );
    assert_eq!(
        of(&records, "sign").len(),
        1,
        "the other process is unaffected"
    );
    verify(&agent.trail);
}

#[test]
fn under_deny_calls_are_refused_until_the_agent_listens_then_recorded_by_it() {
    let (fx, p) = agent_to_come("on_failure = \"deny\"\n");
    let slot = token_slot(&p);
    for _ in 0..100 {
        assert!(
            p.open_rw_session(slot).is_err(),
            "refused without the agent"
        );
    }
    let mut agent = Agent::start(fx.path());
    // The connection is retried at most once a second: calls succeed soon after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let s = loop {
        match p.open_rw_session(slot) {
            Ok(s) => break s,
            Err(_) => assert!(std::time::Instant::now() < deadline, "still refused"),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(s);
    p.finalize().expect("finalize");
    let records = agent.stop();
    assert_eq!(of(&records, "session_open").len(), 1);
    assert!(fx.trail().is_empty(), "no embedded trail under deny");
    assert_eq!(
        fx.diagnostics().matches("cannot be reached").count(),
        1,
        "reported once: {}",
        fx.diagnostics()
    );
    verify(&agent.trail);
}

#[test]
fn threads_calling_across_the_return_keep_their_order_and_counts() {
    const THREADS: usize = 4;
    const SPAN: u64 = 10_000;
    let (fx, p) = agent_to_come("");
    let slot = token_slot(&p);
    let login = user_session(&p);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let s = p.open_rw_session(slot).expect("session");
                let key = hmac_key(&s, t as u8 + 1);
                let mut n = 0u64;
                // Each thread's inputs: SPAN·t + 1, + 2, …, one call a millisecond at most.
                while n < SPAN - 1 && (!stop.load(std::sync::atomic::Ordering::Relaxed) || n < 50) {
                    n += 1;
                    let len = (SPAN * t as u64 + n) as usize;
                    s.sign(&Mechanism::Sha256Hmac, key, &vec![0; len])
                        .expect("sign");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                n
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut agent = Agent::start(fx.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !fx.diagnostics().contains("records to it again") {
        assert!(std::time::Instant::now() < deadline, "{}", fx.diagnostics());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut counts = Vec::with_capacity(THREADS);
    for w in workers {
        counts.push(w.join().expect("worker"));
    }
    drop(login);
    p.finalize().expect("finalize");
    let (trail, records) = (fx.trail(), agent.stop());
    let (before, after) = (my_sign_lens(&trail), my_sign_lens(&records));
    for (t, &n) in counts.iter().enumerate() {
        let base = SPAN * t as u64;
        let mine = |lens: &[u64]| -> Vec<u64> {
            lens.iter()
                .filter(|&&l| (base + 1..base + SPAN).contains(&l))
                .map(|l| l - base)
                .collect()
        };
        let mut all = mine(&before);
        let switched_at = all.len();
        all.extend(mine(&after));
        let first_wrong = all.iter().zip(1..).position(|(&l, i)| l != i);
        assert!(
            first_wrong.is_none() && all.len() as u64 == n,
            "thread {t}: {} of {n} calls recorded, switched after {switched_at}, first out of \
             order at {first_wrong:?}",
            all.len()
        );
    }
    let total: u64 = counts.iter().sum();
    assert_eq!((before.len() + after.len()) as u64, total);
    assert!(!before.is_empty() && !after.is_empty());
    assert_eq!(fallback_streams(&trail).len(), 1);
    verify(&fx.trail_path());
    verify(&agent.trail);
}

#[test]
fn a_bad_note_in_a_returning_hello_is_refused_and_the_agent_serves_on() {
    use std::io::{Read, Write};
    let fx = Fixture::new();
    let mut agent = Agent::start(fx.path());
    let notes: [&[u8]; 3] = [
        b"{not json",
        br#"{"since":1,"reason":"r","path":"p","records":2}"#,
        br#"{"since":"s","reason":"r","path":"p","records":-1}"#,
    ];
    for note in notes {
        let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
        let mut hello = keytrail::agent::HELLO_NOTED.to_vec();
        hello.extend([0u8, 0u8]);
        hello.extend((note.len() as u16).to_le_bytes());
        hello.extend(note);
        s.write_all(&hello).expect("hello");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(answer.is_empty(), "no ring for a bad hello");
    }
    // A note longer than allowed: refused before it is read.
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let mut hello = keytrail::agent::HELLO_NOTED.to_vec();
    hello.extend([0u8, 0, 0xff, 0xff]);
    s.write_all(&hello).expect("hello");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.is_empty());
    agent_mode(&fx, &agent, "");
    one_signature();
    let records = agent.stop();
    assert_eq!(of(&records, "sign").len(), 1);
    assert!(
        of(&records, "client_connected")
            .iter()
            .all(|r| r["keytrail"].get("fell_back").is_none())
    );
    verify(&agent.trail);
}

#[test]
fn a_process_of_another_record_layout_is_refused_at_the_hello_and_the_agent_serves_on() {
    use std::io::{Read, Write};
    let fx = Fixture::new();
    let mut agent = Agent::start(fx.path());
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let mut hello = keytrail::agent::HELLO.to_vec();
    hello.push(0);
    hello.extend((keytrail::agent::wire::LAYOUT ^ 1).to_le_bytes());
    s.write_all(&hello).expect("hello");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let mut refused = keytrail::agent::WELCOME.to_vec();
    refused.extend(keytrail::agent::OTHER_LAYOUT.to_le_bytes());
    assert_eq!(answer, refused, "refused, and no ring");
    // The agent serves a process of its own layout on.
    agent_mode(&fx, &agent, "");
    one_signature();
    let records = agent.stop();
    assert_eq!(of(&records, "sign").len(), 1);
    verify(&agent.trail);
}

#[test]
fn records_left_in_the_ring_of_a_dead_agent_go_to_the_embedded_writer_at_finalize() {
    let (fx, first, p, s, key) = with_agent(8);
    let mut n = 0;
    let first = signed_then_killed(&first, &s, key, &mut n);
    // Within the grace period: into the ring, which no agent takes over.
    sign_more(&s, key, &mut n, 30);
    drop(s);
    p.finalize().expect("finalize");
    let trail = fx.trail();
    every_call_once(&first.records(), &trail, n);
    fell_back_because(&trail, "held records");
    assert_eq!(
        of(&trail, "trail_start").len(),
        1,
        "the ring's own start is not repeated"
    );
    assert_eq!(
        of(&trail, "trail_stop")
            .last()
            .map(|r| r["keytrail"]["reason"].clone()),
        Some(Value::from("C_Finalize"))
    );
    verify(&fx.trail_path());
}

#[test]
fn a_full_ring_whose_agent_is_gone_falls_back_at_once() {
    let fx = Fixture::new();
    let first = Agent::start_at(fx.path(), "small", 64, "");
    agent_mode(&fx, &first, "");
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = hmac_key(&s, 9);
    let mut n = 0;
    let first = signed_then_killed(&first, &s, key, &mut n);
    // Far more than the ring holds, well within the grace period.
    let started = std::time::Instant::now();
    sign_more(&s, key, &mut n, 300);
    let quick = started.elapsed() < std::time::Duration::from_secs(4);
    drop(s);
    p.finalize().expect("finalize");
    let trail = fx.trail();
    if quick {
        fell_back_because(&trail, "ring is full");
    }
    every_call_once(&first.records(), &trail, n);
    verify(&fx.trail_path());
}

#[test]
fn session_summaries_cross_the_ring_with_exact_counts() {
    let fx = Fixture::new();
    let mut agent = Agent::start(fx.path());
    agent_mode(
        &fx,
        &agent,
        "[audit]\nsessions = \"summary\"\nsummary_interval = 3600\n",
    );
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    let held = p.open_rw_session(slot).expect("held");
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || {
                for _ in 0..400 {
                    drop(p.open_ro_session(slot).expect("open"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let bad = cryptoki::slot::Slot::try_from(0x7777_u64).expect("slot id");
    p.open_ro_session(bad).expect_err("no such slot");
    drop(held);
    p.finalize().expect("finalize");
    let records = agent.stop();
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["process"]["pid"] == std::process::id())
        .collect();
    let sums: Vec<&&Value> = mine
        .iter()
        .filter(|r| record_action(r) == "session_summary")
        .collect();
    assert_eq!(sums.len(), 1, "{mine:#?}");
    let s = &sums[0]["pkcs11"]["sessions"];
    assert_eq!(
        (&s["opened"], &s["opened_rw"], &s["closed"], &s["open"]),
        (&1201.into(), &1.into(), &1201.into(), &0.into()),
        "{s:#}"
    );
    assert!(
        s["max_open"].as_u64().is_some_and(|m| (2..=4).contains(&m)),
        "{s:#}"
    );
    let others: Vec<(&str, &str)> = mine
        .iter()
        .filter(|r| r["pkcs11"]["lifecycle"] == "session" && record_action(r) != "session_summary")
        .map(|r| {
            (
                record_action(r),
                r["pkcs11"]["rv_name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(others, [("session_open", "CKR_SLOT_ID_INVALID")]);
    verify(&agent.trail);
}
