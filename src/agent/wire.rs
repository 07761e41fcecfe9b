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
//! key-type names) are one byte, their place in [`NAMES`] (a table compiled into library
//! and agent alike); a name not in it is a zero byte and a string, which the agent interns
//! in a bounded table. A typical `use` record fits in one slot of the ring, where the
//! calling thread writes it in place.

use crate::audit::attrs::{Attr, AttrValue};
use crate::audit::event::{
    Event, Extra, Flags, KeyRef, OpRecord, OperationInfo, Outcome, SessionSummary, Started,
    TokenRef, UseSummary,
};
use crate::audit::keys::{KeyIdentity, WireBytes};
use crate::audit::mechanism::{Mechanism, Params};
use crate::config::Lifecycle;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The layout's version: the first byte of every record. 2: usage summaries carry a
/// session summary after them. 3: names of [`NAMES`] are one byte.
pub const VERSION: u8 = 3;

/// Names a record carries as one byte, their place here plus one (0: the name follows as
/// a string): PKCS#11 functions, actions, operation kinds and ends, session states, key
/// and attribute-list roles, object classes and key types. Library and agent must read
/// it alike: the hello carries [`LAYOUT`], and an agent refuses a process whose layout
/// differs. At most 255 names.
pub const NAMES: &[&str] = &[
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
    "C_GetInterface",
    "C_GetInterfaceList",
    "C_LoginUser",
    "C_SessionCancel",
    "C_MessageEncryptInit",
    "C_EncryptMessage",
    "C_EncryptMessageBegin",
    "C_EncryptMessageNext",
    "C_MessageEncryptFinal",
    "C_MessageDecryptInit",
    "C_DecryptMessage",
    "C_DecryptMessageBegin",
    "C_DecryptMessageNext",
    "C_MessageDecryptFinal",
    "C_MessageSignInit",
    "C_SignMessage",
    "C_SignMessageBegin",
    "C_SignMessageNext",
    "C_MessageSignFinal",
    "C_MessageVerifyInit",
    "C_VerifyMessage",
    "C_VerifyMessageBegin",
    "C_VerifyMessageNext",
    "C_MessageVerifyFinal",
    "session_open",
    "session_close",
    "session_cancel",
    "session_summary",
    "login",
    "logout",
    "token_init",
    "pin_init",
    "pin_set",
    "key_generate",
    "key_pair_generate",
    "key_derive",
    "object_create",
    "object_copy",
    "key_unwrap",
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "sign_recover",
    "verify_recover",
    "message_encrypt",
    "message_decrypt",
    "message_sign",
    "message_verify",
    "digest_key",
    "key_wrap",
    "attribute_read_secret",
    "attribute_set",
    "object_destroy",
    "objects_find",
    "attribute_read",
    "random_generate",
    "random_seed",
    "trail_start",
    "initialize",
    "finalize",
    "records_lost",
    "client_connected",
    "client_start",
    "client_stop",
    "client_end",
    "malformed_record",
    "records_incomplete",
    "seal_login",
    "completed",
    "failed",
    "abandoned",
    "cancelled",
    "rw_so",
    "rw_user",
    "ro_user",
    "rw_public",
    "ro_public",
    "key",
    "base",
    "source",
    "unwrapping",
    "wrapping",
    "template",
    "private_template",
    "public_template",
    "read",
    "set",
    "CKO_DATA",
    "CKO_CERTIFICATE",
    "CKO_PUBLIC_KEY",
    "CKO_PRIVATE_KEY",
    "CKO_SECRET_KEY",
    "CKO_HW_FEATURE",
    "CKO_DOMAIN_PARAMETERS",
    "CKO_MECHANISM",
    "CKO_OTP_KEY",
    "CKO_PROFILE",
    "CKO_VALIDATION",
    "CKO_TRUST",
    "CKK_RSA",
    "CKK_DSA",
    "CKK_DH",
    "CKK_EC",
    "CKK_X9_42_DH",
    "CKK_KEA",
    "CKK_GENERIC_SECRET",
    "CKK_RC2",
    "CKK_RC4",
    "CKK_DES",
    "CKK_DES2",
    "CKK_DES3",
    "CKK_CAST",
    "CKK_CAST3",
    "CKK_CAST128",
    "CKK_RC5",
    "CKK_IDEA",
    "CKK_SKIPJACK",
    "CKK_BATON",
    "CKK_JUNIPER",
    "CKK_CDMF",
    "CKK_AES",
    "CKK_BLOWFISH",
    "CKK_TWOFISH",
    "CKK_SECURID",
    "CKK_HOTP",
    "CKK_ACTI",
    "CKK_CAMELLIA",
    "CKK_ARIA",
    "CKK_MD5_HMAC",
    "CKK_SHA_1_HMAC",
    "CKK_RIPEMD128_HMAC",
    "CKK_RIPEMD160_HMAC",
    "CKK_SHA256_HMAC",
    "CKK_SHA384_HMAC",
    "CKK_SHA512_HMAC",
    "CKK_SHA224_HMAC",
    "CKK_SEED",
    "CKK_GOSTR3410",
    "CKK_GOSTR3411",
    "CKK_GOST28147",
    "CKK_CHACHA20",
    "CKK_POLY1305",
    "CKK_AES_XTS",
    "CKK_SHA3_224_HMAC",
    "CKK_SHA3_256_HMAC",
    "CKK_SHA3_384_HMAC",
    "CKK_SHA3_512_HMAC",
    "CKK_BLAKE2B_160_HMAC",
    "CKK_BLAKE2B_256_HMAC",
    "CKK_BLAKE2B_384_HMAC",
    "CKK_BLAKE2B_512_HMAC",
    "CKK_SALSA20",
    "CKK_X2RATCHET",
    "CKK_EC_EDWARDS",
    "CKK_EC_MONTGOMERY",
    "CKK_HKDF",
    "CKK_SHA512_224_HMAC",
    "CKK_SHA512_256_HMAC",
    "CKK_SHA512_T_HMAC",
    "CKK_HSS",
    "CKK_XMSS",
    "CKK_XMSSMT",
    "CKK_ML_KEM",
    "CKK_ML_DSA",
    "CKK_SLH_DSA",
    "trail_stop",
    "trail_resume",
    "trail_reopened",
    "records_dropped",
];

/// The record layout's identity: [`VERSION`] and [`NAMES`], hashed (FNV-1a).
pub const LAYOUT: u64 = layout();

const fn layout() -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ VERSION as u64;
    let mut i = 0;
    while i < NAMES.len() {
        let b = NAMES[i].as_bytes();
        let mut j = 0;
        while j < b.len() {
            h = (h ^ b[j] as u64).wrapping_mul(PRIME);
            j += 1;
        }
        // A separator no name holds.
        h = (h ^ 0xff).wrapping_mul(PRIME);
        i += 1;
    }
    h
}
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
        // Through libc (the vDSO via the C library, as `Instant::now` reads it): rustix's
        // own vDSO lookup faults under valgrind, which the instruction counts run under.
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
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

/// A lifecycle's number on the wire: its place in `Lifecycle::ALL`, then `Audit` (the
/// enum's own order, which a test checks).
#[inline]
fn lifecycle_number(l: Lifecycle) -> u8 {
    l as u8
}

fn lifecycle_of(n: u8) -> Option<Lifecycle> {
    match Lifecycle::ALL.get(n as usize) {
        Some(l) => Some(*l),
        None => (n as usize == Lifecycle::ALL.len()).then_some(Lifecycle::Audit),
    }
}

/// A calling thread's encoding buffer: encodes records without allocating once warm.
#[derive(Debug, Default)]
pub struct Encoder {
    /// Always fully initialised (its length is its size): writes only check the end.
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty encoder (its buffer grows at the first record).
    pub const fn new() -> Encoder {
        Encoder { buf: Vec::new() }
    }

