//! Key identity: which key a handle stands for, by its non-secret attributes.
//!
//! Handles are per-process numbers that get reused; an auditor needs the key's class,
//! type, size, CKA_ID, CKA_LABEL and CKA_UNIQUE_ID. They are taken from the creation
//! template when keytrail sees the key made, or looked up once through the module with
//! safe attributes only, and cached per handle until the object is destroyed or the
//! session that owns it ends.

use crate::backend::Backend;
use crate::entry::args::Template;
use cryptoki_sys::*;
use parking_lot::Mutex;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// A key's non-secret identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyIdentity {
    /// Object class name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<&'static str>,
    /// Key type name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<&'static str>,
    /// Size in bits, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<u64>,
    /// CKA_ID in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_hex: Option<String>,
    /// CKA_LABEL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// CKA_UNIQUE_ID (PKCS#11 3.0 modules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_id: Option<String>,
    /// Whether it is a token (persistent) object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<bool>,
    /// SHA-256 of the public key material (CKA_EC_POINT or CKA_MODULUS), for public keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_sha256: Option<String>,
    #[serde(skip)]
    class_raw: Option<CK_OBJECT_CLASS>,
    /// Its bytes in the agent's record layout, once a record has carried it.
    #[serde(skip)]
    pub wire: WireBytes,
    /// Its fields in a trail's `key` object, once the agent's reader of a ring has
    /// formatted them (`sink::json::identity`).
    #[serde(skip)]
    pub json: WireBytes,
}

/// A key identity's bytes in one encoding (the agent's record layout, the trail's JSON),
/// kept once encoded: a key's records name it again and again, and a shared identity does
/// not change. A cache, not a field: empty in a clone (a copy that is then changed must not
/// carry the original's bytes), and any two are equal.
#[derive(Default)]
pub struct WireBytes(OnceLock<Box<[u8]>>);

impl WireBytes {
    /// The bytes, when encoded already.
    #[inline(always)]
    pub fn get(&self) -> Option<&[u8]> {
        self.0.get().map(|b| &**b)
    }

    /// Keeps `bytes` (the first ones kept stay: every encoding of an identity is the same).
    pub fn keep(&self, bytes: &[u8]) {
        let _ = self.0.set(bytes.into());
    }
}

impl Clone for WireBytes {
    fn clone(&self) -> Self {
        WireBytes::default()
    }
}

impl PartialEq for WireBytes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for WireBytes {}

impl std::fmt::Debug for WireBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireBytes")
    }
}

impl KeyIdentity {
    /// The raw class, for attribute policy decisions.
    pub fn class_raw(&self) -> Option<CK_OBJECT_CLASS> {
        self.class_raw
    }

    fn set_class(&mut self, class: CK_OBJECT_CLASS) {
        self.class_raw = Some(class);
        self.class = crate::names::object_class(class);
    }

    /// The identity stated by a creation template the module accepted, completed with
    /// what the mechanism implies (`default_class`, `default_type`). The class and key
    /// type count only when every entry of them agrees; of other attributes given twice,
    /// the last counts, as a module applying the template in order keeps it.
    pub fn from_template(
        t: &Template<'_>,
        default_class: Option<CK_OBJECT_CLASS>,
        default_type: Option<CK_KEY_TYPE>,
    ) -> KeyIdentity {
        let mut k = KeyIdentity::default();
        if let Some(c) = t.agreed_ulong(CKA_CLASS).or(default_class) {
            k.set_class(c);
        }
        k.key_type = t
            .agreed_ulong(CKA_KEY_TYPE)
            .or(default_type)
            .and_then(crate::names::key_type);
        k.bits = t
            .find(CKA_VALUE_LEN)
            .and_then(|a| a.ulong())
            .map(|n| n.saturating_mul(8))
            .or_else(|| t.find(CKA_MODULUS_BITS).and_then(|a| a.ulong()))
            // A secret key imported by value: its size is its value's length (the value
            // itself is never kept).
            .or_else(|| {
                (k.class_raw == Some(CKO_SECRET_KEY))
                    .then(|| t.find(CKA_VALUE).and_then(|a| a.bytes()))
                    .flatten()
                    .map(|v| (v.len() as u64).saturating_mul(8))
            });
        k.id_hex = t.find(CKA_ID).and_then(|a| a.bytes()).map(hex::encode);
        k.label = t
            .find(CKA_LABEL)
            .and_then(|a| a.bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned());
        k.token = t.find(CKA_TOKEN).and_then(|a| a.bool());
        if k.class_raw == Some(CKO_PUBLIC_KEY) {
            k.public_sha256 = [CKA_EC_POINT, CKA_MODULUS]
                .into_iter()
                .find_map(|type_| t.find(type_).and_then(|a| a.bytes()))
                .map(super::attrs::fingerprint);
        }
        k
    }

