//! Configuration and loading errors: C_Initialize returns CKR_GENERAL_ERROR (or exactly
//! what the real module returned), every other call CKR_CRYPTOKI_NOT_INITIALIZED, the
//! diagnostic names the file, key and problem, and nothing crashes.
//!
//! keytrail's stderr is only observable from outside the process, so most cases run
//! [`child_initialize`] (an ignored test of this binary) as a child process with the
//! environment under test, and check its report and its stderr.

mod common;
use common::raw::{self, Raw};
use common::*;

use cryptoki_sys::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Child side: calls keytrail's C ABI in the environment it was given and prints one
/// `KT name=value` line per call.
#[test]
#[ignore = "child process of the other tests in this file"]
fn child_initialize() {
    let module = std::env::var_os("KT_CHILD_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(keytrail_module);
    let lib = Raw::load(&module);
    let l = lib.list();
    let report = |name: &str, rv: CK_RV| println!("KT {name}={rv:#x}");
    let mut n: CK_ULONG = 0;
    // SAFETY (test): valid pointers throughout.
    unsafe {
        report(
            "C_GetSlotList",
            (l.C_GetSlotList.expect("fn"))(CK_TRUE, std::ptr::null_mut(), &mut n),
        );
        report("C_Initialize", raw::initialize(l));
        report(
            "C_GetSlotList",
            (l.C_GetSlotList.expect("fn"))(CK_TRUE, std::ptr::null_mut(), &mut n),
        );
        let mut info: CK_INFO = std::mem::zeroed();
        report("C_GetInfo", (l.C_GetInfo.expect("fn"))(&mut info));
        let mut h: CK_SESSION_HANDLE = 0;
        report(
            "C_OpenSession",
            (l.C_OpenSession.expect("fn"))(
                0,
                CKF_SERIAL_SESSION,
                std::ptr::null_mut(),
                None,
                &mut h,
            ),
        );
        report(
            "C_SignInit",
            (l.C_SignInit.expect("fn"))(1, std::ptr::null_mut(), 1),
        );
        report("C_Finalize", raw::finalize(l));
        // A second attempt is not answered from a cache.
        report("C_Initialize", raw::initialize(l));
    }
    println!("KT done=1");
}

/// What a child run reported.
struct ChildRun {
    calls: Vec<(String, CK_RV)>,
    stderr: String,
    success: bool,
}

impl ChildRun {
    fn rv(&self, name: &str) -> Vec<CK_RV> {
        self.calls
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, rv)| *rv)
            .collect()
    }

    /// The lines keytrail wrote to stderr.
    fn keytrail_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("keytrail: "))
            .collect()
    }
}

/// Runs [`child_initialize`] with `env` (None removes a variable) on top of a clean
/// environment for keytrail.
fn child(env: &[(&str, Option<&Path>)]) -> ChildRun {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["child_initialize", "--exact", "--ignored", "--nocapture"]);
    cmd.env_remove("KEYTRAIL_MODULE")
        .env_remove("KEYTRAIL_CONFIG");
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let calls: Vec<(String, CK_RV)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("KT "))
        .filter_map(|l| l.split_once('='))
        .map(|(n, v)| {
            let v = CK_RV::from_str_radix(v.trim_start_matches("0x"), 16).expect("rv");
            (n.to_string(), v)
        })
        .collect();
    let run = ChildRun {
        calls,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
    };
    assert!(
        run.success && run.rv("done") == vec![1],
        "child crashed or failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        run.stderr
    );
    run
}

