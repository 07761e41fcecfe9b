//! One scenario per lifecycle category, run through keytrail against SoftHSM2, with
//! assertions on the exact records each produces.

mod common;
mod support;

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::{Value, json};
use support::*;

/// The names of an object's fields.
fn keys_of(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    k.sort_unstable();
    k
}

#[test]
fn session_open_close_and_close_all() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    let ro = p.open_ro_session(slot).expect("ro session");
    let rw = p.open_rw_session_no_drop(slot).expect("rw session");
    let ro_handle = ro.handle();
    let rw_handle = rw.handle();
    ro.close().expect("C_CloseSession");
    // cryptoki has no C_CloseAllSessions; call keytrail's export directly.
    // SAFETY: the library is already loaded and initialised by `p`; the symbol has the
    // PKCS#11 signature.
    let rv = unsafe {
        let lib = libloading::Library::new(keytrail_module()).expect("dlopen keytrail");
        let close_all: libloading::Symbol<unsafe extern "C" fn(u64) -> u64> = lib
            .get(b"C_CloseAllSessions\0")
            .expect("C_CloseAllSessions");
        close_all(slot.id())
    };
    assert_eq!(rv, 0);
    drop(rw);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let sessions = category(&t, "session");
    assert_eq!(sessions.len(), 4, "{}", dump(&t));
    assert_eq!(t.len(), 4, "only session records: {}", dump(&t));

    let open_ro = &sessions[0];
    assert_call(
        open_ro,
        "session",
        "session_open",
        "C_OpenSession",
        "CKR_OK",
    );
    assert_eq!(n(open_ro, "pkcs11.session.handle"), ro_handle);
    assert_eq!(s(open_ro, "pkcs11.session.state"), "ro_public");
    assert_eq!(n(open_ro, "pkcs11.slot_id"), slot.id());
    assert_eq!(s(open_ro, "pkcs11.token.label"), TOKEN_LABEL);
    assert!(!s(open_ro, "pkcs11.token.serial").is_empty(), "{open_ro}");
    assert!(at(open_ro, "pkcs11.flags").is_null(), "{open_ro}");
    assert_eq!(at(open_ro, "event.category"), &json!(["session"]));
    assert_eq!(at(open_ro, "event.type"), &json!(["start"]));

    let open_rw = &sessions[1];
    assert_call(
        open_rw,
        "session",
        "session_open",
        "C_OpenSession",
        "CKR_OK",
    );
    assert_eq!(n(open_rw, "pkcs11.session.handle"), rw_handle);
    assert_eq!(s(open_rw, "pkcs11.session.state"), "rw_public");
    assert_eq!(at(open_rw, "pkcs11.flags"), &json!(["read_write"]));

    let close = &sessions[2];
    assert_call(
        close,
        "session",
        "session_close",
        "C_CloseSession",
        "CKR_OK",
    );
    assert_eq!(n(close, "pkcs11.session.handle"), ro_handle);
    assert_eq!(n(close, "pkcs11.slot_id"), slot.id());
    assert_eq!(at(close, "event.type"), &json!(["end"]));

    let close_all = &sessions[3];
    assert_call(
        close_all,
        "session",
        "session_close",
        "C_CloseAllSessions",
        "CKR_OK",
    );
    assert_eq!(n(close_all, "pkcs11.slot_id"), slot.id());
    assert!(at(close_all, "pkcs11.session").is_null(), "{close_all}");
}

#[test]
fn login_wrong_pin_logout_and_session_state() {
    const WRONG: &str = "wrong-pin-86420";
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let session = p.open_rw_session(token_slot(&p)).expect("session");
    let err = session
        .login(UserType::User, Some(&AuthPin::new(WRONG.into())))
        .expect_err("wrong PIN");
    assert!(format!("{err:?}").contains("PinIncorrect"), "{err:?}");
    session
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");
    session.logout().expect("logout");
    drop(session);
    p.finalize().expect("finalize");

    let raw = std::fs::read_to_string(fx.trail_path()).expect("trail");
    assert!(!raw.contains(WRONG), "the wrong PIN leaked: {raw}");
    assert!(!raw.to_lowercase().contains("pin_len"), "{raw}");

    let t = lifecycle(&fx.trail());
    let auth = category(&t, "auth");
    assert_eq!(auth.len(), 3, "{}", dump(&t));

    let failed = &auth[0];
    assert_call(failed, "auth", "login", "C_Login", "CKR_PIN_INCORRECT");
    assert_eq!(n(failed, "pkcs11.rv"), 0xa0);
    assert_eq!(s(failed, "event.outcome"), "failure");
    assert_eq!(s(failed, "pkcs11.auth.user_type"), "CKU_USER");
    assert_eq!(keys_of(at(failed, "pkcs11.auth")), ["user_type"]);
    assert_eq!(s(failed, "pkcs11.session.state"), "rw_public");
    assert_eq!(at(failed, "event.category"), &json!(["authentication"]));

    let ok = &auth[1];
    assert_call(ok, "auth", "login", "C_Login", "CKR_OK");
    assert_eq!(s(ok, "pkcs11.session.state"), "rw_user");
    assert_eq!(keys_of(at(ok, "pkcs11.auth")), ["user_type"]);

    let logout = &auth[2];
    assert_call(logout, "auth", "logout", "C_Logout", "CKR_OK");
    assert_eq!(
        s(logout, "pkcs11.session.state"),
        "rw_user",
        "state before logout"
    );
    assert_eq!(at(logout, "event.type"), &json!(["end"]));
    // The session close after the logout shows the state went back to public.
    let close = only(&t, "session_close");
    assert_eq!(s(&close, "pkcs11.session.state"), "rw_public");
}

