//! A real client, OpenSC's pkcs11-tool, run against SoftHSM directly and through keytrail
//! (each on its own fresh token store, as separate processes): same exit status, same
//! output once the random slot IDs and serial numbers are masked.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Output};

/// One pkcs11-tool run, normalised.
#[derive(Debug, PartialEq, Eq)]
struct ToolRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn pkcs11_tool(module: &Path, softhsm_conf: &Path, keytrail_conf: &Path, args: &[&str]) -> ToolRun {
    let out: Output = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(module)
        .args(args)
        .env("SOFTHSM2_CONF", softhsm_conf)
        .env("KEYTRAIL_CONFIG", keytrail_conf)
        .env_remove("KEYTRAIL_MODULE")
        .output()
        .expect("run pkcs11-tool (install opensc)");
    ToolRun {
        code: out.status.code(),
        stdout: normalise(&String::from_utf8_lossy(&out.stdout)),
        stderr: normalise(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// Masks what differs between two fresh token stores: slot IDs (derived from the random
/// token serial, printed as `0x` and 5 or more hex digits) and the serial number line.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim_start().starts_with("serial num") {
            out.push_str("  serial num : <serial>\n");
            continue;
        }
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i..].starts_with(b"0x") {
                let digits = b[i + 2..]
                    .iter()
                    .take_while(|c| c.is_ascii_hexdigit())
                    .count();
                if digits >= 5 {
                    out.push_str("0x<id>");
                    i += 2 + digits;
                    continue;
                }
            }
            out.push(b[i] as char);
            i += 1;
        }
        out.push('\n');
    }
    out
}

/// Runs the same pkcs11-tool invocations (each a list of arguments) directly and through
/// keytrail on fresh stores; asserts that every run matches; returns the keytrail runs.
fn compare_tool(invocations: &[&[&str]]) -> Vec<ToolRun> {
    let fx = Fixture::new();
    let direct_store = fx.softhsm_conf.clone();
    let keytrail_store = fx.fresh_store("b");
    let mut runs = Vec::new();
    for args in invocations {
        let direct = pkcs11_tool(&softhsm_module(), &direct_store, &fx.keytrail_conf, args);
        let through = pkcs11_tool(&keytrail_module(), &keytrail_store, &fx.keytrail_conf, args);
        assert_eq!(
            direct, through,
            "pkcs11-tool {args:?}: keytrail (right) differs"
        );
        assert!(
            !through.stderr.contains("keytrail:"),
            "keytrail complained: {}",
            through.stderr
        );
        runs.push(through);
    }
    assert_eq!(fx.diagnostics(), "", "keytrail reported a problem");
    runs
}

const LOGIN: [&str; 3] = ["--login", "--pin", USER_PIN];

#[test]
fn pkcs11_tool_test_on_an_empty_token() {
    let args: Vec<&str> = ["--test", "--allow-sw"]
        .iter()
        .chain(&LOGIN)
        .copied()
        .collect();
    let runs = compare_tool(&[&args]);
    let r = &runs[0];
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains("all 4 digest functions seem to work"),
        "{r:?}"
    );
    assert!(r.stdout.contains("SHA256: OK"), "{r:?}");
    assert!(r.stdout.trim_end().ends_with("No errors"), "{r:?}");
}

