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

/// Whether an attribute's value is — or, with the object's class unknown, may be — key
/// material (for the plaintext-import flag and for export records).
pub fn is_key_material(type_: CK_ATTRIBUTE_TYPE, class: Option<CK_OBJECT_CLASS>) -> bool {
    match type_ {
        CKA_VALUE => matches!(
            class,
            None | Some(CKO_SECRET_KEY) | Some(CKO_PRIVATE_KEY) | Some(CKO_OTP_KEY)
        ),
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

/// Sanitizes a whole template the module accepted. `class` is the object's class as the
/// module has it; when `None`, the template's own CKA_CLASS counts only if every entry of
/// it agrees (a module may take the first or the last of two; keytrail cannot tell which).
pub fn sanitize(template: &Template<'_>, class: Option<CK_OBJECT_CLASS>) -> Vec<Attr> {
    sanitize_with(template, class, true)
}

/// Sanitizes a template C_GetAttributeValue filled. Nested templates are not followed:
/// what a module writes into an attribute array is its own affair.
pub fn sanitize_read(template: &Template<'_>, class: Option<CK_OBJECT_CLASS>) -> Vec<Attr> {
    sanitize_with(template, class, false)
}

fn sanitize_with(
    template: &Template<'_>,
    class: Option<CK_OBJECT_CLASS>,
    nested: bool,
) -> Vec<Attr> {
    let class = class.or_else(|| template.agreed_ulong(CKA_CLASS));
    template
        .iter()
        .map(|a| {
            // A fixed-size value is read only at its exact size: a module reads no more.
            let value = match policy(a.type_(), class) {
                Policy::Redact => AttrValue::Redacted(true),
                _ if a.is_size_query() => AttrValue::Unavailable(true),
                Policy::Bool => a.bool().map_or(AttrValue::Redacted(true), AttrValue::Bool),
                Policy::Ulong => match a.ulong() {
                    Some(v) => AttrValue::Ulong {
                        value: v,
                        name: ulong_name(a.type_(), v),
                    },
                    None => AttrValue::Redacted(true),
                },
                Policy::Nested if !nested => AttrValue::Redacted(true),
                Policy::Nested => match a.nested() {
                    Some(inner) => AttrValue::Template(sanitize_with(&inner, None, nested)),
                    None => AttrValue::Redacted(true),
                },
                policy => match a.bytes() {
                    None => AttrValue::Unavailable(true),
                    Some(b) => match policy {
                        Policy::Hex => AttrValue::Hex(hex::encode(b)),
                        Policy::Text => AttrValue::Text(String::from_utf8_lossy(b).into()),
                        _ => AttrValue::Sha256(fingerprint(b)),
                    },
                },
            };
            Attr {
                type_name: type_name(a.type_()),
                value,
            }
        })
        .collect()
}

/// The attributes of a template whose values keytrail does not read (a C_GetAttributeValue
/// that failed): each type, `unavailable` where the module says it returned no value,
/// `redacted` where it may have returned one.
pub fn returned(template: &Template<'_>) -> Vec<Attr> {
    template
        .iter()
        .map(|a| Attr {
            type_name: type_name(a.type_()),
            value: if a.is_size_query() || a.value_len() == CK_UNAVAILABLE_INFORMATION {
                AttrValue::Unavailable(true)
            } else {
                AttrValue::Redacted(true)
            },
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

    #[test]
    fn a_class_stated_twice_leaves_the_value_secret() {
        let (mut public, mut secret) = (CKO_PUBLIC_KEY.to_ne_bytes(), CKO_SECRET_KEY.to_ne_bytes());
        let mut value = [b'a'; 24];
        let raw = [
            attr(CKA_CLASS, &mut public),
            attr(CKA_CLASS, &mut secret),
            attr(CKA_VALUE, &mut value),
        ];
        // SAFETY: raw and its values live through this test.
        let t = unsafe { Template::new(raw.as_ptr(), raw.len() as CK_ULONG) };
        let s = sanitize(&t, None);
        assert_eq!(s[2].value, AttrValue::Redacted(true));
        assert!(
            !serde_json::to_string(&s)
                .expect("json")
                .contains(&fingerprint(&value))
        );
        // Stated once, the same value is a public key's.
        // SAFETY: as above.
        let once = unsafe { Template::new(raw[..1].as_ptr(), 1) };
        assert_eq!(once.agreed_ulong(CKA_CLASS), Some(CKO_PUBLIC_KEY));
        assert_eq!(t.agreed_ulong(CKA_CLASS), None);
    }

    #[test]
    fn a_fixed_size_value_is_read_only_at_its_size() {
        let mut one = [1u8];
        // A CK_BBOOL whose length says 5: the four bytes after it are not the value's.
        let wrong = CK_ATTRIBUTE {
            type_: CKA_TOKEN,
            pValue: one.as_mut_ptr() as *mut _,
            ulValueLen: 5,
        };
        let raw = [attr(CKA_SIGN, &mut one), wrong];
        // SAFETY: only the first byte is ever read, as the test shows.
        let t = unsafe { Template::new(raw.as_ptr(), 2) };
        let s = sanitize(&t, None);
        assert_eq!(s[0].value, AttrValue::Bool(true));
        assert_eq!(s[1].value, AttrValue::Redacted(true));
    }

    #[test]
    fn a_misaligned_template_is_read() {
        let mut label = *b"odd";
        let raw = [attr(CKA_LABEL, &mut label)];
        let mut bytes = vec![0u8; std::mem::size_of_val(&raw) + 1];
        // SAFETY: copies the array's bytes into a buffer one byte longer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                raw.as_ptr() as *const u8,
                bytes.as_mut_ptr().add(1),
                std::mem::size_of_val(&raw),
            )
        };
        // SAFETY: one attribute at an odd address, its value alive.
        let t = unsafe { Template::new(bytes.as_ptr().add(1) as *const CK_ATTRIBUTE, 1) };
        assert_eq!(sanitize(&t, None)[0].value, AttrValue::Text("odd".into()));
    }
}
