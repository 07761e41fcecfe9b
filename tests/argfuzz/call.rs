//! One fuzz case: random arguments built in the [`Arena`], one call on a function list,
//! and a report of everything the call returned or wrote.

use super::Source;
use super::arena::Arena;
use cryptoki_sys::*;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::ptr::null_mut;

/// Secret values the cases put in templates and keys: none of them may ever reach the
/// trail (the low-entropy one included: its SHA-256 is as good as the value).
pub const SECRET_VALUES: [&[u8]; 4] = [
    b"0123456789abcdef0123456789abcdef",
    b"Kt-Secret-Aes-Key-Value-7d93a1e4",
    b"Kt-Secret-Hmac-Key-5b20c8",
    b"aaaaaaaaaaaaaaaaaaaaaaaa",
];

/// The value of the AES key the starting state holds (extractable, not sensitive).
pub const AES_VALUE: &[u8] = SECRET_VALUES[1];
/// The value of the generic secret the starting state holds.
pub const HMAC_VALUE: &[u8] = SECRET_VALUES[2];

/// The DER encoding of the named curve P-256.
pub const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The P-256 base point, uncompressed.
pub fn p256_point() -> Vec<u8> {
    const X: [u8; 32] = [
        0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40,
        0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98,
        0xc2, 0x96,
    ];
    const Y: [u8; 32] = [
        0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e,
        0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf,
        0x51, 0xf5,
    ];
    let mut p = vec![0x04];
    p.extend_from_slice(&X);
    p.extend_from_slice(&Y);
    p
}

/// The handles of the starting state.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub rw: CK_SESSION_HANDLE,
    pub ro: CK_SESSION_HANDLE,
    pub aes: CK_OBJECT_HANDLE,
    pub kek: CK_OBJECT_HANDLE,
    pub hmac: CK_OBJECT_HANDLE,
    pub des3: CK_OBJECT_HANDLE,
    pub ec_public: CK_OBJECT_HANDLE,
    pub ec_private: CK_OBJECT_HANDLE,
    pub rsa_public: CK_OBJECT_HANDLE,
    pub rsa_private: CK_OBJECT_HANDLE,
    pub data: CK_OBJECT_HANDLE,
    pub cert: CK_OBJECT_HANDLE,
    /// `aes` wrapped by `kek` with CKM_AES_KEY_WRAP.
    pub wrapped: Vec<u8>,
}

impl Env {
    fn objects(&self) -> [(&'static str, CK_OBJECT_HANDLE); 11] {
        [
            ("aes", self.aes),
            ("kek", self.kek),
            ("hmac", self.hmac),
            ("des3", self.des3),
            ("ec_public", self.ec_public),
            ("ec_private", self.ec_private),
            ("rsa_public", self.rsa_public),
            ("rsa_private", self.rsa_private),
            ("data", self.data),
            ("cert", self.cert),
            ("invalid", 0xdead_beef),
        ]
    }
}

const BOOLS: [CK_ATTRIBUTE_TYPE; 17] = [
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_MODIFIABLE,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_DERIVE,
    CKA_SIGN_RECOVER,
    CKA_VERIFY_RECOVER,
    CKA_TRUSTED,
];

const OTHERS: [CK_ATTRIBUTE_TYPE; 22] = [
    CKA_CLASS,
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_KEY_TYPE,
    CKA_VALUE,
    CKA_VALUE,
    CKA_LABEL,
    CKA_LABEL,
    CKA_ID,
    CKA_VALUE_LEN,
    CKA_MODULUS_BITS,
    CKA_PUBLIC_EXPONENT,
    CKA_MODULUS,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_CERTIFICATE_TYPE,
    CKA_SUBJECT,
    CKA_APPLICATION,
    CKA_PRIVATE_EXPONENT,
    CKA_WRAP_TEMPLATE,
    CKA_UNWRAP_TEMPLATE,
    CKA_CHECK_VALUE,
];

const CLASSES: [CK_OBJECT_CLASS; 6] = [
    CKO_SECRET_KEY,
    CKO_PUBLIC_KEY,
    CKO_PRIVATE_KEY,
    CKO_DATA,
    CKO_CERTIFICATE,
    0x4000_1234,
];

const KEY_TYPES: [CK_KEY_TYPE; 6] = [
    CKK_AES,
    CKK_GENERIC_SECRET,
    CKK_EC,
    CKK_RSA,
    CKK_DES3,
    0x4000_4321,
];

/// What a template is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Create,
    Copy,
    Generate,
    PublicHalf,
    PrivateHalf,
    Derive,
    Unwrap,
    Set,
    Find,
    Output,
}

/// What a mechanism's parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    None,
    Iv16,
    Gcm,
    Ctr,
    Oaep,
    Pss,
    Ecdh,
    DeriveString,
    CbcEncryptData,
}

const KEYGEN: [(CK_MECHANISM_TYPE, Param); 5] = [
    (CKM_AES_KEY_GEN, Param::None),
    (CKM_GENERIC_SECRET_KEY_GEN, Param::None),
    (CKM_DES3_KEY_GEN, Param::None),
    (CKM_DES2_KEY_GEN, Param::None),
    (CKM_EC_KEY_PAIR_GEN, Param::None),
];

const KEYPAIRGEN: [(CK_MECHANISM_TYPE, Param); 5] = [
    (CKM_EC_KEY_PAIR_GEN, Param::None),
    (CKM_RSA_PKCS_KEY_PAIR_GEN, Param::None),
    (CKM_DSA_KEY_PAIR_GEN, Param::None),
    (CKM_DH_PKCS_KEY_PAIR_GEN, Param::None),
    (CKM_AES_KEY_GEN, Param::None),
];

