//! docs/events.md is generated from docs/events.md.in and a real trail: this test runs a
//! realistic workload through keytrail, picks one record per category, and renders the
//! template with those records pretty-printed and the record sizes measured.
//!
//! `KEYTRAIL_UPDATE_DOCS=1 cargo nextest run --test events_doc` rewrites docs/events.md.
//! Otherwise the test checks that the committed file has the same structure as a fresh
//! rendering (same text, same categories, same fields in each example — values such as
//! timestamps, pids and handles differ from run to run), and that every field the
//! workload produced is documented in the field reference.

mod common;
mod support;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use support::*;

/// Which record represents each category in the docs: (category, action, function).
const EXAMPLES: [(&str, &str, &str); 11] = [
    ("session", "session_open", "C_OpenSession"),
    ("auth", "login", "C_Login"),
    ("token_admin", "token_init", "C_InitToken"),
    ("generate", "key_generate", "C_GenerateKey"),
    ("import", "object_create", "C_CreateObject"),
    ("use", "encrypt", "C_EncryptFinal"),
    ("export", "key_wrap", "C_WrapKey"),
    ("modify", "attribute_set", "C_SetAttributeValue"),
    ("destroy", "object_destroy", "C_DestroyObject"),
    ("discovery", "objects_find", "C_FindObjectsInit"),
    ("audit", "trail_start", ""),
];

fn docs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs")
}

