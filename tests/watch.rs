//! `keytrail watch` on real trails: workloads run through the built libkeytrail.so against
//! a fresh SoftHSM2 token, each meant to trigger one rule, and the alerts checked against
//! the records that should have raised them (stream and seq).

mod common;

use common::kryoptic::keytrail_bin;
use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Adds text to keytrail.toml (the `[watch]` section, `[integrity]` settings).
fn append_config(fx: &Fixture, text: &str) {
    let mut c = std::fs::read_to_string(&fx.keytrail_conf).expect("config");
    c.push_str(text);
    std::fs::write(&fx.keytrail_conf, c).expect("write config");
}

fn trail_dir(fx: &Fixture) -> PathBuf {
    fx.trail_path().parent().expect("trail dir").to_path_buf()
}

/// `keytrail watch --once` on the trail directory with the fixture's configuration.
fn watch_once(fx: &Fixture, extra: &[&str]) -> (i32, Vec<Value>, Output) {
    let out = Command::new(keytrail_bin())
        .arg("watch")
        .arg("--once")
        .arg("--config")
        .arg(&fx.keytrail_conf)
        .args(extra)
        .arg(trail_dir(fx))
        .output()
        .expect("run keytrail watch");
    let alerts = alerts_of(&String::from_utf8_lossy(&out.stdout));
    (out.status.code().unwrap_or(-1), alerts, out)
}

fn alerts_of(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alert line {l:?}: {e}")))
        .collect()
}

fn of_rule<'a>(alerts: &'a [Value], rule: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["rule"] == rule).collect()
}

/// (stream, seq) of each record with this action (and outcome, when given).
fn places(fx: &Fixture, action: &str, outcome: Option<&str>) -> Vec<(String, u64)> {
    fx.trail()
        .iter()
        .filter(|r| record_action(r) == action)
        .filter(|r| outcome.is_none_or(|o| r["event"]["outcome"] == o))
        .map(place_of)
        .collect()
}

fn place_of(r: &Value) -> (String, u64) {
    (
        r["integrity"]["stream"]
            .as_str()
            .expect("stream")
            .to_string(),
        r["integrity"]["seq"].as_u64().expect("seq"),
    )
}

/// The (stream, seq) an alert names.
fn named(a: &Value) -> Vec<(String, u64)> {
    a["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(place_of_alert)
        .collect()
}

fn place_of_alert(r: &Value) -> (String, u64) {
    (
        r["stream"].as_str().expect("stream").to_string(),
        r["seq"].as_u64().expect("seq"),
    )
}

fn token_aes(s: &Session, label: &str, id: u8, extra: &[Attribute]) -> ObjectHandle {
    let mut t = vec![
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(vec![id]),
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    t.extend_from_slice(extra);
    s.generate_key(&Mechanism::AesKeyGen, &t).expect("AES key")
}

/// Open, log in, sign with a token key and with a session key a few times, close: what
/// an application does all day.
fn routine(p: &Pkcs11) {
    let s = user_session(p);
    let (_public, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(true), Attribute::EcParams(P256.to_vec())],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::Id(vec![0x01]),
                Attribute::Label(b"signing".to_vec()),
            ],
        )
        .expect("EC key pair");
    let hmac = hmac_key(&s, 7);
    for _ in 0..3 {
        s.sign(&Mechanism::Ecdsa, private, &[0x11; 32])
            .expect("sign");
        s.sign(&Mechanism::Sha256Hmac, hmac, b"data").expect("hmac");
    }
    s.destroy_object(hmac).expect("session key destroyed");
    s.logout().expect("logout");
    drop(s);
}

/// The trail's lines, and the index of the (first) login record among them.
fn lines_and_login(fx: &Fixture) -> (Vec<String>, usize) {
    let text = std::fs::read_to_string(fx.trail_path()).expect("trail");
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let i = lines
        .iter()
        .position(|l| l.contains("\"action\":\"login\""))
        .expect("login");
    (lines, i)
}

