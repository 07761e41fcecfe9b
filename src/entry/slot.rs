//! Slot and token management (PKCS#11 §5.5).

use cryptoki_sys::*;

forward! {
    fn C_GetSlotList(token_present: CK_BBOOL, slot_list: CK_SLOT_ID_PTR, count: CK_ULONG_PTR);
    fn C_GetSlotInfo(slot: CK_SLOT_ID, info: CK_SLOT_INFO_PTR);
    fn C_GetTokenInfo(slot: CK_SLOT_ID, info: CK_TOKEN_INFO_PTR);
    fn C_WaitForSlotEvent(flags: CK_FLAGS, slot: CK_SLOT_ID_PTR, reserved: CK_VOID_PTR);
    fn C_GetMechanismList(slot: CK_SLOT_ID, list: CK_MECHANISM_TYPE_PTR, count: CK_ULONG_PTR);
    fn C_GetMechanismInfo(slot: CK_SLOT_ID, mechanism: CK_MECHANISM_TYPE, info: CK_MECHANISM_INFO_PTR);
    fn C_InitToken(slot: CK_SLOT_ID, pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG, label: CK_UTF8CHAR_PTR);
    fn C_InitPIN(session: CK_SESSION_HANDLE, pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG);
    fn C_SetPIN(session: CK_SESSION_HANDLE, old_pin: CK_UTF8CHAR_PTR, old_len: CK_ULONG, new_pin: CK_UTF8CHAR_PTR, new_len: CK_ULONG);
}
