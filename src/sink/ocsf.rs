//! The trail's OCSF line format (`[trail] format = "ocsf"`): one OCSF 1.3 event per
//! record, written by hand as the ECS encoder ([`super::json`]) is, and from the same
//! [`Event`]. docs/events.md lists every field beside its ECS counterpart.
//!
//! Classes: logins and logouts are Authentication (3002); every other PKCS#11 call is API
//! Activity (6003), its `api.operation` the function and its `resources` the keys and the
//! token; keytrail's own records are Application Lifecycle (6002). What has no OCSF home
//! goes under `unmapped`: the ECS record's `pkcs11` object without the fields OCSF holds,
//! `labels`, `keytrail`, and the chain's `integrity` (appended by [`super::chain`]).

use super::json::{self, Origin};
use crate::audit::event::{Event, Flag, Outcome, WallClock};
use crate::config::Lifecycle;
use crate::event::severity::{self, Facts, Severity};
use crate::names;
use serde::Serialize;

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// The stream's fixed OCSF fields, formatted once per stream.
#[derive(Debug, Clone)]
pub struct Fixed {
    /// `,"metadata":{…,"product":{…}`: the rest of `metadata` follows per record.
    metadata: Vec<u8>,
    /// `,"device":{…},"actor":{…,"process":{…,"tid":`: the thread id follows.
    actor: Vec<u8>,
    /// `,"src_endpoint":{"hostname":…}` (API Activity requires one).
    src_endpoint: Vec<u8>,
    /// `,"app":{…}`: keytrail itself, for Application Lifecycle records.
    app: Vec<u8>,
}

fn fixed(origin: &Origin) -> &Fixed {
    origin.ocsf.get_or_init(|| {
        #[derive(Serialize)]
        struct Product {
            name: &'static str,
            vendor_name: &'static str,
            version: &'static str,
        }
        let product = Product {
            name: "keytrail",
            vendor_name: "keytrail",
            version: env!("CARGO_PKG_VERSION"),
        };
        fn json<T: Serialize>(v: &T) -> Vec<u8> {
            let mut out = Vec::new();
            json::value(v, &mut out);
            out
        }
        let mut metadata =
            format!(",\"metadata\":{{\"version\":\"{OCSF_VERSION}\",\"product\":").into_bytes();
        metadata.extend_from_slice(&json(&product));
        metadata
            .extend_from_slice(b",\"profiles\":[\"host\",\"datetime\"],\"log_name\":\"keytrail\"");

        #[derive(Serialize)]
        struct Device<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            hostname: Option<&'a str>,
            type_id: u8,
            r#type: &'static str,
        }
        #[derive(Serialize)]
        struct User<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            name: Option<&'a str>,
            uid: &'a str,
        }
        #[derive(Serialize)]
        struct File<'a> {
            path: &'a str,
            name: &'a str,
            type_id: u8,
            r#type: &'static str,
        }
        #[derive(Serialize)]
        struct Process<'a> {
            pid: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            name: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            file: Option<File<'a>>,
        }
        #[derive(Serialize)]
        struct Actor<'a> {
            user: User<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            app_name: Option<&'a str>,
            process: Process<'a>,
        }
        let host = origin.host.name.as_deref();
        let mut actor = b",\"device\":".to_vec();
        actor.extend_from_slice(&json(&Device {
            hostname: host,
            type_id: 0,
            r#type: "Unknown",
        }));
        let exe = origin.process.executable.as_deref();
        actor.extend_from_slice(b",\"actor\":");
        let mut a = json(&Actor {
            user: User {
                name: origin.user.name.as_deref(),
                uid: &origin.user.id,
            },
            app_name: origin.service.as_ref().map(|s| s.name.as_str()),
            process: Process {
                pid: origin.process.pid,
                name: origin.process.name.as_deref(),
                file: exe.map(|path| File {
                    path,
                    name: path.rsplit('/').next().unwrap_or(path),
                    type_id: 1,
                    r#type: "Regular File",
                }),
            },
        });
        // {"user":…,"process":{…}}  ->  {"user":…,"process":{…,"tid":
        a.truncate(a.len().saturating_sub(2));
        actor.extend_from_slice(&a);
        actor.extend_from_slice(b",\"tid\":");

        let mut src_endpoint = b",\"src_endpoint\":{".to_vec();
        if let Some(h) = host {
            src_endpoint.extend_from_slice(b"\"hostname\":");
            json::string(h, &mut src_endpoint);
        }
        src_endpoint.push(b'}');
        let mut app = b",\"app\":".to_vec();
        app.extend_from_slice(&json(&product));
        Fixed {
            metadata,
            actor,
            src_endpoint,
            app,
        }
    })
}

/// An OCSF class: category, class and the activity of a record.
struct Class {
    category_uid: u32,
    category_name: &'static str,
    class_uid: u32,
    class_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
}

/// OCSF's `type_uid`: the class and activity in one number.
fn type_uid(c: &Class) -> u64 {
    u64::from(c.class_uid) * 100 + u64::from(c.activity_id)
}

