//! The HSM seal against SoftHSM2: a non-extractable token key signs checkpoint heads;
//! extractable keys, wrong PINs and missing tokens are refused with clear errors.

mod common;

use common::{Fixture, USER_PIN, open, user_session};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use keytrail::seal::{HsmSealer, SealConfig};
use keytrail::sink::chain::{Sealer, seal_message};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;

/// P-256 OID, DER-encoded.
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn config(fx: &Fixture, label: &str, pin: &str) -> SealConfig {
    let pin_file = fx.path().join(format!("pin-{pin}"));
    std::fs::write(&pin_file, format!("{pin}\n")).expect("pin file");
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    SealConfig {
        module: common::softhsm_module(),
        token_label: common::TOKEN_LABEL.into(),
        key_label: Some(label.into()),
        key_id: None,
        pin_file,
    }
}

#[test]
fn a_token_key_seals_and_extractable_keys_wrong_pins_and_missing_tokens_are_refused() {
    let fx = Fixture::new();
    let p = open(&common::softhsm_module());
    let s = user_session(&p);
    let mut keys = Vec::new();
    for (label, extractable) in [("seal", false), ("loose", true)] {
        let (public, _) = s
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::EcParams(P256.to_vec()),
                    Attribute::Token(true),
                    Attribute::Verify(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(extractable),
                    Attribute::Sign(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                ],
            )
            .expect("generate key pair");
        keys.push(public);
    }

    let mut sealer = HsmSealer::new(config(&fx, "seal", USER_PIN)).expect("sealer");
    let message = seal_message("stream", 7, Some(&[1; 32]));
    let (alg, sig) = sealer.seal(&message).expect("seal");
    assert_eq!(alg, "ecdsa-p256-sha256");
    // The token's own verification of the seal with the public half.
    let digest = Sha256::digest(&message);
    s.verify(&Mechanism::Ecdsa, keys[0], &digest, &sig)
        .expect("the seal verifies");
    assert!(
        s.verify(&Mechanism::Ecdsa, keys[0], &Sha256::digest(b"forged"), &sig)
            .is_err(),
        "a seal verifies only its own head"
    );

    // The token stops signing (here: the application is logged out, so C_Sign answers
    // CKR_USER_NOT_LOGGED_IN): the seal fails with the module's reason, which the chain
    // writes as the checkpoint's `unsealed`; the next seal logs in again and signs.
    s.logout().expect("logout");
    let err = sealer.seal(&message).expect_err("no seal while logged out");
    assert!(err.contains("C_Sign failed"), "{err}");
    let (_, again) = sealer.seal(&message).expect("the next seal retries");
    s.verify(&Mechanism::Ecdsa, keys[0], &digest, &again)
        .expect("the retried seal verifies");

    // Login state is per application: log this process out so the PIN is checked again.
    s.logout().expect("logout");
    let err = HsmSealer::new(config(&fx, "loose", USER_PIN))
        .err()
        .expect("refused");
    assert!(err.contains("CKA_EXTRACTABLE"), "{err}");
    let err = HsmSealer::new(config(&fx, "seal", "0000"))
        .err()
        .expect("refused");
    assert!(err.contains("PIN") && err.contains("wrong"), "{err}");
    let mut missing = config(&fx, "seal", USER_PIN);
    missing.token_label = "no-such-token".into();
    let err = HsmSealer::new(missing).err().expect("refused");
    assert!(err.contains("no token labelled \"no-such-token\""), "{err}");
    let loose_pin = config(&fx, "seal", USER_PIN);
    std::fs::set_permissions(&loose_pin.pin_file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let err = HsmSealer::new(loose_pin.clone()).err().expect("refused");
    assert!(err.contains("PIN file"), "{err}");
}
