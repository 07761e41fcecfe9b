//! What every record carries (who, when, in what order) and what the `[audit]`
//! configuration changes: categories, usage detail, key look-ups.

mod common;
mod support;

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use serde_json::json;
use support::*;

/// A small workload touching session, auth, generate, use, modify and destroy.
fn workload() -> (u64, u64) {
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let a = aes_key(&s_, "key-a", &[0xa], false);
    let b = aes_key(&s_, "key-b", &[0xb], false);
    for _ in 0..3 {
        s_.encrypt(&Mechanism::AesEcb, a, &[0; 16])
            .expect("encrypt a");
    }
    s_.encrypt(&Mechanism::AesEcb, b, &[0; 32])
        .expect("encrypt b");
    // A failure is always recorded, even after the key's first use.
    s_.encrypt(&Mechanism::AesEcb, a, &[0; 15])
        .expect_err("ECB needs whole blocks");
    s_.update_attributes(b, &[Attribute::Label(b"key-b2".to_vec())])
        .expect("relabel");
    s_.destroy_object(b).expect("destroy");
    drop(s_);
    p.finalize().expect("finalize");
    (a.handle(), b.handle())
}

#[test]
fn every_record_carries_who_where_and_when() {
    let fx = Fixture::new();
    configure(&fx, "service = \"payments-api\"", "");
    workload();
    let trail = fx.trail();
    assert!(trail.len() >= 12, "{}", dump(&trail));
    let uid = std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .expect("uid");
    let exe = std::env::current_exe().expect("exe").display().to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string();
    let micros = |t: &str| {
        // 2026-01-02T03:04:05.123456Z
        t.len() == 27
            && t.ends_with('Z')
            && t.as_bytes()[19] == b'.'
            && t[20..26].bytes().all(|b| b.is_ascii_digit())
            && t.as_bytes()[10] == b'T'
    };
    for (i, r) in trail.iter().enumerate() {
        assert_eq!(n(r, "event.sequence"), i as u64 + 1, "{r}");
        assert!(micros(s(r, "@timestamp")), "{r}");
        assert_eq!(s(r, "service.name"), "payments-api", "{r}");
        assert_eq!(s(r, "user.id"), uid, "{r}");
        assert!(!s(r, "user.name").is_empty(), "{r}");
        assert_eq!(n(r, "process.pid"), u64::from(std::process::id()), "{r}");
        assert!(!s(r, "process.name").is_empty(), "{r}");
        assert_eq!(s(r, "process.executable"), exe, "{r}");
        assert_eq!(s(r, "host.name"), host, "{r}");
        assert!(n(r, "process.thread.id") > 0 && n(r, "process.thread.id") != u64::MAX);
        assert_eq!(s(r, "event.kind"), "event", "{r}");
        if s(r, "pkcs11.lifecycle") != "audit" {
            assert!(n(r, "event.duration") < 60_000_000_000, "{r}");
            assert!(!s(r, "pkcs11.function").is_empty(), "{r}");
            assert!(n(r, "pkcs11.slot_id") != u64::MAX, "{r}");
            assert_eq!(s(r, "pkcs11.token.label"), TOKEN_LABEL, "{r}");
        }
    }
    // The calling thread is the test's own.
    // SAFETY: gettid has no preconditions.
    let tid = u64::try_from(unsafe { libc::gettid() }).expect("tid");
    for r in lifecycle(&trail) {
        assert_eq!(n(&r, "process.thread.id"), tid, "{r}");
    }
}

#[test]
fn categories_off_produce_no_records() {
    let fx = Fixture::new();
    configure(&fx, "", "categories = [\"use\"]");
    workload();
    let trail = fx.trail();
    let t = lifecycle(&trail);
    assert_eq!(t.len(), 5, "{}", dump(&t));
    assert!(
        t.iter().all(|r| s(r, "pkcs11.lifecycle") == "use"),
        "{}",
        dump(&t)
    );
    // keytrail's own records are always written.
    let own = category(&trail, "audit");
    let own: Vec<&str> = own.iter().map(|r| s(r, "event.action")).collect();
    assert_eq!(own, ["trail_start", "initialize", "finalize", "trail_stop"]);
    // Sessions are still tracked: the use records know their session's state.
    assert!(
        t.iter().all(|r| s(r, "pkcs11.session.state") == "rw_user"),
        "{}",
        dump(&t)
    );
}

