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

use argfuzz::call::SECRET_VALUES;
use argfuzz::harness::{Difference, Harness};
use common::*;
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

#[test]
fn random_arguments_behave_as_without_keytrail_and_leak_nothing() {
    let cases = env_u64("KT_FUZZ_CASES").unwrap_or(CASES);
    let seed = env_u64("KT_FUZZ_SEED").unwrap_or(SEED);
    // Each keytrail child syncs its trail at C_Finalize: on a memory file system that
    // costs nothing, on a busy disk tens of milliseconds a case.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("dir");
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

/// The trail every keytrail child wrote: each record passes [`argfuzz::trail::check`],
/// and no secret value appears in any encoding the scanner knows (base64 too).
fn scan_trail(h: &Harness, cases: u64, died: &std::collections::BTreeSet<libc::pid_t>) {
    let mut text = Vec::new();
    let mut calls = 0;
    let mut rejected = 0;
    for (pid, path) in h.trails() {
        let records =
            argfuzz::trail::records(&path, died.contains(&pid)).unwrap_or_else(|e| panic!("{e}"));
        for (line, r) in &records {
            if s(r, "pkcs11.lifecycle") != "audit" {
                calls += 1;
            }
            if argfuzz::trail::check(line, r).unwrap_or_else(|e| panic!("{e}")) {
                rejected += 1;
            }
        }
        text.extend(std::fs::read(&path).expect("trail file"));
    }
    assert!(calls >= cases / 2, "only {calls} records for {cases} cases");
    assert!(
        cases < CASES || rejected > 100,
        "only {rejected} rejected templates on record"
    );

    let never: Vec<Secret> = SECRET_VALUES
        .iter()
        .enumerate()
        .map(|(i, v)| Secret {
            name: format!("secret_value_{i}"),
            bytes: v.to_vec(),
        })
        .collect();
    let diagnostics = std::fs::read(h.diagnostics()).unwrap_or_default();
    let hits = scan(
        &never,
        &[
            ("trail".to_string(), text),
            ("diagnostics".into(), diagnostics.clone()),
        ],
    );
    assert!(hits.is_empty(), "secret values in the trail: {hits:#?}");
    let diagnostics = String::from_utf8_lossy(&diagnostics);
    assert!(
        !diagnostics.contains("internal error"),
        "keytrail panicked: {diagnostics}"
    );
}
