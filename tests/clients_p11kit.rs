//! p11-kit with keytrail registered the way an operator would: a `keytrail.module` file
//! naming libkeytrail.so, and the real module's own file (`softhsm2.module`) disabled with
//! an empty `enable-in`. Compared with the distribution's stock configuration, each side
//! on a fresh token: `p11-kit list-modules`, then pkcs11-tool through p11-kit-proxy
//! (key generation, a signature, a listing) and p11tool reading p11-kit's configuration.
//!
//! p11-kit reads no user configuration as root, so each run gets a mount namespace of its
//! own (`unshare --mount`) with a scratch directory bound over
//! /usr/share/p11-kit/modules (and an empty one over /etc/pkcs11/modules where that exists):
//! nothing on the machine changes.

mod common;
use common::clients::*;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGE_MODULES: &str = "/usr/share/p11-kit/modules";
const SYSTEM_MODULES: &str = "/etc/pkcs11/modules";

/// A copy of the distribution's module files; on the keytrail side with `keytrail.module`
/// added and the SoftHSM file disabled.
fn module_dir(side: &Side) -> PathBuf {
    let dir = side.work.join("p11-kit-modules");
    std::fs::create_dir_all(&dir).expect("module dir");
    let mut softhsm = None;
    for e in std::fs::read_dir(PACKAGE_MODULES).unwrap_or_else(|e| {
        panic!("{PACKAGE_MODULES}: {e} (install p11-kit-modules: run scripts/test.sh)")
    }) {
        let e = e.expect("entry");
        let text = std::fs::read_to_string(e.path()).expect("module file");
        if text.contains("libsofthsm2.so") {
            softhsm = Some(e.file_name());
        }
        std::fs::write(dir.join(e.file_name()), text).expect("copy module file");
    }
    let softhsm = softhsm.expect("softhsm2's p11-kit module file (Debian package libsofthsm2)");
    if side.name == "keytrail" {
        // An empty `enable-in` turns the module off for every program; the rest of the
        // distribution's file still applies.
        let text = std::fs::read_to_string(dir.join(&softhsm)).expect("softhsm2 module file");
        std::fs::write(dir.join(&softhsm), format!("{text}\nenable-in:\n")).expect("disable");
        std::fs::write(
            dir.join("keytrail.module"),
            format!("module: {}\n", side.module.display()),
        )
        .expect("keytrail.module");
    }
    dir
}

/// `program args…` in a mount namespace that sees `modules` as p11-kit's module directory.
fn with_modules(side: &Side, modules: &Path, program: &str, args: &[&str]) -> Command {
    let empty = side.work.join("empty");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let mut c = side.command(need("unshare", "util-linux"));
    c.args(["--mount", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" \"$3\" || exit 90; \
             if [ -d \"$4\" ]; then mount --bind \"$2\" \"$4\" || exit 91; fi; \
             shift 4; exec \"$@\"",
        )
        .arg("sh")
        .args([modules, &empty])
        .args([PACKAGE_MODULES, SYSTEM_MODULES])
        .arg(program)
        .args(args);
    c
}

fn p11_kit_proxy() -> PathBuf {
    find_lib(&["p11-kit-proxy.so"]).unwrap_or_else(|| {
        panic!("p11-kit-proxy.so is not installed (Debian package p11-kit-modules): run scripts/test.sh")
    })
}

/// `p11-kit list-modules` as blocks, one per module, sorted by content: the SoftHSM and
/// keytrail modules carry different names and paths and so sort differently; that line is
/// masked.
fn modules_listing(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(line);
            b.push('\n');
        }
    }
    for b in &mut blocks {
        if b.contains("library-manufacturer: SoftHSM") {
            let rest = b
                .split_once('\n')
                .map(|(_, r)| r.to_string())
                .unwrap_or_default();
            *b = format!("<module>: <path>\n{rest}");
        }
    }
    blocks.sort();
    blocks
}

