//! Which key a record is about, across the streams of a trail: the key identity of
//! `keytrail report`.
//!
//! A handle names an object only inside one process (one stream), and is reused. So the
//! book keeps, per stream, which key each handle stands for: from the record that created
//! it, or the first record that named it. Beyond one stream only token objects exist, and
//! a token object is recognised by what it carries: CKA_UNIQUE_ID; else its class, key type,
//! CKA_ID and CKA_LABEL on its token (when it has an ID or a label); else, for a public key,
//! the SHA-256 of its key material. A session object (CKA_TOKEN false) lives in its own
//! process only, so it is never joined to a key of another stream, however alike; nor is a
//! token object with nothing to recognise it by. A C_SetAttributeValue that changes CKA_ID
//! or CKA_LABEL carries the key forward under its new name. C_CopyObject makes a new key,
//! which remembers the key it was copied from.

use super::record::{KeyRec, P11};
use std::collections::HashMap;

/// Where a record was made: its stream, its token, its session.
#[derive(Clone, Copy)]
pub struct Place<'a> {
    /// `integrity.stream` (or a stand-in for records without one).
    pub stream: &'a str,
    /// The token's serial number.
    pub serial: Option<&'a str>,
    /// The session handle.
    pub session: Option<u64>,
    /// The process id, to name keys recognisable in their own process only.
    pub pid: Option<u64>,
    /// The record's `@timestamp`.
    pub time: Option<&'a str>,
}

/// A key's identity as the book knows it, updated as the key is renamed.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// How the report names the key (unique in the report).
    pub identity: String,
    /// `CKO_…`.
    pub class: Option<String>,
    /// `CKK_…`.
    pub key_type: Option<String>,
    /// CKA_ID in hex.
    pub id_hex: Option<String>,
    /// CKA_LABEL.
    pub label: Option<String>,
    /// CKA_UNIQUE_ID.
    pub unique_id: Option<String>,
    /// SHA-256 of a public key's material.
    pub public_sha256: Option<String>,
    /// The token's serial number.
    pub token: Option<String>,
    /// A token (persistent) object, a session object, or unknown.
    pub token_object: Option<bool>,
}

/// What the book holds of one key.
struct Key {
    names: Names,
    /// The key it was copied from.
    copy_of: Option<usize>,
    /// Names under which other streams find it.
    aliases: Vec<String>,
    /// Session copies of this key that have a key of their own.
    copies_listed: usize,
    /// This key stands for the session copies of its source beyond those listed.
    folded: bool,
    /// The process and handle of the record that first named it (for the name of a key
    /// recognisable in its own process only).
    origin: (Option<u64>, Option<u64>),
}

/// A handle in one stream: (token serial, handle).
type Slot = (Option<String>, u64);

/// What the handles of one running stream stand for.
#[derive(Default)]
struct Stream {
    handles: HashMap<Slot, Bound>,
    /// The key a handle stood for until the time given: a usage summary written later,
    /// dated from its first use, still names it.
    retired: HashMap<Slot, (usize, Option<String>)>,
}

/// What a handle stands for in one stream.
struct Bound {
    key: usize,
    /// The session that created a session object: closing it ends the object.
    owner: Option<u64>,
}

/// The keys of a trail and, per stream, what each handle stands for.
#[derive(Default)]
pub struct KeyBook {
    keys: Vec<Key>,
    /// Session copies of one key that get a key of their own; later ones share one key per
    /// source (pkcs11-provider makes a copy per signature: a key each would make the
    /// report, and its memory, grow with every use).
    copies_listed: usize,
    /// Source key → the key its further session copies share.
    folded: HashMap<usize, usize>,
    /// A token object's name → the latest key known by it.
    aliases: HashMap<String, usize>,
    /// Identities in use, so that each key's is unique.
    identities: HashMap<String, usize>,
    /// Running streams by `integrity.stream` (forgotten when they end: memory stays in
    /// proportion to keys and running streams).
    streams: HashMap<String, Stream>,
}

fn nonempty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_string)
}

