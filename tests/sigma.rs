//! The Sigma rules of `rules/sigma/`, converted by pySigma (from PyPI) with its DuckDB
//! backend, run over real trails: each test runs one workload through keytrail against a
//! fresh SoftHSM2 token, loads its trail into DuckDB (tests/sigma/run.py) and checks that
//! exactly the rules meant for that workload fire — none on a routine workload (open,
//! login, sign, close).
//!
//! The Python comes from `KEYTRAIL_SIGMA_PYTHON` (scripts/test.sh makes a virtual
//! environment with pySigma, pysigma-backend-duckdb and duckdb, and sets it).
//!
//! The backend's `event_count` correlation counts over everything loaded and does not apply
//! the rule's `timespan` (a SIEM does); the failed-login workloads happen within seconds,
//! and a workload one failure short of the threshold shows that the count is applied.

mod common;
mod support;

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use support::*;

/// Every rule in rules/sigma/ that produces a query, by its `name`.
const RULES: [&str; 7] = [
    "keytrail_failed_logins_per_process",
    "keytrail_failed_logins_per_user",
    "keytrail_key_destroyed",
    "keytrail_key_exported",
    "keytrail_records_lost",
    "keytrail_secret_attribute_read",
    "keytrail_token_initialized",
];

/// The failed logins the correlation rules count before they fire.
const FAILED_LOGIN_THRESHOLD: usize = 5;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Converts every rule and runs it over `fx`'s trail: rule name → rows it returned.
fn run_rules(fx: &Fixture) -> BTreeMap<String, u64> {
    let python = std::env::var_os("KEYTRAIL_SIGMA_PYTHON").unwrap_or_else(|| {
        panic!(
            "KEYTRAIL_SIGMA_PYTHON is not set: run scripts/test.sh, which installs pySigma \
             and its DuckDB backend and sets it"
        )
    });
    let out = Command::new(&python)
        .arg(repo().join("tests/sigma/run.py"))
        .arg(repo().join("rules/sigma"))
        .arg(fx.trail_path())
        .output()
        .expect("run tests/sigma/run.py");
    assert!(
        out.status.success(),
        "run.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("run.py prints JSON");
    let rules = v["rules"].as_object().expect("rules");
    let names: Vec<&str> = rules.keys().map(String::as_str).collect();
    assert_eq!(names, RULES, "the rules converted: {v:#}");
    rules
        .iter()
        .map(|(k, r)| (k.clone(), r["hits"].as_u64().expect("hits")))
        .collect()
}

/// Asserts that exactly `want` fire (each with at least one row), and no other rule.
fn assert_fire(fx: &Fixture, want: &[&str]) -> BTreeMap<String, u64> {
    let hits = run_rules(fx);
    let fired: Vec<&str> = hits
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, _)| k.as_str())
        .collect();
    let mut want = want.to_vec();
    want.sort_unstable();
    assert_eq!(
        fired,
        want,
        "rules that fired: {hits:?}; trail: {}",
        dump(&fx.trail())
    );
    hits
}

/// A token EC key pair made directly through SoftHSM2, before keytrail is loaded, so that
/// a routine workload needs no key generation of its own.
fn provision_signing_key() {
    let p = open(&softhsm_module());
    let s = user_session(&p);
    let public = [
        Attribute::Token(true),
        Attribute::EcParams(P256.to_vec()),
        Attribute::Verify(true),
        Attribute::Label(b"app-signing".to_vec()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sign(true),
        Attribute::Sensitive(true),
        Attribute::Label(b"app-signing".to_vec()),
    ];
    s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .expect("C_GenerateKeyPair");
    drop(s);
    p.finalize().expect("finalize SoftHSM2");
}

fn signing_key(s: &Session) -> ObjectHandle {
    *s.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(b"app-signing".to_vec()),
    ])
    .expect("find")
    .first()
    .expect("the provisioned key")
}

/// Open, login, sign, close: what an application does all day.
fn routine() {
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = signing_key(&s);
    for _ in 0..3 {
        s.sign(&Mechanism::Ecdsa, key, &[7; 32]).expect("sign");
    }
    s.logout().expect("logout");
    drop(s);
    p.finalize().expect("finalize");
}

