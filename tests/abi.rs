//! The raw C ABI: exported functions and tables called directly, with the bad arguments
//! conformance suites use. Where SoftHSM exports the same function, the same sequence
//! runs directly against it and through keytrail and the return values must be identical.

mod common;
use common::raw::{self, Raw};
use common::transcript::hex;
use common::*;

use cryptoki_sys::*;
use std::ffi::c_void;
use std::ptr::null_mut;

type Calls = Vec<(String, CK_RV)>;

fn rec(calls: &mut Calls, name: &str, rv: CK_RV) {
    calls.push((name.to_string(), rv));
}

fn rv_of(calls: &Calls, name: &str) -> CK_RV {
    calls
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not called: {calls:?}"))
        .1
}

/// Runs `scenario` on SoftHSM's table, then on a fresh store on keytrail's table; the
/// return values must be identical and keytrail must report nothing. Returns them.
fn compare_raw(scenario: impl Fn(&CK_FUNCTION_LIST) -> Calls) -> Calls {
    let (fx, calls) = compare_raw_keep(scenario);
    assert_eq!(fx.diagnostics(), "", "keytrail reported a problem");
    calls
}

/// [`compare_raw`] without the diagnostics check; returns the fixture too.
fn compare_raw_keep(scenario: impl Fn(&CK_FUNCTION_LIST) -> Calls) -> (Fixture, Calls) {
    let fx = Fixture::new();
    let direct = scenario(Raw::load(&softhsm_module()).list());
    fx.fresh_store("b");
    let through = scenario(Raw::load(&keytrail_module()).list());
    assert!(!direct.is_empty());
    assert_eq!(
        direct, through,
        "keytrail (right) differs from SoftHSM (left)"
    );
    (fx, through)
}

#[test]
fn get_function_list_null_is_arguments_bad() {
    let _fx = Fixture::new();
    for module in [softhsm_module(), keytrail_module()] {
        let lib = Raw::load(&module);
        // SAFETY (test): NULL is the point.
        let rv = unsafe { (lib.get_function_list_fn())(null_mut()) };
        assert_eq!(rv, CKR_ARGUMENTS_BAD, "{}", module.display());
    }
}

