//! keytrail's PKCS#11 3.0 paths against a real 3.x module, kryoptic: the interfaces it
//! offers, C_LoginUser, C_SessionCancel, message-based AES-GCM, CKA_UNIQUE_ID, and that the
//! trail of it all verifies. Where comparable, keytrail-over-kryoptic is compared with
//! kryoptic directly.
//!
//! Needs `KRYOPTIC_MODULE` (scripts/test.sh builds kryoptic and sets it); without it every
//! test here fails, saying so.
//!
//! keytrail loads kryoptic with dlopen, which hands back the same copy this process loads
//! directly, so the two share kryoptic's state: a direct run is always finalised before
//! keytrail initialises it again.

mod common;
mod support;

use common::kryoptic::*;
use common::raw::{self, Raw};
use common::*;
use cryptoki_sys::*;
use serde_json::json;
use std::process::Command;
use support::{assert_call, at, category, dump, lifecycle, n, only, s};

fn keytrail() -> Raw {
    Raw::load(&keytrail_module())
}

fn kryoptic() -> Raw {
    Raw::load(&kryoptic_module())
}

/// The interfaces a module lists through `C_GetInterfaceList`.
fn interface_list(m: &Raw) -> Vec<CK_INTERFACE> {
    let f = get_interface_list_fn(m);
    let mut count: CK_ULONG = 0;
    // SAFETY (test): size query.
    assert_eq!(unsafe { f(std::ptr::null_mut(), &mut count) }, CKR_OK);
    let empty = CK_INTERFACE {
        pInterfaceName: std::ptr::null_mut(),
        pFunctionList: std::ptr::null_mut(),
        flags: 0,
    };
    let mut v = vec![empty; count as usize];
    // SAFETY (test): room for `count` records.
    assert_eq!(unsafe { f(v.as_mut_ptr(), &mut count) }, CKR_OK);
    v.truncate(count as usize);
    v
}

fn name_of(i: &CK_INTERFACE) -> String {
    // SAFETY (test): interface names are NUL-terminated strings the module keeps.
    unsafe { std::ffi::CStr::from_ptr(i.pInterfaceName as *const std::ffi::c_char) }
        .to_string_lossy()
        .into_owned()
}

fn version_of(i: &CK_INTERFACE) -> (u8, u8) {
    // SAFETY (test): every function list starts with its CK_VERSION.
    let v = unsafe { *(i.pFunctionList as *const CK_VERSION) };
    (v.major, v.minor)
}

/// Finalises through a 3.0 table.
fn finalize(l: &CK_FUNCTION_LIST_3_0) {
    assert_eq!(raw::finalize(as_v2(l)), CKR_OK, "C_Finalize");
}