    /// Takes what a copy keeps from its source where the copy's template is silent.
    pub fn inherit(&mut self, source: &KeyIdentity) {
        self.merge_missing(source.clone());
        // The module gives a copy its own CKA_UNIQUE_ID.
        self.unique_id = None;
    }

    fn merge_missing(&mut self, other: KeyIdentity) {
        if self.class_raw.is_none() {
            self.class_raw = other.class_raw;
            self.class = other.class;
        }
        self.key_type = self.key_type.or(other.key_type);
        self.bits = self.bits.or(other.bits);
        self.id_hex = self.id_hex.take().or(other.id_hex);
        self.label = self.label.take().or(other.label);
        self.unique_id = self.unique_id.take().or(other.unique_id);
        self.token = self.token.or(other.token);
        self.public_sha256 = self.public_sha256.take().or(other.public_sha256);
    }
}

/// Safe attributes read for a look-up, with the buffer size offered for each.
const LOOKUP: [(CK_ATTRIBUTE_TYPE, usize); 8] = [
    (CKA_CLASS, 8),
    (CKA_KEY_TYPE, 8),
    (CKA_ID, 256),
    (CKA_LABEL, 256),
    (CKA_TOKEN, 1),
    (CKA_VALUE_LEN, 8),
    (CKA_MODULUS_BITS, 8),
    (CKA_UNIQUE_ID, 128),
];

/// Looks a key's identity up through the module.
pub fn lookup(
    backend: &Backend,
    session: CK_SESSION_HANDLE,
    handle: CK_OBJECT_HANDLE,
) -> Option<KeyIdentity> {
    let mut k = lookup_missing(backend, session, handle, KeyIdentity::default())?;
    if k.class_raw == Some(CKO_PUBLIC_KEY) && k.public_sha256.is_none() {
        k.public_sha256 = public_fingerprint(backend, session, handle);
    }
    Some(k)
}

/// Completes `known` with what the module says of the attributes it lacks, in one
/// C_GetAttributeValue. A key just created needs little: its template already stated most
/// of its identity (and the module, accepting it, agreed), so only what the module assigns
/// or defaults is read — typically CKA_UNIQUE_ID, and CKA_ID or CKA_LABEL when the template
/// left them out.
fn lookup_missing(
    backend: &Backend,
    session: CK_SESSION_HANDLE,
    handle: CK_OBJECT_HANDLE,
    mut k: KeyIdentity,
) -> Option<KeyIdentity> {
    // Only attributes the key can have: a size attribute of its class or type, and
    // CKA_UNIQUE_ID from modules of PKCS#11 3.0 or later.
    let secret = k.class_raw.is_none_or(|c| c == CKO_SECRET_KEY);
    let rsa = k.key_type.is_none_or(|t| t == "CKK_RSA");
    let missing = |t: CK_ATTRIBUTE_TYPE| match t {
        CKA_CLASS => k.class_raw.is_none(),
        CKA_KEY_TYPE => k.key_type.is_none(),
        CKA_ID => k.id_hex.is_none(),
        CKA_LABEL => k.label.is_none(),
        CKA_TOKEN => k.token.is_none(),
        CKA_VALUE_LEN => k.bits.is_none() && secret,
        CKA_MODULUS_BITS => k.bits.is_none() && rsa,
        _ => k.unique_id.is_none() && backend.v3_flags.is_some(),
    };
    let mut want = arrayvec::ArrayVec::<(CK_ATTRIBUTE_TYPE, usize), 8>::new();
    for a in LOOKUP {
        if missing(a.0) {
            want.push(a);
        }
    }
    if want.is_empty() {
        return Some(k);
    }
    let v = backend.read_attributes(session, handle, &want);
    let value = |t: CK_ATTRIBUTE_TYPE| {
        want.iter()
            .position(|(w, _)| *w == t)
            .and_then(|i| v[i].as_deref())
    };
    let ulong = |t| {
        value(t)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_ne_bytes)
    };
    let text = |t| value(t).map(|b| String::from_utf8_lossy(b).into_owned());
    if k.class_raw.is_none() {
        k.set_class(ulong(CKA_CLASS)?);
    }
    if k.key_type.is_none() {
        k.key_type = ulong(CKA_KEY_TYPE).and_then(crate::names::key_type);
    }
    if k.id_hex.is_none() {
        k.id_hex = value(CKA_ID).map(hex::encode);
    }
    if k.label.is_none() {
        k.label = text(CKA_LABEL);
    }
    if k.token.is_none() {
        k.token = value(CKA_TOKEN).map(|b| b.first().is_some_and(|x| *x != 0));
    }
    if k.bits.is_none() {
        k.bits = ulong(CKA_VALUE_LEN)
            .map(|n| n.saturating_mul(8))
            .or(ulong(CKA_MODULUS_BITS));
    }
    if k.unique_id.is_none() {
        k.unique_id = text(CKA_UNIQUE_ID);
    }
    Some(k)
}

