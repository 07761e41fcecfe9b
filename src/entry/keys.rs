//! Key management and random numbers (PKCS#11 §5.14–5.16), plus the legacy parallel
//! functions. Audited: `generate` (C_GenerateKey, C_GenerateKeyPair, C_DeriveKey),
//! `import` (C_UnwrapKey), `export` (C_WrapKey), and at level `trace`, random lengths.

use super::proof;
use crate::audit::{self, Auditor, attrs, event::Event, event::Started, keys::KeyIdentity};
use crate::backend::Backend;
use crate::config::Lifecycle;
use crate::entry::args::{self, Template};
use cryptoki_sys::*;

forward! {
    fn C_GenerateKey(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, key: CK_OBJECT_HANDLE_PTR) => generate_key;
    fn C_GenerateKeyPair(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, public_template: CK_ATTRIBUTE_PTR, public_count: CK_ULONG, private_template: CK_ATTRIBUTE_PTR, private_count: CK_ULONG, public_key: CK_OBJECT_HANDLE_PTR, private_key: CK_OBJECT_HANDLE_PTR) => generate_key_pair;
    fn C_WrapKey(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, wrapping_key: CK_OBJECT_HANDLE, key: CK_OBJECT_HANDLE, wrapped: CK_BYTE_PTR, wrapped_len: CK_ULONG_PTR) => wrap_key;
    fn C_UnwrapKey(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, unwrapping_key: CK_OBJECT_HANDLE, wrapped: CK_BYTE_PTR, wrapped_len: CK_ULONG, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, key: CK_OBJECT_HANDLE_PTR) => unwrap_key;
    fn C_DeriveKey(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, base_key: CK_OBJECT_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, key: CK_OBJECT_HANDLE_PTR) => derive_key;
    fn C_SeedRandom(session: CK_SESSION_HANDLE, seed: CK_BYTE_PTR, seed_len: CK_ULONG) => seed_random;
    fn C_GenerateRandom(session: CK_SESSION_HANDLE, out: CK_BYTE_PTR, out_len: CK_ULONG) => generate_random;
    fn C_GetFunctionStatus(session: CK_SESSION_HANDLE);
    fn C_CancelFunction(session: CK_SESSION_HANDLE);
}

/// The class and key type a key-making mechanism implies, for templates that leave them
/// out.
fn implied(
    mechanism: CK_MECHANISM_TYPE,
    class: CK_OBJECT_CLASS,
) -> (Option<CK_OBJECT_CLASS>, Option<CK_KEY_TYPE>) {
    let key_type = match mechanism {
        CKM_AES_KEY_GEN => Some(CKK_AES),
        CKM_GENERIC_SECRET_KEY_GEN => Some(CKK_GENERIC_SECRET),
        CKM_DES3_KEY_GEN => Some(CKK_DES3),
        CKM_DES2_KEY_GEN => Some(CKK_DES2),
        CKM_RSA_PKCS_KEY_PAIR_GEN | CKM_RSA_X9_31_KEY_PAIR_GEN => Some(CKK_RSA),
        CKM_EC_KEY_PAIR_GEN => Some(CKK_EC),
        CKM_EC_EDWARDS_KEY_PAIR_GEN => Some(CKK_EC_EDWARDS),
        CKM_EC_MONTGOMERY_KEY_PAIR_GEN => Some(CKK_EC_MONTGOMERY),
        CKM_DSA_KEY_PAIR_GEN => Some(CKK_DSA),
        CKM_DH_PKCS_KEY_PAIR_GEN => Some(CKK_DH),
        _ => None,
    };
    (Some(class), key_type)
}

/// Records a key the call made: reads its handle (on CKR_OK only) and its identity from
/// the template, completed with what the mechanism implies and PKCS#11's defaults.
pub(crate) fn new_key(
    a: &Auditor,
    e: &mut Event,
    rv: CK_RV,
    session: CK_SESSION_HANDLE,
    role: &'static str,
    handle: CK_OBJECT_HANDLE_PTR,
    template: &Template<'_>,
    class: Option<CK_OBJECT_CLASS>,
    key_type: Option<CK_KEY_TYPE>,
) {
    if rv != CKR_OK {
        return;
    }
    // SAFETY: on CKR_OK the module wrote the new handle.
    if let Some(h) = unsafe { args::read_ulong(handle) } {
        let mut stated = KeyIdentity::from_template(template, class, key_type);
        // CKA_TOKEN defaults to CK_FALSE: a template without it makes a session object;
        // CKA_ID and CKA_LABEL default to empty. What the template and PKCS#11's defaults
        // say is not asked of the module again.
        stated.token.get_or_insert(false);
        stated.id_hex.get_or_insert_with(String::new);
        stated.label.get_or_insert_with(String::new);
        e.key(role, h, Some(a.created(session, h, stated)));
    }
}

fn generate_key(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_PTR,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Generate) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(
        started,
        "C_GenerateKey",
        "key_generate",
        Lifecycle::Generate,
        rv,
    );
    a.place(&mut e, session);
    e.mechanism = proof::mechanism(rv, mechanism);
    let mut list = None;
    if proof::template_read(rv) {
        // SAFETY: the module accepted the template, so it read all of it.
        let t = unsafe { Template::new(template, count) };
        let (class, key_type) =
            implied(e.mechanism.as_ref().map_or(0, |m| m.type_), CKO_SECRET_KEY);
        new_key(a, &mut e, rv, session, "key", key, &t, class, key_type);
        list = Some(attrs::sanitize(&t, Some(CKO_SECRET_KEY)));
    }
    e.attributes("template", count, list);
    a.emit_from(&mut e);
    rv
}

