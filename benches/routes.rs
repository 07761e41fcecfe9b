//! Per-process overhead benchmark: every route runs in its own process, as an application
//! sees it, so that no route pays for another's threads (glibc's malloc and locks leave
//! their single-threaded fast paths as soon as a process has a second thread).
//!
//! A route is only "which module, which environment": the table in [`routes`]. The driver
//! (this binary without `--child`) runs rounds; in each round it starts one child process
//! per route, in a rotated order, and each child runs every workload for about
//! `BENCH_ROUND_MS` after a warm-up and prints one `workload<TAB>ns/op` line per workload.
//! The driver then prints, per workload, each route's median ns/op and its ratio to
//! "direct" and to "direct + idle thread", with the min–max of the per-round ratios.
//!
//! Run it with `scripts/bench.sh`, which makes the token and the configurations.
//! Environment (set by the script): SOFTHSM2_CONF, SOFTHSM2_MODULE, KEYTRAIL_SO,
//! BENCH_CONFIG_FULL, BENCH_CONFIG_OFF, BENCH_CONFIG_AGENT (keytrail configurations), BENCH_SPY_SO with
//! PKCS11SPY/PKCS11SPY_OUTPUT, BENCH_P11KIT_SO, BENCH_ROUNDS, BENCH_ROUND_MS,
//! BENCH_WARMUP_MS, BENCH_JSON. A child run with BENCH_SIGNATURES=n makes exactly n HMAC
//! signatures instead (scripts/bench.sh measures trail bytes per 1,000 signatures so), and
//! one run with BENCH_ITERS=n does exactly n operations of each workload (instruction
//! counts under `valgrind --tool=callgrind`: scripts/bench-instructions.sh).
mod common;

use common::{attr, check, load_average, load_table, mechanism};
use cryptoki_sys::*;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USER_PIN: &[u8] = b"1234";
const LABEL: &str = "keytrail-bench";

