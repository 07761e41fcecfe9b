//! Sealed trails against SoftHSM2: `keytrail seal-key` makes the key and exports its
//! public half; the chain, driven in-process with an `HsmSealer`, seals every checkpoint
//! and stop; `keytrail verify --seal-key` finds a rewrite that recomputed every hash at the
//! first rewritten checkpoint, and reports the checkpoints left unsealed while the token
//! was gone, with their reasons.

mod common;

use common::{Fixture, TOKEN_LABEL, USER_PIN};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use keytrail::audit::event::Event;
use keytrail::seal::{HsmSealer, NewKey, SealAlg, SealConfig};
use keytrail::sink::chain::{Chain, Hasher, split_signed};
use keytrail::sink::json::Origin;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

fn pin_file(fx: &Fixture, pin: &str) -> PathBuf {
    let p = fx.path().join(format!("pin-{pin}"));
    std::fs::write(&p, format!("{pin}\n")).expect("pin file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

fn keytrail(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keytrail"))
        .args(args)
        .output()
        .expect("run keytrail");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `keytrail seal-key` for the fixture's token; the public key's path.
fn seal_key_cli(fx: &Fixture, label: &str, alg: &str) -> PathBuf {
    let pem = fx.path().join(format!("{label}.pem"));
    let module = common::softhsm_module();
    let pin = pin_file(fx, USER_PIN);
    let (code, out, err) = keytrail(&[
        "seal-key",
        "--module",
        module.to_str().expect("path"),
        "--token",
        TOKEN_LABEL,
        "--pin-file",
        pin.to_str().expect("path"),
        "--label",
        label,
        "--alg",
        alg,
        "--out",
        pem.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    pem
}

fn sealer(fx: &Fixture, label: &str) -> Arc<Mutex<HsmSealer>> {
    let s = HsmSealer::new(SealConfig {
        module: common::softhsm_module(),
        token_label: TOKEN_LABEL.into(),
        key_label: Some(label.into()),
        key_id: None,
        pin_file: pin_file(fx, USER_PIN),
    })
    .expect("sealer");
    Arc::new(Mutex::new(s))
}

fn ev(action: &'static str, m: String) -> Event {
    Event::audit(action, m, serde_json::json!({}))
}

fn verify(trail: &Path, seal_key: Option<&Path>) -> (i32, Value, String) {
    let mut args = vec!["verify", "--quiet", trail.to_str().expect("path")];
    if let Some(k) = seal_key {
        args.extend(["--seal-key", k.to_str().expect("path")]);
    }
    let (_, text, _) = keytrail(&args);
    args.push("--json");
    let (code, out, err) = keytrail(&args);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    (code, v, text)
}

fn records(trail: &Path) -> Vec<Value> {
    std::fs::read_to_string(trail)
        .expect("trail")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

/// Rewrites record `seq` (its message) and recomputes every hash after it, as someone who
/// can write the trail and knows the algorithm would: each later record's `prev`, and the
/// heads checkpoints carry, now name the new hashes.
fn rewrite(trail: &Path, seq: usize) {
    let text = std::fs::read_to_string(trail).expect("trail");
    let mut out = String::new();
    let mut renamed: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut line = line.to_string();
        if i + 1 == seq {
            line = line.replacen("record 2", "record 2 (rewritten)", 1);
        }
        if i + 1 < seq {
            out.push_str(&line);
            out.push('\n');
            continue;
        }
        for (old, new) in &renamed {
            line = line.replace(old.as_str(), new);
        }
        let (prefix, old) = split_signed(line.as_bytes()).expect("signed line");
        let old = String::from_utf8(old.to_vec()).expect("hex");
        let new = hex::encode(Sha256::digest(prefix));
        let prefix = String::from_utf8(prefix.to_vec()).expect("utf8");
        out.push_str(&format!("{prefix},\"hash\":\"{new}\"}}}}\n"));
        renamed.push((old, new));
    }
    std::fs::write(trail, out).expect("write");
}

/// A sealed stream: start, then three groups of three records each followed by a
/// checkpoint, then a stop. Returns the trail's path.
fn sealed_trail(fx: &Fixture, label: &str) -> PathBuf {
    let mut chain = Chain::with(Hasher::Plain, None);
    chain.set_sealer(sealer(fx, label));
    let origin = Origin::current(None);
    let mut out = Vec::new();
    chain.append(&ev("trail_start", "start".into()), &origin, &mut out);
    for g in 0..3 {
        for i in 0..3 {
            chain.append(
                &ev("test", format!("group {g} record {i}")),
                &origin,
                &mut out,
            );
        }
        chain.append(&ev("checkpoint", "checkpoint".into()), &origin, &mut out);
    }
    chain.append(&ev("trail_stop", "stop".into()), &origin, &mut out);
    let trail = fx.path().join(format!("{label}.jsonl"));
    std::fs::write(&trail, out).expect("write trail");
    trail
}

fn rewritten_trail_fails_at_the_first_rewritten_checkpoint(alg: &str, want: &str) {
    let fx = Fixture::new();
    let pem = seal_key_cli(&fx, "seal", alg);
    assert!(
        std::fs::read_to_string(&pem)
            .expect("pem")
            .starts_with("-----BEGIN PUBLIC KEY-----\n")
    );
    // The key on the token is what the command promises.
    let p = common::open(&common::softhsm_module());
    let s = common::user_session(&p);
    let keys = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"seal".to_vec()),
        ])
        .expect("find");
    assert_eq!(keys.len(), 1);
    let attrs = s
        .get_attributes(
            keys[0],
            &[
                AttributeType::Sign,
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::Token,
            ],
        )
        .expect("attributes");
    for a in attrs {
        match a {
            Attribute::Sign(b) | Attribute::Sensitive(b) | Attribute::Token(b) => assert!(b),
            Attribute::Extractable(b) => assert!(!b),
            other => panic!("{other:?}"),
        }
    }

    let trail = sealed_trail(&fx, "seal");
    let recs = records(&trail);
    // The sealer's login is a record of its own, before the first checkpoint (whose seal
    // covers it), naming the token and key, never the PIN.
    let login = &recs[4];
    assert_eq!(login["event"]["action"], "seal_login");
    assert_eq!(login["event"]["outcome"], "success");
    assert_eq!(login["keytrail"]["token"], TOKEN_LABEL);
    assert_eq!(login["keytrail"]["alg"], want);
    assert!(!login.to_string().contains("pin-"), "{login}");
    let first_checkpoint = recs
        .iter()
        .position(|r| r["event"]["action"] == "checkpoint")
        .expect("a checkpoint")
        + 1;
    assert_eq!(first_checkpoint, 6);
    assert_eq!(recs[5]["keytrail"]["seal"]["alg"], want);

    let (code, v, text) = verify(&trail, Some(&pem));
    assert_eq!(code, 0, "{text}");
    assert_eq!(v["streams"][0]["seal"]["valid_seals"], 4, "{text}");
    assert_eq!(v["streams"][0]["seal"]["unsealed_tail"], 0, "{text}");

    // The stop's own fields are covered by no later seal; the head it states must still
    // be the chain's.
    let text = std::fs::read_to_string(&trail).expect("trail");
    let last = text.lines().last().expect("stop");
    let edited = last.replacen("\"seq\":14},", "\"seq\":13},", 1);
    assert_ne!(edited, last, "{last}");
    let (prefix, _) = split_signed(edited.as_bytes()).expect("signed");
    let prefix = String::from_utf8(prefix.to_vec()).expect("utf8");
    let hash = hex::encode(Sha256::digest(prefix.as_bytes()));
    let forged = fx.path().join("forged-head.jsonl");
    let body = &text[..text.len() - last.len() - 1];
    std::fs::write(
        &forged,
        format!("{body}\n{prefix},\"hash\":\"{hash}\"}}}}\n"),
    )
    .expect("write");
    let (code, v, text) = verify(&forged, Some(&pem));
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        v["streams"][0]["seal"]["first_failure"]["seq"], 15,
        "{text}"
    );
    assert!(text.contains("the head it states"), "{text}");

    // Record 3 ("group 0 record 2") rewritten, every hash after it recomputed.
    rewrite(&trail, 4);
    let (code, _, text) = verify(&trail, None);
    assert_eq!(code, 0, "the unkeyed chain cannot tell: {text}");
    let (code, v, text) = verify(&trail, Some(&pem));
    assert_eq!(code, 1, "{text}");
    let seal = &v["streams"][0]["seal"];
    assert_eq!(seal["first_failure"]["seq"], first_checkpoint, "{text}");
    assert_eq!(seal["first_failure"]["kind"], "bad", "{text}");
    assert_eq!(
        seal["bad_seals"], 4,
        "every later seal covers the rewrite: {text}"
    );
    assert!(
        text.contains(&format!(
            "first badly sealed checkpoint: seq {first_checkpoint}"
        )),
        "{text}"
    );
    assert!(text.contains("unsealed tail of 15 records"), "{text}");
}

#[test]
fn p256_seals_catch_a_rewrite_that_recomputed_every_hash() {
    rewritten_trail_fails_at_the_first_rewritten_checkpoint("p256", "ecdsa-p256-sha256");
}

/// SoftHSM2 2.6 offers CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA (with OpenSSL 1.1.1+).
#[test]
fn ed25519_seals_catch_a_rewrite_that_recomputed_every_hash() {
    rewritten_trail_fails_at_the_first_rewritten_checkpoint("ed25519", "ed25519");
}

#[test]
fn seal_key_refuses_a_missing_token_a_wrong_pin_and_a_taken_label() {
    let fx = Fixture::new();
    seal_key_cli(&fx, "seal", "p256");
    let module = common::softhsm_module();
    let module = module.to_str().expect("path");
    let good = pin_file(&fx, USER_PIN);
    let wrong = pin_file(&fx, "0000");
    let run = |token: &str, pin: &Path, label: &str| {
        keytrail(&[
            "seal-key",
            "--module",
            module,
            "--token",
            token,
            "--pin-file",
            pin.to_str().expect("path"),
            "--label",
            label,
        ])
    };
    let (code, _, err) = run("no-such-token", &good, "other");
    assert_eq!(code, 2);
    assert!(err.contains("no token labelled \"no-such-token\""), "{err}");
    let (code, _, err) = run(TOKEN_LABEL, &wrong, "other");
    assert_eq!(code, 2);
    assert!(err.contains("PIN") && err.contains("wrong"), "{err}");
    assert!(!err.contains("0000\n"), "{err}");
    let (code, _, err) = run(TOKEN_LABEL, &good, "seal");
    assert_eq!(code, 2);
    assert!(err.contains("already on the token"), "{err}");
    // Without --out the public key goes to stdout.
    let (code, out, err) = run(TOKEN_LABEL, &good, "second");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("-----BEGIN PUBLIC KEY-----"), "{out}");
}