#[test]
fn p11_kit_module_file_for_keytrail_and_p11_kit_proxy() {
    need("p11-kit", "p11-kit");
    let m = Matrix::new();
    let mask = Mask::standard();
    let dirs = [module_dir(&m.direct), module_dir(&m.keytrail)];
    let dir = |s: &Side| {
        if s.name == "direct" {
            &dirs[0]
        } else {
            &dirs[1]
        }
    };

    let by_block = Mask::standard().then(|t| modules_listing(t).concat());
    let listed = m.step(&by_block, |s| {
        with_modules(s, dir(s), "p11-kit", &["list-modules"])
    });
    assert_eq!(listed.code, Some(0), "{listed:?}");
    // Compared as a set of blocks (above, with the order masked); here, what keytrail's
    // block says: the real module's description and the token, under keytrail's name.
    let through = m.keytrail.run(
        with_modules(&m.keytrail, dir(&m.keytrail), "p11-kit", &["list-modules"]),
        &mask,
    );
    let keytrail_block = through
        .stdout
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with("keytrail: "))
        .take_while({
            let mut first = true;
            move |l| std::mem::take(&mut first) || l.starts_with(' ')
        })
        .collect::<String>();
    assert!(
        keytrail_block.starts_with(&format!("keytrail: {}\n", m.keytrail.module.display())),
        "{through:?}"
    );
    assert!(
        keytrail_block.contains("library-manufacturer: SoftHSM"),
        "{keytrail_block}"
    );
    assert!(
        keytrail_block.contains("token: keytrail-test"),
        "{keytrail_block}"
    );
    assert!(
        !through.stdout.contains("libsofthsm2.so"),
        "the real module's own file is disabled: {through:?}"
    );

    let proxy = p11_kit_proxy();
    let proxy = proxy.to_str().expect("utf-8 path");
    let tool = |args: &'static [&'static str]| {
        move |s: &Side| {
            let mut all = vec!["--module", proxy, "--token-label", "keytrail-test"];
            all.extend_from_slice(args);
            with_modules(s, dir(s), "pkcs11-tool", &all)
        }
    };
    let slots = m.step(&mask, |s| {
        with_modules(
            s,
            dir(s),
            "pkcs11-tool",
            &["--module", proxy, "--list-token-slots"],
        )
    });
    assert_eq!(slots.code, Some(0), "{slots:?}");
    assert!(
        slots.stdout.contains("token label        : keytrail-test"),
        "{slots:?}"
    );
    let keygen = m.step(
        &mask,
        tool(&[
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "41",
            "--label",
            "kit-ec",
        ]),
    );
    assert_eq!(keygen.code, Some(0), "{keygen:?}");
    for side in [&m.direct, &m.keytrail] {
        // 32 bytes, a SHA-256 digest's length (SoftHSM 2.6 has plain CKM_ECDSA only).
        std::fs::write(side.work.join("data"), "keytrail p11-kit 32 bytes digest").expect("data");
    }
    let sign = m.step(
        &mask,
        tool(&[
            "--login",
            "--pin",
            USER_PIN,
            "--sign",
            "--mechanism",
            "ECDSA",
            "--label",
            "kit-ec",
            "--input-file",
            "data",
            "--output-file",
            "sig",
        ]),
    );
    assert_eq!(sign.code, Some(0), "{sign:?}");
    let list = m.step(
        &mask,
        tool(&[
            "--login",
            "--pin",
            USER_PIN,
            "--list-objects",
            "--type",
            "privkey",
        ]),
    );
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(list.stdout.contains("label:      kit-ec"), "{list:?}");

    // GnuTLS loads the modules p11-kit's configuration names, without the proxy.
    let gnutls = m.step(&mask, |s| {
        let mut c = with_modules(
            s,
            dir(s),
            "p11tool",
            &[
                "--login",
                "--test-sign",
                "pkcs11:token=keytrail-test;object=kit-ec",
            ],
        );
        c.env("GNUTLS_PIN", USER_PIN);
        c
    });
    assert_eq!(gnutls.code, Some(0), "{gnutls:?}");
    assert!(
        gnutls.stderr.contains("Signing using ECDSA-SHA256... ok"),
        "{gnutls:?}"
    );

    let trail = m.trail();
    let procs = processes(&trail);
    let names: Vec<&str> = procs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "p11-kit",
            "p11-kit",
            "pkcs11-tool",
            "pkcs11-tool",
            "pkcs11-tool",
            "pkcs11-tool",
            "p11tool"
        ],
        "one stream per process that loaded keytrail through p11-kit"
    );
    assert_verifies(&m.fx.trail_path(), procs.len());
    assert_key_events(&tally_of(&trail, "p11-kit"), &[]);
    assert_key_events(
        &tally_of(&trail, "pkcs11-tool"),
        &[
            ("generate/key_pair_generate/success", 1),
            ("use/sign/success", 1),
        ],
    );
    assert_key_events(&tally_of(&trail, "p11tool"), &[("use/sign/success", 1)]);
    assert_eq!(
        labels(&trail, "generate", "key_pair_generate"),
        ["private:kit-ec", "public:kit-ec"]
    );
    assert_eq!(labels(&trail, "use", "sign"), ["kit-ec", "kit-ec"]);
    let r = report(&m.fx.trail_path());
    assert_eq!(
        report_keys(&r),
        ["CKO_PRIVATE_KEY kit-ec", "CKO_PUBLIC_KEY kit-ec"]
    );
    let key = report_key(&r, "CKO_PRIVATE_KEY", "kit-ec");
    assert_eq!(key["created"]["function"], "C_GenerateKeyPair");
    assert_eq!(
        uses(key),
        [("sign / CKM_ECDSA".to_string(), 2)].into_iter().collect()
    );
}
