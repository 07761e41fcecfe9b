//! The trail's line format: one JSON object per record, field names from the Elastic
//! Common Schema where ECS has one, PKCS#11 specifics under `pkcs11.*`. docs/events.md
//! describes every field.

use crate::audit::attrs::Attr;
use crate::audit::event::{Event, KeyRef, OperationInfo};
use crate::audit::keys::KeyIdentity;
use crate::audit::mechanism::Mechanism;
use crate::names;
use serde::Serialize;
use std::collections::BTreeMap;

/// Facts about the process, the same on every record of a stream.
#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    /// `user.*`
    pub user: User,
    /// `process.*` (without the thread, which is per record)
    pub process: Process,
    /// `host.*`
    pub host: Host,
    /// `service.*`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// These fields formatted once per stream: `,"user":…,"process":{…,"thread":{"id":`.
    #[serde(skip)]
    prefix: std::sync::OnceLock<Vec<u8>>,
}

/// `user.*`
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Login name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Numeric uid, as a string (ECS).
    pub id: String,
}

/// `process.*`
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Short name (`/proc/self/comm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Executable path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
}

/// `host.*`
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// Host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `service.*`
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// From the configuration's `service`.
    pub name: String,
}

impl Origin {
    /// The current process's identity.
    pub fn current(service: Option<String>) -> Origin {
        let uid = crate::os::uid();
        Origin {
            user: User {
                name: crate::os::user_name(uid),
                id: uid.to_string(),
            },
            process: Process {
                pid: crate::os::pid(),
                name: std::fs::read_to_string("/proc/self/comm")
                    .ok()
                    .map(|s| s.trim_end().to_string()),
                executable: std::env::current_exe()
                    .ok()
                    .map(|p| p.display().to_string()),
            },
            host: Host {
                name: crate::os::host_name(),
            },
            service: service.map(|name| Service { name }),
            prefix: std::sync::OnceLock::new(),
        }
    }

    /// The stream's fixed fields, formatted on first use, ending where the calling
    /// thread's id goes.
    fn prefix(&self) -> &[u8] {
        self.prefix.get_or_init(|| {
            #[derive(Serialize)]
            struct Fixed<'a> {
                user: &'a User,
                host: &'a Host,
                #[serde(skip_serializing_if = "Option::is_none")]
                service: Option<&'a Service>,
                process: &'a Process,
            }
            let fixed = Fixed {
                user: &self.user,
                host: &self.host,
                service: self.service.as_ref(),
                process: &self.process,
            };
            let mut v = serde_json::to_vec(&fixed).unwrap_or_else(|_| b"{}".to_vec());
            // {"user":…,"process":{…}}  ->  ,"user":…,"process":{…,"thread":{"id":
            v.truncate(v.len().saturating_sub(2));
            v[0] = b',';
            v.extend_from_slice(b",\"thread\":{\"id\":");
            v
        })
    }
}

#[derive(Serialize)]
struct Record<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: Timestamp,
    event: EcsEvent<'a>,
    pkcs11: Pkcs11<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<&'a str, &'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keytrail: Option<&'a serde_json::Value>,
}

#[derive(Serialize)]
struct EcsEvent<'a> {
    kind: &'static str,
    action: &'a str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    type_: [&'static str; 1],
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<u64>,
    sequence: u64,
}

/// An RFC 3339 UTC timestamp with microseconds, written straight into the output.
struct Timestamp(std::time::SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

/// A return value's name, written straight into the output.
struct RvName(u64);

impl Serialize for RvName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match names::return_value(self.0) {
            Some(n) => s.serialize_str(n),
            None => s.collect_str(&format_args!("CKR_{:#x}", self.0)),
        }
    }
}

#[derive(Serialize)]
struct Pkcs11<'a> {
    lifecycle: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    function: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rv: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rv_name: Option<RvName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slot_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<Token<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<Session>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<Auth<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mechanism: Option<&'a Mechanism>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Key<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    keys: BTreeMap<&'static str, Key<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<&'static str, &'a [Attr]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<Operation<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    flags: &'a [&'static str],
}

#[derive(Serialize)]
struct Token<'a> {
    label: &'a str,
    serial: &'a str,
}

#[derive(Serialize)]
struct Session {
    handle: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
}

#[derive(Serialize)]
struct Auth<'a> {
    user_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
}

#[derive(Serialize)]
struct Key<'a> {
    handle: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_hex: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unique_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_sha256: Option<&'a str>,
}

#[derive(Serialize)]
struct Operation<'a> {
    kind: &'a str,
    init: &'a str,
    parts: u64,
    end: &'a str,
}

#[derive(Serialize)]
struct Data {
    #[serde(skip_serializing_if = "Option::is_none")]
    in_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_len: Option<u64>,
}

fn key(k: &KeyRef) -> Key<'_> {
    let id: Option<&KeyIdentity> = k.identity.as_deref();
    Key {
        handle: k.handle,
        class: id.and_then(|i| i.class),
        key_type: id.and_then(|i| i.key_type),
        bits: id.and_then(|i| i.bits),
        id_hex: id.and_then(|i| i.id_hex.as_deref()),
        label: id.and_then(|i| i.label.as_deref()),
        unique_id: id.and_then(|i| i.unique_id.as_deref()),
        token: id.and_then(|i| i.token),
        public_sha256: id.and_then(|i| i.public_sha256.as_deref()),
    }
}

/// ECS `event.category` and `event.type` for a record.
fn ecs_kind(e: &Event) -> (&'static str, &'static str) {
    use crate::config::Lifecycle as L;
    match e.lifecycle {
        L::Session => (
            "session",
            if e.action.ends_with("close") {
                "end"
            } else {
                "start"
            },
        ),
        L::Auth => (
            "authentication",
            if e.action == "logout" { "end" } else { "start" },
        ),
        L::TokenAdmin => ("configuration", "admin"),
        L::Generate | L::Import => ("configuration", "creation"),
        L::Use | L::Export | L::Discovery => ("configuration", "access"),
        L::Modify => ("configuration", "change"),
        L::Destroy => ("configuration", "deletion"),
        L::Audit => ("process", "info"),
    }
}

/// Appends one record as a JSON line to `out`.
pub fn encode(e: &Event, origin: &Origin, sequence: u64, out: &mut Vec<u8>) {
    let (category, type_) = ecs_kind(e);
    let main_key = e.keys.iter().find(|k| k.role == "key").map(key);
    let keys = e
        .keys
        .iter()
        .filter(|k| k.role != "key")
        .map(|k| (k.role, key(k)))
        .collect();
    let (op, data) = match (&e.operation, e.data) {
        (
            Some(OperationInfo {
                kind,
                init,
                parts,
                in_len,
                out_len,
                end,
            }),
            _,
        ) => (
            Some(Operation {
                kind,
                init,
                parts: *parts,
                end,
            }),
            Some(Data {
                in_len: Some(*in_len),
                out_len: Some(*out_len),
            }),
        ),
        (None, Some((i, o))) => (
            None,
            Some(Data {
                in_len: i,
                out_len: o,
            }),
        ),
        (None, None) => (None, None),
    };
    let record = Record {
        timestamp: Timestamp(e.started.at),
        event: EcsEvent {
            kind: "event",
            action: e.action,
            category: [category],
            type_: [type_],
            outcome: e.outcome.as_str(),
            duration: e.duration_ns,
            sequence,
        },
        pkcs11: Pkcs11 {
            lifecycle: e.lifecycle.as_str(),
            function: e.function,
            rv: e.rv,
            rv_name: e.rv.map(RvName),
            slot_id: e.slot_id,
            token: e.token.as_deref().map(|t| Token {
                label: &t.label,
                serial: &t.serial,
            }),
            session: e.session.map(|h| Session {
                handle: h,
                state: e.session_state,
            }),
            auth: e.user_type.map(|u| Auth {
                user_type: names::user_type(u)
                    .map_or_else(|| format!("CKU_{u:#x}"), str::to_string),
                username: e.username.as_deref(),
            }),
            mechanism: e.mechanism.as_ref(),
            key: main_key,
            keys,
            attributes: e
                .attributes
                .iter()
                .map(|(k, v)| (*k, v.as_slice()))
                .collect(),
            operation: op,
            data,
            flags: &e.flags,
        },
        labels: e
            .labels
            .as_deref()
            .map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()),
        message: e.message.as_deref(),
        keytrail: e.detail.as_ref(),
    };
    // Serializing plain structs of strings and numbers into a Vec cannot fail.
    let start = out.len();
    if serde_json::to_writer(&mut *out, &record).is_err() || out.pop() != Some(b'}') {
        out.truncate(start);
        return;
    }
    // The stream's fixed fields, then the thread, close the object.
    out.extend_from_slice(origin.prefix());
    out.extend_from_slice(itoa::Buffer::new().format(e.thread_id).as_bytes());
    out.extend_from_slice(b"}}}\n");
}
