//! keytrail's overhead: the same PKCS#11 calls made straight into SoftHSM2 ("direct") and
//! through the built `libkeytrail.so` ("keytrail"), and optionally through OpenSC's
//! pkcs11-spy as a point of comparison.
//!
//! Run it with `scripts/bench.sh`, which builds the cdylib, makes a scratch token and sets
//! the environment this harness reads:
//!
//! - `SOFTHSM2_CONF`, `KEYTRAIL_CONFIG`: the scratch token store and keytrail's
//!   configuration (naming the same SoftHSM2 module as `SOFTHSM2_MODULE`);
//! - `SOFTHSM2_MODULE` (default `/usr/lib/softhsm/libsofthsm2.so`), `KEYTRAIL_SO`
//!   (default `target/release/libkeytrail.so`);
//! - `BENCH_SPY_SO`: pkcs11-spy, enabled only when set (with `PKCS11SPY` and
//!   `PKCS11SPY_OUTPUT`);
//! - `BENCH_P11KIT_SO`: p11-kit's proxy module, enabled only when set, configured (by
//!   bench.sh) with SoftHSM as its one module and `log-calls: yes`. That log goes to
//!   stderr, so this process's stderr is sent to `BENCH_P11KIT_OUTPUT` (default
//!   /dev/null) and the harness reports on a copy of the original;
//! - `BENCH_TRAIL_FILE`: keytrail's trail; when set, each workload also reports what the
//!   trail took (records and bytes per operation, ns per record on the calling thread,
//!   writer-thread CPU per record);
//! - `BENCH_JSON`: also write the results there; `BENCH_ROUNDS` (20), `BENCH_ROUND_MS`
//!   (200), `BENCH_WARMUP_MS` (150) tune the run.
//!
//! Every route reaches the *same* SoftHSM instance: the dynamic loader hands out one copy
//! of a library per process, whether the harness opens it or keytrail (or pkcs11-spy, or
//! p11-kit) does. `C_Initialize` is called once, through keytrail; the harness checks that
//! the direct table then answers `CKR_CRYPTOKI_ALREADY_INITIALIZED`, and that every other
//! route finds the user already logged in (login state is the instance's). Slots are
//! found by token label, as p11-kit's proxy numbers them its own way. Each route then opens its
//! own sessions and makes its own keys through its own function table, so both sides do
//! the same work in the same module and the difference is the route.
//!
//! Calls go through raw `cryptoki-sys` function pointers, as a C application's would; no
//! wrapper crate adds its own cost. Rounds alternate between routes (the first route
//! rotates each round); each workload reports the median of its per-round ns/op.
//!
//! To add a route, add a [`Route`] in `main`; to add a workload, add a [`Workload`] to
//! [`workloads`].

mod common;

use common::{attr, attr_bytes, check, expect_rv, load_average, load_table, mechanism};
use cryptoki_sys::*;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

const USER_PIN: &[u8] = b"1234";
/// DER of the OID prime256v1 (P-256), the value of CKA_EC_PARAMS.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// One way of reaching the module: a PKCS#11 function table.
#[derive(Clone, Copy)]
struct Route {
    name: &'static str,
    fns: &'static CK_FUNCTION_LIST,
    /// The bench token's slot as this route numbers it (p11-kit renumbers slots).
    slot: CK_SLOT_ID,
}

/// Calls a function of a route's table: `ck!(route, C_Sign(a, b, c, d, e))`.
macro_rules! ck {
    ($route:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        let f = $route.fns.$f.expect(concat!(stringify!($f), " missing from the table"));
        // SAFETY: every argument is either a value or a pointer to a live local of the
        // caller that has the size and type the PKCS#11 specification gives it for
        // this function; the table belongs to a library that is never unloaded.
        unsafe { f($($arg),*) }
    }};
}

/// A logged-in read-write session of one route, closed on drop.
struct Session {
    route: Route,
    handle: CK_SESSION_HANDLE,
}

