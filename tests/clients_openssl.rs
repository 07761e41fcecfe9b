//! OpenSSL against SoftHSM directly and through keytrail, each on a fresh token: with
//! libp11's engine (`pkeyutl -sign` and `req -x509` with `-keyform engine`, keys made by
//! pkcs11-tool), and OpenSSL 3 with pkcs11-provider (`genpkey` on the token, `pkeyutl
//! -sign`, `req -x509` with the key's URI). Signatures and certificates are checked with
//! OpenSSL's own software; then the trail: records per process, labels, `keytrail verify`,
//! `keytrail report`.

mod common;
use common::clients::*;
use common::*;

use std::process::Command;

/// 32 bytes: what `pkeyutl -sign` signs (a SHA-256 digest's length).
const DIGEST: &str = "0123456789abcdef0123456789abcdef";

fn openssl(side: &Side, conf: &str, args: &[&str]) -> Command {
    let mut c = side.command(need("openssl", "openssl"));
    c.env("OPENSSL_CONF", side.work.join(conf)).args(args);
    c
}

fn pkcs11_tool(side: &Side, args: &[&str]) -> Command {
    let mut c = side.command(need("pkcs11-tool", "opensc"));
    c.arg("--module")
        .arg(&side.module)
        .args(["--login", "--pin", USER_PIN])
        .args(args);
    c
}

/// Checks, in software, a signature over DIGEST by `key.pub` and a self-signed `cert.pem`.
fn check_signature_and_certificate(m: &Matrix, mask: &Mask) {
    let v = m.step(mask, |s| {
        let mut c = s.command("openssl");
        c.args([
            "pkeyutl", "-verify", "-pubin", "-inkey", "key.pub", "-in", "digest", "-sigfile", "sig",
        ]);
        c
    });
    assert_eq!(v.code, Some(0), "{v:?}");
    assert_eq!(v.stdout, "Signature Verified Successfully\n");
    let v = m.step(mask, |s| {
        let mut c = s.command("openssl");
        c.args(["verify", "-CAfile", "cert.pem", "cert.pem"]);
        c
    });
    assert_eq!(v.code, Some(0), "{v:?}");
    assert_eq!(v.stdout, "cert.pem: OK\n");
}

#[test]
fn openssl_with_the_libp11_engine_signs_and_makes_a_certificate() {
    let m = Matrix::new();
    let mask = Mask::standard();
    for side in [&m.direct, &m.keytrail] {
        std::fs::write(side.work.join("engine.cnf"), engine_conf(side)).expect("conf");
        std::fs::write(side.work.join("digest"), DIGEST).expect("digest");
    }
    for (kind, id, label) in [
        ("EC:prime256v1", "02", "ossl-ec"),
        ("rsa:2048", "03", "ossl-rsa"),
    ] {
        let r = m.step(&mask, |s| {
            pkcs11_tool(
                s,
                &[
                    "--keypairgen",
                    "--key-type",
                    kind,
                    "--id",
                    id,
                    "--label",
                    label,
                ],
            )
        });
        assert_eq!(r.code, Some(0), "{r:?}");
    }
    let ec = "pkcs11:token=keytrail-test;object=ossl-ec;type=private";
    let rsa = "pkcs11:token=keytrail-test;object=ossl-rsa;type=private";
    let sign = m.step(&mask, |s| {
        openssl(
            s,
            "engine.cnf",
            &[
                "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-inkey", ec, "-sign", "-in",
                "digest", "-out", "sig",
            ],
        )
    });
    assert_eq!(sign.code, Some(0), "{sign:?}");
    let req = m.step(&mask, |s| {
        openssl(
            s,
            "engine.cnf",
            &[
                "req",
                "-new",
                "-x509",
                "-engine",
                "pkcs11",
                "-keyform",
                "engine",
                "-key",
                rsa,
                "-subj",
                "/CN=keytrail-openssl",
                "-days",
                "30",
                "-sha256",
                "-out",
                "cert.pem",
            ],
        )
    });
    assert_eq!(req.code, Some(0), "{req:?}");
    let public = m.step(&mask, |s| {
        openssl(
            s,
            "engine.cnf",
            &[
                "pkey",
                "-engine",
                "pkcs11",
                "-inform",
                "engine",
                "-in",
                "pkcs11:token=keytrail-test;object=ossl-ec;type=public",
                "-pubout",
                "-out",
                "key.pub",
            ],
        )
    });
    assert_eq!(public.code, Some(0), "{public:?}");
    check_signature_and_certificate(&m, &mask);

    let trail = m.trail();
    let names: Vec<String> = processes(&trail).into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        names,
        [
            "pkcs11-tool",
            "pkcs11-tool",
            "openssl",
            "openssl",
            "openssl"
        ],
        "one stream per run that loads the module"
    );
    assert_verifies(&m.fx.trail_path(), names.len());
    assert_key_events(
        &tally_of(&trail, "pkcs11-tool"),
        &[("generate/key_pair_generate/success", 2)],
    );
    assert_key_events(&tally_of(&trail, "openssl"), &[("use/sign/success", 2)]);
    assert_eq!(labels(&trail, "use", "sign"), ["ossl-ec", "ossl-rsa"]);
    let r = report(&m.fx.trail_path());
    assert_eq!(
        report_keys(&r),
        [
            "CKO_PRIVATE_KEY ossl-ec",
            "CKO_PRIVATE_KEY ossl-rsa",
            "CKO_PUBLIC_KEY ossl-ec",
            "CKO_PUBLIC_KEY ossl-rsa"
        ]
    );
    let ec = report_key(&r, "CKO_PRIVATE_KEY", "ossl-ec");
    assert_eq!(ec["created"]["function"], "C_GenerateKeyPair");
    assert_eq!(
        uses(ec),
        [("sign / CKM_ECDSA".to_string(), 1)].into_iter().collect()
    );
    let rsa = report_key(&r, "CKO_PRIVATE_KEY", "ossl-rsa");
    assert_eq!(
        uses(rsa),
        [("sign / CKM_RSA_PKCS".to_string(), 1)]
            .into_iter()
            .collect()
    );
}