const DERIVE: [(CK_MECHANISM_TYPE, Param); 6] = [
    (CKM_ECDH1_DERIVE, Param::Ecdh),
    (CKM_AES_ECB_ENCRYPT_DATA, Param::DeriveString),
    (CKM_AES_CBC_ENCRYPT_DATA, Param::CbcEncryptData),
    (CKM_DES3_ECB_ENCRYPT_DATA, Param::DeriveString),
    (CKM_CONCATENATE_BASE_AND_DATA, Param::DeriveString),
    (CKM_SHA256_RSA_PKCS, Param::None),
];

const SIGN: [(CK_MECHANISM_TYPE, Param); 8] = [
    (CKM_ECDSA, Param::None),
    (CKM_SHA256_RSA_PKCS, Param::None),
    (CKM_RSA_PKCS, Param::None),
    (CKM_RSA_PKCS_PSS, Param::Pss),
    (CKM_SHA256_RSA_PKCS_PSS, Param::Pss),
    (CKM_SHA256_HMAC, Param::None),
    (CKM_AES_CMAC, Param::None),
    (CKM_AES_GCM, Param::Gcm),
];

const CIPHER: [(CK_MECHANISM_TYPE, Param); 8] = [
    (CKM_AES_CBC_PAD, Param::Iv16),
    (CKM_AES_CBC, Param::Iv16),
    (CKM_AES_ECB, Param::None),
    (CKM_AES_GCM, Param::Gcm),
    (CKM_AES_CTR, Param::Ctr),
    (CKM_RSA_PKCS, Param::None),
    (CKM_RSA_PKCS_OAEP, Param::Oaep),
    (CKM_DES3_CBC, Param::Iv16),
];

const RECOVER: [(CK_MECHANISM_TYPE, Param); 3] = [
    (CKM_RSA_PKCS, Param::None),
    (CKM_RSA_X_509, Param::None),
    (CKM_ECDSA, Param::None),
];

const DIGEST: [(CK_MECHANISM_TYPE, Param); 3] = [
    (CKM_SHA256, Param::None),
    (CKM_SHA_1, Param::None),
    (CKM_MD5, Param::Iv16),
];

const WRAP: [(CK_MECHANISM_TYPE, Param); 6] = [
    (CKM_AES_KEY_WRAP, Param::None),
    (CKM_AES_KEY_WRAP_PAD, Param::None),
    (CKM_RSA_PKCS, Param::None),
    (CKM_RSA_PKCS_OAEP, Param::Oaep),
    (CKM_AES_CBC_PAD, Param::Iv16),
    (CKM_AES_ECB, Param::None),
];

const UNWRAP: [(CK_MECHANISM_TYPE, Param); 5] = [
    (CKM_AES_KEY_WRAP, Param::None),
    (CKM_AES_KEY_WRAP, Param::None),
    (CKM_AES_KEY_WRAP_PAD, Param::None),
    (CKM_RSA_PKCS_OAEP, Param::Oaep),
    (CKM_AES_CBC_PAD, Param::Iv16),
];

/// One case being built: the random source, the memory, the starting state, and a
/// description of every choice (printed when the two runs differ).
pub struct Case<'a> {
    s: &'a mut dyn Source,
    arena: &'a mut Arena,
    env: &'a Env,
    /// What was chosen, in words.
    pub desc: String,
    /// What the call returned and wrote.
    pub out: String,
    /// How often a choice goes wrong, in percent (0: a tidy case).
    wild: u64,
    /// The mechanism of the call, once chosen (templates depend on it).
    mechanism_type: CK_MECHANISM_TYPE,
}

