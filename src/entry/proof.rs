//! What a module's answer proves it read of the application's arguments — and so what
//! keytrail may read after it (docs/events.md, "What keytrail reads of a call").
//!
//! A failure code proves only that the module read what it needed to fail, and success
//! not always everything either. SoftHSM2, for one, stops at the first attribute of a
//! template it rejects, skips the class, key type, token and private flags of a generation
//! template unless their length is right, answers C_FindObjectsInit without touching a
//! value that no object could match, and generates an AES key from a `CK_MECHANISM` of
//! which it reads only the type. So:
//!
//! - A template is read only after CKR_OK, and then a fixed-size value (CK_ULONG,
//!   CK_BBOOL) only when its length is exactly that size. After any other answer the
//!   record carries the number of attributes the application passed, and nothing of them.
//! - C_FindObjectsInit's template is never read: not even CKR_OK proves its values were.
//! - C_GetAttributeValue's values are read only after CKR_OK; after the answers that say
//!   some were returned ([`some_attributes_returned`]), the types and lengths alone.
//! - A mechanism's type is read after CKR_OK and after an answer that rejects the
//!   mechanism itself ([`mechanism_type_read`]); its parameter only after CKR_OK, and only
//!   when the mechanism cannot work without one.

use super::args;
use crate::audit::mechanism::Mechanism;
use cryptoki_sys::*;

/// Whether the answer proves the module read the whole template it was given.
pub fn template_read(rv: CK_RV) -> bool {
    rv == CKR_OK
}

/// Whether the answer proves the module read the mechanism's type: each of these codes
/// says the mechanism (or its parameter, or the key's fit with it) is wrong, which no
/// module can decide without the type. The parameter itself may be unreadable: that may
/// be why it is invalid.
pub fn mechanism_type_read(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_MECHANISM_INVALID | CKR_MECHANISM_PARAM_INVALID | CKR_KEY_TYPE_INCONSISTENT
    )
}

/// Whether a C_GetAttributeValue answer may have returned values of some attributes
/// without saying which: PKCS#11 processes every attribute before answering one of
/// these, but a module may stop at the first failure (SoftHSM2 does), leaving the rest
/// of the template as the application passed it.
pub fn some_attributes_returned(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_ATTRIBUTE_TYPE_INVALID | CKR_BUFFER_TOO_SMALL | CKR_ATTRIBUTE_SENSITIVE
    )
}

/// The mechanism of a call, as far as the answer proves it readable: after CKR_OK its
/// type and, when it takes one, its parameter; its type alone after
/// [`mechanism_type_read`]; nothing otherwise.
pub fn mechanism(rv: CK_RV, ptr: CK_MECHANISM_PTR) -> Option<Mechanism> {
    if rv == CKR_OK {
        // SAFETY: the module accepted the mechanism: it read the type, and the parameter
        // of a mechanism that cannot work without one.
        unsafe { args::Mechanism::new(ptr) }.map(|m| Mechanism::from_raw(&m))
    } else if mechanism_type_read(rv) {
        // SAFETY: the module read the type to reject it (or ptr is NULL).
        unsafe { args::mechanism_type(ptr) }.map(Mechanism::bare)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_type_is_read_after_a_rejected_mechanism() {
        // A CK_MECHANISM cut short after its type: its parameter fields are not there.
        let type_only: [CK_MECHANISM_TYPE; 1] = [CKM_AES_GCM];
        let ptr = type_only.as_ptr() as CK_MECHANISM_PTR;
        for rv in [
            CKR_MECHANISM_INVALID,
            CKR_MECHANISM_PARAM_INVALID,
            CKR_KEY_TYPE_INCONSISTENT,
        ] {
            assert_eq!(mechanism(rv, ptr), Some(Mechanism::bare(CKM_AES_GCM)));
        }
        for rv in [
            CKR_SESSION_HANDLE_INVALID,
            CKR_ARGUMENTS_BAD,
            CKR_KEY_HANDLE_INVALID,
        ] {
            assert_eq!(mechanism(rv, ptr), None, "{rv:#x}");
        }
        assert_eq!(mechanism(CKR_MECHANISM_INVALID, std::ptr::null_mut()), None);
    }
}
