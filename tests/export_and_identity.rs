//! Exports are recorded whatever keytrail knows of the key, and a key is named at its
//! creation as every later record names it.

mod common;
mod support;

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use serde_json::json;
use sha2::{Digest, Sha256};
use support::*;

const SECRET: &[u8] = b"an extractable secret key value!";

/// Makes an extractable AES token key directly on SoftHSM, where keytrail does not see it.
fn key_made_elsewhere() {
    let direct = open(&softhsm_module());
    let s_ = user_session(&direct);
    s_.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Label(b"elsewhere".to_vec()),
        Attribute::Value(SECRET.to_vec()),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ])
    .expect("create");
    drop(s_);
    direct.finalize().expect("finalize direct");
}

fn value(attrs: Vec<Attribute>) -> Vec<u8> {
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .expect("a value")
}

#[test]
fn reading_a_secret_value_is_an_export_without_key_lookups() {
    let fx = Fixture::new();
    configure(&fx, "", "key_lookups = false");
    key_made_elsewhere();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    let key = *s_
        .find_objects(&[Attribute::Label(b"elsewhere".to_vec())])
        .expect("find")
        .first()
        .expect("the key");
    // keytrail knows nothing of this key: the value may be secret.
    let v = value(
        s_.get_attributes(key, &[AttributeType::Value])
            .expect("read"),
    );
    assert_eq!(v, SECRET);
    // A key keytrail saw made is known to be secret.
    let own = aes_key(&s_, "made-here", &[0x0e], true);
    let own_value = value(
        s_.get_attributes(own, &[AttributeType::Value])
            .expect("read"),
    );
    // Not an export.
    s_.get_attributes(key, &[AttributeType::Label])
        .expect("label");
    drop(s_);
    p.finalize().expect("finalize");

    let raw = std::fs::read_to_string(fx.trail_path()).expect("trail");
    for v in [SECRET, &own_value[..]] {
        assert!(!raw.contains(&hex::encode(v)), "key value leaked");
    }
    let t = lifecycle(&fx.trail());
    let exports = category(&t, "export");
    assert_eq!(exports.len(), 2, "{}", dump(&t));
    for r in &exports {
        assert_call(
            r,
            "export",
            "attribute_read_secret",
            "C_GetAttributeValue",
            "CKR_OK",
        );
        assert_eq!(
            at(r, "pkcs11.attributes.read"),
            &json!([{"type": "CKA_VALUE", "redacted": true}])
        );
    }
    assert_eq!(
        at(&exports[0], "pkcs11.key"),
        &json!({"handle": key.handle()}),
        "nothing known of the key"
    );
    assert_eq!(
        at(&exports[0], "pkcs11.flags"),
        &json!(["possible_secret_read"])
    );
    assert_eq!(n(&exports[1], "pkcs11.key.handle"), own.handle());
    assert_eq!(s(&exports[1], "pkcs11.key.class"), "CKO_SECRET_KEY");
    assert_eq!(
        at(&exports[1], "pkcs11.flags"),
        &json!(["secret_value_read"])
    );
}

#[test]
fn a_generated_pair_is_named_as_its_later_records_name_it() {
    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let s_ = user_session(&p);
    // No CKA_TOKEN, no CKA_ID, no CKA_LABEL: the public key's fingerprint is the only
    // identity that joins the creation to later uses.
    let (public, private) = s_
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(P256.to_vec()), Attribute::Verify(true)],
            &[Attribute::Sign(true)],
        )
        .expect("C_GenerateKeyPair");
    let point = match s_
        .get_attributes(public, &[AttributeType::EcPoint])
        .expect("EC point")
        .pop()
    {
        Some(Attribute::EcPoint(p)) => p,
        other => panic!("{other:?}"),
    };
    let digest = [0x5au8; 32];
    let signature = s_.sign(&Mechanism::Ecdsa, private, &digest).expect("sign");
    // A change drops the cached identity: the next record looks the key up.
    s_.update_attributes(public, &[Attribute::Verify(true)])
        .expect("C_SetAttributeValue");
    s_.verify(&Mechanism::Ecdsa, public, &digest, &signature)
        .expect("verify");
    drop(s_);
    p.finalize().expect("finalize");

    let t = lifecycle(&fx.trail());
    let g = only(&t, "key_pair_generate");
    let made_public = at(&g, "pkcs11.keys.public");
    assert_eq!(
        s(made_public, "public_sha256"),
        hex::encode(Sha256::digest(&point)),
        "{g}"
    );
    assert_eq!(at(made_public, "token"), &json!(false), "{g}");
    assert_eq!(at(&g, "pkcs11.keys.private.token"), &json!(false), "{g}");
    let verify = only(&t, "verify");
    assert_eq!(
        at(&verify, "pkcs11.key"),
        made_public,
        "the verify record looked the key up"
    );
    let sign = only(&t, "sign");
    assert_eq!(at(&sign, "pkcs11.key"), at(&g, "pkcs11.keys.private"));
}
