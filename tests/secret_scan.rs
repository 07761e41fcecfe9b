//! The secret scan: a workload full of known secrets runs through keytrail in a child
//! process (at level `trace`, so that keytrail writes as much as it can), then every byte
//! keytrail wrote — the trail, its diagnostics file, the child's stderr — is searched for
//! each secret as raw bytes, lowercase and uppercase hex, and base64 (standard and URL-safe,
//! padded or not, at every byte alignment). Nothing may be found; and the same scanner
//! must find a secret planted in a copy of the data.

mod common;
mod support;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::scan::*;
use support::*;

const ENV_CHILD: &str = "KEYTRAIL_SECRET_SCAN_OUT";

// Known secrets, distinctive enough that a match can only be a leak.
const SO_PIN_X: &str = "So-Pin-7f3a9c51e2";
const USER_PIN_X: &str = "User-Pin-b81d44c0a9";
const USER_PIN_Y: &str = "User-Pin-Changed-5e6f7a";
const WRONG_PIN: &str = "Wrong-Pin-0d9c8b7a";
const TOKEN_X: &str = "scan-token";
const AES_VALUE: &[u8; 32] = b"\x9a\x1f\x33\xc4\x7e\x05\xd2\x88\x41\xb6\x6c\x0e\xf3\x27\x90\x5d\
\xa8\x14\xe9\x62\x3b\xcf\x07\x71\xde\x2a\x95\x48\x0c\xb3\x6e\xf1";
const HMAC_KEY: &[u8] = b"hmac-key-material-4c2e9a7b13f0d8";
const HMAC_INPUT: &[u8] = b"hmac input: transfer 1000 EUR to account 991-442";
const PLAINTEXT_ONE_SHOT: &[u8] = b"plaintext one-shot: card 4111111111111111 exp 12/29";
const PLAINTEXT_PART_1: &[u8] = b"multi-part plaintext first half, ";
const PLAINTEXT_PART_2: &[u8] = b"and the second half with a secret 7c1b";
const GCM_PLAINTEXT: &[u8] = b"gcm plaintext: patient record 55-1207";
const GCM_AAD: &[u8] = b"gcm additional data: tenant=blue-9931";
const GCM_IV: &[u8; 12] = b"iv-3f9e21c07";
const CBC_IV: &[u8; 16] = b"cbc-iv-6d2a91f0e";
const SIGNED_MESSAGE: &[u8] = b"signed message: release build 2026.11 approved";

