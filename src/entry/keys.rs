//! Key management and random numbers (PKCS#11 §5.14–5.16), plus the legacy parallel
//! functions.

use cryptoki_sys::*;

forward! {
    fn C_GenerateKey(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, key: CK_OBJECT_HANDLE_PTR);
    fn C_GenerateKeyPair(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, public_template: CK_ATTRIBUTE_PTR, public_count: CK_ULONG, private_template: CK_ATTRIBUTE_PTR, private_count: CK_ULONG, public_key: CK_OBJECT_HANDLE_PTR, private_key: CK_OBJECT_HANDLE_PTR);
    fn C_WrapKey(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, wrapping_key: CK_OBJECT_HANDLE, key: CK_OBJECT_HANDLE, wrapped: CK_BYTE_PTR, wrapped_len: CK_ULONG_PTR);
    fn C_UnwrapKey(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, unwrapping_key: CK_OBJECT_HANDLE, wrapped: CK_BYTE_PTR, wrapped_len: CK_ULONG, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, key: CK_OBJECT_HANDLE_PTR);
    fn C_DeriveKey(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, base_key: CK_OBJECT_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, key: CK_OBJECT_HANDLE_PTR);
    fn C_SeedRandom(session: CK_SESSION_HANDLE, seed: CK_BYTE_PTR, seed_len: CK_ULONG);
    fn C_GenerateRandom(session: CK_SESSION_HANDLE, out: CK_BYTE_PTR, out_len: CK_ULONG);
    fn C_GetFunctionStatus(session: CK_SESSION_HANDLE);
    fn C_CancelFunction(session: CK_SESSION_HANDLE);
}