#[test]
fn usage_first_records_the_first_use_of_each_key_and_every_failure() {
    let fx = Fixture::new();
    configure(&fx, "", "usage = \"first\"");
    let (a, b) = workload();
    let t = lifecycle(&fx.trail());
    let uses = category(&t, "use");
    let summary: Vec<(u64, &str)> = uses
        .iter()
        .map(|r| (n(r, "pkcs11.key.handle"), s(r, "event.outcome")))
        .collect();
    assert_eq!(
        summary,
        [(a, "success"), (b, "success"), (a, "failure")],
        "{}",
        dump(&t)
    );
    assert_eq!(s(&uses[2], "pkcs11.rv_name"), "CKR_DATA_LEN_RANGE");
    // Other categories are unaffected.
    for c in ["session", "auth", "generate", "modify", "destroy"] {
        assert!(!category(&t, c).is_empty(), "{c}: {}", dump(&t));
    }
}

#[test]
fn usage_every_is_the_default() {
    let fx = Fixture::new();
    workload();
    let t = lifecycle(&fx.trail());
    assert_eq!(category(&t, "use").len(), 5, "{}", dump(&t));
    assert_eq!(category(&t, "generate").len(), 2, "{}", dump(&t));
}

/// Makes a token AES key directly through SoftHSM, so keytrail never sees it created.
fn outside_key() {
    let direct = open(&softhsm_module());
    let s_ = user_session(&direct);
    s_.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Label(b"made-elsewhere".to_vec()),
        Attribute::Id(vec![0xe1, 0x5e]),
        Attribute::Value(vec![0x33; 16]),
        Attribute::Encrypt(true),
    ])
    .expect("create");
    drop(s_);
    direct.finalize().expect("finalize direct");
}

/// Uses and destroys the outside key through keytrail; returns its handle.
fn use_outside_key() -> u64 {
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = *s_
        .find_objects(&[Attribute::Label(b"made-elsewhere".to_vec())])
        .expect("find")
        .first()
        .expect("the key");
    s_.encrypt(&Mechanism::AesEcb, key, &[0; 16])
        .expect("encrypt");
    s_.destroy_object(key).expect("destroy");
    let own = aes_key(&s_, "made-here", &[0x0d], false);
    s_.encrypt(&Mechanism::AesEcb, own, &[0; 16])
        .expect("encrypt own");
    drop(s_);
    p.finalize().expect("finalize");
    key.handle()
}

#[test]
fn key_lookups_name_keys_keytrail_did_not_see_created() {
    let fx = Fixture::new();
    outside_key();
    let key = use_outside_key();
    let t = lifecycle(&fx.trail());
    for r in [&action(&t, "encrypt")[0], &only(&t, "object_destroy")] {
        assert_eq!(n(r, "pkcs11.key.handle"), key, "{r}");
        assert_eq!(s(r, "pkcs11.key.label"), "made-elsewhere", "{r}");
        assert_eq!(s(r, "pkcs11.key.id_hex"), "e15e", "{r}");
        assert_eq!(s(r, "pkcs11.key.class"), "CKO_SECRET_KEY", "{r}");
        assert_eq!(s(r, "pkcs11.key.key_type"), "CKK_AES", "{r}");
        assert_eq!(n(r, "pkcs11.key.bits"), 128, "{r}");
        assert_eq!(at(r, "pkcs11.key.token"), &json!(true), "{r}");
    }
}

#[test]
fn key_lookups_false_records_handles_only_for_unseen_keys() {
    let fx = Fixture::new();
    configure(&fx, "", "key_lookups = false");
    outside_key();
    let key = use_outside_key();
    let t = lifecycle(&fx.trail());
    let encrypts = action(&t, "encrypt");
    assert_eq!(encrypts.len(), 2, "{}", dump(&t));
    for r in [&encrypts[0], &only(&t, "object_destroy")] {
        assert_eq!(at(r, "pkcs11.key"), &json!({"handle": key}), "{r}");
    }
    // Keys keytrail saw created are still named, from their template.
    assert_eq!(s(&encrypts[1], "pkcs11.key.label"), "made-here");
    assert_eq!(s(&encrypts[1], "pkcs11.key.key_type"), "CKK_AES");
}

