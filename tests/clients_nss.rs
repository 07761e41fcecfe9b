//! NSS's tools against SoftHSM directly and through keytrail, each on a fresh token and a
//! fresh NSS database: `modutil -add` registers the module, `certutil -R` makes a
//! certificate request and `certutil -S` a self-signed certificate, both with keys
//! generated on the token, `certutil -K` and `-L` list them. Then the trail: records per
//! process, `keytrail verify`, `keytrail report`.

mod common;
use common::clients::*;
use common::*;

use std::process::Command;

const TOKEN: &str = "keytrail-test";

/// `certutil -S`: a self-signed CA certificate, serial 7, with an EC key made for it.
const SELF_SIGNED: &[&str] = &[
    "-S",
    "-n",
    "nss-ca",
    "-s",
    "CN=keytrail-nss",
    "-x",
    "-t",
    "CT,,",
    "-k",
    "ec",
    "-q",
    "nistp256",
    "-v",
    "1",
    "-m",
    "7",
];

fn certutil(side: &Side, args: &[&str]) -> Command {
    let mut c = side.command(need("certutil", "libnss3-tools"));
    c.args(["-d", "sql:db"]).args(args);
    c
}

/// `modutil -add NAME` of the side's module to the NSS database in `db`.
fn modutil_add(side: &Side, name: &str) -> Command {
    let mut c = side.command(need("modutil", "libnss3-tools"));
    c.args(["-force", "-dbdir", "sql:db", "-add", name, "-libfile"])
        .arg(&side.module);
    c
}

/// The token's listings, whose order follows SoftHSM's file names (random): lines sorted,
/// `certutil -K`'s running index masked.
fn sorted_lines(text: &str) -> String {
    let index = regex::Regex::new(r"^< *\d+> ").expect("pattern");
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| index.replace(l, "<n> ").into_owned())
        .collect();
    lines.sort();
    lines.join("\n")
}

/// Sets up both sides: a fresh NSS database with the module (SoftHSM or keytrail) added.
fn nss_matrix(mask: &Mask) -> Matrix {
    let m = Matrix::new();
    for side in [&m.direct, &m.keytrail] {
        std::fs::create_dir_all(side.work.join("db")).expect("db dir");
        std::fs::write(side.work.join("pin.txt"), format!("{USER_PIN}\n")).expect("pin file");
        std::fs::write(side.work.join("noise"), [7u8; 64]).expect("noise");
    }
    let db = m.step(mask, |s| certutil(s, &["-N", "--empty-password"]));
    assert_eq!(db.code, Some(0), "{db:?}");
    let add = m.step(&mask_module_path(), |s| {
        modutil_add(s, "keytrail-test-module")
    });
    assert_eq!(add.code, Some(0), "{add:?}");
    assert!(
        add.stdout
            .contains("Module \"keytrail-test-module\" added to database."),
        "{add:?}"
    );
    m
}

/// The standard masks and the module's path, which `modutil -list` prints.
fn mask_module_path() -> Mask {
    Mask::standard().with(r"library name: \S+", "library name: <module>")
}

