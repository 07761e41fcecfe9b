//! `[integrity] anchor_file`: the chain's heads copied to a second file, which then proves
//! a truncated trail truncated.

mod common;
mod support;

use common::*;
use cryptoki::mechanism::Mechanism;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::aes_key;

fn keytrail_bin() -> PathBuf {
    keytrail_module()
        .parent()
        .expect("target dir")
        .join("keytrail")
}

fn verify(args: &[&str]) -> (i32, Value) {
    let o = Command::new(keytrail_bin())
        .arg("verify")
        .arg("--json")
        .args(args)
        .output()
        .expect("run keytrail verify");
    let v: Value = serde_json::from_slice(&o.stdout).expect("verify --json prints JSON");
    (o.status.code().unwrap_or(-1), v)
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect()
}

fn action(line: &str) -> String {
    let v: Value = serde_json::from_str(line).expect("json");
    v["event"]["action"].as_str().unwrap_or("").to_string()
}

#[test]
fn heads_are_copied_to_the_anchor_file_and_prove_a_truncation() {
    let fx = Fixture::new();
    let anchor = fx.path().join("elsewhere").join("anchor.jsonl");
    fx.configure(&format!(
        "[integrity]\ncheckpoint_interval = \"1s\"\nanchor_file = \"{}\"\n",
        anchor.display()
    ));
    let p = open(&keytrail_module());
    let s = user_session(&p);
    for _ in 0..5 {
        s.digest(&Mechanism::Sha256, b"x").expect("digest");
        s.generate_random_vec(8).expect("random");
    }
    std::thread::sleep(Duration::from_millis(2500));
    let key = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                cryptoki::object::Attribute::ValueLen(32.into()),
                cryptoki::object::Attribute::Token(false),
            ],
        )
        .expect("key");
    s.destroy_object(key).expect("destroy");
    drop(s);
    p.finalize().expect("finalize");

    let trail = lines(&fx.trail_path());
    let heads = lines(&anchor);
    let actions: Vec<String> = heads.iter().map(|l| action(l)).collect();
    assert_eq!(actions.first().map(String::as_str), Some("trail_start"));
    assert_eq!(actions.last().map(String::as_str), Some("trail_stop"));
    assert!(actions.iter().any(|a| a == "checkpoint"), "{actions:?}");
    for h in &heads {
        assert!(
            trail.contains(h),
            "each anchored line is a line of the trail: {h}"
        );
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&anchor).expect("anchor").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let anchor_arg = anchor.to_str().expect("utf-8");
    let trail_arg = fx.trail_path();
    let trail_arg = trail_arg.to_str().expect("utf-8");
    let (code, v) = verify(&["--head", anchor_arg, trail_arg]);
    assert_eq!(code, 0, "{v:#}");
    // Cut the trail after the checkpoint: the stop record in the anchor file proves it.
    let keep = trail.len() - 3;
    std::fs::write(fx.trail_path(), trail[..keep].join("\n") + "\n").expect("truncate");
    let (code, v) = verify(&["--head", anchor_arg, trail_arg]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "TRUNCATED", "{v:#}");
}

/// Rebuilds the unkeyed chain over `lines` as an attacker can: each record renumbered
/// from 1 in order, its `prev` the hash of the line before, its hash recomputed.
fn rechain(lines: &[String]) -> Vec<String> {
    use sha2::Digest;
    let mut prev: Option<String> = None;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let cut = l.rfind(",\"integrity\":{").expect("integrity fields");
            let v: Value = serde_json::from_str(l).expect("json");
            let stream = v["integrity"]["stream"].as_str().expect("stream");
            let prefix = format!(
                "{},\"integrity\":{{\"stream\":\"{stream}\",\"seq\":{},\"prev\":{}",
                &l[..cut],
                i + 1,
                prev.as_ref()
                    .map_or_else(|| "null".to_string(), |p| format!("\"{p}\""))
            );
            let hash = hex::encode(sha2::Sha256::digest(prefix.as_bytes()));
            prev = Some(hash.clone());
            format!("{prefix},\"hash\":\"{hash}\"}}}}")
        })
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(p, lines.join("\n") + "\n").expect("write");
}

