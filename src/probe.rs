//! Probing a PKCS#11 module for `keytrail doctor`: load it, initialise it, list its slots
//! and tokens, finalise it. The FFI stays here, behind one safe function.

use cryptoki_sys::*;
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::path::Path;

/// What a module says about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleInfo {
    /// CK_INFO.manufacturerID.
    pub manufacturer: String,
    /// CK_INFO.libraryDescription.
    pub description: String,
    /// CK_INFO.cryptokiVersion.
    pub cryptoki_version: String,
    /// CK_INFO.libraryVersion.
    pub library_version: String,
    /// Every slot.
    pub slots: Vec<SlotInfo>,
}

/// One slot and its token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotInfo {
    /// The slot id.
    pub id: u64,
    /// CK_SLOT_INFO.slotDescription.
    pub description: String,
    /// The token, when one is present.
    pub token: Option<TokenInfo>,
}

/// A token's identity.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    /// Label.
    pub label: String,
    /// Serial number.
    pub serial: String,
    /// Model.
    pub model: String,
    /// Whether the token is initialised.
    pub initialized: bool,
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(field).trim_end().to_string()
}

/// Loads the module at `path`, calls C_Initialize, C_GetInfo, C_GetSlotList,
/// C_GetSlotInfo, C_GetTokenInfo and C_Finalize, and keeps it loaded (modules such as
/// SoftHSM must not be unloaded before exit).
pub fn probe(path: &Path) -> Result<ModuleInfo, String> {
    // The same check as the library's: never run code someone else could have written.
    let path = crate::backend::trusted_module(path).map_err(|e| e.to_string())?;
    // SAFETY: loading a library runs its initialisers; the operator named it as the
    // module, and only root or this process's user can have written it.
    let library = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) }
        .map_err(|e| format!("cannot be loaded: {e}"))?;
    // SAFETY: the symbol has the type the PKCS#11 specification gives this name.
    let gfl = unsafe { library.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }
        .ok()
        .and_then(|s| *s)
        .ok_or("it exports no C_GetFunctionList: not a PKCS#11 module")?;
    // Never unloaded: see above.
    std::mem::forget(library);
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: list is a valid out-pointer.
    let rv = unsafe { gfl(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!(
            "C_GetFunctionList returned {}",
            crate::names::rv_name(rv)
        ));
    }
    // SAFETY: on CKR_OK the module returned a valid function list that lives as long as
    // the library, which is never unloaded.
    let f = unsafe { &*list };
    let rv_err = |what: &str, rv: CK_RV| format!("{what} returned {}", crate::names::rv_name(rv));
    let init = f.C_Initialize.ok_or("no C_Initialize")?;
    // SAFETY: NULL init args are allowed by the specification.
    let rv = unsafe { init(std::ptr::null_mut()) };
    if rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED {
        return Err(rv_err("C_Initialize", rv));
    }
    let result = query(f);
    if let Some(fin) = f.C_Finalize {
        // SAFETY: NULL is the required argument.
        unsafe { fin(std::ptr::null_mut()) };
    }
    result
}

fn query(f: &CK_FUNCTION_LIST) -> Result<ModuleInfo, String> {
    let rv_err = |what: &str, rv: CK_RV| format!("{what} returned {}", crate::names::rv_name(rv));
    let get_info = f.C_GetInfo.ok_or("no C_GetInfo")?;
    // SAFETY: CK_INFO is plain data; all-zero is valid.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    // SAFETY: info is ours and valid for the call.
    let rv = unsafe { get_info(&mut info) };
    if rv != CKR_OK {
        return Err(rv_err("C_GetInfo", rv));
    }
    let get_slots = f.C_GetSlotList.ok_or("no C_GetSlotList")?;
    let mut n: CK_ULONG = 0;
    // SAFETY: NULL list asks for the count into n.
    let rv = unsafe { get_slots(CK_FALSE, std::ptr::null_mut(), &mut n) };
    if rv != CKR_OK {
        return Err(rv_err("C_GetSlotList", rv));
    }
    let mut ids: Vec<CK_SLOT_ID> = vec![0; n as usize];
    // SAFETY: ids holds n entries.
    let rv = unsafe { get_slots(CK_FALSE, ids.as_mut_ptr(), &mut n) };
    if rv != CKR_OK {
        return Err(rv_err("C_GetSlotList", rv));
    }
    ids.truncate(n as usize);
    let mut slots = Vec::new();
    for id in ids {
        // SAFETY: plain data; all-zero is valid.
        let mut si: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
        let description = match f.C_GetSlotInfo {
            // SAFETY: si is ours and valid for the call.
            Some(g) if unsafe { g(id, &mut si) } == CKR_OK => text(&si.slotDescription),
            _ => String::new(),
        };
        let mut token = None;
        if si.flags & CKF_TOKEN_PRESENT != 0 {
            // SAFETY: plain data; all-zero is valid.
            let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
            if let Some(g) = f.C_GetTokenInfo {
                // SAFETY: ti is ours and valid for the call.
                if unsafe { g(id, &mut ti) } == CKR_OK {
                    token = Some(TokenInfo {
                        label: text(&ti.label),
                        serial: text(&ti.serialNumber),
                        model: text(&ti.model),
                        initialized: ti.flags & CKF_TOKEN_INITIALIZED != 0,
                    });
                }
            }
        }
        slots.push(SlotInfo {
            id,
            description,
            token,
        });
    }
    Ok(ModuleInfo {
        manufacturer: text(&info.manufacturerID),
        description: text(&info.libraryDescription),
        cryptoki_version: format!(
            "{}.{}",
            info.cryptokiVersion.major, info.cryptokiVersion.minor
        ),
        library_version: format!(
            "{}.{}",
            info.libraryVersion.major, info.libraryVersion.minor
        ),
        slots,
    })
}
