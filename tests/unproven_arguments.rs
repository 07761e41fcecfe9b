//! keytrail reads of a call only what the module's answer proves readable (the rules are
//! in src/entry/proof.rs and docs/events.md): each case runs on SoftHSM2's own table, then
//! through keytrail's on a fresh token store; the answers must be the same and the trail
//! must say what happened without reading what it may not.

mod argfuzz;
mod common;
mod support;

use argfuzz::arena::Arena;
use common::raw::{self, Raw};
use common::*;
use cryptoki_sys::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::ffi::c_void;
use std::ptr::null_mut;
use support::*;

/// A PIN in the application's memory right after a label: an attribute whose ulValueLen
/// runs past the label reads it.
const LABEL_AND_PIN: &[u8] = b"mylabel\0PIN=Kt-Neighbour-Pin-2291";

/// A low-entropy secret: its SHA-256 is as good as the value.
const LOW_ENTROPY: &[u8] = b"aaaaaaaaaaaaaaaaaaaaaaaa";

fn attr(type_: CK_ATTRIBUTE_TYPE, value: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_,
        pValue: value.as_ptr() as *mut c_void,
        ulValueLen: value.len() as CK_ULONG,
    }
}

fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// Initialises the module behind `l`, opens a read-write session and logs the user in.
fn session(l: &CK_FUNCTION_LIST) -> CK_SESSION_HANDLE {
    assert_eq!(raw::initialize(l), CKR_OK);
    let s = raw::open_rw(l);
    assert_eq!(raw::login(l, s), CKR_OK);
    s
}

/// Runs `scenario` directly on SoftHSM, then through keytrail on a fresh token store; the
/// answers must be identical. Returns keytrail's trail.
fn direct_and_through(
    fx: &Fixture,
    mut scenario: impl FnMut(&CK_FUNCTION_LIST) -> Vec<CK_RV>,
) -> (Vec<CK_RV>, Vec<Value>) {
    let direct = scenario(Raw::load(&softhsm_module()).list());
    fx.fresh_store("b");
    let through = scenario(Raw::load(&keytrail_module()).list());
    assert_eq!(
        direct, through,
        "keytrail (right) differs from SoftHSM (left)"
    );
    assert!(
        !fx.diagnostics().contains("internal error"),
        "{}",
        fx.diagnostics()
    );
    (through, fx.trail())
}

fn create(l: &CK_FUNCTION_LIST, s: CK_SESSION_HANDLE, t: &mut [CK_ATTRIBUTE]) -> CK_RV {
    let mut h = 0;
    // SAFETY (test): the template's values outlive the call.
    unsafe { (l.C_CreateObject.expect("fn"))(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut h) }
}

fn data_object(l: &CK_FUNCTION_LIST, s: CK_SESSION_HANDLE) -> CK_OBJECT_HANDLE {
    let class = ulong(CKO_DATA);
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_TOKEN, &[0]),
        attr(CKA_LABEL, b"data"),
    ];
    let mut h = 0;
    // SAFETY (test): a valid template.
    let rv = unsafe { (l.C_CreateObject.expect("fn"))(s, t.as_mut_ptr(), 3, &mut h) };
    assert_eq!(rv, CKR_OK);
    h
}

fn assert_no_pin(fx: &Fixture) {
    let trail = std::fs::read(fx.trail_path()).expect("trail");
    let hits = support::scan::scan(
        &[support::scan::Secret {
            name: "pin".into(),
            bytes: b"PIN=Kt-Neighbour-Pin-2291".to_vec(),
        }],
        &[("trail".into(), trail)],
    );
    assert!(
        hits.is_empty(),
        "the PIN next to the label leaked: {hits:?}"
    );
}

#[test]
fn rejected_creation_records_the_count_not_the_template() {
    let fx = Fixture::new();
    let (rvs, trail) = direct_and_through(&fx, |l| {
        let s = session(l);
        let class = ulong(CKO_DATA);
        // The label's length runs into the PIN; CKA_TOKEN's length is wrong, so the
        // module rejects the template after reading the label.
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_LABEL, LABEL_AND_PIN),
            attr(CKA_TOKEN, &[0, 0]),
        ];
        vec![create(l, s, &mut t), raw::finalize(l)]
    });
    assert_eq!(rvs[0], CKR_ATTRIBUTE_VALUE_INVALID);
    let r = only(&trail, "object_create");
    assert_call(
        &r,
        "import",
        "object_create",
        "C_CreateObject",
        "CKR_ATTRIBUTE_VALUE_INVALID",
    );
    assert_no_pin(&fx);
    assert!(at(&r, "pkcs11.attributes").is_null(), "{r}");
    assert_eq!(at(&r, "pkcs11.attribute_count"), &json!({"template": 3}));
}