fn kinds(v: &Value) -> Vec<String> {
    v["streams"][0]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_forged_head_cannot_outvote_the_genuine_one() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let kek = aes_key(&s, "kek", &[0x4b], false);
    let key = aes_key(&s, "payments", &[0x50], true);
    s.wrap_key(&Mechanism::AesKeyWrap, kek, key).expect("wrap");
    s.digest(&Mechanism::Sha256, b"x").expect("digest");
    drop(s);
    p.finalize().expect("finalize");
    let trail = lines(&fx.trail_path());
    assert_eq!(
        rechain(&trail),
        trail,
        "the helper rebuilds the writer's chain"
    );
    let stop = trail.last().expect("stop").clone();
    assert_eq!(action(&stop), "trail_stop");
    // The genuine head, kept in syslog or an anchor file.
    let heads = fx.path().join("heads.log");
    write_lines(&heads, &[format!("Dec  3 10:00:00 vm keytrail[1]: {stop}")]);
    let heads_arg = heads.to_str().expect("utf-8");
    let trail_arg = fx.trail_path();
    let trail_arg = trail_arg.to_str().expect("utf-8");
    let (code, v) = verify(&["--head", heads_arg, trail_arg]);
    assert_eq!(code, 0, "{v:#}");

    // The export record is deleted and the chain recomputed: only the head can tell.
    let export = trail
        .iter()
        .position(|l| action(l) == "key_wrap")
        .expect("export record");
    let mut cut = trail.clone();
    cut.remove(export);
    write_lines(&fx.trail_path(), &rechain(&cut));
    let (code, v) = verify(&[trail_arg]);
    assert_eq!(code, 0, "without a head the rewrite passes: {v:#}");
    let (code, v) = verify(&["--head", heads_arg, trail_arg]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "TRUNCATED", "{v:#}");

    // The attacker pads the trail past the genuine head and adds a head of their own
    // for its new end (anyone can write a line to syslog with logger(1)).
    let mut padded = cut.clone();
    let filler = padded[padded.len() - 2].clone();
    padded.insert(padded.len() - 1, filler.clone());
    padded.insert(padded.len() - 1, filler);
    let forged = rechain(&padded);
    write_lines(&fx.trail_path(), &forged);
    let forged_head = forged.last().expect("forged stop").clone();
    assert!(seq_of(&forged_head) > seq_of(&stop));
    write_lines(
        &heads,
        &[
            format!("Dec  3 10:00:00 vm keytrail[1]: {stop}"),
            format!("Dec  3 10:00:01 vm keytrail[1]: {forged_head}"),
        ],
    );
    let (code, v) = verify(&["--head", heads_arg, trail_arg]);
    assert_eq!(
        code, 1,
        "the genuine head still contradicts the trail: {v:#}"
    );
    assert_eq!(v["streams"][0]["verdict"], "INVALID", "{v:#}");
    assert_eq!(kinds(&v), vec!["head_mismatch"], "{v:#}");
    let f = &v["streams"][0]["findings"][0];
    assert_eq!(f["seq"], seq_of(&stop), "{v:#}");
    assert_eq!(f["head"], format!("{heads_arg}:1"), "{v:#}");

    // And the other way round: forged heads against the genuine trail are findings too,
    // whatever the genuine head beside them says: one past its end, one within it.
    write_lines(&fx.trail_path(), &trail);
    let stream = serde_json::from_str::<Value>(&stop).expect("json")["integrity"]["stream"]
        .as_str()
        .expect("stream")
        .to_string();
    let within = format!("{stream}:2:{}", "0".repeat(64));
    let (code, v) = verify(&["--head", heads_arg, "--head", &within, trail_arg]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "INVALID", "{v:#}");
    let mut k = kinds(&v);
    k.sort();
    assert_eq!(k, vec!["head_mismatch", "truncated"], "{v:#}");
    let f = v["streams"][0]["findings"].as_array().expect("findings");
    let truncated = f
        .iter()
        .find(|f| f["kind"] == "truncated")
        .expect("truncated");
    assert_eq!(truncated["head"], format!("{heads_arg}:2"), "{v:#}");
    let mismatch = f
        .iter()
        .find(|f| f["kind"] == "head_mismatch")
        .expect("mismatch");
    assert_eq!(mismatch["seq"], 2, "{v:#}");
    assert_eq!(mismatch["head"], format!("--head {within}"), "{v:#}");
    assert_eq!(v["streams"][0]["anchored_by_head"], seq_of(&stop), "{v:#}");
}

fn seq_of(line: &str) -> u64 {
    let v: Value = serde_json::from_str(line).expect("record");
    v["integrity"]["seq"].as_u64().expect("seq")
}
