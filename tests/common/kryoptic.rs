//! kryoptic (a PKCS#11 3.2 software token) as the real module, for keytrail's 3.0 paths:
//! a fresh sqlite token per test, initialised by kryoptic itself through pkcs11-tool, and
//! keytrail configured to forward to it.
//!
//! scripts/kryoptic.sh builds kryoptic; scripts/test.sh runs it and exports
//! `KRYOPTIC_MODULE`. Without that variable these tests fail rather than pass unchecked.

use super::raw::Raw;
use cryptoki_sys::*;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const KRY_USER_PIN: &str = "123456";
pub const KRY_SO_PIN: &str = "12345678";
pub const KRY_TOKEN_LABEL: &str = "keytrail-v3";

/// kryoptic's module, from `KRYOPTIC_MODULE` (set by scripts/test.sh).
pub fn kryoptic_module() -> PathBuf {
    let Some(p) = std::env::var_os("KRYOPTIC_MODULE").filter(|p| !p.is_empty()) else {
        panic!(
            "KRYOPTIC_MODULE is not set: run scripts/test.sh, which builds kryoptic \
             (scripts/kryoptic.sh) and exports KRYOPTIC_MODULE for the PKCS#11 3.0 tests"
        );
    };
    let p = PathBuf::from(p);
    assert!(
        p.exists(),
        "KRYOPTIC_MODULE={} does not exist: run scripts/test.sh, which builds kryoptic",
        p.display()
    );
    p
}

/// A scratch kryoptic token (sqlite) with user and SO PINs set, and a keytrail configuration
/// forwarding to kryoptic.
pub struct KryFixture {
    pub dir: tempfile::TempDir,
    pub module: PathBuf,
    pub kryoptic_conf: PathBuf,
    pub keytrail_conf: PathBuf,
}

impl KryFixture {
    /// Creates and initialises the token, and points this process's `KRYOPTIC_CONF` and
    /// `KEYTRAIL_CONFIG` at it.
    pub fn new() -> KryFixture {
        let module = kryoptic_module();
        let dir = tempfile::tempdir().expect("temp dir");
        let kryoptic_conf = dir.path().join("kryoptic.toml");
        std::fs::write(
            &kryoptic_conf,
            format!(
                "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                dir.path().join("token.sql").display()
            ),
        )
        .expect("write kryoptic.toml");
        pkcs11_tool(
            &module,
            &kryoptic_conf,
            &[
                "--init-token",
                "--label",
                KRY_TOKEN_LABEL,
                "--so-pin",
                KRY_SO_PIN,
            ],
        );
        pkcs11_tool(
            &module,
            &kryoptic_conf,
            &[
                "--init-pin",
                "--pin",
                KRY_USER_PIN,
                "--login",
                "--so-pin",
                KRY_SO_PIN,
            ],
        );
        let keytrail_conf = dir.path().join("keytrail.toml");
        let fx = KryFixture {
            dir,
            module,
            kryoptic_conf,
            keytrail_conf,
        };
        std::fs::write(
            &fx.keytrail_conf,
            format!(
                "module = \"{}\"\ndiagnostics = \"{}\"\n[trail]\npath = \"{}\"\n",
                fx.module.display(),
                fx.path().join("diagnostics.log").display(),
                fx.trail_path().display()
            ),
        )
        .expect("write keytrail.toml");
        // SAFETY (test): each test is its own process and sets these before any thread
        // that reads the environment starts.
        unsafe {
            std::env::set_var("KRYOPTIC_CONF", &fx.kryoptic_conf);
            std::env::set_var("KEYTRAIL_CONFIG", &fx.keytrail_conf);
            std::env::remove_var("KEYTRAIL_MODULE");
        }
        fx
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The trail file.
    pub fn trail_path(&self) -> PathBuf {
        self.dir.path().join("trail").join("keytrail.jsonl")
    }

    /// Every record of the trail, parsed.
    pub fn trail(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.trail_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each trail line is JSON"))
            .collect()
    }

    /// keytrail's diagnostics file contents (empty if none were written).
    pub fn diagnostics(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("diagnostics.log")).unwrap_or_default()
    }
}

fn pkcs11_tool(module: &Path, conf: &Path, args: &[&str]) {
    let out = Command::new("pkcs11-tool")
        .env("KRYOPTIC_CONF", conf)
        .arg("--module")
        .arg(module)
        .args(args)
        .output()
        .expect("pkcs11-tool (install opensc; scripts/test.sh does)");
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?} against kryoptic failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The "PKCS 11" interface name, NUL-terminated.
pub const PKCS11_NAME: &[u8] = b"PKCS 11\0";

/// `C_GetInterface` of a loaded module, as exported.
pub fn get_interface_fn(
    m: &Raw,
) -> unsafe extern "C" fn(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) -> CK_RV
{
    m.sym("C_GetInterface").expect("C_GetInterface exported")
}

/// `C_GetInterfaceList` of a loaded module, as exported.
pub fn get_interface_list_fn(
    m: &Raw,
) -> unsafe extern "C" fn(CK_INTERFACE_PTR, CK_ULONG_PTR) -> CK_RV {
    m.sym("C_GetInterfaceList")
        .expect("C_GetInterfaceList exported")
}

