//! The record that crosses a ring: a versioned binary layout of an [`Event`], written by
//! the library on the calling thread and read back by the agent.
//!
//! Plain data in, plain data out: no FFI and no I/O here. The agent trusts nothing it
//! reads: every length, count, enumeration and string is checked, nesting is bounded, and
//! anything wrong is a [`Malformed`] error (which the agent records), never a panic.
//!
//! Layout (little-endian): a version byte, the lifecycle, outcome and flag bytes, a
//! presence mask (u16), the start time (host-wide monotonic nanoseconds), then the fields
//! the mask announces, in a fixed order. Strings are a u16 length and UTF-8 bytes. Names
//! the trail prints as constants (function, action, roles, operation kinds, class and
//! key-type names) are interned by the agent in a bounded table.

use crate::audit::attrs::{Attr, AttrValue};
use crate::audit::event::{
    Event, Extra, Flags, KeyRef, OperationInfo, Outcome, SessionSummary, Started, TokenRef,
    UseSummary,
};
use crate::audit::keys::KeyIdentity;
use crate::audit::mechanism::{Mechanism, Params};
use crate::config::Lifecycle;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The layout's version: the first byte of every record.
pub const VERSION: u8 = 1;
/// The largest record accepted. A record that would be larger loses its attribute lists
/// (and says so in its `keytrail` detail) rather than being dropped.
pub const MAX_RECORD: usize = 32 * 1024;
/// The longest string kept.
const MAX_STR: usize = 4096;
/// How deeply attribute templates may nest.
const MAX_DEPTH: u8 = 4;
/// The most entries in any list (attributes, labels).
const MAX_LIST: usize = 256;

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Turns the monotonic clock of one process into the host's monotonic nanoseconds and
/// back. `Instant` is opaque; CLOCK_MONOTONIC is the same clock in every process of the
/// host, so a start time crosses the ring as nanoseconds of it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    instant: Instant,
    ns: u64,
}

impl Clock {
    /// The pair read now.
    pub fn now() -> Clock {
        let instant = Instant::now();
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        Clock {
            instant,
            ns: (t.tv_sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec as u64),
        }
    }

    /// The host-wide monotonic nanoseconds of `i`.
    #[inline]
    pub fn ns(&self, i: Instant) -> u64 {
        match i.checked_duration_since(self.instant) {
            Some(d) => self.ns.saturating_add(d.as_nanos() as u64),
            None => self
                .ns
                .saturating_sub(self.instant.duration_since(i).as_nanos() as u64),
        }
    }

    /// The instant that was `ns` (clamped to what `Instant` can hold).
    pub fn instant(&self, ns: u64) -> Instant {
        if ns >= self.ns {
            let d = Duration::from_nanos(ns - self.ns).min(Duration::from_secs(86_400 * 365));
            self.instant.checked_add(d).unwrap_or(self.instant)
        } else {
            let d = Duration::from_nanos(self.ns - ns);
            self.instant.checked_sub(d).unwrap_or(self.instant)
        }
    }
}

const HAS_DURATION: u16 = 1;
const HAS_RV: u16 = 1 << 1;
const HAS_SLOT: u16 = 1 << 2;
const HAS_TOKEN: u16 = 1 << 3;
const HAS_SESSION: u16 = 1 << 4;
const HAS_STATE: u16 = 1 << 5;
const HAS_USER_TYPE: u16 = 1 << 6;
const HAS_MECHANISM: u16 = 1 << 7;
const HAS_OPERATION: u16 = 1 << 8;
const HAS_LABELS: u16 = 1 << 9;
const HAS_EXTRA: u16 = 1 << 10;
const ALL_FIELDS: u16 = (1 << 11) - 1;

/// A lifecycle's number on the wire: its place in `Lifecycle::ALL`, then `Audit`.
fn lifecycle_number(l: Lifecycle) -> u8 {
    Lifecycle::ALL
        .iter()
        .position(|x| *x == l)
        .unwrap_or(Lifecycle::ALL.len()) as u8
}

fn lifecycle_of(n: u8) -> Option<Lifecycle> {
    match Lifecycle::ALL.get(n as usize) {
        Some(l) => Some(*l),
        None => (n as usize == Lifecycle::ALL.len()).then_some(Lifecycle::Audit),
    }
}