/// The workload, run in the child. Writes the secrets it can only learn at run time
/// (outputs of the module) to `out/captured.txt` as `name hex` lines.
fn workload(out: &Path) {
    let mut captured: Vec<(&str, Vec<u8>)> = Vec::new();
    let p = open(&keytrail_module());

    // token_admin: initialise the free slot with distinctive PINs.
    let free: Slot = p
        .get_all_slots()
        .expect("slots")
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .map(|i| !i.token_initialized())
                .unwrap_or(false)
        })
        .expect("SoftHSM's free slot");
    p.init_token(free, &AuthPin::new(SO_PIN_X.into()), TOKEN_X)
        .expect("C_InitToken");
    let slot = p
        .get_slots_with_initialized_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .map(|i| i.label() == TOKEN_X)
                .unwrap_or(false)
        })
        .expect("the new token");
    let so = p.open_rw_session(slot).expect("session");
    so.login(UserType::So, Some(&AuthPin::new(SO_PIN_X.into())))
        .expect("SO login");
    so.init_pin(&AuthPin::new(USER_PIN_X.into()))
        .expect("C_InitPIN");
    so.logout().expect("logout");
    let s_ = so;
    s_.login(UserType::User, Some(&AuthPin::new(WRONG_PIN.into())))
        .expect_err("wrong PIN");
    s_.login(UserType::User, Some(&AuthPin::new(USER_PIN_X.into())))
        .expect("login");
    s_.set_pin(
        &AuthPin::new(USER_PIN_X.into()),
        &AuthPin::new(USER_PIN_Y.into()),
    )
    .expect("C_SetPIN");
    s_.logout().expect("logout");
    s_.login(UserType::User, Some(&AuthPin::new(USER_PIN_Y.into())))
        .expect("login with the new PIN");

    // import by value, then use it.
    let mut template = aes_import_template("scan-aes", &[0x5c], AES_VALUE);
    template.push(Attribute::Wrap(true));
    template.push(Attribute::Unwrap(true));
    let aes = s_.create_object(&template).expect("C_CreateObject");
    let cbc = Mechanism::AesCbcPad(*CBC_IV);
    let c1 = s_.encrypt(&cbc, aes, PLAINTEXT_ONE_SHOT).expect("encrypt");
    assert_eq!(
        s_.decrypt(&cbc, aes, &c1).expect("decrypt"),
        PLAINTEXT_ONE_SHOT
    );
    captured.push(("ciphertext_one_shot", c1));
    s_.encrypt_init(&cbc, aes).expect("encrypt init");
    let mut c2 = s_.encrypt_update(PLAINTEXT_PART_1).expect("update");
    c2.extend(s_.encrypt_update(PLAINTEXT_PART_2).expect("update"));
    c2.extend(s_.encrypt_final().expect("final"));
    captured.push(("ciphertext_multi_part", c2));
    let mut iv = *GCM_IV;
    let gcm = GcmParams::new(&mut iv, GCM_AAD, 128.into()).expect("gcm params");
    let c3 = s_
        .encrypt(&Mechanism::AesGcm(gcm), aes, GCM_PLAINTEXT)
        .expect("gcm encrypt");
    captured.push(("ciphertext_gcm", c3));

    // HMAC.
    let hmac = s_
        .create_object(&hmac_template("scan-hmac", HMAC_KEY))
        .expect("HMAC key");
    let mac = s_
        .sign(&Mechanism::Sha256Hmac, hmac, HMAC_INPUT)
        .expect("HMAC");
    s_.verify(&Mechanism::Sha256Hmac, hmac, HMAC_INPUT, &mac)
        .expect("HMAC verify");
    captured.push(("hmac_output", mac));

    // export: wrap an extractable key, read another's value; then unwrap the blob.
    let inner = aes_key(&s_, "scan-inner", &[0x1a], true);
    let wrapped = s_
        .wrap_key(&Mechanism::AesKeyWrap, aes, inner)
        .expect("wrap");
    let value = match s_
        .get_attributes(inner, &[AttributeType::Value])
        .expect("read value")
        .pop()
    {
        Some(Attribute::Value(v)) => v,
        other => panic!("no value: {other:?}"),
    };
    captured.push(("exported_key_value", value));
    s_.unwrap_key(
        &Mechanism::AesKeyWrap,
        aes,
        &wrapped,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Encrypt(true),
        ],
    )
    .expect("unwrap");
    captured.push(("wrapped_blob", wrapped));

    // signatures.
    let (public, private) = ec_pair(&s_, "scan-ec", &[0xec]);
    let digest = s_
        .digest(&Mechanism::Sha256, SIGNED_MESSAGE)
        .expect("digest");
    let signature = s_.sign(&Mechanism::Ecdsa, private, &digest).expect("sign");
    s_.verify(&Mechanism::Ecdsa, public, &digest, &signature)
        .expect("verify");
    captured.push(("ecdsa_signature", signature));

    // random output.
    captured.push(("random", s_.generate_random_vec(32).expect("random")));

    // modify, destroy.
    s_.update_attributes(aes, &[Attribute::Label(b"scan-aes-2".to_vec())])
        .expect("relabel");
    s_.destroy_object(hmac).expect("destroy");
    drop(s_);
    p.finalize().expect("finalize");

    let text: String = captured
        .iter()
        .map(|(name, bytes)| format!("{name} {}\n", hex::encode(bytes)))
        .collect();
    std::fs::write(out.join("captured.txt"), text).expect("write captured.txt");
}

/// Entry point of the child process (run by `secret_scan_finds_nothing`).
#[test]
#[ignore = "the secret scan's workload; run as a child process by secret_scan_finds_nothing"]
fn secret_scan_child_workload() {
    let out = PathBuf::from(std::env::var_os(ENV_CHILD).expect("run by the secret scan"));
    workload(&out);
}

fn known_secrets() -> Vec<Secret> {
    let known: [(&str, &[u8]); 15] = [
        ("so_pin", SO_PIN_X.as_bytes()),
        ("user_pin", USER_PIN_X.as_bytes()),
        ("user_pin_new", USER_PIN_Y.as_bytes()),
        ("wrong_pin", WRONG_PIN.as_bytes()),
        ("aes_value", AES_VALUE),
        ("hmac_key", HMAC_KEY),
        ("hmac_input", HMAC_INPUT),
        ("plaintext_one_shot", PLAINTEXT_ONE_SHOT),
        ("plaintext_part_1", PLAINTEXT_PART_1),
        ("plaintext_part_2", PLAINTEXT_PART_2),
        ("gcm_plaintext", GCM_PLAINTEXT),
        ("gcm_aad", GCM_AAD),
        ("gcm_iv", GCM_IV),
        ("cbc_iv", CBC_IV),
        ("signed_message", SIGNED_MESSAGE),
    ];
    known
        .iter()
        .map(|(name, bytes)| Secret {
            name: name.to_string(),
            bytes: bytes.to_vec(),
        })
        .collect()
}

/// What keytrail wrote, by source (a file, the diagnostics, the child's output).
type Sources = Vec<(String, Vec<u8>)>;

