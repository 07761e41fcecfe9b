//! Direct-vs-keytrail comparisons through the cryptoki crate: each scenario runs against
//! SoftHSM directly and then through keytrail on an identical fresh token store; the two
//! transcripts must be identical, and each scenario also asserts its own results so that a
//! forwarder that is consistently wrong still fails.

mod common;
use common::raw::Raw;
use common::transcript::*;
use common::*;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;

/// DER of the OID prime256v1 (secp256r1).
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// An object handle no module has handed out.
fn bogus_handle() -> ObjectHandle {
    // SAFETY (test): an invalid handle is the point; the module must reject it.
    unsafe { ObjectHandle::new_from_raw(0x7777) }
}

fn is_rv<T: std::fmt::Debug>(r: &cryptoki::error::Result<T>, want: RvError) -> bool {
    matches!(r, Err(Error::Pkcs11(rv, _)) if *rv == want)
}

fn aes_key(s: &Session, value: &[u8]) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Value(value.to_vec()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Extractable(true),
        Attribute::Sensitive(false),
    ])
    .expect("import AES key")
}

fn gen_aes(s: &Session, label: &str) -> ObjectHandle {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(32.into()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Extractable(true),
            Attribute::Sensitive(false),
        ],
    )
    .expect("generate AES key")
}

fn gen_ec(s: &Session) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::EcParams(P256.to_vec()),
            Attribute::Verify(true),
        ],
        &[
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Derive(true),
        ],
    )
    .expect("generate EC P-256 key pair")
}

fn gen_rsa(s: &Session) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Verify(true),
            Attribute::Encrypt(true),
        ],
        &[
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Decrypt(true),
        ],
    )
    .expect("generate RSA-2048 key pair")
}

fn attrs(s: &Session, o: ObjectHandle, types: &[AttributeType]) -> Vec<Attribute> {
    s.get_attributes(o, types).expect("C_GetAttributeValue")
}

fn find_value(list: &[Attribute], want: AttributeType) -> Option<&Attribute> {
    list.iter().find(|a| a.attribute_type() == want)
}

fn ec_point(s: &Session, public: ObjectHandle) -> Vec<u8> {
    match find_value(
        &attrs(s, public, &[AttributeType::EcPoint]),
        AttributeType::EcPoint,
    ) {
        Some(Attribute::EcPoint(v)) => v.clone(),
        other => panic!("CKA_EC_POINT: {other:?}"),
    }
}

fn value_of(s: &Session, o: ObjectHandle) -> Vec<u8> {
    match find_value(&attrs(s, o, &[AttributeType::Value]), AttributeType::Value) {
        Some(Attribute::Value(v)) => v.clone(),
        other => panic!("CKA_VALUE: {other:?}"),
    }
}

#[test]
fn slot_and_token_info() {
    let (_fx, t) = compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let info = p.get_library_info().expect("C_GetInfo");
        t.rec("library", &info);
        let all = p.get_all_slots().expect("all slots");
        let with_token = p.get_slots_with_token().expect("slots with token");
        let initialised = p
            .get_slots_with_initialized_token()
            .expect("slots with an initialised token");
        // SoftHSM always adds one slot holding an uninitialised token.
        t.rec("slots", (all.len(), with_token.len(), initialised.len()));
        assert_eq!(initialised.len(), 1, "one initialised token");
        let slot = initialised[0];
        // Slot IDs derive from the (random) token serial: record their position only.
        t.rec(
            "token slot position",
            all.iter().position(|s| s.id() == slot.id()),
        );
        let si = p.get_slot_info(slot).expect("C_GetSlotInfo");
        // SoftHSM names the slot by its (random) ID.
        assert_eq!(
            si.slot_description(),
            format!("SoftHSM slot ID {:#x}", slot.id())
        );
        t.rec(
            "slot description",
            si.slot_description()
                .replace(&format!("{:#x}", slot.id()), "<slot id>"),
        );
        t.rec("slot manufacturer", si.manufacturer_id());
        t.rec(
            "slot flags",
            (
                si.token_present(),
                si.removable_device(),
                si.hardware_slot(),
            ),
        );
        t.rec(
            "slot versions",
            (si.hardware_version(), si.firmware_version()),
        );
        assert!(si.token_present());
        let ti = p.get_token_info(slot).expect("C_GetTokenInfo");
        assert_eq!(ti.label(), TOKEN_LABEL);
        assert!(ti.token_initialized() && ti.login_required() && ti.user_pin_initialized());
        t.rec("label", ti.label());
        t.rec("manufacturer", ti.manufacturer_id());
        t.rec("model", ti.model());
        t.rec("serial length", ti.serial_number().len());
        t.rec(
            "token flags",
            (
                ti.rng(),
                ti.write_protected(),
                ti.login_required(),
                ti.user_pin_initialized(),
                ti.token_initialized(),
                ti.user_pin_count_low(),
                ti.so_pin_locked(),
            ),
        );
        t.rec("pin lengths", (ti.min_pin_length(), ti.max_pin_length()));
        t.rec(
            "session counts",
            (
                ti.session_count(),
                ti.rw_session_count(),
                ti.max_session_count(),
            ),
        );
        t.rec(
            "memory",
            (ti.total_public_memory(), ti.total_private_memory()),
        );
        let mechs = p.get_mechanism_list(slot).expect("C_GetMechanismList");
        assert!(mechs.contains(&MechanismType::AES_GCM));
        assert!(mechs.contains(&MechanismType::ECDSA));
        t.rec("mechanisms", &mechs);
        for m in [
            MechanismType::AES_KEY_GEN,
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::ECDSA,
            MechanismType::SHA256_HMAC,
        ] {
            t.rec(
                &format!("mechanism info {m}"),
                p.get_mechanism_info(slot, m),
            );
        }
        // A slot that does not exist.
        let bad = cryptoki::slot::Slot::try_from(0xdead_beef_u64).expect("slot id");
        t.rv("token info of a bad slot", &p.get_token_info(bad));
        assert!(is_rv(&p.get_token_info(bad), RvError::SlotIdInvalid));
        t
    });
    assert!(t.contains("label: \"keytrail-test\""), "{t:?}");
}

