//! Safe views of the application's arguments, for the audit path.
//!
//! Every view is made by an `unsafe` constructor whose caller promises what the real
//! module has just proved readable (src/entry/proof.rs says what each answer proves). The
//! views then read only within the lengths the application gave, a fixed-size value only
//! at its size, at any alignment, and never outlive the exported call. This is the one
//! place where keytrail reads application memory.

use cryptoki_sys::*;
use std::marker::PhantomData;

/// An attribute template (`CK_ATTRIBUTE` array) the module has accepted or filled.
///
/// Applications may pass arrays and values at any alignment (the C ABI only reads them),
/// so every entry and value is read unaligned.
#[derive(Clone, Copy)]
pub struct Template<'a> {
    ptr: *const CK_ATTRIBUTE,
    count: usize,
    _life: PhantomData<&'a [CK_ATTRIBUTE]>,
}

impl<'a> Template<'a> {
    /// An empty template.
    pub fn empty() -> Template<'static> {
        Template {
            ptr: std::ptr::null(),
            count: 0,
            _life: PhantomData,
        }
    }

    /// # Safety
    /// `ptr` is NULL or points to `count` attributes (at any alignment), each of whose
    /// `pValue` is NULL or valid for `ulValueLen` bytes (unless `ulValueLen` is
    /// `CK_UNAVAILABLE_INFORMATION`), for the lifetime `'a`. A fixed-size value (CK_ULONG,
    /// CK_BBOOL) need only be valid when `ulValueLen` is exactly its size: that is all a
    /// module reads of it.
    pub unsafe fn new(ptr: *const CK_ATTRIBUTE, count: CK_ULONG) -> Template<'a> {
        let size = std::mem::size_of::<CK_ATTRIBUTE>();
        let fits = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(size))
            .is_some_and(|bytes| bytes <= isize::MAX as usize);
        if ptr.is_null() || count == 0 || !fits {
            return Template::empty();
        }
        Template {
            ptr,
            count: count as usize,
            _life: PhantomData,
        }
    }

    /// The attributes.
    pub fn iter(&self) -> impl Iterator<Item = Attribute<'a>> + 'a {
        let (ptr, count) = (self.ptr, self.count);
        (0..count).map(move |i| Attribute {
            // SAFETY: i < count, and the constructor's caller guarantees `count` readable
            // entries at `ptr`; read_unaligned allows any alignment.
            raw: unsafe { std::ptr::read_unaligned(ptr.add(i)) },
            _life: PhantomData,
        })
    }

    /// The attributes of one type.
    pub fn all(&self, type_: CK_ATTRIBUTE_TYPE) -> impl Iterator<Item = Attribute<'a>> + 'a {
        self.iter().filter(move |a| a.type_() == type_)
    }

    /// The last attribute of a type: a module that takes a duplicated attribute takes
    /// the last (SoftHSM applies a template entry by entry).
    pub fn find(&self, type_: CK_ATTRIBUTE_TYPE) -> Option<Attribute<'a>> {
        self.all(type_).last()
    }

    /// The value of a CK_ULONG attribute when every entry of its type states the same
    /// well-formed value; `None` when it is absent, malformed or stated inconsistently
    /// (for the class and key type, which decide what may be logged).
    pub fn agreed_ulong(&self, type_: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        let mut values = self.all(type_).map(|a| a.ulong());
        let first = values.next()??;
        values.all(|v| v == Some(first)).then_some(first)
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the template has no attributes.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One attribute of a [`Template`] (a copy of the `CK_ATTRIBUTE`; its value stays in the
/// application's memory).
#[derive(Clone, Copy)]
pub struct Attribute<'a> {
    raw: CK_ATTRIBUTE,
    _life: PhantomData<&'a [u8]>,
}

impl<'a> Attribute<'a> {
    /// The attribute type.
    pub fn type_(&self) -> CK_ATTRIBUTE_TYPE {
        self.raw.type_
    }

    /// The `ulValueLen` field as it stands (`CK_UNAVAILABLE_INFORMATION` after a module
    /// could not return the value).
    pub fn value_len(&self) -> CK_ULONG {
        self.raw.ulValueLen
    }

    /// Whether this entry only asks for the value's length (`pValue` NULL).
    pub fn is_size_query(&self) -> bool {
        self.raw.pValue.is_null()
    }

    /// The value bytes, when there are any (`pValue` non-NULL and the length available).
    pub fn bytes(&self) -> Option<&'a [u8]> {
        let len = self.raw.ulValueLen;
        if self.raw.pValue.is_null()
            || len == CK_UNAVAILABLE_INFORMATION
            || len > isize::MAX as CK_ULONG
        {
            return None;
        }
        // SAFETY: the template's constructor guarantees pValue valid for ulValueLen bytes;
        // bytes have no alignment.
        Some(unsafe { std::slice::from_raw_parts(self.raw.pValue as *const u8, len as usize) })
    }

    /// Reads a fixed-size value, only when `ulValueLen` is exactly its size.
    fn fixed<T: Copy>(&self) -> Option<T> {
        if self.raw.pValue.is_null() || self.raw.ulValueLen as usize != std::mem::size_of::<T>() {
            return None;
        }
        // SAFETY: pValue is valid for ulValueLen bytes (the constructor's contract), which
        // is T's size; read_unaligned allows any alignment.
        Some(unsafe { std::ptr::read_unaligned(self.raw.pValue as *const T) })
    }

    /// The value as a CK_ULONG, when it is exactly one.
    pub fn ulong(&self) -> Option<CK_ULONG> {
        self.fixed::<CK_ULONG>()
    }

    /// The value as a CK_BBOOL, when it is exactly one.
    pub fn bool(&self) -> Option<bool> {
        self.fixed::<CK_BBOOL>().map(|b| b != 0)
    }

    /// A nested template (CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE).
    pub fn nested(&self) -> Option<Template<'a>> {
        let size = std::mem::size_of::<CK_ATTRIBUTE>() as CK_ULONG;
        if self.raw.pValue.is_null()
            || self.raw.ulValueLen == CK_UNAVAILABLE_INFORMATION
            || self.raw.ulValueLen % size != 0
        {
            return None;
        }
        // SAFETY: an array-valued attribute holds ulValueLen / sizeof(CK_ATTRIBUTE) nested
        // attributes (PKCS#11 §4.1.3), valid for as long as the outer template.
        Some(unsafe {
            Template::new(
                self.raw.pValue as *const CK_ATTRIBUTE,
                self.raw.ulValueLen / size,
            )
        })
    }
}