/// Appends `e` to `out` (cleared first). Records larger than [`MAX_RECORD`] lose their
/// attribute lists and say so.
pub fn encode(e: &Event, clock: &Clock, out: &mut Vec<u8>) {
    out.clear();
    encode_into(e, clock, out, true);
    if out.len() > MAX_RECORD {
        out.clear();
        encode_into(e, clock, out, false);
    }
}

fn encode_into(e: &Event, clock: &Clock, out: &mut Vec<u8>, attributes: bool) {
    let mut mask = 0u16;
    for (bit, set) in [
        (HAS_DURATION, e.duration_ns.is_some()),
        (HAS_RV, e.rv.is_some()),
        (HAS_SLOT, e.slot_id.is_some()),
        (HAS_TOKEN, e.token.is_some()),
        (HAS_SESSION, e.session.is_some()),
        (HAS_STATE, e.session_state.is_some()),
        (HAS_USER_TYPE, e.user_type.is_some()),
        (HAS_MECHANISM, e.mechanism.is_some()),
        (HAS_OPERATION, e.operation.is_some()),
        (HAS_LABELS, e.labels.is_some()),
        (HAS_EXTRA, e.extra.is_some()),
    ] {
        if set {
            mask |= bit;
        }
    }
    let lifecycle = lifecycle_number(e.lifecycle);
    let outcome = match e.outcome {
        Outcome::Success => 0u8,
        Outcome::Failure => 1,
        Outcome::Unknown => 2,
    };
    out.extend_from_slice(&[VERSION, lifecycle, outcome, e.flags.bits()]);
    out.extend_from_slice(&mask.to_le_bytes());
    put_u64(out, clock.ns(e.started.instant));
    put_u64(out, e.thread_id);
    put_str(out, e.function);
    put_str(out, e.action);
    let opt = [
        e.duration_ns,
        e.rv,
        e.slot_id,
        None,
        e.session,
        None,
        e.user_type,
    ];
    for v in opt.into_iter().flatten() {
        put_u64(out, v);
    }
    if let Some(t) = e.token.as_deref() {
        put_str(out, &t.label);
        put_str(out, &t.serial);
    }
    if let Some(s) = e.session_state {
        put_str(out, s);
    }
    if let Some(m) = &e.mechanism {
        put_mechanism(out, m);
    }
    if let Some(op) = &e.operation {
        put_str(out, op.kind);
        put_str(out, op.init);
        put_str(out, op.end);
        for n in [op.parts, op.in_len, op.out_len] {
            put_u64(out, n);
        }
    }
    if let Some(labels) = e.labels.as_deref() {
        put_len(out, labels.len());
        for (k, v) in labels.iter().take(MAX_LIST) {
            put_str(out, k);
            put_str(out, v);
        }
    }
    out.push(e.keys.len() as u8);
    for k in &e.keys {
        put_key(out, k);
    }
    if let Some(x) = e.extra() {
        put_extra(out, x, clock, attributes);
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n.min(MAX_LIST) as u16).to_le_bytes());
}

/// A string, cut at [`MAX_STR`] bytes (on a character boundary).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_STR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
        None => out.push(0),
    }
}

fn put_mechanism(out: &mut Vec<u8>, m: &Mechanism) {
    put_u64(out, m.type_);
    let (tag, values): (u8, [u64; 3]) = match m.params {
        Params::None => (0, [0; 3]),
        Params::Gcm {
            iv_len,
            aad_len,
            tag_bits,
        } => (1, [iv_len, aad_len, tag_bits]),
        Params::Oaep { hash, mgf } => (2, [hash, mgf, 0]),
        Params::Pss {
            hash,
            mgf,
            salt_len,
        } => (3, [hash, mgf, salt_len]),
        Params::Ecdh { kdf } => (4, [kdf, 0, 0]),
        Params::Raw { len } => (5, [len, 0, 0]),
    };
    out.push(tag);
    for v in values {
        put_u64(out, v);
    }
}