impl Session {
    fn open(route: Route, slot: CK_SLOT_ID) -> Session {
        let mut handle = 0;
        check(
            ck!(
                route,
                C_OpenSession(
                    slot,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    std::ptr::null_mut(),
                    None,
                    &mut handle,
                )
            ),
            "C_OpenSession",
        );
        // Login state is per application, and all routes are one application to SoftHSM:
        // whoever logs in second is told so.
        let mut pin = USER_PIN.to_vec();
        expect_rv(
            ck!(
                route,
                C_Login(handle, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
            ),
            &[CKR_OK, CKR_USER_ALREADY_LOGGED_IN],
            "C_Login",
        );
        Session { route, handle }
    }

    /// A session AES-256 key (CKA_TOKEN false).
    fn aes_key(&self) -> CK_OBJECT_HANDLE {
        let (t, f, len) = (CK_TRUE, CK_FALSE, 32 as CK_ULONG);
        let mut template = [
            attr(CKA_TOKEN, &f),
            attr(CKA_ENCRYPT, &t),
            attr(CKA_DECRYPT, &t),
            attr(CKA_VALUE_LEN, &len),
        ];
        self.generate(CKM_AES_KEY_GEN, &mut template)
    }

    /// A session HMAC key: a 256-bit generic secret.
    fn hmac_key(&self) -> CK_OBJECT_HANDLE {
        let (t, f, len) = (CK_TRUE, CK_FALSE, 32 as CK_ULONG);
        let (class, key_type) = (CKO_SECRET_KEY, CKK_GENERIC_SECRET);
        let mut template = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &key_type),
            attr(CKA_TOKEN, &f),
            attr(CKA_SIGN, &t),
            attr(CKA_VERIFY, &t),
            attr(CKA_VALUE_LEN, &len),
        ];
        self.generate(CKM_GENERIC_SECRET_KEY_GEN, &mut template)
    }

    fn generate(&self, mech: CK_MECHANISM_TYPE, template: &mut [CK_ATTRIBUTE]) -> CK_OBJECT_HANDLE {
        let mut mech = mechanism(mech);
        let mut key = 0;
        check(
            ck!(
                self.route,
                C_GenerateKey(
                    self.handle,
                    &mut mech,
                    template.as_mut_ptr(),
                    template.len() as CK_ULONG,
                    &mut key,
                )
            ),
            "C_GenerateKey",
        );
        key
    }

    /// A session P-256 key pair; returns the private key.
    fn p256_private_key(&self) -> CK_OBJECT_HANDLE {
        let (t, f) = (CK_TRUE, CK_FALSE);
        let mut public = [
            attr(CKA_TOKEN, &f),
            attr(CKA_VERIFY, &t),
            attr_bytes(CKA_EC_PARAMS, P256_PARAMS),
        ];
        let mut private = [
            attr(CKA_TOKEN, &f),
            attr(CKA_PRIVATE, &t),
            attr(CKA_SENSITIVE, &t),
            attr(CKA_SIGN, &t),
        ];
        let mut mech = mechanism(CKM_EC_KEY_PAIR_GEN);
        let (mut public_key, mut private_key) = (0, 0);
        check(
            ck!(
                self.route,
                C_GenerateKeyPair(
                    self.handle,
                    &mut mech,
                    public.as_mut_ptr(),
                    public.len() as CK_ULONG,
                    private.as_mut_ptr(),
                    private.len() as CK_ULONG,
                    &mut public_key,
                    &mut private_key,
                )
            ),
            "C_GenerateKeyPair",
        );
        private_key
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let rv = ck!(self.route, C_CloseSession(self.handle));
        if rv != CKR_OK && !std::thread::panicking() {
            panic!("C_CloseSession returned {rv:#x}");
        }
    }
}

/// One HMAC-SHA256 of 64 bytes: C_SignInit + C_Sign.
fn hmac_once(s: &Session, key: CK_OBJECT_HANDLE, data: &mut [u8; 64], mac: &mut [u8; 32]) {
    let mut mech = mechanism(CKM_SHA256_HMAC);
    check(
        ck!(s.route, C_SignInit(s.handle, &mut mech, key)),
        "C_SignInit",
    );
    let mut len = mac.len() as CK_ULONG;
    check(
        ck!(
            s.route,
            C_Sign(
                s.handle,
                data.as_mut_ptr(),
                data.len() as CK_ULONG,
                mac.as_mut_ptr(),
                &mut len,
            )
        ),
        "C_Sign",
    );
}

/// What one timed run did.
struct Sample {
    elapsed: Duration,
    ops: u64,
}

/// Runs `n` operations of a workload on one route and says how long they took.
type Runner = Box<dyn FnMut(u64) -> Sample>;

/// A workload: for a route, prepares its sessions and keys (untimed) and returns its
/// runner. Whatever the runner owns (sessions, keys) is released when it is dropped.
struct Workload {
    name: &'static str,
    prepare: fn(Route, CK_SLOT_ID) -> Runner,
}

