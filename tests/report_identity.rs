//! `keytrail report` follows each key through what real clients do, across processes:
//! session copies of token keys (pkcs11-provider), keys with no CKA_ID and no label made
//! in different processes (Java, NSS's certutil -R and -S), a CKA_ID set after generation
//! (NSS), and a property test over random sequences of generate, copy, set-attribute, use
//! and destroy in several processes.
//!
//! Each process is a real one: this test binary run again as [`child_script`], which plays
//! a script through keytrail with the cryptoki crate, on the test's SoftHSM token and trail.

mod common;
use common::clients::{assert_verifies, report, uses};
use common::*;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use proptest::prelude::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::process::Command;

const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Child side: plays the script in `KT_SCRIPT`, one operation a line, on the token through
/// keytrail, and prints `PID <pid>`. Keys are named by the script's own names (`ID`):
///
/// - `gen ID TOKEN LABEL`: an AES-256 key (TOKEN 0 or 1; LABEL `-` for none, no CKA_ID);
/// - `pair ID TOKEN`: a P-256 key pair with no CKA_ID and no label (`ID` the private key,
///   `ID.pub` the public key);
/// - `copy SRC ID TOKEN LABEL`: C_CopyObject with CKA_TOKEN (and CKA_LABEL unless `-`);
/// - `label ID LABEL`, `setid ID HEX`: C_SetAttributeValue;
/// - `use ID`: one AES-ECB encryption, or one ECDSA signature with a private key;
/// - `destroy ID`;
/// - `find ID LABEL`, `findid ID HEX`: a token key made by an earlier process.
#[test]
#[ignore = "child process of the other tests in this file"]
fn child_script() {
    let script = std::env::var("KT_SCRIPT").expect("KT_SCRIPT");
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let mut keys: HashMap<String, ObjectHandle> = HashMap::new();
    let label = |l: &str| (l != "-").then(|| Attribute::Label(l.as_bytes().to_vec()));
    for line in script.lines().filter(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let key = |name: &str| *keys.get(name).unwrap_or_else(|| panic!("{name}: {line}"));
        match w[..] {
            ["gen", id, token, l] => {
                let mut t = vec![
                    Attribute::Token(token == "1"),
                    Attribute::ValueLen(32.into()),
                    Attribute::Encrypt(true),
                ];
                t.extend(label(l));
                let h = s.generate_key(&Mechanism::AesKeyGen, &t).expect(line);
                keys.insert(id.into(), h);
            }
            ["pair", id, token] => {
                let (public, private) = s
                    .generate_key_pair(
                        &Mechanism::EccKeyPairGen,
                        &[
                            Attribute::Token(token == "1"),
                            Attribute::EcParams(P256.to_vec()),
                            Attribute::Verify(true),
                        ],
                        &[
                            Attribute::Token(token == "1"),
                            Attribute::Private(true),
                            Attribute::Sign(true),
                        ],
                    )
                    .expect(line);
                keys.insert(id.into(), private);
                keys.insert(format!("{id}.pub"), public);
            }
            ["copy", src, id, token, l] => {
                let mut t = vec![Attribute::Token(token == "1")];
                t.extend(label(l));
                let h = s.copy_object(key(src), &t).expect(line);
                keys.insert(id.into(), h);
            }
            ["label", id, l] => s
                .update_attributes(key(id), &[Attribute::Label(l.as_bytes().to_vec())])
                .expect(line),
            ["setid", id, hex] => s
                .update_attributes(key(id), &[Attribute::Id(hex::decode(hex))])
                .expect(line),
            ["use", id] => {
                let h = key(id);
                let class = s
                    .get_attributes(h, &[AttributeType::Class])
                    .expect(line)
                    .pop();
                if matches!(class, Some(Attribute::Class(ObjectClass::PRIVATE_KEY))) {
                    s.sign(&Mechanism::Ecdsa, h, &[0x5a; 32]).expect(line);
                } else {
                    s.encrypt(&Mechanism::AesEcb, h, &[0; 16]).expect(line);
                }
            }
            ["destroy", id] => {
                s.destroy_object(key(id)).expect(line);
                keys.remove(id);
            }
            ["find", id, l] => {
                let found = s
                    .find_objects(&[
                        Attribute::Token(true),
                        Attribute::Label(l.as_bytes().to_vec()),
                    ])
                    .expect(line);
                assert_eq!(found.len(), 1, "{line}");
                keys.insert(id.into(), found[0]);
            }
            ["findid", id, hex] => {
                let found = s
                    .find_objects(&[
                        Attribute::Token(true),
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::KeyType(KeyType::EC),
                        Attribute::Id(hex::decode(hex)),
                    ])
                    .expect(line);
                assert_eq!(found.len(), 1, "{line}");
                keys.insert(id.into(), found[0]);
            }
            _ => panic!("unknown step {line}"),
        }
    }
    drop(s);
    p.finalize().expect("C_Finalize");
    println!("PID {}", std::process::id());
}

