//! The HSM seal: a [`Sealer`] that signs checkpoint heads with a non-extractable key on a
//! PKCS#11 token, through its own session to the real module; the creation of that key
//! ([`create_key`]); and the check of a seal with the exported public key ([`SealKey`]).
//!
//! Meant for a separate agent process: the PIN file must be readable by the agent's user
//! only. In an audited application's process the PIN would be readable by that application,
//! which could then ask the token to sign a forged head, so the embedded writer does not
//! offer it.
//!
//! # What is signed
//!
//! The message is [`seal_message`]`(stream, seq, head)`. A P-256 key signs with CKM_ECDSA,
//! which takes a digest: the sealer passes SHA-256 of the message and the token returns
//! `r || s` (32 bytes each, big-endian), written as hex in `keytrail.seal.sig` with
//! `alg = "ecdsa-p256-sha256"`. An Ed25519 key signs the message itself with CKM_EDDSA
//! (pure Ed25519, 64 bytes), `alg = "ed25519"`.

use crate::audit::event::{Event, Outcome};
use crate::sink::chain::{Sealer, read_key_file};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use crate::sink::chain::seal_message;

/// The `alg` of a P-256 seal: ECDSA over SHA-256 of the message, `r || s`.
pub const ALG_P256: &str = "ecdsa-p256-sha256";
/// The `alg` of an Ed25519 seal: pure Ed25519 over the message.
pub const ALG_ED25519: &str = "ed25519";

/// The P-256 curve's OID, DER-encoded (CKA_EC_PARAMS of a P-256 key).
const OID_P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// The Ed25519 OID (1.3.101.112), DER-encoded.
const OID_ED25519: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// `edwards25519` as a DER PrintableString, the other CKA_EC_PARAMS form PKCS#11 3.0 allows.
const NAME_ED25519: &[u8] = b"\x13\x0cedwards25519";

/// The signature algorithms a sealing key may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealAlg {
    /// ECDSA on P-256 (CKM_ECDSA over a SHA-256 digest).
    P256,
    /// Ed25519 (CKM_EDDSA).
    Ed25519,
}

impl SealAlg {
    /// The name a seal states in `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            SealAlg::P256 => ALG_P256,
            SealAlg::Ed25519 => ALG_ED25519,
        }
    }

    /// The algorithm of a key with these CKA_KEY_TYPE and CKA_EC_PARAMS, if a seal can use it.
    fn of(key_type: KeyType, params: &[u8]) -> Option<SealAlg> {
        if key_type == KeyType::EC && params == OID_P256 {
            Some(SealAlg::P256)
        } else if key_type == KeyType::EC_EDWARDS
            && (params == OID_ED25519 || params == NAME_ED25519)
        {
            Some(SealAlg::Ed25519)
        } else {
            None
        }
    }
}

/// Where the sealing key is and how to log in to its token (`[seal]`).
#[derive(Clone, Debug)]
pub struct SealConfig {
    /// The real PKCS#11 module.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The private key's CKA_LABEL, or
    pub key_label: Option<String>,
    /// its CKA_ID (hex).
    pub key_id: Option<Vec<u8>>,
    /// A file holding the user PIN, readable by its owner only.
    pub pin_file: PathBuf,
}

/// A module's refusal in the standard's words: the function and its CKR_ code (cryptoki's
/// own text for an error is a paragraph of the specification).
fn ck(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => {
            let mut name = String::from("CKR");
            for c in format!("{rv:?}").chars() {
                if c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            format!("C_{f:?} returned {name}")
        }
        other => other.to_string(),
    }
}

/// A loaded module, and whether this holder's C_Initialize is the one that took effect
/// (then it may also finalize it, to start afresh).
struct Module {
    pkcs11: Pkcs11,
    owned: bool,
}

