//! The readers (`show`, `report`, `verify`) on hostile input: text that would drive a
//! terminal, timestamps that are not what they seem, endless lines, FIFOs, and a great
//! many streams. Whatever a trail holds, a reader prints it escaped, does not panic, and
//! keeps its memory bounded.

mod common;

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use unicode_general_category::{GeneralCategory as Gc, get_general_category};

fn keytrail_bin() -> PathBuf {
    keytrail_module()
        .parent()
        .expect("target dir")
        .join("keytrail")
}

fn run(args: &[&OsStrArg]) -> Output {
    Command::new(keytrail_bin())
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("run keytrail")
}

type OsStrArg = std::ffi::OsStr;

fn arg(s: &str) -> &OsStrArg {
    OsStrArg::new(s)
}

/// The characters every output must escape: Unicode's Cc, Cf, Zl and Zp.
fn must_escape(c: char) -> bool {
    matches!(
        get_general_category(c),
        Gc::Control | Gc::Format | Gc::LineSeparator | Gc::ParagraphSeparator
    )
}

/// Every such character, in one string.
fn all_controls() -> String {
    (0..=u32::from(char::MAX))
        .filter_map(char::from_u32)
        .filter(|c| must_escape(*c))
        .collect()
}

/// The characters of `out` that must never reach a terminal (line ends apart).
fn raw_controls(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .chars()
        .filter(|c| must_escape(*c) && *c != '\n')
        .map(|c| format!("U+{:04X}", c as u32))
        .collect()
}

/// Peak resident memory of the children this test process has waited for, in KiB.
fn children_max_rss_kib() -> i64 {
    // SAFETY (test): getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY (test): as above.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss
}

/// A real trail: a key (labelled `label`) made and used.
fn real_trail(fx: &Fixture, label: &str) -> Vec<String> {
    let p = open(&keytrail_module());
    let s = user_session(&p);
    let key = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(vec![1]),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
            ],
        )
        .expect("key");
    s.encrypt(&Mechanism::AesCbcPad([0; 16]), key, b"x")
        .expect("encrypt");
    drop(s);
    p.finalize().expect("finalize");
    std::fs::read_to_string(fx.trail_path())
        .expect("trail")
        .lines()
        .map(str::to_string)
        .collect()
}

/// A real trail whose free text — key label, user and process names, token label,
/// context labels, messages, stream ids — is `planted`.
fn planted_trail(fx: &Fixture, planted: &str) -> Vec<String> {
    let trail = real_trail(fx, planted);
    assert!(
        trail.iter().any(|l| l.contains("\\u001b")),
        "the label reached the trail, escaped as JSON"
    );
    trail
        .iter()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("json");
            v["user"]["name"] = planted.into();
            v["process"]["name"] = planted.into();
            v["labels"] = serde_json::json!({ planted: planted });
            v["message"] = format!("m{planted}").into();
            v["integrity"]["stream"] = format!("s{planted}").into();
            if v["pkcs11"].is_object() {
                v["pkcs11"]["token"]["label"] = planted.into();
                v["pkcs11"]["auth"]["username"] = planted.into();
            }
            if v["event"]["action"] == "trail_start" {
                v["keytrail"]["module"] = planted.into();
                v["keytrail"]["version"] = planted.into();
            }
            serde_json::to_string(&v).expect("json")
        })
        .collect()
}

/// Whether some string in `v` contains `needle`.
fn holds(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.contains(needle),
        Value::Array(a) => a.iter().any(|v| holds(v, needle)),
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.contains(needle) || holds(v, needle)),
        _ => false,
    }
}