    /// Encodes `e`: the record's bytes. Records larger than [`MAX_RECORD`] lose their
    /// attribute lists and say so.
    #[inline]
    pub fn encode(&mut self, e: &Event, clock: &Clock) -> &[u8] {
        let mut attributes = true;
        loop {
            let mut w = Writer {
                buf: &mut self.buf,
                at: 0,
            };
            encode_into(e, clock, &mut w, attributes);
            let n = w.at;
            if n > MAX_RECORD && attributes {
                attributes = false;
            } else if n > self.buf.len() {
                // Did not fit: now that the size is known, once more with room.
                self.buf.resize(n.max(1024), 0);
            } else {
                return &self.buf[..n];
            }
        }
    }
}

/// Encodes `e` into `out` (a ring slot) when it fits: returns the record's length, which
/// is larger than `out` when it did not fit (then [`Encoder::encode`] takes it, with the
/// size limits this leaves to it).
#[inline]
pub fn encode_to(e: &Event, clock: &Clock, out: &mut [u8]) -> usize {
    let mut w = Writer { buf: out, at: 0 };
    encode_into(e, clock, &mut w, true);
    w.at
}

/// [`encode_to`] for an operation's record: the bytes [`encode_to`] gives for the
/// [`Event`] that [`OpRecord`] stands for.
#[inline]
pub fn encode_op_to(r: &OpRecord<'_>, clock: &Clock, out: &mut [u8]) -> usize {
    let mut w = Writer { buf: out, at: 0 };
    encode_into(r, clock, &mut w, true);
    w.at
}

/// The largest operation record an [`OpKept`] keeps (longer ones, with long labels, are
/// encoded each time).
const KEPT_MAX: usize = 384;

/// What an operation's record is made of besides the fields that change from one
/// operation to the next. The token and key identity are held, so that an address
/// compared equal is the same token or identity, never a new one at a freed one's place.
#[derive(Debug)]
struct KeptOf {
    function: &'static str,
    action: &'static str,
    state: &'static str,
    kind: &'static str,
    init: &'static str,
    end: &'static str,
    role: &'static str,
    slot: u64,
    session: u64,
    handle: u64,
    has_rv: bool,
    mechanism: Option<Mechanism>,
    token: Arc<TokenRef>,
    identity: Option<Arc<KeyIdentity>>,
}

impl KeptOf {
    #[inline(always)]
    fn is_of(&self, r: &OpRecord<'_>) -> bool {
        let same = |a: &'static str, b: &'static str| std::ptr::eq(a, b);
        let identity = match (&self.identity, &r.key.identity) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        identity
            && self.handle == r.key.handle
            && self.session == r.session
            && self.slot == r.slot
            && self.has_rv == r.rv.is_some()
            && Arc::ptr_eq(&self.token, r.token)
            && same(self.function, r.function)
            && same(self.end, r.info.end)
            && same(self.state, r.state)
            && same(self.action, r.action)
            && same(self.kind, r.info.kind)
            && same(self.init, r.info.init)
            && same(self.role, r.key.role)
            && self.mechanism.as_ref() == r.mechanism
    }

    fn of(r: &OpRecord<'_>) -> KeptOf {
        KeptOf {
            function: r.function,
            action: r.action,
            state: r.state,
            kind: r.info.kind,
            init: r.info.init,
            end: r.info.end,
            role: r.key.role,
            slot: r.slot,
            session: r.session,
            handle: r.key.handle,
            has_rv: r.rv.is_some(),
            mechanism: r.mechanism.copied(),
            token: Arc::clone(r.token),
            identity: r.key.identity.clone(),
        }
    }
}

/// The last operation record a thread encoded, kept with where its changing fields lie:
/// the next record of an operation on the same session, key, mechanism and token, ended
/// by the same function, is that record copied with its times, outcome, return value and
/// counts written over (a few dozen instructions and cache lines instead of encoding
/// every field, which for a short operation is most of what a record costs the caller).
#[derive(Debug)]
pub struct OpKept {
    of: Option<KeptOf>,
    marks: Marks,
    len: usize,
    bytes: [u8; KEPT_MAX],
}

impl OpKept {
    /// Nothing kept.
    pub const fn new() -> OpKept {
        OpKept {
            of: None,
            marks: Marks {
                duration: 0,
                counts: 0,
            },
            len: 0,
            bytes: [0; KEPT_MAX],
        }
    }
}

impl Default for OpKept {
    fn default() -> OpKept {
        OpKept::new()
    }
}

/// [`encode_op_to`], from `kept` when it holds a record of the same operation (and keeping
/// this one there when not): the same bytes either way.
#[inline]
pub fn encode_op_kept(r: &OpRecord<'_>, clock: &Clock, out: &mut [u8], kept: &mut OpKept) -> usize {
    match &kept.of {
        Some(of) if of.is_of(r) => {}
        _ => return keep_op(r, clock, out, kept),
    }
    let n = kept.len;
    let Some(dst) = out.get_mut(..n) else {
        return n;
    };
    dst.copy_from_slice(&kept.bytes[..n]);
    dst[2] = outcome_number(r.outcome);
    dst[6..14].copy_from_slice(&clock.ns(r.started.instant).to_le_bytes());
    dst[14..22].copy_from_slice(&r.thread_id.to_le_bytes());
    let d = kept.marks.duration;
    dst[d..d + 8].copy_from_slice(&r.duration_ns.to_le_bytes());
    if let Some(rv) = r.rv {
        dst[d + 8..d + 16].copy_from_slice(&rv.to_le_bytes());
    }
    let c = kept.marks.counts;
    dst[c..c + 8].copy_from_slice(&r.info.parts.to_le_bytes());
    dst[c + 8..c + 16].copy_from_slice(&r.info.in_len.to_le_bytes());
    dst[c + 16..c + 24].copy_from_slice(&r.info.out_len.to_le_bytes());
    n
}

/// [`encode_op_kept`] for an operation other than the one kept: encoded afresh, and kept.
#[inline(never)]
fn keep_op(r: &OpRecord<'_>, clock: &Clock, out: &mut [u8], kept: &mut OpKept) -> usize {
    let mut w = Writer { buf: out, at: 0 };
    let marks = encode_into(r, clock, &mut w, true);
    let n = w.at;
    match (out.get(..n), kept.bytes.get_mut(..n)) {
        (Some(src), Some(dst)) => {
            dst.copy_from_slice(src);
            kept.of = Some(KeptOf::of(r));
            kept.marks = marks;
            kept.len = n;
        }
        _ => kept.of = None,
    }
    n
}

/// Appends `e` to `out` (cleared first), as [`Encoder::encode`] does.
pub fn encode(e: &Event, clock: &Clock, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(Encoder::new().encode(e, clock));
}

/// Writes into a buffer of fixed size, counting past its end (then writing nothing): one
/// check per field, and the buffer's address and size stay in registers (a `&mut Vec`
/// would be reloaded after every byte written).
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    /// The next `n` bytes, to be written, if they fit.
    #[inline(always)]
    fn room(&mut self, n: usize) -> Option<&mut [u8]> {
        let at = self.at;
        self.at = at + n;
        self.buf.get_mut(at..at + n)
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        if let Some(d) = self.room(1) {
            d[0] = b;
        }
    }

    #[inline(always)]
    fn u16(&mut self, v: u16) {
        if let Some(d) = self.room(2) {
            d.copy_from_slice(&v.to_le_bytes());
        }
    }

    #[inline(always)]
    fn u64(&mut self, v: u64) {
        if let Some(d) = self.room(8) {
            d.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Bytes.
    #[inline(always)]
    fn bytes(&mut self, src: &[u8]) {
        if let Some(dst) = self.room(src.len()) {
            copy(dst, src);
        }
    }

    /// A string after `tag` (a presence byte, if any): one check for all of it. Out of
    /// line: every string of a record is written by this one copy of the code, which
    /// stays in the instruction cache between records.
    #[inline(never)]
    fn str_after(&mut self, tag: Option<u8>, s: &[u8]) {
        let (p, n) = (usize::from(tag.is_some()), s.len());
        if let Some(dst) = self.room(p + 2 + n) {
            if let Some(t) = tag {
                dst[0] = t;
            }
            let (head, rest) = dst[p..].split_at_mut(2);
            head.copy_from_slice(&(n as u16).to_le_bytes());
            copy(rest, s);
        }
    }
}

/// Copies `src` into `dst` (of the same length); the short ones (names, most strings) by
/// two overlapping moves instead of a call.
#[inline(always)]
fn copy(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if (8..=16).contains(&n) {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    } else if (4..8).contains(&n) {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else if n < 4 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    } else {
        dst.copy_from_slice(src);
    }
}

/// Where [`encode_into`] put the fields that change from one operation to the next of the
/// same kind: the duration (the return value follows it, when there is one) and the
/// operation's counts.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    duration: usize,
    counts: usize,
}