/// The lines a child writes on its standard output, as they come.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn a_routine_workload_raises_no_alert() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    routine(&p);
    routine(&p);
    p.finalize().expect("finalize");
    let (code, alerts, out) = watch_once(&fx, &[]);
    assert!(alerts.is_empty(), "{alerts:#?}");
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn destroying_a_token_key_alerts_once_with_its_record_and_not_again_after_a_restart() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let k = token_aes(&s, "payments-kek", 0x6b, &[]);
    let session_key = hmac_key(&s, 1);
    s.destroy_object(session_key).expect("destroy session key");
    s.destroy_object(k).expect("destroy token key");
    drop(s);
    p.finalize().expect("finalize");
    let state = fx.path().join("watch.state");
    let state_arg = ["--state", state.to_str().expect("utf-8")];
    let (code, alerts, _) = watch_once(&fx, &state_arg);
    assert_eq!(code, 1);
    let destroyed = of_rule(&alerts, "key_destroyed");
    assert_eq!(destroyed.len(), 1, "only the token key: {alerts:#?}");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let want = places(&fx, "object_destroy", Some("success"));
    assert_eq!(want.len(), 2);
    assert_eq!(named(destroyed[0]), vec![want[1].clone()]);
    let a = destroyed[0];
    assert_eq!(a["severity"], "high");
    assert_eq!(a["key"]["label"], "payments-kek");
    assert_eq!(a["key"]["id_hex"], "6b");
    assert_eq!(a["key"]["token_label"], TOKEN_LABEL);
    assert!(
        a["message"]
            .as_str()
            .expect("message")
            .contains("payments-kek")
    );
    // Restarted with its state file, it has seen these records already.
    let (code, alerts, _) = watch_once(&fx, &state_arg);
    assert_eq!((code, alerts.len()), (0, 0), "{alerts:#?}");
    // The rule can be switched off.
    append_config(&fx, "[watch.rules.key_destroyed]\nenabled = false\n");
    let (code, alerts, _) = watch_once(&fx, &[]);
    assert_eq!((code, alerts.len()), (0, 0), "{alerts:#?}");
}

#[test]
fn reading_a_key_value_and_wrapping_a_key_are_exports_and_a_refused_read_is_noted() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let open_key = token_aes(
        &s,
        "export-me",
        0x01,
        &[Attribute::Extractable(true), Attribute::Sensitive(false)],
    );
    let kek = token_aes(&s, "kek", 0x02, &[Attribute::Wrap(true)]);
    let secret = token_aes(&s, "sealed", 0x03, &[Attribute::Sensitive(true)]);
    let value = s
        .get_attributes(open_key, &[AttributeType::Value])
        .expect("read the value");
    assert_eq!(value.len(), 1);
    s.wrap_key(&Mechanism::AesKeyWrap, kek, open_key)
        .expect("wrap");
    assert!(
        s.get_attributes(secret, &[AttributeType::Value])
            .map(|v| v.is_empty())
            .unwrap_or(true),
        "a sensitive value is not returned"
    );
    drop(s);
    p.finalize().expect("finalize");
    let (code, alerts, _) = watch_once(&fx, &[]);
    assert_eq!(code, 1);
    let exported = of_rule(&alerts, "key_exported");
    assert_eq!(exported.len(), 2, "{alerts:#?}");
    let read = fx
        .trail()
        .iter()
        .filter(|r| record_action(r) == "attribute_read_secret")
        .map(|r| (place_of(r), r["pkcs11"]["key"]["label"].clone()))
        .collect::<Vec<_>>();
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!(named(exported[0]), vec![read[0].0.clone()]);
    assert_eq!(exported[0]["key"]["label"], "export-me");
    let wrap = places(&fx, "key_wrap", Some("success"));
    assert_eq!(named(exported[1]), wrap);
    assert!(
        exported[1]["message"]
            .as_str()
            .expect("message")
            .contains("\"kek\""),
        "{:#}",
        exported[1]
    );
    let refused = of_rule(&alerts, "secret_attribute_read");
    assert_eq!(refused.len(), 1, "{alerts:#?}");
    assert_eq!(named(refused[0]), vec![read[1].0.clone()]);
    assert_eq!(refused[0]["key"]["label"], "sealed");
    assert!(
        refused[0]["message"]
            .as_str()
            .expect("message")
            .contains("CKR_ATTRIBUTE_SENSITIVE"),
        "{:#}",
        refused[0]
    );
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
}