#[test]
fn nss_modutil_and_certutil_request_self_signed_certificate_and_listings() {
    let mask = Mask::standard();
    let m = nss_matrix(&mask);
    let list = m.step(&mask_module_path(), |s| {
        let mut c = s.command("modutil");
        c.args(["-dbdir", "sql:db", "-list"]);
        c
    });
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(list.stdout.contains("2. keytrail-test-module"), "{list:?}");
    assert!(list.stdout.contains("token: keytrail-test"), "{list:?}");
    assert!(
        list.stdout.contains(
            "uri: pkcs11:library-manufacturer=SoftHSM;library-description=Implementation%20of%20PKCS11;library-version=2.6"
        ),
        "keytrail shows the real module's information: {list:?}"
    );

    let token_args = ["-h", TOKEN, "-f", "pin.txt", "-z", "noise"];
    let req = m.step(&mask, |s| {
        let mut c = certutil(
            s,
            &[
                "-R",
                "-k",
                "ec",
                "-q",
                "nistp256",
                "-s",
                "CN=keytrail-nss-request",
            ],
        );
        c.args(token_args).args(["-o", "req.der"]);
        c
    });
    assert_eq!(req.code, Some(0), "{req:?}");
    let selfsigned = m.step(&mask, |s| {
        let mut c = certutil(s, SELF_SIGNED);
        c.args(token_args);
        c
    });
    assert_eq!(selfsigned.code, Some(0), "{selfsigned:?}");

    let sorted = Mask::standard().then(sorted_lines);
    let keys = m.step(&sorted, |s| {
        certutil(s, &["-K", "-h", TOKEN, "-f", "pin.txt"])
    });
    assert_eq!(keys.code, Some(0), "{keys:?}");
    assert!(
        keys.stdout.contains("<n> ec       <hex>   (orphan)"),
        "the request's key: {keys:?}"
    );
    assert!(
        keys.stdout
            .contains("<n> ec       <hex>   keytrail-test:nss-ca"),
        "{keys:?}"
    );
    let certs = m.step(&sorted, |s| {
        certutil(s, &["-L", "-h", TOKEN, "-f", "pin.txt"])
    });
    assert_eq!(certs.code, Some(0), "{certs:?}");
    assert!(certs.stdout.contains("keytrail-test:nss-ca"), "{certs:?}");
    assert!(certs.stdout.contains("CTu,u,u"), "{certs:?}");

    let trail = m.trail();
    let procs = processes(&trail);
    let names: Vec<&str> = procs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "modutil", "modutil", "certutil", "certutil", "certutil", "certutil"
        ],
        "modutil -add and -list, certutil -R, -S, -K, -L (certutil -N loads no module)"
    );
    assert_verifies(&m.fx.trail_path(), procs.len());
    assert_key_events(&tally_of(&trail, "modutil"), &[]);
    // -R: a key pair, NSS setting its CKA_ID (and the public key's) after generation, the
    // request signed.
    assert_key_events(
        &tally(&trail, procs[2].0),
        &[
            ("generate/key_pair_generate/success", 1),
            ("modify/attribute_set/success", 2),
            ("use/sign/success", 1),
        ],
    );
    // -S: the same, two signatures, the certificate stored; NSS's trust object (a
    // vendor class) is refused by SoftHSM with CKR_ATTRIBUTE_VALUE_INVALID, on both sides.
    assert_key_events(
        &tally(&trail, procs[3].0),
        &[
            ("generate/key_pair_generate/success", 1),
            ("modify/attribute_set/success", 2),
            ("use/sign/success", 2),
            ("import/object_create/success", 1),
            ("import/object_create/failure", 1),
        ],
    );
    for (pid, _) in &procs[4..] {
        assert_key_events(&tally(&trail, *pid), &[]);
    }
    // Every signing key is the EC key generated in the same process, named by the CKA_ID
    // NSS gave it (a hash of the public key: 20 bytes).
    for r in trail.iter().filter(|r| r["event"]["action"] == "sign") {
        let k = &r["pkcs11"]["key"];
        assert_eq!(k["class"], "CKO_PRIVATE_KEY", "{k:#}");
        assert_eq!(k["key_type"], "CKK_EC", "{k:#}");
        assert_eq!(k["id_hex"].as_str().map(str::len), Some(40), "{k:#}");
    }
    assert_eq!(labels(&trail, "import", "object_create"), ["nss-ca"]);
    let r = report(&m.fx.trail_path());
    let keys = report_keys(&r);
    assert!(
        keys.contains(&"CKO_CERTIFICATE nss-ca".to_string()),
        "{keys:#?}"
    );
    assert!(keys.contains(&"CKO_PRIVATE_KEY -".to_string()), "{keys:#?}");
}

