//! The HSM seal's cost: what one seal (one checkpoint) costs on SoftHSM2, and what sealing
//! does to the chain's sustained records per second at several checkpoint intervals,
//! down from the default (60 s).
//!
//! Every measurement runs in its own process (this binary with `--child`), in interleaved
//! rounds, so that no configuration pays for another's module state or threads. The driver
//! makes a scratch SoftHSM2 token with a P-256 and an Ed25519 sealing key (through
//! `keytrail::seal::create_key`, as `keytrail seal-key` does), then prints the median and
//! min–max over the rounds.
//!
//! `cargo bench --bench seal`. Environment: SOFTHSM2_MODULE (default: the usual Debian
//! path), BENCH_ROUNDS (default 5), BENCH_ROUND_MS (default 1000, per child).
//!
//! Times are CPU time of the child (the machine may be shared); checkpoints follow the wall
//! clock, as in the writer. The record loop is the writer's own work on a record: encode, chain, and `tick` (which
//! writes a checkpoint, sealed or not, once the interval has passed); no file I/O, so the
//! seal's share is as large as it can be.

use keytrail::audit::event::{Event, Started};
use keytrail::config::Lifecycle;
use keytrail::seal::{HsmSealer, NewKey, SealAlg, SealConfig};
use keytrail::sink::chain::{Chain, Hasher, Sealer, seal_message};
use keytrail::sink::json::Origin;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "keytrail-seal-bench";
const PIN: &str = "1234";

/// CPU time of this process: the machine may be shared, and a descheduled child must not
/// look slow. SoftHSM signs on the calling thread, so a seal's cost is all in here.
fn cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn module() -> PathBuf {
    std::env::var_os("SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
}

fn sealer(dir: &Path, label: &str) -> HsmSealer {
    HsmSealer::new(SealConfig {
        module: module(),
        token_label: TOKEN.into(),
        key_label: Some(label.into()),
        key_id: None,
        pin_file: dir.join("pin"),
    })
    .unwrap_or_else(|e| panic!("sealer {label}: {e}"))
}

/// `--child seal LABEL DIR`: µs per seal.
fn child_seal(label: &str, dir: &Path, ms: u64) {
    let mut s = sealer(dir, label);
    let message = seal_message("0123456789abcdef0123456789abcdef", 1000, Some(&[7; 32]));
    for _ in 0..50 {
        s.seal(&message).expect("seal");
    }
    let (start, c0, mut n) = (Instant::now(), cpu(), 0u64);
    while start.elapsed() < Duration::from_millis(ms) {
        s.seal(&message).expect("seal");
        n += 1;
    }
    println!("{:.1}", (cpu() - c0).as_secs_f64() * 1e6 / n as f64);
}

/// `--child records INTERVAL_MS none|LABEL DIR`: records per second through the chain.
fn child_records(interval_ms: u64, label: &str, dir: &Path, ms: u64) {
    let mut chain = Chain::with(Hasher::Plain, Some(Duration::from_millis(interval_ms)));
    if label != "none" {
        chain.set_sealer(Arc::new(Mutex::new(sealer(dir, label))));
    }
    let origin = Origin::current(None);
    let mut out = Vec::with_capacity(1 << 20);
    let start_ev = Event::audit("trail_start", "start".into(), serde_json::json!({}));
    chain.append(&start_ev, &origin, &mut out);
    let record = || Event::call(Started::now(), "C_Sign", "sign", Lifecycle::Use, 0);
    let (start, c0, mut n, mut checkpoints) = (Instant::now(), cpu(), 0u64, 0u64);
    while start.elapsed() < Duration::from_millis(ms) {
        for _ in 0..64 {
            chain.append(&record(), &origin, &mut out);
            if chain.tick(&origin, &mut out) {
                checkpoints += 1;
            }
            n += 1;
        }
        out.clear();
    }
    println!(
        "{:.0}\t{checkpoints}",
        n as f64 / (cpu() - c0).as_secs_f64()
    );
}

fn run_child(args: &[&str]) -> Vec<f64> {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .arg("--child")
        .args(args)
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "child {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().expect("number"))
        .collect()
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:>10.1}  ({:.1}–{:.1})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ms = var("BENCH_ROUND_MS", 1000);
    if args.first().map(String::as_str) == Some("--child") {
        let a: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        match a.as_slice() {
            ["seal", label, dir] => child_seal(label, Path::new(dir), ms),
            ["records", interval, label, dir] => child_records(
                interval.parse().expect("interval"),
                label,
                Path::new(dir),
                ms,
            ),
            _ => panic!("unknown child {a:?}"),
        }
        return;
    }
    // `cargo bench` passes --bench; nothing else is expected.
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokens");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("conf");
    // SAFETY: single-threaded driver, before any child or module is started.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let ok = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN, "--pin", PIN])
        .args(["--so-pin", "5678"])
        .output()
        .expect("softhsm2-util (install softhsm2)")
        .status
        .success();
    assert!(ok, "softhsm2-util --init-token failed");
    let pin = dir.path().join("pin");
    std::fs::write(&pin, PIN).expect("pin");
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for (label, alg) in [("p256", SealAlg::P256), ("ed25519", SealAlg::Ed25519)] {
        keytrail::seal::create_key(&NewKey {
            module: module(),
            token_label: TOKEN.into(),
            pin_file: pin.clone(),
            label: label.into(),
            id: None,
            alg: Some(alg),
        })
        .unwrap_or_else(|e| panic!("create {label}: {e}"));
    }
    let d = dir.path().to_str().expect("path");
    let rounds = var("BENCH_ROUNDS", 5);
    println!("HSM seal on SoftHSM2: {rounds} rounds, {ms} ms per child process; median (min–max)");
    println!("\nCPU µs per seal (one per checkpoint):");
    for label in ["p256", "ed25519"] {
        let v = (0..rounds)
            .map(|_| run_child(&["seal", label, d])[0])
            .collect();
        println!("  {label:<8} {}", summary(v));
    }
    println!(
        "\nrecords per CPU second through the chain (encode + hash + tick), by checkpoint interval:"
    );
    for interval in ["60000", "1000", "100", "10"] {
        let mut cols = Vec::new();
        for label in ["none", "p256", "ed25519"] {
            let mut rates = Vec::new();
            let mut cps = Vec::new();
            for _ in 0..rounds {
                let r = run_child(&["records", interval, label, d]);
                rates.push(r[0]);
                cps.push(r[1]);
            }
            cps.sort_by(f64::total_cmp);
            cols.push(format!(
                "{label}: {} [{} checkpoints]",
                summary(rates),
                cps[cps.len() / 2]
            ));
        }
        println!("  {interval:>6} ms  {}", cols.join("   "));
    }
}