#[test]
fn token_admin_init_token_init_pin_set_pin() {
    const NEW_LABEL: &str = "relabelled";
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    let old_serial = p
        .get_token_info(slot)
        .expect("info")
        .serial_number()
        .to_string();
    p.init_token(slot, &AuthPin::new(SO_PIN.into()), NEW_LABEL)
        .expect("C_InitToken");
    let so = p.open_rw_session(slot).expect("session");
    so.login(UserType::So, Some(&AuthPin::new(SO_PIN.into())))
        .expect("SO login");
    so.init_pin(&AuthPin::new("first-user-pin".into()))
        .expect("C_InitPIN");
    so.logout().expect("logout");
    so.login(UserType::User, Some(&AuthPin::new("first-user-pin".into())))
        .expect("user login");
    so.set_pin(
        &AuthPin::new("first-user-pin".into()),
        &AuthPin::new("second-user-pin".into()),
    )
    .expect("C_SetPIN");
    drop(so);
    p.finalize().expect("finalize");

    let raw = std::fs::read_to_string(fx.trail_path()).expect("trail");
    for pin in [SO_PIN, "first-user-pin", "second-user-pin"] {
        assert!(!raw.contains(&format!("\"{pin}\"")), "{pin} leaked");
    }
    assert!(!raw.contains("user-pin"), "a PIN leaked: {raw}");

    let t = lifecycle(&fx.trail());
    let admin = category(&t, "token_admin");
    assert_eq!(admin.len(), 3, "{}", dump(&t));

    let init = &admin[0];
    assert_call(init, "token_admin", "token_init", "C_InitToken", "CKR_OK");
    assert_eq!(at(init, "pkcs11.flags"), &json!(["token_wiped"]));
    assert_eq!(n(init, "pkcs11.slot_id"), slot.id());
    assert_eq!(
        s(init, "pkcs11.token.label"),
        NEW_LABEL,
        "the token as it is now"
    );
    assert_eq!(
        s(init, "keytrail.previous_token.label"),
        TOKEN_LABEL,
        "the token that was wiped"
    );
    assert_eq!(s(init, "keytrail.previous_token.serial"), old_serial);
    assert!(at(init, "pkcs11.session").is_null());
    assert_eq!(at(init, "event.category"), &json!(["configuration"]));
    assert_eq!(at(init, "event.type"), &json!(["admin"]));

    let init_pin = &admin[1];
    assert_call(init_pin, "token_admin", "pin_init", "C_InitPIN", "CKR_OK");
    assert_eq!(s(init_pin, "pkcs11.session.state"), "rw_so");
    assert_eq!(s(init_pin, "pkcs11.token.label"), NEW_LABEL);

    let set_pin = &admin[2];
    assert_call(set_pin, "token_admin", "pin_set", "C_SetPIN", "CKR_OK");
    assert_eq!(s(set_pin, "pkcs11.session.state"), "rw_user");

    let logins = action(&t, "login");
    let logins: Vec<&str> = logins
        .iter()
        .map(|r| s(r, "pkcs11.auth.user_type"))
        .collect();
    assert_eq!(logins, ["CKU_SO", "CKU_USER"]);
}