#[test]
fn failed_logins_alert_at_the_threshold_per_process() {
    let fx = Fixture::new();
    append_config(
        &fx,
        "[watch.rules.failed_logins]\nthreshold = 3\nwindow = \"1m\"\nper = \"process\"\nseverity = \"critical\"\n",
    );
    let p = open(&keytrail_module());
    let s = p.open_rw_session(token_slot(&p)).expect("session");
    let wrong = AuthPin::new("kt-wrong-pin-1".into());
    for _ in 0..2 {
        assert!(s.login(UserType::User, Some(&wrong)).is_err());
    }
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");
    s.logout().expect("logout");
    let (_, alerts, _) = watch_once(&fx, &[]);
    assert!(
        alerts.is_empty(),
        "two failures are below the threshold: {alerts:#?}"
    );
    assert!(s.login(UserType::User, Some(&wrong)).is_err());
    drop(s);
    p.finalize().expect("finalize");
    let (code, alerts, _) = watch_once(&fx, &[]);
    assert_eq!(code, 1);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a["rule"], "failed_logins");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["count"], 3);
    assert_eq!(named(a), places(&fx, "login", Some("failure")));
    assert!(!a.to_string().contains("kt-wrong-pin"), "never a PIN");
}

#[test]
fn initializing_a_token_is_critical() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    p.init_token(slot, &AuthPin::new(SO_PIN.into()), "wiped")
        .expect("C_InitToken");
    p.finalize().expect("finalize");
    let (_, alerts, _) = watch_once(&fx, &[]);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a["rule"], "token_initialized");
    assert_eq!(a["severity"], "critical");
    assert_eq!(named(a), places(&fx, "token_init", Some("success")));
    assert_eq!(a["token"]["previous"]["label"], TOKEN_LABEL, "{a:#}");
    // The same alert, appended to a file instead: one in the trail directory is not
    // read as trail, so a second run appends the same one alert again.
    let file = trail_dir(&fx).join("alerts.jsonl");
    for run in 1..=2 {
        let (code, alerts, _) = watch_once(&fx, &["--alerts", file.to_str().expect("utf-8")]);
        assert_eq!((code, alerts.len()), (1, 0), "nothing on stdout");
        let written = alerts_of(&std::fs::read_to_string(&file).expect("alert file"));
        assert_eq!(written.len(), run, "{written:#?}");
        for w in written {
            assert_eq!(w["rule"], "token_initialized");
            assert_eq!(named(&w), named(a));
        }
    }
}

#[test]
fn another_executable_using_a_key_is_new_and_then_known() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    routine(&p);
    p.finalize().expect("finalize");
    let input = fx.path().join("in.bin");
    std::fs::write(&input, [0x42u8; 32]).expect("input");
    let sign = || {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(keytrail_module())
            .args([
                "--login", "--pin", USER_PIN, "--sign", "-m", "ECDSA", "--id", "01",
            ])
            .arg("--input-file")
            .arg(&input)
            .arg("--output-file")
            .arg(fx.path().join("sig.bin"))
            .output()
            .expect("run pkcs11-tool (install opensc)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sign();
    let state = fx.path().join("watch.state");
    let state_arg = ["--state", state.to_str().expect("utf-8")];
    let (_, alerts, _) = watch_once(&fx, &state_arg);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a["rule"], "new_key_user");
    let tool_signs: Vec<(String, u64)> = fx
        .trail()
        .iter()
        .filter(|r| record_action(r) == "sign")
        .filter(|r| {
            r["process"]["executable"]
                .as_str()
                .is_some_and(|e| e.ends_with("pkcs11-tool"))
        })
        .map(place_of)
        .collect();
    assert_eq!(tool_signs.len(), 1);
    assert_eq!(named(a), tool_signs);
    assert_eq!(a["key"]["label"], "signing");
    assert!(
        a["message"]
            .as_str()
            .expect("message")
            .contains("pkcs11-tool"),
        "{a:#}"
    );
    assert!(
        !a["message"].as_str().expect("message").contains("uid"),
        "same user: {a:#}"
    );
    // The state file keeps what was learnt: another run of the same tool is known, even
    // when the files read before are gone (retention).
    std::fs::remove_file(fx.trail_path()).expect("remove the trail");
    sign();
    let (code, alerts, _) = watch_once(&fx, &state_arg);
    assert_eq!((code, alerts.len()), (0, 0), "{alerts:#?}");
}

#[test]
fn dropped_records_alert_with_the_loss_record() {
    let fx = Fixture::new();
    fx.configure_dropping_queue();
    let p = open(&keytrail_module());
    flood_sessions(&p);
    p.finalize().expect("finalize");
    let dropped = places(&fx, "records_dropped", None);
    assert!(!dropped.is_empty(), "the queue of one overflowed");
    let (_, alerts, _) = watch_once(&fx, &[]);
    let lost = of_rule(&alerts, "records_lost");
    assert_eq!(lost.len(), dropped.len(), "{alerts:#?}");
    assert_eq!(alerts.len(), lost.len(), "{alerts:#?}");
    for (a, want) in lost.iter().zip(&dropped) {
        assert_eq!(&named(a), &vec![want.clone()]);
        assert!(a["lost"].as_u64().expect("lost") > 0);
    }
}

