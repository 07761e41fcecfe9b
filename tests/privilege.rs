//! Never run someone else's code: a setuid program ignores the KEYTRAIL_* environment,
//! files that others can change are refused, and `keytrail doctor --pid` never loads what
//! another user's process names with more privileges than that process has.
//!
//! The setuid and doctor tests need root (to make a setuid-root program and to run
//! processes as `nobody`) and `setpriv`; elsewhere they say why they are skipped. Test
//! programs are built here from C with `cc`: a host that loads libkeytrail.so as an
//! application would, and an "evil" library whose constructor writes the effective uid
//! it ran with to a marker file.

mod common;

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOBODY: u32 = 65534;

const HOST_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    printf("euid=%d ruid=%d\n", (int)geteuid(), (int)getuid());
    fflush(stdout);
    if (argc < 2) return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen failed: %s\n", dlerror()); return 2; }
    unsigned long (*init)(void *) = (unsigned long (*)(void *))dlsym(h, "C_Initialize");
    if (!init) { printf("no C_Initialize\n"); return 2; }
    printf("C_Initialize=%#lx\n", init(NULL));
    return 0;
}
"#;

const EVIL_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    FILE *f = fopen(MARKER, "a");
    if (f) { fprintf(f, "euid=%d\n", (int)geteuid()); fclose(f); }
}
"#;

