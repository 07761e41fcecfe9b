//! `[trail] format = "ocsf"`: a workload of every category, run through keytrail against a
//! fresh SoftHSM2 token, writes OCSF 1.3 events that carry each class's required fields and
//! only attributes the class has; the trail verifies; `keytrail report` and `show` read it
//! as they read the same workload's ECS trail (written by a child process: keytrail reads
//! its configuration once per process).

mod common;
mod support;

use common::clients::{assert_verifies, report, report_key, report_keys, uses};
use common::kryoptic::keytrail_bin;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

/// Attributes of every OCSF 1.3 event (base event, `host` and `datetime` profiles).
const BASE: &[&str] = &[
    "activity_id",
    "activity_name",
    "category_uid",
    "category_name",
    "class_uid",
    "class_name",
    "count",
    "duration",
    "end_time",
    "message",
    "metadata",
    "severity_id",
    "severity",
    "start_time",
    "status",
    "status_code",
    "status_detail",
    "status_id",
    "time",
    "time_dt",
    "type_uid",
    "type_name",
    "unmapped",
    "device",
    "actor",
];

/// Per class: the attributes it adds, the ones it requires, and its activity ids.
fn class_spec(
    class_uid: u64,
) -> (
    &'static [&'static str],
    &'static [&'static str],
    &'static [u64],
) {
    match class_uid {
        // Authentication: `user` required, and a service or dst_endpoint.
        3002 => (
            &[
                "user",
                "service",
                "dst_endpoint",
                "src_endpoint",
                "auth_protocol",
                "auth_protocol_id",
                "is_remote",
                "logon_type",
                "logon_type_id",
                "session",
            ],
            &["user", "service"],
            &[1, 2, 99],
        ),
        // API Activity: actor, api and src_endpoint required.
        6003 => (
            &["api", "resources", "src_endpoint", "dst_endpoint"],
            &["actor", "api", "src_endpoint"],
            &[1, 2, 3, 4, 99],
        ),
        // Application Lifecycle: app required.
        6002 => (&["app"], &["app"], &[1, 2, 3, 4, 99]),
        other => panic!("unexpected class_uid {other}"),
    }
}

/// Checks one record against OCSF 1.3; returns its problems.
fn ocsf_problems(r: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let num = |k: &str| r[k].as_u64();
    for k in [
        "category_uid",
        "class_uid",
        "activity_id",
        "type_uid",
        "severity_id",
        "time",
    ] {
        if num(k).is_none() {
            p.push(format!("required `{k}` missing or not an integer"));
        }
    }
    let (Some(cat), Some(class), Some(act)) =
        (num("category_uid"), num("class_uid"), num("activity_id"))
    else {
        return p;
    };
    if class / 1000 != cat {
        p.push(format!("class {class} is not in category {cat}"));
    }
    if num("type_uid") != Some(class * 100 + act) {
        p.push("type_uid is not class_uid * 100 + activity_id".into());
    }
    if !matches!(num("severity_id"), Some(0..=6 | 99)) {
        p.push("severity_id out of range".into());
    }
    if !matches!(num("status_id"), Some(0..=2 | 99)) {
        p.push("status_id out of range".into());
    }
    let meta = &r["metadata"];
    for k in ["version", "log_name", "uid", "event_code"] {
        if !meta[k].is_string() {
            p.push(format!("metadata.{k} missing"));
        }
    }
    if meta["version"] != "1.3.0" {
        p.push("metadata.version is not 1.3.0".into());
    }
    for k in ["name", "vendor_name", "version"] {
        if !meta["product"][k].is_string() {
            p.push(format!("metadata.product.{k} missing"));
        }
    }
    if !r["device"]["type_id"].is_u64() {
        p.push("device.type_id missing (host profile)".into());
    }
    let actor = &r["actor"];
    if !actor["process"]["pid"].is_u64() || !actor["user"]["uid"].is_string() {
        p.push("actor.process.pid or actor.user.uid missing".into());
    }
    if actor["process"]["file"].is_object()
        && (!actor["process"]["file"]["name"].is_string()
            || !actor["process"]["file"]["type_id"].is_u64())
    {
        p.push("actor.process.file lacks name or type_id".into());
    }
    let (attrs, required, activities) = class_spec(class);
    if !activities.contains(&act) {
        p.push(format!("activity_id {act} is not one of class {class}"));
    }
    for k in required {
        if r.get(k).is_none() {
            p.push(format!("class {class} requires `{k}`"));
        }
    }
    for k in r.as_object().expect("object").keys() {
        if !BASE.contains(&k.as_str()) && !attrs.contains(&k.as_str()) {
            p.push(format!("`{k}` is not an attribute of class {class}"));
        }
    }
    match class {
        3002 => {
            if !r["user"]["name"].is_string() && !r["user"]["uid"].is_string() {
                p.push("user has neither name nor uid".into());
            }
        }
        6003 => {
            if !r["api"]["operation"].is_string() {
                p.push("api.operation missing".into());
            }
            for res in r["resources"].as_array().map_or(&[][..], |v| v.as_slice()) {
                if !res["type"].is_string() || !(res["uid"].is_string() || res["name"].is_string())
                {
                    p.push(format!("resource without type and uid or name: {res}"));
                }
            }
        }
        _ => {
            if !r["app"]["name"].is_string() || !r["app"]["vendor_name"].is_string() {
                p.push("app lacks name or vendor_name".into());
            }
        }
    }
    if !r["unmapped"]["integrity"]["hash"].is_string() {
        p.push("the chain is not under unmapped.integrity".into());
    }
    p
}

