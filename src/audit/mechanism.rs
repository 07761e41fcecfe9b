//! Mechanisms as the trail shows them: type and non-secret parameters only (hash, MGF,
//! IV and tag lengths; never IVs, AAD, salts, passwords or shared data).
//!
//! Held as numbers: names are looked up by the writer when it formats the record.

use crate::entry::args::Mechanism as RawMechanism;
use cryptoki_sys::*;

/// A mechanism's safe summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mechanism {
    /// The CKM_ number.
    pub type_: CK_MECHANISM_TYPE,
    /// Non-secret parameters.
    pub params: Params,
}

/// Non-secret mechanism parameters, by the parameter structure the mechanism takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Params {
    /// None, or none decoded and none given.
    #[default]
    None,
    /// CK_GCM_PARAMS: IV and AAD lengths in bytes, tag length in bits (the IV and AAD
    /// themselves are never logged).
    Gcm {
        /// ulIvLen.
        iv_len: CK_ULONG,
        /// ulAADLen.
        aad_len: CK_ULONG,
        /// ulTagBits.
        tag_bits: CK_ULONG,
    },
    /// CK_RSA_PKCS_OAEP_PARAMS: hash mechanism and MGF.
    Oaep {
        /// hashAlg.
        hash: CK_MECHANISM_TYPE,
        /// mgf.
        mgf: CK_ULONG,
    },
    /// CK_RSA_PKCS_PSS_PARAMS: hash mechanism, MGF and salt length.
    Pss {
        /// hashAlg.
        hash: CK_MECHANISM_TYPE,
        /// mgf.
        mgf: CK_ULONG,
        /// sLen.
        salt_len: CK_ULONG,
    },
    /// CK_ECDH1_DERIVE_PARAMS: the key derivation function.
    Ecdh {
        /// kdf.
        kdf: CK_ULONG,
    },
    /// Parameters not decoded: only their length.
    Raw {
        /// ulParameterLen.
        len: CK_ULONG,
    },
}

impl Mechanism {
    /// Summarizes a mechanism the module accepted.
    pub fn from_raw(m: &RawMechanism<'_>) -> Mechanism {
        let type_ = m.type_();
        let decoded = match type_ {
            CKM_AES_GCM => m.gcm().map(|g| Params::Gcm {
                iv_len: g.ulIvLen,
                aad_len: g.ulAADLen,
                tag_bits: g.ulTagBits,
            }),
            CKM_RSA_PKCS_OAEP => m.oaep().map(|o| Params::Oaep {
                hash: o.hashAlg,
                mgf: o.mgf,
            }),
            CKM_RSA_PKCS_PSS
            | CKM_SHA1_RSA_PKCS_PSS
            | CKM_SHA224_RSA_PKCS_PSS
            | CKM_SHA256_RSA_PKCS_PSS
            | CKM_SHA384_RSA_PKCS_PSS
            | CKM_SHA512_RSA_PKCS_PSS => m.pss().map(|p| Params::Pss {
                hash: p.hashAlg,
                mgf: p.mgf,
                salt_len: p.sLen,
            }),
            CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => {
                m.ecdh().map(|e| Params::Ecdh { kdf: e.kdf })
            }
            _ => None,
        };
        let params = match decoded {
            Some(p) => p,
            None if m.parameter_len() > 0 => Params::Raw {
                len: m.parameter_len(),
            },
            None => Params::None,
        };
        Mechanism { type_, params }
    }

    /// A mechanism known only by its type.
    pub fn bare(type_: CK_MECHANISM_TYPE) -> Mechanism {
        Mechanism {
            type_,
            params: Params::None,
        }
    }
}
