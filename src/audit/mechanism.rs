//! Mechanisms as the trail shows them: type, name and non-secret parameters only (hash,
//! MGF, IV and tag lengths; never IVs, AAD, salts, passwords or shared data).

use crate::entry::args::Mechanism as RawMechanism;
use cryptoki_sys::*;
use serde::Serialize;

/// A mechanism's safe summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mechanism {
    /// The CKM_ number.
    #[serde(rename = "type")]
    pub type_: u64,
    /// Its name, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'static str>,
    /// Non-secret parameters.
    #[serde(skip_serializing_if = "Params::is_empty")]
    pub params: Params,
}

/// Non-secret mechanism parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Params {
    /// Hash mechanism (OAEP, PSS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<&'static str>,
    /// Mask generation function (OAEP, PSS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mgf: Option<u64>,
    /// PSS salt length in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt_len: Option<u64>,
    /// IV length in bytes (GCM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iv_len: Option<u64>,
    /// AAD length in bytes (GCM); the AAD itself is never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aad_len: Option<u64>,
    /// Tag length in bits (GCM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_bits: Option<u64>,
    /// Key derivation function (ECDH).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kdf: Option<u64>,
    /// Length of the raw parameter block, for mechanisms not decoded above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
}

impl Params {
    fn is_empty(&self) -> bool {
        *self == Params::default()
    }
}

impl Mechanism {
    /// Summarizes a mechanism the module accepted.
    pub fn from_raw(m: &RawMechanism<'_>) -> Mechanism {
        let type_ = m.type_();
        let mut params = Params::default();
        let decoded = match type_ {
            CKM_AES_GCM => m.gcm().map(|g| {
                params.iv_len = Some(g.ulIvLen);
                params.aad_len = Some(g.ulAADLen);
                params.tag_bits = Some(g.ulTagBits);
            }),
            CKM_RSA_PKCS_OAEP => m.oaep().map(|o| {
                params.hash = crate::names::mechanism(o.hashAlg);
                params.mgf = Some(o.mgf);
            }),
            CKM_RSA_PKCS_PSS
            | CKM_SHA1_RSA_PKCS_PSS
            | CKM_SHA224_RSA_PKCS_PSS
            | CKM_SHA256_RSA_PKCS_PSS
            | CKM_SHA384_RSA_PKCS_PSS
            | CKM_SHA512_RSA_PKCS_PSS => m.pss().map(|p| {
                params.hash = crate::names::mechanism(p.hashAlg);
                params.mgf = Some(p.mgf);
                params.salt_len = Some(p.sLen);
            }),
            CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => m.ecdh().map(|e| {
                params.kdf = Some(e.kdf);
            }),
            _ => None,
        };
        if decoded.is_none() && m.parameter_len() > 0 {
            params.len = Some(m.parameter_len());
        }
        Mechanism {
            type_,
            name: crate::names::mechanism(type_),
            params,
        }
    }

    /// A mechanism known only by its type.
    pub fn bare(type_: CK_MECHANISM_TYPE) -> Mechanism {
        Mechanism {
            type_,
            name: crate::names::mechanism(type_),
            params: Params::default(),
        }
    }
}
