//! What the trail of a fuzz run may not hold, record by record.

use super::arena::PIN_CANARY;
use super::call::SECRET_VALUES;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Calls that take a template: after a failure their records carry its size only.
const TEMPLATE_ACTIONS: [&str; 7] = [
    "object_create",
    "object_copy",
    "key_generate",
    "key_pair_generate",
    "key_derive",
    "key_unwrap",
    "attribute_set",
];

/// The records of one process's trail file, each with its line. Every line must be a
/// whole record, except the last when `died` (a process that crashed — with the module,
/// which crashed the same way without keytrail — may have been cut off mid-line).
pub fn records(path: &Path, died: bool) -> Result<Vec<(String, Value)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let count = text.lines().count();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str(line) {
            Ok(r) => out.push((line.to_string(), r)),
            Err(_) if died && i + 1 == count => {}
            Err(e) => {
                return Err(format!(
                    "{}: line {} is no record ({e}): {line}",
                    path.display(),
                    i + 1
                ));
            }
        }
    }
    Ok(out)
}

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

fn text<'a>(v: &'a Value, path: &str) -> &'a str {
    field(v, path).as_str().unwrap_or("")
}

/// Checks one record: no secret value (raw or hex) anywhere; no SHA-256 of one but for a
/// certificate's or public key's value the module accepted; and in the record of a failed
/// call, no PIN from the application's neighbouring memory and no attribute value — a
/// rejected template appears as its count, a failed read as types only.
/// Returns whether the record is one of a rejected template.
pub fn check(line: &str, r: &Value) -> Result<bool, String> {
    for v in SECRET_VALUES {
        for needle in [hex::encode(v), hex::encode_upper(v)] {
            if line.contains(&needle) {
                return Err(format!("a secret value in hex: {line}"));
            }
        }
        // The secret values are text, as a JSON string would hold them.
        if line.contains(String::from_utf8_lossy(v).as_ref()) {
            return Err(format!("a secret value: {line}"));
        }
    }
    let success = text(r, "event.outcome") == "success";
    let public = matches!(
        text(r, "pkcs11.key.class"),
        "CKO_CERTIFICATE" | "CKO_PUBLIC_KEY"
    );
    if !(success && public) {
        for v in SECRET_VALUES {
            if line.contains(&hex::encode(Sha256::digest(v))) {
                return Err(format!("the fingerprint of a secret: {line}"));
            }
        }
    }
    if text(r, "event.outcome") != "failure" {
        return Ok(false);
    }
    let pin = &PIN_CANARY[1..PIN_CANARY.len() - 1];
    if line.contains(String::from_utf8_lossy(pin).as_ref()) || line.contains(&hex::encode(pin)) {
        return Err(format!("a failed call logged neighbouring memory: {line}"));
    }
    let action = text(r, "event.action");
    if action.starts_with("attribute_read") {
        for a in field(r, "pkcs11.attributes.read")
            .as_array()
            .into_iter()
            .flatten()
        {
            let mut fields: Vec<&str> = a
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            fields.sort_unstable();
            if fields != ["redacted", "type"] && fields != ["type", "unavailable"] {
                return Err(format!("a value from a failed read: {line}"));
            }
        }
        Ok(false)
    } else if TEMPLATE_ACTIONS.contains(&action) {
        if !field(r, "pkcs11.attributes").is_null() {
            return Err(format!("a rejected template was logged: {line}"));
        }
        if !field(r, "pkcs11.attribute_count").is_object() {
            return Err(format!("no attribute count: {line}"));
        }
        Ok(true)
    } else {
        Ok(false)
    }
}