#[test]
fn generate_aes_key_and_ec_key_pair() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let aes = aes_key(&s_, "gen-aes", &[0x0a, 0x01], false);
    let (public, private) = ec_pair(&s_, "gen-ec", &[0x0e, 0xc1]);
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let generate = category(&t, "generate");
    assert_eq!(generate.len(), 2, "{}", dump(&t));

    let g = &generate[0];
    assert_call(g, "generate", "key_generate", "C_GenerateKey", "CKR_OK");
    assert_eq!(s(g, "pkcs11.mechanism.name"), "CKM_AES_KEY_GEN");
    assert_eq!(n(g, "pkcs11.mechanism.type"), 0x1080);
    assert_eq!(s(g, "pkcs11.session.state"), "rw_user");
    assert_eq!(n(g, "pkcs11.key.handle"), aes.handle());
    assert_eq!(s(g, "pkcs11.key.class"), "CKO_SECRET_KEY");
    assert_eq!(s(g, "pkcs11.key.key_type"), "CKK_AES");
    assert_eq!(n(g, "pkcs11.key.bits"), 256);
    assert_eq!(s(g, "pkcs11.key.id_hex"), "0a01");
    assert_eq!(s(g, "pkcs11.key.label"), "gen-aes");
    assert_eq!(at(g, "pkcs11.key.token"), &json!(false));
    assert!(at(g, "pkcs11.keys").is_null(), "{g}");
    let template = at(g, "pkcs11.attributes.template");
    assert!(
        template
            .as_array()
            .expect("template")
            .contains(&json!({"type": "CKA_VALUE_LEN", "ulong": {"value": 32}})),
        "{template}"
    );
    assert_eq!(at(g, "event.type"), &json!(["creation"]));

    let kp = &generate[1];
    assert_call(
        kp,
        "generate",
        "key_pair_generate",
        "C_GenerateKeyPair",
        "CKR_OK",
    );
    assert_eq!(s(kp, "pkcs11.mechanism.name"), "CKM_EC_KEY_PAIR_GEN");
    assert!(at(kp, "pkcs11.key").is_null(), "pair roles only: {kp}");
    assert_eq!(n(kp, "pkcs11.keys.public.handle"), public.handle());
    assert_eq!(s(kp, "pkcs11.keys.public.class"), "CKO_PUBLIC_KEY");
    assert_eq!(s(kp, "pkcs11.keys.public.key_type"), "CKK_EC");
    assert_eq!(s(kp, "pkcs11.keys.public.label"), "gen-ec-pub");
    assert_eq!(s(kp, "pkcs11.keys.public.id_hex"), "0ec1");
    assert_eq!(n(kp, "pkcs11.keys.private.handle"), private.handle());
    assert_eq!(s(kp, "pkcs11.keys.private.class"), "CKO_PRIVATE_KEY");
    assert_eq!(s(kp, "pkcs11.keys.private.key_type"), "CKK_EC");
    assert_eq!(s(kp, "pkcs11.keys.private.label"), "gen-ec-priv");
    let public_template = at(kp, "pkcs11.attributes.public_template");
    assert!(
        public_template
            .as_array()
            .expect("public template")
            .contains(&json!({"type": "CKA_EC_PARAMS", "hex": hex::encode(P256)})),
        "{public_template}"
    );
    assert!(at(kp, "pkcs11.attributes.private_template").is_array());
}

#[test]
fn import_aes_key_by_value_is_flagged_and_redacted() {
    let value: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = s_
        .create_object(&aes_import_template("imported", &[0x1d], &value))
        .expect("C_CreateObject");
    drop(s_);
    p.finalize().expect("finalize");

    let raw = std::fs::read_to_string(fx.trail_path()).expect("trail");
    assert!(!raw.contains(&hex::encode(&value)), "key value leaked");

    let t = lifecycle(&fx.trail());
    let r = only(&t, "object_create");
    assert_call(&r, "import", "object_create", "C_CreateObject", "CKR_OK");
    assert_eq!(at(&r, "pkcs11.flags"), &json!(["plaintext_key_material"]));
    assert_eq!(n(&r, "pkcs11.key.handle"), key.handle());
    assert_eq!(s(&r, "pkcs11.key.class"), "CKO_SECRET_KEY");
    assert_eq!(s(&r, "pkcs11.key.key_type"), "CKK_AES");
    assert_eq!(s(&r, "pkcs11.key.label"), "imported");
    assert_eq!(s(&r, "pkcs11.key.id_hex"), "1d");
    let template = at(&r, "pkcs11.attributes.template")
        .as_array()
        .expect("template");
    assert!(
        template.contains(&json!({"type": "CKA_VALUE", "redacted": true})),
        "{template:?}"
    );
    assert!(
        template.contains(&json!({"type": "CKA_LABEL", "text": "imported"})),
        "{template:?}"
    );
    assert!(
        template.contains(
            &json!({"type": "CKA_CLASS", "ulong": {"value": 4, "name": "CKO_SECRET_KEY"}})
        ),
        "{template:?}"
    );
    assert_eq!(template.len(), 10);
    assert!(at(&r, "pkcs11.mechanism").is_null());
}

