//! Object management (PKCS#11 §5.7). Audited: `import` (C_CreateObject, C_CopyObject),
//! `destroy`, `modify` (C_SetAttributeValue), `export` (a C_GetAttributeValue that returns
//! secret key material), and at level `trace`, discovery (C_FindObjects*, other attribute
//! reads).

use super::keys::new_key;
use super::ops::{self, Where};
use super::proof;
use crate::audit::event::Flag;
use crate::audit::{self, attrs, event::Event, event::Started, keys::KeyIdentity};
use crate::backend::Backend;
use crate::config::Lifecycle;
use crate::entry::args::{self, Template};
use cryptoki_sys::*;

forward! {
    fn C_CreateObject(session: CK_SESSION_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, object: CK_OBJECT_HANDLE_PTR) => create_object;
    fn C_CopyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, new_object: CK_OBJECT_HANDLE_PTR) => copy_object;
    fn C_DestroyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) => destroy_object;
    fn C_GetObjectSize(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, size: CK_ULONG_PTR) => get_object_size;
    fn C_GetAttributeValue(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG) => get_attribute_value;
    fn C_SetAttributeValue(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG) => set_attribute_value;
    fn C_FindObjectsInit(session: CK_SESSION_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG) => find_objects_init;
    fn C_FindObjects(session: CK_SESSION_HANDLE, objects: CK_OBJECT_HANDLE_PTR, max_count: CK_ULONG, count: CK_ULONG_PTR) => find_objects;
    fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) => find_objects_final;
}

fn create_object(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    object: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Import) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(
        started,
        "C_CreateObject",
        "object_create",
        Lifecycle::Import,
        rv,
    );
    a.place(&mut e, session);
    let mut list = None;
    if proof::template_read(rv) {
        // SAFETY: the module accepted the template, so it read all of it.
        let t = unsafe { Template::new(template, count) };
        let class = t.agreed_ulong(CKA_CLASS);
        if t.iter()
            .any(|x| x.bytes().is_some() && attrs::is_key_material(x.type_(), class))
        {
            e.flag(Flag::PlaintextKeyMaterial);
        }
        new_key(a, &mut e, rv, session, "key", object, &t, None, None);
        list = Some(attrs::sanitize(&t, class));
    }
    e.attributes("template", count, list);
    a.emit(e);
    rv
}

fn copy_object(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    source: CK_OBJECT_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    new_object: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Import) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(
        started,
        "C_CopyObject",
        "object_copy",
        Lifecycle::Import,
        rv,
    );
    a.place(&mut e, session);
    let source_id = a.key(session, source);
    e.key("source", source, source_id.clone());
    let mut list = None;
    if proof::template_read(rv) {
        // SAFETY: the module accepted the template, so it read all of it.
        let t = unsafe { Template::new(template, count) };
        // A copy has its source's class; without it, CKA_VALUE stays redacted.
        let class = source_id.as_ref().and_then(|s| s.class_raw());
        // SAFETY: on CKR_OK the module wrote the new handle.
        if let Some(h) = unsafe { args::read_ulong(new_object) } {
            let mut stated = KeyIdentity::from_template(&t, class, None);
            if let Some(s) = &source_id {
                stated.inherit(s);
            }
            e.key("key", h, Some(a.created(session, h, stated)));
        }
        list = Some(attrs::sanitize(&t, class.or(Some(CKO_SECRET_KEY))));
    }
    e.attributes("template", count, list);
    a.emit(e);
    rv
}

fn destroy_object(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    let started = Started::now();
    // The identity must be captured before the object is gone.
    let identity = a
        .config
        .enabled(Lifecycle::Destroy)
        .then(|| a.key(session, object))
        .flatten();
    if a.config.enabled(Lifecycle::Destroy)
        && !a.on_record_first(|| {
            let mut intent = Event::call(
                started,
                "C_DestroyObject",
                "object_destroy",
                Lifecycle::Destroy,
                CKR_OK,
            );
            a.place(&mut intent, session);
            intent.key("key", object, identity.clone());
            intent
        })
    {
        return audit::REFUSED;
    }
    let rv = forward();
    if rv == CKR_OK {
        a.keys.destroyed(object);
    }
    if a.config.enabled(Lifecycle::Destroy) {
        let mut e = Event::call(
            started,
            "C_DestroyObject",
            "object_destroy",
            Lifecycle::Destroy,
            rv,
        );
        a.place(&mut e, session);
        e.key("key", object, identity);
        a.emit_from(&mut e);
    }
    rv
}