/// A mechanism the module has accepted.
///
/// Success proves less than the whole `CK_MECHANISM`: a module reads the parameter fields
/// only of a mechanism that needs a parameter (SoftHSM2 generates an AES key from a
/// `CK_MECHANISM` of which only the type is readable). So the type is read first, and the
/// parameter's pointer, length and contents only for a mechanism that cannot work without
/// one ([`crate::audit::mechanism::takes_parameter`]).
#[derive(Clone, Copy)]
pub struct Mechanism<'a> {
    ptr: *const CK_MECHANISM,
    type_: CK_MECHANISM_TYPE,
    _life: PhantomData<&'a [u8]>,
}

impl<'a> Mechanism<'a> {
    /// # Safety
    /// `ptr` is NULL or points to a `CK_MECHANISM` (at any alignment) whose `mechanism`
    /// field is readable; when that mechanism takes a parameter, its other fields are
    /// readable too and `pParameter` is NULL or valid for `ulParameterLen` bytes — all for
    /// `'a`. (A module that accepted the mechanism has read that much.)
    pub unsafe fn new(ptr: *const CK_MECHANISM) -> Option<Mechanism<'a>> {
        // SAFETY: the caller's contract covers the type field.
        let type_ = unsafe { mechanism_type(ptr) }?;
        Some(Mechanism {
            ptr,
            type_,
            _life: PhantomData,
        })
    }

    /// The mechanism type.
    pub fn type_(&self) -> CK_MECHANISM_TYPE {
        self.type_
    }

    /// The parameter's pointer and length, for a mechanism that takes a parameter.
    fn parameter_fields(&self) -> Option<(*const std::ffi::c_void, CK_ULONG)> {
        if !crate::audit::mechanism::takes_parameter(self.type_) {
            return None;
        }
        // SAFETY: for such a mechanism the constructor's contract covers the whole struct.
        let raw = unsafe { std::ptr::read_unaligned(self.ptr) };
        Some((
            raw.pParameter as *const std::ffi::c_void,
            raw.ulParameterLen,
        ))
    }

    /// The parameter length, for a mechanism that takes a parameter.
    pub fn parameter_len(&self) -> Option<CK_ULONG> {
        self.parameter_fields().map(|(_, len)| len)
    }

    /// The parameter as a `T`, when the mechanism takes one and its length is exactly
    /// `T`'s size.
    fn parameter<T: Copy>(&self) -> Option<T> {
        let (p, len) = self.parameter_fields()?;
        if p.is_null() || len as usize != std::mem::size_of::<T>() {
            return None;
        }
        // SAFETY: pParameter is valid for ulParameterLen bytes, which is T's size; the
        // read is unaligned-safe.
        Some(unsafe { std::ptr::read_unaligned(p as *const T) })
    }

    /// AES-GCM parameters: IV length, IV bits, AAD length, tag bits (never IV or AAD).
    pub fn gcm(&self) -> Option<CK_GCM_PARAMS> {
        self.parameter::<CK_GCM_PARAMS>()
    }

    /// RSA-OAEP parameters.
    pub fn oaep(&self) -> Option<CK_RSA_PKCS_OAEP_PARAMS> {
        self.parameter::<CK_RSA_PKCS_OAEP_PARAMS>()
    }

    /// RSA-PSS parameters.
    pub fn pss(&self) -> Option<CK_RSA_PKCS_PSS_PARAMS> {
        self.parameter::<CK_RSA_PKCS_PSS_PARAMS>()
    }

    /// ECDH derivation parameters.
    pub fn ecdh(&self) -> Option<CK_ECDH1_DERIVE_PARAMS> {
        self.parameter::<CK_ECDH1_DERIVE_PARAMS>()
    }
}