fn put_key(out: &mut Vec<u8>, k: &KeyRef) {
    put_str(out, k.role);
    put_u64(out, k.handle);
    match k.identity.as_deref() {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            put_opt_str(out, id.class);
            put_opt_str(out, id.key_type);
            put_opt_u64(out, id.bits);
            put_opt_str(out, id.id_hex.as_deref());
            put_opt_str(out, id.label.as_deref());
            put_opt_str(out, id.unique_id.as_deref());
            out.push(match id.token {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            });
            put_opt_str(out, id.public_sha256.as_deref());
        }
    }
}

fn put_attrs(out: &mut Vec<u8>, list: &[Attr], depth: u8) {
    if depth > MAX_DEPTH {
        put_len(out, 0);
        return;
    }
    put_len(out, list.len());
    for a in list.iter().take(MAX_LIST) {
        put_str(out, &a.type_name);
        match &a.value {
            AttrValue::Bool(b) => out.extend_from_slice(&[0, u8::from(*b)]),
            AttrValue::Ulong { value, name } => {
                out.push(1);
                put_u64(out, *value);
                put_opt_str(out, *name);
            }
            AttrValue::Hex(s) => {
                out.push(2);
                put_str(out, s);
            }
            AttrValue::Text(s) => {
                out.push(3);
                put_str(out, s);
            }
            AttrValue::Sha256(s) => {
                out.push(4);
                put_str(out, s);
            }
            AttrValue::Template(t) => {
                out.push(5);
                put_attrs(out, t, depth + 1);
            }
            AttrValue::Redacted(b) => out.extend_from_slice(&[6, u8::from(*b)]),
            AttrValue::Unavailable(b) => out.extend_from_slice(&[7, u8::from(*b)]),
        }
    }
}

fn put_extra(out: &mut Vec<u8>, x: &Extra, clock: &Clock, attributes: bool) {
    put_opt_str(out, x.username.as_deref());
    let lists: &[(&str, Vec<Attr>)] = if attributes { &x.attributes } else { &[] };
    put_len(out, lists.len());
    for (role, list) in lists.iter().take(MAX_LIST) {
        put_str(out, role);
        put_attrs(out, list, 0);
    }
    put_len(out, x.attribute_counts.len());
    for (role, n) in x.attribute_counts.iter().take(MAX_LIST) {
        put_str(out, role);
        put_u64(out, *n);
    }
    match x.data {
        None => out.push(0),
        Some((i, o)) => {
            out.push(1);
            put_opt_u64(out, i);
            put_opt_u64(out, o);
        }
    }
    put_opt_str(out, x.message.as_deref());
    let mut detail = x.detail.clone();
    if !attributes && !x.attributes.is_empty() {
        // Said in the record itself: its attribute lists did not fit.
        let d = detail.get_or_insert_with(|| serde_json::json!({}));
        if let Some(m) = d.as_object_mut() {
            m.insert("attributes_omitted".into(), "record too large".into());
        }
    }
    let json = detail.map(|d| d.to_string());
    put_opt_str(out, json.as_deref());
    match x.summary {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_u64(out, s.successes);
            put_u64(out, s.failures);
            put_u64(out, clock.ns(s.last.instant));
        }
    }
    match x.sessions {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            for n in [
                s.opened_rw,
                s.opened_ro,
                s.closed,
                s.closed_all,
                s.open,
                s.max_open,
            ] {
                put_u64(out, n);
            }
            put_u64(out, clock.ns(s.last.instant));
        }
    }
}