fn get_attribute_value(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    let export = a.config.enabled(Lifecycle::Export);
    let trace = a.config.enabled(Lifecycle::Discovery);
    if !export && !trace {
        return forward();
    }
    let started = Started::now();
    let rv = forward();
    let returned = rv == CKR_OK || proof::some_attributes_returned(rv);
    if !returned {
        if trace {
            let mut e = Event::call(
                started,
                "C_GetAttributeValue",
                "attribute_read",
                Lifecycle::Discovery,
                rv,
            );
            a.place(&mut e, session);
            e.key("key", object, None);
            e.attributes("read", count, None);
            a.emit(e);
        }
        return rv;
    }
    // SAFETY: after CKR_OK the module filled every attribute; after the codes of
    // `some_attributes_returned` it processed every one (PKCS#11 §5.7), setting each
    // ulValueLen, and wrote the values it returned. Values are read only after CKR_OK.
    let t = unsafe { Template::new(template, count) };
    // Only a secret attribute asked for with a buffer can be an export; whether CKA_VALUE
    // is secret depends on the object's class.
    let candidate = rv == CKR_ATTRIBUTE_SENSITIVE
        || t.iter()
            .any(|x| !x.is_size_query() && attrs::is_key_material(x.type_(), None));
    let identity = (candidate || trace)
        .then(|| a.key(session, object))
        .flatten();
    let class = identity.as_ref().and_then(|i| i.class_raw()).or_else(|| {
        // The object's class as the module just returned it.
        (rv == CKR_OK).then(|| t.agreed_ulong(CKA_CLASS)).flatten()
    });
    let value_returned =
        |x: &args::Attribute<'_>| !x.is_size_query() && x.value_len() != CK_UNAVAILABLE_INFORMATION;
    let secret_returned = t
        .iter()
        .any(|x| value_returned(&x) && attrs::is_key_material(x.type_(), class));
    let (lifecycle, action) = if secret_returned || rv == CKR_ATTRIBUTE_SENSITIVE {
        (Lifecycle::Export, "attribute_read_secret")
    } else {
        (Lifecycle::Discovery, "attribute_read")
    };
    if !a.config.enabled(lifecycle) {
        return rv;
    }
    let mut e = Event::call(started, "C_GetAttributeValue", action, lifecycle, rv);
    a.place(&mut e, session);
    e.key("key", object, identity);
    if secret_returned {
        // Known only when the class is, and the module said which values it returned.
        e.flag(if class.is_some() && rv == CKR_OK {
            Flag::SecretValueRead
        } else {
            Flag::PossibleSecretRead
        });
    }
    let list = if rv == CKR_OK {
        attrs::sanitize_read(&t, class.or(Some(CKO_SECRET_KEY)))
    } else {
        attrs::returned(&t)
    };
    e.attributes("read", count, Some(list));
    a.emit(e);
    rv
}

fn set_attribute_value(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    let Some(a) = audit::get() else {
        return forward();
    };
    let started = Started::now();
    let identity = a
        .config
        .enabled(Lifecycle::Modify)
        .then(|| a.key(session, object))
        .flatten();
    let rv = forward();
    if rv == CKR_OK {
        // The cached identity may name the old label or id.
        a.keys.destroyed(object);
    }
    if a.config.enabled(Lifecycle::Modify) {
        let mut e = Event::call(
            started,
            "C_SetAttributeValue",
            "attribute_set",
            Lifecycle::Modify,
            rv,
        );
        a.place(&mut e, session);
        let class = identity.as_ref().and_then(|i| i.class_raw());
        e.key("key", object, identity);
        let list = proof::template_read(rv).then(|| {
            // SAFETY: the module accepted the template, so it read all of it.
            let t = unsafe { Template::new(template, count) };
            attrs::sanitize(&t, class.or(Some(CKO_SECRET_KEY)))
        });
        e.attributes("set", count, list);
        a.emit(e);
    }
    rv
}

/// Discovery: the search template is never read. A module answers CKR_OK without
/// reading a value no object could match (SoftHSM2 reads none when no object has the
/// attribute), so not even success proves the values readable; the record keeps the
/// number of attributes.
fn find_objects_init(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    _: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Discovery) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(
        started,
        "C_FindObjectsInit",
        "objects_find",
        Lifecycle::Discovery,
        rv,
    );
    a.place(&mut e, session);
    e.attributes("template", count, None);
    a.emit(e);
    rv
}

fn find_objects(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    _: CK_OBJECT_HANDLE_PTR,
    max_count: CK_ULONG,
    count: CK_ULONG_PTR,
) -> CK_RV {
    let Some(a) = audit::active(Lifecycle::Discovery) else {
        return forward();
    };
    let started = Started::now();
    let rv = forward();
    let mut e = Event::call(
        started,
        "C_FindObjects",
        "objects_find",
        Lifecycle::Discovery,
        rv,
    );
    a.place(&mut e, session);
    let found = if rv == CKR_OK {
        // SAFETY: on CKR_OK the module wrote the count.
        unsafe { args::read_ulong(count) }
    } else {
        None
    };
    e.extra_mut().data = Some((Some(max_count), found));
    a.emit(e);
    rv
}

fn get_object_size(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
    _: CK_OBJECT_HANDLE,
    _: CK_ULONG_PTR,
) -> CK_RV {
    ops::discovery(
        "C_GetObjectSize",
        "object_size",
        forward,
        Where::Session(session),
    )
}

fn find_objects_final(
    _: &Backend,
    forward: impl FnOnce() -> CK_RV,
    session: CK_SESSION_HANDLE,
) -> CK_RV {
    ops::discovery(
        "C_FindObjectsFinal",
        "objects_find_final",
        forward,
        Where::Session(session),
    )
}
