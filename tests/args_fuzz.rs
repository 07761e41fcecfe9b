//! Crash parity and secrecy under random arguments: a fixed number of seeded cases
//! (tests/argfuzz), each run directly on SoftHSM2 and through keytrail in forked
//! children, must behave identically; and the trail they leave must hold no planted
//! secret and no value from a template the module rejected.
//!
//! `KT_FUZZ_CASES` and `KT_FUZZ_SEED` change the number of cases and the seed for a
//! longer or different run, `KT_FUZZ_SHOW=TEXT` prints the cases whose report contains
//! TEXT; fuzz/ has a cargo-fuzz target for open-ended runs.

mod argfuzz;
mod common;
mod support;

use argfuzz::arena::PIN_CANARY;
use argfuzz::call::SECRET_VALUES;
use argfuzz::harness::{Difference, Harness};
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use support::scan::{Secret, scan};
use support::*;

const CASES: u64 = 4000;
const SEED: u64 = 0x6b74_7261_696c_0014;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Calls that take a template: after a failure their records carry no attribute list.
const TEMPLATE_ACTIONS: [&str; 9] = [
    "object_create",
    "object_copy",
    "key_generate",
    "key_pair_generate",
    "key_derive",
    "key_unwrap",
    "attribute_set",
    "attribute_read",
    "attribute_read_secret",
];

#[test]
fn random_arguments_behave_as_without_keytrail_and_leak_nothing() {
    let cases = env_u64("KT_FUZZ_CASES").unwrap_or(CASES);
    let seed = env_u64("KT_FUZZ_SEED").unwrap_or(SEED);
    let dir = tempfile::tempdir().expect("dir");
    let mut h = Harness::new(
        dir.path(),
        &softhsm_module(),
        &keytrail_module(),
        "level = \"trace\"",
    );

    let mut differences: Vec<(u64, Difference)> = Vec::new();
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    // keytrail children that died with the module: their trail may end in a torn line.
    let mut died = std::collections::BTreeSet::new();
    // Prints the cases whose report contains this text (to see what a run exercises).
    let show = std::env::var("KT_FUZZ_SHOW").ok();
    for i in 0..cases {
        let case_seed = argfuzz::case_seed(seed, i);
        match h.compare(&|| Box::new(fastrand::Rng::with_seed(case_seed))) {
            Ok(o) => {
                if show.as_deref().is_some_and(|t| o.report.contains(t)) {
                    eprintln!("case {i} [{}] {}", o.status, o.report);
                }
                let call = o
                    .report
                    .split_whitespace()
                    .find(|w| w.starts_with("C_"))
                    .unwrap_or("?")
                    .to_string();
                let how = if o.status == "exit 0" {
                    match o.report.split("out rv=").nth(1) {
                        Some(r) if r.starts_with("0x0 ") => "ok",
                        _ => "error",
                    }
                } else {
                    died.insert(o.pid);
                    "crash (both)"
                };
                *tally.entry(format!("{call} {how}")).or_default() += 1;
            }
            Err(d) => differences.push((i, d)),
        }
    }
    assert_eq!(h.finalize(), cryptoki_sys::CKR_OK);
    eprintln!("{cases} cases, seed {seed:#x}: {tally:#?}");

    let shown: Vec<String> = differences
        .iter()
        .take(15)
        .map(|(i, d)| {
            format!(
                "case {i} (KT_FUZZ_SEED={seed:#x}):\n  direct   [{}] {}\n  keytrail [{}] {}",
                d.direct.status, d.direct.report, d.keytrail.status, d.keytrail.report
            )
        })
        .collect();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for (_, d) in &differences {
        *kinds.entry(difference_kind(d)).or_default() += 1;
    }
    assert!(
        differences.is_empty(),
        "{} of {cases} cases differ through keytrail: {kinds:#?}\n{}",
        differences.len(),
        shown.join("\n")
    );

    // The run was not vacuous: every kind of call succeeded and failed at least once.
    for call in [
        "C_CreateObject",
        "C_CopyObject",
        "C_GenerateKey",
        "C_GenerateKeyPair",
        "C_DeriveKey",
        "C_SetAttributeValue",
        "C_GetAttributeValue",
        "C_FindObjectsInit",
        "C_SignInit",
        "C_EncryptInit",
        "C_WrapKey",
        "C_UnwrapKey",
    ] {
        if cases >= CASES {
            for how in ["ok", "error"] {
                assert!(
                    tally.contains_key(&format!("{call} {how}")),
                    "no {call} {how}: {tally:#?}"
                );
            }
        }
    }

    scan_trail(&h, cases, &died);
}

