//! Drives records through a real `keytrail agent` (its own process, started here) as fast
//! as the agent takes them, and reports its sustained records per second and its CPU per
//! record (all its threads, from /proc/<pid>/task/*/schedstat: nanoseconds, not ticks).
//!
//! Environment: AGENT_RECORDS (records per sending thread, default 200,000),
//! AGENT_THREADS (sending threads, default 1), KEYTRAIL_BIN (the keytrail binary; by
//! default the one beside this example's directory, target/release/keytrail).
use keytrail::agent::client::{Connection, Sent, WhenFull};
use keytrail::config::OnFull;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
mod common;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nanoseconds of CPU the process's threads have run (a thread that ended is not
/// counted: the agent's drain thread for this process lives until the end of the run).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn main() {
    let per_thread = env("AGENT_RECORDS", 200_000);
    let threads = env("AGENT_THREADS", 1).max(1);
    let bin = std::env::var_os("KEYTRAIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("own path");
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("keytrail"))
                .expect("target directory")
        });
    let dir = std::env::temp_dir().join(format!("keytrail-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let socket = dir.join("agent.sock");
    let trail = dir.join("trail").join("trail.jsonl");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nsocket = \"{}\"\n[trail]\npath = \"{}\"\n",
            socket.display(),
            trail.display()
        ),
    )
    .expect("agent configuration");
    let mut agent = Command::new(&bin)
        .args(["agent", "--foreground", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo build --release --bin keytrail)",
                bin.display()
            )
        });
    let mut line = String::new();
    let mut out = BufReader::new(agent.stdout.take().expect("agent stdout"));
    out.read_line(&mut line).expect("agent says it listens");
    assert!(line.contains("listening"), "agent: {line}");

    let conn = Arc::new(Connection::connect(&socket, Some("throughput")).expect("connect"));
    let e = common::sign_record_with_identity();
    let e = Arc::new(e);
    // Let the agent settle (its drain thread may be asleep: the first record wakes it).
    std::thread::sleep(Duration::from_millis(200));
    let cpu_before = cpu_ns(agent.id());
    let start = Instant::now();
    let senders: Vec<_> = (0..threads)
        .map(|_| {
            let (conn, e) = (conn.clone(), e.clone());
            std::thread::spawn(move || {
                let failing = AtomicBool::new(false);
                let full = WhenFull {
                    on_full: OnFull::Wait,
                    wait: Duration::from_secs(30),
                    failing: &failing,
                    leave: false,
                };
                for _ in 0..per_thread {
                    assert_eq!(conn.send(&e, &full), Sent::Ok);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender");
    }
    assert!(
        conn.flush(Duration::from_secs(60)),
        "agent drained the ring"
    );
    let elapsed = start.elapsed();
    // The last batch is written after the ring is drained: wait for the trail to settle.
    let mut size = 0;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = std::fs::metadata(&trail).map_or(0, |m| m.len());
        if now == size {
            break;
        }
        size = now;
    }
    let cpu = cpu_ns(agent.id()).saturating_sub(cpu_before);
    let n = per_thread * threads;
    println!(
        "agent: {n} records from {threads} thread(s) in {:.3} s: {:.0} records/s sustained; \
         agent CPU {:.0} ms, {:.2} µs per record ({:.0} records/s per core)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        cpu as f64 / 1e6,
        cpu as f64 / n as f64 / 1e3,
        n as f64 * 1e9 / cpu.max(1) as f64
    );
    // SIGTERM, for an orderly stop (a profiler around the agent writes its counts then).
    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