#[test]
fn rejected_modification_records_the_count_not_the_template() {
    let fx = Fixture::new();
    let (rvs, trail) = direct_and_through(&fx, |l| {
        let s = session(l);
        let object = data_object(l, s);
        let class = ulong(CKO_DATA);
        // CKA_CLASS cannot be set: the module refuses after reading the label.
        let mut t = [attr(CKA_LABEL, LABEL_AND_PIN), attr(CKA_CLASS, &class)];
        // SAFETY (test): the template's values outlive the call.
        let rv = unsafe { (l.C_SetAttributeValue.expect("fn"))(s, object, t.as_mut_ptr(), 2) };
        vec![rv, raw::finalize(l)]
    });
    assert_eq!(rvs[0], CKR_ATTRIBUTE_READ_ONLY);
    let r = only(&trail, "attribute_set");
    assert_call(
        &r,
        "modify",
        "attribute_set",
        "C_SetAttributeValue",
        "CKR_ATTRIBUTE_READ_ONLY",
    );
    assert_no_pin(&fx);
    assert!(at(&r, "pkcs11.attributes").is_null(), "{r}");
    assert_eq!(at(&r, "pkcs11.attribute_count"), &json!({"set": 2}));
    assert_eq!(
        s(&r, "pkcs11.key.label"),
        "data",
        "identity from before: {r}"
    );
}

#[test]
fn a_class_given_twice_neither_fingerprints_the_value_nor_logs_it() {
    let fx = Fixture::new();
    let (rvs, trail) = direct_and_through(&fx, |l| {
        let s = session(l);
        let (public, secret, generic) = (
            ulong(CKO_PUBLIC_KEY),
            ulong(CKO_SECRET_KEY),
            ulong(CKK_GENERIC_SECRET),
        );
        let mut t = [
            attr(CKA_CLASS, &public),
            attr(CKA_CLASS, &secret),
            attr(CKA_KEY_TYPE, &generic),
            attr(CKA_TOKEN, &[0]),
            attr(CKA_VALUE, LOW_ENTROPY),
        ];
        vec![create(l, s, &mut t), raw::finalize(l)]
    });
    // SoftHSM takes the last class for the object and then finds the first inconsistent.
    assert_eq!(rvs[0], CKR_TEMPLATE_INCONSISTENT);
    let r = only(&trail, "object_create");
    let text = std::fs::read_to_string(fx.trail_path()).expect("trail");
    let fingerprint = hex::encode(Sha256::digest(LOW_ENTROPY));
    assert!(!text.contains(&fingerprint), "secret fingerprinted: {r}");
    assert!(!text.contains(&hex::encode(LOW_ENTROPY)), "secret logged");
    assert!(at(&r, "pkcs11.attributes").is_null(), "{r}");
    assert_eq!(at(&r, "pkcs11.attribute_count"), &json!({"template": 5}));
}

/// A `CK_MECHANISM` of which only the type is readable: it ends at a guard page.
fn type_only_mechanism(arena: &mut Arena, type_: CK_MECHANISM_TYPE) -> CK_MECHANISM_PTR {
    arena.put_at_edge(&type_.to_ne_bytes()) as CK_MECHANISM_PTR
}

fn hmac_key(l: &CK_FUNCTION_LIST, s: CK_SESSION_HANDLE) -> CK_OBJECT_HANDLE {
    let (class, kt) = (ulong(CKO_SECRET_KEY), ulong(CKK_GENERIC_SECRET));
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr(CKA_TOKEN, &[0]),
        attr(CKA_SIGN, &[1]),
        attr(CKA_VALUE, b"an hmac key of some length"),
        attr(CKA_LABEL, b"mac"),
    ];
    let mut h = 0;
    // SAFETY (test): a valid template.
    let rv = unsafe { (l.C_CreateObject.expect("fn"))(s, t.as_mut_ptr(), 6, &mut h) };
    assert_eq!(rv, CKR_OK);
    h
}