/// The OCSF class and activity of a record.
fn class(e: &Event) -> Class {
    const IAM: (u32, &str) = (3, "Identity & Access Management");
    const APP: (u32, &str) = (6, "Application Activity");
    let (category, class_uid, class_name, (activity_id, activity_name)) = match e.lifecycle {
        Lifecycle::Auth => (
            IAM,
            3002,
            "Authentication",
            if e.action == "logout" {
                (2, "Logoff")
            } else {
                (1, "Logon")
            },
        ),
        Lifecycle::Audit => (
            APP,
            6002,
            "Application Lifecycle",
            match e.action {
                "trail_start" | "trail_resume" => (3, "Start"),
                "trail_stop" => (4, "Stop"),
                _ => (99, "Other"),
            },
        ),
        l => (
            APP,
            6003,
            "API Activity",
            match l {
                Lifecycle::Session if e.action == "session_open" => (1, "Create"),
                Lifecycle::Session if e.action == "session_summary" => (99, "Other"),
                Lifecycle::Session => (4, "Delete"),
                Lifecycle::Generate | Lifecycle::Import => (1, "Create"),
                Lifecycle::TokenAdmin | Lifecycle::Modify => (3, "Update"),
                Lifecycle::Destroy => (4, "Delete"),
                _ => (2, "Read"),
            },
        ),
    };
    Class {
        category_uid: category.0,
        category_name: category.1,
        class_uid,
        class_name,
        activity_id,
        activity_name,
    }
}

/// Appends one record as an OCSF JSON line to `out`: `{…,"unmapped":{…}}\n`. `stream` and
/// `sequence` make `metadata.uid`. The chain puts its `integrity` object inside
/// `unmapped`, which is therefore the last field.
/// `now` dates the record ([`crate::audit::event::Started::wall_time_at`]).
pub fn encode(
    e: &Event,
    origin: &Origin,
    stream: &str,
    sequence: u64,
    now: &WallClock,
    out: &mut Vec<u8>,
) {
    let f = fixed(origin);
    let c = class(e);
    let sev = severity_of(e);
    let wall = e.started.wall_time_at(now);
    let ms = wall
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json::number(out, "{\"time\":", ms);
    out.extend_from_slice(b",\"time_dt\":\"");
    json::timestamp(wall, out);
    json::number(out, "\",\"category_uid\":", u64::from(c.category_uid));
    json::field_str(out, "category_name", c.category_name);
    json::number(out, ",\"class_uid\":", u64::from(c.class_uid));
    json::field_str(out, "class_name", c.class_name);
    json::number(out, ",\"activity_id\":", u64::from(c.activity_id));
    json::field_str(out, "activity_name", c.activity_name);
    json::number(out, ",\"type_uid\":", type_uid(&c));
    out.extend_from_slice(b",\"type_name\":\"");
    out.extend_from_slice(c.class_name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(c.activity_name.as_bytes());
    json::number(out, "\",\"severity_id\":", u64::from(sev.ocsf_id()));
    json::field_str(out, "severity", sev.ocsf_name());
    let (status_id, status) = match e.outcome {
        Outcome::Success => (1, "Success"),
        Outcome::Failure => (2, "Failure"),
        Outcome::Unknown => (0, "Unknown"),
    };
    json::number(out, ",\"status_id\":", status_id);
    json::field_str(out, "status", status);
    if let Some(rv) = e.rv {
        out.extend_from_slice(b",\"status_code\":");
        json::named(names::return_value(rv), "CKR_", rv, out);
    }
    if let Some(d) = e.duration_ns {
        json::number(out, ",\"duration\":", d / 1_000_000);
    }
    let extra = e.extra();
    if let Some(s) = extra.and_then(|x| x.summary) {
        json::number(out, ",\"count\":", s.successes);
    }
    // A session summary stands for the calls that opened and closed its sessions.
    if let Some(s) = extra.and_then(|x| x.sessions) {
        json::number(out, ",\"count\":", s.opened_rw + s.opened_ro + s.closed);
    }
    if let Some(m) = extra.and_then(|x| x.message.as_deref()) {
        out.extend_from_slice(b",\"message\":");
        json::string(m, out);
    }
    out.extend_from_slice(&f.metadata);
    out.extend_from_slice(b",\"event_code\":");
    json::string(e.action, out);
    out.extend_from_slice(b",\"uid\":\"");
    out.extend_from_slice(stream.as_bytes());
    json::number(out, ":", sequence);
    json::number(out, "\",\"sequence\":", sequence);
    out.push(b'}');
    match c.class_uid {
        3002 => authentication(e, out),
        6002 => out.extend_from_slice(&f.app),
        _ => api(e, f, out),
    }
    out.extend_from_slice(&f.actor);
    out.extend_from_slice(itoa::Buffer::new().format(e.thread_id).as_bytes());
    out.extend_from_slice(b"}}");
    unmapped(e, c.class_uid == 6003, out);
    out.extend_from_slice(b"}}\n");
}

/// Authentication: the subject (`user`, the PKCS#11 user type) and the token as the
/// `service` authenticated to.
fn authentication(e: &Event, out: &mut Vec<u8>) {
    // The subject: the C_LoginUser user name, else the PKCS#11 user type.
    out.extend_from_slice(b",\"user\":{\"name\":");
    match (e.extra().and_then(|x| x.username.as_deref()), e.user_type) {
        (Some(name), _) => json::string(name, out),
        (None, Some(u)) => json::named(names::user_type(u), "CKU_", u, out),
        (None, None) => out.extend_from_slice(b"\"unknown\""),
    }
    // CKU_SO administers the token; CKU_USER uses its keys.
    let (id, caption) = match e.user_type {
        Some(cryptoki_sys::CKU_SO) => (2, "Admin"),
        Some(cryptoki_sys::CKU_USER) => (1, "User"),
        Some(_) => (99, "Other"),
        None => (0, "Unknown"),
    };
    json::number(out, ",\"type_id\":", id);
    json::field_str(out, "type", caption);
    out.push(b'}');
    out.extend_from_slice(b",\"auth_protocol_id\":99,\"auth_protocol\":\"PKCS#11 PIN\"");
    out.extend_from_slice(b",\"is_remote\":false,\"service\":{\"name\":");
    match e.token.as_deref() {
        Some(t) => {
            json::string(&t.label, out);
            json::field_str(out, "uid", &t.serial);
        }
        None => out.extend_from_slice(b"\"PKCS#11\""),
    }
    out.push(b'}');
}

/// API Activity: the function, the keys and token it touched, and where it was called.
fn api(e: &Event, f: &Fixed, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"api\":{\"operation\":");
    // A summary is of several functions' calls: its action names it.
    json::string(
        if e.function.is_empty() {
            e.action
        } else {
            e.function
        },
        out,
    );
    out.extend_from_slice(b",\"service\":{\"name\":\"PKCS#11\"}");
    if let Some(rv) = e.rv {
        json::number(out, ",\"response\":{\"code\":", rv);
        out.push(b'}');
    }
    out.push(b'}');
    if !e.keys.is_empty() || e.token.is_some() {
        out.extend_from_slice(b",\"resources\":[");
        let mut first = true;
        let mut keys: arrayvec::ArrayVec<_, { crate::audit::event::MAX_KEYS }> =
            e.keys.iter().collect();
        // The key the record is about first, then the others by role, as in ECS.
        keys.sort_by_key(|k| (k.role != "key", k.role));
        for k in keys {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(b"{\"type\":\"pkcs11_key\"");
            if let Some(id) = k.identity.as_deref() {
                if let Some(uid) = id.unique_id.as_deref().or(id.id_hex.as_deref()) {
                    json::field_str(out, "uid", uid);
                }
                if let Some(label) = id.label.as_deref() {
                    json::field_str(out, "name", label);
                }
            }
            out.extend_from_slice(b",\"data\":");
            json::key(k, out);
            // Close the key object with its role.
            out.pop();
            json::field_str(out, "role", k.role);
            out.extend_from_slice(b"}}");
        }
        if let Some(t) = e.token.as_deref() {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"type\":\"pkcs11_token\",\"name\":");
            json::string(&t.label, out);
            json::field_str(out, "uid", &t.serial);
            out.push(b'}');
        }
        out.push(b']');
    }
    out.extend_from_slice(&f.src_endpoint);
}

