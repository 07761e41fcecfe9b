//! The trail's line format: one JSON object per record, field names from the Elastic
//! Common Schema where ECS has one, PKCS#11 specifics under `pkcs11.*`. docs/events.md
//! describes every field.

use crate::audit::attrs::Attr;
use crate::audit::event::{Event, KeyRef, MAX_KEYS, SessionSummary, TokenRef, WallClock};
use crate::audit::keys::KeyIdentity;
use crate::audit::mechanism::{Mechanism, Params};
use crate::names;
use arrayvec::ArrayVec;
use serde::Serialize;

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
    /// `group.*`: the primary group, as the kernel gave it to the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    /// `observer.*`: who vouches for the identity fields (the agent), and which.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observer: Option<Observer>,
    /// These fields formatted once per stream: `,"user":…,"process":{…,"thread":{"id":`.
    #[serde(skip)]
    prefix: std::sync::OnceLock<Vec<u8>>,
    /// The same for OCSF records (see [`super::ocsf`]).
    #[serde(skip)]
    pub(super) ocsf: std::sync::OnceLock<super::ocsf::Fixed>,
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

/// `group.*`
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Numeric gid, as a string (ECS).
    pub id: String,
}

/// `observer.*`: the identity fields of records written by the agent come from the
/// kernel (SO_PEERCRED, /proc), not from the process they describe.
#[derive(Debug, Clone, Serialize)]
pub struct Observer {
    /// `"keytrail-agent"`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// The fields the agent observed itself.
    pub trusted: &'static [&'static str],
}