impl Names {
    fn of(k: &KeyRec<'_>, serial: Option<&str>) -> Names {
        Names {
            identity: String::new(),
            class: owned(k.class.as_deref()),
            key_type: owned(k.key_type.as_deref()),
            id_hex: owned(k.id_hex.as_deref()),
            label: owned(k.label.as_deref()),
            unique_id: owned(k.unique_id.as_deref()),
            public_sha256: owned(k.public_sha256.as_deref()),
            token: owned(serial),
            token_object: k.token,
        }
    }

    fn attrs(&self) -> String {
        format!(
            "{}/{}/id:{}/label:{}@{}",
            self.class.as_deref().unwrap_or("?"),
            self.key_type.as_deref().unwrap_or("?"),
            self.id_hex.as_deref().unwrap_or(""),
            self.label.as_deref().unwrap_or(""),
            self.token.as_deref().unwrap_or("?")
        )
    }

    /// The names other streams may know a token object by, strongest first: none for a
    /// session object, nor for a key with nothing to recognise it by.
    fn aliases(&self) -> Vec<String> {
        if self.token_object == Some(false) {
            return Vec::new();
        }
        let token = self.token.as_deref().unwrap_or("?");
        let mut out = Vec::new();
        if let Some(u) = nonempty(self.unique_id.as_deref()) {
            out.push(format!("unique_id:{u}@{token}"));
        }
        if nonempty(self.id_hex.as_deref()).is_some() || nonempty(self.label.as_deref()).is_some() {
            out.push(self.attrs());
        }
        if let Some(fp) = nonempty(self.public_sha256.as_deref()) {
            out.push(format!(
                "{}/{}/sha256:{fp}@{token}",
                self.class.as_deref().unwrap_or("?"),
                self.key_type.as_deref().unwrap_or("?"),
            ));
        }
        out
    }

    /// Whether a record's key can be the key these names describe: a handle reused for
    /// another object shows a different class, key type or token flag.
    fn compatible(&self, k: &KeyRec<'_>) -> bool {
        fn same(a: Option<&str>, b: Option<&str>) -> bool {
            a.is_none() || b.is_none() || a == b
        }
        same(self.class.as_deref(), k.class.as_deref())
            && same(self.key_type.as_deref(), k.key_type.as_deref())
            && (self.token_object.is_none() || k.token.is_none() || self.token_object == k.token)
    }

    /// Takes what a later record knows and these names lack.
    fn complete(&mut self, k: &KeyRec<'_>) {
        fn fill(slot: &mut Option<String>, v: Option<&str>) {
            if slot.is_none() {
                *slot = owned(v);
            }
        }
        fill(&mut self.class, k.class.as_deref());
        fill(&mut self.key_type, k.key_type.as_deref());
        fill(&mut self.id_hex, k.id_hex.as_deref());
        fill(&mut self.label, k.label.as_deref());
        fill(&mut self.unique_id, k.unique_id.as_deref());
        fill(&mut self.public_sha256, k.public_sha256.as_deref());
        if self.token_object.is_none() {
            self.token_object = k.token;
        }
    }
}

/// A change of CKA_ID or CKA_LABEL that a C_SetAttributeValue made.
#[derive(Default)]
pub struct Rename {
    /// The new CKA_ID, in hex.
    pub id_hex: Option<String>,
    /// The new CKA_LABEL.
    pub label: Option<String>,
}

impl Rename {
    /// What the `set` list of a successful modify record changes of a key's names.
    pub fn of(p: &P11<'_>) -> Option<Rename> {
        let mut r = Rename::default();
        for a in p.attributes.iter().flat_map(|a| &a.set) {
            match a.type_.as_deref() {
                Some("CKA_ID") => r.id_hex = owned(a.hex.as_deref()),
                Some("CKA_LABEL") => r.label = owned(a.text.as_deref()),
                _ => {}
            }
        }
        (r.id_hex.is_some() || r.label.is_some()).then_some(r)
    }
}

impl KeyBook {
    /// A book that gives at most `copies_listed` session copies of each key a key of
    /// their own.
    pub fn new(copies_listed: usize) -> KeyBook {
        KeyBook {
            copies_listed,
            ..KeyBook::default()
        }
    }