/// `keytrail report` follows a CKA_ID set after generation: each key certutil made
/// is one entry: created by C_GenerateKeyPair, changed once, with its signatures.
#[test]
fn report_follows_the_cka_id_nss_sets_after_generation() {
    let mask = Mask::standard();
    let m = nss_matrix(&mask);
    let selfsigned = m.step(&mask, |s| {
        let mut c = certutil(s, SELF_SIGNED);
        c.args(["-h", TOKEN, "-f", "pin.txt", "-z", "noise"]);
        c
    });
    assert_eq!(selfsigned.code, Some(0), "{selfsigned:?}");
    let r = report(&m.fx.trail_path());
    let private: Vec<&serde_json::Value> = r["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["class"] == "CKO_PRIVATE_KEY")
        .collect();
    assert_eq!(private.len(), 1, "one private key: {:#}", r["keys"]);
    let k = private[0];
    assert_eq!(k["created"]["function"], "C_GenerateKeyPair", "{k:#}");
    assert_eq!(k["changes"]["success"], 1, "{k:#}");
    assert_eq!(uses(k).get("sign / CKM_ECDSA"), Some(&2), "{k:#}");
}

/// `modutil -add … -string PARAMS`: NSS hands the parameters to the module in pReserved,
/// and SoftHSM refuses them. The client fails the same way through keytrail, and each
/// refused C_Initialize is on the trail, in a stream of its own that verifies.
#[test]
fn a_module_refusing_nss_s_parameter_string_leaves_each_refusal_on_the_trail() {
    let mask = mask_module_path();
    let m = Matrix::new();
    for side in [&m.direct, &m.keytrail] {
        std::fs::create_dir_all(side.work.join("db")).expect("db dir");
    }
    let db = m.step(&mask, |s| certutil(s, &["-N", "--empty-password"]));
    assert_eq!(db.code, Some(0), "{db:?}");
    let add = |s: &Side| {
        let mut c = modutil_add(s, "with-params");
        c.args(["-string", "configdir='sql:elsewhere'"]);
        c
    };
    let direct = m.direct.run(add(&m.direct), &mask);
    let through = m.keytrail.run(add(&m.keytrail), &mask);
    assert_ne!(
        direct.code,
        Some(0),
        "SoftHSM refuses pReserved: {direct:?}"
    );
    assert_eq!(through.code, direct.code, "{through:?}");
    assert_eq!(through.stdout, direct.stdout);
    // keytrail's stderr adds only its own diagnostic of each refusal.
    let own: Vec<&str> = through
        .stderr
        .lines()
        .filter(|l| l.starts_with("keytrail:"))
        .collect();
    let rest: Vec<&str> = through
        .stderr
        .lines()
        .filter(|l| !l.starts_with("keytrail:"))
        .collect();
    assert_eq!(rest, direct.stderr.lines().collect::<Vec<_>>());
    assert!(!own.is_empty(), "{through:?}");
    for l in &own {
        assert!(
            l.ends_with("returned CKR_ARGUMENTS_BAD from C_Initialize"),
            "{l}"
        );
    }

    let trail = m.fx.trail();
    let streams = trail
        .iter()
        .filter(|r| r["event"]["action"] == "trail_start")
        .count();
    assert_eq!(streams, own.len(), "a stream per refusal: {trail:#?}");
    let mut expected = Vec::new();
    for _ in 0..streams {
        expected.extend([
            "trail_start/success/-",
            "initialize/failure/CKR_ARGUMENTS_BAD",
            "trail_stop/success/-",
        ]);
    }
    let got: Vec<String> = trail
        .iter()
        .map(|r| {
            format!(
                "{}/{}/{}",
                r["event"]["action"].as_str().unwrap_or("?"),
                r["event"]["outcome"].as_str().unwrap_or("?"),
                r["pkcs11"]["rv_name"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(trail.iter().all(|r| r["process"]["name"] == "modutil"));
    assert_verifies(&m.fx.trail_path(), streams);
    let r = report(&m.fx.trail_path());
    assert_eq!(
        r["failures_by_function"]["C_Initialize CKR_ARGUMENTS_BAD"], streams,
        "{r:#}"
    );
}