/// The token disappears mid-run (the module is finalized under the sealer, as when the HSM
/// restarts, and the token's store is gone) and comes back: the checkpoints in between say
/// they are unsealed and why, each failed login is a record, the sealer seals again once
/// the token is back, and the verifier reports the span.
#[test]
fn checkpoints_while_the_token_is_gone_are_unsealed_with_the_reason() {
    let fx = Fixture::new();
    let module = common::softhsm_module();
    let made = keytrail::seal::create_key(&NewKey {
        module: module.clone(),
        token_label: TOKEN_LABEL.into(),
        pin_file: pin_file(&fx, USER_PIN),
        label: "seal".into(),
        id: Some(vec![0x5e, 0xa1]),
        alg: Some(SealAlg::P256),
    })
    .expect("create the sealing key");
    let pem = fx.path().join("seal.pem");
    std::fs::write(&pem, &made.public_pem).expect("pem");

    let mut chain = Chain::with(Hasher::Plain, None);
    chain.set_sealer(sealer(&fx, "seal"));
    let origin = Origin::current(None);
    let mut out = Vec::new();
    let checkpoint = |chain: &mut Chain, out: &mut Vec<u8>, g: usize| {
        for i in 0..3 {
            chain.append(&ev("test", format!("group {g} record {i}")), &origin, out);
        }
        chain.append(&ev("checkpoint", "checkpoint".into()), &origin, out);
    };
    chain.append(&ev("trail_start", "start".into()), &origin, &mut out);
    checkpoint(&mut chain, &mut out, 0);

    // The token goes: C_Finalize through another handle on the same module ends the
    // sealer's session and login, and the token's directory leaves the store.
    cryptoki::context::Pkcs11::new(&module)
        .expect("load")
        .finalize()
        .expect("C_Finalize under the sealer");
    let tokens = fx.path().join("softhsm").join("tokens");
    let token_dir = std::fs::read_dir(&tokens)
        .expect("token store")
        .next()
        .expect("the token's directory")
        .expect("entry")
        .path();
    let away = fx.path().join("token-away");
    std::fs::rename(&token_dir, &away).expect("take the token away");
    for g in 1..4 {
        checkpoint(&mut chain, &mut out, g);
    }
    let down = out.clone();
    std::fs::rename(&away, &token_dir).expect("bring the token back");
    checkpoint(&mut chain, &mut out, 4);
    chain.append(&ev("trail_stop", "stop".into()), &origin, &mut out);
    let trail = fx.path().join("trail.jsonl");
    std::fs::write(&trail, &out).expect("write");

    let recs = records(&trail);
    let heads: Vec<&Value> = recs
        .iter()
        .filter(|r| {
            matches!(
                r["event"]["action"].as_str(),
                Some("checkpoint" | "trail_stop")
            )
        })
        .collect();
    assert_eq!(heads.len(), 6);
    assert!(heads[0]["keytrail"]["seal"]["sig"].is_string());
    let reasons: Vec<&str> = heads[1..4]
        .iter()
        .map(|h| {
            h["keytrail"]["seal"]["unsealed"]
                .as_str()
                .expect("unsealed")
        })
        .collect();
    assert!(reasons[0].starts_with("C_Sign failed"), "{reasons:?}");
    assert!(
        reasons[1..]
            .iter()
            .all(|r| r.contains("no token labelled") || r.contains("C_GetSlotList")),
        "{reasons:?}"
    );
    assert!(
        heads[4]["keytrail"]["seal"]["sig"].is_string(),
        "sealed again"
    );
    assert!(heads[5]["keytrail"]["seal"]["sig"].is_string());
    let logins: Vec<&str> = recs
        .iter()
        .filter(|r| r["event"]["action"] == "seal_login")
        .map(|r| r["event"]["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(logins, ["success", "failure", "failure", "success"]);

    let (code, v, text) = verify(&trail, Some(&pem));
    assert_eq!(code, 0, "a later seal proves the span: {text}");
    let seal = &v["streams"][0]["seal"];
    assert_eq!(seal["unsealed_checkpoints"], 3, "{text}");
    let span = &seal["unsealed_spans"][0];
    let seq = |h: &Value| h["integrity"]["seq"].as_u64().expect("seq");
    assert_eq!(span["from_seq"].as_u64(), Some(seq(heads[1])), "{text}");
    assert_eq!(span["to_seq"].as_u64(), Some(seq(heads[3])), "{text}");
    assert_eq!(span["sealed_after"], true);
    assert_eq!(seal["first_failure"]["kind"], "unsealed");
    assert!(text.contains("unsealed span: 3 checkpoints"), "{text}");
    assert!(text.contains("C_Sign failed"), "{text}");

    // The trail as it stood while the token was gone: its tail is unsealed.
    std::fs::write(&trail, &down).expect("write");
    let (code, v, text) = verify(&trail, Some(&pem));
    assert_eq!(code, 3, "{text}");
    let tail = seq(heads[3]) - seq(heads[0]);
    assert_eq!(v["streams"][0]["seal"]["unsealed_tail"], tail, "{text}");
    assert!(
        text.contains(&format!("unsealed tail of {tail} records")),
        "{text}"
    );
}