/// The fields an agent's records take from the kernel.
pub const AGENT_TRUSTED: &[&str] = &[
    "user.id",
    "group.id",
    "process.pid",
    "process.executable",
    "process.name",
    "host.name",
];

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
            group: None,
            observer: None,
            prefix: std::sync::OnceLock::new(),
            ocsf: std::sync::OnceLock::new(),
        }
    }

    /// Another process's identity as the agent observed it: pid, uid and gid from
    /// SO_PEERCRED, name and executable from /proc. `service` is what the process says.
    pub fn observed(
        pid: u32,
        uid: u32,
        gid: u32,
        name: Option<String>,
        executable: Option<String>,
        service: Option<String>,
    ) -> Origin {
        Origin {
            user: User {
                name: crate::os::user_name(uid),
                id: uid.to_string(),
            },
            process: Process {
                pid,
                name,
                executable,
            },
            host: Host {
                name: crate::os::host_name(),
            },
            service: service.map(|name| Service { name }),
            group: Some(Group {
                id: gid.to_string(),
            }),
            observer: Some(Observer {
                type_: "keytrail-agent",
                trusted: AGENT_TRUSTED,
            }),
            prefix: std::sync::OnceLock::new(),
            ocsf: std::sync::OnceLock::new(),
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
                #[serde(skip_serializing_if = "Option::is_none")]
                group: Option<&'a Group>,
                #[serde(skip_serializing_if = "Option::is_none")]
                observer: Option<&'a Observer>,
                process: &'a Process,
            }
            let fixed = Fixed {
                user: &self.user,
                host: &self.host,
                service: self.service.as_ref(),
                group: self.group.as_ref(),
                observer: self.observer.as_ref(),
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

/// Appends one record as a JSON line to `out`.
///
/// Written by hand rather than through serde: this runs once per record on the writer
/// thread, and a direct encoder is several times cheaper than serde's map machinery. Field
/// order is fixed (docs/events.md); optional fields are left out when absent. `now` turns
/// the record's start into wall-clock time ([`Started::wall_time_at`]).
///
/// [`Started::wall_time_at`]: crate::audit::event::Started::wall_time_at
pub fn encode(e: &Event, origin: &Origin, sequence: u64, now: &WallClock, out: &mut Vec<u8>) {
    let (category, type_) = ecs_kind(e);
    out.extend_from_slice(b"{\"@timestamp\":\"");
    timestamp(e.started.wall_time_at(now), out);
    out.extend_from_slice(b"\",\"event\":{\"kind\":\"event\",\"action\":");
    string(e.action, out);
    out.extend_from_slice(b",\"category\":[\"");
    out.extend_from_slice(category.as_bytes());
    out.extend_from_slice(b"\"],\"type\":[\"");
    out.extend_from_slice(type_.as_bytes());
    out.extend_from_slice(b"\"],\"outcome\":\"");
    out.extend_from_slice(e.outcome.as_str().as_bytes());
    out.push(b'"');
    if let Some(d) = e.duration_ns {
        number(out, ",\"duration\":", d);
    }
    number(out, ",\"sequence\":", sequence);
    match e.body() {
        Some(body) => out.extend_from_slice(body),
        None => encode_body(e, out),
    }
    // The stream's fixed fields, then the thread, close the object.
    out.extend_from_slice(origin.prefix());
    out.extend_from_slice(itoa::Buffer::new().format(e.thread_id).as_bytes());
    out.extend_from_slice(b"}}}\n");
}

/// The part of a record between its `event` object and the stream's fixed fields: the
/// `pkcs11` object, labels, message and detail. Nothing in it depends on the stream or
/// the sequence, so a calling thread can encode it (see [`Event::body`]).
pub fn encode_body(e: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"},\"pkcs11\":{\"lifecycle\":\"");
    out.extend_from_slice(e.lifecycle.as_str().as_bytes());
    out.push(b'"');
    pkcs11(e, out, false, false);
    out.push(b'}');
    let extra = e.extra();
    if let Some(labels) = e.labels.as_deref() {
        let mut sorted: Vec<&(String, String)> = labels.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let entries = sorted.into_iter().map(|(k, v)| (k.as_str(), v.as_str()));
        object(out, ",\"labels\":{", entries, string);
    }
    if let Some(m) = extra.and_then(|x| x.message.as_deref()) {
        out.extend_from_slice(b",\"message\":");
        string(m, out);
    }
    if let Some(d) = extra.and_then(|x| x.detail.as_ref()) {
        out.extend_from_slice(b",\"keytrail\":");
        value(d, out);
    }
}

/// The `pkcs11` object after its `lifecycle`. For OCSF (`ocsf`), only what has no OCSF
/// home: the return value, token and keys are OCSF fields there, and so is the function
/// of an API Activity record (`api`).
pub(super) fn pkcs11(e: &Event, out: &mut Vec<u8>, ocsf: bool, api: bool) {
    let extra = e.extra();
    let function_elsewhere = ocsf && api;
    if !e.function.is_empty() && !function_elsewhere {
        out.extend_from_slice(b",\"function\":");
        string(e.function, out);
    }
    if let Some(rv) = e.rv.filter(|_| !ocsf) {
        number(out, ",\"rv\":", rv);
        out.extend_from_slice(b",\"rv_name\":");
        named(names::return_value(rv), "CKR_", rv, out);
    }
    if let Some(slot) = e.slot_id {
        number(out, ",\"slot_id\":", slot);
    }
    if let Some(t) = e.token.as_deref().filter(|_| !ocsf) {
        out.extend_from_slice(b",\"token\":");
        match t.json.get() {
            Some(object) => out.extend_from_slice(object),
            None => token(t, out),
        }
    }
    if let Some(x) = extra.and_then(|x| x.sessions) {
        session_summary(&x, out);
    }
    if let Some(h) = e.session {
        number(out, ",\"session\":{\"handle\":", h);
        if let Some(state) = e.session_state {
            out.extend_from_slice(b",\"state\":");
            string(state, out);
        }
        out.push(b'}');
    }
    if let Some(u) = e.user_type {
        out.extend_from_slice(b",\"auth\":{\"user_type\":");
        named(names::user_type(u), "CKU_", u, out);
        if let Some(name) = extra.and_then(|x| x.username.as_deref()) {
            out.extend_from_slice(b",\"username\":");
            string(name, out);
        }
        out.push(b'}');
    }
    if let Some(m) = &e.mechanism {
        mechanism(m, out);
    }
    if let Some(k) = e.keys.iter().find(|k| k.role == "key").filter(|_| !ocsf) {
        out.extend_from_slice(b",\"key\":");
        key(k, out);
    }
    let mut others: ArrayVec<&KeyRef, MAX_KEYS> =
        e.keys.iter().filter(|k| k.role != "key" && !ocsf).collect();
    if !others.is_empty() {
        others.sort_by_key(|k| k.role);
        let entries = others.into_iter().map(|k| (k.role, k));
        object(out, ",\"keys\":{", entries, key);
    }
    if let Some(attrs) = extra.map(|x| &x.attributes).filter(|a| !a.is_empty()) {
        let mut sorted: Vec<&(&str, Vec<Attr>)> = attrs.iter().collect();
        sorted.sort_by_key(|(role, _)| *role);
        let entries = sorted.into_iter().map(|(role, list)| (*role, list));
        object(out, ",\"attributes\":{", entries, value);
    }
    if let Some(counts) = extra.map(|x| &x.attribute_counts).filter(|c| !c.is_empty()) {
        let mut sorted: Vec<(&str, u64)> = counts.to_vec();
        sorted.sort_by_key(|(role, _)| *role);
        object(out, ",\"attribute_count\":{", sorted, |n, out| {
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
        });
    }
    let data = match (&e.operation, extra.and_then(|x| x.data)) {
        (Some(op), _) => {
            out.extend_from_slice(b",\"operation\":{\"kind\":");
            string(op.kind, out);
            out.extend_from_slice(b",\"init\":");
            string(op.init, out);
            number(out, ",\"parts\":", op.parts);
            out.extend_from_slice(b",\"end\":");
            string(op.end, out);
            if let Some(s) = extra.and_then(|x| x.summary) {
                number(out, ",\"count\":", s.successes);
                number(out, ",\"failures\":", s.failures);
                out.extend_from_slice(b",\"last\":\"");
                timestamp(s.last.wall_time(), out);
                out.push(b'"');
            }
            out.push(b'}');
            Some((Some(op.in_len), Some(op.out_len)))
        }
        (None, data) => data,
    };
    if let Some((i, o)) = data {
        let entries = [("in_len", i), ("out_len", o)]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)));
        object(out, ",\"data\":{", entries, |v, out| {
            out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes())
        });
    }
    if !e.flags.is_empty() {
        out.extend_from_slice(b",\"flags\":[");
        for (i, f) in e.flags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(f.as_str(), out);
        }
        out.push(b']');
    }
}

