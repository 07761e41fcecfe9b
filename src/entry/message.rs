//! Message-based functions (PKCS#11 3.0 §5.19–5.22). Offered only when the real module
//! has a 3.0 interface; otherwise the exported symbols answer
//! `CKR_FUNCTION_NOT_SUPPORTED`. Audited: lifecycle `use`, one record per operation from
//! C_Message*Init to C_Message*Final, counting messages and bytes.

use super::ops::{self, Ending};
use crate::audit::sessions::OpKind;
use crate::backend::Backend;
use cryptoki_sys::*;

forward! {
    fn C_MessageEncryptInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => message_encrypt_init;
    fn C_EncryptMessage(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, aad: CK_BYTE_PTR, aad_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => encrypt_message;
    fn C_EncryptMessageBegin(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, aad: CK_BYTE_PTR, aad_len: CK_ULONG);
    fn C_EncryptMessageNext(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR, flags: CK_FLAGS) => encrypt_message_next;
    fn C_MessageEncryptFinal(session: CK_SESSION_HANDLE) => message_encrypt_final;

    fn C_MessageDecryptInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => message_decrypt_init;
    fn C_DecryptMessage(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, aad: CK_BYTE_PTR, aad_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => decrypt_message;
    fn C_DecryptMessageBegin(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, aad: CK_BYTE_PTR, aad_len: CK_ULONG);
    fn C_DecryptMessageNext(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR, flags: CK_FLAGS) => decrypt_message_next;
    fn C_MessageDecryptFinal(session: CK_SESSION_HANDLE) => message_decrypt_final;

    fn C_MessageSignInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => message_sign_init;
    fn C_SignMessage(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR) => sign_message;
    fn C_SignMessageBegin(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG);
    fn C_SignMessageNext(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR) => sign_message_next;
    fn C_MessageSignFinal(session: CK_SESSION_HANDLE) => message_sign_final;

    fn C_MessageVerifyInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => message_verify_init;
    fn C_VerifyMessage(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG) => verify_message;
    fn C_VerifyMessageBegin(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG);
    fn C_VerifyMessageNext(session: CK_SESSION_HANDLE, parameter: CK_VOID_PTR, parameter_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG) => verify_message_next;
    fn C_MessageVerifyFinal(session: CK_SESSION_HANDLE) => message_verify_final;
}

init_hooks! {
    message_encrypt_init: "C_MessageEncryptInit" => OpKind::MessageEncrypt;
    message_decrypt_init: "C_MessageDecryptInit" => OpKind::MessageDecrypt;
    message_sign_init: "C_MessageSignInit" => OpKind::MessageSign;
    message_verify_init: "C_MessageVerifyInit" => OpKind::MessageVerify;
}

/// Writes `C_Message*Final` hooks, which end the operation.
macro_rules! final_hooks {
    ($($hook:ident: $function:literal => $kind:expr;)*) => { $(
        fn $hook(_: &Backend, forward: impl FnOnce() -> CK_RV, session: CK_SESSION_HANDLE) -> CK_RV {
            ops::call($function, &[$kind], Ending::Final, forward, session, None, None)
        }
    )* };
}

final_hooks! {
    message_encrypt_final: "C_MessageEncryptFinal" => OpKind::MessageEncrypt;
    message_decrypt_final: "C_MessageDecryptFinal" => OpKind::MessageDecrypt;
    message_sign_final: "C_MessageSignFinal" => OpKind::MessageSign;
    message_verify_final: "C_MessageVerifyFinal" => OpKind::MessageVerify;
}

/// Writes hooks for one whole message: `(session, parameter, parameter_len, aad, aad_len,
/// in, in_len, out, out_len)`.
macro_rules! cipher_message_hooks {
    ($($hook:ident: $function:literal => $kind:expr;)*) => { $(
        fn $hook(
            _: &Backend,
            forward: impl FnOnce() -> CK_RV,
            session: CK_SESSION_HANDLE,
            _: CK_VOID_PTR,
            _: CK_ULONG,
            _: CK_BYTE_PTR,
            _: CK_ULONG,
            _: CK_BYTE_PTR,
            in_len: CK_ULONG,
            out: CK_BYTE_PTR,
            out_len: CK_ULONG_PTR,
        ) -> CK_RV {
            ops::call($function, &[$kind], Ending::Message, forward, session, Some(in_len), Some((out, out_len)))
        }
    )* };
}

cipher_message_hooks! {
    encrypt_message: "C_EncryptMessage" => OpKind::MessageEncrypt;
    decrypt_message: "C_DecryptMessage" => OpKind::MessageDecrypt;
}

/// Writes hooks for a message part: `(session, parameter, parameter_len, in, in_len, out,
/// out_len, flags)`.
macro_rules! cipher_next_hooks {
    ($($hook:ident: $function:literal => $kind:expr;)*) => { $(
        fn $hook(
            _: &Backend,
            forward: impl FnOnce() -> CK_RV,
            session: CK_SESSION_HANDLE,
            _: CK_VOID_PTR,
            _: CK_ULONG,
            _: CK_BYTE_PTR,
            in_len: CK_ULONG,
            out: CK_BYTE_PTR,
            out_len: CK_ULONG_PTR,
            _: CK_FLAGS,
        ) -> CK_RV {
            ops::call($function, &[$kind], Ending::Message, forward, session, Some(in_len), Some((out, out_len)))
        }
    )* };
}

cipher_next_hooks! {
    encrypt_message_next: "C_EncryptMessageNext" => OpKind::MessageEncrypt;
    decrypt_message_next: "C_DecryptMessageNext" => OpKind::MessageDecrypt;
}

/// Writes hooks for signing a message or a part: `(session, parameter, parameter_len,
/// data, data_len, signature, signature_len)`.
macro_rules! sign_message_hooks {
    ($($hook:ident: $function:literal;)*) => { $(
        fn $hook(
            _: &Backend,
            forward: impl FnOnce() -> CK_RV,
            session: CK_SESSION_HANDLE,
            _: CK_VOID_PTR,
            _: CK_ULONG,
            _: CK_BYTE_PTR,
            data_len: CK_ULONG,
            signature: CK_BYTE_PTR,
            signature_len: CK_ULONG_PTR,
        ) -> CK_RV {
            let out = Some((signature, signature_len));
            ops::call($function, &[OpKind::MessageSign], Ending::Message, forward, session, Some(data_len), out)
        }
    )* };
}

sign_message_hooks! {
    sign_message: "C_SignMessage";
    sign_message_next: "C_SignMessageNext";
}

/// Writes hooks for verifying a message or a part: `(session, parameter, parameter_len,
/// data, data_len, signature, signature_len)`.
macro_rules! verify_message_hooks {
    ($($hook:ident: $function:literal;)*) => { $(
        fn $hook(
            _: &Backend,
            forward: impl FnOnce() -> CK_RV,
            session: CK_SESSION_HANDLE,
            _: CK_VOID_PTR,
            _: CK_ULONG,
            _: CK_BYTE_PTR,
            data_len: CK_ULONG,
            _: CK_BYTE_PTR,
            _: CK_ULONG,
        ) -> CK_RV {
            ops::call($function, &[OpKind::MessageVerify], Ending::Message, forward, session, Some(data_len), None)
        }
    )* };
}

verify_message_hooks! {
    verify_message: "C_VerifyMessage";
    verify_message_next: "C_VerifyMessageNext";
}