#[test]
fn sessions_open_info_close_close_all() {
    let (_fx, t) = compare_paths(|path| {
        let mut t = Transcript::new();
        let p = open(path);
        let slot = token_slot(&p);
        let ro = p.open_ro_session(slot).expect("RO session");
        let rw = p.open_rw_session(slot).expect("RW session");
        t.rec("handles", (ro.handle(), rw.handle()));
        assert_ne!(ro.handle(), rw.handle());
        let ri = ro.get_session_info().expect("RO info");
        let wi = rw.get_session_info().expect("RW info");
        assert_eq!(ri.session_state(), SessionState::RoPublic);
        assert_eq!(wi.session_state(), SessionState::RwPublic);
        assert!(!ri.read_write() && wi.read_write());
        assert_eq!(ri.slot_id().id(), slot.id());
        t.rec(
            "RO info",
            (ri.session_state(), ri.read_write(), ri.device_error()),
        );
        t.rec(
            "RW info",
            (wi.session_state(), wi.read_write(), wi.device_error()),
        );
        // SoftHSM reports session counts as unavailable; record them anyway.
        let ti = p.get_token_info(slot).expect("token info");
        t.rec("counts", (ti.session_count(), ti.rw_session_count()));
        // Creating a token object in an RO session is refused.
        let r = ro.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Value(b"x".to_vec()),
        ]);
        t.rv("token object in RO session", &r);
        assert!(is_rv(&r, RvError::SessionReadOnly), "{r:?}");
        t.rv("close RO", &ro.close());
        let ti = p.get_token_info(slot).expect("token info");
        t.rec(
            "counts after close",
            (ti.session_count(), ti.rw_session_count()),
        );
        let r = rw.get_session_info();
        t.rv("RW session still open", &r);
        assert!(r.is_ok());
        let extra = p.open_ro_session(slot).expect("another session");
        t.rec("third handle", extra.handle());

        // C_CloseAllSessions is not wrapped by cryptoki: call the module's table.
        let raw = Raw::load(path).list();
        // SAFETY (test): a valid slot ID.
        let rv = unsafe { (raw.C_CloseAllSessions.expect("C_CloseAllSessions"))(slot.id()) };
        t.rec("close all", rv);
        assert_eq!(rv, cryptoki_sys::CKR_OK);
        let after = rw.get_session_info();
        t.rv("RW session after close all", &after);
        assert!(is_rv(&after, RvError::SessionHandleInvalid), "{after:?}");
        let r = extra.get_session_info();
        t.rv("third session after close all", &r);
        assert!(is_rv(&r, RvError::SessionHandleInvalid), "{r:?}");
        drop((rw, extra));
        p.finalize().expect("C_Finalize");
        t
    });
    assert!(t.contains("close all: 0"), "{t:?}");
}