/// A runner that owns `session` until it is dropped and runs `n` operations with `op`.
///
/// Passing the session by reference keeps it whole: a `move` closure that only read its
/// `Copy` fields would capture copies of those, and the session would close as soon as
/// `prepare` returned.
fn with_session(session: Session, mut op: impl FnMut(&Session, u64) -> Sample + 'static) -> Runner {
    Box::new(move |n| op(&session, n))
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let rv = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rv, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Times `n` iterations of `op` on the calling thread.
fn timed(n: u64, mut op: impl FnMut()) -> Sample {
    let start = Instant::now();
    for _ in 0..n {
        op();
    }
    Sample {
        elapsed: start.elapsed(),
        ops: n,
    }
}

/// The workload that measures keytrail's cost on the calling thread alone: HMACs in
/// bursts of [`BURST`] operations, each shorter than the writer queue (8192 records by
/// default; one HMAC makes one record), with a pause of [`BURST_GAP`] before each burst in
/// which the writer drains the queue. It counts the calling thread's CPU time during the
/// bursts (not wall time: on a small machine keytrail's writer, draining meanwhile, takes
/// CPU from the caller, which is the writer's cost, not the caller's). The same bursts and
/// pauses run on every route.
const HMAC_BURSTS: &str = "HMAC-SHA256 bursts of 4000, caller CPU";
/// The same for session open+close (two records each), in bursts of 2000.
const SESSION_BURSTS: &str = "C_OpenSession+C_CloseSession bursts of 2000, caller CPU";
const BURST: u64 = 4000;
const BURST_GAP: Duration = Duration::from_millis(25);

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "C_GetSessionInfo",
            prepare: |route, slot| {
                let s = Session::open(route, slot);
                with_session(s, |s, n| {
                    let mut info = CK_SESSION_INFO::default();
                    timed(n, || {
                        check(
                            ck!(s.route, C_GetSessionInfo(s.handle, &mut info)),
                            "C_GetSessionInfo",
                        )
                    })
                })
            },
        },
        Workload {
            name: "HMAC-SHA256 sign 64 B",
            prepare: |route, slot| {
                let s = Session::open(route, slot);
                let key = s.hmac_key();
                with_session(s, move |s, n| {
                    let (mut data, mut mac) = ([0x5a; 64], [0; 32]);
                    timed(n, || hmac_once(s, key, &mut data, &mut mac))
                })
            },
        },
        Workload {
            name: HMAC_BURSTS,
            prepare: |route, slot| {
                let s = Session::open(route, slot);
                let key = s.hmac_key();
                with_session(s, move |s, n| {
                    let (mut data, mut mac) = ([0x5a; 64], [0; 32]);
                    let (mut left, mut elapsed) = (n, Duration::ZERO);
                    while left > 0 {
                        // Untimed: time for keytrail's writer to empty the queue, so that
                        // every burst is handed over without waiting for room.
                        std::thread::sleep(BURST_GAP);
                        let b = left.min(BURST);
                        let start = thread_cpu_time();
                        for _ in 0..b {
                            hmac_once(s, key, &mut data, &mut mac);
                        }
                        elapsed += thread_cpu_time() - start;
                        left -= b;
                    }
                    Sample { elapsed, ops: n }
                })
            },
        },
        Workload {
            name: "ECDSA P-256 sign",
            prepare: |route, slot| {
                let s = Session::open(route, slot);
                let key = s.p256_private_key();
                with_session(s, move |s, n| {
                    let (mut digest, mut sig) = ([0xa5u8; 32], [0u8; 64]);
                    timed(n, || {
                        let mut mech = mechanism(CKM_ECDSA);
                        check(
                            ck!(s.route, C_SignInit(s.handle, &mut mech, key)),
                            "C_SignInit",
                        );
                        let mut len = sig.len() as CK_ULONG;
                        check(
                            ck!(
                                s.route,
                                C_Sign(
                                    s.handle,
                                    digest.as_mut_ptr(),
                                    digest.len() as CK_ULONG,
                                    sig.as_mut_ptr(),
                                    &mut len,
                                )
                            ),
                            "C_Sign",
                        );
                    })
                })
            },
        },
        Workload {
            name: "AES-256 keygen+destroy",
            prepare: |route, slot| {
                let s = Session::open(route, slot);
                with_session(s, |s, n| {
                    timed(n, || {
                        let key = s.aes_key();
                        check(
                            ck!(s.route, C_DestroyObject(s.handle, key)),
                            "C_DestroyObject",
                        );
                    })
                })
            },
        },
        Workload {
            name: "C_OpenSession+C_CloseSession",
            prepare: |route, slot| {
                // The route's own logged-in session stays open meanwhile, as in the
                // other workloads.
                let s = Session::open(route, slot);
                with_session(s, move |s, n| {
                    timed(n, || {
                        let mut h = 0;
                        check(
                            ck!(
                                s.route,
                                C_OpenSession(
                                    slot,
                                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                    std::ptr::null_mut(),
                                    None,
                                    &mut h,
                                )
                            ),
                            "C_OpenSession",
                        );
                        check(ck!(s.route, C_CloseSession(h)), "C_CloseSession");
                    })
                })
            },
        },
        Workload {
            name: SESSION_BURSTS,
            prepare: |route, slot| {
                let s = Session::open(route, slot);
                with_session(s, move |s, n| {
                    let (mut left, mut elapsed) = (n, Duration::ZERO);
                    while left > 0 {
                        // As in HMAC_BURSTS; two records per operation.
                        std::thread::sleep(BURST_GAP);
                        let b = left.min(BURST / 2);
                        let start = thread_cpu_time();
                        for _ in 0..b {
                            let mut h = 0;
                            check(
                                ck!(
                                    s.route,
                                    C_OpenSession(
                                        slot,
                                        CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                        std::ptr::null_mut(),
                                        None,
                                        &mut h,
                                    )
                                ),
                                "C_OpenSession",
                            );
                            check(ck!(s.route, C_CloseSession(h)), "C_CloseSession");
                        }
                        elapsed += thread_cpu_time() - start;
                        left -= b;
                    }
                    Sample { elapsed, ops: n }
                })
            },
        },
        Workload {
            name: "AES-GCM encrypt 1 KiB",
            prepare: |route, slot| {
                let s = Session::open(route, slot);
                let key = s.aes_key();
                with_session(s, move |s, n| {
                    let mut iv = [0x11u8; 12];
                    let (mut plain, mut out) = ([0x22u8; 1024], [0u8; 1024 + 16]);
                    timed(n, || {
                        let mut params = CK_GCM_PARAMS {
                            pIv: iv.as_mut_ptr(),
                            ulIvLen: iv.len() as CK_ULONG,
                            ulIvBits: (iv.len() * 8) as CK_ULONG,
                            pAAD: std::ptr::null_mut(),
                            ulAADLen: 0,
                            ulTagBits: 128,
                        };
                        let mut mech = CK_MECHANISM {
                            mechanism: CKM_AES_GCM,
                            pParameter: &mut params as *mut CK_GCM_PARAMS as *mut c_void,
                            ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
                        };
                        check(
                            ck!(s.route, C_EncryptInit(s.handle, &mut mech, key)),
                            "C_EncryptInit",
                        );
                        let mut len = out.len() as CK_ULONG;
                        check(
                            ck!(
                                s.route,
                                C_Encrypt(
                                    s.handle,
                                    plain.as_mut_ptr(),
                                    plain.len() as CK_ULONG,
                                    out.as_mut_ptr(),
                                    &mut len,
                                )
                            ),
                            "C_Encrypt",
                        );
                        assert_eq!(len, 1024 + 16, "AES-GCM output length");
                    })
                })
            },
        },
        Workload {
            name: "HMAC-SHA256 2 threads",
            prepare: |route, slot| {
                const THREADS: usize = 2;
                let sessions: Vec<Session> =
                    (0..THREADS).map(|_| Session::open(route, slot)).collect();
                // Session keys are visible to every session of the application.
                let key = sessions[0].hmac_key();
                Box::new(move |n| {
                    let per_thread = n.div_ceil(THREADS as u64).max(1);
                    let barrier = Barrier::new(THREADS + 1);
                    let elapsed = std::thread::scope(|scope| {
                        for s in &sessions {
                            let barrier = &barrier;
                            scope.spawn(move || {
                                let (mut data, mut mac) = ([0x5a; 64], [0; 32]);
                                barrier.wait();
                                for _ in 0..per_thread {
                                    hmac_once(s, key, &mut data, &mut mac);
                                }
                            });
                        }
                        barrier.wait();
                        let start = Instant::now();
                        // Leaving the scope joins both threads.
                        start
                    })
                    .elapsed();
                    Sample {
                        elapsed,
                        ops: per_thread * THREADS as u64,
                    }
                })
            },
        },
    ]
}