/// Runs the workload in a child process with `[trail] format = FORMAT`; returns the
/// fixture, the secrets (known and captured) and every byte keytrail wrote, by source.
fn run_workload(format: &str) -> (Fixture, Vec<Secret>, Sources) {
    let fx = Fixture::new();
    configure(&fx, "service = \"secret-scan\"", "level = \"trace\"");
    set_format(&fx, format);
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "secret_scan_child_workload",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_CHILD, fx.path())
        .output()
        .expect("run the workload");
    let stderr = child.stderr.clone();
    assert!(
        child.status.success(),
        "workload failed:\n{}\n{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&stderr)
    );

    let mut secrets = known_secrets();
    let captured = std::fs::read_to_string(fx.path().join("captured.txt")).expect("captured");
    for line in captured.lines() {
        let (name, hex_) = line.split_once(' ').expect("name hex");
        secrets.push(Secret {
            name: name.to_string(),
            bytes: hex::decode(hex_).expect("hex"),
        });
    }
    assert_eq!(secrets.len(), 15 + 8, "{captured}");

    // Every byte keytrail wrote: each file under the trail directory, the diagnostics
    // file, the child's stderr (and stdout, for good measure).
    let mut sources: Sources = Vec::new();
    let trail_dir = fx.trail_path().parent().expect("dir").to_path_buf();
    for entry in std::fs::read_dir(&trail_dir).expect("trail dir") {
        let path = entry.expect("entry").path();
        sources.push((
            path.display().to_string(),
            std::fs::read(&path).expect("read"),
        ));
    }
    sources.push(("diagnostics".into(), fx.diagnostics().into_bytes()));
    sources.push(("stderr".into(), stderr));
    sources.push(("stdout".into(), child.stdout.clone()));
    (fx, secrets, sources)
}

/// The actions the workload must have put on the trail for the scan to mean something.
const ACTIONS: [&str; 15] = [
    "token_init",
    "pin_init",
    "pin_set",
    "login",
    "object_create",
    "encrypt",
    "sign",
    "verify",
    "key_wrap",
    "key_unwrap",
    "attribute_read_secret",
    "attribute_read",
    "random_generate",
    "attribute_set",
    "object_destroy",
];

#[test]
fn secret_scan_finds_nothing_in_an_ocsf_trail() {
    let (fx, secrets, sources) = run_workload("ocsf");
    let trail = fx.trail();
    assert!(trail.len() > 30, "{}", dump(&trail));
    for a in ACTIONS {
        assert!(
            trail.iter().any(|r| s(r, "metadata.event_code") == a),
            "no {a} record: {}",
            dump(&trail)
        );
    }
    let hits = scan(&secrets, &sources);
    assert!(hits.is_empty(), "secrets leaked: {hits:#?}");
}

#[test]
fn secret_scan_finds_nothing_and_would_find_a_planted_secret() {
    let (fx, secrets, sources) = run_workload("ecs");

    // The scan is not vacuous: the trail recorded the whole workload.
    let trail = fx.trail();
    assert!(trail.len() > 30, "{}", dump(&trail));
    for a in ACTIONS {
        assert!(
            !action(&trail, a).is_empty(),
            "no {a} record: {}",
            dump(&trail)
        );
    }
    let failed_login = action(&trail, "login")
        .into_iter()
        .find(|r| s(r, "pkcs11.rv_name") == "CKR_PIN_INCORRECT");
    assert!(failed_login.is_some(), "{}", dump(&trail));

    let hits = scan(&secrets, &sources);
    assert!(hits.is_empty(), "secrets leaked: {hits:#?}");

    // The scanner would have found one: plant each kind of encoding of a different
    // secret in a copy of the trail, inside a JSON string, at an odd offset.
    let trail_bytes = std::fs::read(fx.trail_path()).expect("trail");
    let planted: [(&str, &'static str, Encoder); 6] = [
        ("so_pin", "raw", |b| b.to_vec()),
        ("wrapped_blob", "hex", |b| hex::encode(b).into_bytes()),
        ("exported_key_value", "HEX", |b| {
            hex::encode_upper(b).into_bytes()
        }),
        ("aes_value", "base64", |b| STANDARD.encode(b).into_bytes()),
        ("hmac_output", "base64_nopad", |b| {
            STANDARD_NO_PAD.encode(b).into_bytes()
        }),
        // Inside a longer base64 blob, at offset 1 mod 3.
        ("gcm_aad", "base64_aligned", |b| {
            let mut v = vec![0x55];
            v.extend_from_slice(b);
            v.push(0x66);
            STANDARD.encode(v).into_bytes()
        }),
    ];
    for (name, encoding, encode) in planted {
        let secret = secrets.iter().find(|s| s.name == name).expect(name);
        let mut copy = trail_bytes.clone();
        let at = copy.len() / 2 + 1;
        let mut field = b"\"note\":\"".to_vec();
        field.extend(encode(&secret.bytes));
        field.extend(b"\",");
        copy.splice(at..at, field);
        let hits = scan(&secrets, &[("planted".to_string(), copy)]);
        assert!(
            hits.iter()
                .any(|h| h.secret == name && h.encoding == encoding && h.source == "planted"),
            "the scanner missed {name} planted as {encoding}: {hits:?}"
        );
    }
}