/// A difference in a few words: the call, SoftHSM's answer, and what keytrail did.
fn difference_kind(d: &Difference) -> String {
    let call = d
        .direct
        .report
        .split_whitespace()
        .find(|w| w.starts_with("C_"))
        .unwrap_or("?");
    let answer = |o: &argfuzz::harness::Outcome| match o.report.split("out rv=").nth(1) {
        Some(r) => format!("rv={}", r.split_whitespace().next().unwrap_or("?")),
        None => o.status.clone(),
    };
    let (a, b) = (answer(&d.direct), answer(&d.keytrail));
    if a == b {
        format!("{call}: {a}, other output differs")
    } else {
        format!("{call}: {a} directly, {b} through keytrail")
    }
}

/// The trail every keytrail child wrote: no secret value in any form, no PIN from the
/// application's neighbouring memory and no fingerprint of a secret in the record of a
/// rejected call, and no attribute list in it at all. Every line is a whole record, but
/// for the last of a process that died in the middle of a call (with the module, which
/// crashed the same way without keytrail).
fn scan_trail(h: &Harness, cases: u64, died: &std::collections::BTreeSet<libc::pid_t>) {
    let mut text = String::new();
    let mut records: Vec<Value> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    for (pid, path) in h.trails() {
        let file = std::fs::read_to_string(&path).expect("trail file");
        let count = file.lines().count();
        for (i, line) in file.lines().enumerate() {
            match serde_json::from_str(line) {
                Ok(r) => {
                    records.push(r);
                    lines.push(line.to_string());
                }
                Err(e) => assert!(
                    died.contains(&pid) && i + 1 == count,
                    "{}: line {} is no record ({e}): {line}",
                    path.display(),
                    i + 1
                ),
            }
        }
        text.push_str(&file);
    }
    let calls = records
        .iter()
        .filter(|r| s(r, "pkcs11.lifecycle") != "audit")
        .count() as u64;
    assert!(calls >= cases / 2, "only {calls} records for {cases} cases");

    let never: Vec<Secret> = SECRET_VALUES
        .iter()
        .enumerate()
        .map(|(i, v)| Secret {
            name: format!("secret_value_{i}"),
            bytes: v.to_vec(),
        })
        .collect();
    let mut sources = vec![("trail".to_string(), text.clone().into_bytes())];
    sources.push((
        "diagnostics".into(),
        std::fs::read(h.diagnostics()).unwrap_or_default(),
    ));
    let hits = scan(&never, &sources);
    assert!(hits.is_empty(), "secret values in the trail: {hits:#?}");
    let diagnostics = String::from_utf8_lossy(&sources[1].1).into_owned();
    assert!(
        !diagnostics.contains("internal error"),
        "keytrail panicked: {diagnostics}"
    );

    // A fingerprint of a secret value is as good as the value; only a value the module
    // took for a certificate's or a public key's may be fingerprinted.
    let fingerprints: Vec<Secret> = SECRET_VALUES
        .iter()
        .enumerate()
        .map(|(i, v)| Secret {
            name: format!("sha256(secret_value_{i})"),
            bytes: Sha256::digest(v).to_vec(),
        })
        .collect();
    let pin = Secret {
        name: "pin_in_neighbouring_memory".into(),
        bytes: PIN_CANARY[1..PIN_CANARY.len() - 1].to_vec(),
    };
    let mut rejected = 0;
    for (line, r) in lines.iter().zip(&records) {
        let public = matches!(
            s(r, "pkcs11.key.class"),
            "CKO_CERTIFICATE" | "CKO_PUBLIC_KEY"
        ) && s(r, "event.outcome") == "success";
        if !public {
            let hits = scan(
                &fingerprints,
                &[("record".into(), line.as_bytes().to_vec())],
            );
            assert!(hits.is_empty(), "fingerprint of a secret: {line}");
        }
        if s(r, "event.outcome") != "failure" {
            continue;
        }
        let hits = scan(
            std::slice::from_ref(&pin),
            &[("record".into(), line.as_bytes().to_vec())],
        );
        assert!(
            hits.is_empty(),
            "a rejected call logged neighbouring memory: {line}"
        );
        let action = s(r, "event.action");
        if action.starts_with("attribute_read") {
            // A failed read lists what was asked for, without a value.
            let read = at(r, "pkcs11.attributes.read").as_array().cloned();
            for a in read.unwrap_or_default() {
                let fields: Vec<&String> = a.as_object().expect("attribute").keys().collect();
                assert!(
                    fields == ["redacted", "type"] || fields == ["type", "unavailable"],
                    "a value from a failed read: {line}"
                );
            }
        } else if TEMPLATE_ACTIONS.contains(&action) {
            rejected += 1;
            assert!(
                at(r, "pkcs11.attributes").is_null(),
                "a rejected template was logged: {line}"
            );
            assert!(
                at(r, "pkcs11.attribute_count").is_object(),
                "no attribute count: {line}"
            );
        }
    }
    assert!(
        cases < CASES || rejected > 100,
        "only {rejected} rejected templates on record"
    );
}
