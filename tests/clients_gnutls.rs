//! GnuTLS's p11tool and certtool against SoftHSM directly and through keytrail, each on a
//! fresh token: an EC key pair generated on the token, a self-signed certificate whose key
//! is a `pkcs11:` URL, the certificate written to the token, a test signature, listings,
//! and the certificate deleted. Same exit statuses and masked output on both sides; then
//! the trail: records per process, labels, `keytrail verify`, `keytrail report`.

mod common;
use common::clients::*;
use common::*;

use std::process::Command;

const TOKEN: &str = "pkcs11:token=keytrail-test";
const KEY: &str = "pkcs11:token=keytrail-test;object=gnutls-ec;type=private";

fn p11tool(side: &Side, args: &[&str]) -> Command {
    let mut c = side.command(need("p11tool", "gnutls-bin"));
    c.arg("--provider").arg(&side.module).args(args);
    c.env("GNUTLS_PIN", USER_PIN);
    c
}

fn certtool(side: &Side, args: &[&str]) -> Command {
    let mut c = side.command(need("certtool", "gnutls-bin"));
    c.arg("--provider").arg(&side.module).args(args);
    c.env("GNUTLS_PIN", USER_PIN);
    c
}

#[test]
fn p11tool_and_certtool_self_signed_certificate_with_a_pkcs11_key() {
    let m = Matrix::new();
    let mask = Mask::standard();
    for side in [&m.direct, &m.keytrail] {
        std::fs::write(
            side.work.join("cert.cfg"),
            "cn = \"keytrail gnutls\"\nserial = 1\nexpiration_days = 30\nca\ncert_signing_key\nsigning_key\n",
        )
        .expect("template");
    }

    let tokens = m.step(&mask, |s| p11tool(s, &["--list-tokens"]));
    assert_eq!(tokens.code, Some(0), "{tokens:?}");
    assert!(
        tokens.stdout.contains(
            "URL: pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=<serial>;token=keytrail-test"
        ),
        "{tokens:?}"
    );

    let keygen = m.step(&mask, |s| {
        p11tool(
            s,
            &[
                "--login",
                "--generate-privkey",
                "ECDSA",
                "--curve",
                "secp256r1",
                "--label",
                "gnutls-ec",
                "--id",
                "01",
                TOKEN,
            ],
        )
    });
    assert_eq!(keygen.code, Some(0), "{keygen:?}");
    assert!(
        keygen.text().contains("<pem>"),
        "prints the public key: {keygen:?}"
    );

    let keys = m.step(&mask, |s| {
        p11tool(s, &["--login", "--list-privkeys", TOKEN])
    });
    assert_eq!(keys.code, Some(0), "{keys:?}");
    assert!(
        keys.stdout
            .contains("Type: Private key (EC/ECDSA-SECP256R1)"),
        "{keys:?}"
    );
    assert!(keys.stdout.contains("Label: gnutls-ec"), "{keys:?}");

    let cert = m.step(&mask, |s| {
        certtool(
            s,
            &[
                "--generate-self-signed",
                "--load-privkey",
                KEY,
                "--template",
                "cert.cfg",
                "--outfile",
                "cert.pem",
            ],
        )
    });
    assert_eq!(cert.code, Some(0), "{cert:?}");
    assert!(cert.stderr.contains("Signing certificate..."), "{cert:?}");

    // The certificate verifies against its own public key: the token's signature is good.
    let verify = m.step(&mask, |s| {
        let mut c = s.command(need("certtool", "gnutls-bin"));
        c.args([
            "--verify",
            "--load-ca-certificate",
            "cert.pem",
            "--infile",
            "cert.pem",
        ]);
        c
    });
    assert_eq!(verify.code, Some(0), "{verify:?}");
    assert!(
        verify
            .stdout
            .contains("Chain verification output: Verified."),
        "{verify:?}"
    );

    let write = m.step(&mask, |s| {
        p11tool(
            s,
            &[
                "--login",
                "--write",
                "--load-certificate",
                "cert.pem",
                "--label",
                "gnutls-cert",
                "--id",
                "01",
                TOKEN,
            ],
        )
    });
    assert_eq!(write.code, Some(0), "{write:?}");

    let sign = m.step(&mask, |s| {
        p11tool(
            s,
            &[
                "--login",
                "--test-sign",
                "pkcs11:token=keytrail-test;object=gnutls-ec",
            ],
        )
    });
    assert_eq!(sign.code, Some(0), "{sign:?}");
    assert!(
        sign.stderr.contains("Signing using ECDSA-SHA256... ok"),
        "{sign:?}"
    );

    let certs = m.step(&mask, |s| p11tool(s, &["--list-all-certs", TOKEN]));
    assert_eq!(certs.code, Some(0), "{certs:?}");
    assert!(certs.stdout.contains("Label: gnutls-cert"), "{certs:?}");

    let delete = m.step(&mask, |s| {
        p11tool(
            s,
            &[
                "--login",
                "--batch",
                "--delete",
                "pkcs11:token=keytrail-test;object=gnutls-cert;type=cert",
            ],
        )
    });
    assert_eq!(delete.code, Some(0), "{delete:?}");
    assert!(delete.text().contains("1 objects deleted"), "{delete:?}");

    // The trail: one stream per keytrail-side process, each verified and closed.
    let trail = m.trail();
    let procs = processes(&trail);
    let names: Vec<&str> = procs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "p11tool", "p11tool", "p11tool", "certtool", "p11tool", "p11tool", "p11tool", "p11tool"
        ],
        "one stream per run (certtool --verify loads no module)"
    );
    assert_verifies(&m.fx.trail_path(), procs.len());

    assert_key_events(&tally_of(&trail, "certtool"), &[("use/sign/success", 1)]);
    assert_key_events(
        &tally_of(&trail, "p11tool"),
        &[
            ("generate/key_pair_generate/success", 1),
            ("import/object_create/success", 1),
            ("use/sign/success", 1),
            ("destroy/object_destroy/success", 1),
            // p11tool asks for the private key's value, which the token refuses: a
            // refused read of a secret attribute is on record as an attempted export.
            ("export/attribute_read_secret/failure", 1),
        ],
    );
    // Every session a run opened is closed; the runs that log in (all but the two
    // listings that need no login) are on record with their login.
    let logs_in = [false, true, true, true, true, true, false, true];
    for ((pid, name), logs_in) in procs.iter().zip(logs_in) {
        let t = tally(&trail, *pid);
        assert_eq!(
            count(&t, "session/session_open/success"),
            count(&t, "session/session_close/success"),
            "{name} {pid}: {t:#?}"
        );
        assert_eq!(
            count(&t, "auth/login/success") > 0,
            logs_in,
            "{name} {pid}: {t:#?}"
        );
    }

    assert_eq!(
        labels(&trail, "generate", "key_pair_generate"),
        ["private:gnutls-ec", "public:gnutls-ec"]
    );
    assert_eq!(labels(&trail, "use", "sign"), ["gnutls-ec", "gnutls-ec"]);
    assert_eq!(labels(&trail, "import", "object_create"), ["gnutls-cert"]);
    assert_eq!(labels(&trail, "destroy", "object_destroy"), ["gnutls-cert"]);

    let r = report(&m.fx.trail_path());
    assert_eq!(
        report_keys(&r),
        [
            "CKO_CERTIFICATE gnutls-cert",
            "CKO_PRIVATE_KEY gnutls-ec",
            "CKO_PUBLIC_KEY gnutls-ec"
        ]
    );
    let private = report_key(&r, "CKO_PRIVATE_KEY", "gnutls-ec");
    assert_eq!(private["created"]["function"], "C_GenerateKeyPair");
    assert_eq!(
        uses(private),
        [("sign / CKM_ECDSA".to_string(), 2)].into_iter().collect()
    );
    let cert = report_key(&r, "CKO_CERTIFICATE", "gnutls-cert");
    assert_eq!(cert["created"]["function"], "C_CreateObject");
    assert_eq!(cert["destroyed"]["function"], "C_DestroyObject");
}