/// Reads only the `mechanism` field of a `CK_MECHANISM`: what a module has proved it read
/// when it rejects the mechanism itself (see [`super::proof::mechanism_type_read`]).
///
/// # Safety
/// `ptr` is NULL or its first `size_of::<CK_MECHANISM_TYPE>()` bytes are readable.
pub unsafe fn mechanism_type(ptr: *const CK_MECHANISM) -> Option<CK_MECHANISM_TYPE> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `mechanism` is the first field of the repr(C) struct; the caller guarantees
    // its bytes readable. Nothing past them is touched.
    Some(unsafe { std::ptr::read_unaligned(ptr as *const CK_MECHANISM_TYPE) })
}

/// Reads a CK_ULONG the module wrote.
///
/// # Safety
/// `ptr` is NULL or valid for reading a CK_ULONG (at any alignment).
pub unsafe fn read_ulong(ptr: *const CK_ULONG) -> Option<CK_ULONG> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees ptr valid; applications may pass it at any alignment.
    Some(unsafe { std::ptr::read_unaligned(ptr) })
}

/// Reads a string argument of a given length (a user name), lossily.
///
/// # Safety
/// `ptr` is NULL or valid for `len` bytes.
pub unsafe fn read_text(ptr: *const CK_UTF8CHAR, len: CK_ULONG) -> Option<String> {
    if ptr.is_null() || len > isize::MAX as CK_ULONG {
        return None;
    }
    // SAFETY: the caller guarantees ptr valid for len bytes.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Reads `CK_C_INITIALIZE_ARGS.flags` without touching anything else.
///
/// # Safety
/// `ptr` is NULL or points to a `CK_C_INITIALIZE_ARGS` the module accepted.
pub unsafe fn init_flags(ptr: *const std::ffi::c_void) -> CK_FLAGS {
    let args = ptr as *const CK_C_INITIALIZE_ARGS;
    if args.is_null() {
        return 0;
    }
    // SAFETY: the caller guarantees a valid CK_C_INITIALIZE_ARGS, at any alignment; only
    // its `flags` field is read.
    unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*args).flags)) }
}