#[test]
fn a_refused_mechanism_is_named_and_only_its_type_is_read() {
    const VENDOR: CK_MECHANISM_TYPE = CKM_VENDOR_DEFINED | 0x1234;
    let fx = Fixture::new();
    let mut arena = Arena::map();
    let (rvs, trail) = direct_and_through(&fx, |l| {
        arena.reset();
        let s = session(l);
        let key = hmac_key(l, s);
        let sign_init = l.C_SignInit.expect("fn");
        let encrypt_init = l.C_EncryptInit.expect("fn");
        let mut ctr = CK_AES_CTR_PARAMS {
            ulCounterBits: 0,
            cb: [0; 16],
        };
        let mut bad_ctr = CK_MECHANISM {
            mechanism: CKM_AES_CTR,
            pParameter: &mut ctr as *mut _ as *mut c_void,
            ulParameterLen: std::mem::size_of::<CK_AES_CTR_PARAMS>() as CK_ULONG,
        };
        let aes = {
            let (class, kt) = (ulong(CKO_SECRET_KEY), ulong(CKK_AES));
            let mut t = [
                attr(CKA_CLASS, &class),
                attr(CKA_KEY_TYPE, &kt),
                attr(CKA_TOKEN, &[0]),
                attr(CKA_ENCRYPT, &[1]),
                attr(CKA_VALUE, &[7; 16]),
            ];
            let mut h = 0;
            // SAFETY (test): a valid template.
            let rv = unsafe { (l.C_CreateObject.expect("fn"))(s, t.as_mut_ptr(), 5, &mut h) };
            assert_eq!(rv, CKR_OK);
            h
        };
        let mut vendor = CK_MECHANISM {
            mechanism: VENDOR,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY (test): valid pointers, except the mechanism cut short at a guard page,
        // of which the module reads only the type.
        unsafe {
            vec![
                sign_init(s, &mut vendor, key),
                sign_init(s, type_only_mechanism(&mut arena, VENDOR), key),
                encrypt_init(s, &mut bad_ctr, aes),
                sign_init(s, &mut vendor, 0xdead),
                raw::finalize(l),
            ]
        }
    });
    assert_eq!(
        rvs[..4],
        [
            CKR_MECHANISM_INVALID,
            CKR_MECHANISM_INVALID,
            CKR_MECHANISM_PARAM_INVALID,
            CKR_OBJECT_HANDLE_INVALID
        ]
    );
    let uses = category(&trail, "use");
    assert_eq!(uses.len(), 4, "{}", dump(&trail));
    for r in &uses[..2] {
        assert_eq!(s(r, "pkcs11.rv_name"), "CKR_MECHANISM_INVALID", "{r}");
        assert_eq!(at(r, "pkcs11.mechanism"), &json!({"type": VENDOR}), "{r}");
        assert_eq!(s(r, "pkcs11.key.label"), "mac", "{r}");
    }
    assert_eq!(
        at(&uses[2], "pkcs11.mechanism"),
        &json!({"type": CKM_AES_CTR, "name": "CKM_AES_CTR"}),
        "the type, not the parameter the module refused: {}",
        uses[2]
    );
    assert_eq!(s(&uses[3], "pkcs11.rv_name"), "CKR_OBJECT_HANDLE_INVALID");
    assert!(
        at(&uses[3], "pkcs11.mechanism").is_null(),
        "an invalid key proves nothing of the mechanism: {}",
        uses[3]
    );
}

#[test]
fn generation_reads_only_the_type_of_a_mechanism_without_parameter() {
    let fx = Fixture::new();
    let mut arena = Arena::map();
    let (rvs, trail) = direct_and_through(&fx, |l| {
        arena.reset();
        let s = session(l);
        let len = ulong(32);
        let mut t = [attr(CKA_VALUE_LEN, &len), attr(CKA_TOKEN, &[0])];
        let mut h = 0;
        // SAFETY (test): a valid template; the mechanism ends after its type, which is
        // all a module reads of CKM_AES_KEY_GEN.
        let rv = unsafe {
            (l.C_GenerateKey.expect("fn"))(
                s,
                type_only_mechanism(&mut arena, CKM_AES_KEY_GEN),
                t.as_mut_ptr(),
                2,
                &mut h,
            )
        };
        vec![rv, raw::finalize(l)]
    });
    assert_eq!(rvs[0], CKR_OK);
    let r = only(&trail, "key_generate");
    assert_eq!(
        at(&r, "pkcs11.mechanism"),
        &json!({"type": CKM_AES_KEY_GEN, "name": "CKM_AES_KEY_GEN"})
    );
    assert_eq!(n(&r, "pkcs11.key.bits"), 256);
}

#[test]
fn a_search_template_is_never_read() {
    let fx = Fixture::new();
    configure(&fx, "", "level = \"trace\"");
    let (rvs, trail) = direct_and_through(&fx, |l| {
        let s = session(l);
        // No object has a three-byte label, so the module never looks at the value.
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: 0x10 as *mut c_void,
            ulValueLen: 3,
        }];
        // SAFETY (test): the value pointer is garbage on purpose.
        let rv = unsafe { (l.C_FindObjectsInit.expect("fn"))(s, t.as_mut_ptr(), 1) };
        vec![rv, raw::finalize(l)]
    });
    assert_eq!(rvs[0], CKR_OK);
    let r = only(&trail, "objects_find");
    assert_eq!(at(&r, "pkcs11.attribute_count"), &json!({"template": 1}));
    assert!(at(&r, "pkcs11.attributes").is_null(), "{r}");
}

