//! The secret scanner: looks for known secrets in bytes keytrail wrote, as raw bytes,
//! lowercase and uppercase hex, and base64 (standard and URL-safe, padded or not, at every
//! byte alignment).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Writes a secret in some encoding.
pub type Encoder = fn(&[u8]) -> Vec<u8>;

/// One secret to look for.
pub struct Secret {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A place a secret was found.
#[derive(Debug, PartialEq, Eq)]
pub struct Hit {
    pub secret: String,
    pub encoding: &'static str,
    pub source: String,
}

/// The encodings of a secret searched for. Base64 of a secret embedded in a longer
/// buffer depends on its offset modulo 3, so each alignment contributes the characters
/// that depend on the secret alone.
pub fn encodings(secret: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![
        ("raw", secret.to_vec()),
        ("hex", hex::encode(secret).into_bytes()),
        ("HEX", hex::encode_upper(secret).into_bytes()),
        ("base64", STANDARD.encode(secret).into_bytes()),
        ("base64_nopad", STANDARD_NO_PAD.encode(secret).into_bytes()),
        ("base64url", URL_SAFE_NO_PAD.encode(secret).into_bytes()),
    ];
    for (name, engine) in [
        ("base64_aligned", &STANDARD_NO_PAD),
        ("base64url_aligned", &URL_SAFE_NO_PAD),
    ] {
        for k in 0..3usize {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(secret);
            let enc = engine.encode(&padded);
            let start = (8 * k).div_ceil(6);
            let end = (8 * (k + secret.len())) / 6;
            if end > start + 8 {
                out.push((name, enc.as_bytes()[start..end].to_vec()));
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(haystack, needle).is_some()
}

/// Every (secret, encoding) found in every source.
pub fn scan(secrets: &[Secret], sources: &[(String, Vec<u8>)]) -> Vec<Hit> {
    let mut hits = Vec::new();
    for secret in secrets {
        assert!(
            secret.bytes.len() >= 8,
            "{} too short to scan for",
            secret.name
        );
        for (encoding, needle) in encodings(&secret.bytes) {
            for (source, data) in sources {
                if contains(data, &needle) {
                    hits.push(Hit {
                        secret: secret.name.clone(),
                        encoding,
                        source: source.clone(),
                    });
                }
            }
        }
    }
    hits
}