#[test]
fn get_function_list_before_initialize_is_stable_and_keytrails_own() {
    let fx = Fixture::new();
    // Even with a configuration that cannot load, C_GetFunctionList succeeds: it never
    // loads the real module.
    // SAFETY (test): one process per test.
    unsafe { std::env::set_var("KEYTRAIL_CONFIG", fx.path().join("absent.toml")) };
    let kt = Raw::load(&keytrail_module());
    let first = kt.list() as *const CK_FUNCTION_LIST;
    for _ in 0..1000 {
        assert_eq!(kt.list() as *const CK_FUNCTION_LIST, first);
    }
    let l = kt.list();
    assert_eq!((l.version.major, l.version.minor), (2, 40));
    let softhsm = Raw::load(&softhsm_module()).list() as *const CK_FUNCTION_LIST;
    assert_ne!(first, softhsm, "keytrail must not hand out SoftHSM's table");
    // The table's entries are keytrail's exported functions, all present.
    let exported: CK_C_Initialize = kt.sym("C_Initialize").expect("export");
    assert_eq!(
        l.C_Initialize.map(|f| f as usize),
        exported.map(|f| f as usize)
    );
    let sign_init: CK_C_SignInit = kt.sym("C_SignInit").expect("export");
    assert_eq!(
        l.C_SignInit.map(|f| f as usize),
        sign_init.map(|f| f as usize)
    );
    let gfl: CK_C_GetFunctionList = kt.sym("C_GetFunctionList").expect("export");
    assert_eq!(
        l.C_GetFunctionList.map(|f| f as usize),
        gfl.map(|f| f as usize)
    );
    // Every slot of the 2.40 table is filled: version + 68 function pointers.
    const N: usize = (std::mem::size_of::<CK_FUNCTION_LIST>() - 8) / 8;
    assert_eq!(N, 68);
    // SAFETY (test): CK_FUNCTION_LIST is a version (padded to 8) and N pointers.
    let slots =
        unsafe { std::slice::from_raw_parts((first as *const u8).add(8) as *const usize, N) };
    assert!(
        slots.iter().all(|p| *p != 0),
        "a NULL entry in keytrail's table"
    );
    // Still nothing loaded: a call answers CKR_CRYPTOKI_NOT_INITIALIZED.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    // SAFETY (test): valid out-pointer.
    assert_eq!(
        unsafe { (l.C_GetInfo.expect("fn"))(&mut info) },
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
}

/// Calls that need no initialised library, before C_Initialize and after C_Finalize.
fn uninitialised_calls(l: &CK_FUNCTION_LIST, calls: &mut Calls, when: &str) {
    let mut n: CK_ULONG = 0;
    let mut h: CK_SESSION_HANDLE = 0;
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_SHA256_HMAC,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY (test): valid pointers; the library is not initialised.
    unsafe {
        rec(
            calls,
            &format!("{when} C_GetSlotList"),
            (l.C_GetSlotList.expect("fn"))(CK_TRUE, null_mut(), &mut n),
        );
        rec(
            calls,
            &format!("{when} C_OpenSession"),
            (l.C_OpenSession.expect("fn"))(0, CKF_SERIAL_SESSION, null_mut(), None, &mut h),
        );
        rec(
            calls,
            &format!("{when} C_SignInit"),
            (l.C_SignInit.expect("fn"))(1, &mut mech, 1),
        );
        rec(
            calls,
            &format!("{when} C_GetInfo"),
            (l.C_GetInfo.expect("fn"))(&mut info),
        );
        rec(
            calls,
            &format!("{when} C_Finalize"),
            (l.C_Finalize.expect("fn"))(null_mut()),
        );
    }
}

#[test]
fn calls_before_initialize_and_after_finalize() {
    let calls = compare_raw(|l| {
        let mut calls = Calls::new();
        uninitialised_calls(l, &mut calls, "before");
        rec(&mut calls, "C_Initialize", raw::initialize(l));
        rec(&mut calls, "C_Finalize", raw::finalize(l));
        uninitialised_calls(l, &mut calls, "after");
        calls
    });
    for (name, rv) in &calls {
        let want = if name.starts_with("C_") {
            CKR_OK
        } else {
            CKR_CRYPTOKI_NOT_INITIALIZED
        };
        assert_eq!(*rv, want, "{name}");
    }
}

fn aes_key(l: &CK_FUNCTION_LIST, s: CK_SESSION_HANDLE) -> CK_OBJECT_HANDLE {
    let mut class = CKO_SECRET_KEY;
    let mut kt = CKK_AES;
    let mut value = [0x42u8; 32];
    let mut yes = CK_TRUE;
    let mut no = CK_FALSE;
    let mut template = [
        CK_ATTRIBUTE {
            type_: CKA_SENSITIVE,
            pValue: &mut no as *mut _ as *mut c_void,
            ulValueLen: 1,
        },
        CK_ATTRIBUTE {
            type_: CKA_EXTRACTABLE,
            pValue: &mut yes as *mut _ as *mut c_void,
            ulValueLen: 1,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: &mut class as *mut _ as *mut c_void,
            ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_KEY_TYPE,
            pValue: &mut kt as *mut _ as *mut c_void,
            ulValueLen: std::mem::size_of::<CK_KEY_TYPE>() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: value.as_mut_ptr() as *mut c_void,
            ulValueLen: 32,
        },
        CK_ATTRIBUTE {
            type_: CKA_ENCRYPT,
            pValue: &mut yes as *mut _ as *mut c_void,
            ulValueLen: 1,
        },
        CK_ATTRIBUTE {
            type_: CKA_DECRYPT,
            pValue: &mut yes as *mut _ as *mut c_void,
            ulValueLen: 1,
        },
    ];
    let mut h: CK_OBJECT_HANDLE = 0;
    // SAFETY (test): a valid template.
    let rv = unsafe {
        (l.C_CreateObject.expect("fn"))(
            s,
            template.as_mut_ptr(),
            template.len() as CK_ULONG,
            &mut h,
        )
    };
    assert_eq!(rv, CKR_OK, "C_CreateObject");
    h
}

#[test]
fn bad_arguments_after_initialize_match_softhsm() {
    let calls = compare_raw(|l| {
        let mut c = Calls::new();
        assert_eq!(raw::initialize(l), CKR_OK);
        let s = raw::open_rw(l);
        assert_eq!(raw::login(l, s), CKR_OK);
        let key = aes_key(l, s);
        let bad_session: CK_SESSION_HANDLE = 0xdead;
        let garbage_mech = 0x10 as CK_MECHANISM_PTR;
        let mut n: CK_ULONG = 0;
        let mut iv = [0u8; 16];
        let mut cbc = CK_MECHANISM {
            mechanism: CKM_AES_CBC_PAD,
            pParameter: iv.as_mut_ptr() as *mut c_void,
            ulParameterLen: 16,
        };
        let mut data = *b"0123456789abcdef0123";
        // SAFETY (test): the invalid pointers are never valid memory but the module must
        // reject the call before touching them; all other pointers are valid.
        unsafe {
            rec(
                &mut c,
                "SignInit NULL mechanism",
                (l.C_SignInit.expect("fn"))(s, null_mut(), key),
            );
            rec(
                &mut c,
                "DigestInit garbage mechanism, bad session",
                (l.C_DigestInit.expect("fn"))(bad_session, garbage_mech),
            );
            rec(
                &mut c,
                "GetSlotList NULL count",
                (l.C_GetSlotList.expect("fn"))(CK_TRUE, null_mut(), null_mut()),
            );
            rec(
                &mut c,
                "GetAttributeValue NULL template, bad session",
                (l.C_GetAttributeValue.expect("fn"))(bad_session, key, null_mut(), 1),
            );
            rec(
                &mut c,
                "GetAttributeValue NULL template",
                (l.C_GetAttributeValue.expect("fn"))(s, key, null_mut(), 1),
            );
            rec(
                &mut c,
                "GetInfo NULL",
                (l.C_GetInfo.expect("fn"))(null_mut()),
            );
            rec(
                &mut c,
                "Login NULL PIN",
                (l.C_Login.expect("fn"))(s, CKU_USER, null_mut(), 4),
            );
            rec(
                &mut c,
                "OpenSession without SERIAL",
                (l.C_OpenSession.expect("fn"))(raw::slots(l)[0], 0, null_mut(), None, &mut n),
            );
            rec(
                &mut c,
                "GenerateRandom NULL",
                (l.C_GenerateRandom.expect("fn"))(s, null_mut(), 16),
            );
            rec(
                &mut c,
                "FindObjects without init",
                (l.C_FindObjects.expect("fn"))(s, null_mut(), 1, &mut n),
            );
            rec(
                &mut c,
                "WaitForSlotEvent DONT_BLOCK",
                (l.C_WaitForSlotEvent.expect("fn"))(CKF_DONT_BLOCK, &mut n, null_mut()),
            );
            rec(
                &mut c,
                "GetFunctionStatus",
                (l.C_GetFunctionStatus.expect("fn"))(s),
            );
            rec(
                &mut c,
                "CancelFunction",
                (l.C_CancelFunction.expect("fn"))(s),
            );
            rec(
                &mut c,
                "GetOperationState size",
                (l.C_GetOperationState.expect("fn"))(s, null_mut(), &mut n),
            );
            rec(
                &mut c,
                "Finalize non-NULL reserved",
                (l.C_Finalize.expect("fn"))(0x10 as CK_VOID_PTR),
            );

            // C_Encrypt size query, then the real call into a buffer of that size.
            rec(
                &mut c,
                "EncryptInit",
                (l.C_EncryptInit.expect("fn"))(s, &mut cbc, key),
            );
            let mut out_len: CK_ULONG = 0;
            rec(
                &mut c,
                "Encrypt size query",
                (l.C_Encrypt.expect("fn"))(s, data.as_mut_ptr(), 20, null_mut(), &mut out_len),
            );
            rec(&mut c, &format!("size {out_len}"), CKR_OK);
            let mut small = [0u8; 4];
            let mut small_len: CK_ULONG = 4;
            rec(
                &mut c,
                "Encrypt too small",
                (l.C_Encrypt.expect("fn"))(
                    s,
                    data.as_mut_ptr(),
                    20,
                    small.as_mut_ptr(),
                    &mut small_len,
                ),
            );
            rec(&mut c, &format!("wanted {small_len}"), CKR_OK);
            let mut out = vec![0u8; out_len as usize];
            rec(
                &mut c,
                "Encrypt",
                (l.C_Encrypt.expect("fn"))(
                    s,
                    data.as_mut_ptr(),
                    20,
                    out.as_mut_ptr(),
                    &mut out_len,
                ),
            );
            rec(&mut c, &format!("ciphertext {}", hex(&out)), CKR_OK);
            rec(
                &mut c,
                "Encrypt after the operation ended",
                (l.C_Encrypt.expect("fn"))(
                    s,
                    data.as_mut_ptr(),
                    20,
                    out.as_mut_ptr(),
                    &mut out_len,
                ),
            );

            // Attribute size query (NULL pValue) and a too-small buffer.
            let mut attr = CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: null_mut(),
                ulValueLen: 0,
            };
            rec(
                &mut c,
                "GetAttributeValue size query",
                (l.C_GetAttributeValue.expect("fn"))(s, key, &mut attr, 1),
            );
            rec(&mut c, &format!("value len {}", attr.ulValueLen), CKR_OK);
            let mut tiny = [0u8; 2];
            attr.pValue = tiny.as_mut_ptr() as *mut c_void;
            attr.ulValueLen = 2;
            rec(
                &mut c,
                "GetAttributeValue too small",
                (l.C_GetAttributeValue.expect("fn"))(s, key, &mut attr, 1),
            );
            rec(
                &mut c,
                &format!("value len after {:#x}", attr.ulValueLen),
                CKR_OK,
            );
            let mut unknown = CK_ATTRIBUTE {
                type_: CKA_VENDOR_DEFINED | 0x1234,
                pValue: null_mut(),
                ulValueLen: 0,
            };
            rec(
                &mut c,
                "GetAttributeValue unknown type",
                (l.C_GetAttributeValue.expect("fn"))(s, key, &mut unknown, 1),
            );
            rec(
                &mut c,
                &format!("unknown len {:#x}", unknown.ulValueLen),
                CKR_OK,
            );
        }
        rec(&mut c, "C_Initialize again", raw::initialize(l));
        rec(&mut c, "C_Finalize", raw::finalize(l));
        c
    });
    let want = [
        ("SignInit NULL mechanism", CKR_ARGUMENTS_BAD),
        (
            "DigestInit garbage mechanism, bad session",
            CKR_SESSION_HANDLE_INVALID,
        ),
        ("GetSlotList NULL count", CKR_ARGUMENTS_BAD),
        ("GetInfo NULL", CKR_ARGUMENTS_BAD),
        ("Encrypt size query", CKR_OK),
        ("size 32", CKR_OK),
        ("Encrypt too small", CKR_BUFFER_TOO_SMALL),
        ("Encrypt", CKR_OK),
        ("GetAttributeValue size query", CKR_OK),
        ("value len 32", CKR_OK),
        ("GetAttributeValue too small", CKR_BUFFER_TOO_SMALL),
        ("value len after 0xffffffffffffffff", CKR_OK),
        ("GetAttributeValue unknown type", CKR_ATTRIBUTE_TYPE_INVALID),
        ("C_Initialize again", CKR_CRYPTOKI_ALREADY_INITIALIZED),
        ("C_Finalize", CKR_OK),
    ];
    for (name, rv) in want {
        assert_eq!(rv_of(&calls, name), rv, "{name}: {calls:?}");
    }
}

