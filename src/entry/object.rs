//! Object management (PKCS#11 §5.7).

use cryptoki_sys::*;

forward! {
    fn C_CreateObject(session: CK_SESSION_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, object: CK_OBJECT_HANDLE_PTR);
    fn C_CopyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG, new_object: CK_OBJECT_HANDLE_PTR);
    fn C_DestroyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE);
    fn C_GetObjectSize(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, size: CK_ULONG_PTR);
    fn C_GetAttributeValue(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG);
    fn C_SetAttributeValue(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG);
    fn C_FindObjectsInit(session: CK_SESSION_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG);
    fn C_FindObjects(session: CK_SESSION_HANDLE, objects: CK_OBJECT_HANDLE_PTR, max_count: CK_ULONG, count: CK_ULONG_PTR);
    fn C_FindObjectsFinal(session: CK_SESSION_HANDLE);
}