/// Runs `keytrail verify` on the fixture's trail and expects exit 0.
fn assert_trail_verifies(fx: &KryFixture) {
    let out = Command::new(keytrail_bin())
        .arg("verify")
        .arg(fx.trail_path())
        .output()
        .expect("run keytrail verify");
    assert_eq!(
        out.status.code(),
        Some(0),
        "keytrail verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn interface_list_offers_keytrails_own_3_0_and_2_40_tables() {
    let _fx = KryFixture::new();
    let kt = keytrail();
    let kry = kryoptic();
    let list = interface_list(&kt);
    // Too small a buffer: CKR_BUFFER_TOO_SMALL and the count needed.
    let mut one = [CK_INTERFACE {
        pInterfaceName: std::ptr::null_mut(),
        pFunctionList: std::ptr::null_mut(),
        flags: 0,
    }];
    let mut count: CK_ULONG = 1;
    // SAFETY (test): room for one record, as `count` says.
    let rv = unsafe { get_interface_list_fn(&kt)(one.as_mut_ptr(), &mut count) };
    assert_eq!(rv, CKR_BUFFER_TOO_SMALL);
    assert_eq!(count, 2);
    let versions: Vec<(String, (u8, u8))> =
        list.iter().map(|i| (name_of(i), version_of(i))).collect();
    assert_eq!(
        versions,
        [
            ("PKCS 11".to_string(), (3, 0)),
            ("PKCS 11".to_string(), (2, 40))
        ],
        "keytrail's interfaces"
    );
    let kry_list = interface_list(&kry);
    for i in &list {
        let (major, minor) = version_of(i);
        let theirs = interface(&kry, major, minor);
        assert_ne!(
            i.pFunctionList, theirs.pFunctionList,
            "{major}.{minor}: keytrail hands out its own table, not kryoptic's"
        );
        assert!(
            kry_list.iter().all(|k| k.pFunctionList != i.pFunctionList),
            "{major}.{minor}: not one of kryoptic's tables"
        );
        assert_eq!(
            i.flags, theirs.flags,
            "{major}.{minor}: keytrail offers kryoptic's flags for the interface"
        );
    }
    // kryoptic itself offers a 3.2 interface too, which keytrail does not pass on.
    assert!(
        kry_list.iter().any(|k| version_of(k) == (3, 2)),
        "kryoptic lists 3.2"
    );
}

#[test]
fn get_interface_by_version_by_default_and_failures_leave_the_pointer() {
    let _fx = KryFixture::new();
    let kt = keytrail();
    let kry = kryoptic();
    let get = get_interface_fn(&kt);

    let v3 = interface(&kt, 3, 0);
    assert_eq!(name_of(&v3), "PKCS 11");
    assert_eq!(version_of(&v3), (3, 0));
    let l3 = list_3_0(&kt);
    assert_eq!(
        (l3.version.major, l3.version.minor),
        (3, 0),
        "table version"
    );
    assert!(
        !std::ptr::eq(l3, list_3_0(&kry)),
        "keytrail's 3.0 table is its own"
    );
    assert_eq!(v3.flags, interface(&kry, 3, 0).flags);
    // Every 3.0 function is there, and keytrail's, not kryoptic's.
    let k3 = list_3_0(&kry);
    assert!(l3.C_LoginUser.is_some() && l3.C_SessionCancel.is_some());
    assert!(l3.C_MessageEncryptInit.is_some() && l3.C_MessageVerifyFinal.is_some());
    assert_ne!(
        l3.C_MessageEncryptInit.map(|f| f as usize),
        k3.C_MessageEncryptInit.map(|f| f as usize)
    );

    let v2 = interface(&kt, 2, 40);
    assert_eq!(version_of(&v2), (2, 40));
    assert_eq!(v2.flags, interface(&kry, 2, 40).flags);
    assert_eq!(
        v2.pFunctionList as *const CK_FUNCTION_LIST,
        kt.list() as *const CK_FUNCTION_LIST,
        "the 2.40 interface is C_GetFunctionList's table"
    );

    // NULL name, NULL version: the default, keytrail's first interface (3.0).
    let mut found: CK_INTERFACE_PTR = std::ptr::null_mut();
    // SAFETY (test): NULL name and version are allowed; valid out-pointer.
    let rv = unsafe { get(std::ptr::null_mut(), std::ptr::null_mut(), &mut found, 0) };
    assert_eq!(rv, CKR_OK);
    // SAFETY (test): CKR_OK, so `found` points at keytrail's record.
    let default = unsafe { *found };
    assert_eq!(version_of(&default), (3, 0));
    assert_eq!(default.pFunctionList, v3.pFunctionList);
    // NULL name with a version: that version.
    let mut version = CK_VERSION {
        major: 2,
        minor: 40,
    };
    // SAFETY (test): as above.
    let rv = unsafe { get(std::ptr::null_mut(), &mut version, &mut found, 0) };
    assert_eq!(rv, CKR_OK);
    // SAFETY (test): CKR_OK.
    assert_eq!(version_of(unsafe { &*found }), (2, 40));

    // Failures leave *ppInterface as it was.
    let sentinel = 0x5a5a_5a5a_usize as CK_INTERFACE_PTR;
    let mut cases: Vec<(&str, Vec<u8>, Option<CK_VERSION>, CK_FLAGS)> = vec![
        ("unknown name", b"PKCS 12\0".to_vec(), None, 0),
        (
            "unknown version",
            PKCS11_NAME.to_vec(),
            Some(CK_VERSION { major: 3, minor: 9 }),
            0,
        ),
        (
            "flags not offered",
            PKCS11_NAME.to_vec(),
            Some(CK_VERSION { major: 3, minor: 0 }),
            !v3.flags,
        ),
    ];
    for (what, name, version, flags) in &mut cases {
        let mut out = sentinel;
        let vp = version
            .as_mut()
            .map_or(std::ptr::null_mut(), |v| v as *mut CK_VERSION);
        // SAFETY (test): valid name, version (or NULL) and out-pointer.
        let rv = unsafe { get(name.as_mut_ptr(), vp, &mut out, *flags) };
        assert_ne!(rv, CKR_OK, "{what}");
        assert_eq!(out, sentinel, "{what}: *ppInterface untouched");
        // kryoptic fails the same requests.
        let mut theirs = sentinel;
        // SAFETY (test): as above.
        let krv = unsafe { get_interface_fn(&kry)(name.as_mut_ptr(), vp, &mut theirs, *flags) };
        assert_ne!(krv, CKR_OK, "{what}: kryoptic too");
    }
}

/// `C_LoginUser` through a 3.0 table on a fresh session: its CK_RV.
fn login_user(l: &CK_FUNCTION_LIST_3_0) -> CK_RV {
    assert_eq!(raw::initialize(as_v2(l)), CKR_OK);
    let s = raw::open_rw(as_v2(l));
    let mut pin = KRY_USER_PIN.as_bytes().to_vec();
    let mut user = b"alice".to_vec();
    // SAFETY (test): valid PIN and user name buffers.
    let rv = unsafe {
        (l.C_LoginUser.expect("C_LoginUser"))(
            s,
            CKU_USER,
            pin.as_mut_ptr(),
            pin.len() as CK_ULONG,
            user.as_mut_ptr(),
            user.len() as CK_ULONG,
        )
    };
    finalize(l);
    rv
}

#[test]
fn login_user_answers_as_kryoptic_and_is_an_auth_record() {
    let fx = KryFixture::new();
    let direct = login_user(list_3_0(&kryoptic()));
    let through = login_user(list_3_0(&keytrail()));
    assert_eq!(through, direct, "keytrail returns kryoptic's CK_RV");
    assert_eq!(
        direct, CKR_FUNCTION_NOT_SUPPORTED,
        "kryoptic 1.5.4 does not support C_LoginUser (shared/BACKENDS.md)"
    );

    let t = lifecycle(&fx.trail());
    let auth = category(&t, "auth");
    assert_eq!(auth.len(), 1, "{}", dump(&t));
    let r = &auth[0];
    assert_call(
        r,
        "auth",
        "login",
        "C_LoginUser",
        "CKR_FUNCTION_NOT_SUPPORTED",
    );
    assert_eq!(s(r, "pkcs11.auth.user_type"), "CKU_USER");
    // The module never looked at the user name, so it is not on the trail.
    assert!(at(r, "pkcs11.auth.username").is_null(), "{r}");
    let raw_trail = std::fs::read_to_string(fx.trail_path()).expect("trail");
    assert!(!raw_trail.contains(KRY_USER_PIN), "the PIN leaked");
    assert_trail_verifies(&fx);
}

const CBC_IV: [u8; 16] = [7; 16];

/// C_EncryptInit (AES-CBC-PAD), one C_EncryptUpdate, C_SessionCancel(CKF_ENCRYPT), then
/// C_EncryptUpdate again: the CK_RVs of the cancel and of the update after it, and of a new
/// C_EncryptInit after that.
fn cancel_run(l: &CK_FUNCTION_LIST_3_0) -> (CK_RV, CK_RV, CK_RV) {
    let s = kry_user_session(l);
    let key = kry_aes_key(l, s, "cancel-me");
    let mut iv = CBC_IV;
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr() as CK_VOID_PTR,
        ulParameterLen: iv.len() as CK_ULONG,
    };
    let init = l.C_EncryptInit.expect("C_EncryptInit");
    let update = l.C_EncryptUpdate.expect("C_EncryptUpdate");
    // SAFETY (test): valid mechanism.
    assert_eq!(unsafe { init(s, &mut mechanism, key) }, CKR_OK);
    let mut data = [1u8; 32];
    let mut out = [0u8; 64];
    let mut out_len = out.len() as CK_ULONG;
    // SAFETY (test): valid buffers.
    let rv = unsafe {
        update(
            s,
            data.as_mut_ptr(),
            data.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut out_len,
        )
    };
    assert_eq!(rv, CKR_OK, "C_EncryptUpdate");
    // SAFETY (test): a session handle and flags.
    let cancel = unsafe { (l.C_SessionCancel.expect("C_SessionCancel"))(s, CKF_ENCRYPT) };
    let mut out_len = out.len() as CK_ULONG;
    // SAFETY (test): valid buffers.
    let after = unsafe {
        update(
            s,
            data.as_mut_ptr(),
            data.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut out_len,
        )
    };
    // SAFETY (test): valid mechanism.
    let again = unsafe { init(s, &mut mechanism, key) };
    finalize(l);
    (cancel, after, again)
}