/// Tiny hex codec for the script (the tests need nothing more).
mod hex {
    pub fn decode(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
            .collect()
    }
}

/// Runs one process of a scenario: this binary's [`child_script`] with `script`, on the
/// fixture's token and trail. Returns its pid.
fn process(script: &str) -> u64 {
    let o = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_script", "--ignored", "--nocapture"])
        .env("KT_SCRIPT", script)
        .output()
        .expect("run child");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "child failed:\n{script}\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.lines()
        .find_map(|l| l.strip_prefix("PID "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PID in {out}"))
}

fn keys(r: &Value) -> &Vec<Value> {
    r["keys"].as_array().expect("keys")
}

fn by_class<'a>(r: &'a Value, class: &str) -> Vec<&'a Value> {
    keys(r).iter().filter(|k| k["class"] == class).collect()
}

/// python-pkcs11, as the issue reproduced it: `key.copy({Attribute.TOKEN: False}).destroy()`
/// on a token key. The token key stays alive and made by C_GenerateKey; the copy is a key
/// of its own, a session object copied from it, and it is the copy that was destroyed.
#[test]
fn python_copy_of_a_token_key_destroyed_leaves_the_token_key_alive() {
    let fx = Fixture::new();
    let python = std::env::var_os("KEYTRAIL_PYTHON").unwrap_or_else(|| {
        panic!("KEYTRAIL_PYTHON is not set: run scripts/test.sh, which installs python-pkcs11 and sets it")
    });
    let code = format!(
        "import pkcs11\n\
         from pkcs11 import Attribute, KeyType\n\
         lib = pkcs11.lib({module:?})\n\
         tok = lib.get_token(token_label={TOKEN_LABEL:?})\n\
         with tok.open(user_pin={USER_PIN:?}, rw=True) as s:\n\
         \x20   key = s.generate_key(KeyType.AES, 256, label='py-token', store=True)\n\
         \x20   key.copy({{Attribute.TOKEN: False}}).destroy()\n",
        module = keytrail_module().display().to_string(),
    );
    let o = Command::new(python)
        .args(["-c", &code])
        .output()
        .expect("run python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_verifies(&fx.trail_path(), 1);
    let r = report(&fx.trail_path());
    let secret = by_class(&r, "CKO_SECRET_KEY");
    assert_eq!(
        secret.len(),
        2,
        "the token key and its copy: {:#}",
        r["keys"]
    );
    let token = secret
        .iter()
        .find(|k| k["token_object"] == true)
        .expect("the token key");
    assert_eq!(token["label"], "py-token", "{token:#}");
    assert_eq!(token["created"]["function"], "C_GenerateKey", "{token:#}");
    assert!(token["destroyed"].is_null(), "{token:#}");
    assert_eq!(token["copies"], 1, "{token:#}");
    let copy = secret
        .iter()
        .find(|k| k["token_object"] == false)
        .expect("the copy");
    assert_eq!(copy["created"]["function"], "C_CopyObject", "{copy:#}");
    assert_eq!(copy["copy_of"], token["identity"], "{copy:#}");
    assert_eq!(copy["destroyed"]["function"], "C_DestroyObject", "{copy:#}");
    assert_ne!(copy["identity"], token["identity"]);

    // The text report says so.
    let o = Command::new(common::kryoptic::keytrail_bin())
        .arg("report")
        .arg(fx.trail_path())
        .output()
        .expect("keytrail report");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!(
            "    copy of   {}",
            token["identity"].as_str().expect("identity")
        )),
        "{text}"
    );
}