/// The common shape of a load failure: C_Initialize fails with CKR_GENERAL_ERROR both
/// times, everything else answers CKR_CRYPTOKI_NOT_INITIALIZED, and each C_Initialize
/// produced exactly one diagnostic (returned, for the caller to check its wording).
fn assert_load_failure(run: &ChildRun) -> String {
    assert_eq!(run.rv("C_Initialize"), vec![CKR_GENERAL_ERROR; 2]);
    for f in ["C_GetInfo", "C_OpenSession", "C_SignInit", "C_Finalize"] {
        assert_eq!(run.rv(f), vec![CKR_CRYPTOKI_NOT_INITIALIZED], "{f}");
    }
    assert_eq!(
        run.rv("C_GetSlotList"),
        vec![CKR_CRYPTOKI_NOT_INITIALIZED; 2]
    );
    let lines = run.keytrail_lines();
    assert_eq!(lines.len(), 2, "one diagnostic per attempt: {lines:?}");
    assert_eq!(lines[0], lines[1], "both attempts report the same problem");
    assert!(
        lines[0].starts_with("keytrail: C_Initialize returns CKR_GENERAL_ERROR: "),
        "{lines:?}"
    );
    lines[0].to_string()
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("absent.toml");
    let run = child(&[("KEYTRAIL_CONFIG", Some(&missing))]);
    let msg = assert_load_failure(&run);
    assert_eq!(
        msg,
        format!(
            "keytrail: C_Initialize returns CKR_GENERAL_ERROR: configuration {}: cannot be read: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn no_configuration_at_all() {
    assert!(
        !Path::new("/etc/keytrail/keytrail.toml").exists(),
        "this test needs /etc/keytrail/keytrail.toml to be absent"
    );
    let run = child(&[]);
    let msg = assert_load_failure(&run);
    assert_eq!(
        msg,
        "keytrail: C_Initialize returns CKR_GENERAL_ERROR: configuration /etc/keytrail/keytrail.toml: the file does not exist and KEYTRAIL_MODULE is not set, so there is no real PKCS#11 module to load; create it or set KEYTRAIL_CONFIG"
    );
}

#[test]
fn empty_keytrail_config_variable_means_default_path() {
    assert!(!Path::new("/etc/keytrail/keytrail.toml").exists());
    let run = child(&[("KEYTRAIL_CONFIG", Some(Path::new("")))]);
    let msg = assert_load_failure(&run);
    assert!(msg.contains("/etc/keytrail/keytrail.toml"), "{msg}");
}

#[test]
fn malformed_toml() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = write_config(dir.path(), "k.toml", "# keytrail\nmodule = \"/x/y.so\n");
    let run = child(&[("KEYTRAIL_CONFIG", Some(&conf))]);
    let msg = assert_load_failure(&run);
    let prefix = format!(
        "keytrail: C_Initialize returns CKR_GENERAL_ERROR: configuration {}",
        conf.display()
    );
    assert!(msg.starts_with(&prefix), "{msg}");
    assert!(msg.contains("line 2, column"), "{msg}");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = write_config(
        dir.path(),
        "k.toml",
        &format!(
            "module = \"{}\"\n\nmodul = \"/typo.so\"\n",
            softhsm_module().display()
        ),
    );
    let run = child(&[("KEYTRAIL_CONFIG", Some(&conf))]);
    let msg = assert_load_failure(&run);
    let prefix = format!(
        "keytrail: C_Initialize returns CKR_GENERAL_ERROR: configuration {}, key `modul`: line 3, column 1: unknown field `modul`",
        conf.display()
    );
    assert!(msg.starts_with(&prefix), "{msg}");
}

#[test]
fn wrong_value_type_names_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = write_config(dir.path(), "k.toml", "module = 42\n");
    let run = child(&[("KEYTRAIL_CONFIG", Some(&conf))]);
    let msg = assert_load_failure(&run);
    assert!(msg.contains(", key `module`: line 1"), "{msg}");
}

#[test]
fn config_without_module() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = write_config(dir.path(), "k.toml", "# nothing here\n");
    let run = child(&[("KEYTRAIL_CONFIG", Some(&conf))]);
    let msg = assert_load_failure(&run);
    assert_eq!(
        msg,
        format!(
            "keytrail: C_Initialize returns CKR_GENERAL_ERROR: configuration {}, key `module`: no real PKCS#11 module is named; set `module = \"/path/to/module.so\"` or KEYTRAIL_MODULE",
            conf.display()
        )
    );
}

/// A valid configuration naming `module`, with a diagnostics file; returns the child run
/// and the diagnostics file contents.
fn run_with_module(module: &Path) -> (ChildRun, String) {
    let dir = tempfile::tempdir().expect("dir");
    let diag = dir.path().join("diag.log");
    let conf = write_config(
        dir.path(),
        "k.toml",
        &format!(
            "module = \"{}\"\ndiagnostics = \"{}\"\n",
            module.display(),
            diag.display()
        ),
    );
    let run = child(&[("KEYTRAIL_CONFIG", Some(&conf))]);
    let written = std::fs::read_to_string(&diag).unwrap_or_default();
    (run, written)
}

