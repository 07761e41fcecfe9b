//! Cryptographic operations (PKCS#11 §5.8–5.13): encryption, decryption, digests,
//! signatures, verification and the dual-function updates. Audited: lifecycle `use`,
//! one record per operation from its *Init to the call that ends it.

use super::ops::{self, Ending};
use crate::audit::{self, event::Event, event::Started, sessions::OpKind};
use crate::backend::Backend;
use crate::config::Lifecycle;
use cryptoki_sys::*;

forward! {
    fn C_EncryptInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => encrypt_init;
    fn C_Encrypt(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => encrypt;
    fn C_EncryptUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => encrypt_update;
    fn C_EncryptFinal(session: CK_SESSION_HANDLE, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => encrypt_final;

    fn C_DecryptInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => decrypt_init;
    fn C_Decrypt(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => decrypt;
    fn C_DecryptUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => decrypt_update;
    fn C_DecryptFinal(session: CK_SESSION_HANDLE, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => decrypt_final;

    fn C_DigestInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR);
    fn C_Digest(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);
    fn C_DigestUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG);
    fn C_DigestKey(session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) => digest_key;
    fn C_DigestFinal(session: CK_SESSION_HANDLE, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR);

    fn C_SignInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => sign_init;
    fn C_Sign(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR) => sign;
    fn C_SignUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG) => sign_update;
    fn C_SignFinal(session: CK_SESSION_HANDLE, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR) => sign_final;
    fn C_SignRecoverInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => sign_recover_init;
    fn C_SignRecover(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG_PTR) => sign_recover;

    fn C_VerifyInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => verify_init;
    fn C_Verify(session: CK_SESSION_HANDLE, data: CK_BYTE_PTR, data_len: CK_ULONG, signature: CK_BYTE_PTR, signature_len: CK_ULONG) => verify;
    fn C_VerifyUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG) => verify_update;
    fn C_VerifyFinal(session: CK_SESSION_HANDLE, signature: CK_BYTE_PTR, signature_len: CK_ULONG) => verify_final;
    fn C_VerifyRecoverInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) => verify_recover_init;
    fn C_VerifyRecover(session: CK_SESSION_HANDLE, signature: CK_BYTE_PTR, signature_len: CK_ULONG, data: CK_BYTE_PTR, data_len: CK_ULONG_PTR) => verify_recover;

    fn C_DigestEncryptUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => digest_encrypt_update;
    fn C_DecryptDigestUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => decrypt_digest_update;
    fn C_SignEncryptUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => sign_encrypt_update;
    fn C_DecryptVerifyUpdate(session: CK_SESSION_HANDLE, part: CK_BYTE_PTR, part_len: CK_ULONG, out: CK_BYTE_PTR, out_len: CK_ULONG_PTR) => decrypt_verify_update;
}

init_hooks! {
    encrypt_init: "C_EncryptInit" => OpKind::Encrypt;
    decrypt_init: "C_DecryptInit" => OpKind::Decrypt;
    sign_init: "C_SignInit" => OpKind::Sign;
    sign_recover_init: "C_SignRecoverInit" => OpKind::SignRecover;
    verify_init: "C_VerifyInit" => OpKind::Verify;
    verify_recover_init: "C_VerifyRecoverInit" => OpKind::VerifyRecover;
}

/// Writes hooks for calls shaped `(session, in, in_len, out, out_len)`.
macro_rules! in_out_hooks {
    ($($hook:ident: $function:literal => [$($kind:expr),+], $ending:expr;)*) => { $(
        fn $hook(
            _: &Backend,
            forward: impl FnOnce() -> CK_RV,
            session: CK_SESSION_HANDLE,
            _: CK_BYTE_PTR,
            in_len: CK_ULONG,
            out: CK_BYTE_PTR,
            out_len: CK_ULONG_PTR,
        ) -> CK_RV {
            ops::call($function, &[$($kind),+], $ending, forward, session, Some(in_len), Some((out, out_len)))
        }
    )* };
}

in_out_hooks! {
    encrypt: "C_Encrypt" => [OpKind::Encrypt], Ending::Final;
    encrypt_update: "C_EncryptUpdate" => [OpKind::Encrypt], Ending::Update;
    decrypt: "C_Decrypt" => [OpKind::Decrypt], Ending::Final;
    decrypt_update: "C_DecryptUpdate" => [OpKind::Decrypt], Ending::Update;
    sign: "C_Sign" => [OpKind::Sign], Ending::Final;
    sign_recover: "C_SignRecover" => [OpKind::SignRecover], Ending::Final;
    verify_recover: "C_VerifyRecover" => [OpKind::VerifyRecover], Ending::Final;
    digest_encrypt_update: "C_DigestEncryptUpdate" => [OpKind::Encrypt], Ending::Update;
    decrypt_digest_update: "C_DecryptDigestUpdate" => [OpKind::Decrypt], Ending::Update;
    // The dual-function updates feed two operations at once.
    sign_encrypt_update: "C_SignEncryptUpdate" => [OpKind::Sign, OpKind::Encrypt], Ending::Update;
    decrypt_verify_update: "C_DecryptVerifyUpdate" => [OpKind::Decrypt, OpKind::Verify], Ending::Update;
}

/// Writes hooks for Final calls shaped `(session, out, out_len)`.
macro_rules! final_hooks {
    ($($hook:ident: $function:literal => $kind:expr;)*) => { $(
        fn $hook(
            _: &Backend,
            forward: impl FnOnce() -> CK_RV,
            session: CK_SESSION_HANDLE,
            out: CK_BYTE_PTR,
            out_len: CK_ULONG_PTR,
        ) -> CK_RV {
            ops::call($function, &[$kind], Ending::Final, forward, session, None, Some((out, out_len)))
        }
    )* };
}

final_hooks! {
    encrypt_final: "C_EncryptFinal" => OpKind::Encrypt;
    decrypt_final: "C_DecryptFinal" => OpKind::Decrypt;
    sign_final: "C_SignFinal" => OpKind::Sign;
}

/// Writes hooks for calls shaped `(session, in, in_len)` with no output.
macro_rules! input_hooks {
    ($($hook:ident: $function:literal => $kind:expr, $ending:expr, $counts_input:expr;)*) => { $(
        fn $hook(
            _: &Backend,
            forward: impl FnOnce() -> CK_RV,
            session: CK_SESSION_HANDLE,
            _: CK_BYTE_PTR,
            len: CK_ULONG,
        ) -> CK_RV {
            ops::call($function, &[$kind], $ending, forward, session, $counts_input.then_some(len), None)
        }
    )* };
}

input_hooks! {
    sign_update: "C_SignUpdate" => OpKind::Sign, Ending::Update, true;
    verify_update: "C_VerifyUpdate" => OpKind::Verify, Ending::Update, true;
    // The signature is not input data; the operation ends here whatever the outcome.
    verify_final: "C_VerifyFinal" => OpKind::Verify, Ending::Always, false;
}

fn verify(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    _: CK_BYTE_PTR,
    data_len: CK_ULONG,
    _: CK_BYTE_PTR,
    _: CK_ULONG,
) -> CK_RV {
    ops::call(
        "C_Verify",
        &[OpKind::Verify],
        Ending::Always,
        forward,
        session,
        Some(data_len),
        None,
    )
}

/// C_DigestKey feeds a secret key into a digest: a use of that key, recorded on its own.
fn digest_key(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Use) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(started, "C_DigestKey", "digest_key", Lifecycle::Use, rv);
    a.place(&mut e, session);
    e.key("key", key, a.key(session, key));
    a.emit(e);
    rv
}