#[test]
fn session_cancel_cancels_an_operation_in_progress() {
    let fx = KryFixture::new();
    let direct = cancel_run(list_3_0(&kryoptic()));
    assert_eq!(
        direct,
        (CKR_OK, CKR_OPERATION_NOT_INITIALIZED, CKR_OK),
        "kryoptic directly"
    );
    let through = cancel_run(list_3_0(&keytrail()));
    assert_eq!(through, direct, "through keytrail as directly");

    let t = lifecycle(&fx.trail());
    // The operation C_SessionCancel ended, then the second one, left unfinished at
    // C_Finalize; the C_EncryptUpdate in between had no operation to count against.
    let uses = category(&t, "use");
    let ends: Vec<&str> = uses.iter().map(|r| s(r, "pkcs11.operation.end")).collect();
    assert_eq!(ends, ["cancelled", "abandoned"], "{}", dump(&t));
    let r = &uses[0];
    assert_eq!(s(r, "pkcs11.lifecycle"), "use");
    assert_eq!(s(r, "event.action"), "encrypt");
    assert_eq!(s(r, "pkcs11.function"), "C_SessionCancel");
    assert_eq!(
        at(r, "pkcs11.operation"),
        &json!({"kind": "encrypt", "init": "C_EncryptInit", "parts": 1, "end": "cancelled"})
    );
    assert_eq!(s(r, "pkcs11.mechanism.name"), "CKM_AES_CBC_PAD");
    assert_eq!(s(r, "pkcs11.key.label"), "cancel-me");
    assert_eq!(n(r, "pkcs11.data.in_len"), 32);
    let c = only(&t, "session_cancel");
    assert_call(&c, "session", "session_cancel", "C_SessionCancel", "CKR_OK");
    assert_trail_verifies(&fx);
}

