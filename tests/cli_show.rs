//! `keytrail show` on a real trail: a workload run through the built libkeytrail.so
//! against SoftHSM2, then the timeline checked line by line.

mod common;

use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// PINs distinctive enough that finding them in the output would mean a leak.
const WRONG_PIN: &str = "kt-wrong-pin-7c1d";
const NEW_PIN: &str = "kt-new-pin-9f3e";

/// The built `keytrail` binary, next to libkeytrail.so.
fn keytrail_bin() -> PathBuf {
    let bin = keytrail_module()
        .parent()
        .expect("target dir")
        .join("keytrail");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(keytrail_bin());
    c.args(args).env_remove("NO_COLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run keytrail")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A failed login with a wrong PIN, a good one, an AES key generated, used and misused,
/// an EC key pair signing, a key imported by value, a key destroyed, a PIN change and a
/// token wipe.
fn workload(p: &Pkcs11) {
    let slot = token_slot(p);
    let s = p.open_rw_session(slot).expect("session");
    assert!(
        s.login(UserType::User, Some(&AuthPin::new(WRONG_PIN.into())))
            .is_err()
    );
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Label(b"payments-kek".to_vec()),
                Attribute::Id(vec![0x6b, 0x01]),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .expect("AES key");
    s.encrypt(&Mechanism::AesCbcPad([1; 16]), aes, &[0x61; 40])
        .expect("encrypt");
    assert!(s.sign(&Mechanism::Ecdsa, aes, &[0; 32]).is_err());
    let (_public, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Label(b"release-signer".to_vec()),
                Attribute::Id(vec![0x51]),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Label(b"release-signer".to_vec()),
                Attribute::Id(vec![0x51]),
                Attribute::Sign(true),
                Attribute::Private(true),
            ],
        )
        .expect("EC pair");
    s.sign(&Mechanism::Ecdsa, private, &[7; 32]).expect("sign");
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(cryptoki::object::KeyType::AES),
        Attribute::Token(false),
        Attribute::Label(b"partner-key".to_vec()),
        Attribute::Value(vec![0x42; 16]),
        Attribute::Encrypt(true),
    ])
    .expect("import");
    s.destroy_object(aes).expect("destroy");
    s.set_pin(
        &AuthPin::new(USER_PIN.into()),
        &AuthPin::new(NEW_PIN.into()),
    )
    .expect("set pin");
    drop(s);
    p.init_token(slot, &AuthPin::new(SO_PIN.into()), TOKEN_LABEL)
        .expect("init token");
}

/// Runs the workload through keytrail and returns the trail's lines.
fn trail_of_workload(fx: &Fixture) -> Vec<String> {
    let p = open(&keytrail_module());
    workload(&p);
    p.finalize().expect("finalize");
    std::fs::read_to_string(fx.trail_path())
        .expect("trail")
        .lines()
        .map(str::to_string)
        .collect()
}

/// The line of `out` that contains every one of `parts`.
fn line_with<'a>(out: &'a str, parts: &[&str]) -> &'a str {
    out.lines()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in:\n{out}"))
}

fn is_record_line(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() > 12
        && b[2] == b':'
        && b[5] == b':'
        && b[8] == b'.'
        && b[..12]
            .iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 2 | 5 | 8) || c.is_ascii_digit())
}

#[test]
fn show_prints_one_readable_line_per_record() {
    let fx = Fixture::new();
    let trail = trail_of_workload(&fx);
    let o = run(&["show", "--utc", path_str(&fx.trail_path())], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);

    // A date header first, then one line per record.
    let first = out.lines().next().expect("output");
    assert!(
        first.starts_with("=== 20") && first.ends_with(" (UTC) ==="),
        "{first}"
    );
    let records: Vec<&str> = out.lines().filter(|l| is_record_line(l)).collect();
    assert_eq!(records.len(), trail.len(), "{out}");
    assert_eq!(
        out.lines().count(),
        trail.len() + 1,
        "only one date header expected:\n{out}"
    );

    let pid = std::process::id().to_string();
    let login = line_with(&out, &[" auth ", " login ", "FAIL"]);
    assert!(login.contains("CKR_PIN_INCORRECT"), "{login}");
    assert!(login.contains("CKU_USER"), "{login}");
    assert!(login.contains(&format!(" {pid} ")), "{login}");
    assert!(
        login.contains(&format!("token \"{TOKEN_LABEL}\"")),
        "{login}"
    );
    let good = line_with(&out, &[" login ", " ok "]);
    assert!(!good.contains("CKR_"), "no CK_RV name on success: {good}");

    line_with(
        &out,
        &[
            " generate ",
            " key_generate ",
            " ok ",
            "key \"payments-kek\" (CKK_AES 256, id 6b01)",
            "CKM_AES_KEY_GEN",
        ],
    );
    line_with(
        &out,
        &[
            " key_pair_generate ",
            "key pair \"release-signer\" (CKK_EC, id 51)",
            "CKM_EC_KEY_PAIR_GEN",
        ],
    );
    line_with(
        &out,
        &[
            " use ",
            " encrypt ",
            "key \"payments-kek\"",
            "CKM_AES_CBC_PAD",
            "1 part, 40 B in, 48 B out",
        ],
    );
    line_with(&out, &[" sign ", "FAIL", "key \"payments-kek\""]);
    line_with(
        &out,
        &[
            " sign ",
            " ok ",
            "private key \"release-signer\" (CKK_EC, id 51)",
            "CKM_ECDSA",
            "32 B in, 64 B out",
        ],
    );
    line_with(
        &out,
        &[
            " import ",
            " object_create ",
            "key \"partner-key\" (CKK_AES",
            "session object",
            "[plaintext_key_material]",
        ],
    );
    line_with(
        &out,
        &[
            " destroy ",
            " object_destroy ",
            " ok ",
            "key \"payments-kek\"",
        ],
    );
    line_with(&out, &[" token_admin ", " pin_set ", " ok "]);
    line_with(&out, &[" token_init ", "[token_wiped]"]);
    line_with(&out, &[" audit ", " trail_start ", "keytrail "]);
    line_with(&out, &[" audit ", " trail_stop ", "trail stopped"]);

    // No PIN, and no colour on a pipe.
    for pin in [WRONG_PIN, NEW_PIN] {
        assert!(!out.contains(pin), "PIN {pin} in the output");
    }
    for l in &records {
        for pin in [USER_PIN, SO_PIN] {
            assert!(
                !l.split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|w| w == pin),
                "PIN {pin} in {l}"
            );
        }
    }
    assert!(!out.contains('\x1b'), "colour on a pipe");
}