/// A known workload for usage summaries: 37 and 5 successful encryptions with two keys,
/// two failures with the first, in two sessions; returns the keys' handles.
fn summary_workload() -> (u64, u64) {
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let a = aes_key(&s_, "key-a", &[0xa], false);
    let b = aes_key(&s_, "key-b", &[0xb], false);
    for _ in 0..30 {
        s_.encrypt(&Mechanism::AesEcb, a, &[0; 16])
            .expect("encrypt a");
    }
    // Another session, the same key: the same summary.
    // (The login is the token's: the second session shares it.)
    let s2 = p.open_rw_session(token_slot(&p)).expect("second session");
    for _ in 0..7 {
        s2.encrypt(&Mechanism::AesEcb, a, &[0; 32])
            .expect("encrypt a");
    }
    drop(s2);
    for _ in 0..5 {
        s_.encrypt(&Mechanism::AesEcb, b, &[0; 48])
            .expect("encrypt b");
    }
    for _ in 0..2 {
        s_.encrypt(&Mechanism::AesEcb, a, &[0; 15])
            .expect_err("ECB needs whole blocks");
    }
    s_.destroy_object(b).expect("destroy");
    drop(s_);
    // C_Finalize writes the interval's summaries, before the stream's stop.
    p.finalize().expect("finalize");
    (a.handle(), b.handle())
}

#[test]
fn usage_summary_counts_every_success_and_records_every_failure() {
    let fx = Fixture::new();
    configure(&fx, "", "usage = \"summary\"\nsummary_interval = 3600");
    let (a, b) = summary_workload();
    let all = fx.trail();
    let t = lifecycle(&all);
    let uses = category(&t, "use");
    let summaries: Vec<(u64, u64, u64, u64, u64)> = uses
        .iter()
        .filter(|r| r.pointer("/pkcs11/operation/count").is_some())
        .map(|r| {
            (
                n(r, "pkcs11.key.handle"),
                n(r, "pkcs11.operation.count"),
                n(r, "pkcs11.operation.failures"),
                n(r, "pkcs11.data.in_len"),
                n(r, "pkcs11.operation.parts"),
            )
        })
        .collect();
    assert_eq!(
        summaries,
        [(a, 37, 2, 30 * 16 + 7 * 32, 37), (b, 5, 0, 5 * 48, 5)],
        "{}",
        dump(&t)
    );
    let failures: Vec<&str> = uses
        .iter()
        .filter(|r| s(r, "event.outcome") == "failure")
        .map(|r| s(r, "pkcs11.rv_name"))
        .collect();
    assert_eq!(failures, ["CKR_DATA_LEN_RANGE"; 2], "{}", dump(&t));
    assert_eq!(uses.len(), 4, "{}", dump(&t));
    // A summary names no session (it spans two), and ends no later than the stream.
    let first = uses
        .iter()
        .find(|r| r.pointer("/pkcs11/operation/count").is_some())
        .expect("a summary");
    assert!(first.pointer("/pkcs11/session").is_none(), "{first:#}");
    assert!(s(first, "pkcs11.operation.last") >= s(first, "@timestamp"));
    let actions: Vec<&str> = all.iter().map(|r| s(r, "event.action")).collect();
    assert_eq!(actions.last(), Some(&"trail_stop"), "{actions:?}");
    // Other categories keep a record each.
    assert_eq!(category(&t, "generate").len(), 2, "{}", dump(&t));
    assert_eq!(category(&t, "destroy").len(), 1, "{}", dump(&t));

    // `keytrail report` counts a summary as the uses it stands for.
    let bin = keytrail_module()
        .parent()
        .expect("target dir")
        .join("keytrail");
    let o = std::process::Command::new(bin)
        .args(["report", "--json"])
        .arg(fx.trail_path())
        .output()
        .expect("run keytrail report");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let keys = r["keys"].as_array().expect("keys");
    let uses_of = |label: &str| {
        keys.iter()
            .find(|k| k["label"] == label)
            .unwrap_or_else(|| panic!("key {label} in {r:#}"))["uses"]["encrypt / CKM_AES_ECB"]
            .clone()
    };
    assert_eq!(
        uses_of("key-a"),
        json!({"success": 37, "failure": 2, "other": 0}),
        "{r:#}"
    );
    assert_eq!(
        uses_of("key-b"),
        json!({"success": 5, "failure": 0, "other": 0}),
        "{r:#}"
    );
}