/// Run parameters, from the environment.
struct Settings {
    rounds: usize,
    round: Duration,
    warmup: Duration,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
        Err(_) => default,
    }
}

/// Per-route statistics of one workload, over the rounds.
struct Stats {
    iters: u64,
    median: f64,
    min: f64,
    max: f64,
    p25: f64,
    p75: f64,
    /// Median over rounds of this route's ns/op divided by the baseline's in the same
    /// round: less sensitive to slow drift of the machine than the ratio of medians.
    paired_ratio: f64,
}

impl Stats {
    /// `ns_per_op[r]` and `baseline[r]` were measured in the same round `r`.
    fn of(iters: u64, ns_per_op: &[f64], baseline: &[f64]) -> Stats {
        let v = sorted(ns_per_op.to_vec());
        let q = |p: f64| quantile(&v, p);
        let ratios = sorted(ns_per_op.iter().zip(baseline).map(|(x, b)| x / b).collect());
        Stats {
            paired_ratio: quantile(&ratios, 0.5),
            iters,
            median: q(0.5),
            min: v[0],
            max: v[v.len() - 1],
            p25: q(0.25),
            p75: q(0.75),
        }
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The `p` quantile of sorted `v`, interpolating linearly.
fn quantile(v: &[f64], p: f64) -> f64 {
    let x = p * (v.len() - 1) as f64;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
}

struct Row {
    workload: &'static str,
    per_route: Vec<Stats>,
    trail: Option<TrailUse>,
}

/// Warm-up, then picks the iterations per round so that one round of this route takes
/// about `settings.round`. Returns them and the operations done while warming up.
fn calibrate(runner: &mut Runner, settings: &Settings) -> (u64, u64) {
    let mut n = 1;
    let mut spent = Duration::ZERO;
    let mut ops = 0;
    loop {
        let s = runner(n);
        spent += s.elapsed;
        ops += s.ops;
        if spent >= settings.warmup {
            break;
        }
        n = (n * 2).min(1 << 24);
    }
    let ns_per_op = spent.as_nanos() as f64 / ops as f64;
    (
        ((settings.round.as_nanos() as f64 / ns_per_op) as u64).max(1),
        ops,
    )
}

fn measure(
    workload: &Workload,
    routes: &[Route],
    settings: &Settings,
    meter: Option<&mut TrailMeter>,
) -> Row {
    let before = meter.map(|m| (m.settle(), m));
    let mut runners: Vec<Runner> = routes
        .iter()
        .map(|r| (workload.prepare)(*r, r.slot))
        .collect();
    let (iters, mut ops): (Vec<u64>, Vec<u64>) =
        runners.iter_mut().map(|r| calibrate(r, settings)).unzip();
    let mut samples = vec![Vec::with_capacity(settings.rounds); routes.len()];
    for round in 0..settings.rounds {
        for k in 0..routes.len() {
            let i = (round + k) % routes.len();
            let s = runners[i](iters[i]);
            ops[i] += s.ops;
            samples[i].push(s.elapsed.as_nanos() as f64 / s.ops as f64);
        }
    }
    drop(runners);
    let trail = before.map(|(start, m)| {
        let end = m.settle();
        TrailUse {
            ops: ops[KEYTRAIL],
            records: end.records - start.records,
            bytes: end.bytes - start.bytes,
            writer_ns: end.writer_ns.zip(start.writer_ns).map(|(e, s)| e - s),
        }
    });
    Row {
        workload: workload.name,
        per_route: iters
            .iter()
            .zip(&samples)
            .map(|(n, s)| Stats::of(*n, s, &samples[0]))
            .collect(),
        trail,
    }
}

/// Index of keytrail among the routes.
const KEYTRAIL: usize = 1;

/// What keytrail wrote while one workload ran (all routes' rounds, only keytrail audits).
struct TrailUse {
    /// Operations keytrail's route did (warm-up included).
    ops: u64,
    records: u64,
    bytes: u64,
    /// CPU time of keytrail's writer thread.
    writer_ns: Option<u64>,
}

/// Where the trail stands: records and bytes written so far, writer CPU time.
#[derive(Clone, Copy)]
struct TrailPoint {
    records: u64,
    bytes: u64,
    writer_ns: Option<u64>,
}

/// Follows keytrail's trail file (and its writer thread's CPU time) between workloads.
struct TrailMeter {
    path: PathBuf,
    at: TrailPoint,
}

impl TrailMeter {
    fn new(path: PathBuf) -> TrailMeter {
        TrailMeter {
            path,
            at: TrailPoint {
                records: 0,
                bytes: 0,
                writer_ns: None,
            },
        }
    }

    /// Waits until the writer has written everything (the file stops growing), then
    /// counts the new records.
    fn settle(&mut self) -> TrailPoint {
        use std::io::{Read, Seek, SeekFrom};
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = size(&self.path);
        let mut still = 0;
        while still < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = size(&self.path);
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            if f.seek(SeekFrom::Start(self.at.bytes)).is_ok() {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    self.at.records += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
                    self.at.bytes += n as u64;
                }
            }
        }
        self.at.writer_ns = writer_cpu_ns();
        self.at
    }
}