/// SHA-256 of a public key's material, read through the module.
fn public_fingerprint(
    backend: &Backend,
    session: CK_SESSION_HANDLE,
    handle: CK_OBJECT_HANDLE,
) -> Option<String> {
    backend
        .read_attributes(
            session,
            handle,
            &[(CKA_EC_POINT, 1024), (CKA_MODULUS, 1024)],
        )
        .into_iter()
        .flatten()
        .next()
        .map(|b| super::attrs::fingerprint(&b))
}

#[derive(Default)]
struct Entry {
    identity: Option<Arc<KeyIdentity>>,
    /// The session that owns a session object; `None` for token objects.
    owner: Option<CK_SESSION_HANDLE>,
    used: bool,
}

/// The cache's maps, under one lock.
#[derive(Default)]
struct Cache {
    entries: HashMap<CK_OBJECT_HANDLE, Entry>,
    /// The handles each session owns (the entries whose `owner` it is): closing a session
    /// forgets its objects without walking every cached key.
    owned: HashMap<CK_SESSION_HANDLE, HashSet<CK_OBJECT_HANDLE>>,
}

impl Cache {
    /// Sets the owner of an entry, keeping the index of owned handles in step.
    fn set_owner(&mut self, handle: CK_OBJECT_HANDLE, owner: Option<CK_SESSION_HANDLE>) {
        let e = self.entries.entry(handle).or_default();
        let before = std::mem::replace(&mut e.owner, owner);
        if before == owner {
            return;
        }
        if let Some(s) = before {
            if let Some(set) = self.owned.get_mut(&s) {
                set.remove(&handle);
            }
        }
        if let Some(s) = owner {
            self.owned.entry(s).or_default().insert(handle);
        }
    }

    /// Forgets an entry (and its place in the index).
    fn remove(&mut self, handle: CK_OBJECT_HANDLE) {
        if let Some(Entry { owner: Some(s), .. }) = self.entries.remove(&handle) {
            if let Some(set) = self.owned.get_mut(&s) {
                // The session's (empty) set stays until it closes: a session that creates
                // and destroys keys in turn does not allocate it again each time.
                set.remove(&handle);
            }
        }
    }

    /// Forgets the objects a closed session owned.
    fn session_closed(&mut self, session: CK_SESSION_HANDLE) {
        for handle in self.owned.remove(&session).into_iter().flatten() {
            self.entries.remove(&handle);
        }
    }
}

/// The per-process cache of key identities.
#[derive(Default)]
pub struct KeyCache {
    cache: Mutex<Cache>,
}

impl KeyCache {
    /// The cached identity of a handle, looking it up through the module (when `lookups`
    /// is on) on a miss.
    pub fn get(
        &self,
        backend: &Backend,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
        lookups: bool,
    ) -> Option<Arc<KeyIdentity>> {
        if let Some(e) = self.lock().entries.get(&handle) {
            if let Some(id) = &e.identity {
                return Some(id.clone());
            }
        }
        if !lookups {
            return None;
        }
        self.look_up(backend, session, handle)
    }

    /// [`KeyCache::get`] of a key not in the cache (once per key): out of line.
    #[cold]
    #[inline(never)]
    fn look_up(
        &self,
        backend: &Backend,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
    ) -> Option<Arc<KeyIdentity>> {
        let found = Arc::new(lookup(backend, session, handle)?);
        // Only a key known to be a token object outlives the session: an unknown one is
        // tied to the session that showed it, so that closing that session frees it.
        let owner = (found.token != Some(true)).then_some(session);
        let mut cache = self.lock();
        cache.entries.entry(handle).or_default().identity = Some(found.clone());
        cache.set_owner(handle, owner);
        Some(found)
    }

    /// Records a key keytrail saw created. With `lookups`, its identity is what the module
    /// says of it — the same fields every later look-up gives — completed with what the
    /// template stated; without, the template's.
    pub fn created(
        &self,
        backend: &Backend,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
        stated: KeyIdentity,
        lookups: bool,
    ) -> Arc<KeyIdentity> {
        let identity = if lookups {
            let mut k = lookup_missing(backend, session, handle, stated.clone()).unwrap_or(stated);
            if k.class_raw == Some(CKO_PUBLIC_KEY) && k.public_sha256.is_none() {
                k.public_sha256 = public_fingerprint(backend, session, handle);
            }
            k
        } else {
            stated
        };
        let id = Arc::new(identity);
        let owner = (id.token != Some(true)).then_some(session);
        let mut cache = self.lock();
        let e = cache.entries.entry(handle).or_default();
        e.identity = Some(id.clone());
        e.used = false;
        // (A handle the module reused: its former owner no longer owns it.)
        cache.set_owner(handle, owner);
        id
    }