#[test]
fn import_copy_unwrap_and_derive_name_the_other_keys() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let wrapping = aes_key(&s_, "kek", &[0x4b], false);
    let exportable = aes_key(&s_, "to-wrap", &[0x77], true);
    let copy = s_
        .copy_object(exportable, &[Attribute::Label(b"the-copy".to_vec())])
        .expect("C_CopyObject");
    let wrapped = s_
        .wrap_key(&Mechanism::AesKeyWrap, wrapping, exportable)
        .expect("C_WrapKey");
    let unwrapped = s_
        .unwrap_key(
            &Mechanism::AesKeyWrap,
            wrapping,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Label(b"unwrapped".to_vec()),
                Attribute::Encrypt(true),
            ],
        )
        .expect("C_UnwrapKey");
    let (_, private) = ec_pair(&s_, "ecdh-a", &[0xa]);
    let (peer_public, _) = ec_pair(&s_, "ecdh-b", &[0xb]);
    let point = match s_
        .get_attributes(peer_public, &[AttributeType::EcPoint])
        .expect("EC point")
        .pop()
    {
        Some(Attribute::EcPoint(p)) => p,
        other => panic!("no EC point: {other:?}"),
    };
    // SoftHSM takes the raw point (drop the DER OCTET STRING header).
    let raw_point = point[2..].to_vec();
    let params = Ecdh1DeriveParams::new(EcKdf::null(), &raw_point);
    let derived = s_
        .derive_key(
            &Mechanism::Ecdh1Derive(params),
            private,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Label(b"derived".to_vec()),
            ],
        )
        .expect("C_DeriveKey");
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());

    let c = only(&t, "object_copy");
    assert_call(&c, "import", "object_copy", "C_CopyObject", "CKR_OK");
    assert_eq!(n(&c, "pkcs11.keys.source.handle"), exportable.handle());
    assert_eq!(s(&c, "pkcs11.keys.source.label"), "to-wrap");
    assert_eq!(n(&c, "pkcs11.key.handle"), copy.handle());
    assert_eq!(s(&c, "pkcs11.key.label"), "the-copy");
    assert_eq!(
        s(&c, "pkcs11.key.key_type"),
        "CKK_AES",
        "inherited from the source"
    );
    assert_eq!(
        s(&c, "pkcs11.key.id_hex"),
        "77",
        "inherited from the source"
    );
    assert_eq!(n(&c, "pkcs11.key.bits"), 256);

    let u = only(&t, "key_unwrap");
    assert_call(&u, "import", "key_unwrap", "C_UnwrapKey", "CKR_OK");
    assert_eq!(s(&u, "pkcs11.mechanism.name"), "CKM_AES_KEY_WRAP");
    assert_eq!(n(&u, "pkcs11.keys.unwrapping.handle"), wrapping.handle());
    assert_eq!(s(&u, "pkcs11.keys.unwrapping.label"), "kek");
    assert_eq!(n(&u, "pkcs11.key.handle"), unwrapped.handle());
    assert_eq!(s(&u, "pkcs11.key.label"), "unwrapped");
    assert_eq!(s(&u, "pkcs11.key.class"), "CKO_SECRET_KEY");
    assert_eq!(n(&u, "pkcs11.data.in_len"), wrapped.len() as u64);
    assert!(at(&u, "pkcs11.data.out_len").is_null());
    assert!(at(&u, "pkcs11.flags").is_null(), "no plaintext: {u}");

    let d = only(&t, "key_derive");
    assert_call(&d, "generate", "key_derive", "C_DeriveKey", "CKR_OK");
    assert_eq!(s(&d, "pkcs11.mechanism.name"), "CKM_ECDH1_DERIVE");
    assert_eq!(n(&d, "pkcs11.mechanism.params.kdf"), 1, "CKD_NULL");
    assert_eq!(n(&d, "pkcs11.keys.base.handle"), private.handle());
    assert_eq!(s(&d, "pkcs11.keys.base.class"), "CKO_PRIVATE_KEY");
    assert_eq!(s(&d, "pkcs11.keys.base.label"), "ecdh-a-priv");
    assert_eq!(n(&d, "pkcs11.key.handle"), derived.handle());
    assert_eq!(s(&d, "pkcs11.key.label"), "derived");
    assert_eq!(s(&d, "pkcs11.key.key_type"), "CKK_GENERIC_SECRET");
    assert_eq!(n(&d, "pkcs11.key.bits"), 256);
    let raw = std::fs::read_to_string(fx.trail_path()).expect("trail");
    assert!(
        !raw.contains(&hex::encode(&raw_point)),
        "public data is not logged"
    );
}

#[test]
fn use_single_part_sign_is_one_record() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let (_, private) = ec_pair(&s_, "signer", &[0x51]);
    let digest = s_.digest(&Mechanism::Sha256, b"message").expect("digest");
    // cryptoki asks for the signature's length (NULL buffer), then signs.
    let signature = s_.sign(&Mechanism::Ecdsa, private, &digest).expect("sign");
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let uses = category(&t, "use");
    assert_eq!(uses.len(), 1, "one record per operation: {}", dump(&t));
    let r = &uses[0];
    assert_call(r, "use", "sign", "C_Sign", "CKR_OK");
    assert_eq!(s(r, "pkcs11.mechanism.name"), "CKM_ECDSA");
    assert_eq!(n(r, "pkcs11.key.handle"), private.handle());
    assert_eq!(s(r, "pkcs11.key.class"), "CKO_PRIVATE_KEY");
    assert_eq!(s(r, "pkcs11.key.label"), "signer-priv");
    assert_eq!(
        at(r, "pkcs11.operation"),
        &json!({"kind": "sign", "init": "C_SignInit", "parts": 1, "end": "completed"})
    );
    assert_eq!(n(r, "pkcs11.data.in_len"), 32);
    assert_eq!(n(r, "pkcs11.data.out_len"), signature.len() as u64);
    assert_eq!(at(r, "event.type"), &json!(["access"]));
}