/// The diagnostics file holds exactly what went to stderr.
fn assert_diagnostics_file_matches(run: &ChildRun, file: &str) {
    let lines: Vec<&str> = file.lines().collect();
    assert_eq!(lines, run.keytrail_lines(), "diagnostics file vs stderr");
}

#[test]
fn module_path_missing() {
    let module = Path::new("/nonexistent/libnothing.so");
    let (run, file) = run_with_module(module);
    let msg = assert_load_failure(&run);
    assert!(
        msg.starts_with(
            "keytrail: C_Initialize returns CKR_GENERAL_ERROR: the real PKCS#11 module /nonexistent/libnothing.so cannot be loaded: "
        ),
        "{msg}"
    );
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert_diagnostics_file_matches(&run, &file);
}

#[test]
fn module_is_not_a_shared_library() {
    let dir = tempfile::tempdir().expect("dir");
    let fake = dir.path().join("fake.so");
    std::fs::write(&fake, "this is not an ELF file, just text\n".repeat(10)).expect("write");
    let (run, file) = run_with_module(&fake);
    let msg = assert_load_failure(&run);
    assert!(
        msg.starts_with(&format!(
            "keytrail: C_Initialize returns CKR_GENERAL_ERROR: the real PKCS#11 module {} cannot be loaded: ",
            fake.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("invalid ELF header"), "{msg}");
    assert_diagnostics_file_matches(&run, &file);
}

/// A shared library that exists on this system but is not a PKCS#11 module.
fn non_pkcs11_library() -> PathBuf {
    for p in [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1",
        "/usr/lib/aarch64-linux-gnu/libz.so.1",
        "/lib64/libz.so.1",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no libz.so.1 found");
}

#[test]
fn module_is_a_library_but_not_pkcs11() {
    let lib = non_pkcs11_library();
    let (run, file) = run_with_module(&lib);
    let msg = assert_load_failure(&run);
    assert_eq!(
        msg,
        format!(
            "keytrail: C_Initialize returns CKR_GENERAL_ERROR: {} is not a usable PKCS#11 module: it exports neither C_GetFunctionList nor C_GetInterface",
            lib.display()
        )
    );
    assert_diagnostics_file_matches(&run, &file);
}

#[test]
fn module_is_keytrail_itself() {
    let me = keytrail_module();
    let (run, file) = run_with_module(&me);
    let msg = assert_load_failure(&run);
    assert_eq!(
        msg,
        format!(
            "keytrail: C_Initialize returns CKR_GENERAL_ERROR: {} is not a usable PKCS#11 module: it is keytrail itself (or a copy of it); name the real module instead",
            me.display()
        )
    );
    assert_diagnostics_file_matches(&run, &file);
}

#[test]
fn module_is_keytrail_through_a_symlink() {
    let dir = tempfile::tempdir().expect("dir");
    let link = dir.path().join("libvendor-pkcs11.so");
    std::os::unix::fs::symlink(keytrail_module(), &link).expect("symlink");
    let (run, _) = run_with_module(&link);
    let msg = assert_load_failure(&run);
    assert!(
        msg.ends_with("it is keytrail itself (or a copy of it); name the real module instead"),
        "{msg}"
    );
}

#[test]
fn keytrail_module_variable_overrides_a_broken_file_module() {
    let fx = Fixture::new();
    let dir = fx.path();
    let conf = write_config(dir, "k.toml", "module = \"/nonexistent.so\"\n");
    let run = child(&[
        ("KEYTRAIL_CONFIG", Some(&conf)),
        ("KEYTRAIL_MODULE", Some(&softhsm_module())),
        ("SOFTHSM2_CONF", Some(&fx.softhsm_conf)),
    ]);
    assert_eq!(run.rv("C_Initialize"), vec![CKR_OK, CKR_OK]);
    assert_eq!(
        run.rv("C_GetSlotList"),
        vec![CKR_CRYPTOKI_NOT_INITIALIZED, CKR_OK]
    );
    assert_eq!(run.rv("C_Finalize"), vec![CKR_OK]);
    assert!(run.keytrail_lines().is_empty(), "{}", run.stderr);
}

#[test]
fn softhsm_initialize_failure_is_passed_through_unchanged() {
    let fx = Fixture::new();
    let missing = fx.path().join("no-such-softhsm2.conf");
    let env = [
        ("KEYTRAIL_CONFIG", Some(fx.keytrail_conf.as_path())),
        ("SOFTHSM2_CONF", Some(missing.as_path())),
    ];
    // Directly against SoftHSM, then through keytrail, each in its own process.
    let softhsm = softhsm_module();
    let mut direct_env = env.to_vec();
    direct_env.push(("KT_CHILD_MODULE", Some(softhsm.as_path())));
    let direct = child(&direct_env);
    let through = child(&env);
    assert_eq!(direct.rv("C_Initialize"), vec![CKR_GENERAL_ERROR; 2]);
    assert_eq!(
        through.calls, direct.calls,
        "keytrail changed SoftHSM's answers"
    );
    // keytrail says which module failed, on stderr and in its diagnostics file.
    let expected = format!(
        "keytrail: the real module {} returned CKR_GENERAL_ERROR from C_Initialize",
        softhsm.display()
    );
    assert_eq!(through.keytrail_lines(), vec![expected.as_str(); 2]);
    let file = fx.diagnostics();
    assert_eq!(file.lines().collect::<Vec<_>>(), vec![expected.as_str(); 2]);
    // SoftHSM itself logs to syslog, not stderr: the direct run prints nothing of ours.
    assert!(direct.keytrail_lines().is_empty(), "{}", direct.stderr);
}

#[test]
fn fixing_the_configuration_and_retrying_succeeds() {
    let fx = Fixture::new();
    let conf = fx.path().join("later.toml");
    // SAFETY (test): one process per test; no other thread reads the environment.
    unsafe { std::env::set_var("KEYTRAIL_CONFIG", &conf) };
    let lib = Raw::load(&keytrail_module());
    let l = lib.list();
    assert_eq!(raw::initialize(l), CKR_GENERAL_ERROR);
    assert_eq!(raw::initialize(l), CKR_GENERAL_ERROR);
    std::fs::write(&conf, "module = \"/nonexistent.so\"\n").expect("write");
    assert_eq!(raw::initialize(l), CKR_GENERAL_ERROR, "still a bad module");
    std::fs::copy(&fx.keytrail_conf, &conf).expect("fix config");
    assert_eq!(raw::initialize(l), CKR_OK, "retry after fixing the config");
    let slots = raw::slots(l);
    assert_eq!(slots.len(), 2, "SoftHSM's token slot and its empty slot");
    let s = raw::open_rw(l);
    assert_eq!(raw::login(l, s), CKR_OK);
    assert_eq!(raw::initialize(l), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    assert_eq!(raw::finalize(l), CKR_OK);
    // The diagnostics file named by the fixed config received nothing: the failures
    // happened before it was known.
    assert_eq!(fx.diagnostics(), "");
}

#[test]
fn failed_load_still_offers_an_interface_and_function_list() {
    let dir = tempfile::tempdir().expect("dir");
    // SAFETY (test): one process per test.
    unsafe {
        std::env::set_var("KEYTRAIL_CONFIG", dir.path().join("absent.toml"));
        std::env::remove_var("KEYTRAIL_MODULE");
    }
    let lib = Raw::load(&keytrail_module());
    let l = lib.list();
    assert_eq!((l.version.major, l.version.minor), (2, 40));
    let list_fn: CK_C_GetInterfaceList = lib.sym("C_GetInterfaceList").expect("export");
    let list_fn = list_fn.expect("fn");
    let mut n: CK_ULONG = 0;
    // SAFETY (test): size query.
    assert_eq!(unsafe { list_fn(std::ptr::null_mut(), &mut n) }, CKR_OK);
    assert_eq!(n, 1, "only the 2.40 interface when nothing is loaded");
    let mut ifaces = vec![
        CK_INTERFACE {
            pInterfaceName: std::ptr::null_mut(),
            pFunctionList: std::ptr::null_mut(),
            flags: 0,
        };
        1
    ];
    // SAFETY (test): room for 1.
    assert_eq!(unsafe { list_fn(ifaces.as_mut_ptr(), &mut n) }, CKR_OK);
    assert_eq!(
        ifaces[0].pFunctionList as *const CK_FUNCTION_LIST,
        l as *const CK_FUNCTION_LIST
    );
    assert_eq!(raw::initialize(l), CKR_GENERAL_ERROR);
    let mut counts = BTreeMap::new();
    let mut count: CK_ULONG = 0;
    // SAFETY (test): valid pointers.
    unsafe {
        counts.insert(
            "C_GetSlotList",
            (l.C_GetSlotList.expect("fn"))(CK_FALSE, std::ptr::null_mut(), &mut count),
        );
        counts.insert("C_CloseAllSessions", (l.C_CloseAllSessions.expect("fn"))(0));
        counts.insert(
            "C_GetSessionInfo",
            (l.C_GetSessionInfo.expect("fn"))(1, std::ptr::null_mut()),
        );
        counts.insert(
            "C_Finalize",
            (l.C_Finalize.expect("fn"))(std::ptr::null_mut()),
        );
    }
    for (f, rv) in counts {
        assert_eq!(rv, CKR_CRYPTOKI_NOT_INITIALIZED, "{f}");
    }
}

#[test]
fn keytrail_module_variable_alone_is_enough() {
    assert!(!Path::new("/etc/keytrail/keytrail.toml").exists());
    let fx = Fixture::new();
    let run = child(&[
        ("KEYTRAIL_MODULE", Some(&softhsm_module())),
        ("SOFTHSM2_CONF", Some(&fx.softhsm_conf)),
    ]);
    assert_eq!(run.rv("C_Initialize"), vec![CKR_OK, CKR_OK]);
    assert_eq!(run.rv("C_GetInfo"), vec![CKR_OK]);
    // Slot 0 does not exist in SoftHSM (its slot IDs come from token serials).
    assert_eq!(run.rv("C_OpenSession"), vec![CKR_SLOT_ID_INVALID]);
    assert_eq!(
        run.rv("C_SignInit"),
        vec![CKR_ARGUMENTS_BAD],
        "NULL mechanism"
    );
    assert!(run.keytrail_lines().is_empty(), "{}", run.stderr);
}

#[test]
fn diagnostics_file_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let diag = dir.path().join("diag.log");
    let conf = write_config(
        dir.path(),
        "k.toml",
        &format!(
            "module = \"/nonexistent.so\"\ndiagnostics = \"{}\"\n",
            diag.display()
        ),
    );
    let run = child(&[("KEYTRAIL_CONFIG", Some(&conf))]);
    assert_load_failure(&run);
    let mode = std::fs::metadata(&diag)
        .expect("diagnostics file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&diag).expect("read");
    assert_eq!(text.lines().count(), 2);
}

#[test]
fn module_is_a_copy_of_keytrail() {
    // A copy is a different library to the loader; keytrail recognises it by the
    // keytrail_version symbol it exports and refuses it before calling into it.
    let fx = Fixture::new();
    let copy = fx.path().join("libcopy-pkcs11.so");
    std::fs::copy(keytrail_module(), &copy).expect("copy");
    let conf = write_config(
        fx.path(),
        "k.toml",
        &format!("module = \"{}\"\n", copy.display()),
    );
    let run = child(&[
        ("KEYTRAIL_CONFIG", Some(&conf)),
        ("SOFTHSM2_CONF", Some(&fx.softhsm_conf)),
    ]);
    assert_eq!(run.rv("C_Initialize"), vec![CKR_GENERAL_ERROR; 2]);
    assert_eq!(
        run.rv("C_GetSlotList"),
        vec![CKR_CRYPTOKI_NOT_INITIALIZED; 2]
    );
    let line = format!(
        "keytrail: C_Initialize returns CKR_GENERAL_ERROR: {} is not a usable PKCS#11 module: it is keytrail itself (or a copy of it); name the real module instead",
        copy.display()
    );
    assert_eq!(run.keytrail_lines(), vec![line.as_str(), line.as_str()]);
}
