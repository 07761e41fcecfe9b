//! The hash chain and the `keytrail` CLI on real trails: workloads run through the built
//! libkeytrail.so against SoftHSM2, then `keytrail verify | report | doctor` on the result,
//! untouched and tampered with.

mod common;

use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The built `keytrail` binary, next to libkeytrail.so.
fn keytrail_bin() -> PathBuf {
    let bin = keytrail_module()
        .parent()
        .expect("target dir")
        .join("keytrail");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

fn run(args: &[&str]) -> Output {
    Command::new(keytrail_bin())
        .args(args)
        .output()
        .expect("run keytrail")
}

fn status(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `keytrail verify --json` on `args`: exit status and the parsed report.
fn verify(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let o = run(&all);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("verify --json output is JSON ({e}): {}", text(&o)));
    (status(&o), v)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The known workload: one failed and one good login, an AES key used three times and
/// misused once, an EC key pair signing twice, the AES key destroyed, a PIN change and a
/// token wipe.
fn workload(p: &Pkcs11) {
    let slot = token_slot(p);
    let s = p.open_rw_session(slot).expect("session");
    assert!(
        s.login(UserType::User, Some(&AuthPin::new("0000".into())))
            .is_err()
    );
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Label(b"k-aes".to_vec()),
                Attribute::Id(vec![0x0a]),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .expect("AES key");
    for _ in 0..3 {
        s.encrypt(&Mechanism::AesCbcPad([1; 16]), aes, &[0x61; 40])
            .expect("encrypt");
    }
    assert!(s.sign(&Mechanism::Ecdsa, aes, &[0; 32]).is_err());
    let (_public, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Label(b"k-ec".to_vec()),
                Attribute::Id(vec![0x0b]),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Label(b"k-ec".to_vec()),
                Attribute::Id(vec![0x0b]),
                Attribute::Sign(true),
                Attribute::Private(true),
            ],
        )
        .expect("EC pair");
    for _ in 0..2 {
        s.sign(&Mechanism::Ecdsa, private, &[7; 32]).expect("sign");
    }
    s.destroy_object(aes).expect("destroy");
    s.set_pin(&AuthPin::new(USER_PIN.into()), &AuthPin::new("4321".into()))
        .expect("set pin");
    drop(s);
    p.init_token(slot, &AuthPin::new(SO_PIN.into()), TOKEN_LABEL)
        .expect("init token");
}

/// Runs the workload through keytrail in this process and finalizes.
fn trail_of_workload(fx: &Fixture) -> Vec<String> {
    let p = open(&keytrail_module());
    workload(&p);
    p.finalize().expect("finalize");
    lines(&fx.trail_path())
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .expect("trail")
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(p, s).expect("write");
}

fn findings(v: &Value) -> Vec<Value> {
    v["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .flat_map(|s| s["findings"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn seq_of(line: &str) -> u64 {
    let v: Value = serde_json::from_str(line).expect("record");
    v["integrity"]["seq"].as_u64().expect("seq")
}

fn append_config(fx: &Fixture, text: &str) {
    let mut c = std::fs::read_to_string(&fx.keytrail_conf).expect("config");
    c.push_str(text);
    std::fs::write(&fx.keytrail_conf, c).expect("config");
}

#[test]
fn untouched_trail_verifies_with_start_and_stop() {
    let fx = Fixture::new();
    let trail = trail_of_workload(&fx);
    let first: Value = serde_json::from_str(&trail[0]).expect("record");
    assert_eq!(first["event"]["action"], "trail_start");
    assert_eq!(first["integrity"]["seq"], 1);
    assert_eq!(first["integrity"]["prev"], Value::Null);
    assert_eq!(
        first["keytrail"]["module_sha256"].as_str().map(str::len),
        Some(64)
    );
    assert_eq!(
        first["keytrail"]["config_sha256"].as_str().map(str::len),
        Some(64)
    );
    let last: Value = serde_json::from_str(trail.last().expect("last")).expect("record");
    assert_eq!(last["event"]["action"], "trail_stop");
    assert_eq!(last["event"]["sequence"], last["integrity"]["seq"]);
    let (code, v) = verify(&[path_str(&fx.trail_path())]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "valid");
    assert_eq!(v["streams"][0]["closed"], true);
    assert_eq!(v["streams"][0]["records"], trail.len() as u64);
    // Text output and the directory form agree.
    let o = run(&["verify", path_str(&fx.trail_path().with_file_name(""))]);
    assert_eq!(status(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("verdict: valid"), "{}", text(&o));
}

#[test]
fn changed_byte_is_invalid_at_its_sequence() {
    let fx = Fixture::new();
    let mut trail = trail_of_workload(&fx);
    let i = trail
        .iter()
        .position(|l| l.contains("\"action\":\"login\"") && l.contains("CKR_OK"))
        .expect("login record");
    trail[i] = trail[i].replacen("rw_user", "rw_usEr", 1);
    write_lines(&fx.trail_path(), &trail);
    let (code, v) = verify(&[path_str(&fx.trail_path())]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "INVALID");
    let f = findings(&v);
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0]["kind"], "hash_mismatch");
    assert_eq!(f[0]["seq"], seq_of(&trail[i]));
    assert_eq!(f[0]["at"]["line"], i as u64 + 1);
}

#[test]
fn deleted_record_is_missing() {
    let fx = Fixture::new();
    let mut trail = trail_of_workload(&fx);
    let seq = seq_of(&trail[4]);
    trail.remove(4);
    write_lines(&fx.trail_path(), &trail);
    let (code, v) = verify(&[path_str(&fx.trail_path())]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "MISSING RECORDS");
    let f = findings(&v);
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0]["kind"], "missing");
    assert_eq!(
        (f[0]["from"].as_u64(), f[0]["to"].as_u64()),
        (Some(seq), Some(seq))
    );
}