/// An NSS-style C_Initialize: pReserved points at NSS's module parameter string.
fn nss_initialize(l: &CK_FUNCTION_LIST) -> CK_RV {
    let params = b"configdir='sql:/tmp/nssdb' certPrefix='' keyPrefix='' secmod='secmod.db' flags=readOnly\0";
    let mut args = raw::init_args();
    args.pReserved = params.as_ptr() as *mut c_void;
    // SAFETY (test): valid args; pReserved points at a NUL-terminated string.
    unsafe { (l.C_Initialize.expect("fn"))(&mut args as *mut _ as CK_VOID_PTR) }
}

#[test]
fn initialize_with_nss_style_reserved_matches_direct() {
    let (fx, calls) = compare_raw_keep(|l| {
        let mut c = Calls::new();
        let rv = nss_initialize(l);
        rec(&mut c, "C_Initialize with pReserved", rv);
        if rv == CKR_OK {
            rec(&mut c, "C_Finalize", raw::finalize(l));
        }
        // NULL args, as Java retries.
        // SAFETY (test): NULL init args are allowed.
        rec(&mut c, "C_Initialize NULL", unsafe {
            (l.C_Initialize.expect("fn"))(null_mut())
        });
        rec(&mut c, "slots", raw::slots(l).len() as CK_RV);
        rec(&mut c, "C_Finalize", raw::finalize(l));
        c
    });
    // SoftHSM 2.6 refuses a non-NULL pReserved; keytrail passed it through untouched and
    // returned the same, then said which module refused.
    assert_eq!(
        rv_of(&calls, "C_Initialize with pReserved"),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(rv_of(&calls, "C_Initialize NULL"), CKR_OK);
    assert_eq!(rv_of(&calls, "slots"), 2);
    assert_eq!(
        fx.diagnostics(),
        format!(
            "keytrail: the real module {} returned CKR_ARGUMENTS_BAD from C_Initialize\n",
            softhsm_module().display()
        )
    );
    // The refusal is on the trail: a stream of its own, written synchronously and
    // stopped; the accepted C_Initialize that followed started the trail as usual.
    let trail = fx.trail();
    let streams = streams_of(&trail);
    assert_eq!(streams.len(), 2, "{streams:#?}");
    assert_eq!(
        streams[0],
        [
            "trail_start/success/-",
            "initialize/failure/CKR_ARGUMENTS_BAD",
            "trail_stop/success/-"
        ]
    );
    assert_eq!(
        trail[0]["keytrail"]["writer"], "synchronous",
        "{:#}",
        trail[0]
    );
    assert_eq!(
        streams[1][..2],
        ["trail_start/success/-", "initialize/success/CKR_OK"]
    );
    assert_eq!(
        streams[1].last().map(String::as_str),
        Some("trail_stop/success/-")
    );
    let start = trail
        .iter()
        .filter(|r| r["event"]["action"] == "trail_start")
        .nth(1)
        .expect("second stream");
    assert_eq!(start["keytrail"]["writer"], "thread", "{start:#}");
    common::clients::assert_verifies(&fx.trail_path(), 2);
}

/// After C_Finalize, a refused C_Initialize resumes the stopped stream for its record and
/// stops it again; the accepted one after it resumes it once more.
#[test]
fn initialize_refused_after_finalize_is_on_the_resumed_stream() {
    let (fx, calls) = compare_raw_keep(|l| {
        let mut c = Calls::new();
        rec(&mut c, "C_Initialize", raw::initialize(l));
        rec(&mut c, "C_Finalize", raw::finalize(l));
        rec(&mut c, "C_Initialize with pReserved", nss_initialize(l));
        rec(&mut c, "C_Initialize again", raw::initialize(l));
        rec(&mut c, "C_Finalize again", raw::finalize(l));
        c
    });
    assert_eq!(
        rv_of(&calls, "C_Initialize with pReserved"),
        CKR_ARGUMENTS_BAD
    );
    let trail = fx.trail();
    let streams = streams_of(&trail);
    assert_eq!(streams.len(), 1, "{streams:#?}");
    assert_eq!(
        streams[0],
        [
            "trail_start/success/-",
            "initialize/success/CKR_OK",
            "finalize/success/CKR_OK",
            "trail_stop/success/-",
            "trail_resume/success/-",
            "initialize/failure/CKR_ARGUMENTS_BAD",
            "trail_stop/success/-",
            "trail_resume/success/-",
            "initialize/success/CKR_OK",
            "finalize/success/CKR_OK",
            "trail_stop/success/-",
        ]
    );
    common::clients::assert_verifies(&fx.trail_path(), 1);
}

/// Each stream's records as `action/outcome/rv_name`, streams in order of their start.
fn streams_of(trail: &[serde_json::Value]) -> Vec<Vec<String>> {
    let mut ids: Vec<String> = Vec::new();
    let mut out: Vec<Vec<String>> = Vec::new();
    for r in trail {
        let id = r["integrity"]["stream"]
            .as_str()
            .expect("stream")
            .to_string();
        let i = match ids.iter().position(|s| *s == id) {
            Some(i) => i,
            None => {
                ids.push(id);
                out.push(Vec::new());
                out.len() - 1
            }
        };
        out[i].push(format!(
            "{}/{}/{}",
            r["event"]["action"].as_str().unwrap_or("?"),
            r["event"]["outcome"].as_str().unwrap_or("unknown"),
            r["pkcs11"]["rv_name"].as_str().unwrap_or("-")
        ));
    }
    out
}

#[test]
fn initialize_finalize_cycles_and_double_initialize() {
    let calls = compare_raw(|l| {
        let mut c = Calls::new();
        for i in 0..3 {
            rec(&mut c, &format!("init {i}"), raw::initialize(l));
            rec(&mut c, &format!("init {i} again"), raw::initialize(l));
            let s = raw::open_rw(l);
            rec(&mut c, &format!("session {i} = {s}"), CKR_OK);
            rec(&mut c, &format!("login {i}"), raw::login(l, s));
            rec(&mut c, &format!("finalize {i}"), raw::finalize(l));
            rec(&mut c, &format!("finalize {i} again"), raw::finalize(l));
        }
        c
    });
    for i in 0..3 {
        assert_eq!(rv_of(&calls, &format!("init {i}")), CKR_OK);
        assert_eq!(
            rv_of(&calls, &format!("init {i} again")),
            CKR_CRYPTOKI_ALREADY_INITIALIZED
        );
        assert_eq!(rv_of(&calls, &format!("login {i}")), CKR_OK);
        assert_eq!(rv_of(&calls, &format!("finalize {i}")), CKR_OK);
        assert_eq!(
            rv_of(&calls, &format!("finalize {i} again")),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );
    }
}

struct Interfaces {
    list: unsafe extern "C" fn(CK_INTERFACE_PTR, CK_ULONG_PTR) -> CK_RV,
    get: unsafe extern "C" fn(
        CK_UTF8CHAR_PTR,
        CK_VERSION_PTR,
        CK_INTERFACE_PTR_PTR,
        CK_FLAGS,
    ) -> CK_RV,
}

fn interfaces(lib: &Raw) -> Interfaces {
    let list: CK_C_GetInterfaceList = lib.sym("C_GetInterfaceList").expect("export");
    let get: CK_C_GetInterface = lib.sym("C_GetInterface").expect("export");
    Interfaces {
        list: list.expect("fn"),
        get: get.expect("fn"),
    }
}

const EMPTY_INTERFACE: CK_INTERFACE = CK_INTERFACE {
    pInterfaceName: null_mut(),
    pFunctionList: null_mut(),
    flags: 0xffff,
};

fn name_of(i: &CK_INTERFACE) -> String {
    // SAFETY (test): interface names are NUL-terminated strings.
    unsafe { std::ffi::CStr::from_ptr(i.pInterfaceName as *const std::ffi::c_char) }
        .to_string_lossy()
        .into_owned()
}

fn version_of(i: &CK_INTERFACE) -> (u8, u8) {
    // SAFETY (test): every function list starts with its version.
    let v = unsafe { *(i.pFunctionList as *const CK_VERSION) };
    (v.major, v.minor)
}

#[test]
fn interface_list_over_a_2_40_module() {
    let _fx = Fixture::new();
    let softhsm = Raw::load(&softhsm_module());
    assert!(
        softhsm.sym::<CK_C_GetInterface>("C_GetInterface").is_none(),
        "SoftHSM 2.6 has no C_GetInterface"
    );
    let kt = Raw::load(&keytrail_module());
    let i = interfaces(&kt);
    let mut n: CK_ULONG = 0;
    // SAFETY (test): valid pointers unless the test says otherwise.
    unsafe {
        assert_eq!((i.list)(null_mut(), null_mut()), CKR_ARGUMENTS_BAD);
        assert_eq!((i.list)(null_mut(), &mut n), CKR_OK);
        assert_eq!(n, 1, "exactly one interface over a 2.40 module");
        let mut buf = [EMPTY_INTERFACE; 3];
        n = 0;
        assert_eq!((i.list)(buf.as_mut_ptr(), &mut n), CKR_BUFFER_TOO_SMALL);
        assert_eq!(n, 1, "count set on CKR_BUFFER_TOO_SMALL");
        assert_eq!(
            buf[0].flags, 0xffff,
            "nothing written on CKR_BUFFER_TOO_SMALL"
        );
        n = 3;
        assert_eq!((i.list)(buf.as_mut_ptr(), &mut n), CKR_OK);
        assert_eq!(n, 1);
        assert_eq!(name_of(&buf[0]), "PKCS 11");
        assert_eq!(version_of(&buf[0]), (2, 40));
        assert_eq!(buf[0].flags, 0);
        assert_eq!(buf[1].flags, 0xffff, "only one record written");
        assert_eq!(
            buf[0].pFunctionList as *const CK_FUNCTION_LIST,
            kt.list() as *const _,
            "keytrail's own table"
        );
        assert_ne!(
            buf[0].pFunctionList as *const CK_FUNCTION_LIST,
            softhsm.list() as *const _,
        );
    }
}

#[test]
fn get_interface_over_a_2_40_module() {
    let _fx = Fixture::new();
    let softhsm = Raw::load(&softhsm_module()).list() as *const CK_FUNCTION_LIST;
    let kt = Raw::load(&keytrail_module());
    let i = interfaces(&kt);
    let sentinel = 0x5a5a as CK_INTERFACE_PTR;
    let mut name = *b"PKCS 11\0";
    // SAFETY (test): valid pointers unless the test says otherwise.
    unsafe {
        let mut p: CK_INTERFACE_PTR = null_mut();
        assert_eq!((i.get)(null_mut(), null_mut(), &mut p, 0), CKR_OK);
        assert!(!p.is_null());
        assert_eq!(name_of(&*p), "PKCS 11");
        assert_eq!(version_of(&*p), (2, 40));
        assert_eq!(
            (*p).pFunctionList as *const CK_FUNCTION_LIST,
            kt.list() as *const _
        );
        assert_ne!((*p).pFunctionList as *const CK_FUNCTION_LIST, softhsm);
        let default = p;

        let mut v240 = CK_VERSION {
            major: 2,
            minor: 40,
        };
        p = sentinel;
        assert_eq!((i.get)(name.as_mut_ptr(), &mut v240, &mut p, 0), CKR_OK);
        assert_eq!(p, default, "the same record by name and version");

        let mut v30 = CK_VERSION { major: 3, minor: 0 };
        p = sentinel;
        assert_eq!(
            (i.get)(name.as_mut_ptr(), &mut v30, &mut p, 0),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(p, sentinel, "*ppInterface written on failure");
        p = sentinel;
        assert_eq!((i.get)(null_mut(), &mut v30, &mut p, 0), CKR_ARGUMENTS_BAD);
        assert_eq!(p, sentinel);

        let mut vendor = *b"Vendor 11\0";
        assert_eq!(
            (i.get)(vendor.as_mut_ptr(), null_mut(), &mut p, 0),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(p, sentinel);
        // NSS asks for a fork-safe interface first; SoftHSM offers no flags.
        assert_eq!(
            (i.get)(null_mut(), null_mut(), &mut p, CKF_INTERFACE_FORK_SAFE),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(p, sentinel);
        assert_eq!(
            (i.get)(null_mut(), null_mut(), null_mut(), 0),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            (i.get)(name.as_mut_ptr(), &mut v240, null_mut(), 0),
            CKR_ARGUMENTS_BAD
        );

        // The interface's table works.
        let l = &*((*default).pFunctionList as *const CK_FUNCTION_LIST);
        assert_eq!(raw::initialize(l), CKR_OK);
        assert_eq!(raw::slots(l).len(), 2);
        assert_eq!(raw::finalize(l), CKR_OK);
    }
}

#[test]
fn pkcs11_3_0_exports_over_a_2_40_module() {
    let _fx = Fixture::new();
    let kt = Raw::load(&keytrail_module());
    let cancel: CK_C_SessionCancel = kt.sym("C_SessionCancel").expect("export");
    let cancel = cancel.expect("fn");
    let login_user: CK_C_LoginUser = kt.sym("C_LoginUser").expect("export");
    let login_user = login_user.expect("fn");
    let msg_init: CK_C_MessageEncryptInit = kt.sym("C_MessageEncryptInit").expect("export");
    let msg_init = msg_init.expect("fn");
    let mut pin = *b"1234";
    let mut user = *b"u";
    // SAFETY (test): valid pointers.
    unsafe {
        assert_eq!(cancel(1, 0), CKR_CRYPTOKI_NOT_INITIALIZED);
        assert_eq!(raw::initialize(kt.list()), CKR_OK);
        let s = raw::open_rw(kt.list());
        assert_eq!(cancel(s, 0), CKR_FUNCTION_NOT_SUPPORTED);
        assert_eq!(
            login_user(s, CKU_USER, pin.as_mut_ptr(), 4, user.as_mut_ptr(), 1),
            CKR_FUNCTION_NOT_SUPPORTED
        );
        assert_eq!(msg_init(s, null_mut(), 1), CKR_FUNCTION_NOT_SUPPORTED);
        assert_eq!(raw::finalize(kt.list()), CKR_OK);
    }
}

#[test]
fn eight_threads_encrypt_and_decrypt_through_keytrail() {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let fx = Fixture::new();
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    let handles: Vec<_> = (0..8u8)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let s = p.open_rw_session(slot).expect("session");
                match s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
                    Ok(()) => {}
                    Err(cryptoki::error::Error::Pkcs11(
                        cryptoki::error::RvError::UserAlreadyLoggedIn,
                        _,
                    )) => {}
                    Err(e) => panic!("thread {t}: login: {e}"),
                }
                let key = s
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &[
                            Attribute::Token(false),
                            Attribute::ValueLen(32.into()),
                            Attribute::Encrypt(true),
                            Attribute::Decrypt(true),
                        ],
                    )
                    .expect("generate key");
                for i in 0..200u32 {
                    let iv = [t; 16];
                    let msg = format!("thread {t} message {i}").into_bytes();
                    let ct = s
                        .encrypt(&Mechanism::AesCbcPad(iv), key, &msg)
                        .expect("encrypt");
                    assert_ne!(ct[..msg.len().min(16)], msg[..msg.len().min(16)]);
                    let pt = s
                        .decrypt(&Mechanism::AesCbcPad(iv), key, &ct)
                        .expect("decrypt");
                    assert_eq!(pt, msg, "thread {t} round trip {i}");
                }
                (s.handle(), key.handle())
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread panicked"))
        .collect();
    let mut sessions: Vec<_> = results.iter().map(|r| r.0).collect();
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions.len(), 8, "eight distinct sessions");
    let mut keys: Vec<_> = results.iter().map(|r| r.1).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 8, "eight distinct keys");
    p.finalize().expect("C_Finalize");
    assert_eq!(fx.diagnostics(), "");
}