#[test]
fn a_tampered_line_and_a_deleted_one_fail_the_chain_at_their_seq() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    routine(&p);
    p.finalize().expect("finalize");
    let (mut lines, i) = lines_and_login(&fx);
    lines[i] = lines[i].replacen("rw_user", "rw_usEr", 1);
    let tampered = place_of(&serde_json::from_str(&lines[i]).expect("json"));
    let j = lines
        .iter()
        .position(|l| l.contains("\"action\":\"logout\""))
        .expect("logout");
    let deleted = place_of(&serde_json::from_str(&lines.remove(j)).expect("json"));
    std::fs::write(fx.trail_path(), lines.join("\n") + "\n").expect("write");
    let (code, alerts, _) = watch_once(&fx, &[]);
    assert_eq!(code, 1);
    let chain = of_rule(&alerts, "chain_invalid");
    assert_eq!(chain.len(), 2, "{alerts:#?}");
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(named(chain[0]), vec![tampered]);
    assert!(
        chain[0]["message"]
            .as_str()
            .expect("m")
            .contains("hash mismatch")
    );
    assert_eq!(named(chain[1]), vec![deleted.clone()]);
    assert!(
        chain[1]["message"]
            .as_str()
            .expect("m")
            .contains(&format!("missing record {}", deleted.1)),
        "{:#}",
        chain[1]
    );
    assert_eq!(chain[0]["severity"], "critical");
}