#[test]
fn login_wrong_pin_logout() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let slot = token_slot(p);
        let s = p.open_rw_session(slot).expect("session");
        let r = s.login(UserType::User, Some(&AuthPin::new("0000".into())));
        t.rv("wrong PIN", &r);
        assert!(is_rv(&r, RvError::PinIncorrect), "{r:?}");
        let ti = p.get_token_info(slot).expect("token info");
        t.rec(
            "pin flags after failure",
            (
                ti.user_pin_count_low(),
                ti.user_pin_final_try(),
                ti.user_pin_locked(),
            ),
        );
        t.rec("state", s.get_session_info().map(|i| i.session_state()));
        let r = s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())));
        t.rv("right PIN", &r);
        assert!(r.is_ok());
        let state = s.get_session_info().expect("info").session_state();
        assert_eq!(state, SessionState::RwUser);
        t.rec("state", state);
        let r = s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())));
        t.rv("login again", &r);
        assert!(is_rv(&r, RvError::UserAlreadyLoggedIn), "{r:?}");
        let r = s.login(UserType::So, Some(&AuthPin::new(SO_PIN.into())));
        t.rv("SO while user logged in", &r);
        t.rv("logout", &s.logout());
        let state = s.get_session_info().expect("info").session_state();
        assert_eq!(state, SessionState::RwPublic);
        t.rec("state", state);
        // SoftHSM 2.6 answers CKR_OK here (the spec says CKR_USER_NOT_LOGGED_IN).
        let r = s.logout();
        t.rv("logout again", &r);
        let r = s.login(UserType::So, Some(&AuthPin::new(SO_PIN.into())));
        t.rv("SO login with RW session", &r);
        assert!(r.is_ok());
        t.rec("state", s.get_session_info().map(|i| i.session_state()));
        t.rv("SO logout", &s.logout());
        t
    });
}

#[test]
fn generate_aes_256_key() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let k = gen_aes(&s, "aes");
        t.rec("handle", k);
        let a = attrs(
            &s,
            k,
            &[
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Label,
                AttributeType::Local,
                AttributeType::KeyGenMechanism,
                AttributeType::Sensitive,
                AttributeType::Extractable,
            ],
        );
        assert!(a.contains(&Attribute::ValueLen(32.into())), "{a:?}");
        assert!(a.contains(&Attribute::KeyType(KeyType::AES)), "{a:?}");
        t.rec("attributes", &a);
        let v = value_of(&s, k);
        assert_eq!(v.len(), 32);
        t.rec("value length", v.len());
        let bad = s.generate_key(&Mechanism::AesKeyGen, &[Attribute::ValueLen(7.into())]);
        t.rv("AES key of 7 bytes", &bad);
        assert!(bad.is_err());
        t
    });
}

#[test]
fn generate_generic_secret() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let k = s
            .generate_key(
                &Mechanism::GenericSecretKeyGen,
                &[
                    Attribute::Token(false),
                    Attribute::ValueLen(48.into()),
                    Attribute::Sign(true),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ],
            )
            .expect("generic secret");
        t.rec("handle", k);
        let a = attrs(
            &s,
            k,
            &[
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::ValueLen,
            ],
        );
        assert!(
            a.contains(&Attribute::KeyType(KeyType::GENERIC_SECRET)),
            "{a:?}"
        );
        assert!(a.contains(&Attribute::ValueLen(48.into())), "{a:?}");
        t.rec("attributes", &a);
        t.rec("value length", value_of(&s, k).len());
        t
    });
}

#[test]
fn generate_ec_p256_key_pair() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let (public, private) = gen_ec(&s);
        t.rec("handles", (public, private));
        let point = ec_point(&s, public);
        // DER OCTET STRING of an uncompressed point: 04 41 04 X Y.
        assert_eq!(point.len(), 67);
        assert_eq!(&point[..3], &[0x04, 0x41, 0x04]);
        t.rec("point prefix and length", (hex(&point[..3]), point.len()));
        let a = attrs(
            &s,
            private,
            &[
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Sensitive,
                AttributeType::Sign,
            ],
        );
        assert!(a.contains(&Attribute::EcParams(P256.to_vec())), "{a:?}");
        t.rec("private attributes", &a);
        let secret = s.get_attributes(private, &[AttributeType::Value]);
        t.rec("private value", &secret);
        t
    });
}

