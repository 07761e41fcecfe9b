//! keytrail's memory under a sustained audited load with a slow sink: several threads
//! make HMACs through the built `libkeytrail.so` for a while, the trail being a FIFO that
//! a reader thread drains at a limited rate, so the writer falls behind, the queue fills
//! and (with `on_full = "wait"`) callers wait for room. Resident memory should then stop
//! growing at about the queue's size.
//!
//! Run it with `scripts/bench-memory.sh`, which makes a scratch token, writes keytrail's
//! configuration for each queue size and runs this once per size. Environment:
//!
//! - `SOFTHSM2_CONF`, `KEYTRAIL_CONFIG`, `KEYTRAIL_SO` as for the overhead bench;
//! - `BENCH_FIFO`: the trail path named in the configuration; made a FIFO here and read by
//!   a thread of this process at `BENCH_SINK_RATE` bytes/s (default 1 MB/s). Without it
//!   the trail is whatever the configuration says;
//! - `BENCH_THREADS` (8), `BENCH_SECONDS` (10).
//!
//! Prints memory once a second and a final `result` line of `key=value` pairs.

mod common;

use common::{attr, expect_rv, load_table, mechanism};
use cryptoki_sys::*;
use std::ffi::c_void;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const USER_PIN: &[u8] = b"1234";

/// Calls a function of a table: `ck!(fns, C_Sign(a, b, c, d, e))`.
macro_rules! ck {
    ($fns:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        let f = $fns.$f.expect(concat!(stringify!($f), " missing from the table"));
        // SAFETY: every argument is either a value or a pointer to a live local of the
        // caller that has the size and type the PKCS#11 specification gives it for
        // this function; the table belongs to a library that is never unloaded.
        unsafe { f($($arg),*) }
    }};
}

/// A field of /proc/self/status in kB (VmRSS, VmHWM).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map_or(default, |v| v.parse().expect(name))
}

/// Makes `path` a FIFO and drains it at `rate` bytes/s on a thread; the count of bytes
/// read is in the returned counter.
fn slow_reader(path: PathBuf, rate: u64) -> Arc<AtomicU64> {
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let rv = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rv, 0, "mkfifo {}", path.display());
    let read = Arc::new(AtomicU64::new(0));
    let counter = read.clone();
    std::thread::Builder::new()
        .name("slow-reader".into())
        .spawn(move || {
            // Blocks until keytrail's writer opens the FIFO for writing.
            let mut f = std::fs::File::open(&path).expect("open FIFO");
            let mut buf = vec![0u8; 16 * 1024];
            let start = Instant::now();
            let mut total = 0u64;
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                total += n as u64;
                counter.store(total, Ordering::Relaxed);
                let due = Duration::from_secs_f64(total as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        })
        .expect("reader thread");
    read
}

