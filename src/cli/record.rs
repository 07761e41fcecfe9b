//! What the reading subcommands (`report`, `show`) take from a trail record, and the
//! record filters they share (`--since`, `--until`, `--key`, `--pid`, `--category`).
//!
//! Only the fields some subcommand uses are deserialized, borrowed from the line where the
//! JSON has no escapes; everything else in a record is skipped.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The lifecycle categories (`pkcs11.lifecycle`), in the order of docs/events.md.
pub const CATEGORIES: [&str; 11] = [
    "session",
    "auth",
    "token_admin",
    "generate",
    "import",
    "use",
    "export",
    "modify",
    "destroy",
    "discovery",
    "audit",
];

/// One trail record, as far as the reading subcommands need it.
#[derive(Deserialize)]
pub struct Rec<'a> {
    /// `@timestamp` (OCSF: `time_dt`): RFC 3339 UTC with microseconds.
    #[serde(rename = "@timestamp", alias = "time_dt", borrow)]
    pub timestamp: Option<Cow<'a, str>>,
    /// `event.*`.
    #[serde(borrow)]
    pub event: Option<Ev<'a>>,
    /// `message`, on keytrail's own records.
    #[serde(borrow)]
    pub message: Option<Cow<'a, str>>,
    /// `pkcs11.*`.
    #[serde(borrow)]
    pub pkcs11: Option<P11<'a>>,
    /// `labels.*`: context the application attached to the thread.
    #[serde(borrow, default)]
    pub labels: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    /// `user.*`.
    #[serde(borrow)]
    pub user: Option<User<'a>>,
    /// `process.*`.
    #[serde(borrow)]
    pub process: Option<Proc<'a>>,
    /// `integrity.*`.
    #[serde(borrow)]
    pub integrity: Option<Integrity<'a>>,
    /// `keytrail`: the structured detail of keytrail's own records.
    pub keytrail: Option<serde_json::Value>,
    /// OCSF (`[trail] format = "ocsf"`): `metadata.event_code`, the action.
    #[serde(borrow)]
    metadata: Option<OcsfMeta<'a>>,
    /// OCSF: `Success`, `Failure` or `Unknown`.
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    /// OCSF: `CKR_…`.
    #[serde(borrow)]
    status_code: Option<Cow<'a, str>>,
    /// OCSF: `api.operation`, the function.
    #[serde(borrow)]
    api: Option<OcsfApi<'a>>,
    /// OCSF: the process and its user.
    #[serde(borrow)]
    actor: Option<OcsfActor<'a>>,
    /// OCSF: keys and the token.
    #[serde(borrow, default)]
    resources: Vec<OcsfResource<'a>>,
    /// OCSF: `pkcs11` and `labels`.
    #[serde(borrow)]
    unmapped: Option<OcsfUnmapped<'a>>,
    /// OCSF: the class (3002 Authentication names the token as its `service`).
    class_uid: Option<u64>,
    /// OCSF Authentication: the token (`name` its label, `uid` its serial).
    #[serde(borrow)]
    service: Option<OcsfService<'a>>,
}

#[derive(Deserialize)]
struct OcsfService<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OcsfMeta<'a> {
    #[serde(borrow)]
    event_code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OcsfApi<'a> {
    #[serde(borrow)]
    operation: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OcsfActor<'a> {
    #[serde(borrow)]
    user: Option<User<'a>>,
    #[serde(borrow)]
    process: Option<Proc<'a>>,
}

#[derive(Deserialize)]
struct OcsfResource<'a> {
    #[serde(rename = "type", borrow)]
    type_: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<KeyRec<'a>>,
}

#[derive(Deserialize)]
struct OcsfUnmapped<'a> {
    #[serde(borrow)]
    pkcs11: Option<P11<'a>>,
    #[serde(borrow)]
    integrity: Option<Integrity<'a>>,
    #[serde(borrow, default)]
    labels: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
}

