//! `[integrity] anchor_file`: the chain's heads copied to a second file, which then proves
//! a truncated trail truncated.

mod common;

use common::*;
use cryptoki::mechanism::Mechanism;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
