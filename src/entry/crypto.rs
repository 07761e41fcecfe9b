//! Cryptographic operations (PKCS#11 §5.8–5.13): encryption, decryption, digests,
//! signatures, verification and the dual-function updates.

use cryptoki_sys::*;

forward! {
    fn C_EncryptInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_Encrypt(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_EncryptUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_EncryptFinal(session: CK_SESSION_HANDLE, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);

    fn C_DecryptInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_Decrypt(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_DecryptUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_DecryptFinal(session: CK_SESSION_HANDLE, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);

    fn C_DigestInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR);
    fn C_Digest(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_DigestUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG);
    fn C_DigestKey(session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE);
    fn C_DigestFinal(session: CK_SESSION_HANDLE, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);

    fn C_SignInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_Sign(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR);
    fn C_SignUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG);
    fn C_SignFinal(session: CK_SESSION_HANDLE, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR);
    fn C_SignRecoverInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_SignRecover(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR);

    fn C_VerifyInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_Verify(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG);
    fn C_VerifyUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG);
    fn C_VerifyFinal(session: CK_SESSION_HANDLE, signature: CK_BYTE_PTR, signature_len: CK_ULONG);
    fn C_VerifyRecoverInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    fn C_VerifyRecover(session: CK_SESSION_HANDLE, signature: CK_BYTE_PTR, signature_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG_PTR);

    fn C_DigestEncryptUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_DecryptDigestUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_SignEncryptUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_DecryptVerifyUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
}