#[test]
fn pkcs11_tool_test_with_rsa_and_aes_keys() {
    let rsa: Vec<&str> = LOGIN
        .iter()
        .copied()
        .chain([
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            "01",
            "--label",
            "rsa1",
        ])
        .collect();
    let aes: Vec<&str> = LOGIN
        .iter()
        .copied()
        .chain([
            "--keygen",
            "--key-type",
            "AES:32",
            "--id",
            "03",
            "--label",
            "aes1",
        ])
        .collect();
    let test: Vec<&str> = ["--test", "--allow-sw"]
        .iter()
        .chain(&LOGIN)
        .copied()
        .collect();
    let list: Vec<&str> = LOGIN
        .iter()
        .copied()
        .chain(["--list-objects", "--type", "secrkey"])
        .collect();
    // Only one key pair: SoftHSM's file store lists token objects in directory order
    // (random file names), so with two key pairs pkcs11-tool's --test visits them in an
    // order that differs from one fresh store to the next, with or without keytrail.
    // Key generation prints the new public key (random), so it is run through the
    // comparison only for its exit status: compare_tool would see different moduli.
    let fx = Fixture::new();
    let direct_store = fx.softhsm_conf.clone();
    let keytrail_store = fx.fresh_store("b");
    for args in [&rsa, &aes] {
        let d = pkcs11_tool(&softhsm_module(), &direct_store, &fx.keytrail_conf, args);
        let k = pkcs11_tool(&keytrail_module(), &keytrail_store, &fx.keytrail_conf, args);
        assert_eq!(d.code, Some(0), "{args:?}: {d:?}");
        assert_eq!(k.code, d.code, "{args:?}: {k:?}");
        assert_eq!(k.stderr, d.stderr, "{args:?}");
    }
    let mut runs = Vec::new();
    for args in [&test, &list] {
        let d = pkcs11_tool(&softhsm_module(), &direct_store, &fx.keytrail_conf, args);
        let k = pkcs11_tool(&keytrail_module(), &keytrail_store, &fx.keytrail_conf, args);
        assert_eq!(d, k, "pkcs11-tool {args:?}: keytrail (right) differs");
        runs.push(k);
    }
    assert_eq!(fx.diagnostics(), "");
    let t = &runs[0];
    for line in [
        "testing key 0 (rsa1)",
        "all 4 signature functions seem to work",
        "SHA256-RSA-PKCS: OK",
        "RSA-X-509: OK",
        "RSA-PKCS: OK",
    ] {
        assert!(t.stdout.contains(line), "missing {line:?}: {t:?}");
    }
    // SoftHSM 2.6 rejects OAEP with a source label, so pkcs11-tool's test aborts there,
    // identically in both runs.
    assert_eq!(t.code, Some(1), "{t:?}");
    assert!(
        t.stderr
            .contains("C_DecryptInit failed: rv = CKR_ARGUMENTS_BAD (0x7)"),
        "{t:?}"
    );
    let l = &runs[1];
    assert_eq!(l.code, Some(0));
    assert!(l.stdout.contains("label:      aes1"), "{l:?}");
}

#[test]
fn pkcs11_tool_list_slots() {
    let runs = compare_tool(&[&["--list-slots"], &["--list-token-slots"]]);
    let r = &runs[0];
    assert_eq!(r.code, Some(0));
    assert!(
        r.stdout.contains("token label        : keytrail-test"),
        "{r:?}"
    );
    assert!(r.stdout.contains("SoftHSM slot ID 0x<id>"), "{r:?}");
    assert!(r.stdout.contains("token state:   uninitialized"), "{r:?}");
}

#[test]
fn pkcs11_tool_list_mechanisms_and_info() {
    let runs = compare_tool(&[&["--list-mechanisms"], &["--show-info"]]);
    let m = &runs[0];
    assert_eq!(m.code, Some(0));
    assert!(m.stdout.starts_with("Supported mechanisms:"), "{m:?}");
    assert!(m.stdout.contains("AES-CBC-PAD"), "{m:?}");
    assert!(m.stdout.contains("ECDSA"), "{m:?}");
    let i = &runs[1];
    assert_eq!(i.code, Some(0));
    assert!(i.stdout.contains("Cryptoki version 2.40"), "{i:?}");
    assert!(i.stdout.contains("Manufacturer     SoftHSM"), "{i:?}");
}

#[test]
fn pkcs11_tool_wrong_pin() {
    let runs = compare_tool(&[&["--login", "--pin", "9999", "--list-objects"]]);
    let r = &runs[0];
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("CKR_PIN_INCORRECT"), "{r:?}");
}

#[test]
fn pkcs11_tool_through_a_broken_keytrail_config() {
    let fx = Fixture::new();
    let missing = fx.path().join("absent.toml");
    let r = pkcs11_tool(
        &keytrail_module(),
        &fx.softhsm_conf,
        &missing,
        &["--list-slots"],
    );
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains(&format!(
            "keytrail: C_Initialize returns CKR_GENERAL_ERROR: configuration {}: cannot be read",
            missing.display()
        )),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("CKR_GENERAL_ERROR (0x5)"),
        "pkcs11-tool sees CKR_GENERAL_ERROR: {r:?}"
    );
}