fn encode_into<R: Source>(e: &R, clock: &Clock, w: &mut Writer<'_>, attributes: bool) -> Marks {
    let mut marks = Marks::default();
    let bit = |set: bool, bit: u16| if set { bit } else { 0 };
    let mask = bit(e.duration_ns().is_some(), HAS_DURATION)
        | bit(e.rv().is_some(), HAS_RV)
        | bit(e.slot_id().is_some(), HAS_SLOT)
        | bit(e.token().is_some(), HAS_TOKEN)
        | bit(e.session().is_some(), HAS_SESSION)
        | bit(e.session_state().is_some(), HAS_STATE)
        | bit(e.user_type().is_some(), HAS_USER_TYPE)
        | bit(e.mechanism().is_some(), HAS_MECHANISM)
        | bit(e.operation().is_some(), HAS_OPERATION)
        | bit(e.labels().is_some(), HAS_LABELS)
        | bit(e.extra().is_some(), HAS_EXTRA);
    let outcome = outcome_number(e.outcome());
    // The fixed head in one piece.
    if let Some(head) = w.room(22) {
        head[..4].copy_from_slice(&[
            VERSION,
            lifecycle_number(e.lifecycle()),
            outcome,
            e.flags().bits(),
        ]);
        head[4..6].copy_from_slice(&mask.to_le_bytes());
        head[6..14].copy_from_slice(&clock.ns(e.started()).to_le_bytes());
        head[14..22].copy_from_slice(&e.thread_id().to_le_bytes());
    }
    put_name(w, e.function(), Site::Function);
    put_name(w, e.action(), Site::Action);
    marks.duration = w.at;
    for v in [
        e.duration_ns(),
        e.rv(),
        e.slot_id(),
        e.session(),
        e.user_type(),
    ]
    .into_iter()
    .flatten()
    {
        w.u64(v);
    }
    if let Some(t) = e.token() {
        put_str(w, &t.label);
        put_str(w, &t.serial);
    }
    if let Some(s) = e.session_state() {
        put_name(w, s, Site::State);
    }
    if let Some(m) = e.mechanism() {
        put_mechanism(w, m);
    }
    if let Some(op) = e.operation() {
        put_name(w, op.kind, Site::Kind);
        put_name(w, op.init, Site::Init);
        put_name(w, op.end, Site::End);
        marks.counts = w.at;
        if let Some(o) = w.room(24) {
            o[..8].copy_from_slice(&op.parts.to_le_bytes());
            o[8..16].copy_from_slice(&op.in_len.to_le_bytes());
            o[16..].copy_from_slice(&op.out_len.to_le_bytes());
        }
    }
    if let Some(labels) = e.labels() {
        put_len(w, labels.len());
        for (k, v) in labels.iter().take(MAX_LIST) {
            put_str(w, k);
            put_str(w, v);
        }
    }
    let keys = e.keys();
    w.byte(keys.len() as u8);
    for k in keys {
        put_key(w, k);
    }
    if let Some(x) = e.extra() {
        put_extra(w, x, clock, attributes);
    }
    marks
}

#[inline(always)]
fn outcome_number(o: Outcome) -> u8 {
    match o {
        Outcome::Success => 0,
        Outcome::Failure => 1,
        Outcome::Unknown => 2,
    }
}

/// What [`encode_into`] reads of a record: an [`Event`], or an [`OpRecord`], the record
/// of an operation that ends, which the calling thread encodes straight from the
/// operation's state without building an [`Event`]. One encoder for both, so that the
/// two give the same bytes; for an [`OpRecord`] the fields it never has are constants,
/// and their code drops out.
trait Source {
    fn lifecycle(&self) -> Lifecycle;
    fn outcome(&self) -> Outcome;
    fn flags(&self) -> Flags;
    fn started(&self) -> Instant;
    fn thread_id(&self) -> u64;
    fn function(&self) -> &'static str;
    fn action(&self) -> &'static str;
    fn duration_ns(&self) -> Option<u64>;
    fn rv(&self) -> Option<u64>;
    fn slot_id(&self) -> Option<u64>;
    fn session(&self) -> Option<u64>;
    fn user_type(&self) -> Option<u64>;
    fn token(&self) -> Option<&TokenRef>;
    fn session_state(&self) -> Option<&'static str>;
    fn mechanism(&self) -> Option<&Mechanism>;
    fn operation(&self) -> Option<&OperationInfo>;
    fn labels(&self) -> Option<&[(String, String)]>;
    fn keys(&self) -> &[KeyRef];
    fn extra(&self) -> Option<&Extra>;
}

/// [`Source`]'s accessors that copy a field of the same name.
macro_rules! fields {
    ($($name:ident: $t:ty),*) => {
        $(
            #[inline(always)]
            fn $name(&self) -> $t {
                self.$name
            }
        )*
    };
}

impl Source for Event {
    fields!(
        lifecycle: Lifecycle,
        outcome: Outcome,
        flags: Flags,
        thread_id: u64,
        function: &'static str,
        action: &'static str,
        duration_ns: Option<u64>,
        rv: Option<u64>,
        slot_id: Option<u64>,
        session: Option<u64>,
        user_type: Option<u64>,
        session_state: Option<&'static str>
    );
    #[inline(always)]
    fn started(&self) -> Instant {
        self.started.instant
    }
    #[inline(always)]
    fn token(&self) -> Option<&TokenRef> {
        self.token.as_deref()
    }
    #[inline(always)]
    fn mechanism(&self) -> Option<&Mechanism> {
        self.mechanism.as_ref()
    }
    #[inline(always)]
    fn operation(&self) -> Option<&OperationInfo> {
        self.operation.as_ref()
    }
    #[inline(always)]
    fn labels(&self) -> Option<&[(String, String)]> {
        self.labels.as_deref().map(Vec::as_slice)
    }
    #[inline(always)]
    fn keys(&self) -> &[KeyRef] {
        &self.keys
    }
    #[inline(always)]
    fn extra(&self) -> Option<&Extra> {
        Event::extra(self)
    }
}

impl Source for OpRecord<'_> {
    fields!(
        outcome: Outcome,
        thread_id: u64,
        function: &'static str,
        action: &'static str,
        rv: Option<u64>
    );
    #[inline(always)]
    fn lifecycle(&self) -> Lifecycle {
        Lifecycle::Use
    }
    #[inline(always)]
    fn flags(&self) -> Flags {
        Flags::default()
    }
    #[inline(always)]
    fn started(&self) -> Instant {
        self.started.instant
    }
    #[inline(always)]
    fn duration_ns(&self) -> Option<u64> {
        Some(self.duration_ns)
    }
    #[inline(always)]
    fn slot_id(&self) -> Option<u64> {
        Some(self.slot)
    }
    #[inline(always)]
    fn session(&self) -> Option<u64> {
        Some(self.session)
    }
    #[inline(always)]
    fn user_type(&self) -> Option<u64> {
        None
    }
    #[inline(always)]
    fn token(&self) -> Option<&TokenRef> {
        Some(self.token.as_ref())
    }
    #[inline(always)]
    fn session_state(&self) -> Option<&'static str> {
        Some(self.state)
    }
    #[inline(always)]
    fn mechanism(&self) -> Option<&Mechanism> {
        self.mechanism
    }
    #[inline(always)]
    fn operation(&self) -> Option<&OperationInfo> {
        Some(self.info)
    }
    #[inline(always)]
    fn labels(&self) -> Option<&[(String, String)]> {
        None
    }
    #[inline(always)]
    fn keys(&self) -> &[KeyRef] {
        std::slice::from_ref(self.key)
    }
    #[inline(always)]
    fn extra(&self) -> Option<&Extra> {
        None
    }
}

