//! The real PKCS#11 module: loaded once, lazily, and never unloaded.
//!
//! The module is opened with `RTLD_NOW | RTLD_LOCAL` the first time an application calls
//! `C_Initialize`, `C_GetInterfaceList` or `C_GetInterface` — never from a library
//! constructor — and stays loaded until the process ends: modules such as SoftHSM tear
//! themselves down in atexit handlers, and unloading them first crashes the host.
//!
//! keytrail keeps its own copy of the module's function pointers and never hands out the
//! module's own structures.

use crate::config::Config;
use crate::diag;
use cryptoki_sys::*;
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The name of the standard PKCS#11 interface, NUL-terminated.
pub const INTERFACE_NAME: &[u8] = b"PKCS 11\0";

/// The loaded real module.
pub struct Backend {
    /// Every function pointer of the module. For a 2.40-only module the 3.0 entries are
    /// `None`; `version` is meaningless (keytrail's own tables carry their own).
    pub fns: CK_FUNCTION_LIST_3_0,
    /// The flags of the module's 3.0 interface, when it offers one through `C_GetInterface`.
    pub v3_flags: Option<CK_FLAGS>,
    /// The flags of the module's 2.40 interface (0 when it has no `C_GetInterface`).
    pub v2_flags: CK_FLAGS,
    /// Where the module was loaded from.
    pub path: PathBuf,
    /// The configuration in force.
    pub config: Config,
    _library: Library,
}

/// Why the real module could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The configuration is missing or invalid.
    Config(crate::config::ConfigError),
    /// The module file could not be opened as a shared library.
    Open { path: PathBuf, reason: String },
    /// The library opened but is not a usable PKCS#11 module.
    NotPkcs11 { path: PathBuf, reason: String },
    /// The module file could be changed by someone other than root and this process's
    /// user, so loading it would run their code here.
    Untrusted(crate::trust::Untrusted),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(e) => write!(f, "{e}"),
            LoadError::Open { path, reason } => write!(
                f,
                "the real PKCS#11 module {} cannot be loaded: {reason}",
                path.display()
            ),
            LoadError::NotPkcs11 { path, reason } => write!(
                f,
                "{} is not a usable PKCS#11 module: {reason}",
                path.display()
            ),
            LoadError::Untrusted(u) => write!(f, "the real PKCS#11 module {u}"),
        }
    }
}

static BACKEND: OnceLock<Backend> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// The backend if it is already loaded. This is the hot path of every forwarded call: one
/// atomic load.
#[inline]
pub fn loaded() -> Option<&'static Backend> {
    BACKEND.get()
}

/// The backend, loading it on first use. A failure is not cached: a later call retries,
/// so an operator who fixes the configuration does not have to restart a long-lived host
/// that retries `C_Initialize`.
pub fn load() -> Result<&'static Backend, LoadError> {
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    let _guard = LOADING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    let config = Config::load().map_err(LoadError::Config)?;
    diag::set_file(config.diagnostics.clone());
    if !config.env_ignored.is_empty() {
        let env = crate::config::EnvOverrides {
            ignored: config.env_ignored.clone(),
            ..Default::default()
        };
        diag::report(&format!(
            "{}; using the configuration file {}",
            env.ignored_note(),
            config.source.as_ref().map_or_else(
                || format!("{} (absent)", crate::config::DEFAULT_CONFIG_PATH),
                |p| p.display().to_string()
            )
        ));
    }
    let backend = open(config)?;
    Ok(BACKEND.get_or_init(|| backend))
}

