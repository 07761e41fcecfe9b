//! Safe views of the application's arguments, for the audit path.
//!
//! Every view is made by an `unsafe` constructor whose caller promises what the real
//! module has just proved: it accepted the call (so the pointers were valid for it). The
//! views then read only within the lengths the application gave, and never outlive the
//! exported call. This is the one place where keytrail reads application memory.

use cryptoki_sys::*;
use std::marker::PhantomData;

/// An attribute template (`CK_ATTRIBUTE` array) the module has accepted or filled.
#[derive(Clone, Copy)]
pub struct Template<'a> {
    attrs: &'a [CK_ATTRIBUTE],
}

impl<'a> Template<'a> {
    /// An empty template.
    pub fn empty() -> Template<'static> {
        Template { attrs: &[] }
    }

    /// # Safety
    /// `ptr` is NULL or points to `count` attributes, each of whose `pValue` is NULL or
    /// valid for `ulValueLen` bytes (unless `ulValueLen` is `CK_UNAVAILABLE_INFORMATION`),
    /// for the lifetime `'a`.
    pub unsafe fn new(ptr: *const CK_ATTRIBUTE, count: CK_ULONG) -> Template<'a> {
        if ptr.is_null() || count == 0 {
            return Template { attrs: &[] };
        }
        // SAFETY: the caller guarantees `count` attributes at `ptr`.
        let attrs = unsafe { std::slice::from_raw_parts(ptr, count as usize) };
        Template { attrs }
    }

    /// The attributes.
    pub fn iter(&self) -> impl Iterator<Item = Attribute<'a>> + 'a {
        self.attrs.iter().map(|raw| Attribute {
            raw,
            _life: PhantomData,
        })
    }

    /// The first attribute of a type.
    pub fn find(&self, type_: CK_ATTRIBUTE_TYPE) -> Option<Attribute<'a>> {
        self.iter().find(|a| a.type_() == type_)
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    /// Whether the template has no attributes.
    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }
}

/// One attribute of a [`Template`].
#[derive(Clone, Copy)]
pub struct Attribute<'a> {
    raw: &'a CK_ATTRIBUTE,
    _life: PhantomData<&'a [u8]>,
}

impl<'a> Attribute<'a> {
    /// The attribute type.
    pub fn type_(&self) -> CK_ATTRIBUTE_TYPE {
        self.raw.type_
    }

    /// Whether this entry only asks for the value's length (`pValue` NULL).
    pub fn is_size_query(&self) -> bool {
        self.raw.pValue.is_null()
    }

    /// The value bytes, when there are any (`pValue` non-NULL and the length available).
    pub fn bytes(&self) -> Option<&'a [u8]> {
        if self.raw.pValue.is_null() || self.raw.ulValueLen == CK_UNAVAILABLE_INFORMATION {
            return None;
        }
        // SAFETY: the template's constructor guarantees pValue valid for ulValueLen bytes.
        Some(unsafe {
            std::slice::from_raw_parts(self.raw.pValue as *const u8, self.raw.ulValueLen as usize)
        })
    }

    /// The value as a CK_ULONG, when it is exactly one.
    pub fn ulong(&self) -> Option<CK_ULONG> {
        let b = self.bytes()?;
        let arr: [u8; std::mem::size_of::<CK_ULONG>()] = b.try_into().ok()?;
        Some(CK_ULONG::from_ne_bytes(arr))
    }

    /// The value as a CK_BBOOL.
    pub fn bool(&self) -> Option<bool> {
        match self.bytes()? {
            [b] => Some(*b != 0),
            _ => None,
        }
    }

    /// A nested template (CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE).
    pub fn nested(&self) -> Option<Template<'a>> {
        let size = std::mem::size_of::<CK_ATTRIBUTE>() as CK_ULONG;
        if self.raw.pValue.is_null()
            || self.raw.ulValueLen == CK_UNAVAILABLE_INFORMATION
            || self.raw.ulValueLen % size != 0
            || (self.raw.pValue as usize) % std::mem::align_of::<CK_ATTRIBUTE>() != 0
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
#[derive(Clone, Copy)]
pub struct Mechanism<'a> {
    raw: &'a CK_MECHANISM,
}

impl<'a> Mechanism<'a> {
    /// # Safety
    /// `ptr` is NULL or points to a `CK_MECHANISM` whose `pParameter` is NULL or valid
    /// for `ulParameterLen` bytes, for `'a`.
    pub unsafe fn new(ptr: *const CK_MECHANISM) -> Option<Mechanism<'a>> {
        // SAFETY: the caller guarantees ptr is NULL or valid.
        unsafe { ptr.as_ref() }.map(|raw| Mechanism { raw })
    }

    /// The mechanism type.
    pub fn type_(&self) -> CK_MECHANISM_TYPE {
        self.raw.mechanism
    }

    /// The parameter length.
    pub fn parameter_len(&self) -> CK_ULONG {
        self.raw.ulParameterLen
    }

    /// The parameter as a `T`, when its length is exactly `T`'s size.
    fn parameter<T: Copy>(&self) -> Option<T> {
        if self.raw.pParameter.is_null()
            || self.raw.ulParameterLen as usize != std::mem::size_of::<T>()
        {
            return None;
        }
        // SAFETY: pParameter is valid for ulParameterLen bytes, which is T's size; the
        // read is unaligned-safe.
        Some(unsafe { std::ptr::read_unaligned(self.raw.pParameter as *const T) })
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

/// Reads a CK_ULONG the module wrote.
///
/// # Safety
/// `ptr` is NULL or valid for reading a CK_ULONG.
pub unsafe fn read_ulong(ptr: *const CK_ULONG) -> Option<CK_ULONG> {
    // SAFETY: the caller guarantees ptr is NULL or valid.
    unsafe { ptr.as_ref() }.copied()
}

/// Reads a string argument of a given length (a user name), lossily.
///
/// # Safety
/// `ptr` is NULL or valid for `len` bytes.
pub unsafe fn read_text(ptr: *const CK_UTF8CHAR, len: CK_ULONG) -> Option<String> {
    if ptr.is_null() {
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
    // SAFETY: the caller guarantees ptr is NULL or a valid CK_C_INITIALIZE_ARGS.
    unsafe { (ptr as *const CK_C_INITIALIZE_ARGS).as_ref() }.map_or(0, |a| a.flags)
}