/// `pkcs11.sessions`: what a session summary stands for.
fn session_summary(x: &SessionSummary, out: &mut Vec<u8>) {
    number(out, ",\"sessions\":{\"opened\":", x.opened_rw + x.opened_ro);
    number(out, ",\"opened_rw\":", x.opened_rw);
    number(out, ",\"opened_ro\":", x.opened_ro);
    number(out, ",\"closed\":", x.closed + x.closed_all);
    number(out, ",\"closed_by_close_all\":", x.closed_all);
    number(out, ",\"open\":", x.open);
    number(out, ",\"max_open\":", x.max_open);
    out.extend_from_slice(b",\"last\":\"");
    timestamp(x.last.wall_time(), out);
    out.extend_from_slice(b"\"}");
}

fn mechanism(m: &Mechanism, out: &mut Vec<u8>) {
    number(out, ",\"mechanism\":{\"type\":", m.type_);
    if let Some(name) = names::mechanism(m.type_) {
        out.extend_from_slice(b",\"name\":");
        string(name, out);
    }
    // (name, value, whether the value is a mechanism to be named)
    let params: ArrayVec<(&str, u64, bool), 3> = match m.params {
        Params::None => ArrayVec::new(),
        Params::Gcm {
            iv_len,
            aad_len,
            tag_bits,
        } => [
            ("iv_len", iv_len, false),
            ("aad_len", aad_len, false),
            ("tag_bits", tag_bits, false),
        ]
        .into(),
        Params::Oaep { hash, mgf } => [("hash", hash, true), ("mgf", mgf, false)]
            .into_iter()
            .collect(),
        Params::Pss {
            hash,
            mgf,
            salt_len,
        } => [
            ("hash", hash, true),
            ("mgf", mgf, false),
            ("salt_len", salt_len, false),
        ]
        .into(),
        Params::Ecdh { kdf } => [("kdf", kdf, false)].into_iter().collect(),
        Params::Raw { len } => [("len", len, false)].into_iter().collect(),
    };
    if !params.is_empty() {
        let entries = params.into_iter().map(|(k, v, is_mech)| (k, (v, is_mech)));
        object(out, ",\"params\":{", entries, |(v, is_mech), out| {
            if is_mech {
                named(names::mechanism(v), "CKM_", v, out);
            } else {
                out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            }
        });
    }
    out.push(b'}');
}

pub(super) fn key(k: &KeyRef, out: &mut Vec<u8>) {
    number(out, "{\"handle\":", k.handle);
    if let Some(id) = k.identity.as_deref() {
        match id.json.get() {
            Some(fields) => out.extend_from_slice(fields),
            None => identity(id, out),
        }
    }
    out.push(b'}');
}