/// One AES-GCM message: its IV, tag, AAD and data.
struct Message {
    iv: [u8; 12],
    tag: [u8; 16],
    aad: Vec<u8>,
    data: Vec<u8>,
}

fn gcm_params(m: &mut Message) -> CK_GCM_MESSAGE_PARAMS {
    CK_GCM_MESSAGE_PARAMS {
        pIv: m.iv.as_mut_ptr(),
        ulIvLen: m.iv.len() as CK_ULONG,
        // The application supplies each IV (kryoptic accepts this outside FIPS mode; with
        // a generator it would write the IV it chose back into pIv).
        ulIvFixedBits: 0,
        ivGenerator: CKG_NO_GENERATE,
        pTag: m.tag.as_mut_ptr(),
        ulTagBits: (m.tag.len() * 8) as CK_ULONG,
    }
}

type MessageFn = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    CK_VOID_PTR,
    CK_ULONG,
    CK_BYTE_PTR,
    CK_ULONG,
    CK_BYTE_PTR,
    CK_ULONG,
    CK_BYTE_PTR,
    CK_ULONG_PTR,
) -> CK_RV;

/// One message-based operation over `messages`: C_Message*Init, one C_*Message each
/// (replacing each message's data with the output; on encryption kryoptic writes the tag
/// into the message's params), C_Message*Final.
fn message_operation(
    init: unsafe extern "C" fn(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) -> CK_RV,
    each: MessageFn,
    fin: unsafe extern "C" fn(CK_SESSION_HANDLE) -> CK_RV,
    s: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    messages: &mut [Message],
) {
    // kryoptic takes the GCM parameters per message; the init's mechanism has none.
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY (test): valid mechanism.
    assert_eq!(unsafe { init(s, &mut mechanism, key) }, CKR_OK, "init");
    for (i, m) in messages.iter_mut().enumerate() {
        let mut params = gcm_params(m);
        let mut out = vec![0u8; m.data.len() + 16];
        let mut out_len = out.len() as CK_ULONG;
        // SAFETY (test): params, AAD, input and output buffers are valid for the call.
        let rv = unsafe {
            each(
                s,
                &mut params as *mut CK_GCM_MESSAGE_PARAMS as CK_VOID_PTR,
                std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG,
                m.aad.as_mut_ptr(),
                m.aad.len() as CK_ULONG,
                m.data.as_mut_ptr(),
                m.data.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut out_len,
            )
        };
        assert_eq!(rv, CKR_OK, "message {i}");
        out.truncate(out_len as usize);
        m.data = out;
    }
    // SAFETY (test): a session handle.
    assert_eq!(unsafe { fin(s) }, CKR_OK, "final");
}