/// An EC key pair generated on the token by pkcs11-provider; key.pem gets its URI.
const GENPKEY: &[&str] = &[
    "genpkey",
    "-propquery",
    "?provider=pkcs11",
    "-algorithm",
    "EC",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-pkeyopt",
    "pkcs11_uri:pkcs11:object=prov-ec;id=%04",
    "-out",
    "key.pem",
];

/// pkcs11-provider's module, where the distribution has it.
fn pkcs11_provider() -> Option<std::path::PathBuf> {
    find_lib(&["ossl-modules/pkcs11.so"])
}

fn provider_conf(side: &Side, provider: &std::path::Path) -> String {
    // `no-deinit`: without it, SoftHSM's C_Finalize at exit runs after OpenSSL has freed
    // what SoftHSM (itself built on OpenSSL) still uses, and openssl crashes at exit, with
    // or without keytrail.
    format!(
        "openssl_conf = openssl_init\n\
         [openssl_init]\nproviders = provider_sect\n\
         [provider_sect]\ndefault = default_sect\npkcs11 = pkcs11_sect\n\
         [default_sect]\nactivate = 1\n\
         [pkcs11_sect]\nmodule = {}\npkcs11-module-path = {}\npkcs11-module-token-pin = {USER_PIN}\n\
         pkcs11-module-quirks = no-deinit\npkcs11-module-encode-provider-uri-to-pem = true\nactivate = 1\n\
         [req]\ndistinguished_name = dn\n[dn]\n",
        provider.display(),
        side.module.display()
    )
}