#[test]
fn use_multi_part_encrypt_counts_parts_and_lengths() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = aes_key(&s_, "bulk", &[0xb0], false);
    s_.encrypt_init(&Mechanism::AesCbcPad([7; 16]), key)
        .expect("init");
    let mut out = s_.encrypt_update(&[1; 16]).expect("update 1");
    out.extend(s_.encrypt_update(&[2; 20]).expect("update 2"));
    out.extend(s_.encrypt_update(&[3; 30]).expect("update 3"));
    out.extend(s_.encrypt_final().expect("final"));
    assert_eq!(out.len(), 80);
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let uses = category(&t, "use");
    assert_eq!(uses.len(), 1, "{}", dump(&t));
    let r = &uses[0];
    assert_call(r, "use", "encrypt", "C_EncryptFinal", "CKR_OK");
    assert_eq!(s(r, "pkcs11.mechanism.name"), "CKM_AES_CBC_PAD");
    assert_eq!(n(r, "pkcs11.mechanism.params.len"), 16, "IV length only");
    assert_eq!(n(r, "pkcs11.key.handle"), key.handle());
    assert_eq!(s(r, "pkcs11.key.label"), "bulk");
    assert_eq!(
        at(r, "pkcs11.operation"),
        &json!({"kind": "encrypt", "init": "C_EncryptInit", "parts": 3, "end": "completed"})
    );
    assert_eq!(n(r, "pkcs11.data.in_len"), 66);
    assert_eq!(n(r, "pkcs11.data.out_len"), 80);
}

#[test]
fn use_verify_with_bad_signature_is_a_failure() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let (public, private) = ec_pair(&s_, "verifier", &[0x5e]);
    let digest = [0x42u8; 32];
    let mut signature = s_.sign(&Mechanism::Ecdsa, private, &digest).expect("sign");
    s_.verify(&Mechanism::Ecdsa, public, &digest, &signature)
        .expect("good signature");
    signature[5] ^= 0xff;
    let err = s_
        .verify(&Mechanism::Ecdsa, public, &digest, &signature)
        .expect_err("bad signature");
    assert!(format!("{err:?}").contains("SignatureInvalid"), "{err:?}");
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let verifies = action(&t, "verify");
    assert_eq!(verifies.len(), 2, "{}", dump(&t));
    assert_call(&verifies[0], "use", "verify", "C_Verify", "CKR_OK");
    assert_eq!(s(&verifies[0], "pkcs11.operation.end"), "completed");
    let bad = &verifies[1];
    assert_call(bad, "use", "verify", "C_Verify", "CKR_SIGNATURE_INVALID");
    assert_eq!(s(bad, "event.outcome"), "failure");
    assert_eq!(n(bad, "pkcs11.rv"), 0xc0);
    assert_eq!(n(bad, "pkcs11.key.handle"), public.handle());
    assert_eq!(s(bad, "pkcs11.key.class"), "CKO_PUBLIC_KEY");
    assert_eq!(
        at(bad, "pkcs11.operation"),
        &json!({"kind": "verify", "init": "C_VerifyInit", "parts": 0, "end": "failed"})
    );
}

#[test]
fn use_failed_init_is_a_record() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    // An EC private key cannot do AES: SoftHSM refuses at C_EncryptInit.
    let (_, private) = ec_pair(&s_, "not-an-aes-key", &[0xae]);
    let err = s_
        .encrypt(&Mechanism::AesEcb, private, &[0u8; 16])
        .expect_err("AES with an EC key");
    let err = format!("{err:?}");
    assert!(err.contains("EncryptInit"), "{err}");
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let uses = category(&t, "use");
    assert_eq!(uses.len(), 1, "{}", dump(&t));
    let r = &uses[0];
    assert_eq!(s(r, "pkcs11.function"), "C_EncryptInit", "{r}");
    assert_eq!(s(r, "event.action"), "encrypt");
    assert_eq!(s(r, "event.outcome"), "failure");
    let rv_name = s(r, "pkcs11.rv_name");
    assert!(
        rv_name == "CKR_KEY_TYPE_INCONSISTENT" || rv_name == "CKR_KEY_FUNCTION_NOT_PERMITTED",
        "{r}"
    );
    // cryptoki's error names the same code in CamelCase.
    let camel: String = rv_name
        .trim_start_matches("CKR_")
        .split('_')
        .map(|w| w[..1].to_string() + &w[1..].to_lowercase())
        .collect();
    assert!(err.contains(&camel), "{err} vs {rv_name}");
    assert_eq!(n(r, "pkcs11.key.handle"), private.handle());
    assert_eq!(s(r, "pkcs11.key.label"), "not-an-aes-key-priv");
    assert!(
        at(r, "pkcs11.mechanism").is_null(),
        "not read after a rejection: {r}"
    );
    assert_eq!(
        at(r, "pkcs11.operation"),
        &json!({"kind": "encrypt", "init": "C_EncryptInit", "parts": 0, "end": "failed"})
    );
}

