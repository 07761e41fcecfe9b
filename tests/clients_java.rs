//! Java's SunPKCS11 (the distribution's JDK) against SoftHSM directly and through keytrail,
//! each on a fresh token: `keytool -genkeypair` stores a key and its certificate on the
//! token, `keytool -list` lists it, and tests/clients/JavaFlow.java (run as a single-file
//! source program) loads the key store, signs with the stored key, generates an EC key
//! pair and an AES key, signs and verifies with SHA256withECDSA, and encrypts and decrypts
//! with AES-GCM. Then the trail: records per process, labels, `keytrail verify`,
//! `keytrail report`.

mod common;
use common::clients::*;

/// Runs the key store part: keytool -genkeypair then -list.
fn keytool_steps(m: &Matrix, mask: &Mask) {
    let keygen = m.step(mask, |s| keytool_genkeypair(s, "java-ec"));
    assert_eq!(keygen.code, Some(0), "{keygen:?}");
    let list = m.step(mask, |s| keytool(s, &["-list"]));
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(
        list.stdout.contains("Your keystore contains 1 entry"),
        "{list:?}"
    );
    assert!(
        list.stdout.contains("java-ec, PrivateKeyEntry,"),
        "{list:?}"
    );
}

const ROUNDS: u64 = 3;

#[test]
fn java_sunpkcs11_keystore_ec_signatures_and_aes_gcm() {
    let m = Matrix::new();
    let mask = Mask::standard();
    for side in [&m.direct, &m.keytrail] {
        java_configs(side);
    }
    keytool_steps(&m, &mask);
    let flow = m.step(&mask, |s| java_flow(s, ROUNDS, true));
    assert_eq!(flow.code, Some(0), "{flow:?}");
    assert_eq!(
        flow.stdout,
        format!(
            "provider: SunPKCS11-keytrail\naliases: [java-ec]\n{}generated: EC X.509\n\
             token verify: true\ngcm ciphertext bytes: 34\ngcm round trip: true\n",
            "stored key signature verifies: true\n".repeat(ROUNDS as usize)
        )
    );

    let trail = m.trail();
    let procs = processes(&trail);
    let names: Vec<&str> = procs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["keytool", "keytool", "java"]);
    assert_verifies(&m.fx.trail_path(), procs.len());
    // keytool: a session key pair, the certificate signed with it, the private key copied
    // to the token under the alias as CKA_ID, and the certificate stored.
    assert_key_events(
        &tally(&trail, procs[0].0),
        &[
            ("generate/key_pair_generate/success", 1),
            ("use/sign/success", 1),
            ("import/object_copy/success", 1),
            ("import/object_create/success", 1),
        ],
    );
    assert_key_events(&tally(&trail, procs[1].0), &[]);
    // JavaFlow: ROUNDS signatures with the stored key, one with the new key, one
    // verification, AES-GCM encrypted twice (the second with the AAD) and decrypted
    // once. SunPKCS11 also ends the operations it abandons by calling C_EncryptInit and
    // C_DecryptInit with no mechanism, which SoftHSM refuses: failures on record.
    let java = tally(&trail, procs[2].0);
    assert_key_events(
        &java,
        &[
            ("generate/key_pair_generate/success", 1),
            ("generate/key_generate/success", 1),
            ("use/sign/success", ROUNDS + 1),
            ("use/verify/success", 1),
            ("use/encrypt/success", 2),
            ("use/encrypt/failure", 2),
            ("use/decrypt/success", 1),
            ("use/decrypt/failure", 3),
        ],
    );
    for r in trail
        .iter()
        .filter(|r| r["process"]["pid"] == procs[2].0 && r["event"]["outcome"] == "failure")
    {
        let p = &r["pkcs11"];
        let cancel = p["mechanism"].is_null()
            && p["rv_name"] == "CKR_ARGUMENTS_BAD"
            && matches!(
                p["function"].as_str(),
                Some("C_EncryptInit" | "C_DecryptInit")
            );
        // The first decryption: the cipher's own first C_Decrypt after a cancel.
        let after_cancel = p["function"] == "C_Decrypt" && p["rv_name"] == "CKR_GENERAL_ERROR";
        assert!(cancel || after_cancel, "unexpected failure: {p:#}");
    }
    assert_eq!(
        labels(&trail, "generate", "key_pair_generate"),
        ["private:java-ec-gen", "public:java-ec-gen"],
        "keytool's session key pair has no label"
    );
    assert_eq!(labels(&trail, "generate", "key_generate"), ["java-aes"]);
    assert_eq!(labels(&trail, "import", "object_create"), ["java-ec"]);

    let r = report(&m.fx.trail_path());
    let keys = report_keys(&r);
    for k in [
        "CKO_CERTIFICATE java-ec",
        "CKO_PRIVATE_KEY java-ec-gen",
        "CKO_PUBLIC_KEY java-ec-gen",
        "CKO_SECRET_KEY java-aes",
    ] {
        assert!(keys.contains(&k.to_string()), "{k} in {keys:#?}");
    }
    let aes = report_key(&r, "CKO_SECRET_KEY", "java-aes");
    assert_eq!(aes["created"]["function"], "C_GenerateKey");
    assert_eq!(uses(aes).get("encrypt / CKM_AES_GCM"), Some(&2));
    assert_eq!(uses(aes).get("decrypt / CKM_AES_GCM"), Some(&1));
    // The key keytool stored: a copy of its session key, CKA_ID the alias, no label.
    let stored: Vec<&serde_json::Value> = r["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["class"] == "CKO_PRIVATE_KEY" && k["id_hex"] == "6a6176612d6563")
        .collect();
    assert_eq!(stored.len(), 1, "{:#}", r["keys"]);
    assert_eq!(
        stored[0]["created"]["function"], "C_CopyObject",
        "{:#}",
        stored[0]
    );
    assert_eq!(
        uses(stored[0]).get("sign / CKM_ECDSA"),
        Some(&ROUNDS),
        "{:#}",
        stored[0]
    );
    let ec = report_key(&r, "CKO_PRIVATE_KEY", "java-ec-gen");
    assert_eq!(
        uses(ec),
        [("sign / CKM_ECDSA".to_string(), 1)].into_iter().collect()
    );
}