impl<'a> Rec<'a> {
    /// Reads a record, ECS or OCSF; an OCSF record's fields are moved to their ECS places.
    pub fn parse(bytes: &'a [u8]) -> serde_json::Result<Rec<'a>> {
        let mut r: Rec<'a> = serde_json::from_slice(bytes)?;
        if let Some(m) = r.metadata.take() {
            let outcome = r.status.take().map(|s| match s.as_ref() {
                "Success" => Cow::Borrowed("success"),
                "Failure" => Cow::Borrowed("failure"),
                _ => Cow::Borrowed("unknown"),
            });
            r.event = r.event.or(Some(Ev {
                action: m.event_code,
                outcome,
            }));
        }
        if let Some(a) = r.actor.take() {
            r.user = a.user.or(r.user);
            r.process = a.process.or(r.process);
        }
        if let Some(u) = r.unmapped.take() {
            if r.labels.is_empty() {
                r.labels = u.labels;
            }
            if r.integrity.is_none() {
                r.integrity = u.integrity;
            }
            if let Some(mut p) = u.pkcs11.filter(|_| r.pkcs11.is_none()) {
                if let Some(f) = r.api.take().and_then(|a| a.operation) {
                    p.function = Some(f);
                }
                if let Some(t) = r.service.take().filter(|_| r.class_uid == Some(3002)) {
                    p.token = Some(Tok {
                        label: t.name,
                        serial: t.uid,
                    });
                }
                p.rv_name = r.status_code.take();
                for res in std::mem::take(&mut r.resources) {
                    match res.type_.as_deref() {
                        Some("pkcs11_token") => {
                            p.token = Some(Tok {
                                label: res.name,
                                serial: res.uid,
                            })
                        }
                        Some("pkcs11_key") => {
                            let Some(k) = res.data else { continue };
                            match k.role.as_deref() {
                                Some("key") | None => p.key = Some(k),
                                Some(role) => {
                                    p.keys.insert(Cow::Owned(role.to_string()), k);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                r.pkcs11 = Some(p);
            }
        }
        Ok(r)
    }
}

/// `integrity.*`, as far as the readers need it.
#[derive(Deserialize)]
pub struct Integrity<'a> {
    /// `integrity.stream`: one per process (a child after fork starts its own).
    #[serde(borrow)]
    pub stream: Option<Cow<'a, str>>,
    /// `integrity.seq`.
    pub seq: Option<u64>,
}

/// `event.*`.
#[derive(Deserialize)]
pub struct Ev<'a> {
    /// `event.action`.
    #[serde(borrow)]
    pub action: Option<Cow<'a, str>>,
    /// `event.outcome`: `success`, `failure` or `unknown`.
    #[serde(borrow)]
    pub outcome: Option<Cow<'a, str>>,
}

/// `user.*`.
#[derive(Deserialize)]
pub struct User<'a> {
    /// `user.name`.
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    /// `user.id` (the uid, as a string).
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
}

/// `process.*`.
#[derive(Deserialize)]
pub struct Proc<'a> {
    /// `process.pid`.
    pub pid: Option<u64>,
    /// `process.name`.
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    /// `process.executable`.
    #[serde(borrow)]
    pub executable: Option<Cow<'a, str>>,
}

/// `pkcs11.*`.
#[derive(Deserialize)]
pub struct P11<'a> {
    /// `pkcs11.lifecycle`: the category.
    #[serde(borrow)]
    pub lifecycle: Option<Cow<'a, str>>,
    /// `pkcs11.function`.
    #[serde(borrow)]
    pub function: Option<Cow<'a, str>>,
    /// `pkcs11.rv_name`.
    #[serde(borrow)]
    pub rv_name: Option<Cow<'a, str>>,
    /// `pkcs11.token.*`.
    #[serde(borrow)]
    pub token: Option<Tok<'a>>,
    /// `pkcs11.session.*`.
    pub session: Option<Sess>,
    /// `pkcs11.sessions.*`: what a session summary stands for.
    pub sessions: Option<SessCounts>,
    /// `pkcs11.auth.*`.
    #[serde(borrow)]
    pub auth: Option<Auth<'a>>,
    /// `pkcs11.mechanism.*`.
    #[serde(borrow)]
    pub mechanism: Option<Mech<'a>>,
    /// `pkcs11.key`: the key the record is about.
    #[serde(borrow)]
    pub key: Option<KeyRec<'a>>,
    /// `pkcs11.keys.<role>`: other keys taking part.
    #[serde(borrow, default)]
    pub keys: BTreeMap<Cow<'a, str>, KeyRec<'a>>,
    /// `pkcs11.operation.*`.
    #[serde(borrow)]
    pub operation: Option<Op<'a>>,
    /// `pkcs11.data.*`.
    pub data: Option<Data>,
    /// `pkcs11.flags`.
    #[serde(borrow, default)]
    pub flags: Vec<Cow<'a, str>>,
    /// `pkcs11.attributes.*`: the sanitized lists.
    #[serde(borrow)]
    pub attributes: Option<Attrs<'a>>,
}

/// `pkcs11.session.*`.
#[derive(Deserialize)]
pub struct Sess {
    /// The session handle.
    pub handle: Option<u64>,
}

/// `pkcs11.sessions.*`: the counts of a session summary (`sessions = "summary"`).
#[derive(Deserialize)]
pub struct SessCounts {
    /// Sessions opened.
    pub opened: Option<u64>,
    /// Of them, read/write.
    pub opened_rw: Option<u64>,
    /// Sessions closed (by C_CloseSession and C_CloseAllSessions).
    pub closed: Option<u64>,
    /// Sessions open when the interval ended.
    pub open: Option<u64>,
    /// The most open at once.
    pub max_open: Option<u64>,
}

/// `pkcs11.attributes.*`, as far as the readers need them.
#[derive(Deserialize)]
pub struct Attrs<'a> {
    /// `set`: what C_SetAttributeValue changed.
    #[serde(borrow, default)]
    pub set: Vec<Attr<'a>>,
}