/// Functions taking a mechanism pointer, called with a garbage pointer (0x10) and an
/// invalid session handle, in a child process (a crash must not take the suite down).
const GARBAGE_CALLS: [&str; 10] = [
    "C_SignInit",
    "C_VerifyInit",
    "C_EncryptInit",
    "C_DecryptInit",
    "C_DigestInit",
    "C_SignRecoverInit",
    "C_VerifyRecoverInit",
    "C_GenerateKey",
    "C_DeriveKey",
    "C_WrapKey",
];

/// Child side of [`garbage_mechanism_pointer_with_bad_session`]: initialises the module in
/// `KT_CHILD_MODULE`, makes the call named in `KT_CHILD_CALL` and prints its rv.
#[test]
#[ignore = "child process of garbage_mechanism_pointer_with_bad_session"]
fn child_garbage_call() {
    let module = std::path::PathBuf::from(std::env::var_os("KT_CHILD_MODULE").expect("module"));
    let call = std::env::var("KT_CHILD_CALL").expect("call");
    let l = Raw::load(&module).list();
    assert_eq!(raw::initialize(l), CKR_OK);
    let s = raw::open_rw(l);
    assert_eq!(raw::login(l, s), CKR_OK);
    let bad: CK_SESSION_HANDLE = 0xdead;
    let m = 0x10 as CK_MECHANISM_PTR;
    let mut h: CK_OBJECT_HANDLE = 0;
    let mut n: CK_ULONG = 0;
    // SAFETY (test): deliberately invalid mechanism pointer; see the parent test.
    let rv = unsafe {
        match call.as_str() {
            "C_SignInit" => (l.C_SignInit.expect("fn"))(bad, m, 1),
            "C_VerifyInit" => (l.C_VerifyInit.expect("fn"))(bad, m, 1),
            "C_EncryptInit" => (l.C_EncryptInit.expect("fn"))(bad, m, 1),
            "C_DecryptInit" => (l.C_DecryptInit.expect("fn"))(bad, m, 1),
            "C_DigestInit" => (l.C_DigestInit.expect("fn"))(bad, m),
            "C_SignRecoverInit" => (l.C_SignRecoverInit.expect("fn"))(bad, m, 1),
            "C_VerifyRecoverInit" => (l.C_VerifyRecoverInit.expect("fn"))(bad, m, 1),
            "C_GenerateKey" => (l.C_GenerateKey.expect("fn"))(bad, m, null_mut(), 0, &mut h),
            "C_DeriveKey" => (l.C_DeriveKey.expect("fn"))(bad, m, 1, null_mut(), 0, &mut h),
            "C_WrapKey" => (l.C_WrapKey.expect("fn"))(bad, m, 1, 2, null_mut(), &mut n),
            other => panic!("unknown call {other}"),
        }
    };
    println!("KT rv={rv:#x}");
}