    /// Whether `key` stands for several session copies of its source (those beyond the
    /// listed ones).
    pub fn folded(&self, key: usize) -> bool {
        self.keys[key].folded
    }

    fn stream(&mut self, stream: &str) -> &mut Stream {
        if !self.streams.contains_key(stream) {
            self.streams.insert(stream.to_string(), Stream::default());
        }
        self.streams
            .get_mut(stream)
            .expect("inserted above if it was missing")
    }

    /// A key's current names.
    pub fn names(&self, key: usize) -> &Names {
        &self.keys[key].names
    }

    /// The key `key` was copied from.
    pub fn copy_of(&self, key: usize) -> Option<usize> {
        self.keys[key].copy_of
    }

    /// Gives `key` an identity from its names, unique in the report.
    fn name(&mut self, key: usize) {
        let k = &self.keys[key];
        let mut base = match k.aliases.first() {
            Some(a) => a.clone(),
            None => k.names.attrs(),
        };
        if k.folded {
            base = format!(
                "{base} (session copies beyond the first {})",
                self.copies_listed
            );
        } else if k.aliases.is_empty() {
            let kind = match k.names.token_object {
                Some(false) => "session object",
                Some(true) => "token object",
                None => "object",
            };
            let n = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
            base = format!(
                "{base} ({kind}: pid {} handle {})",
                n(k.origin.0),
                n(k.origin.1)
            );
        }
        if self.identities.get(&base) == Some(&key) {
            return;
        }
        let old = std::mem::take(&mut self.keys[key].names.identity);
        if self.identities.get(&old) == Some(&key) {
            self.identities.remove(&old);
        }
        let mut identity = base.clone();
        let mut n = 1;
        while self.identities.contains_key(&identity) {
            n += 1;
            identity = format!("{base} #{n}");
        }
        self.identities.insert(identity.clone(), key);
        self.keys[key].names.identity = identity;
    }

    fn new_key(
        &mut self,
        names: Names,
        copy_of: Option<usize>,
        origin: (Option<u64>, Option<u64>),
    ) -> usize {
        let key = self.keys.len();
        let aliases = names.aliases();
        for a in &aliases {
            self.aliases.insert(a.clone(), key);
        }
        self.keys.push(Key {
            names,
            copy_of,
            aliases,
            copies_listed: 0,
            folded: false,
            origin,
        });
        self.name(key);
        key
    }

    /// A key a successful creation record made (`copy_of`: the key C_CopyObject copied).
    /// Always a new key: the handle now stands for it in this stream.
    pub fn created(&mut self, place: &Place<'_>, k: &KeyRec<'_>, copy_of: Option<usize>) -> usize {
        let mut names = Names::of(k, place.serial);
        if names.token_object.is_none() {
            // CKA_TOKEN defaults to false; a copy keeps its source's.
            names.token_object = match copy_of {
                Some(s) => self.keys[s].names.token_object,
                None => Some(false),
            };
        }
        let session_object = names.token_object == Some(false);
        let key = match copy_of {
            Some(s) if session_object && self.keys[s].copies_listed >= self.copies_listed => {
                match self.folded.get(&s) {
                    Some(&f) => f,
                    None => {
                        let f = self.new_key(names, copy_of, (None, None));
                        self.keys[f].folded = true;
                        self.name(f);
                        self.folded.insert(s, f);
                        f
                    }
                }
            }
            _ => {
                if let (Some(s), true) = (copy_of, session_object) {
                    self.keys[s].copies_listed += 1;
                }
                self.new_key(names, copy_of, (place.pid, k.handle))
            }
        };
        if let Some(h) = k.handle {
            self.stream(place.stream).handles.insert(
                (owned(place.serial), h),
                Bound {
                    key,
                    owner: session_object.then_some(place.session).flatten(),
                },
            );
        }
        key
    }

