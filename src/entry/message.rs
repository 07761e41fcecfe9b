//! Message-based functions (PKCS#11 3.0 §5.19–5.22). Offered only when the real module
//! has a 3.0 interface; otherwise the exported symbols answer
//! `CKR_FUNCTION_NOT_SUPPORTED`.

use cryptoki_sys::*;

forward! {
    fn C_MessageEncryptInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_EncryptMessage(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, aad: CK_BYTE_PTR, aad_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_EncryptMessageBegin(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, aad: CK_BYTE_PTR, aad_len: CK_ULONG);
    fn C_EncryptMessageNext(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR, flags: CK_FLAGS);
    fn C_MessageEncryptFinal(session: CK_SESSION_HANDLE);

    fn C_MessageDecryptInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_DecryptMessage(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, aad: CK_BYTE_PTR, aad_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_DecryptMessageBegin(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, aad: CK_BYTE_PTR, aad_len: CK_ULONG);
    fn C_DecryptMessageNext(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR, flags: CK_FLAGS);
    fn C_MessageDecryptFinal(session: CK_SESSION_HANDLE);

    fn C_MessageSignInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_SignMessage(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR);
    fn C_SignMessageBegin(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG);
    fn C_SignMessageNext(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR);
    fn C_MessageSignFinal(session: CK_SESSION_HANDLE);

    fn C_MessageVerifyInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_VerifyMessage(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG);
    fn C_VerifyMessageBegin(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG);
    fn C_VerifyMessageNext(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG);
    fn C_MessageVerifyFinal(session: CK_SESSION_HANDLE);
}