#[test]
fn generate_rsa_2048_key_pair() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let (public, private) = gen_rsa(&s);
        t.rec("handles", (public, private));
        let a = attrs(
            &s,
            public,
            &[
                AttributeType::ModulusBits,
                AttributeType::PublicExponent,
                AttributeType::Modulus,
            ],
        );
        assert!(a.contains(&Attribute::ModulusBits(2048.into())), "{a:?}");
        assert!(
            a.contains(&Attribute::PublicExponent(vec![1, 0, 1])),
            "{a:?}"
        );
        let modulus = match find_value(&a, AttributeType::Modulus) {
            Some(Attribute::Modulus(m)) => m.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(modulus, 256);
        t.rec("modulus length", modulus);
        t.rec(
            "private class",
            attrs(&s, private, &[AttributeType::Class, AttributeType::KeyType]),
        );
        t
    });
}

const AES_KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
const PLAINTEXT: &[u8] = b"keytrail forwards every call unchanged; 55 bytes long!!";

#[test]
fn aes_cbc_pad_single_and_multi_part() {
    let (_fx, t) = compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let k = aes_key(&s, &unhex(AES_KEY));
        let iv = [7u8; 16];
        let ct = s
            .encrypt(&Mechanism::AesCbcPad(iv), k, PLAINTEXT)
            .expect("encrypt");
        assert_eq!(ct.len(), 64);
        t.rec("ciphertext", hex(&ct));
        let pt = s
            .decrypt(&Mechanism::AesCbcPad(iv), k, &ct)
            .expect("decrypt");
        assert_eq!(pt, PLAINTEXT);
        t.rec("decrypted", hex(&pt));

        // Multi-part: same result in pieces.
        s.encrypt_init(&Mechanism::AesCbcPad(iv), k).expect("init");
        let mut multi = Vec::new();
        for chunk in PLAINTEXT.chunks(10) {
            let out = s.encrypt_update(chunk).expect("update");
            t.rec("update out", out.len());
            multi.extend(out);
        }
        multi.extend(s.encrypt_final().expect("final"));
        assert_eq!(multi, ct);
        s.decrypt_init(&Mechanism::AesCbcPad(iv), k).expect("init");
        let mut back = Vec::new();
        for chunk in ct.chunks(13) {
            back.extend(s.decrypt_update(chunk).expect("update"));
        }
        back.extend(s.decrypt_final().expect("final"));
        assert_eq!(back, PLAINTEXT);
        t.rec("multi-part decrypt", hex(&back));

        // A generated key round-trips too.
        let g = gen_aes(&s, "g");
        let ct = s
            .encrypt(&Mechanism::AesCbcPad(iv), g, PLAINTEXT)
            .expect("encrypt");
        let pt = s
            .decrypt(&Mechanism::AesCbcPad(iv), g, &ct)
            .expect("decrypt");
        assert_eq!(pt, PLAINTEXT);
        t.rec("generated-key round trip", (ct.len(), pt == PLAINTEXT));
        // Wrong length for CBC without padding.
        let r = s.encrypt(&Mechanism::AesCbc(iv), k, &PLAINTEXT[..5]);
        t.rv("CBC with 5 bytes", &r);
        assert!(is_rv(&r, RvError::DataLenRange), "{r:?}");
        // Corrupt padding.
        let r = s.decrypt(&Mechanism::AesCbcPad(iv), k, &[0u8; 16]);
        t.rv("bad padding", &r);
        assert!(r.is_err());
        t
    });
    assert!(t.contains("CBC with 5 bytes: DataLenRange"), "{t:?}");
}

#[test]
fn aes_gcm_single_and_multi_part() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let k = aes_key(&s, &unhex(AES_KEY));
        let aad = b"header";
        let mut iv = [0x11u8; 12];
        let ct = s
            .encrypt(
                &Mechanism::AesGcm(GcmParams::new(&mut iv, aad, 128.into()).expect("gcm")),
                k,
                PLAINTEXT,
            )
            .expect("GCM encrypt");
        assert_eq!(ct.len(), PLAINTEXT.len() + 16);
        t.rec("ciphertext and tag", hex(&ct));
        let pt = s
            .decrypt(
                &Mechanism::AesGcm(GcmParams::new(&mut iv, aad, 128.into()).expect("gcm")),
                k,
                &ct,
            )
            .expect("GCM decrypt");
        assert_eq!(pt, PLAINTEXT);
        t.rec("decrypted", hex(&pt));
        let mut tampered = ct.clone();
        tampered[3] ^= 1;
        let r = s.decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv, aad, 128.into()).expect("gcm")),
            k,
            &tampered,
        );
        t.rv("tampered", &r);
        assert!(r.is_err(), "tampered GCM ciphertext decrypted");

        // Multi-part encryption must give the same bytes.
        let mut iv2 = [0x11u8; 12];
        let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv2, aad, 128.into()).expect("gcm"));
        s.encrypt_init(&gcm, k).expect("init");
        let mut multi = Vec::new();
        for chunk in PLAINTEXT.chunks(16) {
            multi.extend(s.encrypt_update(chunk).expect("update"));
        }
        multi.extend(s.encrypt_final().expect("final"));
        assert_eq!(multi, ct);
        t.rec("multi-part equals single", multi == ct);
        let mut iv3 = [0x11u8; 12];
        let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv3, aad, 128.into()).expect("gcm"));
        s.decrypt_init(&gcm, k).expect("init");
        let mut back = Vec::new();
        for chunk in ct.chunks(20) {
            back.extend(s.decrypt_update(chunk).expect("update"));
        }
        back.extend(s.decrypt_final().expect("final"));
        assert_eq!(back, PLAINTEXT);
        t.rec("multi-part decrypt", hex(&back));
        t
    });
}

