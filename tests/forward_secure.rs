//! Forward-secure epochs: trails written through the chain across several epochs and a
//! restart verify with the initial key; a record of an earlier epoch forged with the
//! current epoch's key (read from the key file on the host, as an attacker would) is
//! detected, whether it keeps its epoch or claims the current one.

use keytrail::audit::event::Event;
use keytrail::config::{IntegrityConfig, IntegrityMode, Interval};
use keytrail::sink::chain::epoch::EpochKey;
use keytrail::sink::chain::{Chain, HASH_MARKER, split_signed};
use keytrail::sink::json::Origin;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const EPOCH: Duration = Duration::from_millis(400);

fn config(dir: &Path) -> IntegrityConfig {
    IntegrityConfig {
        mode: IntegrityMode::ForwardSecure,
        epoch_interval: Interval(Some(EPOCH)),
        key_file: Some(dir.join("current.key")),
        initial_key_file: Some(dir.join("initial.key")),
        checkpoint_interval: Interval(None),
        ..IntegrityConfig::default()
    }
}

/// One stream: a start, `epochs` groups of records one epoch apart, a stop.
fn write_stream(dir: &Path, name: &str, epochs: usize) {
    let mut chain = Chain::new(&config(dir)).expect("forward-secure chain");
    let origin = Origin::current(None);
    let mut out = Vec::new();
    let ev = |a: &'static str, m: String| Event::audit(a, m, serde_json::json!({}));
    chain.append(&ev("trail_start", "start".into()), &origin, &mut out);
    for e in 0..epochs {
        for i in 0..3 {
            chain.append(
                &ev("test", format!("epoch group {e} record {i}")),
                &origin,
                &mut out,
            );
        }
        std::thread::sleep(EPOCH + Duration::from_millis(50));
    }
    chain.append(&ev("trail_stop", "stop".into()), &origin, &mut out);
    std::fs::write(dir.join(name), out).expect("write trail");
}

fn verify(dir: &Path, trail: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keytrail"))
        .arg("verify")
        .arg("--quiet")
        .arg("--initial-key")
        .arg(dir.join("initial.key"))
        .arg(trail)
        .output()
        .expect("run keytrail verify");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let at = line.find(name).expect("field") + name.len();
    let end = line[at..].find([',', '}']).map_or(line.len(), |e| at + e);
    &line[at..end]
}

/// Rewrites the lines from `from` on as an attacker holding the current key would:
/// `edit` changes the first, every one gets `epoch` and is keyed and re-chained.
fn forge(lines: &mut [String], from: usize, key: &EpochKey, epoch: u64) {
    use hmac::Mac;
    let mut prev = field(&lines[from - 1], "\"hash\":\"")
        .trim_matches('"')
        .to_string();
    for (n, line) in lines.iter_mut().enumerate().skip(from) {
        let mut l = line.clone();
        if n == from {
            l = l.replacen("record 1", "record X", 1);
        }
        let old_prev = field(&l, "\"prev\":").to_string();
        l = l.replacen(
            &format!("\"prev\":{old_prev}"),
            &format!("\"prev\":\"{prev}\""),
            1,
        );
        let old_epoch = field(&l, "\"epoch\":").to_string();
        l = l.replacen(
            &format!("\"epoch\":{old_epoch}"),
            &format!("\"epoch\":{epoch}"),
            1,
        );
        let (prefix, _) = split_signed(l.as_bytes()).expect("signed line");
        let mut m = key.mac().expect("mac");
        m.update(prefix);
        let hash = hex::encode(m.finalize().into_bytes());
        let mut rebuilt = prefix.to_vec();
        rebuilt.extend_from_slice(HASH_MARKER);
        rebuilt.extend_from_slice(hash.as_bytes());
        rebuilt.extend_from_slice(b"\"}}");
        *line = String::from_utf8(rebuilt).expect("utf8");
        prev = hash;
    }
}

#[test]
fn epochs_and_a_restart_verify_with_the_initial_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_stream(dir.path(), "a.jsonl", 3);
    // A restart: a new stream picks up the current key file.
    write_stream(dir.path(), "b.jsonl", 2);
    let (code, text) = verify(dir.path(), dir.path());
    assert_eq!(code, 0, "{text}");

    let initial = EpochKey::load(&dir.path().join("initial.key")).expect("initial key");
    let current = EpochKey::load(&dir.path().join("current.key")).expect("current key");
    assert_eq!(initial.epoch, 0);
    assert!(current.epoch >= 4, "the key file moved on: {current:?}");
    let on_disk = std::fs::read_to_string(dir.path().join("current.key")).expect("read");
    let first = std::fs::read_to_string(dir.path().join("initial.key")).expect("read");
    assert_ne!(
        field(&on_disk, "key="),
        field(&first, "key="),
        "old key erased"
    );

    let trail = std::fs::read_to_string(dir.path().join("a.jsonl")).expect("trail");
    let epochs: Vec<u64> = trail
        .lines()
        .map(|l| field(l, "\"epoch\":").parse().expect("epoch"))
        .collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{epochs:?}");
    assert!(
        epochs.last() > epochs.first(),
        "records span epochs: {epochs:?}"
    );

    // Without the initial key the records are keyed and unverified, not valid.
    let out = Command::new(env!("CARGO_BIN_EXE_keytrail"))
        .args(["verify", "--quiet"])
        .arg(dir.path())
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn an_earlier_epoch_forged_with_the_current_key_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_stream(dir.path(), "a.jsonl", 3);
    let path = dir.path().join("a.jsonl");
    let original = std::fs::read_to_string(&path).expect("trail");
    // What an attacker on the host finds: the key file holds the current epoch's key.
    let key = EpochKey::load(&dir.path().join("current.key")).expect("current key");
    assert!(key.epoch >= 2);

    for (case, claimed) in [
        ("keeps its epoch", 0),
        ("claims the current epoch", key.epoch),
    ] {
        let mut lines: Vec<String> = original.lines().map(str::to_string).collect();
        // Line 2 (seq 3) is "epoch group 0 record 1", written in epoch 0.
        assert!(lines[2].contains("epoch group 0 record 1"), "{}", lines[2]);
        assert!(lines[2].contains("\"epoch\":0,"), "{}", lines[2]);
        forge(&mut lines, 2, &key, claimed);
        let forged = dir.path().join("forged.jsonl");
        std::fs::write(&forged, lines.join("\n") + "\n").expect("write");
        let (code, text) = verify(dir.path(), &forged);
        assert_eq!(code, 1, "{case}: {text}");
        assert!(text.contains("seq 3"), "{case}: {text}");
    }
}