#[test]
fn every_output_escapes_controls_format_characters_and_separators() {
    let fx = Fixture::new();
    let planted = all_controls();
    let lines = planted_trail(&fx, &planted);
    // The file's own name carries an escape sequence too.
    let file = fx.path().join("trail\u{1b}]0;owned\u{7}\u{202e}.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let f = file.as_os_str();
    let runs: [(&str, Vec<&OsStrArg>); 6] = [
        ("show", vec![arg("show"), arg("--color"), arg("never"), f]),
        (
            "show --utc",
            vec![arg("show"), arg("--utc"), arg("--color"), arg("never"), f],
        ),
        ("report", vec![arg("report"), f]),
        ("report --json", vec![arg("report"), arg("--json"), f]),
        ("verify", vec![arg("verify"), f]),
        ("verify --json", vec![arg("verify"), arg("--json"), f]),
    ];
    for (name, args) in runs {
        let o = run(&args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.code().is_some_and(|c| c < 100),
            "{name}: {:?}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.lines().count() > 3, "{name} printed too little:\n{out}");
        let raw = raw_controls(&o.stdout);
        assert!(raw.is_empty(), "{name} printed raw {raw:?}:\n{out}");
        let raw = raw_controls(&o.stderr);
        assert!(raw.is_empty(), "{name} printed raw {raw:?} on stderr");
        if name.ends_with("--json") {
            // Still the same JSON: the planted text is there once parsed.
            let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
            assert!(holds(&v, &planted), "{name}:\n{out}");
        } else {
            // The escapes are there, not just the characters gone.
            assert!(out.contains("\\u{1b}"), "{name}:\n{out}");
            assert!(
                out.contains("\\u{202e}") && out.contains("\\u{2028}"),
                "{name}"
            );
        }
    }
}

#[test]
fn crafted_timestamps_do_not_stop_show() {
    let fx = Fixture::new();
    let lines = real_trail(&fx, "k");
    let mut crafted: Vec<String> = Vec::new();
    for stamp in [
        "2026-01-02T03:04:05.67\u{20ac}Z",
        "2026-01-02\u{e9}03:04:05.678901Z",
        "2026-01-02T\u{1b}[2J:05.678901Z",
        "\u{20ac}026-01-02T03:04:05.678901Z",
        "",
        "Z",
    ] {
        let mut v: Value = serde_json::from_str(&lines[1]).expect("json");
        v["@timestamp"] = stamp.into();
        crafted.push(serde_json::to_string(&v).expect("json"));
    }
    crafted.push(lines.last().expect("stop").clone());
    let file = fx.path().join("crafted.jsonl");
    std::fs::write(&file, crafted.join("\n") + "\n").expect("write");
    for utc in [true, false] {
        let mut args = vec![arg("show"), arg("--color"), arg("never"), file.as_os_str()];
        if utc {
            args.insert(1, arg("--utc"));
        }
        let o = run(&args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "utc {utc}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // Every record shown, the last one included.
        let records = out.lines().filter(|l| !l.starts_with("===")).count();
        assert_eq!(records, crafted.len(), "utc {utc}:\n{out}");
        assert!(out.contains("trail_stop"), "utc {utc}:\n{out}");
        assert!(raw_controls(&o.stdout).is_empty(), "utc {utc}:\n{out}");
    }
}

/// Feeds `head` bytes of zeros (one endless line) and then `tail` to `keytrail ARGS
/// /dev/stdin`, returning its output.
fn pipe_in(args: &[&str], zeros: usize, tail: &[u8]) -> Output {
    let mut child = Command::new(keytrail_bin())
        .args(args)
        .arg("/dev/stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keytrail");
    let mut stdin = child.stdin.take().expect("stdin");
    let tail = tail.to_vec();
    let feeder = std::thread::spawn(move || {
        let block = vec![0u8; 1 << 20];
        let mut left = zeros;
        while left > 0 {
            let n = left.min(block.len());
            if stdin.write_all(&block[..n]).is_err() {
                return;
            }
            left -= n;
        }
        let _ = stdin.write_all(b"\n");
        let _ = stdin.write_all(&tail);
    });
    let o = child.wait_with_output().expect("wait");
    feeder.join().expect("feeder");
    o
}

#[test]
fn an_endless_line_is_damaged_read_in_bounded_memory_and_reading_goes_on() {
    let fx = Fixture::new();
    let lines = real_trail(&fx, "k");
    let tail = lines.join("\n") + "\n";
    const ZEROS: usize = 200 << 20;
    let o = pipe_in(&["show", "--color", "never"], ZEROS, tail.as_bytes());
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("{ZEROS} bytes long, over the 1048576-byte limit")),
        "{err}"
    );
    assert!(
        out.contains("trail_stop"),
        "the records after it are shown:\n{out}"
    );
    let o = pipe_in(&["verify"], ZEROS, tail.as_bytes());
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("over the 1048576-byte limit"), "{out}");
    assert!(
        out.contains(&format!("valid: seq 1..{}", lines.len())),
        "{out}"
    );
    let o = pipe_in(&["report"], ZEROS, tail.as_bytes());
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 damaged lines skipped"));
    // A reader that held the line would have needed its 200 MiB at least.
    let rss = children_max_rss_kib();
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
}