#[test]
fn garbage_mechanism_pointer_with_bad_session() {
    use std::os::unix::process::ExitStatusExt;
    let fx = Fixture::new();
    let run = |module: &std::path::Path, call: &str| {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["child_garbage_call", "--exact", "--ignored", "--nocapture"])
            .env("KT_CHILD_MODULE", module)
            .env("KT_CHILD_CALL", call)
            .env("SOFTHSM2_CONF", &fx.softhsm_conf)
            .env("KEYTRAIL_CONFIG", &fx.keytrail_conf)
            .output()
            .expect("child");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let rv = stdout
            .lines()
            .find_map(|l| l.strip_prefix("KT rv="))
            .map(str::to_string);
        (out.status.code(), out.status.signal(), rv)
    };
    let mut outcomes = Vec::new();
    for call in GARBAGE_CALLS {
        let direct = run(&softhsm_module(), call);
        let through = run(&keytrail_module(), call);
        assert_eq!(
            direct, through,
            "{call}: keytrail (right) differs from SoftHSM"
        );
        outcomes.push((call, through));
    }
    let outcome = |call: &str| {
        outcomes
            .iter()
            .find(|(c, _)| *c == call)
            .map(|(_, o)| o.clone())
            .expect("call")
    };
    // Where SoftHSM checks the session first, both answer CKR_SESSION_HANDLE_INVALID.
    let invalid = (Some(0), None, Some("0xb3".to_string()));
    for call in [
        "C_DigestInit",
        "C_GenerateKey",
        "C_WrapKey",
        "C_SignRecoverInit",
    ] {
        assert_eq!(outcome(call), invalid, "{call}");
    }
    assert_eq!(
        outcome("C_DeriveKey"),
        (Some(0), None, Some("0x7".to_string()))
    );
    // SoftHSM 2.6.1 reads the mechanism before it looks up the session in C_SignInit,
    // C_VerifyInit, C_EncryptInit and C_DecryptInit, and dies of SIGSEGV; keytrail, which
    // never reads the mechanism itself, hands the call over and the process dies the same
    // way (asserted equal above). Recorded here so that a change is noticed.
    for call in [
        "C_SignInit",
        "C_VerifyInit",
        "C_EncryptInit",
        "C_DecryptInit",
    ] {
        assert_eq!(outcome(call), (None, Some(11), None), "{call}");
    }
    // Where the call returned, its record says so without a mechanism: an invalid session
    // proves nothing of the mechanism pointer, and keytrail did not read it.
    let trail = fx.trail();
    for call in [
        "C_SignRecoverInit",
        "C_GenerateKey",
        "C_DeriveKey",
        "C_WrapKey",
    ] {
        let r = trail
            .iter()
            .find(|r| r["pkcs11"]["function"] == call)
            .unwrap_or_else(|| panic!("no {call} record"));
        assert!(r["pkcs11"]["rv"] != 0, "{r}");
        assert!(r["pkcs11"]["mechanism"].is_null(), "{r}");
    }
}