fn plaintexts() -> Vec<Message> {
    [(b"first" as &[u8], 11usize), (b"second", 40), (b"", 1)]
        .iter()
        .enumerate()
        .map(|(i, (aad, len))| Message {
            iv: [i as u8 + 1; 12],
            tag: [0; 16],
            aad: aad.to_vec(),
            data: (0..*len).map(|b| (b * 7 + i) as u8).collect(),
        })
        .collect()
}

/// What a round trip gave: the plaintexts, the ciphertexts with their tags, and the
/// decrypted texts.
struct RoundTrip {
    plain: Vec<Vec<u8>>,
    sealed: Vec<(Vec<u8>, [u8; 16])>,
    opened: Vec<Vec<u8>>,
}

/// Encrypts three messages and decrypts them again through `l`.
fn gcm_round_trip(l: &CK_FUNCTION_LIST_3_0) -> RoundTrip {
    let s = kry_user_session(l);
    let key = kry_aes_key(l, s, "gcm-messages");
    let mut messages = plaintexts();
    let plain: Vec<Vec<u8>> = messages.iter().map(|m| m.data.clone()).collect();
    message_operation(
        l.C_MessageEncryptInit.expect("C_MessageEncryptInit"),
        l.C_EncryptMessage.expect("C_EncryptMessage"),
        l.C_MessageEncryptFinal.expect("C_MessageEncryptFinal"),
        s,
        key,
        &mut messages,
    );
    let sealed: Vec<(Vec<u8>, [u8; 16])> =
        messages.iter().map(|m| (m.data.clone(), m.tag)).collect();
    for (m, p) in messages.iter().zip(&plain) {
        assert_eq!(
            m.data.len(),
            p.len(),
            "GCM ciphertext is as long as the plaintext"
        );
        assert_ne!(m.tag, [0; 16], "the tag was written");
    }
    message_operation(
        l.C_MessageDecryptInit.expect("C_MessageDecryptInit"),
        l.C_DecryptMessage.expect("C_DecryptMessage"),
        l.C_MessageDecryptFinal.expect("C_MessageDecryptFinal"),
        s,
        key,
        &mut messages,
    );
    let opened = messages.into_iter().map(|m| m.data).collect();
    finalize(l);
    RoundTrip {
        plain,
        sealed,
        opened,
    }
}