/// Reads a record written by [`encode`]. `clock` is the reader's own.
pub fn decode(bytes: &[u8], clock: &Clock) -> Result<Event, Malformed> {
    let mut r = Reader { b: bytes, at: 0 };
    let head = r.take(4)?;
    if head[0] != VERSION {
        return Err(Malformed("unknown record version"));
    }
    let lifecycle = lifecycle_of(head[1]).ok_or(Malformed("unknown lifecycle"))?;
    let outcome = match head[2] {
        0 => Outcome::Success,
        1 => Outcome::Failure,
        2 => Outcome::Unknown,
        _ => return Err(Malformed("unknown outcome")),
    };
    let flags = Flags::from_bits(head[3]).ok_or(Malformed("unknown flag"))?;
    let mask = r.u16()?;
    if mask & !ALL_FIELDS != 0 {
        return Err(Malformed("unknown field"));
    }
    let started = Started {
        instant: clock.instant(r.u64()?),
    };
    let thread_id = r.u64()?;
    let function = r.name()?;
    let action = r.name()?;
    let mut e = Event::call(started, function, action, lifecycle, 0);
    e.outcome = outcome;
    e.flags = flags;
    e.thread_id = thread_id;
    let has = |bit| mask & bit != 0;
    e.duration_ns = if has(HAS_DURATION) {
        Some(r.u64()?)
    } else {
        None
    };
    e.rv = if has(HAS_RV) { Some(r.u64()?) } else { None };
    e.slot_id = if has(HAS_SLOT) { Some(r.u64()?) } else { None };
    e.session = if has(HAS_SESSION) {
        Some(r.u64()?)
    } else {
        None
    };
    e.user_type = if has(HAS_USER_TYPE) {
        Some(r.u64()?)
    } else {
        None
    };
    if has(HAS_TOKEN) {
        e.token = Some(Arc::new(TokenRef {
            label: r.string()?,
            serial: r.string()?,
        }));
    }
    if has(HAS_STATE) {
        e.session_state = Some(r.name()?);
    }
    if has(HAS_MECHANISM) {
        e.mechanism = Some(r.mechanism()?);
    }
    if has(HAS_OPERATION) {
        e.operation = Some(OperationInfo {
            kind: r.name()?,
            init: r.name()?,
            end: r.name()?,
            parts: r.u64()?,
            in_len: r.u64()?,
            out_len: r.u64()?,
        });
    }
    if has(HAS_LABELS) {
        let n = r.len()?;
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            labels.push((r.string()?, r.string()?));
        }
        e.labels = Some(Arc::new(labels));
    }
    let keys = r.byte()?;
    if keys as usize > crate::audit::event::MAX_KEYS {
        return Err(Malformed("too many keys"));
    }
    for _ in 0..keys {
        let k = r.key()?;
        e.keys.push(k);
    }
    if has(HAS_EXTRA) {
        e.extra = Some(Box::new(r.extra(clock)?));
    }
    if r.at != bytes.len() {
        return Err(Malformed("trailing bytes"));
    }
    Ok(e)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.b.len())
            .ok_or(Malformed("truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn flag(&mut self) -> Result<bool, Malformed> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed("bad presence byte")),
        }
    }

    fn len(&mut self) -> Result<usize, Malformed> {
        let n = self.u16()? as usize;
        if n > MAX_LIST {
            return Err(Malformed("list too long"));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<&'a str, Malformed> {
        let n = self.u16()? as usize;
        if n > MAX_STR {
            return Err(Malformed("string too long"));
        }
        std::str::from_utf8(self.take(n)?).map_err(|_| Malformed("string not UTF-8"))
    }

    fn string(&mut self) -> Result<String, Malformed> {
        Ok(self.str()?.to_owned())
    }

    fn name(&mut self) -> Result<&'static str, Malformed> {
        intern(self.str()?)
    }

    fn opt_name(&mut self) -> Result<Option<&'static str>, Malformed> {
        Ok(if self.flag()? {
            Some(self.name()?)
        } else {
            None
        })
    }

    fn opt_string(&mut self) -> Result<Option<String>, Malformed> {
        Ok(if self.flag()? {
            Some(self.string()?)
        } else {
            None
        })
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, Malformed> {
        Ok(if self.flag()? {
            Some(self.u64()?)
        } else {
            None
        })
    }

    fn mechanism(&mut self) -> Result<Mechanism, Malformed> {
        let type_ = self.u64()?;
        let tag = self.byte()?;
        let (a, b, c) = (self.u64()?, self.u64()?, self.u64()?);
        let params = match tag {
            0 => Params::None,
            1 => Params::Gcm {
                iv_len: a,
                aad_len: b,
                tag_bits: c,
            },
            2 => Params::Oaep { hash: a, mgf: b },
            3 => Params::Pss {
                hash: a,
                mgf: b,
                salt_len: c,
            },
            4 => Params::Ecdh { kdf: a },
            5 => Params::Raw { len: a },
            _ => return Err(Malformed("unknown mechanism parameters")),
        };
        Ok(Mechanism { type_, params })
    }

    fn key(&mut self) -> Result<KeyRef, Malformed> {
        let role = self.name()?;
        let handle = self.u64()?;
        let identity = if self.flag()? {
            let mut id = KeyIdentity::default();
            id.class = self.opt_name()?;
            id.key_type = self.opt_name()?;
            id.bits = self.opt_u64()?;
            id.id_hex = self.opt_string()?;
            id.label = self.opt_string()?;
            id.unique_id = self.opt_string()?;
            id.token = match self.byte()? {
                0 => None,
                1 => Some(false),
                2 => Some(true),
                _ => return Err(Malformed("bad token flag")),
            };
            id.public_sha256 = self.opt_string()?;
            Some(Arc::new(id))
        } else {
            None
        };
        Ok(KeyRef {
            role,
            handle,
            identity,
        })
    }

    fn attrs(&mut self, depth: u8) -> Result<Vec<Attr>, Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed("templates nested too deeply"));
        }
        let n = self.len()?;
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let type_name = Cow::Owned(self.string()?);
            let value = match self.byte()? {
                0 => AttrValue::Bool(self.flag()?),
                1 => AttrValue::Ulong {
                    value: self.u64()?,
                    name: self.opt_name()?,
                },
                2 => AttrValue::Hex(self.string()?),
                3 => AttrValue::Text(self.string()?),
                4 => AttrValue::Sha256(self.string()?),
                5 => AttrValue::Template(self.attrs(depth + 1)?),
                6 => AttrValue::Redacted(self.flag()?),
                7 => AttrValue::Unavailable(self.flag()?),
                _ => return Err(Malformed("unknown attribute value")),
            };
            list.push(Attr { type_name, value });
        }
        Ok(list)
    }

    fn extra(&mut self, clock: &Clock) -> Result<Extra, Malformed> {
        let mut x = Extra {
            username: self.opt_string()?,
            ..Extra::default()
        };
        for _ in 0..self.len()? {
            let role = self.name()?;
            x.attributes.push((role, self.attrs(0)?));
        }
        for _ in 0..self.len()? {
            let role = self.name()?;
            x.attribute_counts.push((role, self.u64()?));
        }
        if self.flag()? {
            x.data = Some((self.opt_u64()?, self.opt_u64()?));
        }
        x.message = self.opt_string()?;
        if let Some(json) = self.opt_string()? {
            // serde_json bounds its own recursion.
            x.detail =
                Some(serde_json::from_str(&json).map_err(|_| Malformed("detail is not JSON"))?);
        }
        if self.flag()? {
            x.summary = Some(UseSummary {
                successes: self.u64()?,
                failures: self.u64()?,
                last: Started {
                    instant: clock.instant(self.u64()?),
                },
            });
        }
        if self.flag()? {
            x.sessions = Some(SessionSummary {
                opened_rw: self.u64()?,
                opened_ro: self.u64()?,
                closed: self.u64()?,
                closed_all: self.u64()?,
                open: self.u64()?,
                max_open: self.u64()?,
                last: Started {
                    instant: clock.instant(self.u64()?),
                },
            });
        }
        Ok(x)
    }
}

