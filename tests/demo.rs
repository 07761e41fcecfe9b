//! scripts/demo.sh end to end, against the binaries this test run built (no cargo build
//! inside the test): its key lifecycle, then `keytrail show`, `verify` and `report` on
//! its own trail.

mod common;

use common::keytrail_module;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the demo with `args`, its scratch directory under `tmp`.
fn demo(tmp: &Path, args: &[&str]) -> Output {
    let so = keytrail_module();
    let profile_dir = so.parent().expect("target/<profile>");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile name");
    let target = profile_dir.parent().expect("target dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo.sh");
    Command::new("bash")
        .arg(script)
        .args(args)
        .env("KEYTRAIL_DEMO_PREBUILT", "1")
        .env("KEYTRAIL_DEMO_PROFILE", profile)
        .env("CARGO_TARGET_DIR", target)
        .env("TMPDIR", tmp)
        .env_remove("KEYTRAIL_CONFIG")
        .env_remove("SOFTHSM2_CONF")
        .output()
        .expect("run scripts/demo.sh")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The value after `prefix` on the line that starts with it.
fn after<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

#[test]
fn demo_runs_the_lifecycle_and_verifies_and_reports_its_trail() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let o = demo(tmp.path(), &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "demo failed:\n{out}\n{err}");
    assert!(!err.contains("UNEXPECTED"), "{err}");

    // Each step said what it does; the wrong PIN was refused as expected.
    assert!(
        out.contains("refused: CKR_PIN_INCORRECT, as expected"),
        "{out}"
    );
    assert!(out.contains("12. destroy \"payments-kek\""), "{out}");

    // The timeline.
    assert!(
        out.lines().any(|l| l.contains(" login ")
            && l.contains("FAIL")
            && l.contains("CKR_PIN_INCORRECT")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains(" key_wrap ")
            && l.contains("key \"payments-kek\" (CKK_AES 256, id 6b01)")
            && l.contains("with key \"backup-wrap\"")),
        "{out}"
    );

    // verify's verdict and report's tables, on the demo's own trail.
    assert!(out.contains("\nverdict: valid\n"), "{out}");
    assert!(out.contains("KEYS (4)"), "{out}");
    assert!(out.contains("use / mechanism"), "{out}");
    assert!(out.contains("FAILED LOGINS (1)"), "{out}");
    assert!(out.contains("C_Login CKR_PIN_INCORRECT"), "{out}");

    // The summary names the trail, kept in the scratch directory.
    let summary = out
        .lines()
        .find(|l| l.contains(" records, ") && l.contains(" bytes, no PIN in the trail: "))
        .unwrap_or_else(|| panic!("no summary in:\n{out}"));
    let trail = PathBuf::from(summary.rsplit(": ").next().expect("path"));
    let scratch = PathBuf::from(after(&out, "== scratch directory: "));
    assert!(trail.starts_with(&scratch), "{trail:?} in {scratch:?}");
    assert!(scratch.starts_with(tmp.path()), "TMPDIR respected");
    let records: Vec<Value> = std::fs::read_to_string(&trail)
        .expect("trail kept")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON record"))
        .collect();
    let n: usize = summary
        .trim_start_matches("== ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("record count");
    assert_eq!(records.len(), n);
    let failed_login = records.iter().find(|r| {
        r["pkcs11"]["lifecycle"] == "auth"
            && r["event"]["action"] == "login"
            && r["event"]["outcome"] == "failure"
    });
    let failed_login = failed_login.expect("a token login failure record");
    assert_eq!(failed_login["pkcs11"]["rv_name"], "CKR_PIN_INCORRECT");
    assert_eq!(failed_login["pkcs11"]["token"]["label"], "demo");
    assert_eq!(failed_login["service"]["name"], "demo");
    for action in [
        "key_generate",
        "key_pair_generate",
        "sign",
        "verify",
        "encrypt",
        "decrypt",
        "key_wrap",
        "object_destroy",
    ] {
        assert!(
            records
                .iter()
                .any(|r| r["event"]["action"] == action && r["event"]["outcome"] == "success"),
            "a successful {action} record"
        );
    }
}

#[test]
fn demo_clean_removes_its_scratch_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let o = demo(tmp.path(), &["--clean"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "demo failed:\n{out}\n{err}");
    let scratch = PathBuf::from(after(&out, "== scratch directory: "));
    assert!(!scratch.exists(), "{} still there", scratch.display());
    assert!(out.contains("scratch directory removed (--clean)"), "{out}");

    let o = demo(tmp.path(), &["--no-such-option"]);
    assert_eq!(o.status.code(), Some(2));
    let o = demo(tmp.path(), &["--help"]);
    assert!(o.status.success());
    assert!(text(&o).0.contains("--clean"));
}

#[test]
fn demo_with_the_agent_records_every_process_in_one_verified_chain() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let o = demo(tmp.path(), &["--agent", "--clean"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "demo failed:\n{out}\n{err}");
    assert!(!err.contains("UNEXPECTED"), "{err}");
    assert!(out.contains("keytrail agent: listening on"), "{out}");
    assert!(out.contains("\nverdict: valid\n"), "{out}");
    assert!(out.contains("FAILED LOGINS (1)"), "{out}");
    // One chain, many processes: each pkcs11-tool run connected and ended on its own.
    let processes: usize = out
        .lines()
        .find(|l| l.ends_with(" processes recorded in one chain"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(processes >= 10, "{out}");
}