#[test]
fn message_based_aes_gcm_round_trips_and_is_one_use_record_per_operation() {
    let fx = KryFixture::new();
    let direct = gcm_round_trip(list_3_0(&kryoptic()));
    assert_eq!(direct.opened, direct.plain, "kryoptic directly round-trips");
    let RoundTrip {
        plain,
        sealed,
        opened,
    } = gcm_round_trip(list_3_0(&keytrail()));
    assert_eq!(opened, plain, "through keytrail round-trips");
    assert!(sealed.iter().zip(&plain).any(|((c, _), p)| c != p));

    let in_total: u64 = plain.iter().map(|p| p.len() as u64).sum();
    let t = lifecycle(&fx.trail());
    let uses = category(&t, "use");
    assert_eq!(uses.len(), 2, "{}", dump(&t));
    for (r, kind, init, function) in [
        (
            &uses[0],
            "message_encrypt",
            "C_MessageEncryptInit",
            "C_MessageEncryptFinal",
        ),
        (
            &uses[1],
            "message_decrypt",
            "C_MessageDecryptInit",
            "C_MessageDecryptFinal",
        ),
    ] {
        assert_call(r, "use", kind, function, "CKR_OK");
        assert_eq!(
            at(r, "pkcs11.operation"),
            &json!({"kind": kind, "init": init, "parts": 3, "end": "completed"}),
            "{r}"
        );
        assert_eq!(s(r, "pkcs11.mechanism.name"), "CKM_AES_GCM");
        assert_eq!(s(r, "pkcs11.key.label"), "gcm-messages");
        assert_eq!(n(r, "pkcs11.data.in_len"), in_total, "{r}");
        assert_eq!(n(r, "pkcs11.data.out_len"), in_total, "{r}");
    }
    assert_trail_verifies(&fx);
}

#[test]
fn unique_id_is_on_the_generate_record_and_later_use_records() {
    let fx = KryFixture::new();
    let l = list_3_0(&keytrail());
    let s_ = kry_user_session(l);
    let key = kry_aes_key(l, s_, "unique");
    let unique = String::from_utf8(kry_attribute(l, s_, key, CKA_UNIQUE_ID)).expect("UTF-8");
    assert!(!unique.is_empty(), "kryoptic assigns CKA_UNIQUE_ID");
    // A use: one AES-CBC-PAD encryption.
    let mut iv = CBC_IV;
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr() as CK_VOID_PTR,
        ulParameterLen: iv.len() as CK_ULONG,
    };
    // SAFETY (test): valid mechanism.
    assert_eq!(
        unsafe { (l.C_EncryptInit.expect("C_EncryptInit"))(s_, &mut mechanism, key) },
        CKR_OK
    );
    let mut data = [9u8; 20];
    let mut out = [0u8; 48];
    let mut out_len = out.len() as CK_ULONG;
    // SAFETY (test): valid buffers.
    let rv = unsafe {
        (l.C_Encrypt.expect("C_Encrypt"))(
            s_,
            data.as_mut_ptr(),
            data.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut out_len,
        )
    };
    assert_eq!(rv, CKR_OK);
    assert_eq!(out_len, 32);
    finalize(l);

    let t = lifecycle(&fx.trail());
    let g = only(&t, "key_generate");
    assert_call(&g, "generate", "key_generate", "C_GenerateKey", "CKR_OK");
    assert_eq!(n(&g, "pkcs11.key.handle"), key);
    assert_eq!(s(&g, "pkcs11.key.unique_id"), unique, "{g}");
    assert_eq!(s(&g, "pkcs11.key.key_type"), "CKK_AES");
    assert_eq!(n(&g, "pkcs11.key.bits"), 256);
    let uses = category(&t, "use");
    assert_eq!(uses.len(), 1, "{}", dump(&t));
    assert_call(&uses[0], "use", "encrypt", "C_Encrypt", "CKR_OK");
    assert_eq!(s(&uses[0], "pkcs11.key.unique_id"), unique, "{}", uses[0]);
    assert_trail_verifies(&fx);
}