/// A token's object: `{"label":…,"serial":…}`. The agent keeps it with the token its
/// readers remember (`agent::wire::Decoder`).
pub(crate) fn token(t: &TokenRef, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"label\":");
    string(&t.label, out);
    out.extend_from_slice(b",\"serial\":");
    string(&t.serial, out);
    out.push(b'}');
}

/// A key identity's fields in a `key` object (after its handle). The agent keeps them
/// with the identities its readers remember (`agent::wire::Decoder`): a key's records
/// name it again and again.
pub(crate) fn identity(id: &KeyIdentity, out: &mut Vec<u8>) {
    let KeyIdentity {
        class,
        key_type,
        bits,
        id_hex,
        label,
        unique_id,
        token,
        public_sha256,
        ..
    } = id;
    let texts = [("class", *class), ("key_type", *key_type)];
    for (name, v) in texts {
        if let Some(v) = v {
            field_str(out, name, v);
        }
    }
    if let Some(b) = bits {
        number(out, ",\"bits\":", *b);
    }
    for (name, v) in [
        ("id_hex", id_hex),
        ("label", label),
        ("unique_id", unique_id),
    ] {
        if let Some(v) = v {
            field_str(out, name, v);
        }
    }
    if let Some(t) = token {
        out.extend_from_slice(if *t {
            b",\"token\":true"
        } else {
            b",\"token\":false"
        });
    }
    if let Some(h) = public_sha256 {
        field_str(out, "public_sha256", h);
    }
}

/// `open` (which ends with `{`), then `"name":value` for each entry, then `}`.
pub(super) fn object<'a, V>(
    out: &mut Vec<u8>,
    open: &str,
    entries: impl IntoIterator<Item = (&'a str, V)>,
    write: impl Fn(V, &mut Vec<u8>),
) {
    out.extend_from_slice(open.as_bytes());
    for (i, (name, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(name, out);
        out.push(b':');
        write(v, out);
    }
    out.push(b'}');
}

/// `,"name":"value"`
pub(super) fn field_str(out: &mut Vec<u8>, name: &str, v: &str) {
    out.push(b',');
    string(name, out);
    out.push(b':');
    string(v, out);
}

/// `prefix` then a number.
pub(super) fn number(out: &mut Vec<u8>, prefix: &str, n: u64) {
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A constant's name, or `PREFIX0x…` when it has none.
pub(super) fn named(name: Option<&str>, prefix: &str, n: u64, out: &mut Vec<u8>) {
    match name {
        Some(name) => string(name, out),
        None => {
            out.push(b'"');
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(format!("{n:#x}").as_bytes());
            out.push(b'"');
        }
    }
}

/// A rarely written structure (attribute lists, keytrail's own details), through serde.
pub(super) fn value<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

/// Whether a string holds a byte JSON escapes: a control character, `"` or `\\`. Eight
/// bytes at a time: a word has a byte below 0x20 when `(w - 0x20…) & !w & 0x80…` is not
/// zero, and a byte equal to `c` when `w ^ c…` has a zero byte (the same test with 0x01);
/// exact for whether there is one (UTF-8's bytes above 0x7f never count).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    let found = |w: u64| {
        below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            != 0
    };
    let mut words = bytes.chunks_exact(8);
    for c in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        if found(u64::from_ne_bytes(a)) {
            return true;
        }
    }
    // The bytes after the last whole word, in one more word without a loop: the last
    // eight bytes (again some already looked at), or for a shorter string its first and
    // last four, or its first, middle and last byte padded with one that needs no escape.
    let n = bytes.len();
    if words.remainder().is_empty() && n > 0 {
        return false;
    }
    let word = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(a)
    };
    let half = |at: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&bytes[at..at + 4]);
        u64::from(u32::from_ne_bytes(a))
    };
    let w = match n {
        0 => return false,
        1..=3 => u64::from_ne_bytes([
            bytes[0],
            bytes[n / 2],
            bytes[n - 1],
            b'a',
            b'a',
            b'a',
            b'a',
            b'a',
        ]),
        4..=7 => half(0) | half(n - 4) << 32,
        _ => word(n - 8),
    };
    found(w)
}