#[test]
fn swapped_records_are_reordered() {
    let fx = Fixture::new();
    let mut trail = trail_of_workload(&fx);
    trail.swap(5, 6);
    write_lines(&fx.trail_path(), &trail);
    let (code, v) = verify(&[path_str(&fx.trail_path())]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "REORDERED");
    let f = findings(&v);
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0]["kind"], "reordered");
    assert_eq!(f[0]["seq"], seq_of(&trail[6]));
}

#[test]
fn truncation_is_open_without_head_and_truncated_with_it() {
    let fx = Fixture::new();
    let trail = trail_of_workload(&fx);
    let stop = trail.last().expect("stop").clone();
    let cut = &trail[..trail.len() - 3];
    write_lines(&fx.trail_path(), cut);
    let (code, v) = verify(&[path_str(&fx.trail_path())]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "OPEN");
    assert_eq!(v["streams"][0]["closed"], false);
    assert!(!v["streams"][0]["unanchored_tail"].is_null(), "{v:#}");
    // The stop record kept elsewhere (syslog) proves the truncation.
    let (code, v) = verify(&["--head", &stop, path_str(&fx.trail_path())]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "TRUNCATED");
    let f = findings(&v);
    assert_eq!(f[0]["kind"], "truncated");
    assert_eq!(f[0]["head_seq"], seq_of(&stop));
    assert_eq!(f[0]["last_seq"], seq_of(&stop) - 3);
    // The same head on the whole trail anchors it.
    write_lines(&fx.trail_path(), &trail);
    let (code, v) = verify(&["--head", &stop, path_str(&fx.trail_path())]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["streams"][0]["anchored_by_head"], seq_of(&stop));
    // A cut in the middle of a line is a damaged line with its file and line number.
    let mut bytes = trail.join("\n").into_bytes();
    bytes.truncate(bytes.len() - 30);
    std::fs::write(fx.trail_path(), bytes).expect("write");
    let o = run(&["verify", path_str(&fx.trail_path())]);
    assert_eq!(status(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains(&format!("keytrail.jsonl:{}", trail.len())),
        "{}",
        text(&o)
    );
}

#[test]
fn chain_continues_across_rotated_files_and_a_deleted_one_is_missing() {
    let fx = Fixture::new();
    let trail = trail_of_workload(&fx);
    let dir = fx.path().join("rotated");
    std::fs::create_dir(&dir).expect("dir");
    let (old, new) = trail.split_at(trail.len() / 2);
    // Names that sort the wrong way round: ordering is by each file's first record.
    write_lines(&dir.join("keytrail.jsonl.1"), old);
    write_lines(&dir.join("keytrail.jsonl"), new);
    let (code, v) = verify(&[path_str(&dir)]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["streams"][0]["files"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["files"].as_array().map(Vec::len), Some(2));
    std::fs::remove_file(dir.join("keytrail.jsonl.1")).expect("delete");
    let (code, v) = verify(&[path_str(&dir)]);
    assert_eq!(code, 1, "{v:#}");
    let f = findings(&v);
    assert_eq!(f[0]["kind"], "missing", "{v:#}");
    assert_eq!(f[0]["from"], 1);
    assert_eq!(f[0]["to"], seq_of(&new[0]) - 1);
}

#[test]
fn several_processes_sharing_a_file_each_verify() {
    let fx = Fixture::new();
    let module = keytrail_module();
    // The processes' lifetimes overlap (the parent's stream is open throughout), but
    // they run one at a time: SoftHSM's file store fails logins under concurrent access.
    let p = open(&module);
    let s = user_session(&p);
    for _ in 0..3 {
        s.generate_random_vec(16).expect("random");
        let status = Command::new("pkcs11-tool")
            .args(["--module", path_str(&module), "-l", "-p", USER_PIN, "-O"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("pkcs11-tool (install opensc)");
        assert!(status.success());
    }
    for _ in 0..20 {
        s.generate_random_vec(16).expect("random");
    }
    drop(s);
    p.finalize().expect("finalize");
    let (code, v) = verify(&[path_str(&fx.trail_path())]);
    assert_eq!(code, 0, "{v:#}");
    let streams = v["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 4, "{v:#}");
    assert!(streams.iter().all(|s| s["verdict"] == "valid"), "{v:#}");
}

#[test]
fn keyed_mode_needs_the_key_and_catches_a_hash_recomputed_without_it() {
    let fx = Fixture::new();
    let key = fx.path().join("trail.key");
    std::fs::write(&key, b"0123456789abcdef0123456789abcdef").expect("key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    append_config(
        &fx,
        &format!("[integrity]\nkey_file = \"{}\"\n", key.display()),
    );
    let mut trail = trail_of_workload(&fx);
    let r: Value = serde_json::from_str(&trail[2]).expect("record");
    assert_eq!(r["integrity"]["alg"], "hmac-sha256");
    let t = path_str(&fx.trail_path()).to_string();
    let (code, v) = verify(&[&t]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "UNVERIFIED");
    let (code, v) = verify(&["--key", path_str(&key), &t]);
    assert_eq!(code, 0, "{v:#}");

    // Alter record 4 and recompute its hash the only way possible without the key.
    let i = 3;
    let changed = trail[i].replacen("\"success\"", "\"failure\"", 1);
    let (prefix, _) = keytrail::sink::chain::split_signed(changed.as_bytes()).expect("signed line");
    let forged = hex::encode(keytrail::sink::chain::Hasher::Plain.hash(prefix));
    trail[i] = format!(
        "{}{}\"}}}}",
        String::from_utf8_lossy(prefix),
        format_args!(",\"hash\":\"{forged}")
    );
    write_lines(&fx.trail_path(), &trail);
    let (code, v) = verify(&["--key", path_str(&key), &t]);
    assert_eq!(code, 1, "{v:#}");
    let f = findings(&v);
    assert_eq!(f[0]["kind"], "hash_mismatch", "{v:#}");
    assert_eq!(f[0]["seq"], seq_of(&trail[i]));
}

#[test]
fn a_key_file_others_can_read_refuses_initialize() {
    let fx = Fixture::new();
    let key = fx.path().join("trail.key");
    std::fs::write(&key, b"0123456789abcdef0123456789abcdef").expect("key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    append_config(
        &fx,
        &format!("[integrity]\nkey_file = \"{}\"\n", key.display()),
    );
    let p = Pkcs11::new(keytrail_module()).expect("load");
    let r = p.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    assert!(r.is_err());
    // The library reports it on stderr; doctor says the same.
    let o = run(&["doctor"]);
    assert_eq!(status(&o), 1, "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("integrity.key_file") && t.contains("chmod 600"),
        "{t}"
    );
}

#[test]
fn checkpoints_are_written_when_idle_and_anchor_the_tail() {
    let fx = Fixture::new();
    append_config(&fx, "[integrity]\ncheckpoint_interval = \"1s\"\n");
    let p = open(&keytrail_module());
    let s = user_session(&p);
    s.generate_random_vec(8).expect("random");
    std::thread::sleep(std::time::Duration::from_millis(3500));
    // Before C_Finalize: the trail as a collector would see it while the app runs.
    let live = lines(&fx.trail_path());
    let checkpoints: Vec<Value> = live
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("record"))
        .filter(|r| r["event"]["action"] == "checkpoint")
        .collect();
    assert!(checkpoints.len() >= 2, "{live:#?}");
    let c = &checkpoints[0];
    assert_eq!(
        c["keytrail"]["head"]["seq"].as_u64(),
        c["integrity"]["seq"].as_u64().map(|n| n - 1)
    );
    assert_eq!(c["keytrail"]["head"]["hash"], c["integrity"]["prev"]);
    drop(s);
    p.finalize().expect("finalize");
    let (code, v) = verify(&[path_str(&fx.trail_path())]);
    assert_eq!(code, 0, "{v:#}");
    assert!(v["streams"][0]["checkpoints"].as_u64() >= Some(2));
}

#[test]
fn report_counts_the_known_workload_exactly() {
    let fx = Fixture::new();
    trail_of_workload(&fx);
    let o = run(&["report", "--json", path_str(&fx.trail_path())]);
    assert_eq!(status(&o), 0, "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).expect("json");
    let keys = r["keys"].as_array().expect("keys");
    let key = |label: &str, class: &str| {
        keys.iter()
            .find(|k| k["label"] == label && k["class"] == class)
            .unwrap_or_else(|| panic!("key {label} {class} in {r:#}"))
    };
    let aes = key("k-aes", "CKO_SECRET_KEY");
    assert_eq!(aes["created"]["function"], "C_GenerateKey");
    assert_eq!(aes["created"]["pid"], std::process::id());
    assert_eq!(
        aes["uses"]["encrypt / CKM_AES_CBC_PAD"]["success"], 3,
        "{aes:#}"
    );
    let sign_failures: u64 = aes["uses"]
        .as_object()
        .expect("uses")
        .iter()
        .filter(|(k, _)| k.starts_with("sign"))
        .map(|(_, c)| c["failure"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(sign_failures, 1, "{aes:#}");
    assert_eq!(aes["destroyed"]["function"], "C_DestroyObject");
    let private = key("k-ec", "CKO_PRIVATE_KEY");
    assert_eq!(private["created"]["function"], "C_GenerateKeyPair");
    assert_eq!(
        private["uses"]["sign / CKM_ECDSA"]["success"], 2,
        "{private:#}"
    );
    assert!(private["destroyed"].is_null());
    let public = key("k-ec", "CKO_PUBLIC_KEY");
    assert_eq!(public["uses"].as_object().map(|u| u.len()), Some(0));
    assert_eq!(keys.len(), 3, "{r:#}");
    let logins = r["failed_logins"].as_array().expect("logins");
    assert_eq!(logins.len(), 1, "{r:#}");
    assert_eq!(logins[0]["count"], 1);
    assert_eq!(logins[0]["user_type"], "CKU_USER");
    assert_eq!(logins[0]["rv_names"]["CKR_PIN_INCORRECT"], 1);
    let admin: Vec<&str> = r["token_admin"]
        .as_array()
        .expect("admin")
        .iter()
        .map(|t| t["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(admin, ["pin_set", "token_init"], "{r:#}");
    assert_eq!(r["token_admin"][1]["flags"][0], "token_wiped");
    let failures: u64 = r["failures_by_function"]
        .as_object()
        .expect("failures")
        .values()
        .map(|n| n.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(failures, 2, "{r:#}");
    // Filters: one key, one category, a time window that excludes everything.
    let o = run(&[
        "report",
        "--json",
        "--key",
        "k-ec",
        path_str(&fx.trail_path()),
    ]);
    let r: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["keys"].as_array().map(Vec::len), Some(2), "{r:#}");
    let o = run(&[
        "report",
        "--json",
        "--category",
        "auth",
        path_str(&fx.trail_path()),
    ]);
    let r: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["keys"].as_array().map(Vec::len), Some(0));
    assert_eq!(r["failed_logins"][0]["count"], 1);
    let o = run(&[
        "report",
        "--json",
        "--until",
        "2000-01-01T00:00:00Z",
        path_str(&fx.trail_path()),
    ]);
    let r: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["summary"]["selected"], 0);
    let o = run(&["report", path_str(&fx.trail_path())]);
    assert!(text(&o).contains("k-aes"), "{}", text(&o));
}

#[test]
fn damaged_line_is_named_and_the_rest_still_checked() {
    let fx = Fixture::new();
    let mut trail = trail_of_workload(&fx);
    trail.insert(3, "this is not json".into());
    write_lines(&fx.trail_path(), &trail);
    let o = run(&["verify", path_str(&fx.trail_path())]);
    assert_eq!(status(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("damaged line"), "{}", text(&o));
    assert!(text(&o).contains("keytrail.jsonl:4"), "{}", text(&o));
    let (_, v) = verify(&[path_str(&fx.trail_path())]);
    assert_eq!(
        v["streams"][0]["problems"].as_array().map(Vec::len),
        Some(0)
    );
    let o = run(&["report", path_str(&fx.trail_path())]);
    assert_eq!(status(&o), 0);
    assert!(text(&o).contains("keytrail.jsonl:4"), "{}", text(&o));
}

#[test]
fn cli_help_and_bad_input() {
    for sub in ["verify", "report", "doctor"] {
        let o = run(&[sub, "--help"]);
        assert_eq!(status(&o), 0, "{}", text(&o));
        assert!(text(&o).contains("Usage"), "{}", text(&o));
    }
    let o = run(&["verify", "/nonexistent/trail.jsonl"]);
    assert_eq!(status(&o), 2);
    assert!(
        text(&o).contains("/nonexistent/trail.jsonl"),
        "{}",
        text(&o)
    );
    let o = run(&["report", "--since", "yesterday", "/tmp"]);
    assert_eq!(status(&o), 2);
    assert!(text(&o).contains("RFC 3339"), "{}", text(&o));
    let o = run(&["frobnicate"]);
    assert_eq!(status(&o), 2);
}

#[test]
fn doctor_on_a_correct_setup() {
    let fx = Fixture::new();
    let o = run(&["doctor"]);
    assert_eq!(status(&o), 0, "{}", text(&o));
    let t = text(&o);
    assert!(t.contains(TOKEN_LABEL), "{t}");
    assert!(t.contains("wrote and verified a self-test stream"), "{t}");
    assert!(t.contains(path_str(&fx.trail_path())), "{t}");
    let (code, v) = verify(&[path_str(&fx.trail_path())]);
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn doctor_on_a_missing_module() {
    let fx = Fixture::new();
    let c = std::fs::read_to_string(&fx.keytrail_conf).expect("config");
    let module = softhsm_module();
    std::fs::write(
        &fx.keytrail_conf,
        c.replace(path_str(&module), "/nonexistent/libpkcs11.so"),
    )
    .expect("config");
    let o = run(&["doctor"]);
    assert_eq!(status(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("FAIL  /nonexistent/libpkcs11.so cannot be read"),
        "{}",
        text(&o)
    );
}

#[test]
fn doctor_on_an_unwritable_directory() {
    let fx = Fixture::new();
    // Root may write anywhere, so the directory is made impossible: its parent is a file.
    let blocker = fx.path().join("blocker");
    std::fs::write(&blocker, b"").expect("file");
    append_config(&fx, "");
    let c = std::fs::read_to_string(&fx.keytrail_conf).expect("config");
    std::fs::write(
        &fx.keytrail_conf,
        c.replace(
            path_str(&fx.trail_path()),
            path_str(&blocker.join("trail").join("keytrail.jsonl")),
        ),
    )
    .expect("config");
    let o = run(&["doctor"]);
    assert_eq!(status(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("is not a directory"), "{}", text(&o));
    if unsafe_uid_is_root() && Path::new("/usr/bin/setpriv").exists() {
        // As an ordinary user, a directory of mode 0555 is unwritable.
        let ro = fx.path().join("ro");
        std::fs::create_dir(&ro).expect("dir");
        use std::os::unix::fs::PermissionsExt;
        for p in [fx.path(), ro.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        std::fs::set_permissions(&fx.keytrail_conf, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        std::fs::write(
            &fx.keytrail_conf,
            c.replace(
                path_str(&fx.trail_path()),
                path_str(&ro.join("keytrail.jsonl")),
            ),
        )
        .expect("config");
        let o = Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(keytrail_bin())
            .args(["doctor"])
            .output()
            .expect("setpriv");
        // The binary may sit where nobody cannot reach it; only judge a run that started.
        if !text(&o).contains("Permission denied (os error 13)") || text(&o).contains("trail") {
            assert_eq!(status(&o), 1, "{}", text(&o));
            assert!(text(&o).contains("not writable"), "{}", text(&o));
        }
    }
}

fn unsafe_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}