#[test]
fn routine_use_fires_no_rule() {
    let fx = Fixture::new();
    provision_signing_key();
    routine();
    let trail = fx.trail();
    assert_eq!(category(&trail, "use").len(), 3, "{}", dump(&trail));
    assert_eq!(category(&trail, "auth").len(), 2, "{}", dump(&trail));
    let hits = assert_fire(&fx, &[]);
    assert!(hits.values().all(|n| *n == 0));
}

#[test]
fn a_destroyed_key_fires_key_destroyed() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = aes_key(&s, "retired", &[0x0d], false);
    s.destroy_object(key).expect("destroy");
    drop(s);
    p.finalize().expect("finalize");
    let hits = assert_fire(&fx, &["keytrail_key_destroyed"]);
    assert_eq!(hits["keytrail_key_destroyed"], 1);
}

#[test]
fn a_wrapped_key_fires_key_exported() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let kek = aes_key(&s, "kek", &[0x0e], false);
    let dek = aes_key(&s, "dek", &[0x0f], true);
    s.wrap_key(&Mechanism::AesKeyWrap, kek, dek).expect("wrap");
    drop(s);
    p.finalize().expect("finalize");
    let hits = assert_fire(&fx, &["keytrail_key_exported"]);
    assert_eq!(hits["keytrail_key_exported"], 1);
}

#[test]
fn a_secret_attribute_read_or_refused_fires_secret_attribute_read() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    // An extractable key imported by value: its CKA_VALUE comes back.
    let open_key = s
        .create_object(&aes_import_template("readable", &[0x1a], &[0x42; 32]))
        .expect("import");
    s.get_attributes(open_key, &[AttributeType::Value])
        .expect("read CKA_VALUE");
    // A sensitive key: the module refuses, and the attempt is on record.
    let sensitive = aes_key(&s, "sensitive", &[0x1b], false);
    let refused = s.get_attributes(sensitive, &[AttributeType::Value]);
    assert!(
        refused.is_err()
            || refused
                .as_ref()
                .is_ok_and(|a| !a.iter().any(|x| matches!(x, Attribute::Value(_)))),
        "{refused:?}"
    );
    drop(s);
    p.finalize().expect("finalize");
    let hits = assert_fire(&fx, &["keytrail_secret_attribute_read"]);
    assert_eq!(hits["keytrail_secret_attribute_read"], 2);
}

/// `failures` wrong PINs in a row, then the right one.
fn failed_logins(failures: usize) {
    let p = open(&keytrail_module());
    let s = p.open_ro_session(token_slot(&p)).expect("session");
    for _ in 0..failures {
        s.login(UserType::User, Some(&AuthPin::new("000000".into())))
            .expect_err("wrong PIN");
    }
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");
    drop(s);
    p.finalize().expect("finalize");
}

#[test]
fn repeated_failed_logins_fire_per_user_and_per_process() {
    let fx = Fixture::new();
    failed_logins(FAILED_LOGIN_THRESHOLD);
    assert_fire(
        &fx,
        &[
            "keytrail_failed_logins_per_process",
            "keytrail_failed_logins_per_user",
        ],
    );
}

#[test]
fn failed_logins_below_the_threshold_fire_nothing() {
    let fx = Fixture::new();
    failed_logins(FAILED_LOGIN_THRESHOLD - 1);
    let trail = fx.trail();
    let failures = trail
        .iter()
        .filter(|r| s(r, "event.action") == "login" && s(r, "event.outcome") == "failure")
        .count();
    assert_eq!(failures, FAILED_LOGIN_THRESHOLD - 1);
    assert_fire(&fx, &[]);
}

#[test]
fn a_token_initialization_fires_token_initialized() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    p.init_token(token_slot(&p), &AuthPin::new(SO_PIN.into()), "reset")
        .expect("C_InitToken");
    p.finalize().expect("finalize");
    let hits = assert_fire(&fx, &["keytrail_token_initialized"]);
    assert_eq!(hits["keytrail_token_initialized"], 1);
}

#[test]
fn dropped_records_fire_records_lost() {
    let fx = Fixture::new();
    dropping_burst(&fx);
    let trail = fx.trail();
    assert!(
        trail
            .iter()
            .any(|r| s(r, "event.action") == "records_dropped"),
        "no record was dropped: a queue of one kept up with four threads"
    );
    assert_fire(&fx, &["keytrail_records_lost"]);
}
