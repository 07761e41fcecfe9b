//! python-pkcs11 against SoftHSM directly and through keytrail, each on a fresh token:
//! tests/clients/python_flow.py generates an AES key and an EC key pair, encrypts and
//! decrypts with AES-GCM, signs and verifies, and destroys the AES key; a second run finds
//! the EC keys and signs again. Then the trail: records per process, labels, `keytrail
//! verify`, `keytrail report`.
//!
//! The Python comes from `KEYTRAIL_PYTHON` (scripts/test.sh makes a virtual environment
//! with python-pkcs11 from PyPI and sets it).

mod common;
use common::clients::*;

#[test]
fn python_pkcs11_keys_aes_gcm_signatures_and_destroy() {
    let m = Matrix::new();
    let mask = Mask::standard();
    let first = m.step(&mask, |s| python_flow(s, 3, true));
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(
        first.stdout,
        "library: SoftHSM Implementation of PKCS11\ntoken: keytrail-test SoftHSM v2\n\
         gcm ciphertext bytes: 36 round trip: True\nsignatures verified: 3 of 3\naes keys left: 0\n"
    );
    let again = m.step(&mask, |s| python_flow(s, 2, false));
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(
        again.stdout.ends_with("signatures verified: 2 of 2\n"),
        "{again:?}"
    );

    let trail = m.trail();
    let procs = processes(&trail);
    assert_eq!(procs.len(), 2, "{procs:?}");
    assert_verifies(&m.fx.trail_path(), 2);
    assert_key_events(
        &tally(&trail, procs[0].0),
        &[
            ("generate/key_generate/success", 1),
            ("generate/key_pair_generate/success", 1),
            ("use/encrypt/success", 1),
            ("use/decrypt/success", 1),
            ("use/sign/success", 3),
            ("use/verify/success", 3),
            ("destroy/object_destroy/success", 1),
        ],
    );
    assert_key_events(
        &tally(&trail, procs[1].0),
        &[("use/sign/success", 2), ("use/verify/success", 2)],
    );
    for (pid, _) in &procs {
        let t = tally(&trail, *pid);
        for k in [
            "session/session_open/success",
            "session/session_close/success",
            "auth/login/success",
            "auth/logout/success",
        ] {
            assert_eq!(count(&t, k), 1, "{k}: {t:#?}");
        }
    }
    assert_eq!(labels(&trail, "generate", "key_generate"), ["py-aes"]);
    assert_eq!(
        labels(&trail, "generate", "key_pair_generate"),
        ["private:py-ec", "public:py-ec"]
    );
    assert_eq!(labels(&trail, "use", "sign"), ["py-ec"; 5]);
    assert_eq!(labels(&trail, "use", "verify"), ["py-ec"; 5]);
    assert_eq!(labels(&trail, "destroy", "object_destroy"), ["py-aes"]);

    let r = report(&m.fx.trail_path());
    assert_eq!(
        report_keys(&r),
        [
            "CKO_PRIVATE_KEY py-ec",
            "CKO_PUBLIC_KEY py-ec",
            "CKO_SECRET_KEY py-aes"
        ]
    );
    let aes = report_key(&r, "CKO_SECRET_KEY", "py-aes");
    assert_eq!(aes["created"]["function"], "C_GenerateKey");
    assert_eq!(aes["destroyed"]["function"], "C_DestroyObject");
    assert_eq!(
        uses(aes),
        [
            ("decrypt / CKM_AES_GCM".to_string(), 1),
            ("encrypt / CKM_AES_GCM".to_string(), 1)
        ]
        .into_iter()
        .collect()
    );
    let private = report_key(&r, "CKO_PRIVATE_KEY", "py-ec");
    assert_eq!(private["created"]["function"], "C_GenerateKeyPair");
    assert_eq!(
        uses(private),
        [("sign / CKM_ECDSA".to_string(), 5)].into_iter().collect()
    );
}