/// pkcs11-provider's pattern: a token key pair made once; each later process copies the
/// private key into a session object, signs with the copy and destroys it.
#[test]
fn provider_pattern_session_copies_in_several_processes() {
    let fx = Fixture::new();
    let maker = process("pair k 1\nlabel k prov\nlabel k.pub prov-pub\n");
    let mut signers = Vec::new();
    for _ in 0..2 {
        signers.push(process("find k prov\ncopy k c 0 -\nuse c\ndestroy c\n"));
    }
    assert_verifies(&fx.trail_path(), 3);
    let r = report(&fx.trail_path());
    let private = by_class(&r, "CKO_PRIVATE_KEY");
    assert_eq!(private.len(), 3, "{:#}", r["keys"]);
    let token: Vec<&&Value> = private
        .iter()
        .filter(|k| k["token_object"] == true)
        .collect();
    assert_eq!(token.len(), 1, "{:#}", r["keys"]);
    let token = token[0];
    assert_eq!(token["created"]["function"], "C_GenerateKeyPair");
    assert_eq!(token["created"]["pid"], maker);
    assert_eq!(token["label"], "prov");
    assert!(token["destroyed"].is_null(), "{token:#}");
    assert_eq!(token["copies"], 2, "{token:#}");
    assert_eq!(uses(token).get("sign / CKM_ECDSA"), Some(&2), "{token:#}");
    let mut copiers: Vec<u64> = Vec::new();
    for copy in private.iter().filter(|k| k["token_object"] == false) {
        assert_eq!(copy["created"]["function"], "C_CopyObject", "{copy:#}");
        assert_eq!(copy["copy_of"], token["identity"], "{copy:#}");
        assert_eq!(copy["destroyed"]["pid"], copy["created"]["pid"], "{copy:#}");
        assert_eq!(uses(copy).get("sign / CKM_ECDSA"), Some(&1), "{copy:#}");
        copiers.push(copy["created"]["pid"].as_u64().expect("pid"));
    }
    assert_eq!(copiers, signers);
}

/// Java's and NSS's pattern: keys with no CKA_ID and no label, made in different processes
/// — session key pairs (SunPKCS11), token key pairs and token secret keys — are as many keys
/// as were made, each credited to the process that made it.
#[test]
fn keys_without_id_or_label_in_different_processes_stay_apart() {
    let fx = Fixture::new();
    let script = "pair s 0\nuse s\npair t 1\nuse t\nuse t\ngen a 1 -\nuse a\n";
    let pids = [process(script), process(script), process(script)];
    assert_verifies(&fx.trail_path(), 3);
    let r = report(&fx.trail_path());
    for (class, per_process) in [
        ("CKO_PRIVATE_KEY", 2),
        ("CKO_PUBLIC_KEY", 2),
        ("CKO_SECRET_KEY", 1),
    ] {
        let found = by_class(&r, class);
        assert_eq!(found.len(), 3 * per_process, "{class}: {:#}", r["keys"]);
        for pid in pids {
            let made = found.iter().filter(|k| k["created"]["pid"] == pid).count();
            assert_eq!(made, per_process, "{class} by {pid}: {:#}", r["keys"]);
        }
    }
    // Each private key's signatures are its own process's.
    for k in by_class(&r, "CKO_PRIVATE_KEY") {
        let want = if k["token_object"] == true { 2 } else { 1 };
        assert_eq!(uses(k).get("sign / CKM_ECDSA"), Some(&want), "{k:#}");
    }
    // Session objects end with their session.
    for k in keys(&r).iter().filter(|k| k["token_object"] == false) {
        assert_eq!(k["ended"]["function"], "C_CloseSession", "{k:#}");
        assert_eq!(k["ended"]["pid"], k["created"]["pid"], "{k:#}");
    }
}

/// NSS's pattern: a token key pair generated with no CKA_ID, the CKA_ID set afterwards
/// (certutil -R, -S). Creation, changes, uses in later processes and destruction are one
/// key, named by its new CKA_ID, and the other process's key made the same way stays apart.
#[test]
fn a_cka_id_set_after_generation_carries_the_key_forward() {
    let fx = Fixture::new();
    let first = process("pair k 1\nsetid k 0a0b\nsetid k.pub 0a0b\nuse k\n");
    let other = process("pair k 1\nsetid k 0c0d\nsetid k.pub 0c0d\nuse k\n");
    process("findid k 0a0b\nuse k\nuse k\n");
    let destroyer = process("findid k 0a0b\ndestroy k\n");
    assert_verifies(&fx.trail_path(), 4);
    let r = report(&fx.trail_path());
    let private = by_class(&r, "CKO_PRIVATE_KEY");
    assert_eq!(private.len(), 2, "{:#}", r["keys"]);
    let k = private
        .iter()
        .find(|k| k["id_hex"] == "0a0b")
        .expect("the key of 0a0b");
    assert_eq!(k["created"]["function"], "C_GenerateKeyPair", "{k:#}");
    assert_eq!(k["created"]["pid"], first, "{k:#}");
    assert_eq!(k["changes"]["success"], 1, "{k:#}");
    assert_eq!(k["formerly"].as_array().map(Vec::len), Some(1), "{k:#}");
    assert_eq!(uses(k).get("sign / CKM_ECDSA"), Some(&3), "{k:#}");
    assert_eq!(k["destroyed"]["pid"], destroyer, "{k:#}");
    assert!(
        k["identity"]
            .as_str()
            .is_some_and(|i| i.contains("id:0a0b")),
        "{k:#}"
    );
    let o = private
        .iter()
        .find(|k| k["id_hex"] == "0c0d")
        .expect("the other key");
    assert_eq!(o["created"]["pid"], other, "{o:#}");
    assert_eq!(uses(o).get("sign / CKM_ECDSA"), Some(&1), "{o:#}");
    assert!(o["destroyed"].is_null(), "{o:#}");
    let public = by_class(&r, "CKO_PUBLIC_KEY");
    assert_eq!(public.len(), 2, "{:#}", r["keys"]);
    for p in public {
        assert_eq!(p["created"]["function"], "C_GenerateKeyPair", "{p:#}");
        assert_eq!(p["changes"]["success"], 1, "{p:#}");
    }
}