/// pkcs11-spy (OpenSC) where it is installed.
fn spy_module() -> Option<std::path::PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so",
        "/usr/lib/aarch64-linux-gnu/pkcs11-spy.so",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

#[test]
fn a_created_key_is_asked_of_the_module_only_what_its_template_left_open() {
    // keytrail in front of pkcs11-spy in front of SoftHSM: the spy's log holds every call
    // keytrail makes of the module.
    let spy = spy_module().expect("pkcs11-spy (opensc) is installed by scripts/test.sh");
    let fx = Fixture::new();
    let log = fx.path().join("spy.log");
    // SAFETY: nextest runs each test in a process of its own; no other thread reads the
    // environment yet.
    unsafe {
        std::env::set_var("PKCS11SPY", softhsm_module());
        std::env::set_var("PKCS11SPY_OUTPUT", &log);
    }
    std::fs::write(
        &fx.keytrail_conf,
        format!(
            "module = \"{}\"\n[trail]\npath = \"{}\"\n",
            spy.display(),
            fx.trail_path().display()
        ),
    )
    .expect("write keytrail.toml");
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let before = std::fs::read_to_string(&log).unwrap_or_default();
    // A template stating class (by the mechanism), size, CKA_ID and CKA_LABEL; and one
    // stating neither CKA_ID nor CKA_LABEL (PKCS#11 makes them empty).
    let named = aes_key(&s_, "named", &[0x4e], false);
    let bare = s_
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::ValueLen(16.into()), Attribute::Encrypt(true)],
        )
        .expect("bare key");
    let during = std::fs::read_to_string(&log).expect("spy log")[before.len()..].to_string();
    drop(s_);
    p.finalize().expect("finalize");
    // What keytrail asked after each C_GenerateKey: at most CKA_UNIQUE_ID (which only the
    // module can say, and only a PKCS#11 3.0 module has).
    let asked: Vec<&str> = during
        .split("C_GetAttributeValue")
        .skip(1)
        .flat_map(|call| {
            call.lines()
                .take_while(|l| !l.contains("Returned:"))
                .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("CKA_")))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        asked.iter().all(|a| *a == "CKA_UNIQUE_ID"),
        "asked {asked:?}\n{during}"
    );
    assert!(asked.len() <= 2, "asked {asked:?}\n{during}");
    // And the records still name both keys fully.
    let t = fx.trail();
    let made = category(&t, "generate");
    let ids: Vec<(u64, &str, &str, u64)> = made
        .iter()
        .map(|r| {
            (
                n(r, "pkcs11.key.handle"),
                s(r, "pkcs11.key.label"),
                s(r, "pkcs11.key.id_hex"),
                n(r, "pkcs11.key.bits"),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            (named.handle(), "named", "4e", 256),
            (bare.handle(), "", "", 128)
        ],
        "{}",
        dump(&t)
    );
}

#[test]
fn a_forked_child_summarizes_only_its_own_uses() {
    let fx = Fixture::new();
    configure(&fx, "", "usage = \"summary\"");
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = aes_key(&s_, "key-f", &[0xf], false);
    for _ in 0..40 {
        s_.encrypt(&Mechanism::AesEcb, key, &[0; 16])
            .expect("encrypt before fork");
    }
    let pid = fork();
    let uses = if pid == 0 { 150 } else { 100 };
    for _ in 0..uses {
        s_.encrypt(&Mechanism::AesEcb, key, &[0; 16])
            .expect("encrypt after fork");
    }
    if pid == 0 {
        std::mem::forget(s_);
        let _ = p.finalize();
        // SAFETY (test): leave the child without running the parent's test harness.
        unsafe { libc::_exit(0) };
    }
    wait_child(pid);
    drop(s_);
    p.finalize().expect("finalize");
    let t = fx.trail();
    let counts = |want: u32| -> Vec<u64> {
        category(&t, "use")
            .iter()
            .filter(|r| n(r, "process.pid") == u64::from(want))
            .map(|r| n(r, "pkcs11.operation.count"))
            .collect()
    };
    assert_eq!(counts(std::process::id()), [140], "{}", dump(&t));
    assert_eq!(counts(pid as u32), [150], "{}", dump(&t));
}