impl Module {
    fn load(path: &Path) -> Result<Module, String> {
        let pkcs11 = Pkcs11::new(path)
            .map_err(|e| format!("the module {} cannot be loaded: {e}", path.display()))?;
        let owned = match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => true,
            // Another part of this process initialised the module: share it.
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
            Err(e) => return Err(format!("C_Initialize failed: {}", ck(&e))),
        };
        Ok(Module { pkcs11, owned })
    }

    /// Ends this holder's use of the module: C_Finalize when it initialised it.
    fn close(self) {
        if self.owned {
            // Finalizing a module that is already gone (or was finalized under us) fails;
            // nothing is left to release then.
            let _ = self.pkcs11.finalize();
        }
    }

    /// The slot of the token labelled `label`.
    fn slot(&self, label: &str) -> Result<Slot, String> {
        let p = &self.pkcs11;
        let slots = p
            .get_slots_with_token()
            .map_err(|e| format!("C_GetSlotList failed: {}", ck(&e)))?;
        slots
            .into_iter()
            .find(|s| {
                p.get_token_info(*s)
                    .map(|t| t.label().trim_end() == label)
                    .unwrap_or(false)
            })
            .ok_or_else(|| format!("no token labelled {label:?} is present"))
    }

    /// A session on the token labelled `label`, logged in as the user with the PIN of
    /// `pin_file` (which must be readable by its owner only). The PIN is never in an error.
    fn login(&self, label: &str, pin_file: &Path, rw: bool) -> Result<Session, String> {
        let slot = self.slot(label)?;
        let bytes = read_key_file(pin_file).map_err(|e| format!("PIN file: {e}"))?;
        let pin = std::str::from_utf8(&bytes)
            .map_err(|_| format!("the PIN file {} is not text", pin_file.display()))?;
        let session = if rw {
            self.pkcs11.open_rw_session(slot)
        } else {
            self.pkcs11.open_ro_session(slot)
        }
        .map_err(|e| format!("C_OpenSession failed: {}", ck(&e)))?;
        match session.login(UserType::User, Some(&AuthPin::new(pin.trim_end().into()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(format!(
                "the PIN in {} is wrong for token {label:?}",
                pin_file.display()
            )),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                Err(format!("the user PIN of token {label:?} is locked"))
            }
            Err(e) => Err(format!("C_Login failed: {}", ck(&e))),
        }
    }
}

/// A logged-in session and the key it signs with.
struct Open {
    session: Session,
    key: ObjectHandle,
    alg: SealAlg,
}

/// Signs with a token key; logs in again at the next checkpoint after any failure.
///
/// Each login it makes (or fails to make) is a `seal_login` record of its own on the
/// trail, written just before the head it is for; each signature is in the checkpoint
/// that carries it. The PIN never is.
pub struct HsmSealer {
    cfg: SealConfig,
    module: Option<Module>,
    open: Option<Open>,
    /// Why the login tried by `prepare` failed, for the `seal` that follows.
    pending: Option<String>,
    /// `seal_login` records not yet handed to the chain.
    events: Vec<Event>,
}

impl HsmSealer {
    /// Opens the module, logs in and finds the key; any refusal (wrong PIN, no token,
    /// extractable key, key without CKA_SIGN) is an error that says which.
    pub fn new(cfg: SealConfig) -> Result<HsmSealer, String> {
        let mut s = HsmSealer {
            cfg,
            module: None,
            open: None,
            pending: None,
            events: Vec::new(),
        };
        s.connect()?;
        Ok(s)
    }

    /// The algorithm of the key, while logged in.
    pub fn alg(&self) -> Option<SealAlg> {
        self.open.as_ref().map(|o| o.alg)
    }

