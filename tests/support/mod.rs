//! Helpers for the audit-trail tests: configuring keytrail, picking records out of the
//! trail, and the key templates the scenarios share.

#![allow(dead_code)]

pub mod scan;
pub mod workload;

use crate::common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde_json::Value;

/// The DER encoding of the named curve P-256 (CKA_EC_PARAMS).
pub const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Rewrites the fixture's keytrail.toml: `top` holds top-level keys (`service = "…"`),
/// `audit` the body of the `[audit]` table.
pub fn configure(fx: &Fixture, top: &str, audit: &str) {
    let text = format!(
        "module = \"{}\"\ndiagnostics = \"{}\"\n{top}\n[audit]\n{audit}\n[trail]\npath = \"{}\"\n",
        softhsm_module().display(),
        fx.path().join("diagnostics.log").display(),
        fx.trail_path().display()
    );
    std::fs::write(&fx.keytrail_conf, text).expect("write keytrail.toml");
}

/// Adds `format = "FORMAT"` to the `[trail]` table that [`configure`] wrote last.
pub fn set_format(fx: &Fixture, format: &str) {
    let conf = std::fs::read_to_string(&fx.keytrail_conf).expect("keytrail.toml");
    assert!(conf.trim_end().lines().any(|l| l == "[trail]"), "{conf}");
    std::fs::write(&fx.keytrail_conf, format!("{conf}format = \"{format}\"\n"))
        .expect("write keytrail.toml");
}

/// A field by dotted path (`pkcs11.key.handle`); keys with dots in them are not used.
pub fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// A string field, or "" when absent.
pub fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

/// A number field, or u64::MAX when absent.
pub fn n(v: &Value, path: &str) -> u64 {
    at(v, path).as_u64().unwrap_or(u64::MAX)
}

/// The records of one lifecycle category.
pub fn category(trail: &[Value], c: &str) -> Vec<Value> {
    trail
        .iter()
        .filter(|r| s(r, "pkcs11.lifecycle") == c)
        .cloned()
        .collect()
}

/// The records with one event.action.
pub fn action(trail: &[Value], a: &str) -> Vec<Value> {
    trail
        .iter()
        .filter(|r| s(r, "event.action") == a)
        .cloned()
        .collect()
}

/// The one record with an event.action (panics, showing the trail, unless exactly one).
pub fn only(trail: &[Value], a: &str) -> Value {
    let found = action(trail, a);
    assert_eq!(
        found.len(),
        1,
        "expected one `{a}` record in {}",
        dump(trail)
    );
    found.into_iter().next().expect("one")
}

/// The records of the lifecycle proper (without keytrail's own `audit` records).
pub fn lifecycle(trail: &[Value]) -> Vec<Value> {
    trail
        .iter()
        .filter(|r| s(r, "pkcs11.lifecycle") != "audit")
        .cloned()
        .collect()
}

/// A readable summary of records, for assertion messages.
pub fn dump(trail: &[Value]) -> String {
    trail
        .iter()
        .map(|r| {
            format!(
                "\n  {} {} {} {} {}",
                s(r, "pkcs11.lifecycle"),
                s(r, "event.action"),
                s(r, "pkcs11.function"),
                s(r, "event.outcome"),
                s(r, "pkcs11.rv_name")
            )
        })
        .collect()
}

/// Asserts the fields every PKCS#11 call record has: category, action, outcome, CK_RV.
pub fn assert_call(r: &Value, lifecycle: &str, action: &str, function: &str, rv_name: &str) {
    assert_eq!(s(r, "pkcs11.lifecycle"), lifecycle, "{r}");
    assert_eq!(s(r, "event.action"), action, "{r}");
    assert_eq!(s(r, "pkcs11.function"), function, "{r}");
    assert_eq!(s(r, "pkcs11.rv_name"), rv_name, "{r}");
    let rv = n(r, "pkcs11.rv");
    let outcome = if rv == 0 { "success" } else { "failure" };
    assert_eq!(s(r, "event.outcome"), outcome, "{r}");
}

/// A session-key AES-256 template; `extractable` keys may be wrapped and, when not
/// sensitive, read.
pub fn aes_template(label: &str, id: &[u8], extractable: bool) -> Vec<Attribute> {
    vec![
        Attribute::Token(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Sensitive(!extractable),
        Attribute::Extractable(extractable),
    ]
}

/// Generates an AES-256 session key.
pub fn aes_key(s: &Session, label: &str, id: &[u8], extractable: bool) -> ObjectHandle {
    s.generate_key(&Mechanism::AesKeyGen, &aes_template(label, id, extractable))
        .expect("C_GenerateKey AES")
}

/// A template importing `value` as an AES key by value.
pub fn aes_import_template(label: &str, id: &[u8], value: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Value(value.to_vec()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}

/// Generates a P-256 session key pair that signs, verifies and derives.
pub fn ec_pair(s: &Session, label: &str, id: &[u8]) -> (ObjectHandle, ObjectHandle) {
    let public = [
        Attribute::Token(false),
        Attribute::EcParams(P256.to_vec()),
        Attribute::Verify(true),
        Attribute::Label(format!("{label}-pub").into_bytes()),
        Attribute::Id(id.to_vec()),
    ];
    let private = [
        Attribute::Token(false),
        Attribute::Sign(true),
        Attribute::Derive(true),
        Attribute::Sensitive(true),
        Attribute::Label(format!("{label}-priv").into_bytes()),
        Attribute::Id(id.to_vec()),
    ];
    s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .expect("C_GenerateKeyPair EC")
}

/// A generic HMAC secret imported by value.
pub fn hmac_template(label: &str, value: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
        Attribute::Sign(true),
        Attribute::Verify(true),
    ]
}