    /// Marks a key used in `session`; returns whether this is its first use in this
    /// process.
    ///
    /// A key keytrail knows nothing about (no look-up, creation not seen) is tied to the
    /// session that used it: the entry goes when that session closes, so the cache never
    /// outgrows the keys of open sessions. Should it be a token object, its next use in a
    /// later session is recorded once more, which errs on the side of the record.
    pub fn first_use(&self, session: CK_SESSION_HANDLE, handle: CK_OBJECT_HANDLE) -> bool {
        let mut cache = self.lock();
        let e = cache.entries.entry(handle).or_default();
        let known_token = e.identity.as_ref().is_some_and(|i| i.token == Some(true));
        let first = !std::mem::replace(&mut e.used, true);
        if e.owner.is_none() && !known_token {
            cache.set_owner(handle, Some(session));
        }
        first
    }

    /// How many keys the cache holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the cache holds no key.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Forgets a destroyed object.
    pub fn destroyed(&self, handle: CK_OBJECT_HANDLE) {
        self.lock().remove(handle);
    }

    /// Forgets the session objects owned by closed sessions (all of them when `sessions`
    /// is `None`).
    pub fn sessions_closed(&self, sessions: Option<&super::sessions::Closed>) {
        let mut cache = self.lock();
        match sessions {
            None => {
                cache.entries.retain(|_, e| e.owner.is_none());
                cache.owned.clear();
            }
            Some(super::sessions::Closed::One(s)) => cache.session_closed(*s),
            Some(super::sessions::Closed::Many(set)) => {
                for s in set {
                    cache.session_closed(*s);
                }
            }
        }
    }

    /// Takes the lock before fork() (see [`crate::audit::fork`]).
    pub fn lock_for_fork(&self) {
        std::mem::forget(self.cache.lock());
    }

    /// Releases the lock taken by [`KeyCache::lock_for_fork`].
    ///
    /// # Safety
    /// Only after `lock_for_fork` on this thread.
    pub unsafe fn unlock_after_fork(&self) {
        // SAFETY: the caller guarantees the lock is held with its guard forgotten.
        unsafe { self.cache.force_unlock() };
    }

    /// Forgets everything (C_Finalize, C_InitToken).
    pub fn clear(&self) {
        let mut cache = self.lock();
        cache.entries.clear();
        cache.owned.clear();
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Cache> {
        self.cache.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::super::sessions::Closed;
    use super::*;
    use rustc_hash::FxHashSet as HashSet;

    /// Keys first used in a session, whose identity keytrail never learnt, are forgotten
    /// when that session closes; a known token key stays.
    #[test]
    fn unknown_keys_go_with_their_session() {
        let cache = KeyCache::default();
        for handle in 1..=10_000 {
            assert!(cache.first_use(7, handle));
            assert!(!cache.first_use(7, handle));
        }
        assert!(cache.first_use(8, 20_000));
        assert_eq!(cache.len(), 10_001);
        cache.sessions_closed(Some(&Closed::One(7)));
        assert_eq!(cache.len(), 1);
        let closed: HashSet<CK_SESSION_HANDLE> = [8].into_iter().collect();
        cache.sessions_closed(Some(&Closed::Many(closed)));
        assert!(cache.is_empty());
    }

    /// A session's objects go when it closes, and only its own: an object that moved to
    /// another session (a handle the module reused), a destroyed one, and the objects of
    /// sessions still open stay as they should.
    #[test]
    fn closing_a_session_forgets_exactly_the_objects_it_owns() {
        let cache = KeyCache::default();
        for handle in 1..=100 {
            cache.first_use(handle % 4, handle);
        }
        // Handle 5 (first used in session 1) is destroyed; handle 9's number is reused
        // for a key created in session 2.
        cache.destroyed(5);
        cache.lock().set_owner(9, Some(2));
        assert_eq!(cache.len(), 99);
        cache.sessions_closed(Some(&Closed::One(1)));
        // Session 1 owned 25 handles: one destroyed, one moved.
        assert_eq!(cache.len(), 99 - 23);
        assert!(cache.lock().entries.contains_key(&9));
        cache.sessions_closed(Some(&Closed::One(2)));
        assert!(!cache.lock().entries.contains_key(&9));
        assert_eq!(cache.len(), 50);
        let closed: HashSet<CK_SESSION_HANDLE> = [0, 3].into_iter().collect();
        cache.sessions_closed(Some(&Closed::Many(closed)));
        assert!(cache.is_empty());
        assert!(cache.lock().owned.is_empty());
        // A session that closes owning nothing leaves nothing behind either.
        cache.sessions_closed(Some(&Closed::One(77)));
        assert!(cache.lock().owned.is_empty());
    }
}
