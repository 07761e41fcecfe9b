//! The attribute allow-list: which attribute values may appear in the trail.
//!
//! Decided by numeric type, never by name or content. Values of attributes on the list
//! are logged as they are; public key material as a SHA-256 fingerprint; everything else
//! — secret and private key components, CKA_VALUE of anything but a public key or
//! certificate, unknown and vendor-defined attributes — only as its type with `redacted`.

use crate::entry::args::Template;
use cryptoki_sys::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// A sanitized attribute, safe to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attr {
    /// The attribute type's name (`CKA_…`, or `CKA_0x…` when unknown).
    #[serde(rename = "type")]
    pub type_name: Cow<'static, str>,
    /// What may be said of its value.
    #[serde(flatten)]
    pub value: AttrValue,
}

/// What the trail says about an attribute's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrValue {
    /// A boolean.
    Bool(bool),
    /// A number; with `name` when it is a class, key type or mechanism.
    Ulong {
        /// The number.
        value: u64,
        /// Its constant name, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'static str>,
    },
    /// Bytes that identify without revealing (CKA_ID, curve parameters), in hex.
    Hex(String),
    /// Text (labels).
    Text(String),
    /// SHA-256 of public key material, in hex.
    Sha256(String),
    /// A nested template.
    Template(Vec<Attr>),
    /// The value is withheld.
    Redacted(bool),
    /// No value was supplied (a size query) or the module could not supply it.
    Unavailable(bool),
}

/// How an attribute type may be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// As a boolean.
    Bool,
    /// As a number.
    Ulong,
    /// As hex bytes.
    Hex,
    /// As text.
    Text,
    /// As a SHA-256 fingerprint (public key material).
    Fingerprint,
    /// A nested template.
    Nested,
    /// Never.
    Redact,
}

/// The allow-list. `class` is the object's class when known: CKA_VALUE of a public key
/// or certificate is public, of anything else secret.
pub fn policy(type_: CK_ATTRIBUTE_TYPE, class: Option<CK_OBJECT_CLASS>) -> Policy {
    match type_ {
        CKA_TOKEN
        | CKA_PRIVATE
        | CKA_MODIFIABLE
        | CKA_COPYABLE
        | CKA_DESTROYABLE
        | CKA_SENSITIVE
        | CKA_EXTRACTABLE
        | CKA_ALWAYS_SENSITIVE
        | CKA_NEVER_EXTRACTABLE
        | CKA_LOCAL
        | CKA_ENCRYPT
        | CKA_DECRYPT
        | CKA_WRAP
        | CKA_UNWRAP
        | CKA_SIGN
        | CKA_SIGN_RECOVER
        | CKA_VERIFY
        | CKA_VERIFY_RECOVER
        | CKA_DERIVE
        | CKA_TRUSTED
        | CKA_WRAP_WITH_TRUSTED
        | CKA_ALWAYS_AUTHENTICATE => Policy::Bool,
        CKA_CLASS
        | CKA_KEY_TYPE
        | CKA_VALUE_LEN
        | CKA_MODULUS_BITS
        | CKA_KEY_GEN_MECHANISM
        | CKA_CERTIFICATE_TYPE
        | CKA_CERTIFICATE_CATEGORY
        | CKA_NAME_HASH_ALGORITHM => Policy::Ulong,
        CKA_ID
        | CKA_EC_PARAMS
        | CKA_PUBLIC_EXPONENT
        | CKA_CHECK_VALUE
        | CKA_OBJECT_ID
        | CKA_START_DATE
        | CKA_END_DATE
        | CKA_SERIAL_NUMBER
        | CKA_HASH_OF_SUBJECT_PUBLIC_KEY
        | CKA_HASH_OF_ISSUER_PUBLIC_KEY => Policy::Hex,
        CKA_LABEL | CKA_APPLICATION | CKA_UNIQUE_ID => Policy::Text,
        CKA_MODULUS | CKA_EC_POINT | CKA_SUBJECT | CKA_ISSUER | CKA_PUBLIC_KEY_INFO => {
            Policy::Fingerprint
        }
        CKA_VALUE => match class {
            Some(CKO_PUBLIC_KEY) | Some(CKO_CERTIFICATE) => Policy::Fingerprint,
            _ => Policy::Redact,
        },
        CKA_WRAP_TEMPLATE | CKA_UNWRAP_TEMPLATE | CKA_DERIVE_TEMPLATE => Policy::Nested,
        _ => Policy::Redact,
    }
}

/// Whether an attribute's value is key material (for the plaintext-import flag and for
/// export records).
pub fn is_key_material(type_: CK_ATTRIBUTE_TYPE, class: Option<CK_OBJECT_CLASS>) -> bool {
    match type_ {
        CKA_VALUE => matches!(class, Some(CKO_SECRET_KEY) | Some(CKO_PRIVATE_KEY)),
        CKA_PRIVATE_EXPONENT | CKA_PRIME_1 | CKA_PRIME_2 | CKA_EXPONENT_1 | CKA_EXPONENT_2
        | CKA_COEFFICIENT | CKA_PRIME | CKA_SUBPRIME | CKA_BASE => {
            class != Some(CKO_PUBLIC_KEY) && class != Some(CKO_DOMAIN_PARAMETERS)
        }
        _ => false,
    }
}