fn open(config: Config) -> Result<Backend, LoadError> {
    let path = config.module.clone();
    let not_pkcs11 = |reason: String| LoadError::NotPkcs11 {
        path: path.clone(),
        reason,
    };
    let load_path = trusted_module(&path)?;
    // SAFETY: loading a library runs its initialisers; that is what naming it as the
    // module asks for, and only root or this process's user can have written it.
    // RTLD_LOCAL keeps its symbols from shadowing keytrail's own C_*.
    let library =
        unsafe { Library::open(Some(&load_path), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| {
            LoadError::Open {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
    // SAFETY: the symbol types are those the PKCS#11 specification gives these names.
    let get_function_list = unsafe { library.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }
        .ok()
        .and_then(|s| *s);
    // SAFETY: as above.
    let get_interface = unsafe { library.get::<CK_C_GetInterface>(b"C_GetInterface\0") }
        .ok()
        .and_then(|s| *s);

    // keytrail exports keytrail_version: a configuration naming keytrail itself, a copy or
    // another build of it would only audit keytrail's own calls.
    // SAFETY: only the symbol's presence is checked; it is never called.
    if unsafe { library.get::<*const ()>(b"keytrail_version\0") }.is_ok() {
        return Err(not_pkcs11(
            "it is keytrail itself (or a copy of it); name the real module instead".into(),
        ));
    }

    let v3 = get_interface.and_then(|gi| query_interface(gi, 3, 0));
    let v2 = get_interface.and_then(|gi| query_interface(gi, 2, 40));

    // SAFETY: CK_FUNCTION_LIST_3_0 holds a version and optional function pointers, for
    // which all-zero is valid (`None`).
    let mut fns: CK_FUNCTION_LIST_3_0 = unsafe { std::mem::zeroed() };
    if let Some((list, _)) = v3 {
        // SAFETY: the module returned this pointer for the 3.0 interface, whose layout is
        // CK_FUNCTION_LIST_3_0; we copy it and keep no reference to the module's struct.
        fns = unsafe { std::ptr::read(list as *const CK_FUNCTION_LIST_3_0) };
    } else {
        let list = match (get_function_list, v2) {
            (Some(gfl), _) => {
                let mut p: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
                // SAFETY: p is a valid out-pointer for the duration of the call.
                let rv = unsafe { gfl(&mut p) };
                if rv != CKR_OK || p.is_null() {
                    return Err(not_pkcs11(format!(
                        "its C_GetFunctionList returned {}",
                        crate::names::rv_name(rv)
                    )));
                }
                p as *const CK_FUNCTION_LIST
            }
            (None, Some((list, _))) => list as *const CK_FUNCTION_LIST,
            (None, None) => {
                return Err(not_pkcs11(
                    "it exports neither C_GetFunctionList nor C_GetInterface".into(),
                ));
            }
        };
        // SAFETY: a 2.40 list is the prefix of a 3.0 list (same fields, same order, both
        // repr(C)); we copy exactly its size into our own struct. The version field in the
        // module's table is not trusted to tell the layout, so it is never used for that.
        unsafe {
            std::ptr::copy_nonoverlapping(
                list as *const u8,
                &mut fns as *mut CK_FUNCTION_LIST_3_0 as *mut u8,
                std::mem::size_of::<CK_FUNCTION_LIST>(),
            );
        }
    }
    if fns.C_Initialize.is_none() || fns.C_Finalize.is_none() {
        return Err(not_pkcs11(
            "its function list has no C_Initialize or C_Finalize".into(),
        ));
    }
    Ok(Backend {
        fns,
        v3_flags: v3.map(|(_, f)| f),
        v2_flags: v2.map_or(0, |(_, f)| f),
        path,
        config,
        _library: library,
    })
}

/// The path to load the module from, once it has passed [`crate::trust::check`]: the
/// resolved path, so that the file checked is the file loaded. A bare name (no `/`) is
/// left to the dynamic loader's search of the system's library directories.
pub fn trusted_module(path: &Path) -> Result<PathBuf, LoadError> {
    use std::os::unix::ffi::OsStrExt;
    if !path.as_os_str().as_bytes().contains(&b'/') {
        return Ok(path.to_path_buf());
    }
    match crate::trust::check(path, crate::os::euid()) {
        Ok(resolved) => Ok(resolved),
        // Let the loader word a missing or unreadable file, as before.
        Err(crate::trust::TrustError::Io(_)) => Ok(path.to_path_buf()),
        Err(crate::trust::TrustError::Untrusted(u)) => Err(LoadError::Untrusted(u)),
    }
}

/// Asks the module's `C_GetInterface` for "PKCS 11" at one version; returns its function
/// list pointer and flags.
fn query_interface(
    get_interface: unsafe extern "C" fn(
        *mut CK_UTF8CHAR,
        *mut CK_VERSION,
        *mut *mut CK_INTERFACE,
        CK_FLAGS,
    ) -> CK_RV,
    major: u8,
    minor: u8,
) -> Option<(*mut std::ffi::c_void, CK_FLAGS)> {
    let mut version = CK_VERSION { major, minor };
    let mut iface: *mut CK_INTERFACE = std::ptr::null_mut();
    let mut name = INTERFACE_NAME.to_vec();
    // SAFETY: every pointer is valid for the call; the module only reads name and version.
    let rv = unsafe { get_interface(name.as_mut_ptr(), &mut version, &mut iface, 0) };
    if rv != CKR_OK || iface.is_null() {
        return None;
    }
    // SAFETY: on CKR_OK the module set iface to a valid CK_INTERFACE it owns.
    let found = unsafe { std::ptr::read(iface) };
    if found.pFunctionList.is_null() {
        return None;
    }
    // SAFETY: every function list starts with its CK_VERSION.
    let actual = unsafe { std::ptr::read(found.pFunctionList as *const CK_VERSION) };
    (actual.major == major && (major != 2 || actual.minor == minor))
        .then_some((found.pFunctionList, found.flags))
}

impl Backend {
    /// Reads attributes of an object through the real module, into keytrail's own
    /// buffers: `want` lists each type with the buffer size to offer. Returns each value
    /// the module supplied (types it does not know, or values too large for the buffer,
    /// come back as `None`). Used for key identity and token facts, never on behalf of the
    /// application.
    pub fn read_attributes(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        want: &[(CK_ATTRIBUTE_TYPE, usize)],
    ) -> Vec<Option<Vec<u8>>> {
        let Some(get) = self.fns.C_GetAttributeValue else {
            return vec![None; want.len()];
        };
        let mut buffers: Vec<Vec<u8>> = want.iter().map(|(_, n)| vec![0u8; *n]).collect();
        let mut template: Vec<CK_ATTRIBUTE> = want
            .iter()
            .zip(buffers.iter_mut())
            .map(|((t, _), b)| CK_ATTRIBUTE {
                type_: *t,
                pValue: b.as_mut_ptr() as *mut std::ffi::c_void,
                ulValueLen: b.len() as CK_ULONG,
            })
            .collect();
        // SAFETY: the template and its buffers are ours and outlive the call; each
        // ulValueLen is its buffer's size.
        let rv = unsafe {
            get(
                session,
                object,
                template.as_mut_ptr(),
                template.len() as CK_ULONG,
            )
        };
        if !matches!(
            rv,
            CKR_OK | CKR_ATTRIBUTE_TYPE_INVALID | CKR_ATTRIBUTE_SENSITIVE | CKR_BUFFER_TOO_SMALL
        ) {
            return vec![None; want.len()];
        }
        template
            .iter()
            .zip(buffers)
            .map(|(a, mut b)| {
                if a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen as usize > b.len() {
                    None
                } else {
                    b.truncate(a.ulValueLen as usize);
                    Some(b)
                }
            })
            .collect()
    }

    /// The label and serial number of the token in a slot.
    pub fn token_identity(&self, slot: CK_SLOT_ID) -> Option<(String, String)> {
        let get = self.fns.C_GetTokenInfo?;
        // SAFETY: CK_TOKEN_INFO is plain data; all-zero is valid.
        let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        // SAFETY: info is ours and valid for the call.
        let rv = unsafe { get(slot, &mut info) };
        (rv == CKR_OK).then(|| (padded(&info.label), padded(&info.serialNumber)))
    }

    /// The slot a session belongs to and whether it is read/write.
    pub fn session_slot(&self, session: CK_SESSION_HANDLE) -> Option<(CK_SLOT_ID, bool)> {
        let get = self.fns.C_GetSessionInfo?;
        // SAFETY: CK_SESSION_INFO is plain data; all-zero is valid.
        let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        // SAFETY: info is ours and valid for the call.
        let rv = unsafe { get(session, &mut info) };
        (rv == CKR_OK).then_some((info.slotID, info.flags & CKF_RW_SESSION != 0))
    }
}

/// A blank-padded PKCS#11 text field, trimmed.
fn padded(field: &[u8]) -> String {
    String::from_utf8_lossy(field).trim_end().to_string()
}