#[test]
fn use_abandoned_when_the_session_closes() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = aes_key(&s_, "left-open", &[0x1e], false);
    let handle = s_.handle();
    s_.encrypt_init(&Mechanism::AesCbcPad([1; 16]), key)
        .expect("init");
    let out = s_.encrypt_update(&[9; 32]).expect("update");
    s_.close().expect("close");
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let uses = category(&t, "use");
    assert_eq!(uses.len(), 1, "{}", dump(&t));
    let r = &uses[0];
    assert_eq!(s(r, "event.action"), "encrypt");
    assert_eq!(s(r, "pkcs11.function"), "C_CloseSession");
    assert_eq!(s(r, "event.outcome"), "unknown");
    assert!(at(r, "pkcs11.rv").is_null(), "{r}");
    assert!(at(r, "pkcs11.rv_name").is_null(), "{r}");
    assert_eq!(n(r, "pkcs11.session.handle"), handle);
    assert_eq!(s(r, "pkcs11.session.state"), "rw_user", "{r}");
    assert_eq!(s(r, "pkcs11.token.label"), TOKEN_LABEL, "{r}");
    assert_eq!(n(r, "pkcs11.key.handle"), key.handle());
    assert_eq!(
        at(r, "pkcs11.operation"),
        &json!({"kind": "encrypt", "init": "C_EncryptInit", "parts": 1, "end": "abandoned"})
    );
    assert_eq!(n(r, "pkcs11.data.in_len"), 32);
    assert_eq!(n(r, "pkcs11.data.out_len"), out.len() as u64);
    // The abandoned operation is written before the close that ended it.
    let seq_use = n(r, "event.sequence");
    let close = only(&t, "session_close");
    assert!(seq_use < n(&close, "event.sequence"));
}

#[test]
fn use_abandoned_at_finalize() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let (_, private) = ec_pair(&s_, "interrupted", &[0x1f]);
    s_.sign_init(&Mechanism::Ecdsa, private).expect("init");
    // The application finalizes with the operation (and its session) still open.
    std::mem::forget(s_);
    p.finalize().expect("finalize");

    let t = fx.trail();
    let uses = category(&t, "use");
    assert_eq!(uses.len(), 1, "{}", dump(&t));
    let r = &uses[0];
    assert_eq!(s(r, "pkcs11.function"), "C_Finalize");
    assert_eq!(s(r, "event.outcome"), "unknown");
    assert_eq!(s(r, "pkcs11.session.state"), "rw_user", "{r}");
    assert_eq!(s(r, "pkcs11.token.label"), TOKEN_LABEL, "{r}");
    assert_eq!(n(r, "pkcs11.key.handle"), private.handle());
    assert_eq!(
        at(r, "pkcs11.operation"),
        &json!({"kind": "sign", "init": "C_SignInit", "parts": 0, "end": "abandoned"})
    );
    // Written before the trail's own finalize record.
    let fin = only(&t, "finalize");
    assert!(n(r, "event.sequence") < n(&fin, "event.sequence"));
}

#[test]
fn use_size_query_then_call_is_one_record() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = aes_key(&s_, "one-shot", &[0x05], false);
    // cryptoki's encrypt: C_EncryptInit, C_Encrypt with a NULL buffer, C_Encrypt.
    let ciphertext = s_
        .encrypt(&Mechanism::AesCbcPad([3; 16]), key, &[0x61; 40])
        .expect("encrypt");
    let plaintext = s_
        .decrypt(&Mechanism::AesCbcPad([3; 16]), key, &ciphertext)
        .expect("decrypt");
    assert_eq!(plaintext, [0x61; 40]);
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let uses = category(&t, "use");
    assert_eq!(uses.len(), 2, "{}", dump(&t));
    let e = &uses[0];
    assert_call(e, "use", "encrypt", "C_Encrypt", "CKR_OK");
    assert_eq!(
        at(e, "pkcs11.operation"),
        &json!({"kind": "encrypt", "init": "C_EncryptInit", "parts": 1, "end": "completed"})
    );
    assert_eq!(n(e, "pkcs11.data.in_len"), 40);
    assert_eq!(n(e, "pkcs11.data.out_len"), 48);
    let d = &uses[1];
    assert_call(d, "use", "decrypt", "C_Decrypt", "CKR_OK");
    assert_eq!(n(d, "pkcs11.data.in_len"), 48);
    assert_eq!(n(d, "pkcs11.data.out_len"), 40);
    assert_eq!(s(d, "pkcs11.operation.init"), "C_DecryptInit");
}