/// The most distinct names the agent keeps. The library's own names (functions,
/// actions, roles, constants) number a few hundred; a client that sends more novel names
/// than this gets `malformed_record` events instead of growing the agent's memory.
const MAX_NAMES: usize = 4096;
/// The longest name.
const MAX_NAME: usize = 64;

/// A name as a `&'static str`: the event model holds names that way. Each distinct name
/// is leaked once; only identifier-like names are accepted, and at most [`MAX_NAMES`].
fn intern(s: &str) -> Result<&'static str, Malformed> {
    use std::cell::RefCell;
    thread_local! {
        /// The names this thread has seen: the common case takes no lock.
        static SEEN: RefCell<rustc_hash::FxHashSet<&'static str>> = RefCell::default();
    }
    if let Ok(Some(n)) = SEEN.try_with(|seen| seen.borrow().get(s).copied()) {
        return Ok(n);
    }
    let n = intern_shared(s)?;
    let _ = SEEN.try_with(|seen| seen.borrow_mut().insert(n));
    Ok(n)
}

/// [`intern`]'s table shared by all threads.
fn intern_shared(s: &str) -> Result<&'static str, Malformed> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    if s.len() > MAX_NAME
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err(Malformed("bad name"));
    }
    let mut guard = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let names = guard.get_or_insert_with(HashSet::new);
    if let Some(n) = names.get(s) {
        return Ok(n);
    }
    if names.len() >= MAX_NAMES {
        return Err(Malformed("too many distinct names"));
    }
    let n: &'static str = Box::leak(s.to_owned().into_boxed_str());
    names.insert(n);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Flag;

    fn sample() -> Event {
        let mut e = Event::call(Started::now(), "C_Sign", "sign", Lifecycle::Use, 0);
        e.thread_id = 42;
        e.slot_id = Some(1);
        e.session = Some(7);
        e.session_state = Some("rw_user");
        e.token = Some(Arc::new(TokenRef {
            label: "t \"1\"".into(),
            serial: "abc".into(),
        }));
        e.mechanism = Some(Mechanism {
            type_: 0x251,
            params: Params::Gcm {
                iv_len: 12,
                aad_len: 0,
                tag_bits: 128,
            },
        });
        e.flag(Flag::ReadWrite);
        let mut id = KeyIdentity::default();
        id.class = Some("secret_key");
        id.label = Some("k".into());
        id.token = Some(true);
        e.key("key", 9, Some(Arc::new(id)));
        e.operation = Some(OperationInfo {
            kind: "sign",
            init: "C_SignInit",
            parts: 3,
            in_len: 192,
            out_len: 32,
            end: "completed",
        });
        e.labels = Some(Arc::new(vec![("request".into(), "r-1".into())]));
        e.attributes(
            "template",
            2,
            Some(vec![Attr {
                type_name: "CKA_WRAP_TEMPLATE".into(),
                value: AttrValue::Template(vec![Attr {
                    type_name: "CKA_TOKEN".into(),
                    value: AttrValue::Bool(true),
                }]),
            }]),
        );
        e
    }

    fn json(e: &Event) -> String {
        let origin = crate::sink::json::Origin::current(None);
        let mut out = Vec::new();
        crate::sink::json::encode(e, &origin, 1, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn a_record_crosses_unchanged() {
        let clock = Clock::now();
        let e = sample();
        let mut buf = Vec::new();
        encode(&e, &clock, &mut buf);
        let back = decode(&buf, &clock).expect("decodes");
        // Timestamps round to the microsecond in the trail; compare the JSON without them.
        let strip = |s: String| s.split_once("\"event\"").map(|(_, r)| r.to_owned());
        assert_eq!(strip(json(&back)), strip(json(&e)));
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let clock = Clock::now();
        let mut buf = Vec::new();
        encode(&sample(), &clock, &mut buf);
        for n in 0..buf.len() {
            assert!(decode(&buf[..n], &clock).is_err(), "prefix {n}");
        }
        let mut rng = fastrand::Rng::with_seed(9);
        for _ in 0..20_000 {
            let mut b = buf.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            let _ = decode(&b, &clock);
            let junk: Vec<u8> = (0..rng.usize(..300)).map(|_| rng.u8(..)).collect();
            let _ = decode(&junk, &clock);
        }
    }

    #[test]
    fn a_session_summary_crosses_unchanged() {
        let clock = Clock::now();
        let mut e = sample();
        let last = Started::now();
        e.extra_mut().sessions = Some(SessionSummary {
            opened_rw: 37,
            opened_ro: 5,
            closed: 40,
            closed_all: 1,
            open: 1,
            max_open: 3,
            last,
        });
        let mut buf = Vec::new();
        encode(&e, &clock, &mut buf);
        let back = decode(&buf, &clock).expect("decodes");
        let s = back.extra().and_then(|x| x.sessions).expect("the summary");
        let counts = (
            s.opened_rw,
            s.opened_ro,
            s.closed,
            s.closed_all,
            s.open,
            s.max_open,
        );
        assert_eq!(counts, (37, 5, 40, 1, 1, 3));
        let drift = s
            .last
            .instant
            .max(last.instant)
            .duration_since(s.last.instant.min(last.instant));
        assert!(drift < std::time::Duration::from_micros(2), "{drift:?}");
    }

    #[test]
    fn names_are_checked() {
        assert!(intern("C_Sign").is_ok());
        assert!(intern("a\"b").is_err());
        assert!(intern(&"x".repeat(65)).is_err());
    }
}