/// The name of an attribute type (allocated only for types without a name).
pub fn type_name(type_: CK_ATTRIBUTE_TYPE) -> Cow<'static, str> {
    match crate::names::attribute(type_) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(format!("CKA_{type_:#x}")),
    }
}

/// Sanitizes a whole template. `class` comes from the template itself when absent.
pub fn sanitize(template: &Template<'_>, class: Option<CK_OBJECT_CLASS>) -> Vec<Attr> {
    let class = class.or_else(|| template.find(CKA_CLASS).and_then(|a| a.ulong()));
    template
        .iter()
        .map(|a| {
            let value = match (policy(a.type_(), class), a.bytes()) {
                (Policy::Redact, _) => AttrValue::Redacted(true),
                (_, None) => AttrValue::Unavailable(true),
                (Policy::Bool, Some(_)) => {
                    a.bool().map_or(AttrValue::Redacted(true), AttrValue::Bool)
                }
                (Policy::Ulong, Some(_)) => match a.ulong() {
                    Some(v) => AttrValue::Ulong {
                        value: v,
                        name: ulong_name(a.type_(), v),
                    },
                    None => AttrValue::Redacted(true),
                },
                (Policy::Hex, Some(b)) => AttrValue::Hex(hex::encode(b)),
                (Policy::Text, Some(b)) => AttrValue::Text(String::from_utf8_lossy(b).into()),
                (Policy::Fingerprint, Some(b)) => AttrValue::Sha256(fingerprint(b)),
                (Policy::Nested, Some(_)) => match a.nested() {
                    Some(inner) => AttrValue::Template(sanitize(&inner, None)),
                    None => AttrValue::Redacted(true),
                },
            };
            Attr {
                type_name: type_name(a.type_()),
                value,
            }
        })
        .collect()
}

/// SHA-256 of public material, in hex.
pub fn fingerprint(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn ulong_name(type_: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Option<&'static str> {
    match type_ {
        CKA_CLASS => crate::names::object_class(v),
        CKA_KEY_TYPE => crate::names::key_type(v),
        CKA_KEY_GEN_MECHANISM | CKA_NAME_HASH_ALGORITHM => crate::names::mechanism(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(type_: CK_ATTRIBUTE_TYPE, value: &mut [u8]) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_,
            pValue: value.as_mut_ptr() as *mut _,
            ulValueLen: value.len() as CK_ULONG,
        }
    }

    #[test]
    fn secrets_are_redacted_and_identity_is_kept() {
        let mut class = CKO_SECRET_KEY.to_ne_bytes();
        let mut value = *b"0123456789abcdef";
        let mut label = *b"payments";
        let mut id = [0xab, 0xcd];
        let mut vendor = [1u8, 2, 3];
        let raw = [
            attr(CKA_CLASS, &mut class),
            attr(CKA_VALUE, &mut value),
            attr(CKA_LABEL, &mut label),
            attr(CKA_ID, &mut id),
            attr(CKA_VENDOR_DEFINED | 7, &mut vendor),
        ];
        // SAFETY: raw and its values live through this test.
        let t = unsafe { Template::new(raw.as_ptr(), raw.len() as CK_ULONG) };
        let s = sanitize(&t, None);
        assert_eq!(s[1].value, AttrValue::Redacted(true));
        assert_eq!(s[2].value, AttrValue::Text("payments".into()));
        assert_eq!(s[3].value, AttrValue::Hex("abcd".into()));
        assert_eq!(s[4].value, AttrValue::Redacted(true));
        let json = serde_json::to_string(&s).expect("json");
        assert!(!json.contains("0123456789abcdef"), "{json}");
        assert!(!json.contains(&hex::encode(b"0123456789abcdef")), "{json}");
    }

    #[test]
    fn public_value_is_fingerprinted_private_components_redacted() {
        assert_eq!(policy(CKA_VALUE, Some(CKO_PUBLIC_KEY)), Policy::Fingerprint);
        assert_eq!(policy(CKA_VALUE, Some(CKO_PRIVATE_KEY)), Policy::Redact);
        assert_eq!(policy(CKA_VALUE, None), Policy::Redact);
        assert_eq!(policy(CKA_PRIVATE_EXPONENT, None), Policy::Redact);
        assert_eq!(policy(CKA_PRIME_1, None), Policy::Redact);
        assert!(is_key_material(CKA_VALUE, Some(CKO_SECRET_KEY)));
        assert!(!is_key_material(CKA_VALUE, Some(CKO_PUBLIC_KEY)));
    }
}