fn main() {
    let threads = env_u64("BENCH_THREADS", 8) as usize;
    let seconds = env_u64("BENCH_SECONDS", 10);
    let rate = env_u64("BENCH_SINK_RATE", 1_000_000);
    let keytrail_so = std::env::var_os("KEYTRAIL_SO").map_or_else(
        || PathBuf::from("target/release/libkeytrail.so"),
        PathBuf::from,
    );
    let sink_read = std::env::var_os("BENCH_FIFO")
        .filter(|v| !v.is_empty())
        .map(|p| slow_reader(PathBuf::from(p), rate));
    let fns = load_table(&keytrail_so);
    // keytrail starts its writer, and allocates its queue, on the first record
    // (C_Initialize's).
    let before_rss = status_kb("VmRSS");

    let mut init_args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    let init_ptr = &mut init_args as *mut CK_C_INITIALIZE_ARGS as *mut c_void;
    expect_rv(ck!(fns, C_Initialize(init_ptr)), &[CKR_OK], "C_Initialize");
    let mut slots = [0 as CK_SLOT_ID; 8];
    let mut count = slots.len() as CK_ULONG;
    expect_rv(
        ck!(fns, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut count)),
        &[CKR_OK],
        "C_GetSlotList",
    );
    assert!(count > 0, "no token: check SOFTHSM2_CONF");
    let slot = slots[0];
    let open = || {
        let mut h = 0;
        expect_rv(
            ck!(
                fns,
                C_OpenSession(
                    slot,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    std::ptr::null_mut(),
                    None,
                    &mut h
                )
            ),
            &[CKR_OK],
            "C_OpenSession",
        );
        let mut pin = USER_PIN.to_vec();
        expect_rv(
            ck!(
                fns,
                C_Login(h, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
            ),
            &[CKR_OK, CKR_USER_ALREADY_LOGGED_IN],
            "C_Login",
        );
        h
    };
    let sessions: Vec<CK_SESSION_HANDLE> = (0..threads).map(|_| open()).collect();
    let key = {
        let (t, f, len) = (CK_TRUE, CK_FALSE, 32 as CK_ULONG);
        let (class, key_type) = (CKO_SECRET_KEY, CKK_GENERIC_SECRET);
        let mut template = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &key_type),
            attr(CKA_TOKEN, &f),
            attr(CKA_SIGN, &t),
            attr(CKA_VALUE_LEN, &len),
        ];
        let mut mech = mechanism(CKM_GENERIC_SECRET_KEY_GEN);
        let mut key = 0;
        expect_rv(
            ck!(
                fns,
                C_GenerateKey(
                    sessions[0],
                    &mut mech,
                    template.as_mut_ptr(),
                    template.len() as CK_ULONG,
                    &mut key
                )
            ),
            &[CKR_OK],
            "C_GenerateKey",
        );
        key
    };
    // Let the writer write what setting up made, then take the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let baseline_rss = status_kb("VmRSS");
    let baseline_hwm = status_kb("VmHWM");
    println!(
        "size_of::<Event>() = {} bytes; VmRSS {before_rss} kB before keytrail started; after setup VmRSS {baseline_rss} kB, VmHWM {baseline_hwm} kB",
        std::mem::size_of::<keytrail::audit::event::Event>()
    );

    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for &s in &sessions {
            let (stop, ops) = (&stop, &ops);
            scope.spawn(move || {
                let (mut data, mut mac) = ([0x5au8; 64], [0u8; 32]);
                while !stop.load(Ordering::Relaxed) {
                    let mut mech = mechanism(CKM_SHA256_HMAC);
                    expect_rv(
                        ck!(fns, C_SignInit(s, &mut mech, key)),
                        &[CKR_OK],
                        "C_SignInit",
                    );
                    let mut len = mac.len() as CK_ULONG;
                    expect_rv(
                        ck!(
                            fns,
                            C_Sign(
                                s,
                                data.as_mut_ptr(),
                                data.len() as CK_ULONG,
                                mac.as_mut_ptr(),
                                &mut len
                            )
                        ),
                        &[CKR_OK],
                        "C_Sign",
                    );
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for t in 1..=seconds {
            std::thread::sleep(Duration::from_secs(1));
            println!(
                "t={t:>3}s ops={:>9} VmRSS={:>7} kB VmHWM={:>7} kB sink_read={} B",
                ops.load(Ordering::Relaxed),
                status_kb("VmRSS"),
                status_kb("VmHWM"),
                sink_read.as_ref().map_or(0, |r| r.load(Ordering::Relaxed))
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let n = ops.load(Ordering::Relaxed);
    let hwm = status_kb("VmHWM");
    println!(
        "result threads={threads} seconds={elapsed:.1} ops={n} ops_per_s={:.0} before_rss_kb={before_rss} baseline_rss_kb={baseline_rss} vmhwm_kb={hwm} vmrss_kb={} growth_kb={} sink_bytes={} sink_rate={}",
        n as f64 / elapsed,
        status_kb("VmRSS"),
        hwm.saturating_sub(baseline_rss),
        sink_read.as_ref().map_or(0, |r| r.load(Ordering::Relaxed)),
        if sink_read.is_some() { rate } else { 0 },
    );
    // No C_Finalize: it would wait for the writer to push a full queue through the slow
    // sink. The process ends here; the trail's tail is not the point of this bench.
    std::process::exit(0);
}