#[test]
fn a_fifo_is_read_once_and_whole() {
    let fx = Fixture::new();
    let lines = real_trail(&fx, "k");
    // Enough records to fill the pipe many times over.
    let mut many = Vec::new();
    for _ in 0..400 {
        many.extend(lines.iter().cloned());
    }
    let fifo = fx.path().join("trail.fifo.jsonl");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY (test): a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let writer = {
        let fifo = fifo.clone();
        let text = many.join("\n") + "\n";
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open FIFO for writing");
            f.write_all(text.as_bytes()).is_ok()
        })
    };
    let child = Command::new(keytrail_bin())
        .args(["show", "--color", "never"])
        .arg(&fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keytrail");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    // A reader that opens the FIFO a second time waits for a writer forever; give up
    // after a minute rather than hang the suite.
    let result = rx.recv_timeout(std::time::Duration::from_secs(60));
    let done = result.is_ok();
    if !done {
        // SAFETY (test): our own child, by its pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Unblock the writer if it still waits for a reader (without waiting for a
        // writer ourselves).
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
    }
    let wrote_all = writer.join().expect("writer");
    assert!(done, "keytrail show hung on a FIFO");
    let o = result.expect("finished").expect("wait");
    assert!(wrote_all, "the writer's data was cut off");
    let out = String::from_utf8_lossy(&o.stdout);
    let shown = out.lines().filter(|l| !l.starts_with("===")).count();
    assert_eq!(shown, many.len(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `n` one-record streams, each a valid `trail_start` (as a process killed right after
/// loading keytrail leaves).
fn one_record_streams(path: &Path, n: usize) {
    use sha2::Digest;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for i in 0..n {
        let prefix = format!(
            "{{\"@timestamp\":\"2026-12-03T10:25:46.{:06}Z\",\"event\":{{\"kind\":\"event\",\"action\":\"trail_start\",\"outcome\":\"success\",\"sequence\":1}},\"pkcs11\":{{\"lifecycle\":\"audit\"}},\"keytrail\":{{\"module\":\"/usr/lib/softhsm/libsofthsm2.so\",\"version\":\"0.1.0\"}},\"user\":{{\"name\":\"app\",\"id\":\"1000\"}},\"process\":{{\"pid\":{},\"name\":\"worker\"}},\"integrity\":{{\"stream\":\"{:032x}\",\"seq\":1,\"prev\":null",
            i % 1_000_000,
            100_000 + i,
            0x5eed_0000_0000_0000_0000_0000_0000_0000u128 + i as u128
        );
        let hash = hex::encode(sha2::Sha256::digest(prefix.as_bytes()));
        writeln!(out, "{prefix},\"hash\":\"{hash}\"}}}}").expect("write");
    }
    out.flush().expect("flush");
}

#[test]
fn verify_memory_stays_small_per_stream() {
    let dir = tempfile::tempdir().expect("dir");
    let trail = dir.path().join("many.jsonl");
    const STREAMS: usize = 100_000;
    one_record_streams(&trail, STREAMS);
    for json in [false, true] {
        let mut c = Command::new(keytrail_bin());
        c.args(["verify", "-q"]);
        if json {
            c.arg("--json");
        }
        let o = c
            .arg(&trail)
            .stdout(Stdio::piped())
            .output()
            .expect("verify");
        assert_eq!(o.status.code(), Some(3), "every stream is open");
        let out = String::from_utf8_lossy(&o.stdout);
        if json {
            let v: Value = serde_json::from_slice(&o.stdout).expect("json");
            assert_eq!(v["streams"].as_array().map(Vec::len), Some(STREAMS));
            assert_eq!(v["streams"][7]["start"]["process"], "worker");
        } else {
            assert_eq!(out.matches("OPEN: seq 1..1").count(), STREAMS);
        }
    }
    // About 0.5 KiB a stream (50 MiB here); holding every stream's report, or the whole
    // JSON text, at once took 2 KiB a stream and more.
    let rss = children_max_rss_kib();
    assert!(rss < 128 * 1024, "peak RSS {rss} KiB for {STREAMS} streams");
}
