//! The function tables keytrail hands out: immutable statics, each carrying the version
//! that matches its layout (never the real module's version field, which some modules
//! set wrongly).

use super::crypto::*;
use super::general::*;
use super::interface::*;
use super::keys::*;
use super::message::*;
use super::object::*;
use super::session::*;
use super::slot::*;
use cryptoki_sys::*;

/// Calls `$m!($($pre)* <every 2.40 function name, in table order>)`.
macro_rules! with_v2_functions {
    ($m:ident!($($pre:tt)*)) => {
        $m!($($pre)*
            C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList,
            C_GetSlotInfo, C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo,
            C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession, C_CloseSession,
            C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState, C_SetOperationState,
            C_Login, C_Logout, C_CreateObject, C_CopyObject, C_DestroyObject,
            C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue, C_FindObjectsInit,
            C_FindObjects, C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate,
            C_EncryptFinal, C_DecryptInit, C_Decrypt, C_DecryptUpdate, C_DecryptFinal,
            C_DigestInit, C_Digest, C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit,
            C_Sign, C_SignUpdate, C_SignFinal, C_SignRecoverInit, C_SignRecover,
            C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal, C_VerifyRecoverInit,
            C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate,
            C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair,
            C_WrapKey, C_UnwrapKey, C_DeriveKey, C_SeedRandom, C_GenerateRandom,
            C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent,
        )
    };
}

macro_rules! function_list {
    ($ty:ident, $major:literal, $minor:literal, $($name:ident),* $(,)?) => {
        $ty {
            version: CK_VERSION { major: $major, minor: $minor },
            $($name: Some($name),)*
        }
    };
}

/// The PKCS#11 2.40 table, returned by `C_GetFunctionList` and as the "PKCS 11" 2.40
/// interface.
pub static FUNCTION_LIST_2_40: CK_FUNCTION_LIST =
    with_v2_functions!(function_list!(CK_FUNCTION_LIST, 2, 40,));

/// The PKCS#11 3.0 table, offered through `C_GetInterface` only when the real module
/// offers a 3.0 interface.
pub static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = with_v2_functions!(function_list!(
    CK_FUNCTION_LIST_3_0,
    3,
    0,
    C_GetInterfaceList,
    C_GetInterface,
    C_LoginUser,
    C_SessionCancel,
    C_MessageEncryptInit,
    C_EncryptMessage,
    C_EncryptMessageBegin,
    C_EncryptMessageNext,
    C_MessageEncryptFinal,
    C_MessageDecryptInit,
    C_DecryptMessage,
    C_DecryptMessageBegin,
    C_DecryptMessageNext,
    C_MessageDecryptFinal,
    C_MessageSignInit,
    C_SignMessage,
    C_SignMessageBegin,
    C_SignMessageNext,
    C_MessageSignFinal,
    C_MessageVerifyInit,
    C_VerifyMessage,
    C_VerifyMessageBegin,
    C_VerifyMessageNext,
    C_MessageVerifyFinal,
));