#[test]
fn show_filters_like_report() {
    let fx = Fixture::new();
    trail_of_workload(&fx);
    let trail_path = fx.trail_path();
    let trail = path_str(&trail_path);
    let records = |o: &Output| -> Vec<String> {
        assert!(o.status.success(), "{}", stderr(o));
        stdout(o)
            .lines()
            .filter(|l| is_record_line(l))
            .map(str::to_string)
            .collect()
    };

    let auth = records(&run(&["show", "--utc", "--category", "auth", trail], &[]));
    assert_eq!(auth.len(), 2, "{auth:?}");
    assert!(auth.iter().all(|l| l.contains(" auth ")), "{auth:?}");

    let two = records(&run(
        &[
            "show",
            "--utc",
            "--category",
            "generate",
            "--category",
            "destroy",
            trail,
        ],
        &[],
    ));
    assert_eq!(two.len(), 3, "{two:?}");

    let signer = records(&run(&["show", "--key", "release-signer", trail], &[]));
    assert!(signer.len() >= 2, "{signer:?}");
    assert!(signer.iter().all(|l| l.contains("release-signer")));

    let me = std::process::id().to_string();
    let all = records(&run(&["show", "--pid", &me, trail], &[]));
    assert!(!all.is_empty());
    let o = run(&["show", "--pid", "1", trail], &[]);
    assert!(records(&o).is_empty());
    assert!(stderr(&o).contains("no records"), "{}", stderr(&o));

    let o = run(&["show", "--since", "2999-01-01T00:00:00Z", trail], &[]);
    assert!(records(&o).is_empty());
    let o = run(&["show", "--until", "2999-01-01T00:00:00Z", trail], &[]);
    assert_eq!(records(&o).len(), all.len());

    let o = run(&["show", "--category", "nope", trail], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown category"), "{}", stderr(&o));
}

#[test]
fn show_names_a_damaged_line_and_goes_on() {
    let fx = Fixture::new();
    let mut lines = trail_of_workload(&fx);
    let n = lines.len();
    lines.insert(
        2,
        "{\"@timestamp\": \"2026-01-01T00:00:00Z\", broken".into(),
    );
    let damaged = fx.path().join("damaged.jsonl");
    std::fs::write(&damaged, lines.join("\n") + "\n").expect("write");
    let o = run(&["show", "--utc", path_str(&damaged)], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:3: damaged line skipped", damaged.display())),
        "{err}"
    );
    assert!(err.contains("1 damaged line(s) skipped"), "{err}");
    let shown = stdout(&o).lines().filter(|l| is_record_line(l)).count();
    assert_eq!(shown, n);
}

#[test]
fn show_local_time_and_colour() {
    let fx = Fixture::new();
    trail_of_workload(&fx);
    let trail_path = fx.trail_path();
    let trail = path_str(&trail_path);
    let utc = stdout(&run(&["show", "--utc", trail], &[]));
    // POSIX TZ: "XYZ-05:30" is five and a half hours east of UTC.
    let local = stdout(&run(&["show", trail], &[("TZ", "XYZ-05:30")]));
    let header = local.lines().next().expect("header");
    assert!(header.contains("(XYZ, UTC+05:30)"), "{header}");
    let time = |out: &str| {
        let l = out.lines().find(|l| is_record_line(l)).expect("a record");
        let h: u32 = l[..2].parse().expect("hour");
        let m: u32 = l[3..5].parse().expect("minute");
        h * 60 + m
    };
    assert_eq!((time(&utc) + 330) % 1440, time(&local));

    let coloured = stdout(&run(&["show", "--color", "always", trail], &[]));
    assert!(coloured.contains("\x1b[31m"), "red for a failure");
    let never = stdout(&run(
        &["show", "--color", "always", "--color", "never", trail],
        &[],
    ));
    assert!(!never.contains('\x1b'));
}

#[test]
fn show_help() {
    let o = run(&["show", "--help"], &[]);
    assert!(o.status.success());
    let out = stdout(&o);
    for opt in [
        "--category",
        "--pid",
        "--since",
        "--until",
        "--key",
        "--utc",
        "--color",
    ] {
        assert!(out.contains(opt), "{opt} in:\n{out}");
    }
    let o = run(&["--help"], &[]);
    assert!(stdout(&o).contains("show"), "{}", stdout(&o));
    let o = run(&["show"], &[]);
    assert_eq!(o.status.code(), Some(2));
}