/// The interface a module returns for "PKCS 11" at `major.minor` (panics unless CKR_OK).
pub fn interface(m: &Raw, major: u8, minor: u8) -> CK_INTERFACE {
    let mut name = PKCS11_NAME.to_vec();
    let mut version = CK_VERSION { major, minor };
    let mut found: CK_INTERFACE_PTR = std::ptr::null_mut();
    // SAFETY (test): valid name, version and out-pointer.
    let rv = unsafe { get_interface_fn(m)(name.as_mut_ptr(), &mut version, &mut found, 0) };
    assert_eq!(rv, CKR_OK, "C_GetInterface(\"PKCS 11\", {major}.{minor})");
    assert!(!found.is_null());
    // SAFETY (test): on CKR_OK the module points at an interface record it keeps.
    unsafe { *found }
}

/// A module's 3.0 function table, from its `C_GetInterface("PKCS 11", 3.0)`.
pub fn list_3_0(m: &Raw) -> &'static CK_FUNCTION_LIST_3_0 {
    let i = interface(m, 3, 0);
    assert!(!i.pFunctionList.is_null());
    // SAFETY (test): the 3.0 interface's table has the 3.0 layout and lives as long as the
    // (never unloaded) module.
    unsafe { &*(i.pFunctionList as *const CK_FUNCTION_LIST_3_0) }
}

/// The 2.40 prefix of a 3.0 table, for the helpers in `raw`.
pub fn as_v2(l: &CK_FUNCTION_LIST_3_0) -> &CK_FUNCTION_LIST {
    // SAFETY (test): CK_FUNCTION_LIST is the repr(C) prefix of CK_FUNCTION_LIST_3_0 (same
    // fields in the same order).
    unsafe { &*(l as *const CK_FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST) }
}

/// Logs the user in with the kryoptic test PIN.
pub fn kry_login(l: &CK_FUNCTION_LIST_3_0, s: CK_SESSION_HANDLE) -> CK_RV {
    let mut pin = KRY_USER_PIN.as_bytes().to_vec();
    // SAFETY (test): valid PIN buffer.
    unsafe { (l.C_Login.expect("C_Login"))(s, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG) }
}

/// Initialises the module, opens a read-write session on its token and logs the user in.
pub fn kry_user_session(l: &CK_FUNCTION_LIST_3_0) -> CK_SESSION_HANDLE {
    assert_eq!(super::raw::initialize(as_v2(l)), CKR_OK, "C_Initialize");
    let s = super::raw::open_rw(as_v2(l));
    assert_eq!(kry_login(l, s), CKR_OK, "C_Login");
    s
}

fn ulong_bytes(v: &CK_ULONG) -> (CK_VOID_PTR, CK_ULONG) {
    (
        v as *const CK_ULONG as CK_VOID_PTR,
        std::mem::size_of::<CK_ULONG>() as CK_ULONG,
    )
}

/// Generates an AES-256 session key (encrypt/decrypt) labelled `label`.
pub fn kry_aes_key(
    l: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    label: &str,
) -> CK_OBJECT_HANDLE {
    let class: CK_ULONG = CKO_SECRET_KEY;
    let key_type: CK_ULONG = CKK_AES;
    let len: CK_ULONG = 32;
    let yes: CK_BBOOL = CK_TRUE;
    let no: CK_BBOOL = CK_FALSE;
    let attr = |t: CK_ATTRIBUTE_TYPE, (p, n): (CK_VOID_PTR, CK_ULONG)| CK_ATTRIBUTE {
        type_: t,
        pValue: p,
        ulValueLen: n,
    };
    let flag = |b: &CK_BBOOL| (b as *const CK_BBOOL as CK_VOID_PTR, 1);
    let mut template = [
        attr(CKA_CLASS, ulong_bytes(&class)),
        attr(CKA_KEY_TYPE, ulong_bytes(&key_type)),
        attr(CKA_VALUE_LEN, ulong_bytes(&len)),
        attr(CKA_TOKEN, flag(&no)),
        attr(CKA_ENCRYPT, flag(&yes)),
        attr(CKA_DECRYPT, flag(&yes)),
        attr(
            CKA_LABEL,
            (label.as_ptr() as CK_VOID_PTR, label.len() as CK_ULONG),
        ),
    ];
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_AES_KEY_GEN,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut key: CK_OBJECT_HANDLE = 0;
    // SAFETY (test): the template's pointers outlive the call; valid out-pointer.
    let rv = unsafe {
        (l.C_GenerateKey.expect("C_GenerateKey"))(
            s,
            &mut mechanism,
            template.as_mut_ptr(),
            template.len() as CK_ULONG,
            &mut key,
        )
    };
    assert_eq!(rv, CKR_OK, "C_GenerateKey AES");
    key
}

/// An attribute's value (panics unless CKR_OK).
pub fn kry_attribute(
    l: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    t: CK_ATTRIBUTE_TYPE,
) -> Vec<u8> {
    let get = l.C_GetAttributeValue.expect("C_GetAttributeValue");
    let mut a = CK_ATTRIBUTE {
        type_: t,
        pValue: std::ptr::null_mut(),
        ulValueLen: 0,
    };
    // SAFETY (test): size query.
    assert_eq!(
        unsafe { get(s, object, &mut a, 1) },
        CKR_OK,
        "size of 0x{t:x}"
    );
    let mut v = vec![0u8; a.ulValueLen as usize];
    a.pValue = v.as_mut_ptr() as CK_VOID_PTR;
    // SAFETY (test): room for ulValueLen bytes.
    assert_eq!(
        unsafe { get(s, object, &mut a, 1) },
        CKR_OK,
        "value of 0x{t:x}"
    );
    v.truncate(a.ulValueLen as usize);
    v
}

/// The path of the built `keytrail` CLI next to `libkeytrail.so`.
pub fn keytrail_bin() -> PathBuf {
    let bin = super::keytrail_module()
        .parent()
        .expect("target dir")
        .join("keytrail");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}