/// The lifecycle workload in a child process (see `workload::lifecycle_in_child`).
#[test]
#[ignore = "run in a child process by the tests below"]
fn workload_child() {
    workload::lifecycle_child();
}

fn trail_in_child(format: &str, dir: &Path) -> PathBuf {
    workload::lifecycle_in_child("workload_child", format, dir)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("trail")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn every_category_is_a_valid_ocsf_event_and_the_trail_verifies() {
    let dir = tempfile::tempdir().expect("dir");
    let trail = trail_in_child("ocsf", dir.path());
    let records = lines(&trail);
    let mut classes: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for r in &records {
        let problems = ocsf_problems(r);
        assert!(problems.is_empty(), "{problems:?} in {r:#}");
        assert!(
            r.get("@timestamp").is_none() && r.get("event").is_none(),
            "{r:#}"
        );
        classes
            .entry(s(r, "unmapped.pkcs11.lifecycle").to_string())
            .or_default()
            .insert(n(r, "class_uid"));
    }
    let want: BTreeMap<String, BTreeSet<u64>> = [
        ("session", 6003),
        ("auth", 3002),
        ("token_admin", 6003),
        ("generate", 6003),
        ("import", 6003),
        ("use", 6003),
        ("export", 6003),
        ("modify", 6003),
        ("destroy", 6003),
        ("discovery", 6003),
        ("audit", 6002),
    ]
    .into_iter()
    .map(|(c, k)| (c.to_string(), BTreeSet::from([k])))
    .collect();
    assert_eq!(classes, want);

    // The failed login and the wipe rank as the shared severity says.
    let failed = records
        .iter()
        .find(|r| s(r, "metadata.event_code") == "login" && n(r, "status_id") == 2)
        .expect("the failed login");
    assert_eq!(n(failed, "severity_id"), 2, "{failed:#}");
    assert_eq!(s(failed, "status_code"), "CKR_PIN_INCORRECT");
    let wipe = records
        .iter()
        .find(|r| s(r, "metadata.event_code") == "token_init")
        .expect("token_init");
    assert_eq!(n(wipe, "severity_id"), 5, "{wipe:#}");
    let read = records
        .iter()
        .find(|r| s(r, "metadata.event_code") == "attribute_read_secret")
        .expect("attribute_read_secret");
    assert_eq!(n(read, "severity_id"), 3, "{read:#}");
    let signed = records
        .iter()
        .find(|r| s(r, "metadata.event_code") == "sign")
        .expect("sign");
    assert_eq!(n(signed, "severity_id"), 1, "{signed:#}");
    let destroy = records
        .iter()
        .find(|r| s(r, "metadata.event_code") == "object_destroy")
        .expect("destroy");
    assert_eq!(n(destroy, "activity_id"), 4);
    assert_eq!(destroy["resources"][0]["name"], "partner-key-2026");
    // metadata.uid is the chain's stream and sequence.
    for r in &records {
        let i = &r["unmapped"]["integrity"];
        assert_eq!(
            s(r, "metadata.uid"),
            format!("{}:{}", i["stream"].as_str().expect("stream"), i["seq"])
        );
    }

    assert_verifies(&trail, 1);
    // A changed record is caught as in ECS.
    let text = std::fs::read_to_string(&trail).expect("trail");
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, text.replacen("payments-kek", "payments-kex", 1)).expect("write");
    let out = Command::new(keytrail_bin())
        .args(["verify", "--quiet"])
        .arg(&tampered)
        .output()
        .expect("verify");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The stop record, kept elsewhere as a head, shows a truncated trail.
    let all: Vec<&str> = text.lines().collect();
    let (stop, kept) = (all[all.len() - 1], &all[..all.len() - 2]);
    assert_eq!(
        serde_json::from_str::<Value>(stop).expect("stop")["metadata"]["event_code"],
        "trail_stop"
    );
    let truncated = dir.path().join("truncated.jsonl");
    std::fs::write(&truncated, kept.join("\n") + "\n").expect("write");
    let out = Command::new(keytrail_bin())
        .args(["verify", "--quiet", "--head", stop])
        .arg(&truncated)
        .output()
        .expect("verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("TRUNCATED"), "{report}");
}

#[test]
fn report_and_show_read_ocsf_as_they_read_ecs() {
    let dir = tempfile::tempdir().expect("dir");
    let ocsf = trail_in_child("ocsf", dir.path());
    let ecs = trail_in_child("ecs", dir.path());
    assert_verifies(&ecs, 1);

    let (ro, re) = (report(&ocsf), report(&ecs));
    assert_eq!(report_keys(&ro), report_keys(&re));
    assert!(report_keys(&ro).contains(&"CKO_SECRET_KEY payments-dek".to_string()));
    for (class, label) in [
        ("CKO_SECRET_KEY", "payments-dek"),
        ("CKO_PRIVATE_KEY", "signing-priv"),
        ("CKO_SECRET_KEY", "payments-kek"),
    ] {
        let (ko, ke) = (report_key(&ro, class, label), report_key(&re, class, label));
        assert!(!uses(ke).is_empty(), "{ke:#}");
        assert_eq!(uses(ko), uses(ke), "{class} {label}");
        assert_eq!(ko["exports"], ke["exports"], "{class} {label}");
    }
    // The rest of the report (counts, failures, logins) matches once the values that
    // differ from run to run are masked.
    fn mask(v: &mut Value) {
        const VOLATILE: &[&str] = &[
            "first",
            "last",
            "since",
            "until",
            "pid",
            "time",
            "serial",
            "handle",
            "files",
            "first_seen",
            "last_seen",
            "identity",
            "formerly",
            "key",
            "token",
        ];
        match v {
            Value::Object(o) => {
                for (k, v) in o.iter_mut() {
                    if VOLATILE.contains(&k.as_str()) {
                        *v = Value::Null;
                    } else {
                        mask(v);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(mask),
            _ => {}
        }
    }
    let (mut ro, mut re) = (ro, re);
    mask(&mut ro);
    mask(&mut re);
    assert_eq!(ro, re, "report differs beyond run-to-run values");

    // show: the same lines, once times, pids and handles are masked.
    let show = |t: &Path| {
        let out = Command::new(keytrail_bin())
            .args(["show", "--color", "never", "--quiet"])
            .arg(t)
            .output()
            .expect("show");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let (so, se) = (show(&ocsf), show(&ecs));
    assert!(
        so.contains("key_wrap") && so.contains("payments-kek"),
        "{so}"
    );
    let digits = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| {
                l.chars()
                    .map(|c| if c.is_ascii_hexdigit() { '0' } else { c })
                    .collect()
            })
            .collect()
    };
    assert_eq!(digits(&so), digits(&se));
}