// ---- The property test -------------------------------------------------------------

/// One key of the model: what the report must say of it.
#[derive(Debug, Clone)]
struct Model {
    token: bool,
    label: Option<String>,
    /// The process (index) that made it.
    creator: usize,
    copy_of: Option<usize>,
    uses: u64,
    changes: u64,
    copies: u64,
    destroyed_by: Option<usize>,
}

/// One random step: what to do, on which key, with which choices.
type Step = (u8, u16, bool, bool);

/// Turns random steps into scripts, one per process, and the model of what they do.
/// Only keys a process can reach are used: its own, and token keys with a label.
fn plan(processes: &[Vec<Step>]) -> (Vec<String>, Vec<Model>) {
    let mut models: Vec<Model> = Vec::new();
    let mut scripts = Vec::new();
    let mut labels = 0u32;
    let mut fresh = || {
        labels += 1;
        format!("L{labels}")
    };
    for (proc, steps) in processes.iter().enumerate() {
        let mut script = String::new();
        let mut here: Vec<usize> = Vec::new();
        let reachable = |models: &Vec<Model>, here: &Vec<usize>| -> Vec<usize> {
            (0..models.len())
                .filter(|&i| {
                    models[i].destroyed_by.is_none()
                        && (here.contains(&i) || (models[i].token && models[i].label.is_some()))
                })
                .collect()
        };
        for &(what, pick, flag_a, flag_b) in steps {
            let live = reachable(&models, &here);
            let target = (!live.is_empty()).then(|| live[pick as usize % live.len()]);
            match (what % 5, target) {
                (0, _) | (_, None) => {
                    let id = models.len();
                    let label = flag_b.then(&mut fresh);
                    script.push_str(&format!(
                        "gen k{id} {} {}\n",
                        u8::from(flag_a),
                        label.as_deref().unwrap_or("-")
                    ));
                    models.push(Model {
                        token: flag_a,
                        label,
                        creator: proc,
                        copy_of: None,
                        uses: 0,
                        changes: 0,
                        copies: 0,
                        destroyed_by: None,
                    });
                    here.push(id);
                }
                (1, Some(src)) => {
                    reach(&models, &mut script, &mut here, src);
                    let id = models.len();
                    // A token copy gets a label of its own (or none); a session copy keeps
                    // its source's, as pkcs11-provider's do.
                    let (arg, label) = match (flag_a, flag_b) {
                        (true, true) => {
                            let l = fresh();
                            (l.clone(), Some(l))
                        }
                        (true, false) if models[src].label.is_none() => ("-".to_string(), None),
                        (true, false) => {
                            let l = fresh();
                            (l.clone(), Some(l))
                        }
                        (false, _) => ("-".to_string(), models[src].label.clone()),
                    };
                    script.push_str(&format!("copy k{src} k{id} {} {arg}\n", u8::from(flag_a)));
                    models[src].copies += 1;
                    models.push(Model {
                        token: flag_a,
                        label,
                        creator: proc,
                        copy_of: Some(src),
                        uses: 0,
                        changes: 0,
                        copies: 0,
                        destroyed_by: None,
                    });
                    here.push(id);
                }
                (2, Some(k)) => {
                    reach(&models, &mut script, &mut here, k);
                    let l = fresh();
                    script.push_str(&format!("label k{k} {l}\n"));
                    models[k].label = Some(l);
                    models[k].changes += 1;
                }
                (3, Some(k)) => {
                    reach(&models, &mut script, &mut here, k);
                    script.push_str(&format!("use k{k}\n"));
                    // A copy's use counts for every key it descends from.
                    let mut next = Some(k);
                    while let Some(m) = next {
                        models[m].uses += 1;
                        next = models[m].copy_of;
                    }
                }
                (_, Some(k)) => {
                    reach(&models, &mut script, &mut here, k);
                    script.push_str(&format!("destroy k{k}\n"));
                    models[k].destroyed_by = Some(proc);
                }
            }
        }
        // Session objects end with the process.
        for m in here {
            if !models[m].token && models[m].destroyed_by.is_none() {
                models[m].destroyed_by = Some(usize::MAX);
            }
        }
        scripts.push(script);
    }
    (scripts, models)
}