#[test]
fn rsa_sign_verify() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let (public, private) = gen_rsa(&s);
        let sig = s
            .sign(&Mechanism::Sha256RsaPkcs, private, PLAINTEXT)
            .expect("sign");
        assert_eq!(sig.len(), 256);
        t.rec("signature length", sig.len());
        let ok = s.verify(&Mechanism::Sha256RsaPkcs, public, PLAINTEXT, &sig);
        t.rv("verify", &ok);
        assert!(ok.is_ok());
        let mut bad = sig.clone();
        bad[10] ^= 0x80;
        let r = s.verify(&Mechanism::Sha256RsaPkcs, public, PLAINTEXT, &bad);
        t.rv("verify tampered", &r);
        assert!(is_rv(&r, RvError::SignatureInvalid), "{r:?}");
        // PKCS#1 v1.5 is deterministic for a given key: multi-part gives the same bytes.
        s.sign_init(&Mechanism::Sha256RsaPkcs, private)
            .expect("init");
        for c in PLAINTEXT.chunks(7) {
            s.sign_update(c).expect("update");
        }
        let multi = s.sign_final().expect("final");
        assert_eq!(multi, sig);
        t.rec("multi-part equals single", multi == sig);
        s.verify_init(&Mechanism::Sha256RsaPkcs, public)
            .expect("init");
        for c in PLAINTEXT.chunks(9) {
            s.verify_update(c).expect("update");
        }
        let r = s.verify_final(&sig);
        t.rv("multi-part verify", &r);
        assert!(r.is_ok());
        // PSS: randomised; length and verification only.
        let pss = Mechanism::Sha256RsaPkcsPss(cryptoki::mechanism::rsa::PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: cryptoki::mechanism::rsa::PkcsMgfType::MGF1_SHA256,
            s_len: 32.into(),
        });
        let ps = s.sign(&pss, private, PLAINTEXT);
        t.len("PSS signature", &ps);
        let ps = ps.expect("PSS sign");
        let r = s.verify(&pss, public, PLAINTEXT, &ps);
        t.rv("PSS verify", &r);
        assert!(r.is_ok());
        // A public key cannot sign.
        let r = s.sign(&Mechanism::Sha256RsaPkcs, public, PLAINTEXT);
        t.rv("sign with public key", &r);
        assert!(r.is_err());
        t
    });
}

#[test]
fn ecdsa_sign_verify_on_digest() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let (public, private) = gen_ec(&s);
        let digest = s.digest(&Mechanism::Sha256, PLAINTEXT).expect("digest");
        assert_eq!(digest.len(), 32);
        let sig = s
            .sign(&Mechanism::Ecdsa, private, &digest)
            .expect("ECDSA sign");
        assert_eq!(sig.len(), 64);
        t.rec("signature length", sig.len());
        let r = s.verify(&Mechanism::Ecdsa, public, &digest, &sig);
        t.rv("verify", &r);
        assert!(r.is_ok());
        let mut other = digest.clone();
        other[0] ^= 1;
        let r = s.verify(&Mechanism::Ecdsa, public, &other, &sig);
        t.rv("verify other digest", &r);
        assert!(is_rv(&r, RvError::SignatureInvalid), "{r:?}");
        let r = s.verify(&Mechanism::Ecdsa, public, &digest, &sig[..63]);
        t.rv("verify short signature", &r);
        assert!(r.is_err());
        let r = s.sign(&Mechanism::EcdsaSha256, private, PLAINTEXT);
        t.rv("CKM_ECDSA_SHA256", &r);
        t
    });
}

