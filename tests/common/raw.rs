//! Raw C ABI access: a module's exported symbols and function table, without the cryptoki
//! crate's checks in the way.

use cryptoki_sys::*;
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::path::Path;

/// A loaded module, kept loaded for the rest of the process.
pub struct Raw {
    pub lib: &'static Library,
}

impl Raw {
    /// dlopens `path` (the same handle as any other load of that path in this process).
    pub fn load(path: &Path) -> Raw {
        // SAFETY (test): loading a PKCS#11 module runs its initialisers, as any user would.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
            .unwrap_or_else(|e| panic!("dlopen {}: {e}", path.display()));
        Raw {
            lib: Box::leak(Box::new(lib)),
        }
    }

    /// An exported symbol, or None if it is not exported.
    pub fn sym<T: Copy>(&self, name: &str) -> Option<T> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        // SAFETY (test): the caller names the symbol's PKCS#11 type.
        unsafe { self.lib.get::<T>(&n) }.ok().map(|s| *s)
    }

    pub fn get_function_list_fn(&self) -> unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
        self.sym("C_GetFunctionList").expect("C_GetFunctionList")
    }

    /// The module's 2.40 table from its `C_GetFunctionList`.
    pub fn list(&self) -> &'static CK_FUNCTION_LIST {
        let mut p: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        // SAFETY (test): a valid out-pointer.
        let rv = unsafe { (self.get_function_list_fn())(&mut p) };
        assert_eq!(rv, CKR_OK, "C_GetFunctionList");
        assert!(!p.is_null());
        // SAFETY (test): the module's table lives as long as the (never unloaded) module.
        unsafe { &*p }
    }
}

/// `C_Initialize` with OS locking.
pub fn init_args() -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    }
}

pub fn initialize(l: &CK_FUNCTION_LIST) -> CK_RV {
    let mut args = init_args();
    // SAFETY (test): valid args.
    unsafe { (l.C_Initialize.expect("C_Initialize"))(&mut args as *mut _ as CK_VOID_PTR) }
}

pub fn finalize(l: &CK_FUNCTION_LIST) -> CK_RV {
    // SAFETY (test): NULL reserved, as required.
    unsafe { (l.C_Finalize.expect("C_Finalize"))(std::ptr::null_mut()) }
}

/// The slots with a token.
pub fn slots(l: &CK_FUNCTION_LIST) -> Vec<CK_SLOT_ID> {
    let f = l.C_GetSlotList.expect("C_GetSlotList");
    let mut n: CK_ULONG = 0;
    // SAFETY (test): size query.
    assert_eq!(unsafe { f(CK_TRUE, std::ptr::null_mut(), &mut n) }, CKR_OK);
    let mut v = vec![0; n as usize];
    // SAFETY (test): room for n.
    assert_eq!(unsafe { f(CK_TRUE, v.as_mut_ptr(), &mut n) }, CKR_OK);
    v.truncate(n as usize);
    v
}

/// Opens a read-write session on the first token.
pub fn open_rw(l: &CK_FUNCTION_LIST) -> CK_SESSION_HANDLE {
    let slot = slots(l)[0];
    let mut h: CK_SESSION_HANDLE = 0;
    // SAFETY (test): valid out-pointer.
    let rv = unsafe {
        (l.C_OpenSession.expect("C_OpenSession"))(
            slot,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            std::ptr::null_mut(),
            None,
            &mut h,
        )
    };
    assert_eq!(rv, CKR_OK, "C_OpenSession");
    h
}

/// Logs the user in with the test PIN.
pub fn login(l: &CK_FUNCTION_LIST, s: CK_SESSION_HANDLE) -> CK_RV {
    let mut pin = super::USER_PIN.as_bytes().to_vec();
    // SAFETY (test): valid PIN buffer.
    unsafe { (l.C_Login.expect("C_Login"))(s, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG) }
}