    /// Logs in and finds the key, and keeps a `seal_login` record of the attempt.
    fn connect(&mut self) -> Result<(), String> {
        let r = self.try_connect();
        let (message, outcome, mut detail) = match &r {
            Ok(()) => (
                format!("the sealer logged in to token {:?}", self.cfg.token_label),
                Outcome::Success,
                serde_json::json!({}),
            ),
            Err(reason) => (
                format!(
                    "the sealer could not log in to token {:?}: {reason}",
                    self.cfg.token_label
                ),
                Outcome::Failure,
                serde_json::json!({ "reason": reason }),
            ),
        };
        detail["token"] = self.cfg.token_label.clone().into();
        if let Some(l) = &self.cfg.key_label {
            detail["key_label"] = l.clone().into();
        }
        if let Some(id) = &self.cfg.key_id {
            detail["key_id"] = hex::encode(id).into();
        }
        if let Some(o) = &self.open {
            detail["alg"] = o.alg.as_str().into();
        }
        detail["module"] = self.cfg.module.display().to_string().into();
        let mut e = Event::audit("seal_login", message, detail);
        e.outcome = outcome;
        self.events.push(e);
        if r.is_err() {
            // Start afresh next time: a module that lost its token (or was finalized under
            // the sealer) finds it again only after a new C_Initialize.
            if let Some(m) = self.module.take() {
                m.close();
            }
        }
        r
    }

    fn try_connect(&mut self) -> Result<(), String> {
        if self.module.is_none() {
            self.module = Some(Module::load(&self.cfg.module)?);
        }
        let m = self.module.as_ref().ok_or("no module")?;
        let session = m.login(&self.cfg.token_label, &self.cfg.pin_file, false)?;
        match find_key(&self.cfg, &session) {
            Ok((key, alg)) => {
                self.open = Some(Open { session, key, alg });
                Ok(())
            }
            Err(e) => {
                // A refused key leaves the token as it found it: logged out.
                let _ = session.logout();
                Err(e)
            }
        }
    }
}

/// The one private key the configuration names, refused when it could leave the token,
/// cannot sign or is neither P-256 nor Ed25519; with its algorithm.
fn find_key(cfg: &SealConfig, session: &Session) -> Result<(ObjectHandle, SealAlg), String> {
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    if let Some(l) = &cfg.key_label {
        template.push(Attribute::Label(l.as_bytes().to_vec()));
    }
    if let Some(id) = &cfg.key_id {
        template.push(Attribute::Id(id.clone()));
    }
    let keys = session
        .find_objects(&template)
        .map_err(|e| format!("C_FindObjects failed: {}", ck(&e)))?;
    let key = match keys.as_slice() {
        [k] => *k,
        [] => {
            return Err("no private key on the token matches the configured label or id".into());
        }
        _ => {
            return Err("several private keys match the configured label or id; give both".into());
        }
    };
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::Extractable,
                AttributeType::Sign,
                AttributeType::KeyType,
                AttributeType::EcParams,
            ],
        )
        .map_err(|e| format!("C_GetAttributeValue failed: {}", ck(&e)))?;
    let (mut extractable, mut sign, mut key_type, mut params) = (true, false, None, Vec::new());
    for a in attrs {
        match a {
            Attribute::Extractable(b) => extractable = b,
            Attribute::Sign(b) => sign = b,
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => params = p,
            _ => {}
        }
    }
    if extractable {
        return Err("the sealing key has CKA_EXTRACTABLE true (or does not say): it could be copied off the token, refused".into());
    }
    if !sign {
        return Err("the sealing key does not have CKA_SIGN, refused".into());
    }
    let alg = key_type
        .and_then(|t| SealAlg::of(t, &params))
        .ok_or("the sealing key is neither an ECDSA P-256 nor an Ed25519 key, refused")?;
    Ok((key, alg))
}

impl Sealer for HsmSealer {
    fn prepare(&mut self) -> Vec<Event> {
        if self.open.is_none() {
            self.pending = self.connect().err();
        }
        std::mem::take(&mut self.events)
    }

    fn seal(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), String> {
        if let Some(reason) = self.pending.take() {
            return Err(reason);
        }
        if self.open.is_none() {
            self.connect()?;
        }
        let o = self.open.as_ref().ok_or("no session")?;
        let r = match o.alg {
            SealAlg::Ed25519 => o.session.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                o.key,
                message,
            ),
            // CKM_ECDSA signs a digest: hash here so any module offering P-256 will do.
            SealAlg::P256 => o
                .session
                .sign(&Mechanism::Ecdsa, o.key, &Sha256::digest(message)),
        };
        match r {
            Ok(sig) => Ok((o.alg.as_str().to_string(), sig)),
            Err(e) => {
                // Drop the session: the next checkpoint logs in again.
                self.open = None;
                Err(format!("C_Sign failed: {}", ck(&e)))
            }
        }
    }
}