/// RFC 4231 test case 6: a 131-byte key.
const HMAC_KEY: [u8; 131] = [0xaa; 131];
const HMAC_DATA: &[u8] = b"Test Using Larger Than Block-Size Key - Hash Key First";
const HMAC_MAC: &str = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54";

#[test]
fn hmac_sha256_with_imported_key() {
    let (_fx, t) = compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let k = s
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(false),
                Attribute::Value(HMAC_KEY.to_vec()),
                Attribute::Sign(true),
                Attribute::Verify(true),
            ])
            .expect("import HMAC key");
        let mac = s.sign(&Mechanism::Sha256Hmac, k, HMAC_DATA);
        t.bytes("mac", &mac);
        let mac = mac.expect("HMAC");
        assert_eq!(hex(&mac), HMAC_MAC);
        s.sign_init(&Mechanism::Sha256Hmac, k).expect("init");
        for c in HMAC_DATA.chunks(5) {
            s.sign_update(c).expect("update");
        }
        let multi = s.sign_final();
        t.bytes("multi-part mac", &multi);
        assert_eq!(multi.expect("final"), mac);
        let r = s.verify(&Mechanism::Sha256Hmac, k, HMAC_DATA, &mac);
        t.rv("verify", &r);
        assert!(r.is_ok());
        let mut bad = mac.clone();
        bad[31] ^= 1;
        let r = s.verify(&Mechanism::Sha256Hmac, k, HMAC_DATA, &bad);
        t.rv("verify wrong mac", &r);
        assert!(is_rv(&r, RvError::SignatureInvalid), "{r:?}");
        t
    });
    assert!(t.contains(HMAC_MAC));
}

#[test]
fn digest_sha256() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = p.open_ro_session(token_slot(p)).expect("session");
        let d = s.digest(&Mechanism::Sha256, b"abc");
        t.bytes("abc", &d);
        assert_eq!(
            hex(&d.expect("digest")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d = s.digest(&Mechanism::Sha256, b"");
        t.bytes("empty", &d);
        assert_eq!(
            hex(&d.expect("digest")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        s.digest_init(&Mechanism::Sha256).expect("init");
        s.digest_update(b"a").expect("update");
        s.digest_update(b"bc").expect("update");
        let d = s.digest_final();
        t.bytes("multi-part abc", &d);
        assert_eq!(
            hex(&d.expect("final")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d = s.digest(&Mechanism::Sha1, b"abc");
        t.bytes("sha1 abc", &d);
        let r = s.digest_final();
        t.rv("final without init", &r);
        assert!(is_rv(&r, RvError::OperationNotInitialized), "{r:?}");
        t
    });
}

/// RFC 3394 §4.1: 128-bit key data wrapped with a 128-bit KEK.
const KEK: &str = "000102030405060708090A0B0C0D0E0F";
const KEY_DATA: &str = "00112233445566778899AABBCCDDEEFF";
const WRAPPED: &str = "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5";

#[test]
fn aes_key_wrap_unwrap_round_trip() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let kek = aes_key(&s, &unhex(KEK));
        let key = aes_key(&s, &unhex(KEY_DATA));
        let wrapped = s.wrap_key(&Mechanism::AesKeyWrap, kek, key);
        t.bytes("wrapped", &wrapped);
        let wrapped = wrapped.expect("C_WrapKey");
        assert_eq!(wrapped, unhex(WRAPPED));
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Extractable(true),
            Attribute::Sensitive(false),
        ];
        let back = s
            .unwrap_key(&Mechanism::AesKeyWrap, kek, &wrapped, &template)
            .expect("C_UnwrapKey");
        t.rec("unwrapped handle", back);
        assert_eq!(value_of(&s, back), unhex(KEY_DATA));
        let mut bad = wrapped.clone();
        bad[0] ^= 1;
        let r = s.unwrap_key(&Mechanism::AesKeyWrap, kek, &bad, &template);
        t.rv("unwrap corrupted", &r);
        assert!(r.is_err());

        // With padding (RFC 5649), a 32-byte generated key, round trip by use.
        let g = gen_aes(&s, "to wrap");
        let wp = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, g);
        t.len("padded wrap", &wp);
        let wp = wp.expect("wrap pad");
        assert_eq!(wp.len(), 40);
        let g2 = s
            .unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wp, &template)
            .expect("unwrap pad");
        assert_eq!(value_of(&s, g2), value_of(&s, g));
        let iv = [3u8; 16];
        let ct = s
            .encrypt(&Mechanism::AesCbcPad(iv), g, PLAINTEXT)
            .expect("encrypt with original");
        let pt = s
            .decrypt(&Mechanism::AesCbcPad(iv), g2, &ct)
            .expect("decrypt with unwrapped");
        assert_eq!(pt, PLAINTEXT);
        t.rec("round trip by use", pt == PLAINTEXT);
        // A key that is not extractable cannot be wrapped.
        let locked = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::ValueLen(16.into()),
                    Attribute::Extractable(false),
                ],
            )
            .expect("generate");
        let r = s.wrap_key(&Mechanism::AesKeyWrap, kek, locked);
        t.rv("wrap unextractable", &r);
        assert!(is_rv(&r, RvError::KeyUnextractable), "{r:?}");
        t
    });
}