/// `unmapped`, left open for the chain: `pkcs11`, `labels`, `keytrail`. `api`: the record
/// names its function in `api.operation`.
fn unmapped(e: &Event, api: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"unmapped\":{\"pkcs11\":{\"lifecycle\":\"");
    out.extend_from_slice(e.lifecycle.as_str().as_bytes());
    out.push(b'"');
    json::pkcs11(e, out, true, api);
    out.push(b'}');
    if let Some(labels) = e.labels.as_deref() {
        let mut sorted: Vec<&(String, String)> = labels.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let entries = sorted.into_iter().map(|(k, v)| (k.as_str(), v.as_str()));
        json::object(out, ",\"labels\":{", entries, json::string);
    }
    if let Some(d) = e.extra().and_then(|x| x.detail.as_ref()) {
        out.extend_from_slice(b",\"keytrail\":");
        json::value(d, out);
    }
}

/// The shared ranking ([`crate::event::severity`]) of an event, from the same facts a
/// reader of the trail sees, so that OCSF's `severity_id` and the syslog severity agree.
fn severity_of(e: &Event) -> Severity {
    use cryptoki_sys::{CKO_PRIVATE_KEY, CKO_SECRET_KEY};
    let class = e
        .keys
        .first()
        .and_then(|k| k.identity.as_ref())
        .and_then(|i| i.class_raw())
        .map(|c| match c {
            CKO_SECRET_KEY => "CKO_SECRET_KEY",
            CKO_PRIVATE_KEY => "CKO_PRIVATE_KEY",
            _ => "other",
        });
    severity::of(&Facts {
        action: e.action,
        outcome: e.outcome.as_str(),
        lifecycle: e.lifecycle.as_str(),
        token_wiped: e.flags.has(Flag::TokenWiped),
        secret_value_read: e.flags.has(Flag::SecretValueRead),
        class,
    })
}