#[inline(always)]
fn put_len(w: &mut Writer<'_>, n: usize) {
    w.u16(n.min(MAX_LIST) as u16);
}

/// A string, cut at [`MAX_STR`] bytes (on a character boundary).
#[inline(always)]
fn put_str(w: &mut Writer<'_>, s: &str) {
    w.str_after(None, bounded(s));
}

/// `s`, cut at [`MAX_STR`] bytes.
#[inline(always)]
fn bounded(s: &str) -> &[u8] {
    if s.len() <= MAX_STR {
        s.as_bytes()
    } else {
        cut(s)
    }
}

#[cold]
fn cut(s: &str) -> &[u8] {
    let mut end = MAX_STR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// A name's place in a record, for [`name_id`]'s cache of the name met there last.
#[derive(Clone, Copy)]
enum Site {
    Function,
    Action,
    State,
    Kind,
    Init,
    End,
    Role,
    Class,
    KeyType,
    /// Attribute-list roles and attribute value names.
    Other,
}

/// The name met last at each [`Site`] and its id: `address << 16 | length << 8 | id`, id
/// 0 for a name not in [`NAMES`] (a `&'static str` at one address always holds the same
/// text). Together: a record reads two cache lines, not one (of a table) per name.
#[repr(align(64))]
struct LastNames([AtomicU64; Site::Other as usize + 1]);
static LAST_NAMES: LastNames = LastNames([const { AtomicU64::new(0) }; Site::Other as usize + 1]);

/// Ids of all names met, as [`LAST_NAMES`] keeps them, direct-mapped by address: for
/// the names a place holds in turn.
static NAME_IDS: [AtomicU64; 128] = [const { AtomicU64::new(0) }; 128];

/// The key of `s` in [`LAST_NAMES`] and [`NAME_IDS`], when its address and length fit.
#[inline(always)]
fn name_key(s: &'static str) -> Option<u64> {
    let (p, n) = (s.as_ptr() as u64, s.len() as u64);
    ((p >> 48 | n >> 8) == 0).then_some(p << 16 | n << 8)
}

/// `s`'s byte on the wire: its place in [`NAMES`] plus one, or 0 (not there).
#[inline(always)]
fn name_id(s: &'static str, site: Site) -> u8 {
    let last = &LAST_NAMES.0[site as usize];
    let v = last.load(Ordering::Relaxed);
    match name_key(s) {
        Some(key) if v & !0xff == key => v as u8,
        key => name_id_again(s, key, last),
    }
}

/// [`name_id`] for a name its site did not hold last.
#[inline(never)]
fn name_id_again(s: &'static str, key: Option<u64>, last: &AtomicU64) -> u8 {
    let Some(key) = key else {
        return name_id_slow(s);
    };
    let place = &NAME_IDS[((key >> 16).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57) as usize];
    let v = place.load(Ordering::Relaxed);
    let id = if v & !0xff == key {
        v as u8
    } else {
        let id = name_id_slow(s);
        place.store(key | u64::from(id), Ordering::Relaxed);
        id
    };
    last.store(key | u64::from(id), Ordering::Relaxed);
    id
}

#[cold]
#[inline(never)]
fn name_id_slow(s: &'static str) -> u8 {
    static BY_NAME: OnceLock<rustc_hash::FxHashMap<&'static str, u8>> = OnceLock::new();
    BY_NAME
        .get_or_init(|| {
            NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| (*n, i as u8 + 1))
                .collect()
        })
        .get(s)
        .copied()
        .unwrap_or(0)
}

/// A name: one byte when [`NAMES`] has it, else 0 and the name as a string. Out of line
/// (a record has about ten names): one small copy of the code, which the calls between
/// records leave in the instruction cache more often than ten inlined ones.
#[inline(never)]
fn put_name(w: &mut Writer<'_>, s: &'static str, site: Site) {
    match name_id(s, site) {
        0 => put_inline_name(w, s),
        id => w.byte(id),
    }
}

#[inline(never)]
fn put_inline_name(w: &mut Writer<'_>, s: &str) {
    w.str_after(Some(0), bounded(s));
}

#[inline]
fn put_opt_name(w: &mut Writer<'_>, s: Option<&'static str>, site: Site) {
    match s {
        Some(s) => {
            w.byte(1);
            put_name(w, s, site);
        }
        None => w.byte(0),
    }
}

#[inline(always)]
fn put_opt_str(w: &mut Writer<'_>, s: Option<&str>) {
    match s {
        Some(s) => w.str_after(Some(1), bounded(s)),
        None => w.byte(0),
    }
}

#[inline(always)]
fn put_opt_u64(w: &mut Writer<'_>, v: Option<u64>) {
    match v {
        Some(v) => {
            w.byte(1);
            w.u64(v);
        }
        None => w.byte(0),
    }
}

#[inline]
fn put_mechanism(w: &mut Writer<'_>, m: &Mechanism) {
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
    if let Some(o) = w.room(33) {
        o[..8].copy_from_slice(&m.type_.to_le_bytes());
        o[8] = tag;
        o[9..17].copy_from_slice(&values[0].to_le_bytes());
        o[17..25].copy_from_slice(&values[1].to_le_bytes());
        o[25..33].copy_from_slice(&values[2].to_le_bytes());
    }
}

#[inline(never)]
fn put_key(w: &mut Writer<'_>, k: &KeyRef) {
    put_name(w, k.role, Site::Role);
    w.u64(k.handle);
    match &k.identity {
        None => w.byte(0),
        Some(id) => {
            w.byte(1);
            match id.wire.get() {
                Some(bytes) => w.bytes(bytes),
                None => put_identity_once(w, id),
            }
        }
    }
}

/// `id`'s bytes, encoded once per identity and kept with it.
#[inline(never)]
fn put_identity_once(w: &mut Writer<'_>, id: &KeyIdentity) {
    let mut buf = [0u8; 256];
    let mut own = Writer {
        buf: &mut buf,
        at: 0,
    };
    put_identity(&mut own, id);
    let n = own.at;
    match buf.get(..n) {
        Some(bytes) => {
            id.wire.keep(bytes);
            w.bytes(bytes);
        }
        // Larger than the buffer (long labels): encoded each time.
        None => put_identity(w, id),
    }
}