fn generate_key_pair(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_PTR,
    public_template: CK_ATTRIBUTE_PTR,
    public_count: CK_ULONG,
    private_template: CK_ATTRIBUTE_PTR,
    private_count: CK_ULONG,
    public_key: CK_OBJECT_HANDLE_PTR,
    private_key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Generate) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(
        started,
        "C_GenerateKeyPair",
        "key_pair_generate",
        Lifecycle::Generate,
        rv,
    );
    a.place(&mut e, session);
    e.mechanism = proof::mechanism(rv, mechanism);
    let (mut public_list, mut private_list) = (None, None);
    if proof::template_read(rv) {
        let m = e.mechanism.as_ref().map_or(0, |m| m.type_);
        // SAFETY: the module accepted both templates, so it read all of them.
        let (public, private) = unsafe {
            (
                Template::new(public_template, public_count),
                Template::new(private_template, private_count),
            )
        };
        let (class, key_type) = implied(m, CKO_PUBLIC_KEY);
        new_key(
            a, &mut e, rv, session, "public", public_key, &public, class, key_type,
        );
        let (class, key_type) = implied(m, CKO_PRIVATE_KEY);
        new_key(
            a,
            &mut e,
            rv,
            session,
            "private",
            private_key,
            &private,
            class,
            key_type,
        );
        public_list = Some(attrs::sanitize(&public, Some(CKO_PUBLIC_KEY)));
        private_list = Some(attrs::sanitize(&private, Some(CKO_PRIVATE_KEY)));
    }
    e.attributes("public_template", public_count, public_list);
    e.attributes("private_template", private_count, private_list);
    a.emit(e);
    rv
}

fn wrap_key(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_PTR,
    wrapping_key: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    wrapped: CK_BYTE_PTR,
    wrapped_len: CK_ULONG_PTR,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Export) else {
        return forward();
    };
    let started = Started::now();
    if !wrapped.is_null()
        && !a.on_record_first(|| {
            let mut intent =
                Event::call(started, "C_WrapKey", "key_wrap", Lifecycle::Export, CKR_OK);
            a.place(&mut intent, session);
            intent.key("wrapping", wrapping_key, a.key(session, wrapping_key));
            intent.key("key", key, a.key(session, key));
            intent
        })
    {
        return audit::REFUSED;
    }
    let rv = forward();
    // A length query or a too-small buffer exports nothing yet; the call that does is
    // recorded.
    if rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && wrapped.is_null()) {
        return rv;
    }
    let mut e = Event::call(started, "C_WrapKey", "key_wrap", Lifecycle::Export, rv);
    a.place(&mut e, session);
    e.mechanism = proof::mechanism(rv, mechanism);
    e.key("wrapping", wrapping_key, a.key(session, wrapping_key));
    e.key("key", key, a.key(session, key));
    if rv == CKR_OK {
        // SAFETY: on CKR_OK the module wrote the wrapped length.
        e.extra_mut().data = Some((None, unsafe { args::read_ulong(wrapped_len) }));
    }
    a.emit(e);
    rv
}

fn unwrap_key(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_PTR,
    unwrapping_key: CK_OBJECT_HANDLE,
    _: CK_BYTE_PTR,
    wrapped_len: CK_ULONG,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Import) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(started, "C_UnwrapKey", "key_unwrap", Lifecycle::Import, rv);
    a.place(&mut e, session);
    e.mechanism = proof::mechanism(rv, mechanism);
    e.key("unwrapping", unwrapping_key, a.key(session, unwrapping_key));
    e.extra_mut().data = Some((Some(wrapped_len), None));
    let mut list = None;
    if proof::template_read(rv) {
        // SAFETY: the module accepted the template, so it read all of it.
        let t = unsafe { Template::new(template, count) };
        new_key(a, &mut e, rv, session, "key", key, &t, None, None);
        list = Some(attrs::sanitize(&t, None));
    }
    e.attributes("template", count, list);
    a.emit(e);
    rv
}

fn derive_key(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_PTR,
    base_key: CK_OBJECT_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Generate) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(
        started,
        "C_DeriveKey",
        "key_derive",
        Lifecycle::Generate,
        rv,
    );
    a.place(&mut e, session);
    e.mechanism = proof::mechanism(rv, mechanism);
    e.key("base", base_key, a.key(session, base_key));
    let mut list = None;
    if proof::template_read(rv) {
        // SAFETY: the module accepted the template, so it read all of it.
        let t = unsafe { Template::new(template, count) };
        new_key(
            a,
            &mut e,
            rv,
            session,
            "key",
            key,
            &t,
            Some(CKO_SECRET_KEY),
            None,
        );
        list = Some(attrs::sanitize(&t, Some(CKO_SECRET_KEY)));
    }
    e.attributes("template", count, list);
    a.emit(e);
    rv
}

/// Random numbers: only their lengths, and only at level `trace`.
fn random(
    forward: impl FnOnce() -> CK_RV,
    function: &'static str,
    action: &'static str,
    session: CK_SESSION_HANDLE,
    len: CK_ULONG,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Discovery) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(started, function, action, Lifecycle::Discovery, rv);
    a.place(&mut e, session);
    e.extra_mut().data = Some((None, Some(len)));
    a.emit(e);
    rv
}

fn seed_random(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    _: CK_BYTE_PTR,
    len: CK_ULONG,
) -> CK_RV {
    random(forward, "C_SeedRandom", "random_seed", session, len)
}

fn generate_random(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    _: CK_BYTE_PTR,
    len: CK_ULONG,
) -> CK_RV {
    random(forward, "C_GenerateRandom", "random_generate", session, len)
}