#[test]
fn ecdh_p256_derive() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let (a_pub, a_priv) = gen_ec(&s);
        let (b_pub, b_priv) = gen_ec(&s);
        // Raw uncompressed points (strip the DER OCTET STRING header).
        let a_point = ec_point(&s, a_pub)[2..].to_vec();
        let b_point = ec_point(&s, b_pub)[2..].to_vec();
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::ValueLen(32.into()),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        let ab = s.derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &b_point)),
            a_priv,
            &template,
        );
        t.rv("derive A with B's point", &ab);
        let ba = s.derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &a_point)),
            b_priv,
            &template,
        );
        t.rv("derive B with A's point", &ba);
        let (ab, ba) = (ab.expect("derive"), ba.expect("derive"));
        t.rec("derived handles", (ab, ba));
        let (x, y) = (value_of(&s, ab), value_of(&s, ba));
        assert_eq!(x.len(), 32);
        assert_eq!(x, y, "both sides derive the same secret");
        t.rec("secrets equal", x == y);
        let r = s.derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &[4u8; 65])),
            a_priv,
            &template,
        );
        t.rv("derive with a point not on the curve", &r);
        assert!(r.is_err());
        t
    });
}

fn data_object(s: &Session, label: &str, app: &str) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Application(app.as_bytes().to_vec()),
        Attribute::Value(label.as_bytes().to_vec()),
    ])
    .expect("create data object")
}

#[test]
fn find_objects_with_templates() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let a = data_object(&s, "alpha", "one");
        let b = data_object(&s, "beta", "one");
        let c = data_object(&s, "gamma", "two");
        let k = gen_aes(&s, "alpha");
        t.rec("handles", (a, b, c, k));
        let by_label = s
            .find_objects(&[Attribute::Label(b"alpha".to_vec())])
            .expect("find");
        let mut sorted = by_label.clone();
        sorted.sort_by_key(|h| h.handle());
        let mut expect = vec![a, k];
        expect.sort_by_key(|h| h.handle());
        assert_eq!(sorted, expect);
        t.rec("label alpha", &sorted);
        let mut ones = s
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(b"one".to_vec()),
            ])
            .expect("find");
        ones.sort_by_key(|h| h.handle());
        assert_eq!(ones.len(), 2);
        t.rec("application one", &ones);
        let keys = s
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .expect("find");
        assert_eq!(keys, vec![k]);
        t.rec("secret keys", &keys);
        let none = s
            .find_objects(&[Attribute::Label(b"nothing".to_vec())])
            .expect("find");
        assert!(none.is_empty());
        t.rec("none", none.len());
        let all = s.find_objects(&[]).expect("find all");
        assert!(all.len() >= 4);
        t.rec("all", all.len());
        // Iterate in small batches (several C_FindObjects calls).
        let batched: Vec<_> = s
            .iter_objects_with_cache_size(&[], std::num::NonZeroUsize::new(1).expect("1"))
            .expect("iter")
            .collect::<Result<_, _>>()
            .expect("batches");
        t.rec("batched count", batched.len());
        assert_eq!(batched.len(), all.len());
        t
    });
}