#[test]
fn trail_of_a_3_0_session_verifies_and_names_the_module() {
    let fx = KryFixture::new();
    let l = list_3_0(&keytrail());
    let s_ = kry_user_session(l);
    let key = kry_aes_key(l, s_, "verified");
    // SAFETY (test): a session handle and flags. Nothing to cancel: kryoptic answers CKR_OK.
    let _ = unsafe { (l.C_SessionCancel.expect("C_SessionCancel"))(s_, CKF_FIND_OBJECTS) };
    // SAFETY (test): a session and an object handle.
    assert_eq!(
        unsafe { (l.C_DestroyObject.expect("C_DestroyObject"))(s_, key) },
        CKR_OK
    );
    finalize(l);
    let all = fx.trail();
    assert_eq!(s(&all[0], "event.action"), "trail_start", "{}", dump(&all));
    assert_eq!(
        s(all.last().expect("records"), "event.action"),
        "trail_stop"
    );
    assert_eq!(
        s(&all[0], "keytrail.module"),
        kryoptic_module().to_str().expect("UTF-8 path"),
        "trail_start names the real module"
    );
    assert!(fx.diagnostics().is_empty(), "{}", fx.diagnostics());
    assert_trail_verifies(&fx);
}

/// C_MessageEncryptInit, one C_EncryptMessage, C_SessionCancel(CKF_MESSAGE_ENCRYPT), then
/// another C_EncryptMessage: the CK_RVs of the cancel and of the message after it.
fn message_cancel_run(l: &CK_FUNCTION_LIST_3_0) -> (CK_RV, CK_RV) {
    let s_ = kry_user_session(l);
    let key = kry_aes_key(l, s_, "cancel-messages");
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY (test): valid mechanism.
    let rv = unsafe { (l.C_MessageEncryptInit.expect("init"))(s_, &mut mechanism, key) };
    assert_eq!(rv, CKR_OK);
    let encrypt = l.C_EncryptMessage.expect("C_EncryptMessage");
    let mut messages = plaintexts();
    let one = |m: &mut Message| {
        let mut params = gcm_params(m);
        let mut out = vec![0u8; m.data.len() + 16];
        let mut out_len = out.len() as CK_ULONG;
        // SAFETY (test): params, AAD, input and output buffers are valid for the call.
        unsafe {
            encrypt(
                s_,
                &mut params as *mut CK_GCM_MESSAGE_PARAMS as CK_VOID_PTR,
                std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG,
                m.aad.as_mut_ptr(),
                m.aad.len() as CK_ULONG,
                m.data.as_mut_ptr(),
                m.data.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut out_len,
            )
        }
    };
    assert_eq!(one(&mut messages[0]), CKR_OK, "first message");
    // SAFETY (test): a session handle and flags.
    let cancel = unsafe { (l.C_SessionCancel.expect("cancel"))(s_, CKF_MESSAGE_ENCRYPT) };
    let after = one(&mut messages[1]);
    finalize(l);
    (cancel, after)
}

#[test]
fn session_cancel_ends_a_message_operation() {
    let fx = KryFixture::new();
    let direct = message_cancel_run(list_3_0(&kryoptic()));
    assert_eq!(
        direct,
        (CKR_OK, CKR_OPERATION_NOT_INITIALIZED),
        "kryoptic directly"
    );
    let through = message_cancel_run(list_3_0(&keytrail()));
    assert_eq!(through, direct, "through keytrail as directly");

    let t = lifecycle(&fx.trail());
    let uses = category(&t, "use");
    assert_eq!(uses.len(), 1, "{}", dump(&t));
    let r = &uses[0];
    assert_eq!(s(r, "event.action"), "message_encrypt");
    assert_eq!(s(r, "pkcs11.function"), "C_SessionCancel");
    assert_eq!(
        at(r, "pkcs11.operation"),
        &json!({"kind": "message_encrypt", "init": "C_MessageEncryptInit", "parts": 1, "end": "cancelled"})
    );
    assert_eq!(
        n(r, "pkcs11.data.in_len"),
        plaintexts()[0].data.len() as u64
    );
    assert_trail_verifies(&fx);
}