#[test]
fn export_wrap_key_names_both_keys_and_the_length() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let wrapping = aes_key(&s_, "kek", &[0x4b, 0x45], false);
    let key = aes_key(&s_, "payload", &[0x50], true);
    let wrapped = s_
        .wrap_key(&Mechanism::AesKeyWrap, wrapping, key)
        .expect("wrap");
    drop(s_);
    p.finalize().expect("finalize");

    let raw = std::fs::read_to_string(fx.trail_path()).expect("trail");
    assert!(!raw.contains(&hex::encode(&wrapped)), "wrapped blob leaked");

    let t = lifecycle(&fx.trail());
    let exports = category(&t, "export");
    assert_eq!(
        exports.len(),
        1,
        "the length query is not a record: {}",
        dump(&t)
    );
    let r = &exports[0];
    assert_call(r, "export", "key_wrap", "C_WrapKey", "CKR_OK");
    assert_eq!(s(r, "pkcs11.mechanism.name"), "CKM_AES_KEY_WRAP");
    assert_eq!(n(r, "pkcs11.keys.wrapping.handle"), wrapping.handle());
    assert_eq!(s(r, "pkcs11.keys.wrapping.label"), "kek");
    assert_eq!(s(r, "pkcs11.keys.wrapping.id_hex"), "4b45");
    assert_eq!(n(r, "pkcs11.key.handle"), key.handle());
    assert_eq!(s(r, "pkcs11.key.label"), "payload");
    assert_eq!(n(r, "pkcs11.data.out_len"), wrapped.len() as u64);
    assert_eq!(wrapped.len(), 40);
    assert!(at(r, "pkcs11.data.in_len").is_null());
}

#[test]
fn export_reading_a_secret_value_is_recorded_without_the_value() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = aes_key(&s_, "readable", &[0x2e], true);
    // A non-secret read is not an export (and at level `audit`, not a record).
    let label = s_
        .get_attributes(key, &[AttributeType::Label])
        .expect("label");
    assert_eq!(label, [Attribute::Label(b"readable".to_vec())]);
    let value = match s_
        .get_attributes(key, &[AttributeType::Value])
        .expect("value")
        .pop()
    {
        Some(Attribute::Value(v)) => v,
        other => panic!("no value: {other:?}"),
    };
    assert_eq!(value.len(), 32);
    drop(s_);
    p.finalize().expect("finalize");

    let raw = std::fs::read_to_string(fx.trail_path()).expect("trail");
    assert!(!raw.contains(&hex::encode(&value)), "key value leaked");
    assert!(
        !raw.contains(&hex::encode_upper(&value)),
        "key value leaked"
    );

    let t = lifecycle(&fx.trail());
    assert!(category(&t, "discovery").is_empty(), "{}", dump(&t));
    let exports = category(&t, "export");
    assert_eq!(exports.len(), 1, "{}", dump(&t));
    let r = &exports[0];
    assert_call(
        r,
        "export",
        "attribute_read_secret",
        "C_GetAttributeValue",
        "CKR_OK",
    );
    assert_eq!(at(r, "pkcs11.flags"), &json!(["secret_value_read"]));
    assert_eq!(n(r, "pkcs11.key.handle"), key.handle());
    assert_eq!(s(r, "pkcs11.key.label"), "readable");
    assert_eq!(s(r, "pkcs11.key.class"), "CKO_SECRET_KEY");
    assert_eq!(
        at(r, "pkcs11.attributes.read"),
        &json!([{"type": "CKA_VALUE", "redacted": true}])
    );
}

#[test]
fn modify_label_change_records_old_identity_and_new_value() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = aes_key(&s_, "before", &[0x3c], false);
    s_.update_attributes(key, &[Attribute::Label(b"after".to_vec())])
        .expect("C_SetAttributeValue");
    s_.encrypt(&Mechanism::AesEcb, key, &[0; 16])
        .expect("encrypt");
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let modify = category(&t, "modify");
    assert_eq!(modify.len(), 1, "{}", dump(&t));
    let r = &modify[0];
    assert_call(
        r,
        "modify",
        "attribute_set",
        "C_SetAttributeValue",
        "CKR_OK",
    );
    assert_eq!(n(r, "pkcs11.key.handle"), key.handle());
    assert_eq!(
        s(r, "pkcs11.key.label"),
        "before",
        "identity before the change"
    );
    assert_eq!(
        at(r, "pkcs11.attributes.set"),
        &json!([{"type": "CKA_LABEL", "text": "after"}])
    );
    assert_eq!(at(r, "event.type"), &json!(["change"]));
    // The cached identity was dropped: the next use names the new label.
    let used = only(&t, "encrypt");
    assert_eq!(s(&used, "pkcs11.key.label"), "after");
}

