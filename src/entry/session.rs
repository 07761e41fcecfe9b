//! Session management (PKCS#11 §5.6), including the 3.0 `C_SessionCancel` and
//! `C_LoginUser`.

use cryptoki_sys::*;

forward! {
    fn C_OpenSession(slot: CK_SLOT_ID, flags: CK_FLAGS, application: CK_VOID_PTR, notify: CK_NOTIFY, session: CK_SESSION_HANDLE_PTR);
    fn C_CloseSession(session: CK_SESSION_HANDLE);
    fn C_CloseAllSessions(slot: CK_SLOT_ID);
    fn C_GetSessionInfo(session: CK_SESSION_HANDLE, info: CK_SESSION_INFO_PTR);
    fn C_SessionCancel(session: CK_SESSION_HANDLE, flags: CK_FLAGS);
    fn C_GetOperationState(session: CK_SESSION_HANDLE, state: CK_BYTE_PTR, state_len: CK_ULONG_PTR);
    fn C_SetOperationState(session: CK_SESSION_HANDLE, state: CK_BYTE_PTR, state_len: CK_ULONG, encryption_key: CK_OBJECT_HANDLE, authentication_key: CK_OBJECT_HANDLE);
    fn C_Login(session: CK_SESSION_HANDLE, user_type: CK_USER_TYPE, pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG);
    fn C_LoginUser(session: CK_SESSION_HANDLE, user_type: CK_USER_TYPE, pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG, username: CK_UTF8CHAR_PTR, username_len: CK_ULONG);
    fn C_Logout(session: CK_SESSION_HANDLE);
}