impl Drop for HsmSealer {
    fn drop(&mut self) {
        if let Some(o) = self.open.take() {
            let _ = o.session.logout();
        }
        if let Some(m) = self.module.take() {
            m.close();
        }
    }
}

/// The sealer `[seal]` describes (the agent's one line), or `None` without `[seal]`.
pub fn from_config(cfg: &crate::config::Config) -> Result<Option<Box<dyn Sealer>>, String> {
    cfg.seal
        .as_ref()
        .map(|s| from_section(s, Some(&cfg.module)))
        .transpose()
}

/// The sealer a `[seal]` section describes; `default_module` is the module used when the
/// section names none (the agent has no module of its own, so its `[seal]` must name one).
pub fn from_section(
    s: &crate::config::SealSection,
    default_module: Option<&std::path::Path>,
) -> Result<Box<dyn Sealer>, String> {
    let key_id = match &s.key_id {
        Some(h) => Some(hex::decode(h).map_err(|e| format!("[seal] key_id is not hex: {e}"))?),
        None => None,
    };
    if s.key_label.is_none() && key_id.is_none() {
        return Err("[seal] needs key_label or key_id".into());
    }
    let module = s
        .module
        .clone()
        .or_else(|| default_module.map(std::path::Path::to_path_buf))
        .ok_or("[seal] needs module: the PKCS#11 module holding the sealing key")?;
    let sealer = HsmSealer::new(SealConfig {
        module,
        token_label: s.token_label.clone(),
        key_label: s.key_label.clone(),
        key_id,
        pin_file: s.pin_file.clone(),
    })?;
    Ok(Box::new(sealer))
}

/// What [`create_key`] makes.
#[derive(Clone, Debug)]
pub struct NewKey {
    /// The real PKCS#11 module.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// A file holding the user PIN, readable by its owner only.
    pub pin_file: PathBuf,
    /// CKA_LABEL of both halves.
    pub label: String,
    /// CKA_ID of both halves (random 16 bytes when absent).
    pub id: Option<Vec<u8>>,
    /// The algorithm; when absent, P-256 if the token offers it, else Ed25519.
    pub alg: Option<SealAlg>,
}

/// The key pair [`create_key`] made.
#[derive(Clone, Debug)]
pub struct CreatedKey {
    /// Its algorithm.
    pub alg: SealAlg,
    /// CKA_ID of both halves.
    pub id: Vec<u8>,
    /// The public key, PEM (SubjectPublicKeyInfo), for `keytrail verify --seal-key`.
    pub public_pem: String,
}

/// Creates a sealing key pair on a token: a token private key with CKA_SIGN true,
/// CKA_EXTRACTABLE false, CKA_SENSITIVE true and CKA_PRIVATE true, and its public half;
/// returns the public key as PEM. Refuses when a private key with that label or ID is
/// already there (the sealer needs exactly one).
pub fn create_key(k: &NewKey) -> Result<CreatedKey, String> {
    let m = Module::load(&k.module)?;
    let r = create_on(&m, k);
    m.close();
    r
}