/// A key's identity, after its presence byte.
#[inline(never)]
fn put_identity(w: &mut Writer<'_>, id: &KeyIdentity) {
    put_opt_name(w, id.class, Site::Class);
    put_opt_name(w, id.key_type, Site::KeyType);
    put_opt_u64(w, id.bits);
    put_opt_str(w, id.id_hex.as_deref());
    put_opt_str(w, id.label.as_deref());
    put_opt_str(w, id.unique_id.as_deref());
    w.byte(match id.token {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
    put_opt_str(w, id.public_sha256.as_deref());
}

fn put_attrs(w: &mut Writer<'_>, list: &[Attr], depth: u8) {
    if depth > MAX_DEPTH {
        put_len(w, 0);
        return;
    }
    put_len(w, list.len());
    for a in list.iter().take(MAX_LIST) {
        put_str(w, &a.type_name);
        match &a.value {
            AttrValue::Bool(b) => w.bytes(&[0, u8::from(*b)]),
            AttrValue::Ulong { value, name } => {
                w.byte(1);
                w.u64(*value);
                put_opt_name(w, *name, Site::Other);
            }
            AttrValue::Hex(s) => {
                w.byte(2);
                put_str(w, s);
            }
            AttrValue::Text(s) => {
                w.byte(3);
                put_str(w, s);
            }
            AttrValue::Sha256(s) => {
                w.byte(4);
                put_str(w, s);
            }
            AttrValue::Template(t) => {
                w.byte(5);
                put_attrs(w, t, depth + 1);
            }
            AttrValue::Redacted(b) => w.bytes(&[6, u8::from(*b)]),
            AttrValue::Unavailable(b) => w.bytes(&[7, u8::from(*b)]),
        }
    }
}

#[inline(never)]
fn put_extra(w: &mut Writer<'_>, x: &Extra, clock: &Clock, attributes: bool) {
    put_opt_str(w, x.username.as_deref());
    let lists: &[(&str, Vec<Attr>)] = if attributes { &x.attributes } else { &[] };
    put_len(w, lists.len());
    for (role, list) in lists.iter().take(MAX_LIST) {
        put_name(w, role, Site::Other);
        put_attrs(w, list, 0);
    }
    put_len(w, x.attribute_counts.len());
    for (role, n) in x.attribute_counts.iter().take(MAX_LIST) {
        put_name(w, role, Site::Other);
        w.u64(*n);
    }
    match x.data {
        None => w.byte(0),
        Some((i, o)) => {
            w.byte(1);
            put_opt_u64(w, i);
            put_opt_u64(w, o);
        }
    }
    put_opt_str(w, x.message.as_deref());
    let mut detail = x.detail.clone();
    if !attributes && !x.attributes.is_empty() {
        // Said in the record itself: its attribute lists did not fit.
        let d = detail.get_or_insert_with(|| serde_json::json!({}));
        if let Some(m) = d.as_object_mut() {
            m.insert("attributes_omitted".into(), "record too large".into());
        }
    }
    let json = detail.map(|d| d.to_string());
    put_opt_str(w, json.as_deref());
    match x.summary {
        None => w.byte(0),
        Some(s) => {
            w.byte(1);
            w.u64(s.successes);
            w.u64(s.failures);
            w.u64(clock.ns(s.last.instant));
        }
    }
    match x.sessions {
        None => w.byte(0),
        Some(s) => {
            w.byte(1);
            for n in [
                s.opened_rw,
                s.opened_ro,
                s.closed,
                s.closed_all,
                s.open,
                s.max_open,
            ] {
                w.u64(n);
            }
            w.u64(clock.ns(s.last.instant));
        }
    }
}

/// Reads a record written by [`encode`]. `clock` is the reader's own. (The agent keeps a
/// [`Decoder`], which remembers what it read before.)
pub fn decode(bytes: &[u8], clock: &Clock) -> Result<Event, Malformed> {
    Decoder::new(*clock).decode(bytes)
}

/// The most bytes of a key identity or token that a [`Decoder`] remembers.
const MAX_REMEMBERED: usize = 512;
/// Key identities a [`Decoder`] remembers.
const IDENTITIES: usize = 8;
/// Names a [`Decoder`] remembers (a power of two).
const NAME_CACHE: usize = 256;

/// The agent's reader of one ring: records of one process repeat the same names, keys
/// and token, so what was read (and checked) once is taken again when the same bytes come
/// again: names without checking or hashing them, key identities and tokens without
/// allocating. A hit returns exactly what reading the bytes would: the bytes are compared
/// whole, and reading is deterministic.
#[derive(Debug)]
pub struct Decoder {
    clock: Clock,
    names: Box<[Option<&'static str>; NAME_CACHE]>,
    identities: Vec<(Vec<u8>, Arc<KeyIdentity>)>,
    next_identity: usize,
    token: Option<(Vec<u8>, Arc<TokenRef>)>,
}

impl Decoder {
    /// A reader whose times are read with `clock` (the agent's own).
    pub fn new(clock: Clock) -> Decoder {
        Decoder {
            clock,
            names: Box::new([None; NAME_CACHE]),
            identities: Vec::with_capacity(IDENTITIES),
            next_identity: 0,
            token: None,
        }
    }

    /// Reads a record written by [`Encoder::encode`].
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Event, Malformed> {
        let clock = self.clock;
        let mut r = Reader {
            b: bytes,
            at: 0,
            d: self,
        };
        r.record(bytes, &clock)
    }
}

impl Reader<'_, '_> {
    fn record(&mut self, bytes: &[u8], clock: &Clock) -> Result<Event, Malformed> {
        let r = self;
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
        let has = |bit| mask & bit != 0;
        let duration = if has(HAS_DURATION) {
            Some(r.u64()?)
        } else {
            None
        };
        let mut e = Event::new(started, duration, function, action, lifecycle, 0);
        e.outcome = outcome;
        e.flags = flags;
        e.thread_id = thread_id;
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
            e.token = Some(r.token()?);
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
}

/// Keeps what `format` writes in `cache`: the trail's JSON of a token or key identity the
/// decoder remembers, formatted once rather than for each record that names it.
fn keep_json(cache: &WireBytes, format: impl FnOnce(&mut Vec<u8>)) {
    let mut json = Vec::new();
    format(&mut json);
    cache.keep(&json);
}

struct Reader<'a, 'd> {
    b: &'a [u8],
    at: usize,
    d: &'d mut Decoder,
}

impl<'a> Reader<'a, '_> {
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

    /// A name: one of [`NAMES`] by its byte, or (byte 0) a string taken from the
    /// decoder's cache when the same bytes were a name before (no UTF-8 check, no hashing
    /// of the whole name), else checked and interned.
    fn name(&mut self) -> Result<&'static str, Malformed> {
        let id = self.byte()?;
        if id != 0 {
            return NAMES
                .get(id as usize - 1)
                .copied()
                .ok_or(Malformed("unknown name"));
        }
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        let slot = name_slot(b);
        if let Some(name) = self.d.names[slot]
            && name.as_bytes() == b
        {
            return Ok(name);
        }
        if n > MAX_NAME {
            return Err(Malformed("bad name"));
        }
        let name = intern(std::str::from_utf8(b).map_err(|_| Malformed("bad name"))?)?;
        self.d.names[slot] = Some(name);
        Ok(name)
    }

    /// Skips a string, returning nothing: for measuring a span of bytes.
    fn skip_str(&mut self) -> Result<(), Malformed> {
        let n = self.u16()? as usize;
        self.take(n).map(|_| ())
    }

    /// Skips a name that may be absent (checked when it is read).
    fn skip_opt_name(&mut self) -> Result<(), Malformed> {
        if self.flag()? && self.byte()? == 0 {
            self.skip_str()?;
        }
        Ok(())
    }

    fn skip_opt_str(&mut self) -> Result<(), Malformed> {
        if self.flag()? {
            self.skip_str()?;
        }
        Ok(())
    }

    /// The token: the one read last, when its bytes are the same.
    fn token(&mut self) -> Result<Arc<TokenRef>, Malformed> {
        let start = self.at;
        self.skip_str()?;
        self.skip_str()?;
        let raw = &self.b[start..self.at];
        if let Some((b, t)) = &self.d.token
            && b.as_slice() == raw
        {
            return Ok(t.clone());
        }
        self.at = start;
        let t = TokenRef::new(self.string()?, self.string()?);
        let remembered = raw.len() <= MAX_REMEMBERED;
        if remembered {
            keep_json(&t.json, |out| crate::sink::json::token(&t, out));
        }
        let t = Arc::new(t);
        if remembered {
            let (b, kept) = self.d.token.get_or_insert_with(|| (Vec::new(), t.clone()));
            b.clear();
            b.extend_from_slice(raw);
            *kept = t.clone();
        }
        Ok(t)
    }

    /// A key's identity (after its presence byte): one read before, when its bytes are
    /// the same.
    fn identity(&mut self) -> Result<Arc<KeyIdentity>, Malformed> {
        let start = self.at;
        self.skip_opt_name()?;
        self.skip_opt_name()?;
        if self.flag()? {
            self.take(8)?;
        }
        self.skip_opt_str()?;
        self.skip_opt_str()?;
        self.skip_opt_str()?;
        self.byte()?;
        self.skip_opt_str()?;
        let raw = &self.b[start..self.at];
        if let Some((_, id)) = self.d.identities.iter().find(|(b, _)| b.as_slice() == raw) {
            return Ok(id.clone());
        }
        self.at = start;
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
        let remembered = raw.len() <= MAX_REMEMBERED;
        if remembered {
            keep_json(&id.json, |out| crate::sink::json::identity(&id, out));
        }
        let id = Arc::new(id);
        if remembered {
            let d = &mut *self.d;
            if d.identities.len() < IDENTITIES {
                d.identities.push((raw.to_vec(), id.clone()));
            } else {
                let (b, kept) = &mut d.identities[d.next_identity % IDENTITIES];
                b.clear();
                b.extend_from_slice(raw);
                *kept = id.clone();
                d.next_identity = d.next_identity.wrapping_add(1);
            }
        }
        Ok(id)
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
            Some(self.identity()?)
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
/// The most names the processes of one user (uid) may add to the table, across all their
/// connections: more than the library's own names, and a small part of [`MAX_NAMES`], so
/// that a user sending novel names, however many times it connects, fills its quota, not
/// the table every other user's records need.
pub const NAMES_PER_UID: usize = 1024;

std::thread_local! {
    /// The uid of the process this thread serves (the agent serves each on its own
    /// thread): whose quota the names it adds count against.
    static SERVING: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Names added from now on by this thread (serving one process) count against the quota
/// of `uid`, the process's user as the kernel gives it.
pub fn names_from(uid: u32) {
    let _ = SERVING.try_with(|s| s.set(Some(uid)));
}

/// A name's place in a [`Decoder`]'s cache: from its length and first and last bytes.
#[inline]
fn name_slot(b: &[u8]) -> usize {
    let n = b.len();
    let (first, last) = if n >= 8 {
        (
            u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(b[n - 8..].try_into().unwrap_or_default()),
        )
    } else {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(b);
        (u64::from_le_bytes(a), 0)
    };
    let h = (first ^ last.rotate_left(29) ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> (64 - NAME_CACHE.trailing_zeros())) as usize
}

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
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    /// The names, and how many each uid added.
    type Table = (HashSet<&'static str>, HashMap<u32, usize>);
    static NAMES: Mutex<Option<Table>> = Mutex::new(None);
    if s.len() > MAX_NAME
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err(Malformed("bad name"));
    }
    let mut guard = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let (names, added) = guard.get_or_insert_with(Default::default);
    if let Some(n) = names.get(s) {
        return Ok(n);
    }
    if names.len() >= MAX_NAMES {
        return Err(Malformed("too many distinct names"));
    }
    // A thread that serves no process (tests, tools) counts as one user of its own.
    let uid = SERVING
        .try_with(|u| u.get())
        .ok()
        .flatten()
        .unwrap_or(u32::MAX);
    let count = added.entry(uid).or_insert(0);
    if *count >= NAMES_PER_UID {
        return Err(Malformed(
            "too many distinct names from this user (its quota of new names is spent)",
        ));
    }
    *count += 1;
    let n: &'static str = Box::leak(s.to_owned().into_boxed_str());
    names.insert(n);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Flag;
    use cryptoki_sys::CK_RV;

    fn sample() -> Event {
        let mut e = Event::call(Started::now(), "C_Sign", "sign", Lifecycle::Use, 0);
        e.thread_id = 42;
        e.slot_id = Some(1);
        e.session = Some(7);
        e.session_state = Some("rw_user");
        e.token = Some(Arc::new(TokenRef::new("t \"1\"".into(), "abc".into())));
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
        let now = crate::audit::event::WallClock::now();
        crate::sink::json::encode(e, &origin, 1, &now, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    /// Records of many shapes, started 1.000123 ms apart from `base` (host nanoseconds):
    /// escapes at every place of strings of every length a word test treats apart, two
    /// keys with every identity field, names from the table and names sent as strings.
    fn fixture_events(clock: &Clock, base: u64) -> Vec<Event> {
        let mut events = vec![sample()];
        let mut id = KeyIdentity::default();
        id.class = Some("CKO_SECRET_KEY");
        id.key_type = Some("CKK_GENERIC_SECRET");
        id.label = Some("hmac-key".into());
        id.id_hex = Some("0102".into());
        let mut sign = Event::call(Started::now(), "C_Sign", "sign", Lifecycle::Use, 0);
        sign.session = Some(1);
        sign.slot_id = Some(123_456);
        sign.session_state = Some("rw_user");
        sign.mechanism = Some(Mechanism::bare(0x251));
        sign.key("key", 2, Some(Arc::new(id)));
        // The sample's operation, of one part of 64 bytes (examples/common's record).
        sign.operation = events[0].operation.map(|o| OperationInfo {
            parts: 1,
            in_len: 64,
            ..o
        });
        events.push(sign);
        let specials = ['"', '\\', '\n', '\u{1}', '\u{1f}', 'é'];
        for len in 1..=17usize {
            let c = specials[len % specials.len()];
            let text = |at: usize| -> String {
                (0..len)
                    .map(|i| if i == at { c } else { (b'a' + i as u8) as char })
                    .collect()
            };
            let mut id = KeyIdentity::default();
            id.class = Some("CKO_PRIVATE_KEY");
            id.key_type = Some("CKK_EC");
            id.bits = Some(256 + len as u64);
            id.id_hex = Some("ab".repeat(len));
            id.label = Some(text(len - 1));
            id.unique_id = Some(text(len / 2));
            id.token = Some(len % 2 == 0);
            id.public_sha256 = Some(text(0));
            let mut e = Event::call(
                Started::now(),
                "C_UnwrapKey",
                "key_unwrap",
                Lifecycle::Import,
                if len % 3 == 0 {
                    0xA0
                } else {
                    0x8000_0000 + len as u64
                },
            );
            e.thread_id = 1000 + len as u64;
            e.slot_id = Some(len as u64);
            e.token = Some(Arc::new(TokenRef::new(text(len / 3), text(len))));
            e.session = Some(len as u64);
            e.session_state = Some(if len % 2 == 0 { "rw_so" } else { "ro_public" });
            e.user_type = (len % 4 == 0).then_some(len as u64 % 3);
            e.mechanism = Some(Mechanism {
                type_: 0x1087 + len as u64,
                params: Params::Oaep {
                    hash: 0x250,
                    mgf: len as u64,
                },
            });
            e.key("unwrapping", 3, Some(Arc::new(id.clone())));
            e.key("key", len as u64, (len % 5 != 0).then(|| Arc::new(id)));
            e.labels = Some(Arc::new(vec![
                (text(len - 1), text(0)),
                ("app".into(), text(len / 2)),
            ]));
            if len % 2 == 1 {
                e.flag(Flag::PlaintextKeyMaterial);
                e.flag(Flag::Intent);
            }
            events.push(e);
        }
        let mut own = Event::audit(
            "client_note",
            "a message with \"quotes\" and a\ttab".into(),
            serde_json::json!({"reason": "r \\ x", "n": 3, "list": [1, "two", null]}),
        );
        own.outcome = Outcome::Failure;
        events.push(own);
        for (i, e) in events.iter_mut().enumerate() {
            e.started = Started {
                instant: clock.instant(base + i as u64 * 1_000_123),
            };
            e.duration_ns = e.duration_ns.map(|_| 12_345 + i as u64);
        }
        events
    }

    /// One line as the agent formats a record read from a ring (sequence `seq`), with its
    /// `@timestamp` apart.
    fn fixture_line(
        e: &Event,
        origin: &crate::sink::json::Origin,
        seq: u64,
        now: &crate::audit::event::WallClock,
    ) -> (String, String) {
        let mut out = Vec::new();
        crate::sink::json::encode(e, origin, seq, now, &mut out);
        let line = String::from_utf8(out).expect("utf8");
        let (head, rest) = line.split_at("{\"@timestamp\":\"".len());
        let (stamp, rest) = rest.split_at("2026-11-28T18:13:40.297833Z".len());
        (stamp.to_owned(), format!("{head}{rest}"))
    }

    /// The trail's bytes for records read from a ring are those the agent wrote before
    /// its cost per record was cut: tests/fixtures/agent_lines.txt was written by this
    /// test's body run on that code (commit ffeeccf), which dated each record with the
    /// clocks read then, so the lines there leave the `@timestamp` out; each timestamp is
    /// checked here against humantime, as now minus the time since the record started.
    /// Each record is read twice from one reader: the second time from what it remembers.
    #[test]
    fn lines_of_records_read_from_a_ring_are_what_they_were() {
        let clock = Clock::now();
        let base = clock.ns.saturating_sub(3_000_000_000);
        let events = fixture_events(&clock, base);
        let mut origin = crate::sink::json::Origin::observed(
            4242,
            1000,
            1001,
            Some("app".into()),
            Some("/usr/bin/app".into()),
            Some("svc".into()),
        );
        origin.user.name = Some("alice".into());
        origin.host.name = Some("host-1".into());
        let wall = std::time::UNIX_EPOCH + Duration::new(1_798_761_599, 999_999_999);
        let now = crate::audit::event::WallClock {
            instant: clock.instant,
            wall,
        };
        let mut decoder = Decoder::new(clock);
        let mut lines = String::new();
        let mut seq = 0;
        for _ in 0..2 {
            for e in &events {
                let mut buf = Vec::new();
                encode(e, &clock, &mut buf);
                let back = decoder.decode(&buf).expect("decodes");
                seq += 1;
                let (stamp, line) = fixture_line(&back, &origin, seq, &now);
                let ago = clock.instant.duration_since(e.started.instant);
                let expected = humantime::format_rfc3339_micros(wall - ago).to_string();
                assert_eq!(stamp, expected, "record {seq}");
                lines.push_str(&line);
            }
        }
        let fixture = include_str!("../../tests/fixtures/agent_lines.txt");
        for (i, (got, want)) in lines.lines().zip(fixture.lines()).enumerate() {
            assert_eq!(got, want, "line {}", i + 1);
        }
        assert_eq!(lines.lines().count(), fixture.lines().count());
        assert_eq!(lines.lines().count(), 2 * 20);
    }

    /// The record's JSON after its `@timestamp`. The timestamp is the start instant read
    /// against the wall clock at formatting time, so two formattings of one instant may
    /// fall on either side of a microsecond; tests compare the instants themselves.
    fn json_untimed(e: &Event) -> String {
        let s = json(e);
        match s.split_once("\"event\"") {
            Some((_, rest)) => rest.to_owned(),
            None => s,
        }
    }

    #[test]
    fn a_record_crosses_unchanged() {
        let clock = Clock::now();
        let e = sample();
        let mut buf = Vec::new();
        encode(&e, &clock, &mut buf);
        let back = decode(&buf, &clock).expect("decodes");
        assert_eq!(json_untimed(&back), json_untimed(&e));
    }

    /// `buf` with one to three bytes changed at random.
    fn corrupted(buf: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut b = buf.to_vec();
        for _ in 0..rng.usize(1..4) {
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
        }
        b
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
            let b = corrupted(&buf, &mut rng);
            let _ = decode(&b, &clock);
            let junk: Vec<u8> = (0..rng.usize(..300)).map(|_| rng.u8(..)).collect();
            let _ = decode(&junk, &clock);
        }
    }

    #[test]
    fn a_decoder_that_remembers_reads_exactly_what_a_fresh_one_reads() {
        let clock = Clock::now();
        let mut buf = Vec::new();
        encode(&sample(), &clock, &mut buf);
        let json = json_untimed;
        let mut kept = Decoder::new(clock);
        let first = kept.decode(&buf).expect("decodes");
        let again = kept.decode(&buf).expect("decodes again");
        assert_eq!(json(&again), json(&first));
        // Corrupted records after good ones: what the remembered names, keys and token
        // would answer must never differ from a fresh reading.
        let mut rng = fastrand::Rng::with_seed(21);
        for _ in 0..20_000 {
            let b = corrupted(&buf, &mut rng);
            let fresh = decode(&b, &clock);
            let remembered = kept.decode(&b);
            match (&fresh, &remembered) {
                (Ok(f), Ok(r)) => assert_eq!(json(r), json(f)),
                (Err(f), Err(r)) => assert_eq!(r, f),
                _ => panic!("fresh {fresh:?} but remembered {remembered:?}"),
            }
            if rng.bool() {
                let _ = kept.decode(&buf);
            }
        }
    }

    #[test]
    fn lifecycle_numbers_are_their_place() {
        for (i, l) in Lifecycle::ALL.iter().enumerate() {
            assert_eq!(lifecycle_number(*l) as usize, i);
            assert_eq!(lifecycle_of(i as u8), Some(*l));
        }
        let audit = lifecycle_number(Lifecycle::Audit);
        assert_eq!(audit as usize, Lifecycle::ALL.len());
        assert_eq!(lifecycle_of(audit), Some(Lifecycle::Audit));
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
    fn the_name_table_is_sound() {
        assert!(NAMES.len() <= 255);
        let distinct: std::collections::HashSet<_> = NAMES.iter().collect();
        assert_eq!(distinct.len(), NAMES.len(), "no name twice");
        for n in NAMES {
            assert!(intern(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn names_outside_the_table_cross_as_strings() {
        let clock = Clock::now();
        let mut e = sample();
        e.function = "C_VendorSpecific";
        e.session_state = Some("vendor_state");
        e.keys.clear();
        let mut id = KeyIdentity::default();
        id.class = Some("CKO_VENDOR_DEFINED_1");
        id.key_type = Some("CKK_AES");
        e.key("vendor_role", 9, Some(Arc::new(id)));
        let mut buf = Vec::new();
        encode(&e, &clock, &mut buf);
        let back = decode(&buf, &clock).expect("decodes");
        assert_eq!(json_untimed(&back), json_untimed(&e));
        assert_eq!(back.function, "C_VendorSpecific");
    }

    #[test]
    fn a_name_byte_outside_the_table_is_malformed() {
        let clock = Clock::now();
        let mut buf = Vec::new();
        encode(&sample(), &clock, &mut buf);
        // The function's byte follows the 22 bytes of the fixed head.
        assert_eq!(
            buf[22] as usize,
            NAMES.iter().position(|n| *n == "C_Sign").expect("C_Sign") + 1
        );
        for id in [NAMES.len() as u8 + 1, 255] {
            buf[22] = id;
            assert_eq!(decode(&buf, &clock).err(), Some(Malformed("unknown name")));
        }
    }

    #[test]
    fn a_record_written_in_place_reads_as_one_written_whole() {
        let clock = Clock::now();
        let (e, mut whole) = (sample(), Vec::new());
        encode(&e, &clock, &mut whole);
        let mut slot = vec![0u8; whole.len() + 7];
        assert_eq!(encode_to(&e, &clock, &mut slot), whole.len());
        assert_eq!(&slot[..whole.len()], &whole[..]);
        // Too small: says how large the record is, and writes nothing past the end.
        let mut small = vec![0u8; whole.len() - 1];
        assert_eq!(encode_to(&e, &clock, &mut small), whole.len());
    }

    #[test]
    fn identities_kept_encoded_read_as_encoded_afresh() {
        let clock = Clock::now();
        let with_label = |label: &str| {
            let mut e = sample();
            e.keys.clear();
            let mut id = KeyIdentity::default();
            id.class = Some("CKO_SECRET_KEY");
            id.label = Some(label.into());
            e.key("key", 9, Some(Arc::new(id)));
            e
        };
        let long = "l".repeat(300);
        let events: Vec<Event> = ["a", "b", "c", "a", long.as_str()]
            .iter()
            .map(|l| with_label(l))
            .collect();
        for round in 0..3 {
            for e in events.iter().chain(events.iter().rev()) {
                let (mut first, mut again) = (Vec::new(), Vec::new());
                encode(e, &clock, &mut first);
                encode(e, &clock, &mut again);
                assert_eq!(first, again, "round {round}");
                let back = decode(&first, &clock).expect("decodes");
                let label = |e: &Event| e.keys[0].identity.as_ref().and_then(|i| i.label.clone());
                assert_eq!(label(&back), label(e));
            }
        }
        // A copy of an identity encoded before, then changed, reads as changed.
        let mut e = events[0].clone();
        let mut id = KeyIdentity::clone(e.keys[0].identity.as_deref().expect("identity"));
        id.label = Some("changed".into());
        e.keys[0].identity = Some(Arc::new(id));
        let mut buf = Vec::new();
        encode(&e, &clock, &mut buf);
        let back = decode(&buf, &clock).expect("decodes");
        let label = back.keys[0].identity.as_ref().and_then(|i| i.label.clone());
        assert_eq!(label.as_deref(), Some("changed"));
    }

    /// An operation's record encoded from where it lies gives the bytes of the [`Event`]
    /// the general path builds for it: succeeded, failed, abandoned (no return value), with
    /// and without a mechanism, parameters and a key identity.
    #[test]
    fn an_operation_record_encodes_as_its_event() {
        let clock = Clock::now();
        let token = Arc::new(TokenRef::new("token \"a\"".into(), "0123".into()));
        let mut id = KeyIdentity::default();
        id.class = Some("secret_key");
        id.key_type = Some("generic_secret");
        id.bits = Some(256);
        id.id_hex = Some("0a0b".into());
        id.label = Some("hmac key".into());
        id.token = Some(false);
        let gcm = Mechanism {
            type_: 0x1087,
            params: Params::Gcm {
                iv_len: 12,
                aad_len: 5,
                tag_bits: 128,
            },
        };
        let hmac = Mechanism {
            type_: 0x251,
            params: Params::None,
        };
        // (rv, outcome, mechanism, key identity known, end, function)
        type Case<'a> = (
            Option<CK_RV>,
            Outcome,
            Option<&'a Mechanism>,
            bool,
            &'static str,
            &'static str,
        );
        let cases: [Case<'_>; 4] = [
            (
                Some(0),
                Outcome::Success,
                Some(&hmac),
                true,
                "completed",
                "C_Sign",
            ),
            (
                Some(0x30),
                Outcome::Failure,
                Some(&gcm),
                false,
                "failed",
                "C_EncryptFinal",
            ),
            (
                None,
                Outcome::Unknown,
                None,
                true,
                "abandoned",
                "C_CloseSession",
            ),
            (
                Some(0),
                Outcome::Success,
                Some(&gcm),
                true,
                "completed",
                "C_MadeUp",
            ),
        ];
        for (rv, outcome, mechanism, known, end, function) in cases {
            let key = KeyRef {
                role: "key",
                handle: 77,
                identity: known.then(|| Arc::new(id.clone())),
            };
            let info = OperationInfo {
                kind: "sign",
                init: "C_SignInit",
                parts: 2,
                in_len: 128,
                out_len: 32,
                end,
            };
            let started = Started::now();
            let r = OpRecord {
                started,
                duration_ns: 4321,
                function,
                action: "sign",
                outcome,
                rv,
                thread_id: 99,
                slot: 3,
                session: 5,
                state: "rw_user",
                token: &token,
                mechanism,
                info: &info,
                key: &key,
            };
            let mut e = Event::call(started, function, "sign", Lifecycle::Use, rv.unwrap_or(0));
            e.duration_ns = Some(4321);
            e.rv = rv;
            e.outcome = outcome;
            e.thread_id = 99;
            e.slot_id = Some(3);
            e.session = Some(5);
            e.session_state = Some("rw_user");
            e.token = Some(Arc::clone(&token));
            e.mechanism = mechanism.cloned();
            e.keys.push(key.clone());
            e.operation = Some(info);
            let (mut a, mut b) = ([0u8; 512], [0u8; 512]);
            let n = encode_op_to(&r, &clock, &mut a);
            assert_eq!(n, encode_to(&e, &clock, &mut b), "{end}");
            assert_eq!(a[..n], b[..n], "{end}");
            let back = decode(&a[..n], &clock).expect("decodes");
            assert_eq!(back.started.instant, e.started.instant, "{end}");
            assert_eq!(json_untimed(&back), json_untimed(&e), "{end}");
        }
    }

    /// A thread's kept operation record gives the bytes a fresh encoding gives, over a
    /// random walk through operations that differ in one field or another (a token or
    /// identity of the same content at another address included), and is used when the
    /// operation is the same.
    #[test]
    fn a_kept_operation_record_encodes_as_a_fresh_one() {
        let clock = Clock::now();
        let token = |label: &str| Arc::new(TokenRef::new(label.into(), "0123".into()));
        let tokens = [token("a"), token("a"), token("b")];
        let identity = |label: &str| {
            let mut id = KeyIdentity::default();
            id.class = Some("secret_key");
            id.label = Some(label.into());
            Some(Arc::new(id))
        };
        let identities = [identity("k"), identity("k"), identity("longer key"), None];
        let mechanisms = [
            Some(Mechanism {
                type_: 0x251,
                params: Params::None,
            }),
            Some(Mechanism {
                type_: 0x1087,
                params: Params::Gcm {
                    iv_len: 12,
                    aad_len: 0,
                    tag_bits: 128,
                },
            }),
            None,
        ];
        let names = ["C_Sign", "C_SignFinal", "C_MadeUpName"];
        let ends = ["completed", "failed", "abandoned"];
        let states = ["rw_user", "ro_public"];
        let mut rng = fastrand::Rng::with_seed(9);
        let mut kept = OpKept::new();
        let (mut a, mut b) = ([0u8; 512], [0u8; 512]);
        let mut hits = 0;
        for i in 0..20_000 {
            // Mostly the same operation again, as an application signs in a loop; else one
            // of its fields (0-10) changes, so that each comparison is what tells.
            let vary = if rng.u8(..4) == 0 {
                rng.u8(..11)
            } else {
                u8::MAX
            };
            let pick = |rng: &mut fastrand::Rng, field: u8, n: usize| {
                if vary == field { rng.usize(..n) } else { 0 }
            };
            let key = KeyRef {
                role: if pick(&mut rng, 0, 2) == 0 {
                    "key"
                } else {
                    "other_role"
                },
                handle: 7 + pick(&mut rng, 1, 2) as u64,
                identity: identities[pick(&mut rng, 2, identities.len())].clone(),
            };
            let info = OperationInfo {
                kind: "sign",
                init: "C_SignInit",
                parts: rng.u64(..5),
                in_len: rng.u64(..),
                out_len: rng.u64(..),
                end: ends[pick(&mut rng, 3, ends.len())],
            };
            let rv = match pick(&mut rng, 4, 3) {
                0 => Some(0),
                1 => Some(rng.u64(..)),
                _ => None,
            };
            let r = OpRecord {
                started: Started::now(),
                duration_ns: rng.u64(..),
                function: names[pick(&mut rng, 5, names.len())],
                action: "sign",
                outcome: [Outcome::Success, Outcome::Failure, Outcome::Unknown][rng.usize(..3)],
                rv,
                thread_id: rng.u64(..),
                slot: pick(&mut rng, 6, 2) as u64,
                session: 5 + pick(&mut rng, 7, 2) as u64,
                state: states[pick(&mut rng, 8, states.len())],
                token: &tokens[pick(&mut rng, 9, tokens.len())],
                mechanism: mechanisms[pick(&mut rng, 10, mechanisms.len())].as_ref(),
                info: &info,
                key: &key,
            };
            // A mark where the kept copy's version byte is: it shows in the output only
            // when the record was copied from there.
            kept.bytes[0] = 0xEE;
            let n = encode_op_kept(&r, &clock, &mut a, &mut kept);
            if a[0] == 0xEE {
                hits += 1;
                a[0] = VERSION;
            }
            kept.bytes[0] = VERSION;
            assert_eq!(n, encode_op_to(&r, &clock, &mut b), "record {i}");
            assert_eq!(a[..n], b[..n], "record {i}");
        }
        assert!(hits > 10_000, "{hits} records copied");
        // A slot too small for the record: its length, and nothing written past the end.
        let mut small = [0u8; 8];
        let key = KeyRef {
            role: "key",
            handle: 1,
            identity: None,
        };
        let info = OperationInfo {
            kind: "sign",
            init: "C_SignInit",
            parts: 1,
            in_len: 1,
            out_len: 1,
            end: "completed",
        };
        let r = OpRecord {
            started: Started::now(),
            duration_ns: 1,
            function: "C_Sign",
            action: "sign",
            outcome: Outcome::Success,
            rv: Some(0),
            thread_id: 1,
            slot: 0,
            session: 1,
            state: "rw_user",
            token: &tokens[0],
            mechanism: None,
            info: &info,
            key: &key,
        };
        let full = encode_op_kept(&r, &clock, &mut a, &mut kept);
        assert_eq!(encode_op_kept(&r, &clock, &mut small, &mut kept), full);
    }

    #[test]
    fn names_are_checked() {
        assert!(intern("C_Sign").is_ok());
        assert!(intern("a\"b").is_err());
        assert!(intern(&"x".repeat(65)).is_err());
    }
}
