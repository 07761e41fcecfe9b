//! Test harness: a fresh SoftHSM2 token per test in a temp dir, and the built
//! `libkeytrail.so` configured to forward to it.
//!
//! keytrail and SoftHSM both hold process-wide state, so each test runs in its own process
//! (cargo-nextest); environment variables set here affect only that test.

#![allow(dead_code)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const USER_PIN: &str = "1234";
pub const SO_PIN: &str = "5678";
pub const TOKEN_LABEL: &str = "keytrail-test";

/// Where SoftHSM2's module is, from `SOFTHSM2_MODULE` or the usual Debian paths.
pub fn softhsm_module() -> PathBuf {
    if let Some(p) = std::env::var_os("SOFTHSM2_MODULE") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("SoftHSM2 is not installed: run scripts/test.sh, which installs it");
}

/// The built `libkeytrail.so` next to this test binary's target directory.
pub fn keytrail_module() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/libkeytrail.so
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let so = profile_dir.join("libkeytrail.so");
    assert!(so.exists(), "{} not built", so.display());
    so
}

/// A scratch SoftHSM2 token store with one initialised token, and a keytrail
/// configuration forwarding to SoftHSM.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub softhsm_conf: PathBuf,
    pub keytrail_conf: PathBuf,
}

impl Fixture {
    /// Creates the token store and token, and points this process's `SOFTHSM2_CONF` and
    /// `KEYTRAIL_CONFIG` at them.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let softhsm_conf = init_softhsm_store(dir.path(), "softhsm");
        let keytrail_conf = dir.path().join("keytrail.toml");
        std::fs::write(
            &keytrail_conf,
            format!(
                "module = \"{}\"\ndiagnostics = \"{}\"\n[trail]\npath = \"{}\"\n",
                softhsm_module().display(),
                dir.path().join("diagnostics.log").display(),
                dir.path().join("trail").join("keytrail.jsonl").display()
            ),
        )
        .expect("write keytrail.toml");
        // SAFETY (test): each test is its own process and sets these before any thread
        // that reads the environment starts.
        unsafe {
            std::env::set_var("SOFTHSM2_CONF", &softhsm_conf);
            std::env::set_var("KEYTRAIL_CONFIG", &keytrail_conf);
            std::env::remove_var("KEYTRAIL_MODULE");
        }
        Fixture {
            dir,
            softhsm_conf,
            keytrail_conf,
        }
    }

    /// Points `SOFTHSM2_CONF` at a second, fresh token store (for direct-vs-keytrail
    /// comparisons that must start from identical state).
    pub fn fresh_store(&self, name: &str) -> PathBuf {
        let conf = init_softhsm_store(self.dir.path(), name);
        // SAFETY (test): as in `new`.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        conf
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Rewrites keytrail.toml: the module and diagnostics as in `new`, then `extra` (TOML
    /// text, e.g. `[trail]` and `[audit]` sections). Without a `[trail]` section in
    /// `extra`, the trail stays at [`Fixture::trail_path`].
    pub fn configure(&self, extra: &str) {
        let mut text = format!(
            "module = \"{}\"\ndiagnostics = \"{}\"\n",
            softhsm_module().display(),
            self.dir.path().join("diagnostics.log").display(),
        );
        if !extra.contains("[trail]") {
            text.push_str(&format!(
                "[trail]\npath = \"{}\"\n",
                self.trail_path().display()
            ));
        }
        text.push_str(extra);
        std::fs::write(&self.keytrail_conf, text).expect("write keytrail.toml");
    }

    /// A queue of one record that drops what does not fit (`on_full = "drop"`).
    pub fn configure_dropping_queue(&self) {
        self.configure(&format!(
            "[trail]\npath = \"{}\"\nqueue = 1\non_full = \"drop\"\n",
            self.trail_path().display()
        ));
    }

    /// The trail file.
    pub fn trail_path(&self) -> PathBuf {
        self.dir.path().join("trail").join("keytrail.jsonl")
    }

    /// Every record of the trail, parsed.
    pub fn trail(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.trail_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each trail line is JSON"))
            .collect()
    }

    /// keytrail's diagnostics file contents (empty if none were written).
    pub fn diagnostics(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("diagnostics.log")).unwrap_or_default()
    }
}

fn init_softhsm_store(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("write softhsm2.conf");
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN_LABEL,
            "--pin",
            USER_PIN,
            "--so-pin",
            SO_PIN,
        ])
        .output()
        .expect("softhsm2-util (install softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    conf
}

/// Four threads opening and closing 2,000 sessions each: 16,000 session records, more
/// than a small queue under `on_full = "drop"` can hold.
pub fn flood_sessions(p: &Pkcs11) {
    let slot = token_slot(p);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    drop(p.open_ro_session(slot).expect("open"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
}

/// Loads and initialises a PKCS#11 module through the cryptoki crate, the way a Rust
/// application would.
pub fn open(module: &Path) -> Pkcs11 {
    let p = Pkcs11::new(module).expect("load module");
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    p
}

/// Configures a one-record queue that drops when full, and opens and closes sessions from
/// four threads at once through keytrail until some records are dropped (then finalizes).
pub fn dropping_burst(fx: &Fixture) {
    fx.configure_dropping_queue();
    let p = open(&keytrail_module());
    flood_sessions(&p);
    p.finalize().expect("finalize");
}

/// The first slot with a token.
pub fn token_slot(p: &Pkcs11) -> Slot {
    *p.get_slots_with_token()
        .expect("slots")
        .first()
        .expect("a token")
}

/// A read-write session logged in as the user.
pub fn user_session(p: &Pkcs11) -> Session {
    let s = p.open_rw_session(token_slot(p)).expect("open session");
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");
    s
}

pub mod clients;
pub mod kryoptic;
pub mod raw;
pub mod transcript;

/// A session HMAC key (generic secret, 32 bytes of `byte`) that can sign.
pub fn hmac_key(s: &Session, byte: u8) -> cryptoki::object::ObjectHandle {
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sign(true),
        Attribute::Value(vec![byte; 32]),
    ])
    .expect("HMAC key")
}

/// A record's `event.action`.
pub fn record_action(r: &serde_json::Value) -> &str {
    r["event"]["action"].as_str().unwrap_or("")
}

/// Forks the test process; 0 in the child, the child's pid in the parent. The child must
/// leave with `_exit` or `exit`, never by returning into the test harness.
pub fn fork() -> libc::pid_t {
    // SAFETY (test): the child only makes PKCS#11 calls and then exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    pid
}

/// Waits for a child made by [`fork`] and checks that it exited with status 0.
pub fn wait_child(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY (test): waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(status, 0, "child exit status");
}

/// Forks after initialisation; the parent signs `parent` times and the child `child` times
/// (HMAC of 16 bytes) with `key` in the session they share, each then finalizes. Returns the
/// child's pid, once it has exited with status 0.
pub fn sign_in_parent_and_child(
    p: Pkcs11,
    s: Session,
    key: cryptoki::object::ObjectHandle,
    parent: usize,
    child: usize,
) -> libc::pid_t {
    use cryptoki::mechanism::Mechanism;
    let pid = fork();
    let n = if pid == 0 { child } else { parent };
    for i in 0..n {
        s.sign(&Mechanism::Sha256Hmac, key, &[i as u8; 16])
            .expect("sign");
    }
    if pid == 0 {
        std::mem::forget(s);
        let _ = p.finalize();
        // SAFETY (test): leave the child without running the parent's test harness.
        unsafe { libc::_exit(0) };
    }
    wait_child(pid);
    drop(s);
    p.finalize().expect("finalize");
    pid
}