/// CPU time (ns) of keytrail's writer thread in this process, from
/// /proc/self/task/*/schedstat.
fn writer_cpu_ns() -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "keytrail-writer" {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

fn fmt_added(ns: f64) -> String {
    format!("{}{}", if ns >= 0.0 { "+" } else { "" }, fmt_ns(ns))
}

/// The table: workload | direct ns/op | then, for each other route: ns/op | ratio | ns added.
fn table(rows: &[Row], routes: &[Route]) -> String {
    let mut header = vec!["workload".to_string(), format!("{} ns/op", routes[0].name)];
    for r in &routes[1..] {
        header.push(format!("{} ns/op", r.name));
        header.push(if routes.len() > 2 {
            format!("{} ratio", r.name)
        } else {
            "ratio".into()
        });
        header.push(if routes.len() > 2 {
            format!("{} ns added", r.name)
        } else {
            "ns added".into()
        });
    }
    let mut lines = vec![header];
    for row in rows {
        let base = row.per_route[0].median;
        let mut line = vec![row.workload.to_string(), fmt_ns(base)];
        for s in &row.per_route[1..] {
            line.push(fmt_ns(s.median));
            line.push(format!("{:.3}", s.median / base));
            line.push(fmt_added(s.median - base));
        }
        lines.push(line);
    }
    markdown(&lines)
}

/// Renders rows (the first is the header) as a markdown table, the first column left
/// aligned and the others right aligned.
fn markdown(lines: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c == 0 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c == 0 {
                        format!(":{}", "-".repeat(*w - 1))
                    } else {
                        format!("{}:", "-".repeat(*w - 1))
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
        }
    }
    out
}

impl TrailUse {
    fn records_per_op(&self) -> f64 {
        self.records as f64 / self.ops as f64
    }
    fn bytes_per_record(&self) -> Option<f64> {
        (self.records > 0).then(|| self.bytes as f64 / self.records as f64)
    }
    fn bytes_per_1000_ops(&self) -> f64 {
        1000.0 * self.bytes as f64 / self.ops as f64
    }
    /// Only for workloads that audit their operations: otherwise the few records of
    /// setting up would carry the writer's idle wake-ups.
    fn writer_ns_per_record(&self) -> Option<f64> {
        self.writer_ns
            .filter(|_| self.records_per_op() >= 0.5)
            .map(|ns| ns as f64 / self.records as f64)
    }
}