/// One sanitized attribute.
#[derive(Deserialize)]
pub struct Attr<'a> {
    /// `CKA_…`.
    #[serde(borrow, rename = "type")]
    pub type_: Option<Cow<'a, str>>,
    /// A byte value in hex (CKA_ID, …).
    #[serde(borrow)]
    pub hex: Option<Cow<'a, str>>,
    /// A text value (CKA_LABEL, …).
    #[serde(borrow)]
    pub text: Option<Cow<'a, str>>,
}

/// `pkcs11.token.*`.
#[derive(Deserialize)]
pub struct Tok<'a> {
    /// The token's label.
    #[serde(borrow)]
    pub label: Option<Cow<'a, str>>,
    /// The token's serial number.
    #[serde(borrow)]
    pub serial: Option<Cow<'a, str>>,
}

/// `pkcs11.auth.*`.
#[derive(Deserialize)]
pub struct Auth<'a> {
    /// `CKU_SO`, `CKU_USER` or `CKU_CONTEXT_SPECIFIC`.
    #[serde(borrow)]
    pub user_type: Option<Cow<'a, str>>,
    /// The user name of a C_LoginUser.
    #[serde(borrow)]
    pub username: Option<Cow<'a, str>>,
}

/// `pkcs11.mechanism.*`.
#[derive(Deserialize)]
pub struct Mech<'a> {
    /// `CKM_…`.
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
}

/// `pkcs11.operation.*`.
#[derive(Deserialize)]
pub struct Op<'a> {
    /// `encrypt`, `sign`, …
    #[serde(borrow)]
    pub kind: Option<Cow<'a, str>>,
    /// Calls that carried data.
    pub parts: Option<u64>,
    /// The successful operations a usage summary stands for (absent on a record of one).
    pub count: Option<u64>,
    /// `completed`, `failed`, `abandoned` or `cancelled`.
    #[serde(borrow)]
    pub end: Option<Cow<'a, str>>,
}

/// `pkcs11.data.*`: lengths only.
#[derive(Deserialize)]
pub struct Data {
    /// Input bytes.
    pub in_len: Option<u64>,
    /// Output bytes.
    pub out_len: Option<u64>,
}

/// `pkcs11.key` and `pkcs11.keys.<role>`: a key's identity.
#[derive(Deserialize)]
pub struct KeyRec<'a> {
    /// The object handle.
    pub handle: Option<u64>,
    /// `CKO_…`.
    #[serde(borrow)]
    pub class: Option<Cow<'a, str>>,
    /// `CKK_…`.
    #[serde(borrow)]
    pub key_type: Option<Cow<'a, str>>,
    /// Size in bits, where known.
    pub bits: Option<u64>,
    /// CKA_ID in hex.
    #[serde(borrow)]
    pub id_hex: Option<Cow<'a, str>>,
    /// CKA_LABEL.
    #[serde(borrow)]
    pub label: Option<Cow<'a, str>>,
    /// CKA_UNIQUE_ID.
    #[serde(borrow)]
    pub unique_id: Option<Cow<'a, str>>,
    /// CKA_TOKEN.
    pub token: Option<bool>,
    /// SHA-256 of a public key's material, in hex.
    #[serde(borrow)]
    pub public_sha256: Option<Cow<'a, str>>,
    /// The key's part in the call (OCSF records, where keys are a list).
    #[serde(borrow)]
    pub role: Option<Cow<'a, str>>,
}

impl KeyRec<'_> {
    /// Whether `want` is this key's label, CKA_ID (hex) or unique id.
    pub fn matches(&self, want: &str) -> bool {
        [&self.label, &self.id_hex, &self.unique_id]
            .iter()
            .any(|v| v.as_deref() == Some(want))
    }
}

impl<'a> Rec<'a> {
    /// `event.action`, or "".
    pub fn action(&self) -> &str {
        self.event
            .as_ref()
            .and_then(|e| e.action.as_deref())
            .unwrap_or("")
    }

    /// `event.outcome`, or `unknown`.
    pub fn outcome(&self) -> &str {
        self.event
            .as_ref()
            .and_then(|e| e.outcome.as_deref())
            .unwrap_or("unknown")
    }

    /// `pkcs11.lifecycle`, or "".
    pub fn lifecycle(&self) -> &str {
        self.pkcs11
            .as_ref()
            .and_then(|p| p.lifecycle.as_deref())
            .unwrap_or("")
    }

