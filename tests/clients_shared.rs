//! Several real clients at once on one token, all through keytrail, all writing one shared
//! trail: two python-pkcs11 processes, a Java SunPKCS11 program, two `openssl pkeyutl`
//! with libp11's engine and two pkcs11-tool signatures, started together. Each process is
//! its own stream in the one file; each has exactly the records its own work made, and
//! `keytrail verify` finds every stream whole.

mod common;
use common::clients::*;
use common::*;

use std::collections::BTreeMap;
use std::process::{Child, Command};

/// What one concurrent process must leave on the trail: its key lifecycle records.
struct Expect {
    what: &'static str,
    events: Vec<(&'static str, u64)>,
}

fn spawn(mut c: Command) -> Child {
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c.spawn().expect("spawn client")
}

#[test]
fn several_clients_at_once_on_one_shared_trail() {
    let fx = Fixture::new();
    let side = Side::new_single(&fx);
    let mask = Mask::standard();
    java_configs(&side);
    std::fs::write(side.work.join("engine.cnf"), engine_conf(&side)).expect("engine.cnf");
    std::fs::write(side.work.join("digest"), "0123456789abcdef0123456789abcdef").expect("digest");

    // The keys, one process after another: python-pkcs11's (py-ec), keytool's (java-ec),
    // pkcs11-tool's (shared-ec).
    let mut setup = vec![python_flow(&side, 1, true)];
    setup.push(keytool_genkeypair(&side, "java-ec"));
    setup.push(pkcs11_tool_ec_keypair(&side, "51", "shared-ec"));
    for c in setup {
        let r = side.run(c, &mask);
        assert_eq!(r.code, Some(0), "{r:?}");
    }

    // All at once, each process on its own copy of the token store (same token, same
    // keys): SoftHSM 2.6's file store is not safe for processes that share it while one
    // writes (directly as through keytrail, C_GetSlotList fails with CKR_GENERAL_ERROR,
    // a token goes missing, or a reader crashes). The trail is what they share.
    let store = fx.softhsm_conf.parent().expect("store dir").to_path_buf();
    let copies = std::cell::Cell::new(0);
    let own_store = |mut c: Command| {
        copies.set(copies.get() + 1);
        let dir = fx.path().join(format!("store-{}", copies.get()));
        copy_dir(&store.join("tokens"), &dir.join("tokens"));
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            std::fs::read_to_string(&fx.softhsm_conf)
                .expect("softhsm2.conf")
                .replace(
                    &store.join("tokens").display().to_string(),
                    &dir.join("tokens").display().to_string(),
                ),
        )
        .expect("softhsm2.conf copy");
        c.env("SOFTHSM2_CONF", conf);
        spawn(c)
    };
    let sign = |e: u64| vec![("use/sign/success", e)];
    let mut running: Vec<(Child, Expect)> = Vec::new();
    for rounds in [20, 12] {
        running.push((
            own_store(python_flow(&side, rounds, false)),
            Expect {
                what: "python-pkcs11",
                events: vec![("use/sign/success", rounds), ("use/verify/success", rounds)],
            },
        ));
    }
    let java_rounds = 5;
    running.push((
        own_store(java_flow(&side, java_rounds, false)),
        Expect {
            what: "java",
            events: sign(java_rounds),
        },
    ));
    for i in 0..2 {
        let mut c = side.command(need("openssl", "openssl"));
        c.env("OPENSSL_CONF", side.work.join("engine.cnf")).args([
            "pkeyutl",
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-inkey",
            "pkcs11:token=keytrail-test;object=shared-ec;type=private",
            "-sign",
            "-in",
            "digest",
            "-out",
            &format!("sig-openssl-{i}"),
        ]);
        running.push((
            own_store(c),
            Expect {
                what: "openssl",
                events: sign(1),
            },
        ));
    }
    for i in 0..2 {
        let mut c = side.command("pkcs11-tool");
        c.arg("--module").arg(&side.module).args([
            "--login",
            "--pin",
            USER_PIN,
            "--sign",
            "--mechanism",
            "ECDSA",
            "--id",
            "51",
            "--input-file",
            "digest",
            "--output-file",
            &format!("sig-tool-{i}"),
        ]);
        running.push((
            own_store(c),
            Expect {
                what: "pkcs11-tool",
                events: sign(1),
            },
        ));
    }
    let mut expected: BTreeMap<u64, Expect> = BTreeMap::new();
    for (child, e) in running {
        let pid = u64::from(child.id());
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{} (pid {pid}): {}{}",
            e.what,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        expected.insert(pid, e);
    }

    assert_eq!(fx.diagnostics(), "", "keytrail reported a problem");
    let trail = fx.trail();
    let procs = processes(&trail);
    assert_eq!(procs.len(), 3 + expected.len(), "{procs:?}");
    let v = assert_verifies(&fx.trail_path(), procs.len());
    assert_eq!(
        v["files"].as_array().map(Vec::len),
        Some(1),
        "one shared file: {v:#}"
    );
    for (pid, e) in &expected {
        let t = tally(&trail, *pid);
        assert_key_events(&t, &e.events);
        assert_eq!(
            count(&t, "auth/login/success"),
            1,
            "{} {pid}: {t:#?}",
            e.what
        );
        // The stream's own accounting agrees: its records, numbered without a gap.
        let stream = v["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .find(|s| s["start"]["pid"] == *pid)
            .unwrap_or_else(|| panic!("a stream for {} {pid}: {v:#}", e.what));
        let records = trail.iter().filter(|r| r["process"]["pid"] == *pid).count() as u64;
        assert_eq!(stream["records"], records, "{stream:#}");
        assert_eq!(stream["last_seq"], records, "{stream:#}");
    }
    let r = report(&fx.trail_path());
    let py = report_key(&r, "CKO_PRIVATE_KEY", "py-ec");
    assert_eq!(uses(py).get("sign / CKM_ECDSA"), Some(&(1 + 20 + 12)));
    let shared = report_key(&r, "CKO_PRIVATE_KEY", "shared-ec");
    assert_eq!(uses(shared).get("sign / CKM_ECDSA"), Some(&4));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}