#[test]
fn get_and_set_attributes() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let o = data_object(&s, "before", "app");
        let k = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(false),
                    Attribute::ValueLen(16.into()),
                    Attribute::Sensitive(true),
                    Attribute::Label(b"sensitive".to_vec()),
                ],
            )
            .expect("generate");
        let l = attrs(&s, o, &[AttributeType::Label, AttributeType::Value]);
        t.rec("before", &l);
        assert!(l.contains(&Attribute::Label(b"before".to_vec())));
        let r = s.update_attributes(o, &[Attribute::Label(b"after, longer label".to_vec())]);
        t.rv("set label", &r);
        assert!(r.is_ok());
        let l = attrs(&s, o, &[AttributeType::Label]);
        t.rec("after", &l);
        assert_eq!(l, vec![Attribute::Label(b"after, longer label".to_vec())]);
        let r = s.update_attributes(k, &[Attribute::Label(b"renamed key".to_vec())]);
        t.rv("rename key", &r);
        t.rec("key label", attrs(&s, k, &[AttributeType::Label]));
        // Sensitive value: the module refuses or omits it.
        let r = s.get_attributes(k, &[AttributeType::Value, AttributeType::ValueLen]);
        t.rec("sensitive value", &r);
        if let Ok(v) = &r {
            assert!(!v.iter().any(|a| matches!(a, Attribute::Value(_))), "{v:?}");
        }
        let r = s.update_attributes(k, &[Attribute::Sensitive(false)]);
        t.rv("unset sensitive", &r);
        assert!(r.is_err(), "CKA_SENSITIVE cannot go back to false");
        let r = s.update_attributes(k, &[Attribute::Class(ObjectClass::DATA)]);
        t.rv("change class", &r);
        assert!(r.is_err());
        let r = s.update_attributes(bogus_handle(), &[]);
        t.rv("set on bad handle", &r);
        assert!(is_rv(&r, RvError::ObjectHandleInvalid), "{r:?}");
        t
    });
}

#[test]
fn copy_object() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let k = aes_key(&s, &unhex(AES_KEY));
        let c = s
            .copy_object(k, &[Attribute::Label(b"the copy".to_vec())])
            .expect("C_CopyObject");
        t.rec("handles", (k, c));
        assert_ne!(k, c);
        assert_eq!(value_of(&s, c), unhex(AES_KEY));
        t.rec("copy label", attrs(&s, c, &[AttributeType::Label]));
        assert_eq!(
            attrs(&s, c, &[AttributeType::Label]),
            vec![Attribute::Label(b"the copy".to_vec())]
        );
        t.rec("original label", attrs(&s, k, &[AttributeType::Label]));
        let iv = [0u8; 16];
        let a = s
            .encrypt(&Mechanism::AesCbcPad(iv), k, PLAINTEXT)
            .expect("enc");
        let b = s
            .encrypt(&Mechanism::AesCbcPad(iv), c, PLAINTEXT)
            .expect("enc");
        assert_eq!(a, b);
        t.rec("same ciphertext", hex(&b));
        let keys = s
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .expect("find");
        assert_eq!(keys.len(), 2);
        t.rec("key count", keys.len());
        let r = s.copy_object(bogus_handle(), &[]);
        t.rv("copy bad handle", &r);
        assert!(is_rv(&r, RvError::ObjectHandleInvalid), "{r:?}");
        t
    });
}

#[test]
fn destroy_object() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = user_session(p);
        let a = data_object(&s, "a", "x");
        let b = data_object(&s, "b", "x");
        let token_obj = s
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Label(b"on token".to_vec()),
            ])
            .expect("token object");
        t.rec("handles", (a, b, token_obj));
        t.rv("destroy a", &s.destroy_object(a));
        t.rv("destroy token object", &s.destroy_object(token_obj));
        let r = s.get_attributes(a, &[AttributeType::Label]);
        t.rv("attributes of destroyed", &r);
        assert!(is_rv(&r, RvError::ObjectHandleInvalid), "{r:?}");
        let r = s.destroy_object(a);
        t.rv("destroy twice", &r);
        assert!(is_rv(&r, RvError::ObjectHandleInvalid), "{r:?}");
        let left = s
            .find_objects(&[Attribute::Class(ObjectClass::DATA)])
            .expect("find");
        assert_eq!(left, vec![b]);
        t.rec("left", &left);
        t
    });
}

#[test]
fn generate_random_lengths() {
    compare(|p: &Pkcs11| {
        let mut t = Transcript::new();
        let s = p.open_ro_session(token_slot(p)).expect("session");
        for n in [1u32, 16, 32, 1000] {
            let r = s.generate_random_vec(n);
            t.len(&format!("random {n}"), &r);
            assert_eq!(r.expect("random").len(), n as usize);
        }
        let x = s.generate_random_vec(32).expect("random");
        let y = s.generate_random_vec(32).expect("random");
        assert_ne!(x, y, "two random outputs are equal");
        assert_ne!(x, vec![0u8; 32]);
        let r = s.seed_random(b"more entropy");
        t.rv("seed", &r);
        t
    });
}