/// Re-indents one JSON line without reordering its fields (serde_json's Value would sort
/// them). Containers without nested containers that fit on a line stay on one line.
fn pretty(line: &str) -> String {
    fn skip_ws(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    }
    /// The end of the value starting at `i`.
    fn end_of(b: &[u8], i: usize) -> usize {
        match b[i] {
            b'"' => {
                let mut j = i + 1;
                while b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                j + 1
            }
            b'{' | b'[' => {
                let mut depth = 0;
                let mut j = i;
                loop {
                    match b[j] {
                        b'"' => {
                            j = end_of(b, j);
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return j + 1;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            }
            _ => {
                let mut j = i;
                while j < b.len() && !b",}] \n".contains(&b[j]) {
                    j += 1;
                }
                j
            }
        }
    }
    /// Calls `f` with each member of the container at `i`: its key (objects only) and
    /// the index where its value starts.
    fn members(b: &[u8], i: usize, mut f: impl FnMut(Option<&str>, usize)) {
        let close = if b[i] == b'{' { b'}' } else { b']' };
        let mut j = skip_ws(b, i + 1);
        while b[j] != close {
            let mut key = None;
            if close == b'}' {
                let k_end = end_of(b, j);
                key = Some(std::str::from_utf8(&b[j..k_end]).expect("utf-8"));
                j = skip_ws(b, skip_ws(b, k_end) + 1);
            }
            f(key, j);
            j = skip_ws(b, end_of(b, j));
            if b[j] == b',' {
                j = skip_ws(b, j + 1);
            }
        }
    }
    /// The value at `i` on one line, with `, ` and `: ` separators.
    fn inline(b: &[u8], i: usize) -> String {
        if !matches!(b[i], b'{' | b'[') {
            return std::str::from_utf8(&b[i..end_of(b, i)])
                .expect("utf-8")
                .to_string();
        }
        let mut parts = Vec::new();
        members(b, i, |key, j| match key {
            Some(k) => parts.push(format!("{k}: {}", inline(b, j))),
            None => parts.push(inline(b, j)),
        });
        let (open, close) = if b[i] == b'{' { ('{', '}') } else { ('[', ']') };
        format!("{open}{}{close}", parts.join(", "))
    }
    fn render(b: &[u8], i: usize, indent: usize, out: &mut String) {
        let end = end_of(b, i);
        if !matches!(b[i], b'{' | b'[') {
            out.push_str(std::str::from_utf8(&b[i..end]).expect("utf-8"));
            return;
        }
        let nested = b[i + 1..end - 1].iter().any(|c| matches!(c, b'{' | b'['));
        let one_line = inline(b, i);
        if !nested && indent + one_line.len() < 90 {
            out.push_str(&one_line);
            return;
        }
        let (open, close) = if b[i] == b'{' { ('{', '}') } else { ('[', ']') };
        out.push(open);
        let mut first = true;
        members(b, i, |key, j| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push('\n');
            out.push_str(&" ".repeat(indent + 2));
            if let Some(k) = key {
                out.push_str(k);
                out.push_str(": ");
            }
            render(b, j, indent + 2, out);
        });
        out.push('\n');
        out.push_str(&" ".repeat(indent));
        out.push(close);
    }
    let mut out = String::new();
    render(line.as_bytes(), 0, 0, &mut out);
    out
}

/// Leaf paths of a record (`pkcs11.key.handle`); arrays are leaves.
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                paths(v, &p, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// A path as the field reference names it: variable parts generalised.
fn documented_name(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["pkcs11", "keys", ..] => "pkcs11.keys.<role>".into(),
        ["pkcs11", "attributes", ..] => "pkcs11.attributes.<list>".into(),
        ["pkcs11", "attribute_count", ..] => "pkcs11.attribute_count.<list>".into(),
        ["labels", ..] => "labels.<key>".into(),
        ["keytrail", ..] => "keytrail".into(),
        // OCSF: what has no OCSF home is documented once, by its ECS name.
        ["unmapped", part, ..] => format!("unmapped.{part}"),
        _ => path.to_string(),
    }
}

/// Sizes in bytes of each category's records (without the newline): min, median, max.
fn sizes(lines: &[String]) -> BTreeMap<String, (usize, usize, usize, usize, usize)> {
    let mut by: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for l in lines {
        let v: Value = serde_json::from_str(l).expect("json");
        by.entry(s(&v, "pkcs11.lifecycle").to_string())
            .or_default()
            .push((l.len(), constant_bytes(&v)));
    }
    by.into_iter()
        .map(|(c, mut v)| {
            v.sort_unstable();
            let median = v[v.len() / 2].0;
            let mut constant: Vec<usize> = v.iter().map(|x| x.1).collect();
            constant.sort_unstable();
            let constant = constant[constant.len() / 2];
            (c, (v.len(), v[0].0, median, v[v.len() - 1].0, constant))
        })
        .collect()
}

/// The median size in bytes of each category's OCSF records.
fn ocsf_medians(lines: &[String]) -> BTreeMap<String, usize> {
    let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for l in lines {
        let v: Value = serde_json::from_str(l).expect("json");
        by.entry(s(&v, "unmapped.pkcs11.lifecycle").to_string())
            .or_default()
            .push(l.len());
    }
    by.into_iter()
        .map(|(c, mut v)| {
            v.sort_unstable();
            (c, v[v.len() / 2])
        })
        .collect()
}

/// Bytes a record spends on the fields that are the same on every record of a stream:
/// `user`, `host`, `service`, `process.name` and `process.executable`, each as the
/// compact `"key":value,` it is written as.
fn constant_bytes(v: &Value) -> usize {
    let member = |k: &str, v: Option<&Value>| {
        v.map_or(0, |v| {
            k.len() + 3 + serde_json::to_string(v).expect("json").len() + 1
        })
    };
    member("user", v.get("user"))
        + member("host", v.get("host"))
        + member("service", v.get("service"))
        + member("name", v.pointer("/process/name"))
        + member("executable", v.pointer("/process/executable"))
}

/// Renders docs/events.md from the template, the chosen examples and the sizes.
fn render(
    template: &str,
    examples: &BTreeMap<&str, String>,
    ocsf: &BTreeMap<&str, String>,
    lines: &[String],
    ocsf_lines: &[String],
) -> String {
    let mut out = template.to_string();
    for (kind, examples) in [("example", examples), ("ocsf", ocsf)] {
        for (category, raw) in examples {
            out = out.replace(
                &format!("{{{{{kind}:{category}}}}}"),
                &format!("```json\n{}\n```", pretty(raw)),
            );
        }
    }
    let mut table = String::from(
        "| category | records | min | median | max | stream-constant fields | OCSF median |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let ocsf_medians = ocsf_medians(ocsf_lines);
    for (c, (count, min, median, max, constant)) in sizes(lines) {
        let ocsf = ocsf_medians.get(&c).copied().unwrap_or(0);
        table.push_str(&format!(
            "| {c} | {count} | {min} | {median} | {max} | {constant} | {ocsf} |\n"
        ));
    }
    out = out.replace("{{sizes}}", table.trim_end());
    assert!(!out.contains("{{"), "unfilled placeholder in the template");
    out
}

/// What must match between the committed file and a fresh rendering: the text, with
/// each JSON example replaced by its sorted field paths and numbers in the size table
/// replaced by `N`.
fn structure(doc: &str) -> String {
    let mut out = String::new();
    let mut json: Option<String> = None;
    let mut in_sizes = false;
    for line in doc.lines() {
        if let Some(buf) = json.as_mut() {
            if line == "```" {
                let v: Value = serde_json::from_str(buf).expect("example is JSON");
                let mut p = BTreeSet::new();
                paths(&v, "", &mut p);
                out.push_str(&format!("[example fields: {p:?}]\n"));
                json = None;
            } else {
                buf.push_str(line);
                buf.push('\n');
            }
            continue;
        }
        if line == "```json" {
            json = Some(String::new());
            continue;
        }
        if line.starts_with("| category | records") {
            in_sizes = true;
        } else if !line.starts_with('|') {
            in_sizes = false;
        }
        if in_sizes {
            let masked: String = line
                .split('|')
                .map(|cell| {
                    if !cell.trim().is_empty() && cell.trim().bytes().all(|c| c.is_ascii_digit()) {
                        " N ".to_string()
                    } else {
                        cell.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("|");
            out.push_str(&masked);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The lifecycle workload in a child process (see `workload::lifecycle_in_child`).
#[test]
#[ignore = "run in a child process by events_doc_is_generated_from_a_real_trail"]
fn workload_child() {
    workload::lifecycle_child();
}

/// The lines of the same workload's trail in OCSF.
fn ocsf_trail() -> Vec<String> {
    let dir = tempfile::tempdir().expect("dir");
    let path = workload::lifecycle_in_child("workload_child", "ocsf", dir.path());
    std::fs::read_to_string(path)
        .expect("OCSF trail")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn events_doc_is_generated_from_a_real_trail() {
    let fx = Fixture::new();
    configure(&fx, "service = \"payments-api\"", "level = \"trace\"");
    workload::lifecycle();
    let lines: Vec<String> = std::fs::read_to_string(fx.trail_path())
        .expect("trail")
        .lines()
        .map(str::to_string)
        .collect();
    let records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();

    let mut examples = BTreeMap::new();
    for (category, act, function) in EXAMPLES {
        let i = records
            .iter()
            .position(|r| {
                s(r, "pkcs11.lifecycle") == category
                    && s(r, "event.action") == act
                    && s(r, "pkcs11.function") == function
            })
            .unwrap_or_else(|| panic!("no {category}/{act} record: {}", dump(&records)));
        examples.insert(category, lines[i].clone());
    }
    // Every category the trail can hold has its example.
    let seen: BTreeSet<&str> = records.iter().map(|r| s(r, "pkcs11.lifecycle")).collect();
    let chosen: BTreeSet<&str> = examples.keys().copied().collect();
    assert_eq!(seen, chosen);

    // The same workload in OCSF: one example per category, picked the same way.
    let ocsf_lines = ocsf_trail();
    let ocsf_records: Vec<Value> = ocsf_lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let mut ocsf = BTreeMap::new();
    for (category, act, function) in EXAMPLES {
        let i = ocsf_records
            .iter()
            .position(|r| {
                s(r, "unmapped.pkcs11.lifecycle") == category
                    && s(r, "metadata.event_code") == act
                    && (s(r, "api.operation") == function || r.get("api").is_none())
            })
            .unwrap_or_else(|| panic!("no OCSF {category}/{act} record: {}", dump(&ocsf_records)));
        ocsf.insert(category, ocsf_lines[i].clone());
    }

    let template =
        std::fs::read_to_string(docs_dir().join("events.md.in")).expect("docs/events.md.in");

    // Every field the workload produced is in the field reference.
    let documented: BTreeSet<String> = template
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect();
    let mut produced = BTreeSet::new();
    for r in records.iter().chain(&ocsf_records) {
        paths(r, "", &mut produced);
    }
    let undocumented: Vec<String> = produced
        .iter()
        .map(|p| documented_name(p))
        .filter(|p| !documented.contains(p))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        undocumented.is_empty(),
        "fields missing from docs/events.md.in: {undocumented:?}"
    );

    // Pretty-printing keeps every field and value.
    for raw in examples.values().chain(ocsf.values()) {
        let back: Value = serde_json::from_str(&pretty(raw)).expect("pretty is JSON");
        assert_eq!(back, serde_json::from_str::<Value>(raw).expect("json"));
    }

    let rendered = render(&template, &examples, &ocsf, &lines, &ocsf_lines);
    for (c, (count, min, median, max, constant)) in sizes(&lines) {
        println!(
            "record bytes {c:12} n={count:3} min={min} median={median} max={max} stream-constant={constant}"
        );
        // Every record names who made it (the choice docs/events.md explains).
        assert!(
            constant > 0 && constant < min,
            "{c}: stream-constant fields take {constant} of {min}..{max} bytes"
        );
    }
    let path = docs_dir().join("events.md");
    if std::env::var_os("KEYTRAIL_UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).expect("write docs/events.md");
    }
    let committed = std::fs::read_to_string(&path).expect(
        "docs/events.md is missing: run KEYTRAIL_UPDATE_DOCS=1 cargo nextest run --test events_doc",
    );
    let (want, have) = (structure(&rendered), structure(&committed));
    if want != have {
        let first = want
            .lines()
            .zip(have.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("\n  expected: {a}\n  committed: {b}"))
            .unwrap_or_else(|| "length differs".into());
        panic!(
            "docs/events.md is out of date ({first}); regenerate it with \
             KEYTRAIL_UPDATE_DOCS=1 cargo nextest run --test events_doc"
        );
    }
}

#[test]
fn pretty_keeps_order_and_structure() {
    let raw = r#"{"b":1,"a":{"z":"x,\"}]","y":[1,2]},"c":[{"k":true},{"k":null}]}"#;
    let p = pretty(raw);
    assert!(p.find("\"b\"") < p.find("\"a\""), "{p}");
    assert!(p.find("\"z\"") < p.find("\"y\""), "{p}");
    assert_eq!(
        serde_json::from_str::<Value>(&p).expect("json"),
        serde_json::from_str::<Value>(raw).expect("json")
    );
    assert!(p.lines().count() > 3, "{p}");
    assert_eq!(
        documented_name("pkcs11.keys.wrapping.label"),
        "pkcs11.keys.<role>"
    );
    assert_eq!(documented_name("pkcs11.key.label"), "pkcs11.key.label");
}
