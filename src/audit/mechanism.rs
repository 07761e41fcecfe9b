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
        let params = match (decoded, m.parameter_len()) {
            (Some(p), _) => p,
            (None, Some(len)) if len > 0 => Params::Raw { len },
            _ => Params::None,
        };
        Mechanism { type_, params }
    }

    /// A mechanism known only by its type (its parameter unread).
    pub fn bare(type_: CK_MECHANISM_TYPE) -> Mechanism {
        Mechanism {
            type_,
            params: Params::None,
        }
    }
}

/// Whether a mechanism cannot work without a parameter: a module that accepts it has read
/// the parameter's pointer and length, and the parameter. Mechanisms whose parameter is
/// optional (CKM_AES_KEY_WRAP's IV) or absent are not listed, nor are unknown ones: for
/// them keytrail reads nothing past the type.
pub fn takes_parameter(type_: CK_MECHANISM_TYPE) -> bool {
    matches!(
        type_,
        CKM_AES_CBC
            | CKM_AES_CBC_PAD
            | CKM_AES_CTR
            | CKM_AES_GCM
            | CKM_AES_CCM
            | CKM_AES_CTS
            | CKM_AES_OFB
            | CKM_AES_CFB8
            | CKM_AES_CFB64
            | CKM_AES_CFB128
            | CKM_DES_CBC
            | CKM_DES_CBC_PAD
            | CKM_DES3_CBC
            | CKM_DES3_CBC_PAD
            | CKM_RSA_PKCS_OAEP
            | CKM_RSA_PKCS_PSS
            | CKM_SHA1_RSA_PKCS_PSS
            | CKM_SHA224_RSA_PKCS_PSS
            | CKM_SHA256_RSA_PKCS_PSS
            | CKM_SHA384_RSA_PKCS_PSS
            | CKM_SHA512_RSA_PKCS_PSS
            | CKM_ECDH1_DERIVE
            | CKM_ECDH1_COFACTOR_DERIVE
            | CKM_DH_PKCS_DERIVE
            | CKM_AES_ECB_ENCRYPT_DATA
            | CKM_AES_CBC_ENCRYPT_DATA
            | CKM_DES_ECB_ENCRYPT_DATA
            | CKM_DES_CBC_ENCRYPT_DATA
            | CKM_DES3_ECB_ENCRYPT_DATA
            | CKM_DES3_CBC_ENCRYPT_DATA
            | CKM_CONCATENATE_BASE_AND_KEY
            | CKM_CONCATENATE_BASE_AND_DATA
            | CKM_CONCATENATE_DATA_AND_BASE
            | CKM_XOR_BASE_AND_DATA
            | CKM_EXTRACT_KEY_FROM_KEY
            | CKM_SHA_1_HMAC_GENERAL
            | CKM_SHA256_HMAC_GENERAL
            | CKM_SHA384_HMAC_GENERAL
            | CKM_SHA512_HMAC_GENERAL
            | CKM_AES_MAC_GENERAL
            | CKM_AES_CMAC_GENERAL
    )
}