/// Reaches a key made by an earlier process (a token key, by its label) before using it.
fn reach(models: &[Model], script: &mut String, here: &mut Vec<usize>, k: usize) {
    if !here.contains(&k) {
        let l = models[k].label.clone().expect("reachable by label");
        script.push_str(&format!("find k{k} {l}\n"));
        here.push(k);
    }
}

/// What the report says of one key, in the model's terms; `ended` as `usize::MAX`.
type Seen = (
    usize,
    bool,
    Option<String>,
    Option<String>,
    u64,
    u64,
    u64,
    Option<usize>,
);

fn seen_of_model(models: &[Model]) -> Vec<Seen> {
    let mut out: Vec<Seen> = models
        .iter()
        .map(|m| {
            (
                m.creator,
                m.token,
                m.label.clone(),
                m.copy_of
                    .map(|s| models[s].label.clone().unwrap_or_default()),
                m.uses,
                m.changes,
                m.copies,
                m.destroyed_by,
            )
        })
        .collect();
    out.sort();
    out
}

fn seen_of_report(r: &Value, pids: &[u64]) -> Vec<Seen> {
    let proc = |v: &Value| {
        let pid = v["pid"].as_u64().expect("pid");
        pids.iter().position(|&p| p == pid).expect("a pid of ours")
    };
    let by_identity: BTreeMap<&str, &Value> = keys(r)
        .iter()
        .map(|k| (k["identity"].as_str().expect("identity"), k))
        .collect();
    let mut out: Vec<Seen> = keys(r)
        .iter()
        .map(|k| {
            let created = &k["created"];
            assert_eq!(
                created["function"]
                    .as_str()
                    .map(|f| f == "C_GenerateKey" || f == "C_CopyObject"),
                Some(true),
                "every key was made on this trail: {k:#}"
            );
            let copy_of = k["copy_of"].as_str().map(|s| {
                let src = by_identity.get(s).unwrap_or_else(|| panic!("source {s}"));
                src["label"].as_str().unwrap_or_default().to_string()
            });
            let destroyed = if k["destroyed"].is_object() {
                Some(proc(&k["destroyed"]))
            } else if k["ended"].is_object() {
                Some(usize::MAX)
            } else {
                None
            };
            let count = |c: &Value| c["success"].as_u64().unwrap_or(0);
            (
                proc(created),
                k["token_object"] == true,
                k["label"]
                    .as_str()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
                copy_of,
                k["uses"]
                    .as_object()
                    .map(|u| {
                        u.iter()
                            .filter(|(w, _)| w.starts_with("encrypt "))
                            .map(|(_, c)| count(c))
                            .sum()
                    })
                    .unwrap_or(0),
                count(&k["changes"]),
                k["copies"].as_u64().unwrap_or(0),
                destroyed,
            )
        })
        .collect();
    out.sort();
    out
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    /// Whatever a few processes do with keys — generate (token or session, labelled or
    /// not), copy (to token or session objects), relabel, use, destroy — the report has
    /// exactly one entry per key made, each with its maker, its uses (its copies' included),
    /// its changes, its copies, and who destroyed it or that it ended with its session.
    #[test]
    fn report_identity_over_random_sequences(
        processes in proptest::collection::vec(
            proptest::collection::vec((0u8..5, any::<u16>(), any::<bool>(), any::<bool>()), 1..7),
            2..4,
        )
    ) {
        let fx = Fixture::new();
        let (scripts, models) = plan(&processes);
        let pids: Vec<u64> = scripts.iter().map(|s| process(s)).collect();
        let r = report(&fx.trail_path());
        let want = seen_of_model(&models);
        let got = seen_of_report(&r, &pids);
        prop_assert_eq!(got, want, "scripts: {:#?}\nreport: {:#}", scripts, r["keys"]);
    }
}