fn create_on(m: &Module, k: &NewKey) -> Result<CreatedKey, String> {
    let slot = m.slot(&k.token_label)?;
    let mechs = m
        .pkcs11
        .get_mechanism_list(slot)
        .map_err(|e| format!("C_GetMechanismList failed: {}", ck(&e)))?;
    let offers = |generate: MechanismType, sign: MechanismType| {
        mechs.contains(&generate) && mechs.contains(&sign)
    };
    let p256 = offers(MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA);
    let ed25519 = offers(
        MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
        MechanismType::EDDSA,
    );
    let alg = match k.alg {
        Some(SealAlg::P256) if !p256 => {
            return Err(format!(
                "token {:?} does not offer ECDSA P-256 key generation and signing (CKM_EC_KEY_PAIR_GEN, CKM_ECDSA)",
                k.token_label
            ));
        }
        Some(SealAlg::Ed25519) if !ed25519 => {
            return Err(format!(
                "token {:?} does not offer Ed25519 key generation and signing (CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA)",
                k.token_label
            ));
        }
        Some(a) => a,
        // P-256 first: more tokens offer it (and in FIPS mode) than Ed25519.
        None if p256 => SealAlg::P256,
        None if ed25519 => SealAlg::Ed25519,
        None => {
            return Err(format!(
                "token {:?} offers neither ECDSA P-256 nor Ed25519 signing",
                k.token_label
            ));
        }
    };
    let session = m.login(&k.token_label, &k.pin_file, true)?;
    let r = generate(&session, k, alg);
    let _ = session.logout();
    r
}

fn generate(session: &Session, k: &NewKey, alg: SealAlg) -> Result<CreatedKey, String> {
    let label = k.label.as_bytes().to_vec();
    let taken = |a: Attribute| {
        session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), a])
            .map(|v| !v.is_empty())
            .map_err(|e| format!("C_FindObjects failed: {}", ck(&e)))
    };
    if taken(Attribute::Label(label.clone()))? {
        return Err(format!(
            "a private key labelled {:?} is already on the token; choose another label",
            k.label
        ));
    }
    let id = match &k.id {
        Some(id) => {
            if taken(Attribute::Id(id.clone()))? {
                return Err(format!(
                    "a private key with id {} is already on the token; choose another id",
                    hex::encode(id)
                ));
            }
            id.clone()
        }
        None => {
            let mut id = vec![0u8; 16];
            getrandom::fill(&mut id).map_err(|e| format!("no OS randomness for an id: {e}"))?;
            id
        }
    };
    let (mechanism, params) = match alg {
        SealAlg::P256 => (Mechanism::EccKeyPairGen, OID_P256.to_vec()),
        SealAlg::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, OID_ED25519.to_vec()),
    };
    let (public, _private) = session
        .generate_key_pair(
            &mechanism,
            &[
                Attribute::EcParams(params),
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::Label(label.clone()),
                Attribute::Id(id.clone()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Label(label),
                Attribute::Id(id.clone()),
            ],
        )
        .map_err(|e| format!("C_GenerateKeyPair failed: {}", ck(&e)))?;
    let point = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(|e| format!("C_GetAttributeValue(CKA_EC_POINT) failed: {}", ck(&e)))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or("the token did not return the public key's CKA_EC_POINT")?;
    let key = SealKey::from_point(alg, &point)?;
    Ok(CreatedKey {
        alg,
        id,
        public_pem: key.to_pem()?,
    })
}