fn keytrail_bin() -> PathBuf {
    keytrail_module()
        .parent()
        .expect("target dir")
        .join("keytrail")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Compiles C source `src` with `cc` and `args` into `out`.
fn cc(src: &str, out: &Path, args: &[&str]) {
    let c = out.with_extension("c");
    std::fs::write(&c, src).expect("write C source");
    let o = Command::new("cc")
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(&c)
        .arg("-ldl")
        .output()
        .expect("cc (a C compiler is needed to build the test programs)");
    assert!(
        o.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A root-owned directory everyone may enter, with a sticky world-writable `marks/`
/// inside for the evil library's marker, and the evil library (root-owned, so that only
/// the environment gate, not the ownership check, stands between it and a process).
struct Stage {
    dir: tempfile::TempDir,
}

impl Stage {
    fn new() -> Stage {
        let dir = tempfile::tempdir().expect("dir");
        chmod(dir.path(), 0o755);
        let marks = dir.path().join("marks");
        std::fs::create_dir(&marks).expect("marks dir");
        chmod(&marks, 0o1777);
        let stage = Stage { dir };
        let define = format!("-DMARKER=\"{}\"", stage.marker().display());
        cc(
            EVIL_C,
            &stage.evil(),
            &["-shared", "-fPIC", define.as_str()],
        );
        chmod(&stage.evil(), 0o755);
        stage
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn evil(&self) -> PathBuf {
        self.path().join("evil.so")
    }

    fn marker(&self) -> PathBuf {
        self.path().join("marks").join("marker")
    }

    /// The effective uids the evil library's constructor ran with.
    fn marks(&self) -> Vec<String> {
        std::fs::read_to_string(self.marker())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A root-only file with known content.
    fn root_only(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, "root only\n").expect("write");
        chmod(&p, 0o600);
        p
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn setuid_program_ignores_the_keytrail_environment() {
    let (true, Some(setpriv)) = (is_root(), setpriv()) else {
        eprintln!("SKIPPED: needs root (to make a setuid-root program) and setpriv");
        return;
    };
    let stage = Stage::new();
    let lib = stage.path().join("libkeytrail.so");
    std::fs::copy(keytrail_module(), &lib).expect("copy libkeytrail.so");
    chmod(&lib, 0o755);
    let host = stage.path().join("host");
    cc(HOST_C, &host, &[]);
    let plain_host = stage.path().join("host-plain");
    std::fs::copy(&host, &plain_host).expect("copy host");
    chmod(&plain_host, 0o755);
    chmod(&host, 0o4755);
    let log = stage.root_only("root-only.log");
    let diag = stage.path().join("root-only.diag");
    let config = stage.path().join("evil.toml");
    std::fs::write(
        &config,
        format!(
            "module = \"{}\"\ndiagnostics = \"{}\"\n",
            stage.evil().display(),
            diag.display()
        ),
    )
    .expect("config");
    chmod(&config, 0o644);
    let run = |program: &Path| {
        Command::new(&setpriv)
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
            ])
            .arg(program)
            .arg(&lib)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KEYTRAIL_CONFIG", &config)
            .env("KEYTRAIL_MODULE", stage.evil())
            .env("KEYTRAIL_LOG", &log)
            .output()
            .expect("run the host through setpriv")
    };

    let o = run(&host);
    let out = text(&o);
    if !out.contains(&format!("euid=0 ruid={NOBODY}")) {
        eprintln!(
            "SKIPPED: the setuid bit did not take effect (nosuid mount or no_new_privs): {out}"
        );
        return;
    }
    assert!(
        stage.marks().is_empty(),
        "the user's module ran in the setuid process: {:?}\n{out}",
        stage.marks()
    );
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "root only\n",
        "{out}"
    );
    assert!(!diag.exists(), "diagnostics went to the user's file\n{out}");
    assert!(
        out.contains("KEYTRAIL_CONFIG, KEYTRAIL_MODULE, KEYTRAIL_LOG in the environment ignored"),
        "{out}"
    );
    assert!(out.contains("AT_SECURE"), "{out}");
    if !Path::new("/etc/keytrail/keytrail.toml").exists() {
        assert!(out.contains("C_Initialize=0x5"), "CKR_GENERAL_ERROR: {out}");
    }

    // The same program without the setuid bit honours the variables: the test would see
    // the module run.
    let o = run(&plain_host);
    assert_eq!(
        stage.marks(),
        vec![format!("euid={NOBODY}")],
        "control run: {}",
        text(&o)
    );
}

fn initialize(p: &Pkcs11) -> cryptoki::error::Result<()> {
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
}

/// Loads keytrail afresh (the module is loaded as early as C_GetInterface, and a load
/// that failed is tried again) and expects C_Initialize to fail with these words.
fn assert_refused(fx: &Fixture, parts: &[&str]) {
    let before = fx.diagnostics().len();
    let p = Pkcs11::new(keytrail_module()).expect("load keytrail");
    let r = initialize(&p);
    assert!(
        matches!(
            r,
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::GeneralError,
                _
            ))
        ),
        "C_Initialize should fail: {r:?}"
    );
    let diag = fx.diagnostics()[before..].to_string();
    for part in parts {
        assert!(diag.contains(part), "{part:?} in {diag}");
    }
}

#[test]
fn module_and_configuration_others_can_change_are_refused() {
    let fx = Fixture::new();
    let dir = fx.path().join("modules");
    std::fs::create_dir(&dir).expect("dir");
    chmod(&dir, 0o755);
    let module = dir.join("libsofthsm2.so");
    std::fs::copy(softhsm_module(), &module).expect("copy SoftHSM");
    chmod(&module, 0o755);
    std::fs::write(
        &fx.keytrail_conf,
        format!(
            "module = \"{}\"\ndiagnostics = \"{}\"\n[trail]\npath = \"{}\"\n",
            module.display(),
            fx.path().join("diagnostics.log").display(),
            fx.trail_path().display()
        ),
    )
    .expect("config");
    let module_s = module.display().to_string();
    let dir_s = dir.display().to_string();

    chmod(&module, 0o777);
    assert_refused(
        &fx,
        &[&module_s, "mode 0777", "group or others may write it"],
    );
    chmod(&module, 0o755);
    chmod(&dir, 0o775);
    assert_refused(
        &fx,
        &[&module_s, &format!("its directory {dir_s}"), "mode 0775"],
    );
    chmod(&dir, 0o755);
    if is_root() {
        std::os::unix::fs::chown(&module, Some(NOBODY), None).expect("chown");
        assert_refused(
            &fx,
            &[
                &module_s,
                &format!("uid {NOBODY}"),
                "belongs to another user",
            ],
        );
        std::os::unix::fs::chown(&module, Some(0), None).expect("chown");
    } else {
        eprintln!("(part skipped: a file of another user needs root to make)");
    }
    chmod(&fx.keytrail_conf, 0o666);
    assert_refused(
        &fx,
        &[
            &format!("configuration {}: refused", fx.keytrail_conf.display()),
            "mode 0666",
        ],
    );
    // Put right, the same files load.
    chmod(&fx.keytrail_conf, 0o644);
    let p = Pkcs11::new(keytrail_module()).expect("load keytrail");
    initialize(&p).expect("C_Initialize once the files are safe");
}

#[test]
fn doctor_never_loads_another_users_module_as_root() {
    let (true, Some(setpriv)) = (is_root(), setpriv()) else {
        eprintln!("SKIPPED: needs root (to run a process as another user) and setpriv");
        return;
    };
    let stage = Stage::new();
    let log = stage.root_only("root-only.log");
    let mut target = Command::new(&setpriv)
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "sleep",
            "600",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("KEYTRAIL_MODULE", stage.evil())
        .env("KEYTRAIL_LOG", &log)
        .spawn()
        .expect("start a process as nobody");
    let pid = target.id();
    // Wait for setpriv to have become `sleep` as nobody.
    let mut ready = false;
    for _ in 0..500 {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let o = Command::new(keytrail_bin())
        .args(["doctor", "--pid", &pid.to_string()])
        .output()
        .expect("run keytrail doctor");
    let _ = target.kill();
    let _ = target.wait();
    assert!(ready, "the target process did not start");
    let out = text(&o);
    assert!(
        !stage.marks().iter().any(|m| m == "euid=0"),
        "the other user's module ran as root: {:?}\n{out}",
        stage.marks()
    );
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "root only\n",
        "doctor wrote to a file the other user named\n{out}"
    );
    assert!(
        out.contains(&format!("runs as nobody (uid {NOBODY}")),
        "{out}"
    );
    // It was checked, as that user: the module ran with the process's own uid.
    assert_eq!(stage.marks(), vec![format!("euid={NOBODY}")], "{out}");
    assert!(
        out.contains("FAIL"),
        "the trail is not writable by nobody: {out}"
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
}