/// One way of reaching SoftHSM: the module a child loads and the environment it gets.
struct RouteSpec {
    name: &'static str,
    module: PathBuf,
    env: Vec<(&'static str, String)>,
    /// Start one idle thread before loading the module.
    idle_thread: bool,
    /// Send the child's stderr to /dev/null (p11-kit's log-calls writes there).
    quiet_stderr: bool,
    /// Only this workload (routes that matter for one workload keep the run short).
    only: Option<&'static str>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The routes present on this machine. Adding a route is one entry here.
fn routes() -> Vec<RouteSpec> {
    let softhsm = PathBuf::from(
        var("SOFTHSM2_MODULE").unwrap_or_else(|| "/usr/lib/softhsm/libsofthsm2.so".into()),
    );
    let keytrail =
        PathBuf::from(var("KEYTRAIL_SO").unwrap_or_else(|| "target/release/libkeytrail.so".into()));
    let direct = |name, idle_thread| RouteSpec {
        name,
        module: softhsm.clone(),
        env: vec![],
        idle_thread,
        quiet_stderr: false,
        only: None,
    };
    let mut v = vec![
        direct("direct", false),
        direct("direct + idle thread", true),
    ];
    // BENCH_BASELINE_SO: another build of keytrail (say, before a change), full audit,
    // interleaved with this one.
    let baseline = var("BENCH_BASELINE_SO").map(PathBuf::from);
    for (name, config, module) in [
        ("keytrail", "BENCH_CONFIG_FULL", Some(&keytrail)),
        (
            "keytrail categories=[]",
            "BENCH_CONFIG_OFF",
            Some(&keytrail),
        ),
        (
            "keytrail on_full=drop",
            "BENCH_CONFIG_DROP",
            Some(&keytrail),
        ),
        (
            "keytrail baseline build",
            "BENCH_CONFIG_FULL",
            baseline.as_ref(),
        ),
        // Full audit recorded by `keytrail agent` (started by scripts/bench.sh).
        ("keytrail agent", "BENCH_CONFIG_AGENT", Some(&keytrail)),
        // The other build through this build's agent: for a change that keeps the ring's
        // record layout (an agent refuses a library of another layout).
        (
            "keytrail agent baseline build",
            "BENCH_CONFIG_AGENT",
            baseline.as_ref(),
        ),
        (
            "keytrail agent categories=[]",
            "BENCH_CONFIG_AGENT_OFF",
            Some(&keytrail),
        ),
        // `sessions = "summary"`, embedded and agent: only sessions change, so only the
        // session workload runs.
        (
            "keytrail sessions=summary",
            "BENCH_CONFIG_SESSIONS",
            Some(&keytrail),
        ),
        (
            "keytrail agent sessions=summary",
            "BENCH_CONFIG_AGENT_SESSIONS",
            Some(&keytrail),
        ),
    ] {
        if let (Some(c), Some(module)) = (var(config), module) {
            v.push(RouteSpec {
                name,
                module: module.clone(),
                env: vec![("KEYTRAIL_CONFIG", c)],
                idle_thread: false,
                // The drop route says on stderr each time it starts dropping.
                quiet_stderr: name == "keytrail on_full=drop",
                only: name
                    .ends_with("sessions=summary")
                    .then_some(SESSION_WORKLOAD),
            });
        }
    }
    if let Some(spy) = var("BENCH_SPY_SO") {
        v.push(RouteSpec {
            name: "pkcs11-spy",
            module: spy.into(),
            env: vec![],
            idle_thread: false,
            quiet_stderr: false,
            only: None,
        });
    }
    if let Some(p11kit) = var("BENCH_P11KIT_SO") {
        v.push(RouteSpec {
            name: "p11-kit log-calls",
            module: p11kit.into(),
            env: vec![],
            idle_thread: false,
            quiet_stderr: true,
            only: None,
        });
    }
    v
}

/// The workload of the session routes.
const SESSION_WORKLOAD: &str = "OpenSession + CloseSession";

const WORKLOADS: &[&str] = &[
    "C_GetSessionInfo",
    "C_GetAttributeValue (key type)",
    "HMAC-SHA256 64 B",
    "AES-GCM 1 KiB",
    "AES keygen + destroy",
    "OpenSession + CloseSession",
    "HMAC-SHA256, 2 threads (ns per op)",
];

fn env_u64(name: &str, default: u64) -> u64 {
    var(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--child") {
        child();
    } else {
        driver();
    }
}

// ---------------------------------------------------------------------------- driver

fn driver() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.to_lowercase())
        .collect();
    let rounds = env_u64("BENCH_ROUNDS", 7).max(1) as usize;
    let routes = routes();
    let exe = std::env::current_exe().expect("current_exe");
    let load_before = load_average();
    // samples[route][workload][round]
    let mut samples = vec![vec![Vec::new(); WORKLOADS.len()]; routes.len()];
    // The writer thread's CPU time per operation, the same way.
    let mut writer = vec![vec![Vec::new(); WORKLOADS.len()]; routes.len()];
    eprintln!(
        "routes: {} routes in separate processes, {rounds} interleaved rounds",
        routes.len()
    );
    for round in 0..rounds {
        for k in 0..routes.len() {
            let i = (round + k) % routes.len();
            let r = &routes[i];
            let args = match r.only {
                None => filters.clone(),
                Some(w)
                    if filters.is_empty()
                        || filters
                            .iter()
                            .any(|f| w.to_lowercase().contains(f.as_str())) =>
                {
                    vec![w.to_lowercase()]
                }
                Some(_) => continue,
            };
            let mut cmd = Command::new(&exe);
            cmd.arg("--child")
                .args(&args)
                .env("BENCH_MODULE", &r.module)
                .env("BENCH_IDLE_THREAD", if r.idle_thread { "1" } else { "0" })
                .stdout(Stdio::piped());
            for (k, v) in &r.env {
                cmd.env(k, v);
            }
            if r.quiet_stderr {
                cmd.stderr(Stdio::null());
            }
            let out = cmd.output().expect("cannot start the child");
            assert!(
                out.status.success(),
                "{}: child failed: {}",
                r.name,
                out.status
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some((w, ns)) = line.split_once('\t') else {
                    continue;
                };
                if let Some(w) = w.strip_prefix("writer ") {
                    if let (Some(j), Ok(ns)) =
                        (WORKLOADS.iter().position(|x| *x == w), ns.parse::<f64>())
                    {
                        writer[i][j].push(ns);
                    }
                    continue;
                }
                if let (Some(j), Ok(ns)) =
                    (WORKLOADS.iter().position(|x| *x == w), ns.parse::<f64>())
                {
                    samples[i][j].push(ns);
                }
            }
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    let load_after = load_average();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    };
    // Ratio of route i to baseline b per round (same round, adjacent processes).
    let ratios = |i: usize, b: usize, j: usize| -> (f64, f64, f64) {
        let r: Vec<f64> = samples[i][j]
            .iter()
            .zip(&samples[b][j])
            .map(|(x, y)| x / y)
            .collect();
        let min = r.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        (median(&r), min, max)
    };
    println!();
    println!(
        "ns/op, median of {rounds} rounds; ratio to direct [min–max over rounds]; ratio to direct + idle thread [min–max]"
    );
    println!();
    print!("| workload |");
    for r in &routes {
        print!(" {} |", r.name);
    }
    println!();
    print!("|:--|");
    for _ in &routes {
        print!("--:|");
    }
    println!();
    let mut json = String::from("[");
    for (j, w) in WORKLOADS.iter().enumerate() {
        if samples[0][j].is_empty() {
            continue;
        }
        print!("| {w} |");
        for i in 0..routes.len() {
            let m = median(&samples[i][j]);
            if samples[i][j].is_empty() {
                print!(" – |");
                continue;
            } else if i == 0 {
                print!(" {m:.0} |");
            } else {
                let (d, dmin, dmax) = ratios(i, 0, j);
                let (t, tmin, tmax) = ratios(i, 1, j);
                print!(" {m:.0} ({d:.2} [{dmin:.2}–{dmax:.2}]; {t:.2} [{tmin:.2}–{tmax:.2}]) |");
            }
            json.push_str(&format!(
                "{}{{\"workload\":\"{w}\",\"route\":\"{}\",\"ns_per_op\":{:?}}}",
                if json.len() > 1 { "," } else { "" },
                routes[i].name,
                samples[i][j]
            ));
        }
        println!();
    }
    json.push(']');
    if writer.iter().flatten().any(|v| !v.is_empty()) {
        println!();
        println!(
            "writer thread CPU time per operation (ns, median of the rounds [min–max]; /proc schedstat)"
        );
        println!();
        for (j, w) in WORKLOADS.iter().enumerate() {
            for (i, r) in routes.iter().enumerate() {
                let v = &writer[i][j];
                if v.is_empty() {
                    continue;
                }
                let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
                let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                println!(
                    "| {w} | {} | {:.0} [{min:.0}–{max:.0}] |",
                    r.name,
                    median(v)
                );
            }
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let (Some(a), Some(b)) = (load_before, load_after) {
        println!("\nload average {a:.2} before, {b:.2} after, {cpus} CPUs");
    }
    if let Some(path) = var("BENCH_JSON") {
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
        println!("JSON written to {path}");
    }
}

// ----------------------------------------------------------------------------- child

/// A loaded module's function table.
#[derive(Clone, Copy)]
struct Fns(&'static CK_FUNCTION_LIST);

macro_rules! ck {
    ($fns:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        let f = $fns.0.$f.expect(concat!(stringify!($f), " missing from the table"));
        // SAFETY: every argument is a value or a pointer to a live local of the caller
        // with the size and type the PKCS#11 specification gives it for this function;
        // the table belongs to a library that is never unloaded.
        unsafe { f($($arg),*) }
    }};
}

fn load(path: &Path) -> Fns {
    Fns(load_table(path))
}

fn open(f: Fns, slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
    let mut h = 0;
    check(
        ck!(
            f,
            C_OpenSession(
                slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                std::ptr::null_mut(),
                None,
                &mut h
            )
        ),
        "C_OpenSession",
    );
    h
}

fn gen_key(f: Fns, s: CK_SESSION_HANDLE, hmac: bool) -> CK_OBJECT_HANDLE {
    let (t, fa, len) = (CK_TRUE, CK_FALSE, 32 as CK_ULONG);
    let (class, kt) = (CKO_SECRET_KEY, CKK_GENERIC_SECRET);
    let mut tmpl = if hmac {
        vec![
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr(CKA_TOKEN, &fa),
            attr(CKA_SIGN, &t),
            attr(CKA_VALUE_LEN, &len),
        ]
    } else {
        vec![
            attr(CKA_TOKEN, &fa),
            attr(CKA_ENCRYPT, &t),
            attr(CKA_DECRYPT, &t),
            attr(CKA_VALUE_LEN, &len),
        ]
    };
    let mut m = mechanism(if hmac {
        CKM_GENERIC_SECRET_KEY_GEN
    } else {
        CKM_AES_KEY_GEN
    });
    let mut key = 0;
    check(
        ck!(
            f,
            C_GenerateKey(
                s,
                &mut m,
                tmpl.as_mut_ptr(),
                tmpl.len() as CK_ULONG,
                &mut key
            )
        ),
        "C_GenerateKey",
    );
    key
}

fn hmac(
    f: Fns,
    s: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    data: &mut [u8; 64],
    out: &mut [u8; 32],
) {
    let mut m = mechanism(CKM_SHA256_HMAC);
    check(ck!(f, C_SignInit(s, &mut m, key)), "C_SignInit");
    let mut len = out.len() as CK_ULONG;
    check(
        ck!(
            f,
            C_Sign(s, data.as_mut_ptr(), 64, out.as_mut_ptr(), &mut len)
        ),
        "C_Sign",
    );
}

/// Operations run by [`time`] (warm-up included), for the writer's CPU time per operation.
static OPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// CPU time (ns) of the process's keytrail writer threads so far, from
/// /proc/self/task/*/schedstat; `None` when there is none.
fn writer_cpu_ns() -> Option<u64> {
    let mut total = None;
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != "keytrail-writer" {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        if let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            *total.get_or_insert(0) += ns;
        }
    }
    total
}

/// Runs `op` (which does `n` operations when given `n`) for a warm-up, then for about
/// `round`, and returns ns per operation. With BENCH_ITERS=n it runs exactly n operations,
/// without a warm-up (for instruction counts, which need a known number of operations).
fn time(warmup: Duration, round: Duration, mut op: impl FnMut(u64)) -> f64 {
    if let Some(n) = var("BENCH_ITERS").and_then(|v| v.parse::<u64>().ok()) {
        let t = Instant::now();
        op(n);
        OPS.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        return t.elapsed().as_nanos() as f64 / n.max(1) as f64;
    }
    let start = Instant::now();
    let mut n = 1u64;
    let mut done = 0u64;
    while start.elapsed() < warmup {
        op(n);
        OPS.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        done += n;
        n = (n * 2).min(1 << 20);
    }
    let per = start.elapsed().as_nanos() as f64 / done.max(1) as f64;
    let iters = ((round.as_nanos() as f64 / per) as u64).max(1);
    let t = Instant::now();
    op(iters);
    OPS.fetch_add(iters, std::sync::atomic::Ordering::Relaxed);
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// Keeps the calling thread on `cpu`, or (`None`) lets it run on every CPU the process
/// started with. Threads keytrail started before (an embedded writer) keep every CPU: the
/// scheduler puts them beside the pinned caller, as it would an agent.
fn pin_calling_thread(cpu: Option<usize>) {
    static ALL: std::sync::OnceLock<libc::cpu_set_t> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| {
        // SAFETY: cpu_set_t is plain bits; sched_getaffinity fills it for this thread.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid set of the size given.
        unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        set
    });
    let mut set = *all;
    if let Some(cpu) = cpu {
        // SAFETY: plain bits, then one bit set within the set's size.
        unsafe {
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(cpu, &mut set);
        }
    }
    // SAFETY: a valid set of the size given, for the calling thread (0).
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        eprintln!(
            "routes: cannot pin to CPU {cpu:?}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn child() {
    if env_u64("BENCH_IDLE_THREAD", 0) == 1 {
        // An application that has one other thread, doing nothing.
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let warmup = Duration::from_millis(env_u64("BENCH_WARMUP_MS", 100));
    let round = Duration::from_millis(env_u64("BENCH_ROUND_MS", 300));
    let f = load(Path::new(&var("BENCH_MODULE").expect("BENCH_MODULE")));
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    check(
        ck!(f, C_Initialize(&mut args as *mut _ as *mut c_void)),
        "C_Initialize",
    );
    let slot = find_slot(f);
    let s = open(f, slot);
    let mut pin = USER_PIN.to_vec();
    check(
        ck!(
            f,
            C_Login(s, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
        ),
        "C_Login",
    );
    let hkey = gen_key(f, s, true);
    let akey = gen_key(f, s, false);
    let wanted = |w: &str| {
        filters.is_empty()
            || filters
                .iter()
                .any(|x| w.to_lowercase().contains(x.as_str()))
    };
    let mut data = [7u8; 64];
    let mut mac = [0u8; 32];
    if let Some(count) = var("BENCH_SIGNATURES") {
        // Trail volume: exactly this many HMAC signatures, and nothing timed.
        let count: u64 = count.parse().expect("BENCH_SIGNATURES: a number");
        for _ in 0..count {
            hmac(f, s, hkey, &mut data, &mut mac);
        }
    }
    for w in WORKLOADS
        .iter()
        .filter(|_| var("BENCH_SIGNATURES").is_none())
    {
        if !wanted(w) {
            continue;
        }
        let writer_before = writer_cpu_ns();
        let ops_before = OPS.load(std::sync::atomic::Ordering::Relaxed);
        // A single-threaded workload's thread stays on one CPU (BENCH_PIN_CPU), so that a
        // round does not move between CPUs; the two-thread one gets every CPU back.
        pin_calling_thread(if w.contains("2 threads") {
            None
        } else {
            var("BENCH_PIN_CPU").and_then(|c| c.parse().ok())
        });
        let ns = match *w {
            "C_GetSessionInfo" => time(warmup, round, |n| {
                let mut info = CK_SESSION_INFO::default();
                for _ in 0..n {
                    check(ck!(f, C_GetSessionInfo(s, &mut info)), "C_GetSessionInfo");
                }
            }),
            "C_GetAttributeValue (key type)" => time(warmup, round, |n| {
                let mut kt: CK_KEY_TYPE = 0;
                for _ in 0..n {
                    let mut a = [attr(CKA_KEY_TYPE, &kt)];
                    check(
                        ck!(f, C_GetAttributeValue(s, akey, a.as_mut_ptr(), 1)),
                        "C_GetAttributeValue",
                    );
                    kt = std::hint::black_box(kt);
                }
            }),
            "HMAC-SHA256 64 B" => time(warmup, round, |n| {
                for _ in 0..n {
                    hmac(f, s, hkey, &mut data, &mut mac);
                }
            }),
            "AES-GCM 1 KiB" => time(warmup, round, |n| {
                let mut iv = [0u8; 12];
                let mut input = [1u8; 1024];
                let mut output = [0u8; 1024 + 16];
                for i in 0..n {
                    iv[..8].copy_from_slice(&i.to_le_bytes());
                    let mut p = CK_GCM_PARAMS {
                        pIv: iv.as_mut_ptr(),
                        ulIvLen: 12,
                        ulIvBits: 96,
                        pAAD: std::ptr::null_mut(),
                        ulAADLen: 0,
                        ulTagBits: 128,
                    };
                    let mut m = CK_MECHANISM {
                        mechanism: CKM_AES_GCM,
                        pParameter: &mut p as *mut _ as *mut c_void,
                        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
                    };
                    check(ck!(f, C_EncryptInit(s, &mut m, akey)), "C_EncryptInit");
                    let mut len = output.len() as CK_ULONG;
                    check(
                        ck!(
                            f,
                            C_Encrypt(s, input.as_mut_ptr(), 1024, output.as_mut_ptr(), &mut len)
                        ),
                        "C_Encrypt",
                    );
                }
            }),
            "AES keygen + destroy" => time(warmup, round, |n| {
                for _ in 0..n {
                    let k = gen_key(f, s, false);
                    check(ck!(f, C_DestroyObject(s, k)), "C_DestroyObject");
                }
            }),
            "OpenSession + CloseSession" => time(warmup, round, |n| {
                for _ in 0..n {
                    let h = open(f, slot);
                    check(ck!(f, C_CloseSession(h)), "C_CloseSession");
                }
            }),
            "HMAC-SHA256, 2 threads (ns per op)" => time(warmup, round, |n| {
                // Two threads, each with its own session, n/2 signatures each: wall time
                // per signature, the inverse of throughput.
                std::thread::scope(|sc| {
                    for _ in 0..2 {
                        sc.spawn(|| {
                            let s2 = open(f, slot);
                            let (mut d, mut o) = ([7u8; 64], [0u8; 32]);
                            for _ in 0..n.div_ceil(2) {
                                hmac(f, s2, hkey, &mut d, &mut o);
                            }
                            check(ck!(f, C_CloseSession(s2)), "C_CloseSession");
                        });
                    }
                });
            }),
            _ => continue,
        };
        println!("{w}\t{ns}");
        let ops = OPS.load(std::sync::atomic::Ordering::Relaxed) - ops_before;
        if let (Some(a), Some(b)) = (writer_before, writer_cpu_ns())
            && ops > 0
        {
            println!("writer {w}\t{}", (b - a) as f64 / ops as f64);
        }
    }
    check(ck!(f, C_CloseSession(s)), "C_CloseSession");
    check(ck!(f, C_Finalize(std::ptr::null_mut())), "C_Finalize");
}

fn find_slot(f: Fns) -> CK_SLOT_ID {
    common::find_slot(f.0, LABEL)
        .unwrap_or_else(|| panic!("no token labelled {LABEL:?}: check SOFTHSM2_CONF"))
}