    /// The key a record names (not one it creates): the handle's key in this stream, else
    /// a token object known by name, else a key first seen here.
    pub fn named(&mut self, place: &Place<'_>, k: &KeyRec<'_>) -> usize {
        let slot = k.handle.map(|h| (owned(place.serial), h));
        if let Some(slot) = &slot {
            let stream = self.stream(place.stream);
            let bound = stream.handles.get(slot).map(|b| b.key);
            let retired = stream.retired.get(slot).cloned();
            if let Some(key) = bound {
                if self.keys[key].names.compatible(k) {
                    let before = self.keys[key].aliases.is_empty();
                    self.keys[key].names.complete(k);
                    if before {
                        self.realias(key);
                    }
                    return key;
                }
                // The handle stands for another object now.
                self.stream(place.stream).handles.remove(slot);
            }
            if let Some((key, until)) = retired {
                let before = match (place.time, until) {
                    (Some(t), Some(u)) => t < u.as_str(),
                    _ => false,
                };
                if before && self.keys[key].names.compatible(k) {
                    return key;
                }
            }
        }
        let names = Names::of(k, place.serial);
        let found = names
            .aliases()
            .iter()
            .find_map(|a| self.aliases.get(a).copied());
        let key = match found {
            Some(key) => key,
            None => self.new_key(names, None, (place.pid, k.handle)),
        };
        if let Some(slot) = slot {
            let owner = None;
            self.stream(place.stream)
                .handles
                .insert(slot, Bound { key, owner });
        }
        key
    }

    /// Registers the names a key is known by now, and names it by the strongest.
    fn realias(&mut self, key: usize) {
        let aliases = self.keys[key].names.aliases();
        for a in &aliases {
            self.aliases.insert(a.clone(), key);
        }
        self.keys[key].aliases = aliases;
        self.name(key);
    }

    /// A C_SetAttributeValue changed the key's CKA_ID or CKA_LABEL: other streams find it
    /// under its new name from now on. Returns its former identity.
    pub fn renamed(&mut self, key: usize, r: Rename) -> String {
        let former = self.keys[key].names.identity.clone();
        for a in std::mem::take(&mut self.keys[key].aliases) {
            if self.aliases.get(&a) == Some(&key) {
                self.aliases.remove(&a);
            }
        }
        let n = &mut self.keys[key].names;
        if r.id_hex.is_some() {
            n.id_hex = r.id_hex;
        }
        if r.label.is_some() {
            n.label = r.label;
        }
        self.realias(key);
        former
    }

    /// A successful C_DestroyObject: the handle stands for nothing now, nor do the key's
    /// names.
    pub fn destroyed(&mut self, place: &Place<'_>, handle: Option<u64>, key: usize) {
        if let Some(h) = handle {
            let stream = self.stream(place.stream);
            let slot = (owned(place.serial), h);
            stream.handles.remove(&slot);
            stream.retired.insert(slot, (key, owned(place.time)));
        }
        for a in &self.keys[key].aliases {
            if self.aliases.get(a) == Some(&key) {
                self.aliases.remove(a);
            }
        }
    }

    /// Sessions ended: `session` (C_CloseSession), or all of the stream's on the token
    /// (`None`: C_CloseAllSessions), taking their session objects with them. Returns the
    /// keys that ended.
    pub fn sessions_closed(&mut self, place: &Place<'_>, session: Option<u64>) -> Vec<usize> {
        let serial = owned(place.serial);
        let mut ended = Vec::new();
        let time = owned(place.time);
        let Some(stream) = self.streams.get_mut(place.stream) else {
            return ended;
        };
        let keys = &self.keys;
        let retired = &mut stream.retired;
        stream.handles.retain(|slot, b| {
            // An object whose session is unknown goes only when all sessions close.
            let gone = slot.0 == serial
                && keys[b.key].names.token_object == Some(false)
                && (session.is_none() || b.owner == session);
            if gone {
                ended.push(b.key);
                retired.insert(slot.clone(), (b.key, time.clone()));
            }
            !gone
        });
        ended
    }

    /// The stream ended (C_Finalize, trail_stop): its handles stand for nothing. Returns
    /// its session objects, which ended with it.
    pub fn stream_ended(&mut self, name: &str) -> Vec<usize> {
        let Some(stream) = self.streams.remove(name) else {
            return Vec::new();
        };
        stream
            .handles
            .into_values()
            .filter(|b| self.keys[b.key].names.token_object == Some(false))
            .map(|b| b.key)
            .collect()
    }
}
