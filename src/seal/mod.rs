//! The HSM seal: a [`Sealer`] that signs checkpoint heads with a non-extractable key on a
//! PKCS#11 token, through its own session to the real module.
//!
//! Meant for a separate agent process: the PIN file must be readable by the agent's user
//! only. In an audited application's process the PIN would be readable by that application,
//! which could then ask the token to sign a forged head, so the embedded writer does not
//! offer it.

use crate::sink::chain::{Sealer, check_key_file};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

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

/// A logged-in session and the key it signs with.
struct Open {
    session: Session,
    key: ObjectHandle,
    ed25519: bool,
}

/// Signs with a token key; reopens its session on the next seal after any failure.
pub struct HsmSealer {
    cfg: SealConfig,
    pkcs11: Option<Pkcs11>,
    open: Option<Open>,
}

impl HsmSealer {
    /// Opens the module, logs in and finds the key; any refusal (wrong PIN, no token,
    /// extractable key, key without CKA_SIGN) is an error that says which.
    pub fn new(cfg: SealConfig) -> Result<HsmSealer, String> {
        let mut s = HsmSealer {
            cfg,
            pkcs11: None,
            open: None,
        };
        s.connect()?;
        Ok(s)
    }

    fn connect(&mut self) -> Result<(), String> {
        if self.pkcs11.is_none() {
            let p = Pkcs11::new(&self.cfg.module).map_err(|e| {
                format!(
                    "the module {} cannot be loaded: {e}",
                    self.cfg.module.display()
                )
            })?;
            match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
                // Another part of this process initialised the module: share it.
                Ok(())
                | Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::CryptokiAlreadyInitialized,
                    _,
                )) => {}
                Err(e) => return Err(format!("C_Initialize failed: {e}")),
            }
            self.pkcs11 = Some(p);
        }
        let p = self.pkcs11.as_ref().ok_or("no module")?;
        let slots = p
            .get_slots_with_token()
            .map_err(|e| format!("C_GetSlotList failed: {e}"))?;
        let slot = slots
            .into_iter()
            .find(|s| {
                p.get_token_info(*s)
                    .map(|t| t.label().trim_end() == self.cfg.token_label)
                    .unwrap_or(false)
            })
            .ok_or_else(|| format!("no token labelled {:?} is present", self.cfg.token_label))?;
        check_key_file(&self.cfg.pin_file).map_err(|e| format!("PIN file: {e}"))?;
        let pin = std::fs::read_to_string(&self.cfg.pin_file).map_err(|e| {
            format!(
                "the PIN file {} cannot be read: {e}",
                self.cfg.pin_file.display()
            )
        })?;
        let session = p
            .open_ro_session(slot)
            .map_err(|e| format!("C_OpenSession failed: {e}"))?;
        match session.login(UserType::User, Some(&AuthPin::new(pin.trim_end().into()))) {
            Ok(()) => {}
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::PinIncorrect, _)) => {
                return Err(format!(
                    "the PIN in {} is wrong for token {:?}",
                    self.cfg.pin_file.display(),
                    self.cfg.token_label
                ));
            }
            Err(e) => return Err(format!("C_Login failed: {e}")),
        }
        match Self::find_key(&self.cfg, &session) {
            Ok((key, ed25519)) => {
                self.open = Some(Open {
                    session,
                    key,
                    ed25519,
                });
                Ok(())
            }
            Err(e) => {
                // A refused key leaves the token as it found it: logged out.
                let _ = session.logout();
                Err(e)
            }
        }
    }

    /// The one private key the configuration names, refused when it could leave the
    /// token or cannot sign; with whether it is an Ed25519 key.
    fn find_key(cfg: &SealConfig, session: &Session) -> Result<(ObjectHandle, bool), String> {
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(l) = &cfg.key_label {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &cfg.key_id {
            template.push(Attribute::Id(id.clone()));
        }
        let keys = session
            .find_objects(&template)
            .map_err(|e| format!("C_FindObjects failed: {e}"))?;
        let key = match keys.as_slice() {
            [k] => *k,
            [] => {
                return Err(
                    "no private key on the token matches the configured label or id".into(),
                );
            }
            _ => {
                return Err(
                    "several private keys match the configured label or id; give both".into(),
                );
            }
        };
        let attrs = session
            .get_attributes(
                key,
                &[
                    AttributeType::Extractable,
                    AttributeType::Sign,
                    AttributeType::KeyType,
                ],
            )
            .map_err(|e| format!("C_GetAttributeValue failed: {e}"))?;
        let (mut extractable, mut sign, mut ed25519) = (true, false, false);
        for a in attrs {
            match a {
                Attribute::Extractable(b) => extractable = b,
                Attribute::Sign(b) => sign = b,
                Attribute::KeyType(t) => ed25519 = t == KeyType::EC_EDWARDS,
                _ => {}
            }
        }
        if extractable {
            return Err("the sealing key has CKA_EXTRACTABLE true (or does not say): it could be copied off the token, refused".into());
        }
        if !sign {
            return Err("the sealing key does not have CKA_SIGN, refused".into());
        }
        Ok((key, ed25519))
    }
}

impl Sealer for HsmSealer {
    fn seal(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), String> {
        if self.open.is_none() {
            self.connect()?;
        }
        let o = self.open.as_ref().ok_or("no session")?;
        let r = if o.ed25519 {
            o.session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    o.key,
                    message,
                )
                .map(|s| ("ed25519".to_string(), s))
        } else {
            // CKM_ECDSA signs a digest: hash here so any module offering P-256 will do.
            let digest = Sha256::digest(message);
            o.session
                .sign(&Mechanism::Ecdsa, o.key, &digest)
                .map(|s| ("ecdsa-p256-sha256".to_string(), s))
        };
        r.map_err(|e| {
            // Drop the session: the next checkpoint logs in again.
            self.open = None;
            format!("C_Sign failed: {e}")
        })
    }
}

/// The sealer `[seal]` describes (the agent's one line), or `None` without `[seal]`.
pub fn from_config(cfg: &crate::config::Config) -> Result<Option<Box<dyn Sealer>>, String> {
    let Some(s) = &cfg.seal else {
        return Ok(None);
    };
    let key_id = match &s.key_id {
        Some(h) => Some(hex::decode(h).map_err(|e| format!("[seal] key_id is not hex: {e}"))?),
        None => None,
    };
    if s.key_label.is_none() && key_id.is_none() {
        return Err("[seal] needs key_label or key_id".into());
    }
    let sealer = HsmSealer::new(SealConfig {
        module: s.module.clone().unwrap_or_else(|| cfg.module.clone()),
        token_label: s.token_label.clone(),
        key_label: s.key_label.clone(),
        key_id,
        pin_file: s.pin_file.clone(),
    })?;
    Ok(Some(Box::new(sealer)))
}