/// A sealing key's public half, which checks seals.
#[derive(Clone, Debug)]
pub enum SealKey {
    /// A P-256 key.
    P256(p256::ecdsa::VerifyingKey),
    /// An Ed25519 key.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl SealKey {
    /// The key of a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<SealKey, String> {
        use p256::pkcs8::DecodePublicKey;
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(SealKey::P256(k));
        }
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(SealKey::Ed25519(k));
        }
        Err("not a PEM public key (SubjectPublicKeyInfo) of P-256 or Ed25519".into())
    }

    /// The key of a token's CKA_EC_POINT (the point, or a DER OCTET STRING holding it:
    /// modules return either).
    pub fn from_point(alg: SealAlg, point: &[u8]) -> Result<SealKey, String> {
        let unwrap = |len: usize| match point {
            [0x04, l, rest @ ..] if point.len() == len + 2 && *l as usize == len => rest,
            _ => point,
        };
        match alg {
            SealAlg::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(unwrap(65))
                .map(SealKey::P256)
                .map_err(|e| format!("the token's P-256 public key is malformed: {e}")),
            SealAlg::Ed25519 => {
                let bytes: [u8; 32] = unwrap(32)
                    .try_into()
                    .map_err(|_| "the token's Ed25519 public key is not 32 bytes")?;
                ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map(SealKey::Ed25519)
                    .map_err(|e| format!("the token's Ed25519 public key is malformed: {e}"))
            }
        }
    }

    /// The algorithm.
    pub fn alg(&self) -> SealAlg {
        match self {
            SealKey::P256(_) => SealAlg::P256,
            SealKey::Ed25519(_) => SealAlg::Ed25519,
        }
    }

    /// PEM SubjectPublicKeyInfo.
    pub fn to_pem(&self) -> Result<String, String> {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        match self {
            SealKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
            SealKey::Ed25519(k) => k.to_public_key_pem(LineEnding::LF),
        }
        .map_err(|e| format!("cannot encode the public key: {e}"))
    }

    /// Checks a seal: `alg` must be this key's, and `sig` its signature of `message`
    /// (see the module documentation for the encoding).
    pub fn verify(&self, alg: &str, message: &[u8], sig: &[u8]) -> Result<(), String> {
        if alg != self.alg().as_str() {
            return Err(format!(
                "sealed with {alg:?}, but the key is {}",
                self.alg().as_str()
            ));
        }
        match self {
            SealKey::P256(k) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                let sig = p256::ecdsa::Signature::from_slice(sig)
                    .map_err(|_| "not a P-256 signature (64 bytes r || s)".to_string())?;
                k.verify_prehash(&Sha256::digest(message), &sig)
                    .map_err(|_| "the signature does not verify".to_string())
            }
            SealKey::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(sig)
                    .map_err(|_| "not an Ed25519 signature (64 bytes)".to_string())?;
                k.verify_strict(message, &sig)
                    .map_err(|_| "the signature does not verify".to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashSigner;

    /// Tokens return whichever `s` they computed; both must verify, as the token's own
    /// C_Verify accepts both.
    #[test]
    fn p256_seals_verify_with_either_s_and_only_for_their_message() {
        let sk = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).expect("key");
        let key = SealKey::P256(*sk.verifying_key());
        let pem = key.to_pem().expect("pem");
        let key = SealKey::from_pem(&pem).expect("from pem");
        let message = seal_message("s", 3, Some(&[9; 32]));
        let sig: p256::ecdsa::Signature = sk.sign_prehash(&Sha256::digest(&message)).expect("sign");
        let (r, s) = sig.split_scalars();
        let flipped = p256::ecdsa::Signature::from_scalars(r, -*s).expect("signature");
        for sig in [sig, flipped] {
            key.verify(ALG_P256, &message, &sig.to_bytes())
                .expect("verifies");
            assert!(
                key.verify(
                    ALG_P256,
                    &seal_message("s", 4, Some(&[9; 32])),
                    &sig.to_bytes()
                )
                .is_err()
            );
        }
        let e = key
            .verify(ALG_ED25519, &message, &sig.to_bytes())
            .expect_err("another algorithm");
        assert!(e.contains("ed25519"), "{e}");
    }

    #[test]
    fn ed25519_keys_round_trip_through_pem_and_token_points() {
        use ed25519_dalek::Signer;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let point = sk.verifying_key().to_bytes();
        // Modules give CKA_EC_POINT raw or wrapped in a DER OCTET STRING.
        let mut wrapped = vec![0x04, 32];
        wrapped.extend_from_slice(&point);
        for p in [&point[..], &wrapped[..]] {
            let key = SealKey::from_point(SealAlg::Ed25519, p).expect("point");
            let key = SealKey::from_pem(&key.to_pem().expect("pem")).expect("from pem");
            let message = seal_message("s", 1, None);
            let sig = sk.sign(&message).to_bytes();
            key.verify(ALG_ED25519, &message, &sig).expect("verifies");
            let mut bad = sig;
            bad[0] ^= 1;
            assert!(key.verify(ALG_ED25519, &message, &bad).is_err());
        }
    }
}