impl<'a> Case<'a> {
    pub fn new(s: &'a mut dyn Source, arena: &'a mut Arena, env: &'a Env) -> Case<'a> {
        arena.reset();
        Case {
            s,
            arena,
            env,
            desc: String::new(),
            out: String::new(),
            wild: 0,
            mechanism_type: 0,
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.s.next_u64() % n.max(1)
    }

    fn percent(&mut self) -> u64 {
        self.below(100)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn note(&mut self, text: impl AsRef<str>) {
        self.desc.push_str(text.as_ref());
        self.desc.push(' ');
    }

    fn session(&mut self) -> CK_SESSION_HANDLE {
        let wrong = self.goes_wrong();
        let (name, h) = match (wrong, self.below(4)) {
            (true, 0) => ("ro", self.env.ro),
            (true, 1) => ("invalid", 0xdead),
            (true, 2) => ("zero", 0),
            _ => ("rw", self.env.rw),
        };
        self.note(format!("session={name}"));
        h
    }

    fn object(&mut self, role: &str) -> CK_OBJECT_HANDLE {
        let objects = self.env.objects();
        let (name, h) = self.pick(&objects);
        self.note(format!("{role}={name}"));
        h
    }

    /// A pointer the module may not dereference.
    fn garbage(&mut self) -> *mut u8 {
        if self.below(2) == 0 {
            0x10 as *mut u8
        } else {
            self.arena.guard()
        }
    }

    /// A well-formed value for an attribute type.
    fn value(&mut self, type_: CK_ATTRIBUTE_TYPE, depth: u32) -> Vec<u8> {
        let ulong = |v: CK_ULONG| v.to_ne_bytes().to_vec();
        match type_ {
            // Never a token object: children share the token directory.
            CKA_TOKEN => vec![0],
            t if BOOLS.contains(&t) => vec![self.below(2) as u8],
            CKA_CLASS => ulong(self.pick(&CLASSES)),
            CKA_KEY_TYPE => ulong(self.pick(&KEY_TYPES)),
            CKA_CERTIFICATE_TYPE => ulong(self.pick(&[CKC_X_509, CKC_X_509, 7])),
            CKA_VALUE_LEN => ulong(self.pick(&[16, 24, 32, 32, 0, 7, 1 << 40])),
            // Small or out of range only: a large in-range modulus takes seconds.
            CKA_MODULUS_BITS => ulong(self.pick(&[512, 512, 0, 1, 100_000, CK_ULONG::MAX])),
            CKA_PUBLIC_EXPONENT => self.pick(&[&[1u8, 0, 1][..], &[3], &[0xff; 9]]).to_vec(),
            CKA_VALUE => self.pick(&SECRET_VALUES).to_vec(),
            CKA_LABEL => b"fz-label".to_vec(),
            CKA_APPLICATION => b"fz-app".to_vec(),
            CKA_ID => vec![0x1d, 0x02],
            CKA_SUBJECT => b"0\x0b1\x090\x07\x06\x03U\x04\x03\x0c\x00".to_vec(),
            CKA_EC_PARAMS => match self.below(3) {
                0 => vec![0x06, 0x03, 0x2b, 0x65, 0x70],
                _ => P256.to_vec(),
            },
            CKA_EC_POINT => {
                let p = p256_point();
                let mut der = vec![0x04, p.len() as u8];
                der.extend_from_slice(&p);
                der
            }
            CKA_MODULUS => vec![0xc3; 64],
            CKA_WRAP_TEMPLATE | CKA_UNWRAP_TEMPLATE if depth == 0 => {
                let n = 1 + self.below(3) as usize;
                let attrs: Vec<CK_ATTRIBUTE> = (0..n)
                    .map(|_| {
                        let t = self.pick(&OTHERS[..12]);
                        let v = self.value(t, 1);
                        self.attribute(t, v)
                    })
                    .collect();
                as_bytes(&attrs)
            }
            _ => vec![0x5a; 4],
        }
    }

    /// Whether this choice goes wrong: never in a tidy case, `wild`% of the time
    /// otherwise.
    fn goes_wrong(&mut self) -> bool {
        self.wild > 0 && self.percent() < self.wild
    }

    /// A random attribute type for templates.
    fn attribute_type(&mut self) -> CK_ATTRIBUTE_TYPE {
        match self.percent() {
            0..30 => self.pick(&BOOLS),
            30..92 => self.pick(&OTHERS),
            92..96 => CKA_VENDOR_DEFINED | self.below(16),
            // Any other number, never CKA_TOKEN.
            _ => 0x1000 + self.below(0x7fff_0000),
        }
    }

    /// One input attribute: `value` for `type_`, with a random shape.
    fn attribute(&mut self, type_: CK_ATTRIBUTE_TYPE, value: Vec<u8>) -> CK_ATTRIBUTE {
        let len = value.len() as CK_ULONG;
        let name = keytrail_name(type_);
        let shape = if self.goes_wrong() {
            self.below(9)
        } else {
            u64::MAX
        };
        let (p, n, shape): (*mut u8, CK_ULONG, String) = match shape {
            0 => {
                let m = 1 + self.below(7) as usize;
                (self.arena.put(&value, m), len, format!("misaligned+{m}"))
            }
            1 => {
                let n = self.below(len + 3);
                (self.arena.put(&value, 0), n, format!("len{n}"))
            }
            // ulValueLen runs into the neighbouring memory: the PIN.
            2 | 3 => {
                let extra = 1 + self.below(super::arena::PIN_CANARY.len() as u64);
                (
                    self.arena.put(&value, 0),
                    len + extra,
                    format!("overrun+{extra}"),
                )
            }
            4 => {
                let extra = 1 + self.below(64);
                (
                    self.arena.put_at_edge(&value),
                    len + extra,
                    format!("edge+{extra}"),
                )
            }
            5 => (null_mut(), len, "null".into()),
            6 => (self.garbage(), len, "garbage".into()),
            7 => (
                self.arena.put(&value, 0),
                CK_UNAVAILABLE_INFORMATION,
                "unavailable".into(),
            ),
            8 => {
                let n = self.pick(&[1 << 40, CK_ULONG::MAX / 2, CK_ULONG::MAX - 1]);
                (self.arena.put(&value, 0), n, format!("huge{n:#x}"))
            }
            _ => (self.arena.put(&value, 0), len, "ok".into()),
        };
        self.note(format!("{name}:{shape}"));
        CK_ATTRIBUTE {
            type_,
            pValue: p as *mut c_void,
            ulValueLen: n,
        }
    }

    /// One output attribute of C_GetAttributeValue.
    fn output_attribute(&mut self) -> CK_ATTRIBUTE {
        let type_ = self.attribute_type();
        let name = keytrail_name(type_);
        let shape = if self.goes_wrong() {
            self.below(5)
        } else {
            5 + self.below(2)
        };
        let (p, n, shape): (*mut u8, CK_ULONG, String) = match shape {
            0 => {
                let n = 1 + self.below(4);
                (self.arena.put(&[0; 4], 0), n, format!("small{n}"))
            }
            1 => (self.garbage(), 256, "garbage".into()),
            2 => (self.arena.put_at_edge(&[0; 16]), 256, "edge16of256".into()),
            3 => {
                let m = 1 + self.below(7) as usize;
                (self.arena.put(&[0; 256], m), 256, format!("misaligned+{m}"))
            }
            4 => (self.arena.put(&[0; 256], 0), 1 << 40, "huge".into()),
            5 => (null_mut(), 0, "query".into()),
            _ => (self.arena.put(&[0; 256], 0), 256, "buf256".into()),
        };
        self.note(format!("{name}:{shape}"));
        CK_ATTRIBUTE {
            type_,
            pValue: p as *mut c_void,
            ulValueLen: n,
        }
    }

    /// A well-formed starting point for a template of kind `kind`: what a careful
    /// application would pass (sometimes with a twist the module rejects).
    fn recipe(&mut self, kind: Kind) -> Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
        let ulong = |t: CK_ATTRIBUTE_TYPE, v: CK_ULONG| (t, v.to_ne_bytes().to_vec());
        let bytes = |t: CK_ATTRIBUTE_TYPE, v: &[u8]| (t, v.to_vec());
        let token = (CKA_TOKEN, vec![0]);
        let secret = self.pick(&SECRET_VALUES);
        match kind {
            Kind::Create => match self.below(7) {
                0 => vec![
                    ulong(CKA_CLASS, CKO_SECRET_KEY),
                    ulong(CKA_KEY_TYPE, CKK_AES),
                    token,
                    bytes(CKA_VALUE, &secret[..32.min(secret.len()) / 8 * 8]),
                ],
                1 => vec![
                    ulong(CKA_CLASS, CKO_SECRET_KEY),
                    ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
                    token,
                    bytes(CKA_VALUE, secret),
                ],
                2 => vec![
                    ulong(CKA_CLASS, CKO_DATA),
                    token,
                    bytes(CKA_LABEL, b"fz-data-2"),
                    bytes(CKA_VALUE, b"some public data"),
                ],
                3 => vec![
                    ulong(CKA_CLASS, CKO_CERTIFICATE),
                    ulong(CKA_CERTIFICATE_TYPE, CKC_X_509),
                    token,
                    bytes(CKA_SUBJECT, b"0\x0b1\x090\x07\x06\x03U\x04\x03\x0c\x00"),
                    bytes(CKA_VALUE, b"a certificate, public"),
                ],
                4 => {
                    let p = p256_point();
                    let mut der = vec![0x04, p.len() as u8];
                    der.extend_from_slice(&p);
                    vec![
                        ulong(CKA_CLASS, CKO_PUBLIC_KEY),
                        ulong(CKA_KEY_TYPE, CKK_EC),
                        token,
                        bytes(CKA_EC_PARAMS, &P256),
                        bytes(CKA_EC_POINT, &der),
                    ]
                }
                // CKA_CLASS twice, public first: the value is a secret key's.
                5 => vec![
                    ulong(CKA_CLASS, CKO_PUBLIC_KEY),
                    ulong(CKA_CLASS, CKO_SECRET_KEY),
                    ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
                    token,
                    bytes(CKA_VALUE, SECRET_VALUES[3]),
                ],
                _ => vec![
                    ulong(CKA_CLASS, CKO_SECRET_KEY),
                    ulong(CKA_CLASS, CKO_PUBLIC_KEY),
                    ulong(CKA_KEY_TYPE, CKK_AES),
                    token,
                    bytes(CKA_VALUE, SECRET_VALUES[0]),
                ],
            },
            Kind::Copy => match self.below(3) {
                0 => vec![bytes(CKA_LABEL, b"fz-copy")],
                1 => vec![token, bytes(CKA_ID, &[7])],
                _ => Vec::new(),
            },
            Kind::Generate => match self.mechanism_type {
                CKM_AES_KEY_GEN | CKM_GENERIC_SECRET_KEY_GEN => vec![
                    token,
                    ulong(CKA_VALUE_LEN, self.pick(&[16, 32, 24])),
                    bytes(CKA_LABEL, b"fz-gen"),
                ],
                _ => vec![token, bytes(CKA_LABEL, b"fz-gen")],
            },
            Kind::PublicHalf => match self.mechanism_type {
                CKM_RSA_PKCS_KEY_PAIR_GEN => vec![
                    token,
                    ulong(CKA_MODULUS_BITS, 512),
                    bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
                ],
                _ => vec![token, bytes(CKA_EC_PARAMS, &P256)],
            },
            Kind::PrivateHalf => vec![token, (CKA_SIGN, vec![1])],
            Kind::Unwrap => vec![
                ulong(CKA_CLASS, CKO_SECRET_KEY),
                ulong(CKA_KEY_TYPE, CKK_AES),
                token,
                bytes(CKA_LABEL, b"fz-unwrapped"),
            ],
            Kind::Derive => vec![
                ulong(CKA_CLASS, CKO_SECRET_KEY),
                ulong(
                    CKA_KEY_TYPE,
                    self.pick(&[CKK_AES, CKK_GENERIC_SECRET, CKK_AES]),
                ),
                token,
                ulong(CKA_VALUE_LEN, self.pick(&[16, 32])),
            ],
            Kind::Set => match self.below(4) {
                0 => vec![bytes(CKA_LABEL, b"fz-relabel")],
                1 => vec![bytes(CKA_ID, &[9, 9])],
                2 => vec![bytes(CKA_VALUE, secret)],
                _ => vec![ulong(CKA_CLASS, CKO_PUBLIC_KEY)],
            },
            Kind::Find => match self.below(3) {
                0 => vec![ulong(CKA_CLASS, CKO_SECRET_KEY)],
                1 => vec![bytes(CKA_LABEL, b"fz-aes")],
                _ => vec![ulong(CKA_KEY_TYPE, CKK_EC)],
            },
            Kind::Output => Vec::new(),
        }
    }

    /// A template of kind `kind`: the array (with a random placement) and the count
    /// passed with it.
    fn template(&mut self, role: &str, kind: Kind) -> (CK_ATTRIBUTE_PTR, CK_ULONG) {
        self.note(format!("{role}=["));
        let mut attrs: Vec<CK_ATTRIBUTE> = Vec::new();
        if kind == Kind::Output {
            let n = 1 + self.below(4);
            for _ in 0..n {
                let a = self.output_attribute();
                attrs.push(a);
            }
        } else {
            let base = if self.below(10) < 8 {
                self.recipe(kind)
            } else {
                Vec::new()
            };
            for (t, v) in base {
                let a = self.attribute(t, v);
                attrs.push(a);
            }
            let extra = match (self.wild, self.percent()) {
                (0, 0..60) => 0,
                (0, _) => 1,
                (_, 0..25) => 0,
                (_, 25..55) => 1,
                (_, 55..75) => 2,
                (_, 75..90) => 3,
                _ => 4 + self.below(3),
            };
            for _ in 0..extra {
                let t = self.attribute_type();
                let v = self.value(t, 0);
                let a = self.attribute(t, v);
                attrs.push(a);
            }
        }
        let n = attrs.len();
        let bytes = as_bytes(&attrs);
        let wrong = self.goes_wrong();
        let (p, shape): (*mut u8, String) = match (wrong, self.below(5)) {
            (true, 0) => {
                let m = self.pick(&[1usize, 4]);
                (self.arena.put(&bytes, m), format!("misaligned+{m}"))
            }
            (true, 1) => (self.arena.put_at_edge(&bytes), "edge".into()),
            (true, 2) => (null_mut(), "null".into()),
            (true, 3) => (self.garbage(), "garbage".into()),
            _ => (self.arena.put(&bytes, 0), "ok".into()),
        };
        let wrong = self.goes_wrong();
        let count = match (wrong, self.below(3)) {
            (true, 0) => n as CK_ULONG + 1 + self.below(3),
            (true, 1) => self.pick(&[1 << 32, CK_ULONG::MAX / 24, CK_ULONG::MAX]),
            (true, _) => 0,
            _ => n as CK_ULONG,
        };
        self.note(format!("] ptr={shape} count={count:#x}"));
        (p as CK_ATTRIBUTE_PTR, count)
    }

    /// The bytes of a parameter block of kind `param`; with `inner_garbage`, the
    /// pointers inside it point nowhere.
    fn parameter_bytes(&mut self, param: Param, inner_garbage: bool) -> Vec<u8> {
        let point = p256_point();
        let (iv, aad, public, data, bad) = (
            self.arena.put(&[0x11; 16], 0),
            self.arena.put(b"aad", 0),
            self.arena.put(&point, 0),
            self.arena.put(&[0x22; 32], 0),
            self.garbage(),
        );
        let or_bad = |p: *mut u8| if inner_garbage { bad } else { p };
        match param {
            Param::None => Vec::new(),
            Param::Iv16 => vec![0x11; 16],
            Param::Gcm => struct_bytes(&CK_GCM_PARAMS {
                pIv: or_bad(iv),
                ulIvLen: 12,
                ulIvBits: 96,
                pAAD: aad,
                ulAADLen: 3,
                ulTagBits: self.pick(&[128, 96, 7]),
            }),
            Param::Ctr => struct_bytes(&CK_AES_CTR_PARAMS {
                ulCounterBits: self.pick(&[128, 0, 129]),
                cb: [0x33; 16],
            }),
            Param::Oaep => struct_bytes(&CK_RSA_PKCS_OAEP_PARAMS {
                hashAlg: self.pick(&[CKM_SHA256, CKM_SHA_1, 0x4242]),
                mgf: self.pick(&[CKG_MGF1_SHA256, CKG_MGF1_SHA1, 99]),
                source: CKZ_DATA_SPECIFIED,
                pSourceData: or_bad(null_mut()) as *mut c_void,
                ulSourceDataLen: if inner_garbage { 8 } else { 0 },
            }),
            Param::Pss => struct_bytes(&CK_RSA_PKCS_PSS_PARAMS {
                hashAlg: self.pick(&[CKM_SHA256, CKM_SHA_1, 0x4242]),
                mgf: self.pick(&[CKG_MGF1_SHA256, CKG_MGF1_SHA1, 99]),
                sLen: self.pick(&[32, 0, 1 << 20]),
            }),
            Param::Ecdh => struct_bytes(&CK_ECDH1_DERIVE_PARAMS {
                kdf: self.pick(&[CKD_NULL, CKD_NULL, CKD_SHA256_KDF, 77]),
                ulSharedDataLen: 0,
                pSharedData: null_mut(),
                ulPublicDataLen: point.len() as CK_ULONG,
                pPublicData: or_bad(public),
            }),
            Param::DeriveString => struct_bytes(&CK_KEY_DERIVATION_STRING_DATA {
                pData: or_bad(data),
                ulLen: self.pick(&[16, 32, 5]),
            }),
            Param::CbcEncryptData => struct_bytes(&CK_AES_CBC_ENCRYPT_DATA_PARAMS {
                iv: [0x44; 16],
                pData: or_bad(data),
                length: self.pick(&[16, 32, 5]),
            }),
        }
    }

    /// A parameter of kind `param`, well-formed or not, and its length.
    fn parameter(&mut self, param: Param) -> (*mut c_void, CK_ULONG) {
        let shape = if self.goes_wrong() { self.percent() } else { 0 };
        let bytes = self.parameter_bytes(param, (86..93).contains(&shape));
        if bytes.is_empty() {
            return match shape {
                0..60 => (null_mut(), 0),
                60..80 => (self.garbage() as *mut c_void, 16),
                _ => (self.arena.put(&[0x66; 8], 0) as *mut c_void, 8),
            };
        }
        let len = bytes.len() as CK_ULONG;
        let (p, n, name) = match shape {
            0..60 => (self.arena.put(&bytes, 0), len, "ok"),
            60..70 => (null_mut(), len, "null"),
            70..78 => (self.arena.put(&bytes, 0), len + 1, "len+1"),
            78..86 => (self.garbage(), len, "garbage"),
            86..93 => (self.arena.put(&bytes, 0), len, "inner-garbage"),
            _ => (
                self.arena.put_at_edge(&bytes[..bytes.len() / 2]),
                len,
                "truncated-at-edge",
            ),
        };
        self.note(format!("param={param:?}:{name}"));
        (p as *mut c_void, n)
    }

    /// A mechanism pointer: a type from `pool` (or any other number), its parameter, and
    /// a random placement.
    fn mechanism(
        &mut self,
        pool: &[(CK_MECHANISM_TYPE, Param)],
    ) -> (CK_MECHANISM_PTR, CK_MECHANISM_TYPE) {
        let (type_, param) = match if self.goes_wrong() { self.percent() } else { 0 } {
            0..60 => self.pick(pool),
            60..80 => self.pick(&[
                (CKM_ECDH1_DERIVE, Param::Ecdh),
                (CKM_AES_GCM, Param::Gcm),
                (CKM_RSA_PKCS_OAEP, Param::Oaep),
                (CKM_RSA_PKCS_PSS, Param::Pss),
            ]),
            _ => (
                self.pick(&[0x4000_0001, CKM_VENDOR_DEFINED | 5, 0xffff]),
                Param::None,
            ),
        };
        self.note(format!("mechanism={type_:#x}"));
        self.mechanism_type = type_;
        let (p, n) = self.parameter(param);
        let m = CK_MECHANISM {
            mechanism: type_,
            pParameter: p,
            ulParameterLen: n,
        };
        let bytes = struct_bytes(&m);
        let wrong = self.goes_wrong();
        let (ptr, shape): (*mut u8, &str) = match (wrong, self.below(5)) {
            (true, 0) => (self.arena.put(&bytes, 3), "misaligned+3"),
            // Only the `mechanism` field is readable.
            (true, 1) | (true, 2) => (self.arena.put_at_edge(&bytes[..8]), "type-only"),
            (true, 3) => (null_mut(), "null"),
            (true, _) => (self.garbage(), "garbage"),
            _ => (self.arena.put(&bytes, 0), "ok"),
        };
        self.note(format!("mechanism_ptr={shape}"));
        (ptr as CK_MECHANISM_PTR, type_)
    }

    /// A key for `mechanism` in `role` (`sign`, `verify`, `encrypt`, `decrypt`, `wrap`,
    /// `wrapped`, `unwrap`, `derive`): in a tidy case usually one that fits, otherwise any
    /// object or an invalid handle.
    fn key_for(&mut self, mechanism: CK_MECHANISM_TYPE, role: &str) -> CK_OBJECT_HANDLE {
        let e = self.env;
        let fits: &[(&str, CK_OBJECT_HANDLE)] = match (mechanism, role) {
            (CKM_ECDSA, "verify") => &[("ec_public", e.ec_public)],
            (CKM_ECDSA | CKM_ECDH1_DERIVE, _) => &[("ec_private", e.ec_private)],
            (CKM_SHA256_HMAC | CKM_CONCATENATE_BASE_AND_DATA, _) => &[("hmac", e.hmac)],
            (CKM_DES3_CBC | CKM_DES3_ECB_ENCRYPT_DATA, _) => &[("des3", e.des3)],
            (CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD, "wrap" | "unwrap") => &[("kek", e.kek)],
            (_, "wrapped") => &[("aes", e.aes), ("hmac", e.hmac)],
            (
                CKM_RSA_PKCS
                | CKM_RSA_X_509
                | CKM_RSA_PKCS_OAEP
                | CKM_SHA256_RSA_PKCS
                | CKM_RSA_PKCS_PSS
                | CKM_SHA256_RSA_PKCS_PSS,
                "verify" | "encrypt" | "wrap",
            ) => &[("rsa_public", e.rsa_public)],
            (
                CKM_RSA_PKCS
                | CKM_RSA_X_509
                | CKM_RSA_PKCS_OAEP
                | CKM_SHA256_RSA_PKCS
                | CKM_RSA_PKCS_PSS
                | CKM_SHA256_RSA_PKCS_PSS,
                _,
            ) => &[("rsa_private", e.rsa_private)],
            _ => &[("aes", e.aes), ("kek", e.kek)],
        };
        if self.wild == 0 && self.below(10) < 8 {
            let (name, h) = self.pick(fits);
            self.note(format!("{role}={name}"));
            h
        } else {
            self.object(role)
        }
    }

    /// Where a CK_ULONG output goes: `Some` when the pointer is ours to read afterwards.
    fn ulong_out(&mut self, role: &str) -> (*mut CK_ULONG, Option<*mut CK_ULONG>) {
        let wrong = self.goes_wrong();
        let (p, shape): (*mut u8, &str) = match (wrong, self.below(3)) {
            (true, 0) => (self.arena.put(&[0xee; 8], 5), "misaligned+5"),
            (true, 1) => (null_mut(), "null"),
            _ => (self.arena.put(&[0xee; 8], 0), "ok"),
        };
        self.note(format!("{role}={shape}"));
        let p = p as *mut CK_ULONG;
        (p, (!p.is_null()).then_some(p))
    }

    fn report_ulong(&mut self, role: &str, p: Option<*mut CK_ULONG>) {
        if let Some(p) = p {
            // SAFETY (test): our own buffer.
            let v = unsafe { std::ptr::read_unaligned(p) };
            let _ = write!(self.out, "{role}={v:#x} ");
        }
    }

    fn rv(&mut self, name: &str, rv: CK_RV) -> CK_RV {
        let _ = write!(self.out, "{name}={rv:#x} ");
        rv
    }

    /// Chooses a call, makes it on `l` (with any follow-up calls a success calls for),
    /// and records what came back in [`Case::out`]. `announce` receives the description
    /// just before the first call, so that a crash still says what was called.
    pub fn run(&mut self, l: &CK_FUNCTION_LIST, announce: &mut dyn FnMut(&str)) {
        self.wild = match self.below(10) {
            0..4 => 0,
            4..6 => 10,
            _ => 40,
        };
        self.note(format!("wild={}", self.wild));
        let which = self.below(100);
        let kind = match which {
            0..12 => "C_CreateObject",
            12..20 => "C_CopyObject",
            20..28 => "C_GenerateKey",
            28..35 => "C_GenerateKeyPair",
            35..43 => "C_DeriveKey",
            43..55 => "C_SetAttributeValue",
            55..69 => "C_GetAttributeValue",
            69..75 => "C_FindObjectsInit",
            75..79 => "C_SignInit",
            79..82 => "C_VerifyInit",
            82..86 => "C_EncryptInit",
            86..89 => "C_DecryptInit",
            89..90 => "C_SignRecoverInit",
            90..91 => "C_VerifyRecoverInit",
            91..92 => "C_DigestInit",
            92..96 => "C_WrapKey",
            _ => "C_UnwrapKey",
        };
        self.note(kind);
        // SAFETY (test): the arguments are deliberately wrong in every way a caller can
        // get them wrong; whatever happens is compared with the module's own behaviour
        // in a child process.
        unsafe {
            match kind {
                "C_CreateObject" => {
                    let s = self.session();
                    let (t, n) = self.template("template", Kind::Create);
                    let (h, mine) = self.ulong_out("handle");
                    announce(&self.desc);
                    let rv = (l.C_CreateObject.expect("fn"))(s, t, n, h);
                    self.rv("rv", rv);
                    self.report_ulong("handle", mine);
                }
                "C_CopyObject" => {
                    let s = self.session();
                    let o = self.object("object");
                    let (t, n) = self.template("template", Kind::Copy);
                    let (h, mine) = self.ulong_out("handle");
                    announce(&self.desc);
                    let rv = (l.C_CopyObject.expect("fn"))(s, o, t, n, h);
                    self.rv("rv", rv);
                    self.report_ulong("handle", mine);
                }
                "C_GenerateKey" => {
                    let s = self.session();
                    let (m, _) = self.mechanism(&KEYGEN);
                    let (t, n) = self.template("template", Kind::Generate);
                    let (h, mine) = self.ulong_out("handle");
                    announce(&self.desc);
                    let rv = (l.C_GenerateKey.expect("fn"))(s, m, t, n, h);
                    self.rv("rv", rv);
                    self.report_ulong("handle", mine);
                }
                "C_GenerateKeyPair" => {
                    let s = self.session();
                    let (m, _) = self.mechanism(&KEYPAIRGEN);
                    let (pt, pn) = self.template("public", Kind::PublicHalf);
                    let (qt, qn) = self.template("private", Kind::PrivateHalf);
                    let (h1, mine1) = self.ulong_out("public_handle");
                    let (h2, mine2) = self.ulong_out("private_handle");
                    announce(&self.desc);
                    let rv = (l.C_GenerateKeyPair.expect("fn"))(s, m, pt, pn, qt, qn, h1, h2);
                    self.rv("rv", rv);
                    self.report_ulong("public", mine1);
                    self.report_ulong("private", mine2);
                }
                "C_DeriveKey" => {
                    let s = self.session();
                    let (m, t) = self.mechanism(&DERIVE);
                    let base = self.key_for(t, "derive");
                    let (t, n) = self.template("template", Kind::Derive);
                    let (h, mine) = self.ulong_out("handle");
                    announce(&self.desc);
                    let rv = (l.C_DeriveKey.expect("fn"))(s, m, base, t, n, h);
                    self.rv("rv", rv);
                    self.report_ulong("handle", mine);
                }
                "C_SetAttributeValue" => {
                    let s = self.session();
                    let o = self.object("object");
                    let (t, n) = self.template("template", Kind::Set);
                    announce(&self.desc);
                    let rv = (l.C_SetAttributeValue.expect("fn"))(s, o, t, n);
                    self.rv("rv", rv);
                }
                "C_GetAttributeValue" => {
                    let s = self.session();
                    let o = self.object("object");
                    let (t, n) = self.template("template", Kind::Output);
                    announce(&self.desc);
                    let rv = (l.C_GetAttributeValue.expect("fn"))(s, o, t, n);
                    self.rv("rv", rv);
                }
                "C_FindObjectsInit" => {
                    let s = self.session();
                    let (t, n) = self.template("template", Kind::Find);
                    announce(&self.desc);
                    let rv = (l.C_FindObjectsInit.expect("fn"))(s, t, n);
                    if self.rv("rv", rv) == CKR_OK {
                        let mut found = [0 as CK_OBJECT_HANDLE; 64];
                        let mut count: CK_ULONG = 0;
                        let rv =
                            (l.C_FindObjects.expect("fn"))(s, found.as_mut_ptr(), 64, &mut count);
                        self.rv("find", rv);
                        let mut found = found[..(count as usize).min(64)].to_vec();
                        // SoftHSM's order follows object addresses in memory.
                        found.sort_unstable();
                        let _ = write!(self.out, "found={found:?} ");
                        let rv = (l.C_FindObjectsFinal.expect("fn"))(s);
                        self.rv("final", rv);
                    }
                }
                "C_WrapKey" => {
                    let s = self.session();
                    let (m, t) = self.mechanism(&WRAP);
                    let wrapping = self.key_for(t, "wrap");
                    let key = self.key_for(t, "wrapped");
                    let (out, shape): (*mut u8, &str) = match self.percent() {
                        0..30 => (null_mut(), "query"),
                        30..85 => (self.arena.scratch(512, 0, &[]), "buf512"),
                        _ => (self.arena.scratch(8, 0, &[]), "buf8"),
                    };
                    let (len, mine) = self.ulong_out("wrapped_len");
                    if let Some(p) = mine {
                        let n: CK_ULONG = if shape == "buf8" { 8 } else { 512 };
                        std::ptr::write_unaligned(p, n);
                    }
                    self.note(format!("wrapped={shape}"));
                    announce(&self.desc);
                    let rv = (l.C_WrapKey.expect("fn"))(s, m, wrapping, key, out, len);
                    self.rv("rv", rv);
                    self.report_ulong("wrapped_len", mine);
                }
                "C_UnwrapKey" => {
                    let s = self.session();
                    let (m, t) = self.mechanism(&UNWRAP);
                    let unwrapping = self.key_for(t, "unwrap");
                    let wrapped = self.env.wrapped.clone();
                    let (w, wn, shape): (*mut u8, CK_ULONG, &str) = match self.percent() {
                        0..60 => (self.arena.put(&wrapped, 0), wrapped.len() as CK_ULONG, "ok"),
                        60..75 => (self.arena.put(&[0x77; 40], 0), 40, "junk"),
                        75..85 => (self.garbage(), 40, "garbage"),
                        85..92 => (null_mut(), 40, "null"),
                        _ => (self.arena.put(&wrapped, 0), 1 << 40, "huge"),
                    };
                    self.note(format!("wrapped={shape}"));
                    let (t, n) = self.template("template", Kind::Unwrap);
                    let (h, mine) = self.ulong_out("handle");
                    announce(&self.desc);
                    let rv = (l.C_UnwrapKey.expect("fn"))(s, m, unwrapping, w, wn, t, n, h);
                    self.rv("rv", rv);
                    self.report_ulong("handle", mine);
                }
                init => self.operation(l, init, announce),
            }
        }
        let _ = write!(self.out, "memory={:016x}", self.arena.digest());
    }

    /// An *Init call, and when it succeeds the one-shot call that ends the operation.
    unsafe fn operation(
        &mut self,
        l: &CK_FUNCTION_LIST,
        init: &str,
        announce: &mut dyn FnMut(&str),
    ) {
        let s = self.session();
        let pool: &[(CK_MECHANISM_TYPE, Param)] = match init {
            "C_SignInit" | "C_VerifyInit" => &SIGN,
            "C_EncryptInit" | "C_DecryptInit" => &CIPHER,
            "C_DigestInit" => &DIGEST,
            _ => &RECOVER,
        };
        let (m, t) = self.mechanism(pool);
        let role = match init {
            "C_SignInit" | "C_SignRecoverInit" => "sign",
            "C_VerifyInit" | "C_VerifyRecoverInit" => "verify",
            "C_EncryptInit" => "encrypt",
            _ => "decrypt",
        };
        let key = if init == "C_DigestInit" {
            0
        } else {
            self.key_for(t, role)
        };
        announce(&self.desc);
        // SAFETY (test): see `run`.
        let rv = unsafe {
            match init {
                "C_SignInit" => (l.C_SignInit.expect("fn"))(s, m, key),
                "C_VerifyInit" => (l.C_VerifyInit.expect("fn"))(s, m, key),
                "C_EncryptInit" => (l.C_EncryptInit.expect("fn"))(s, m, key),
                "C_DecryptInit" => (l.C_DecryptInit.expect("fn"))(s, m, key),
                "C_SignRecoverInit" => (l.C_SignRecoverInit.expect("fn"))(s, m, key),
                "C_VerifyRecoverInit" => (l.C_VerifyRecoverInit.expect("fn"))(s, m, key),
                _ => (l.C_DigestInit.expect("fn"))(s, m),
            }
        };
        if self.rv("rv", rv) != CKR_OK {
            return;
        }
        let data = self.arena.put(&[0x42; 32], 0);
        let out = self.arena.scratch(1024, 0, &[]);
        let mut query: CK_ULONG = 0;
        let mut len: CK_ULONG = 1024;
        type OneShot = unsafe extern "C" fn(
            CK_SESSION_HANDLE,
            CK_BYTE_PTR,
            CK_ULONG,
            CK_BYTE_PTR,
            CK_ULONG_PTR,
        ) -> CK_RV;
        let one_shot: Option<OneShot> = match init {
            "C_SignInit" => l.C_Sign,
            "C_EncryptInit" => l.C_Encrypt,
            "C_DecryptInit" => l.C_Decrypt,
            "C_SignRecoverInit" => l.C_SignRecover,
            "C_VerifyRecoverInit" => l.C_VerifyRecover,
            "C_DigestInit" => l.C_Digest,
            _ => None,
        };
        // SAFETY (test): valid buffers of the stated sizes.
        unsafe {
            match one_shot {
                Some(f) => {
                    let rv = f(s, data, 32, null_mut(), &mut query);
                    self.rv("query", rv);
                    let _ = write!(self.out, "query_len={query} ");
                    let rv = f(s, data, 32, out, &mut len);
                    self.rv("call", rv);
                    let _ = write!(self.out, "len={len} ");
                }
                None => {
                    let rv = (l.C_Verify.expect("fn"))(s, data, 32, out, 64);
                    self.rv("verify", rv);
                }
            }
        }
    }
}

/// The name keytrail gives an attribute type, for descriptions.
fn keytrail_name(type_: CK_ATTRIBUTE_TYPE) -> String {
    match type_ {
        CKA_CLASS => "CLASS".into(),
        CKA_TOKEN => "TOKEN".into(),
        CKA_KEY_TYPE => "KEY_TYPE".into(),
        CKA_VALUE => "VALUE".into(),
        CKA_LABEL => "LABEL".into(),
        CKA_ID => "ID".into(),
        CKA_WRAP_TEMPLATE => "WRAP_TEMPLATE".into(),
        CKA_UNWRAP_TEMPLATE => "UNWRAP_TEMPLATE".into(),
        t => format!("{t:#x}"),
    }
}

fn as_bytes(attrs: &[CK_ATTRIBUTE]) -> Vec<u8> {
    attrs.iter().flat_map(struct_bytes).collect()
}

/// The bytes of a plain-data struct.
fn struct_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY (test): T is a repr(C) PKCS#11 struct; its bytes (padding included) are read
    // as they are, to be copied to the arena.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
        .to_vec()
}