/// A JSON string, escaped as serde_json escapes it.
pub(super) fn string(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    // Nearly every string (names, labels, serials) needs no escape: one pass, eight bytes
    // at a time, tells, and the string is copied whole.
    if !needs_escape(bytes) {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// RFC 3339 UTC with microseconds: `2026-11-28T18:13:40.297833Z` (what
/// `humantime::format_rfc3339_micros` writes).
pub(super) fn timestamp(t: std::time::SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    // Two digits at a time (every width is even).
    let put = |b: &mut [u8], at: usize, width: usize, mut v: u64| {
        let mut i = at + width;
        while i > at {
            i -= 2;
            b[i..i + 2].copy_from_slice(&DIGIT_PAIRS[(v % 100) as usize]);
            v /= 100;
        }
    };
    put(&mut b, 0, 4, y as u64);
    put(&mut b, 5, 2, m as u64);
    put(&mut b, 8, 2, day as u64);
    put(&mut b, 11, 2, rem / 3600);
    put(&mut b, 14, 2, rem % 3600 / 60);
    put(&mut b, 17, 2, rem % 60);
    put(&mut b, 20, 6, u64::from(d.subsec_micros()));
    out.extend_from_slice(&b);
}

/// "00" to "99".
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// ECS `event.category` and `event.type` for a record.
pub(super) fn ecs_kind(e: &Event) -> (&'static str, &'static str) {
    use crate::config::Lifecycle as L;
    match e.lifecycle {
        L::Session => (
            "session",
            if e.action.ends_with("close") {
                "end"
            } else if e.action == "session_summary" {
                "info"
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ASCII byte, at each place of a string long enough for whole words and a
    /// remainder, beside multi-byte characters: escaped exactly when serde_json does.
    #[test]
    fn each_byte_at_each_place_is_escaped_as_serde_json_escapes_it() {
        for b in 0u8..0x80 {
            for at in 0..19 {
                let mut s: Vec<char> = "abcdéfghijklmnopqr✓".chars().collect();
                s[at] = b as char;
                let s: String = s.into_iter().collect();
                let mut out = Vec::new();
                string(&s, &mut out);
                assert_eq!(out, serde_json::to_vec(&s).expect("json"), "{b:#x} at {at}");
                let special = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(needs_escape(s.as_bytes()), special, "{b:#x} at {at}");
            }
        }
    }

    /// Strings of every length up to three words, with one byte at each place: the test
    /// reads short strings and the bytes after the last whole word in one word.
    #[test]
    fn a_byte_to_escape_is_found_in_strings_of_every_length() {
        for len in 0..=24usize {
            for at in 0..len.max(1) {
                for b in [0u8, 0x1f, b'"', b'\\', b' ', b'a', 0x7f, 0xc3] {
                    let mut s = vec![b'x'; len];
                    if len > 0 {
                        s[at] = b;
                    }
                    let special = s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
                    assert_eq!(needs_escape(&s), special, "{b:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "plain",
            "quote \" backslash \\ slash /",
            "ctl \n\r\t\u{8}\u{c}\u{1}\u{1f} del \u{7f}",
            "unicode é ✓ \u{202e}",
            "",
        ] {
            let mut out = Vec::new();
            string(s, &mut out);
            assert_eq!(out, serde_json::to_vec(s).expect("json"), "{s:?}");
        }
    }

    #[test]
    fn mechanism_params_name_the_hash_and_keep_their_order() {
        use cryptoki_sys::*;
        let json = |params| {
            let mut out = Vec::new();
            mechanism(
                &Mechanism {
                    type_: CKM_RSA_PKCS_PSS,
                    params,
                },
                &mut out,
            );
            String::from_utf8(out).expect("utf8")
        };
        let pss = Params::Pss {
            hash: CKM_SHA256,
            mgf: 2,
            salt_len: 32,
        };
        assert_eq!(
            json(pss),
            r#","mechanism":{"type":13,"name":"CKM_RSA_PKCS_PSS","params":{"hash":"CKM_SHA256","mgf":2,"salt_len":32}}"#
        );
        let unknown_hash = Params::Oaep {
            hash: 0x8000_0001,
            mgf: 1,
        };
        assert!(json(unknown_hash).ends_with(r#""params":{"hash":"CKM_0x80000001","mgf":1}}"#));
        assert!(json(Params::None).ends_with(r#""name":"CKM_RSA_PKCS_PSS"}"#));
    }

    #[test]
    fn timestamps_match_rfc3339_micros() {
        for secs in [
            0u64,
            951_782_400,
            1_709_164_799,
            1_798_761_599,
            4_102_444_800,
        ] {
            for micros in [0u32, 1, 999_999] {
                let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000 + 999);
                let mut out = Vec::new();
                timestamp(t, &mut out);
                assert_eq!(
                    String::from_utf8(out).expect("utf8"),
                    humantime::format_rfc3339_micros(t).to_string()
                );
            }
        }
    }
}