#[test]
fn destroy_record_carries_the_identity_captured_before() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = aes_key(&s_, "doomed", &[0xde, 0xad], false);
    s_.destroy_object(key).expect("C_DestroyObject");
    let err = s_.destroy_object(key).expect_err("already gone");
    assert!(
        format!("{err:?}").contains("ObjectHandleInvalid"),
        "{err:?}"
    );
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let destroy = category(&t, "destroy");
    assert_eq!(destroy.len(), 2, "{}", dump(&t));
    let r = &destroy[0];
    assert_call(r, "destroy", "object_destroy", "C_DestroyObject", "CKR_OK");
    assert_eq!(n(r, "pkcs11.key.handle"), key.handle());
    assert_eq!(s(r, "pkcs11.key.label"), "doomed");
    assert_eq!(s(r, "pkcs11.key.id_hex"), "dead");
    assert_eq!(s(r, "pkcs11.key.class"), "CKO_SECRET_KEY");
    assert_eq!(s(r, "pkcs11.key.key_type"), "CKK_AES");
    assert_eq!(n(r, "pkcs11.key.bits"), 256);
    assert_eq!(at(r, "event.type"), &json!(["deletion"]));
    let again = &destroy[1];
    assert_call(
        again,
        "destroy",
        "object_destroy",
        "C_DestroyObject",
        "CKR_OBJECT_HANDLE_INVALID",
    );
    assert_eq!(keys_of(at(again, "pkcs11.key")), ["handle"], "{again}");
}

#[test]
fn discovery_is_recorded_only_at_level_trace() {
    let fx = Fixture::new();
    configure(&fx, "", "level = \"trace\"");
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = aes_key(&s_, "findme", &[0xf1], false);
    let found = s_
        .find_objects(&[Attribute::Label(b"findme".to_vec())])
        .expect("find");
    assert_eq!(found, [key]);
    let random = s_.generate_random_vec(24).expect("random");
    s_.get_attributes(key, &[AttributeType::Label])
        .expect("label");
    drop(s_);
    p.finalize().expect("finalize");

    let raw = std::fs::read_to_string(fx.trail_path()).expect("trail");
    assert!(!raw.contains(&hex::encode(&random)), "random bytes leaked");

    let t = lifecycle(&fx.trail());
    let d = category(&t, "discovery");
    let summary: Vec<(&str, &str)> = d
        .iter()
        .map(|r| (s(r, "pkcs11.function"), s(r, "event.action")))
        .collect();
    assert!(
        summary.contains(&("C_FindObjectsInit", "objects_find")),
        "{summary:?}"
    );
    assert!(
        summary.contains(&("C_FindObjects", "objects_find")),
        "{summary:?}"
    );
    assert!(
        summary.contains(&("C_GenerateRandom", "random_generate")),
        "{summary:?}"
    );
    assert!(
        summary.contains(&("C_GetAttributeValue", "attribute_read")),
        "{summary:?}"
    );

    let init = d
        .iter()
        .find(|r| s(r, "pkcs11.function") == "C_FindObjectsInit")
        .expect("find init");
    // Not even success proves a search template's values readable: only its size.
    assert_eq!(at(init, "pkcs11.attribute_count"), &json!({"template": 1}));
    assert!(at(init, "pkcs11.attributes").is_null(), "{init}");
    let find = d
        .iter()
        .find(|r| s(r, "pkcs11.function") == "C_FindObjects")
        .expect("find");
    assert_eq!(n(find, "pkcs11.data.out_len"), 1, "{find}");
    let rnd = d
        .iter()
        .find(|r| s(r, "pkcs11.function") == "C_GenerateRandom")
        .expect("random");
    assert_call(
        rnd,
        "discovery",
        "random_generate",
        "C_GenerateRandom",
        "CKR_OK",
    );
    assert_eq!(at(rnd, "pkcs11.data"), &json!({"out_len": 24}));
    // cryptoki asks for CKA_LABEL's length first, then reads it: two calls, two records.
    let reads: Vec<&Value> = d
        .iter()
        .filter(|r| s(r, "pkcs11.function") == "C_GetAttributeValue")
        .collect();
    assert_eq!(reads.len(), 2, "{}", dump(&t));
    assert_eq!(
        at(reads[0], "pkcs11.attributes.read"),
        &json!([{"type": "CKA_LABEL", "unavailable": true}])
    );
    let read = reads[1];
    assert_eq!(n(read, "pkcs11.key.handle"), key.handle());
    assert_eq!(
        at(read, "pkcs11.attributes.read"),
        &json!([{"type": "CKA_LABEL", "text": "findme"}])
    );
}

#[test]
fn discovery_is_off_by_default() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = aes_key(&s_, "findme", &[0xf1], false);
    s_.find_objects(&[Attribute::Label(b"findme".to_vec())])
        .expect("find");
    s_.generate_random_vec(8).expect("random");
    s_.get_attributes(key, &[AttributeType::Label])
        .expect("label");
    drop(s_);
    p.finalize().expect("finalize");
    let t = lifecycle(&fx.trail());
    assert!(category(&t, "discovery").is_empty(), "{}", dump(&t));
    let cats: std::collections::BTreeSet<&str> =
        t.iter().map(|r| s(r, "pkcs11.lifecycle")).collect();
    assert_eq!(
        cats.into_iter().collect::<Vec<_>>(),
        ["auth", "generate", "session"]
    );
}