    /// `process.pid`.
    pub fn pid(&self) -> Option<u64> {
        self.process.as_ref().and_then(|p| p.pid)
    }

    /// `user.name`, else `user.id`.
    pub fn user(&self) -> Option<&str> {
        self.user
            .as_ref()
            .and_then(|u| u.name.as_deref().or(u.id.as_deref()))
    }
}

/// The record filters, as command-line options (flattened into a subcommand's options).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only records at or after this time (RFC 3339, e.g. 2024-05-01T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only records before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only records about a key with this label, CKA_ID (hex) or unique id.
    #[arg(long, value_name = "LABEL|ID_HEX")]
    pub key: Option<String>,
    /// Only records of this process id.
    #[arg(long)]
    pub pid: Option<u64>,
    /// Only records of these lifecycle categories (session, auth, token_admin, generate,
    /// import, use, export, modify, destroy, discovery, audit); repeatable.
    #[arg(long, value_name = "CATEGORY")]
    pub category: Vec<String>,
}

/// Validated filters: times normalised to the trail's own `@timestamp` form, so that
/// they compare as strings.
#[derive(Debug, Default)]
pub struct Filters {
    since: Option<String>,
    until: Option<String>,
    key: Option<String>,
    pid: Option<u64>,
    categories: Vec<String>,
}

fn rfc3339_micros(text: &str) -> Result<String> {
    let t = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("`{text}` is not an RFC 3339 time (e.g. 2024-05-01T12:00:00Z)"))?;
    Ok(humantime::format_rfc3339_micros(t).to_string())
}

impl Filters {
    /// Checks and normalises the options.
    pub fn new(args: &FilterArgs) -> Result<Filters> {
        for c in &args.category {
            if !CATEGORIES.contains(&c.as_str()) {
                bail!(
                    "--category {c}: unknown category; one of {}",
                    CATEGORIES.join(", ")
                );
            }
        }
        Ok(Filters {
            since: args.since.as_deref().map(rfc3339_micros).transpose()?,
            until: args.until.as_deref().map(rfc3339_micros).transpose()?,
            key: args.key.clone(),
            pid: args.pid,
            categories: args.category.clone(),
        })
    }

    /// Whether `r` passes every filter.
    pub fn selects(&self, r: &Rec<'_>) -> bool {
        let t = r.timestamp.as_deref().unwrap_or("");
        if self.since.as_deref().is_some_and(|s| t < s)
            || self.until.as_deref().is_some_and(|u| t >= u)
        {
            return false;
        }
        if self.pid.is_some() && r.pid() != self.pid {
            return false;
        }
        if !self.categories.is_empty() {
            let l = r.lifecycle();
            if !self.categories.iter().any(|c| c == l) {
                return false;
            }
        }
        if let Some(want) = &self.key {
            let Some(p) = &r.pkcs11 else {
                return false;
            };
            let hit = p.key.as_ref().is_some_and(|k| k.matches(want))
                || p.keys.values().any(|k| k.matches(want));
            if !hit {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: &str) -> Rec<'_> {
        Rec::parse(line.as_bytes()).expect("record")
    }

    #[test]
    fn filters_select_by_time_pid_category_and_key() {
        let line = r#"{"@timestamp":"2026-01-02T03:04:05.000006Z","event":{"action":"key_generate","outcome":"success"},"pkcs11":{"lifecycle":"generate","key":{"label":"k1","id_hex":"01"}},"process":{"pid":7}}"#;
        let r = rec(line);
        let f = |a: FilterArgs| Filters::new(&a).expect("filters").selects(&r);
        assert!(f(FilterArgs::default()));
        assert!(f(FilterArgs {
            since: Some("2026-01-02T03:04:05Z".into()),
            until: Some("2026-01-02T03:04:06Z".into()),
            ..FilterArgs::default()
        }));
        assert!(!f(FilterArgs {
            until: Some("2026-01-02T03:04:05Z".into()),
            ..FilterArgs::default()
        }));
        assert!(f(FilterArgs {
            pid: Some(7),
            ..FilterArgs::default()
        }));
        assert!(!f(FilterArgs {
            pid: Some(8),
            ..FilterArgs::default()
        }));
        assert!(f(FilterArgs {
            category: vec!["use".into(), "generate".into()],
            ..FilterArgs::default()
        }));
        assert!(!f(FilterArgs {
            category: vec!["auth".into()],
            ..FilterArgs::default()
        }));
        assert!(f(FilterArgs {
            key: Some("01".into()),
            ..FilterArgs::default()
        }));
        assert!(!f(FilterArgs {
            key: Some("k2".into()),
            ..FilterArgs::default()
        }));
        assert!(
            Filters::new(&FilterArgs {
                category: vec!["nope".into()],
                ..FilterArgs::default()
            })
            .is_err()
        );
    }
}