#[test]
fn a_misaligned_template_is_read_as_it_is() {
    let fx = Fixture::new();
    let (rvs, trail) = direct_and_through(&fx, |l| {
        let s = session(l);
        let class = ulong(CKO_DATA);
        let t = [
            attr(CKA_CLASS, &class),
            attr(CKA_TOKEN, &[0]),
            attr(CKA_LABEL, b"odd"),
        ];
        // The same array one byte past 8-byte alignment.
        let mut buf = vec![0u8; std::mem::size_of_val(&t) + 1];
        // SAFETY (test): copies the array's bytes into a buffer large enough.
        unsafe {
            std::ptr::copy_nonoverlapping(
                t.as_ptr() as *const u8,
                buf.as_mut_ptr().add(1),
                std::mem::size_of_val(&t),
            )
        };
        let mut h: [u8; 9] = [0; 9];
        // SAFETY (test): the template and the handle are at odd addresses, which the C
        // ABI allows the module to read and write.
        let rv = unsafe {
            (l.C_CreateObject.expect("fn"))(
                s,
                buf.as_mut_ptr().add(1) as CK_ATTRIBUTE_PTR,
                3,
                h.as_mut_ptr().add(1) as CK_OBJECT_HANDLE_PTR,
            )
        };
        vec![rv, raw::finalize(l)]
    });
    assert_eq!(rvs[0], CKR_OK);
    let r = only(&trail, "object_create");
    assert_eq!(s(&r, "pkcs11.key.label"), "odd");
    assert!(
        at(&r, "pkcs11.attributes.template")
            .as_array()
            .expect("template")
            .contains(&json!({"type": "CKA_LABEL", "text": "odd"})),
        "{r}"
    );
}

#[test]
fn a_failed_read_that_returned_a_secret_is_a_possible_export() {
    let fx = Fixture::new();
    let (rvs, trail) = direct_and_through(&fx, |l| {
        let s = session(l);
        let (class, kt) = (ulong(CKO_SECRET_KEY), ulong(CKK_AES));
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr(CKA_TOKEN, &[0]),
            attr(CKA_SENSITIVE, &[0]),
            attr(CKA_EXTRACTABLE, &[1]),
            attr(CKA_VALUE, &[0x3c; 16]),
        ];
        let mut key = 0;
        // SAFETY (test): a valid template.
        let rv = unsafe { (l.C_CreateObject.expect("fn"))(s, t.as_mut_ptr(), 6, &mut key) };
        assert_eq!(rv, CKR_OK);
        // CKA_MODULUS is no attribute of an AES key: the module answers
        // CKR_ATTRIBUTE_TYPE_INVALID, having returned CKA_VALUE all the same.
        let (mut value, mut modulus) = ([0u8; 16], [0u8; 64]);
        let mut read = [
            CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: value.as_mut_ptr() as *mut c_void,
                ulValueLen: 16,
            },
            CK_ATTRIBUTE {
                type_: CKA_MODULUS,
                pValue: modulus.as_mut_ptr() as *mut c_void,
                ulValueLen: 64,
            },
        ];
        // SAFETY (test): valid buffers of the stated lengths.
        let rv = unsafe { (l.C_GetAttributeValue.expect("fn"))(s, key, read.as_mut_ptr(), 2) };
        assert_eq!(value, [0x3c; 16], "the value was returned");
        vec![rv, raw::finalize(l)]
    });
    assert_eq!(rvs[0], CKR_ATTRIBUTE_TYPE_INVALID);
    let r = only(&trail, "attribute_read_secret");
    assert_eq!(s(&r, "pkcs11.lifecycle"), "export");
    assert_eq!(s(&r, "pkcs11.key.class"), "CKO_SECRET_KEY");
    assert_eq!(at(&r, "pkcs11.flags"), &json!(["possible_secret_read"]));
    assert_eq!(
        at(&r, "pkcs11.attributes.read"),
        &json!([
            {"type": "CKA_VALUE", "redacted": true},
            {"type": "CKA_MODULUS", "unavailable": true}
        ]),
        "types only after a failure"
    );
    assert_eq!(at(&r, "pkcs11.attribute_count"), &json!({"read": 2}));
}