/// keytrail's ns/op over direct's, per record the operation makes.
fn added_per_record(row: &Row) -> Option<f64> {
    let t = row.trail.as_ref()?;
    let rpo = t.records_per_op();
    (rpo >= 0.5).then(|| (row.per_route[KEYTRAIL].median - row.per_route[0].median) / rpo)
}

/// What the trail took per workload: records and bytes per operation, the calling
/// thread's cost per record, and the writer thread's CPU per record.
fn trail_table(rows: &[Row]) -> String {
    let mut lines = vec![
        [
            "workload",
            "records/op",
            "bytes/record",
            "bytes per 1000 ops",
            "ns added per record (caller)",
            "writer CPU ns/record",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or_else(|| "-".into(), f);
    for row in rows {
        let Some(t) = &row.trail else { continue };
        lines.push(vec![
            row.workload.to_string(),
            format!("{:.3}", t.records_per_op()),
            opt(t.bytes_per_record(), |b| format!("{b:.0}")),
            format!("{:.0}", t.bytes_per_1000_ops()),
            opt(added_per_record(row), fmt_added),
            opt(t.writer_ns_per_record(), fmt_ns),
        ]);
    }
    let mut out = markdown(&lines);
    out.push_str(
        "records and bytes: keytrail's trail growth over the workload (its sessions, keys and warm-up included) / keytrail's operations\n",
    );
    out
}

/// The calling thread's cost per record (bursts shorter than the queue) beside the rate
/// the writer thread can sustain.
fn caller_cost(rows: &[Row]) -> String {
    let mut out = String::new();
    let find = |name: &str| rows.iter().find(|r| r.workload == name);
    for name in [HMAC_BURSTS, SESSION_BURSTS] {
        if let Some(row) = find(name) {
            let added = row.per_route[KEYTRAIL].median - row.per_route[0].median;
            let _ = writeln!(
                out,
                "calling-thread cost, {name} (each burst shorter than the queue, drained in between): {} ns added per operation, {} ns per record",
                fmt_added(added),
                added_per_record(row).map_or_else(|| "-".into(), fmt_added)
            );
        }
    }
    let writer: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.trail.as_ref()?.writer_ns_per_record().map(|w| (r, w)))
        .filter(|(r, _)| r.trail.as_ref().is_some_and(|t| t.records > 10_000))
        .map(|(_, w)| w)
        .collect();
    if !writer.is_empty() {
        let w = quantile(&sorted(writer), 0.5);
        let _ = writeln!(
            out,
            "writer thread: {} ns of CPU per record (median over workloads): it can write about {:.0} records/s",
            fmt_ns(w),
            1e9 / w
        );
    }
    for name in ["HMAC-SHA256 sign 64 B", "HMAC-SHA256 2 threads"] {
        if let Some(row) = find(name) {
            let t = row.trail.as_ref();
            let rpo = t.map_or(1.0, TrailUse::records_per_op);
            let _ = writeln!(
                out,
                "sustained {name}: keytrail {:.0} ops/s = {:.0} records/s (direct {:.0} ops/s)",
                1e9 / row.per_route[KEYTRAIL].median,
                rpo * 1e9 / row.per_route[KEYTRAIL].median,
                1e9 / row.per_route[0].median
            );
        }
    }
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json(rows: &[Row], routes: &[Route], settings: &Settings) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\n  \"unit\": \"ns/op\",\n  \"statistic\": \"median of per-round ns/op; ratio = median / baseline median; paired_ratio = median of per-round ratios\",\n  \"rounds\": {},\n  \"round_ms\": {},\n  \"baseline\": {},\n  \"routes\": [{}],\n  \"workloads\": [",
        settings.rounds,
        settings.round.as_millis(),
        json_str(routes[0].name),
        routes
            .iter()
            .map(|r| json_str(r.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (i, row) in rows.iter().enumerate() {
        let base = row.per_route[0].median;
        let _ = write!(
            out,
            "{}\n    {{\n      \"workload\": {},\n      \"routes\": {{",
            if i == 0 { "" } else { "," },
            json_str(row.workload)
        );
        for (j, (route, s)) in routes.iter().zip(&row.per_route).enumerate() {
            let _ = write!(
                out,
                "{}\n        {}: {{\"ns_per_op\": {:.1}, \"ops_per_s\": {:.0}, \"ratio\": {:.4}, \"paired_ratio\": {:.4}, \"ns_added\": {:.1}, \"min\": {:.1}, \"p25\": {:.1}, \"p75\": {:.1}, \"max\": {:.1}, \"iters_per_round\": {}}}",
                if j == 0 { "" } else { "," },
                json_str(route.name),
                s.median,
                1e9 / s.median,
                s.median / base,
                s.paired_ratio,
                s.median - base,
                s.min,
                s.p25,
                s.p75,
                s.max,
                s.iters
            );
        }
        out.push_str("\n      }");
        if let Some(t) = &row.trail {
            let _ = write!(
                out,
                ",\n      \"trail\": {{\"ops\": {}, \"records\": {}, \"bytes\": {}, \"records_per_op\": {:.4}, \"bytes_per_1000_ops\": {:.0}, \"ns_added_per_record\": {}, \"writer_cpu_ns_per_record\": {}}}",
                t.ops,
                t.records,
                t.bytes,
                t.records_per_op(),
                t.bytes_per_1000_ops(),
                added_per_record(row).map_or_else(|| "null".into(), |v| format!("{v:.1}")),
                t.writer_ns_per_record()
                    .map_or_else(|| "null".into(), |v| format!("{v:.1}"))
            );
        }
        out.push_str("\n    }");
    }
    out.push_str("\n  ]\n}\n");
    out
}

fn env_path(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Where the harness reports progress: stderr, or (when the p11-kit route has stderr
/// diverted to swallow its call log) a copy of the original stderr.
static REPORT: OnceLock<std::fs::File> = OnceLock::new();

macro_rules! say {
    ($($t:tt)*) => { report(format_args!($($t)*)) };
}

fn report(args: std::fmt::Arguments) {
    use std::io::Write as _;
    match REPORT.get() {
        Some(mut f) => {
            let _ = writeln!(f, "{args}");
        }
        None => eprintln!("{args}"),
    }
}

/// Sends this process's stderr (fd 2) to `to`, keeping the original for the harness's own
/// messages and panics. p11-kit's `log-calls` writes every call to stderr, and one process
/// cannot give one library's stderr a file of its own.
fn divert_stderr(to: &Path) {
    use std::os::fd::{AsRawFd, FromRawFd};
    let sink = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(to)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", to.display()));
    // SAFETY: dup of an fd this process has open; the result is checked.
    let saved = unsafe { libc::dup(2) };
    assert!(saved >= 0, "dup(2) failed");
    // SAFETY: `saved` is a fresh descriptor that nothing else owns.
    let saved = unsafe { std::fs::File::from_raw_fd(saved) };
    let _ = REPORT.set(saved);
    std::panic::set_hook(Box::new(|info| report(format_args!("{info}"))));
    // SAFETY: both descriptors are open; dup2 replaces fd 2 atomically.
    let rv = unsafe { libc::dup2(sink.as_raw_fd(), 2) };
    assert!(rv == 2, "dup2 onto stderr failed");
}

/// The slot holding the token labelled `label`, as `route` numbers slots.
fn find_slot(route: Route, label: &str) -> CK_SLOT_ID {
    common::find_slot(route.fns, label).unwrap_or_else(|| {
        panic!(
            "{}: no token labelled {label:?}: check SOFTHSM2_CONF",
            route.name
        )
    })
}

fn main() {
    // `cargo bench` passes `--bench`; other words are workload name filters.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.to_lowercase())
        .collect();
    let settings = Settings {
        rounds: env_u64("BENCH_ROUNDS", 20).max(1) as usize,
        round: Duration::from_millis(env_u64("BENCH_ROUND_MS", 200)),
        warmup: Duration::from_millis(env_u64("BENCH_WARMUP_MS", 150)),
    };
    for var in ["SOFTHSM2_CONF", "KEYTRAIL_CONFIG"] {
        if std::env::var_os(var).is_none() {
            eprintln!(
                "overhead: {var} is not set; run scripts/bench.sh, which makes a scratch token and configuration"
            );
            std::process::exit(2);
        }
    }
    let softhsm = env_path("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so");
    let keytrail_so = env_path("KEYTRAIL_SO", "target/release/libkeytrail.so");
    let label = std::env::var("BENCH_TOKEN_LABEL").unwrap_or_else(|_| "keytrail-bench".into());

    // The first route is the baseline the others are compared with; keytrail is second.
    let mut routes = vec![
        Route {
            name: "direct",
            fns: load_table(&softhsm),
            slot: 0,
        },
        Route {
            name: "keytrail",
            fns: load_table(&keytrail_so),
            slot: 0,
        },
    ];
    if let Some(spy) = std::env::var_os("BENCH_SPY_SO").filter(|v| !v.is_empty()) {
        routes.push(Route {
            name: "pkcs11-spy",
            fns: load_table(Path::new(&spy)),
            slot: 0,
        });
    }
    if let Some(proxy) = std::env::var_os("BENCH_P11KIT_SO").filter(|v| !v.is_empty()) {
        divert_stderr(&env_path("BENCH_P11KIT_OUTPUT", "/dev/null"));
        routes.push(Route {
            name: "p11-kit log-calls",
            fns: load_table(Path::new(&proxy)),
            slot: 0,
        });
    }
    let keytrail = routes[KEYTRAIL];

    // One C_Initialize of SoftHSM, through keytrail. The direct table and pkcs11-spy then
    // answer CKR_CRYPTOKI_ALREADY_INITIALIZED. p11-kit's proxy initialises itself and
    // takes SoftHSM's CKR_CRYPTOKI_ALREADY_INITIALIZED as success, so it answers CKR_OK;
    // the login check below shows that it reaches the same instance all the same.
    let mut init_args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    let init_ptr = &mut init_args as *mut CK_C_INITIALIZE_ARGS as *mut c_void;
    check(
        ck!(keytrail, C_Initialize(init_ptr)),
        "keytrail C_Initialize",
    );
    for r in routes.iter().filter(|r| r.name != keytrail.name) {
        let rv = ck!(r, C_Initialize(init_ptr));
        let expected = if r.name.starts_with("p11-kit") {
            CKR_OK
        } else {
            CKR_CRYPTOKI_ALREADY_INITIALIZED
        };
        assert_eq!(
            rv, expected,
            "{}: C_Initialize returned {rv:#x}: this route does not reach the SoftHSM instance keytrail loaded",
            r.name
        );
    }
    for r in routes.iter_mut() {
        r.slot = find_slot(*r, &label);
    }
    let keytrail = routes[KEYTRAIL];

    // A session that stays open and logged in for the whole run, so that closing the last
    // session of a route never logs the application out.
    let anchor = Session::open(keytrail, keytrail.slot);
    // Login state belongs to the SoftHSM instance: every other route must find the user
    // logged in already, which proves that it reaches the same instance.
    for r in routes.iter().filter(|r| r.name != keytrail.name) {
        let mut h = 0;
        check(
            ck!(
                r,
                C_OpenSession(
                    r.slot,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    std::ptr::null_mut(),
                    None,
                    &mut h,
                )
            ),
            "C_OpenSession",
        );
        let mut pin = USER_PIN.to_vec();
        let rv = ck!(
            r,
            C_Login(h, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
        );
        assert_eq!(
            rv, CKR_USER_ALREADY_LOGGED_IN,
            "{}: C_Login returned {rv:#x}: this route does not reach the SoftHSM instance keytrail loaded",
            r.name
        );
        check(ck!(r, C_CloseSession(h)), "C_CloseSession");
    }

    let mut meter = std::env::var_os("BENCH_TRAIL_FILE")
        .filter(|v| !v.is_empty())
        .map(|p| TrailMeter::new(PathBuf::from(p)));

    let selected: Vec<Workload> = workloads()
        .into_iter()
        .filter(|w| {
            filters.is_empty()
                || filters
                    .iter()
                    .any(|f| w.name.to_lowercase().contains(f.as_str()))
        })
        .collect();
    say!(
        "overhead: {} workload(s) × routes [{}], {} rounds of ~{} ms per route",
        selected.len(),
        routes.iter().map(|r| r.name).collect::<Vec<_>>().join(", "),
        settings.rounds,
        settings.round.as_millis()
    );
    let load_before = load_average();
    let started = Instant::now();
    let mut rows = Vec::new();
    for w in &selected {
        let row = measure(w, &routes, &settings, meter.as_mut());
        say!(
            "  {:<30} {}",
            w.name,
            row.per_route
                .iter()
                .zip(&routes)
                .map(|(s, r)| format!("{} {} ns/op", r.name, fmt_ns(s.median)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rows.push(row);
    }
    drop(anchor);
    // Only keytrail finalises SoftHSM: pkcs11-spy would pass C_Finalize on to it, and so
    // might p11-kit; neither is finalised.
    check(
        ck!(keytrail, C_Finalize(std::ptr::null_mut())),
        "C_Finalize",
    );

    println!();
    print!("{}", table(&rows, &routes));
    for row in rows.iter().filter(|r| r.workload.contains("threads")) {
        let ops: Vec<String> = row
            .per_route
            .iter()
            .zip(&routes)
            .map(|(s, r)| format!("{} {:.0} ops/s", r.name, 1e9 / s.median))
            .collect();
        println!("{}: {}", row.workload, ops.join(", "));
    }
    println!(
        "median of {} interleaved rounds per route; whole run {:.0} s",
        settings.rounds,
        started.elapsed().as_secs_f64()
    );
    if routes.iter().any(|r| r.name.starts_with("p11-kit")) {
        println!(
            "p11-kit log-calls: its call log goes to stderr, sent to {} for the run",
            env_path("BENCH_P11KIT_OUTPUT", "/dev/null").display()
        );
    }
    if rows.iter().any(|r| r.trail.is_some()) {
        println!();
        print!("{}", trail_table(&rows));
        print!("{}", caller_cost(&rows));
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_after = load_average();
    if let (Some(before), Some(after)) = (load_before, load_after) {
        // The run itself keeps about one CPU busy (two in the threaded workload).
        let busy = before > 0.5 || after > 1.5;
        println!(
            "load average {before:.2} before, {after:.2} after, {cpus} CPUs{}",
            if busy {
                ": other work was running, expect noise (compare paired_ratio in the JSON)"
            } else {
                ""
            }
        );
    }
    if let Some(path) = std::env::var_os("BENCH_JSON").filter(|v| !v.is_empty()) {
        std::fs::write(&path, json(&rows, &routes, &settings))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", Path::new(&path).display()));
        println!("JSON written to {}", Path::new(&path).display());
    }
}