#[test]
fn openssl_3_with_pkcs11_provider_generates_signs_and_makes_a_certificate() {
    let Some(provider) = pkcs11_provider() else {
        eprintln!(
            "SKIPPED: pkcs11-provider is not installed (this distribution has no package for it; \
             on Debian 12 scripts/test.sh installs it from bookworm-backports)"
        );
        return;
    };
    let m = Matrix::new();
    let mask = Mask::standard();
    for side in [&m.direct, &m.keytrail] {
        std::fs::write(
            side.work.join("provider.cnf"),
            provider_conf(side, &provider),
        )
        .expect("conf");
        std::fs::write(side.work.join("digest"), DIGEST).expect("digest");
    }
    let keygen = m.step(&mask, |s| openssl(s, "provider.cnf", GENPKEY));
    assert_eq!(keygen.code, Some(0), "{keygen:?}");
    // key.pem holds the key's URI (it names the token's serial), not the key.
    for side in [&m.direct, &m.keytrail] {
        let pem = std::fs::read_to_string(side.work.join("key.pem")).expect("key.pem");
        assert!(
            pem.starts_with("-----BEGIN PKCS#11 PROVIDER URI-----"),
            "{pem}"
        );
    }
    let sign = m.step(&mask, |s| {
        openssl(
            s,
            "provider.cnf",
            &[
                "pkeyutl", "-sign", "-inkey", "key.pem", "-in", "digest", "-out", "sig",
            ],
        )
    });
    assert_eq!(sign.code, Some(0), "{sign:?}");
    let req = m.step(&mask, |s| {
        openssl(
            s,
            "provider.cnf",
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                "pkcs11:token=keytrail-test;object=prov-ec;type=private",
                "-subj",
                "/CN=keytrail-provider",
                "-days",
                "30",
                "-sha256",
                "-out",
                "cert.pem",
            ],
        )
    });
    assert_eq!(req.code, Some(0), "{req:?}");
    let public = m.step(&mask, |s| {
        openssl(
            s,
            "provider.cnf",
            &[
                "pkey",
                "-pubin",
                "-in",
                "pkcs11:token=keytrail-test;object=prov-ec;type=public",
                "-pubout",
                "-out",
                "key.pub",
            ],
        )
    });
    assert_eq!(public.code, Some(0), "{public:?}");
    let store = m.step(&mask, |s| {
        openssl(
            s,
            "provider.cnf",
            &["storeutl", "-keys", "pkcs11:token=keytrail-test"],
        )
    });
    assert_eq!(store.code, Some(0), "{store:?}");
    // The public key: storeutl does not log in, so the private key stays out of sight.
    assert!(store.stdout.ends_with("Total found: 1\n"), "{store:?}");
    check_signature_and_certificate(&m, &mask);

    let trail = m.trail();
    let procs = processes(&trail);
    assert_eq!(
        procs.len(),
        5,
        "genpkey, pkeyutl, req, pkey, storeutl: {procs:?}"
    );
    assert_verifies(&m.fx.trail_path(), procs.len());
    assert_key_events(
        &tally(&trail, procs[0].0),
        &[("generate/key_pair_generate/success", 1)],
    );
    // pkeyutl and req: pkcs11-provider copies the token key into a session object
    // (CKA_TOKEN false), signs, and destroys the copy.
    for (pid, _) in &procs[1..3] {
        assert_key_events(
            &tally(&trail, *pid),
            &[
                ("import/object_copy/success", 1),
                ("use/sign/success", 1),
                ("destroy/object_destroy/success", 1),
            ],
        );
    }
    for (pid, _) in &procs[3..] {
        assert_key_events(&tally(&trail, *pid), &[]);
    }
    for copy in trail
        .iter()
        .filter(|r| r["pkcs11"]["function"] == "C_CopyObject")
    {
        let p = &copy["pkcs11"];
        assert_eq!(p["keys"]["source"]["label"], "prov-ec", "{p:#}");
        assert_eq!(p["keys"]["source"]["token"], true, "{p:#}");
        assert_eq!(p["key"]["label"], "prov-ec", "{p:#}");
        assert_eq!(p["key"]["token"], false, "{p:#}");
    }
    for destroyed in trail
        .iter()
        .filter(|r| r["pkcs11"]["function"] == "C_DestroyObject")
    {
        assert_eq!(
            destroyed["pkcs11"]["key"]["token"], false,
            "only copies: {destroyed:#}"
        );
    }
    assert_eq!(
        labels(&trail, "generate", "key_pair_generate"),
        ["private:prov-ec", "public:prov-ec"]
    );
    assert_eq!(labels(&trail, "use", "sign"), ["prov-ec", "prov-ec"]);
    let r = report(&m.fx.trail_path());
    assert_eq!(
        report_keys(&r),
        ["CKO_PRIVATE_KEY prov-ec", "CKO_PUBLIC_KEY prov-ec"]
    );
}

/// `keytrail report` tells a token key from its session copies: the token key
/// pkcs11-provider signed with shows as generated, used twice and never destroyed (only
/// its copies were).
#[test]
fn report_tells_the_provider_s_token_key_from_its_session_copies() {
    let Some(provider) = pkcs11_provider() else {
        eprintln!("SKIPPED: pkcs11-provider is not installed");
        return;
    };
    let fx = Fixture::new();
    let side = Side::new_single(&fx);
    std::fs::write(
        side.work.join("provider.cnf"),
        provider_conf(&side, &provider),
    )
    .expect("conf");
    std::fs::write(side.work.join("digest"), DIGEST).expect("digest");
    let mask = Mask::standard();
    for args in [
        GENPKEY,
        &[
            "pkeyutl", "-sign", "-inkey", "key.pem", "-in", "digest", "-out", "sig",
        ],
        &[
            "pkeyutl", "-sign", "-inkey", "key.pem", "-in", "digest", "-out", "sig",
        ],
    ] {
        let r = side.run(openssl(&side, "provider.cnf", args), &mask);
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
    }
    let r = report(&fx.trail_path());
    let token_keys: Vec<&serde_json::Value> = r["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| {
            k["class"] == "CKO_PRIVATE_KEY" && k["created"]["function"] == "C_GenerateKeyPair"
        })
        .collect();
    assert_eq!(token_keys.len(), 1, "{:#}", r["keys"]);
    let key = token_keys[0];
    assert_eq!(key["label"], "prov-ec");
    assert_eq!(
        key["destroyed"],
        serde_json::Value::Null,
        "only copies were destroyed: {key:#}"
    );
    assert_eq!(uses(key).get("sign / CKM_ECDSA"), Some(&2), "{key:#}");
}