#[test]
fn a_stalled_stream_is_overdue_for_its_checkpoint() {
    let fx = Fixture::new();
    append_config(
        &fx,
        "[integrity]\ncheckpoint_interval = \"1s\"\n[watch.rules.checkpoint_overdue]\nslack = \"3s\"\n",
    );
    let child = fork();
    if child == 0 {
        let p = open(&keytrail_module());
        let _s = user_session(&p);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    // Running, it checkpoints every second: no alert.
    let started = Instant::now();
    while places(&fx, "checkpoint", None).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no checkpoints"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, alerts, _) = watch_once(&fx, &[]);
    assert!(alerts.is_empty(), "{alerts:#?}");
    // SAFETY (test): stopping our own child.
    assert_eq!(unsafe { libc::kill(child, libc::SIGSTOP) }, 0);
    // Past the interval and the slack (generous, for a loaded machine's late checkpoints).
    std::thread::sleep(Duration::from_millis(5500));
    let (code, alerts, _) = watch_once(&fx, &[]);
    // SAFETY (test): ending our own child.
    unsafe { libc::kill(child, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY (test): reaping our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(code, 1);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a["rule"], "checkpoint_overdue");
    let trail = fx.trail();
    let last = place_of(trail.last().expect("records"));
    assert_eq!(named(a), vec![last], "the stream's latest record");
}

#[test]
fn alerts_go_to_syslog_and_to_a_command() {
    let fx = Fixture::new();
    let socket = fx.path().join("log.sock");
    let sink = std::os::unix::net::UnixDatagram::bind(&socket).expect("bind");
    sink.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let piped = fx.path().join("piped.jsonl");
    append_config(
        &fx,
        &format!(
            "[watch]\noutput = \"syslog\"\nsyslog_socket = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"cat >> \\\"$0\\\"\", \"{}\"]\n",
            socket.display(),
            piped.display()
        ),
    );
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let k = token_aes(&s, "gone", 0x09, &[]);
    s.destroy_object(k).expect("destroy");
    drop(s);
    p.finalize().expect("finalize");
    let (code, alerts, _) = watch_once(&fx, &[]);
    assert_eq!(code, 1);
    assert!(alerts.is_empty(), "nothing on stdout");
    let mut buf = vec![0u8; 65536];
    let n = sink.recv(&mut buf).expect("an alert reached the socket");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // authpriv (10) × 8 + error (3, severity high).
    assert!(msg.starts_with("<83>1 "), "{msg}");
    let json = &msg[msg.find('{').expect("JSON")..];
    let a: Value = serde_json::from_str(json).expect("alert JSON");
    assert_eq!(a["rule"], "key_destroyed");
    assert!(msg.contains(" keytrail-watch "), "{msg}");
    let piped = std::fs::read_to_string(&piped).expect("the command ran");
    let from_command = alerts_of(&piped);
    assert_eq!(from_command, vec![a]);
}

#[test]
fn following_a_trail_alerts_on_records_written_after_it_started() {
    let fx = Fixture::new();
    append_config(&fx, "[watch]\npoll_ms = 100\n");
    std::fs::create_dir_all(trail_dir(&fx)).expect("trail dir");
    let mut child = Command::new(keytrail_bin())
        .arg("watch")
        .arg("--config")
        .arg(&fx.keytrail_conf)
        .arg(trail_dir(&fx))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start keytrail watch");
    let rx = lines_of(&mut child);
    // Written after watch started, in a file that did not exist then.
    let p = open(&keytrail_module());
    routine(&p);
    let s = user_session(&p);
    let k = token_aes(&s, "late", 0x0c, &[]);
    s.destroy_object(k).expect("destroy");
    drop(s);
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("an alert while following");
    let a: Value = serde_json::from_str(&line).expect("alert JSON");
    assert_eq!(a["rule"], "key_destroyed");
    assert_eq!(
        named(&a),
        places(&fx, "object_destroy", Some("success"))[1..]
    );
    p.finalize().expect("finalize");
    // SAFETY (test): asking our own child to stop.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().expect("watch ends");
    assert_eq!(status.code(), Some(0), "stopped by SIGTERM");
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "one alert only"
    );
}

#[test]
fn a_trail_rotated_across_files_is_one_chain_and_its_alerts_are_found_in_any_file() {
    let fx = Fixture::new();
    fx.configure(&format!(
        "[trail]\npath = \"{}\"\nmax_bytes = 4096\n",
        fx.trail_path().display()
    ));
    let p = open(&keytrail_module());
    routine(&p);
    let s = user_session(&p);
    let k = token_aes(&s, "rotated", 0x0d, &[]);
    s.destroy_object(k).expect("destroy");
    drop(s);
    routine(&p);
    p.finalize().expect("finalize");
    let mut files: Vec<PathBuf> = std::fs::read_dir(trail_dir(&fx))
        .expect("trail dir")
        .map(|e| e.expect("entry").path())
        .collect();
    // The names sort in time order.
    files.sort();
    assert!(files.len() >= 3, "rotated into several files: {files:?}");
    let destroy: Vec<(String, u64)> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("file")
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
                .filter(|r| record_action(r) == "object_destroy")
                .map(|r| place_of(&r))
                .collect::<Vec<_>>()
        })
        .collect();
    let (code, alerts, _) = watch_once(&fx, &[]);
    assert_eq!(code, 1);
    assert_eq!(alerts.len(), 1, "no chain alert across files: {alerts:#?}");
    assert_eq!(alerts[0]["rule"], "key_destroyed");
    // The session keys of the two routines are destroyed too, without alerts.
    assert_eq!(destroy.len(), 3);
    assert_eq!(named(&alerts[0]), vec![destroy[1].clone()]);
}

#[test]
fn a_line_written_in_two_parts_is_evaluated_once_whole() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let k = token_aes(&s, "halves", 0x0e, &[]);
    s.destroy_object(k).expect("destroy");
    drop(s);
    p.finalize().expect("finalize");
    let text = std::fs::read_to_string(fx.trail_path()).expect("trail");
    let at = text.find("\"object_destroy\"").expect("destroy record") + 40;
    let watched = fx.path().join("watched");
    std::fs::create_dir(&watched).expect("dir");
    let copy = watched.join("copy.jsonl");
    std::fs::write(&copy, &text[..at]).expect("first part");
    append_config(&fx, "[watch]\npoll_ms = 50\n");
    let mut child = Command::new(keytrail_bin())
        .arg("watch")
        .arg("--config")
        .arg(&fx.keytrail_conf)
        .arg(&watched)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start keytrail watch");
    let rx = lines_of(&mut child);
    // Several rounds see the unfinished line and leave it be.
    assert!(
        rx.recv_timeout(Duration::from_millis(600)).is_err(),
        "nothing is raised from half a line"
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)
        .expect("open");
    std::io::Write::write_all(&mut f, &text.as_bytes()[at..]).expect("second part");
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("an alert once the line is whole");
    let a: Value = serde_json::from_str(&line).expect("alert JSON");
    assert_eq!(a["rule"], "key_destroyed");
    assert_eq!(named(&a), places(&fx, "object_destroy", Some("success")));
    // SAFETY (test): asking our own child to stop.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(child.wait().expect("watch ends").code(), Some(0));
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "one alert only"
    );
}

