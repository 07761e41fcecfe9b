//! Workloads shared by the tests that need a real trail of every category.

use crate::common::*;
use crate::support::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::ffi::{c_char, c_int};

/// A realistic lifecycle: an operator initialises a token and sets PINs; an application
/// tagged with a request id logs in (once with a wrong PIN), generates, imports, uses,
/// wraps, reads, relabels and destroys keys, and looks objects up.
pub fn lifecycle() {
    let p = open(&keytrail_module());
    // SAFETY: the symbol has the signature declared in include/keytrail.h; the strings are
    // NUL-terminated literals.
    unsafe {
        let lib = libloading::Library::new(keytrail_module()).expect("dlopen keytrail");
        let set = lib
            .get::<unsafe extern "C" fn(*const c_char, *const c_char) -> c_int>(
                b"keytrail_set_context\0",
            )
            .expect("keytrail_set_context");
        assert_eq!(set(c"request_id".as_ptr(), c"req-7f3a".as_ptr()), 0);
    }
    let slot = token_slot(&p);
    p.init_token(slot, &AuthPin::new(SO_PIN.into()), "payments")
        .expect("C_InitToken");
    let so = p.open_rw_session(slot).expect("session");
    so.login(UserType::So, Some(&AuthPin::new(SO_PIN.into())))
        .expect("SO login");
    so.init_pin(&AuthPin::new(USER_PIN.into()))
        .expect("C_InitPIN");
    so.logout().expect("logout");
    drop(so);

    let s_ = p.open_rw_session(slot).expect("session");
    s_.login(UserType::User, Some(&AuthPin::new("000000".into())))
        .expect_err("wrong PIN");
    s_.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");
    let kek = aes_key(&s_, "payments-kek", &[0x6b, 0x01], false);
    let data_key = aes_key(&s_, "payments-dek", &[0xd1, 0x01], true);
    let (public, private) = ec_pair(&s_, "signing", &[0x51, 0x01]);
    let imported = s_
        .create_object(&aes_import_template(
            "partner-key",
            &[0x1d, 0x01],
            &[0x42; 32],
        ))
        .expect("C_CreateObject");
    s_.encrypt_init(&Mechanism::AesCbcPad([0; 16]), data_key)
        .expect("init");
    s_.encrypt_update(&[1; 100]).expect("update");
    s_.encrypt_update(&[2; 100]).expect("update");
    s_.encrypt_final().expect("final");
    let digest = s_
        .digest(&Mechanism::Sha256, b"invoice 2026-118")
        .expect("digest");
    let sig = s_.sign(&Mechanism::Ecdsa, private, &digest).expect("sign");
    s_.verify(&Mechanism::Ecdsa, public, &digest, &sig)
        .expect("verify");
    let wrapped = s_
        .wrap_key(&Mechanism::AesKeyWrap, kek, data_key)
        .expect("wrap");
    s_.unwrap_key(
        &Mechanism::AesKeyWrap,
        kek,
        &wrapped,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Label(b"payments-dek-restored".to_vec()),
            Attribute::Encrypt(true),
        ],
    )
    .expect("unwrap");
    s_.get_attributes(imported, &[AttributeType::Value])
        .expect("read value");
    s_.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(b"payments-kek".to_vec()),
    ])
    .expect("find");
    s_.generate_random_vec(16).expect("random");
    s_.update_attributes(imported, &[Attribute::Label(b"partner-key-2026".to_vec())])
        .expect("relabel");
    s_.destroy_object(imported).expect("destroy");
    s_.logout().expect("logout");
    drop(s_);
    p.finalize().expect("finalize");
}

/// The child side of [`lifecycle_in_child`]: runs [`lifecycle`] with `service`,
/// `level = "trace"` and `[trail] format = $KEYTRAIL_WORKLOAD_FORMAT`, and copies its trail
/// to `$KEYTRAIL_WORKLOAD_TRAIL`.
pub fn lifecycle_child() {
    let format = std::env::var("KEYTRAIL_WORKLOAD_FORMAT").expect("KEYTRAIL_WORKLOAD_FORMAT");
    let dest = std::env::var_os("KEYTRAIL_WORKLOAD_TRAIL").expect("KEYTRAIL_WORKLOAD_TRAIL");
    let fx = Fixture::new();
    configure(&fx, "service = \"payments-api\"", "level = \"trace\"");
    set_format(&fx, &format);
    lifecycle();
    std::fs::copy(fx.trail_path(), dest).expect("copy the trail");
}

/// Runs [`lifecycle`] in a child process (keytrail reads its configuration once per
/// process) with `[trail] format = FORMAT`: the child is the ignored test `test` of this
/// test binary, which calls [`lifecycle_child`]. Returns the trail, copied into `dir`.
pub fn lifecycle_in_child(test: &str, format: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let dest = dir.join(format!("{format}.jsonl"));
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--ignored", "--nocapture"])
        .env("KEYTRAIL_WORKLOAD_FORMAT", format)
        .env("KEYTRAIL_WORKLOAD_TRAIL", &dest)
        .output()
        .expect("run the workload");
    assert!(
        out.status.success(),
        "{format} workload: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dest
}
