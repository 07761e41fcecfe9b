//! A small seeded fuzzer for the readers: the real records of docs/events.md, mutated
//! at the JSON level (odd types, huge numbers, multi-byte text where ASCII is expected)
//! and at the byte level, then read by `show`, `report` and `verify` end to end. Nothing a
//! trail holds may panic a reader.

use serde_json::Value;
use std::io::Write;

/// xorshift64*: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Every record shown in docs/events.md, one line each.
fn samples() -> Vec<Value> {
    let doc = include_str!("../../docs/events.md");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find("```json\n") {
        let block = &rest[i + 8..];
        let end = block.find("```").unwrap_or(block.len());
        if let Ok(v) = serde_json::from_str::<Value>(&block[..end]) {
            out.push(v);
        }
        rest = &block[end..];
    }
    out
}

/// Values that have broken readers: multi-byte text where digits are expected, huge and
/// negative numbers, controls, wrong types.
fn odd_value(rng: &mut Rng) -> Value {
    let texts = [
        "2026-01-02T03:04:05.67\u{20ac}Z",
        "2026-01-02\u{e9}03:04:05.678901Z",
        "\u{202e}\u{2028}\u{1b}[2J\u{0}",
        "\u{10ffff}\u{e0001}",
        "",
        "Z",
        "T",
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "null",
        ",\"integrity\":{\"stream\":\"",
    ];
    match rng.below(8) {
        0 => Value::from(*rng.pick(&texts)),
        1 => Value::from(u64::MAX - rng.below(3) as u64),
        2 => Value::from(-1i64 - rng.below(5) as i64),
        3 => Value::from(rng.below(4) as u64),
        4 => Value::Null,
        5 => serde_json::json!([{"a": [1, "x"]}]),
        6 => serde_json::json!({"label": texts[2], "seq": 1e300}),
        _ => Value::from(true),
    }
}

/// Sets a randomly chosen field somewhere in `v` to an odd value.
fn mutate_value(v: &mut Value, rng: &mut Rng, depth: usize) {
    if let Value::Object(map) = v {
        if map.is_empty() {
            return;
        }
        let key = map
            .keys()
            .nth(rng.below(map.len()))
            .cloned()
            .unwrap_or_default();
        let child = map.get_mut(&key).expect("key present");
        if depth < 4 && child.is_object() && rng.below(3) > 0 {
            mutate_value(child, rng, depth + 1);
        } else {
            *child = odd_value(rng);
        }
    }
}

/// Byte-level damage: flips, cuts, splices of multi-byte characters.
fn mutate_bytes(line: &mut Vec<u8>, rng: &mut Rng) {
    match rng.below(4) {
        0 if !line.is_empty() => {
            let i = rng.below(line.len());
            line[i] ^= 1 << rng.below(8);
        }
        1 => line.truncate(rng.below(line.len() + 1)),
        2 => {
            let i = rng.below(line.len() + 1);
            let bits: &[&[u8]] = &["\u{20ac}".as_bytes(), b"\xff\xfe", b"\"", b"}", b"\\u0000"];
            let bytes = rng.pick(bits);
            line.splice(i..i, bytes.iter().copied());
        }
        _ => {
            let i = rng.below(line.len() + 1);
            let tail = line[i..].to_vec();
            line.extend_from_slice(&tail);
        }
    }
}

/// `n` damaged and odd lines, reproducibly from `seed`.
fn cases(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let samples = samples();
    assert!(samples.len() >= 10, "docs/events.md has its examples");
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|_| {
            let mut v = rng.pick(&samples).clone();
            for _ in 0..=rng.below(3) {
                mutate_value(&mut v, &mut rng, 0);
            }
            let mut line = serde_json::to_vec(&v).expect("json");
            if rng.below(3) == 0 {
                mutate_bytes(&mut line, &mut rng);
            }
            line.retain(|b| *b != b'\n');
            line
        })
        .collect()
}

#[test]
fn no_trail_content_panics_a_reader() {
    let dir = tempfile::tempdir().expect("dir");
    for seed in [1, 0x5eed, 0xdead_beef] {
        let file = dir.path().join(format!("fuzz-{seed}.jsonl"));
        let mut f = std::fs::File::create(&file).expect("create");
        for line in cases(seed, 1500) {
            f.write_all(&line).expect("write");
            f.write_all(b"\n").expect("write");
        }
        drop(f);
        let inputs = vec![file.clone()];
        for utc in [true, false] {
            super::show::run(&super::show::ShowArgs {
                inputs: inputs.clone(),
                filter: Default::default(),
                utc,
                color: super::show::ColorChoice::Never,
                keep_order: true,
                quiet: true,
            })
            .expect("show");
        }
        for json in [true, false] {
            super::report::run(&super::report::ReportArgs {
                inputs: inputs.clone(),
                filter: Default::default(),
                max_rows: 5,
                json,
                keep_order: true,
                quiet: true,
            })
            .expect("report");
            super::verify::run(&super::verify::VerifyArgs {
                inputs: inputs.clone(),
                key: None,
                initial_key: None,
                seal_key: None,
                head: Vec::new(),
                json,
                keep_order: true,
                collected: false,
                quiet: true,
            })
            .expect("verify");
        }
        let config = dir.path().join("watch.toml");
        std::fs::write(&config, "[watch]\n").expect("config");
        super::watch::run(&super::watch::WatchArgs {
            inputs: inputs.clone(),
            config: Some(config),
            once: true,
            key: None,
            initial_key: None,
            state: Some(dir.path().join("watch.state")),
            alerts: Some(dir.path().join("alerts.out")),
        })
        .expect("watch");
    }
}