/// The alerts' key, user and process fields carry no secret: a sanity check over every
/// alert the other workloads raise together.
#[test]
fn alerts_carry_no_key_material() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let k = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Extractable(true),
            Attribute::Sensitive(false),
            Attribute::Label(b"imported".to_vec()),
            Attribute::Value(vec![0xa5; 32]),
        ])
        .expect("import");
    let value = s.get_attributes(k, &[AttributeType::Value]).expect("read");
    assert!(matches!(&value[0], Attribute::Value(v) if v == &vec![0xa5; 32]));
    s.destroy_object(k).expect("destroy");
    drop(s);
    p.finalize().expect("finalize");
    let (_, alerts, out) = watch_once(&fx, &[]);
    let rules: Vec<&str> = alerts.iter().filter_map(|a| a["rule"].as_str()).collect();
    assert_eq!(rules, ["key_exported", "key_destroyed"]);
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(!text.contains(&"a5".repeat(8)), "{text}");
}

#[test]
fn a_label_that_would_drive_a_terminal_is_escaped_in_the_alert() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let label = "evil\u{1b}[2J\u{202e}kek";
    let k = token_aes(&s, label, 0x0f, &[]);
    s.destroy_object(k).expect("destroy");
    drop(s);
    p.finalize().expect("finalize");
    let (_, alerts, out) = watch_once(&fx, &[]);
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        !raw.contains('\u{1b}') && !raw.contains('\u{202e}'),
        "{raw}"
    );
    assert!(raw.contains("\\u001b") && raw.contains("\\u202e"), "{raw}");
    assert_eq!(alerts.len(), 1);
    // Still the same JSON: the label reads back as it was.
    assert_eq!(alerts[0]["key"]["label"], label);
}

#[test]
fn a_keyed_trail_is_verified_with_the_configured_key() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fx = Fixture::new();
    let key = fx.path().join("trail.key");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .and_then(|mut f| f.write_all(&[0x5a; 32]))
        .expect("key file");
    append_config(&fx, &format!("[integrity]\nkey_file = {key:?}\n"));
    let p = open(&keytrail_module());
    routine(&p);
    p.finalize().expect("finalize");
    let (code, alerts, _) = watch_once(&fx, &[]);
    assert_eq!((code, alerts.len()), (0, 0), "{alerts:#?}");
    // A record changed and its hash recomputed the only way possible without the key.
    let (mut lines, i) = lines_and_login(&fx);
    let changed = lines[i].replacen("rw_user", "rw_usEr", 1);
    let (prefix, _) = keytrail::sink::chain::split_signed(changed.as_bytes()).expect("signed line");
    let forged = hex::encode(keytrail::sink::chain::Hasher::Plain.hash(prefix));
    lines[i] = format!(
        "{},\"hash\":\"{forged}\"}}}}",
        String::from_utf8_lossy(prefix)
    );
    let forged_at = place_of(&serde_json::from_str(&lines[i]).expect("json"));
    std::fs::write(fx.trail_path(), lines.join("\n") + "\n").expect("write");
    let (code, alerts, _) = watch_once(&fx, &[]);
    assert_eq!(code, 1);
    // The forged record, and the next one, whose prev no longer names it.
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert!(alerts.iter().all(|a| a["rule"] == "chain_invalid"));
    let next = (forged_at.0.clone(), forged_at.1 + 1);
    assert_eq!(named(&alerts[0]), vec![forged_at]);
    assert_eq!(named(&alerts[1]), vec![next.clone()]);
    assert!(
        alerts[0]["message"]
            .as_str()
            .expect("m")
            .contains("hash mismatch")
    );
    // Without the key the forged record itself cannot be checked: only the broken link
    // after it shows.
    let bare = fx.path().join("watch-only.toml");
    std::fs::write(&bare, "[watch]\n").expect("config");
    let out = Command::new(keytrail_bin())
        .args(["watch", "--once", "--config"])
        .arg(&bare)
        .arg(trail_dir(&fx))
        .output()
        .expect("run keytrail watch");
    let bare_alerts = alerts_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(bare_alerts.len(), 1, "{bare_alerts:#?}");
    assert_eq!(named(&bare_alerts[0]), vec![next]);
}
