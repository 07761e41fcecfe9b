//! `[[syslog]]`: the trail delivered to a real rsyslog (Debian's package, started here on
//! loopback with its own configuration, work directory and output file) over a local
//! socket, TCP and TLS; the collector restarted mid-run and down at start; the chain
//! verified on the collector's side.

mod common;
mod support;

use common::clients::need;
use common::kryoptic::keytrail_bin;
use common::*;
use cryptoki::mechanism::Mechanism;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::aes_key;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Tcp,
    Tls,
}

/// One rsyslogd of the test's own, writing each message's MSG (the record's JSON line)
/// to `out` and its header fields to `meta`.
struct Rsyslog {
    dir: PathBuf,
    kind: Kind,
    port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn run(cmd: &mut Command) {
    let o = cmd.output().expect("run");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A test CA, a server certificate for `localhost` and a client certificate, by openssl.
fn make_pki(dir: &Path) {
    let ossl = || {
        let mut c = Command::new(need("openssl", "openssl"));
        c.current_dir(dir);
        c
    };
    for name in ["ca", "server", "client"] {
        run(ossl().args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ]));
    }
    run(ossl().args([
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=keytrail test CA",
        "-days",
        "2",
        "-out",
        "ca.pem",
    ]));
    for (name, ext) in [
        (
            "server",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        run(ossl().args([
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ]));
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
        run(ossl().args([
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("client.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
}

impl Rsyslog {
    fn new(base: &Path, kind: Kind) -> Rsyslog {
        need("rsyslogd", "rsyslog");
        let dir = base.join("rsyslog");
        std::fs::create_dir_all(dir.join("work")).expect("rsyslog dir");
        let port = free_port();
        let d = dir.display();
        let input = match kind {
            Kind::Local => format!(
                "module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
                 input(type=\"imuxsock\" socket=\"{d}/log.sock\" useSpecialParser=\"off\" \
                 parseHostname=\"on\" ratelimit.interval=\"0\")\n"
            ),
            Kind::Tcp => format!(
                "module(load=\"imtcp\")\ninput(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n"
            ),
            Kind::Tls => {
                make_pki(&dir);
                format!(
                    "global(DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
                     DefaultNetstreamDriverCertFile=\"{d}/server.pem\" \
                     DefaultNetstreamDriverKeyFile=\"{d}/server.key\")\n\
                     module(load=\"imtcp\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" \
                     streamDriver.authMode=\"x509/certvalid\")\n\
                     input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n"
                )
            }
        };
        let conf = format!(
            "global(workDirectory=\"{d}/work\" maxMessageSize=\"64k\")\n{input}\
             template(name=\"msg\" type=\"string\" string=\"%msg%\\n\")\n\
             template(name=\"meta\" type=\"string\" string=\"%syslogfacility-text% \
             %syslogseverity-text% %app-name% %msgid% %structured-data%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{d}/out.jsonl\" template=\"msg\")\n\
             *.* action(type=\"omfile\" file=\"{d}/meta.log\" template=\"meta\")\n"
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).expect("rsyslog.conf");
        Rsyslog {
            dir,
            kind,
            port,
            child: None,
        }
    }

    /// The `[[syslog]]` section that sends to this collector.
    fn sink(&self) -> String {
        let d = self.dir.display();
        match self.kind {
            Kind::Local => format!(
                "[[syslog]]\ntransport = \"local\"\npath = \"{d}/log.sock\"\nfacility = \"local4\"\n"
            ),
            Kind::Tcp => format!(
                "[[syslog]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{}\"\nfacility = \"local4\"\n",
                self.port
            ),
            Kind::Tls => format!(
                "[[syslog]]\ntransport = \"tls\"\naddress = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\n\
                 ca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/client.pem\"\nkey_file = \"{d}/client.key\"\n\
                 facility = \"local4\"\napp_name = \"payments\"\n",
                self.port
            ),
        }
    }

    fn start(&mut self) {
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join("rsyslogd.stderr"))
                    .map_or(Stdio::null(), Stdio::from),
            )
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
        // Ready when it listens.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = match self.kind {
                Kind::Local => self.dir.join("log.sock").exists(),
                Kind::Tcp | Kind::Tls => {
                    std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                }
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not start: {}",
                std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY (test): signals the rsyslogd this test started, by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out.jsonl")
    }

    fn lines(&self) -> Vec<String> {
        read_lines(&self.out())
    }

    fn meta(&self) -> Vec<String> {
        read_lines(&self.dir.join("meta.log"))
    }

    /// Waits until every (stream, seq) of `trail` has arrived; returns what arrived.
    fn wait_for(&self, trail: &[String]) -> Vec<String> {
        let want: std::collections::BTreeSet<(String, u64)> =
            trail.iter().map(|l| stream_seq(l)).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.lines();
            let have: std::collections::BTreeSet<(String, u64)> =
                got.iter().map(|l| stream_seq(l)).collect();
            if want.is_subset(&have) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stream_seq(line: &str) -> (String, u64) {
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the collector's line is the JSON record ({e}): {line}"));
    (
        v["integrity"]["stream"].as_str().unwrap_or("").to_string(),
        v["integrity"]["seq"].as_u64().unwrap_or(0),
    )
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn trail_lines(fx: &Fixture) -> Vec<String> {
    read_lines(&fx.trail_path())
}

/// A test's parts: the token, its collector, keytrail configured to send to it, and a
/// logged-in session through keytrail.
struct Setup {
    fx: Fixture,
    collector: Rsyslog,
    p: cryptoki::context::Pkcs11,
    s: cryptoki::session::Session,
}

/// Sets up a test; the collector is started first when `running`; `extra` goes into the
/// `[[syslog]]` section.
fn setup(kind: Kind, running: bool, extra: &str) -> Setup {
    let fx = Fixture::new();
    let mut collector = Rsyslog::new(fx.path(), kind);
    if running {
        collector.start();
    }
    fx.configure(&format!("{}{extra}", collector.sink()));
    let p = open(&keytrail_module());
    let s = user_session(&p);
    Setup {
        fx,
        collector,
        p,
        s,
    }
}

/// A workload of `rounds` encryptions (a record each) between a key made and destroyed.
fn work(s: &cryptoki::session::Session, rounds: usize) {
    let key = aes_key(s, "syslog-key", b"\x51", false);
    for i in 0..rounds {
        s.encrypt(&Mechanism::AesEcb, key, &[i as u8; 16])
            .expect("encrypt");
    }
    s.destroy_object(key).expect("destroy");
}

fn verify(args: &[&Path]) -> (i32, Value) {
    let o = Command::new(keytrail_bin())
        .arg("verify")
        .arg("--json")
        .args(args)
        .output()
        .expect("run keytrail verify");
    let v: Value = serde_json::from_slice(&o.stdout).expect("verify --json prints JSON");
    (o.status.code().unwrap_or(-1), v)
}

/// Every record of the trail arrived exactly once, byte for byte, in the trail's order.
fn assert_exactly_once(trail: &[String], got: &[String]) {
    assert_eq!(
        got.len(),
        trail.len(),
        "records at the collector vs in the trail"
    );
    for (i, (a, b)) in trail.iter().zip(got).enumerate() {
        assert_eq!(a, b, "record {i} differs at the collector");
    }
}

/// Every record arrived, duplicates are byte-for-byte copies, and the first copies are
/// in the trail's order. Returns the first copies.
fn assert_all_arrived(trail: &[String], got: &[String]) -> Vec<String> {
    let mut first: BTreeMap<(String, u64), &String> = BTreeMap::new();
    let mut order = Vec::new();
    for l in got {
        let k = stream_seq(l);
        match first.get(&k) {
            Some(f) => assert_eq!(*f, l, "a duplicate of {k:?} differs"),
            None => {
                first.insert(k, l);
                order.push(l.clone());
            }
        }
    }
    let missing: Vec<(String, u64)> = trail
        .iter()
        .map(|l| stream_seq(l))
        .filter(|k| !first.contains_key(k))
        .collect();
    assert!(
        missing.is_empty(),
        "never reached the collector: {missing:?}"
    );
    assert_exactly_once(trail, &order);
    order
}

fn deliver_over(kind: Kind) {
    let Setup {
        fx,
        collector,
        p,
        s,
    } = setup(kind, true, "");
    work(&s, 200);
    drop(s);
    p.finalize().expect("finalize");
    let trail = trail_lines(&fx);
    assert!(trail.len() > 200, "{}", trail.len());
    let got = collector.wait_for(&trail);
    assert_exactly_once(&trail, &got);
    let (code, v) = verify(&[&collector.out()]);
    assert_eq!(code, 0, "the collector's copy verifies: {v:#}");

    // The header: facility, severity by event, app name, action, stream and seq.
    let meta = collector.meta();
    assert_eq!(meta.len(), trail.len());
    let app = if kind == Kind::Tls {
        "payments"
    } else {
        "keytrail"
    };
    for (m, l) in meta.iter().zip(&trail) {
        let v: Value = serde_json::from_str(l).expect("json");
        let action = v["event"]["action"].as_str().expect("action");
        let (stream, seq) = stream_seq(l);
        let severity = match action {
            "object_destroy" => "warning",
            "encrypt" | "session_open" | "login" => "info",
            "key_generate" | "trail_start" | "trail_stop" => "notice",
            _ => continue,
        };
        assert_eq!(
            m,
            &format!(
                "local4 {severity} {app} {action} [keytrail@32473 stream=\"{stream}\" seq=\"{seq}\"]"
            ),
        );
    }
    assert!(meta.iter().any(|m| m.contains(" warning ")), "{meta:?}");
}

#[test]
fn every_record_arrives_once_in_order_over_a_local_socket() {
    deliver_over(Kind::Local);
}

#[test]
fn every_record_arrives_once_in_order_over_tcp() {
    deliver_over(Kind::Tcp);
}

#[test]
fn every_record_arrives_once_in_order_over_tls_with_a_client_certificate() {
    deliver_over(Kind::Tls);
}

fn restart_mid_run(kind: Kind) {
    let Setup {
        fx,
        mut collector,
        p,
        s,
    } = setup(kind, true, "");
    work(&s, 50);
    std::thread::sleep(Duration::from_millis(300));
    collector.stop();
    // Records made while the collector is away wait in the sink's queue.
    work(&s, 50);
    std::thread::sleep(Duration::from_millis(300));
    work(&s, 20);
    collector.start();
    work(&s, 50);
    drop(s);
    p.finalize().expect("finalize");
    let trail = trail_lines(&fx);
    let got = collector.wait_for(&trail);
    let unique = assert_all_arrived(&trail, &got);
    // Records sent again after the reconnect are repeats, not duplicates, to a verifier
    // told the file is a collector's copy.
    let (code, v) = verify(&[Path::new("--collected"), &collector.out()]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        v["repeats"].as_u64(),
        Some((got.len() - unique.len()) as u64),
        "{v:#}"
    );
    assert!(
        !trail.iter().any(|l| l.contains("\"records_lost\"")),
        "nothing was lost"
    );
    let diag = fx.diagnostics();
    assert!(diag.contains("cannot deliver to the collector"), "{diag}");
    assert!(diag.contains("delivering to the collector again"), "{diag}");
}

#[test]
fn tcp_delivery_survives_a_collector_restart() {
    restart_mid_run(Kind::Tcp);
}

#[test]
fn tls_delivery_survives_a_collector_restart() {
    restart_mid_run(Kind::Tls);
}

#[test]
fn local_delivery_survives_a_collector_restart() {
    restart_mid_run(Kind::Local);
}

#[test]
fn records_wait_for_a_collector_that_is_down_at_start() {
    let Setup {
        fx,
        mut collector,
        p,
        s,
    } = setup(Kind::Tcp, false, "");
    work(&s, 30);
    std::thread::sleep(Duration::from_millis(500));
    assert!(collector.lines().is_empty());
    collector.start();
    work(&s, 30);
    drop(s);
    p.finalize().expect("finalize");
    let trail = trail_lines(&fx);
    let got = collector.wait_for(&trail);
    // Nothing had been sent before: nothing is sent twice.
    assert_exactly_once(&trail, &got);
    let (code, v) = verify(&[&collector.out()]);
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn a_queue_overflow_while_the_collector_is_down_is_counted_on_the_trail() {
    let Setup {
        fx,
        mut collector,
        p,
        s,
    } = setup(Kind::Tcp, false, "queue = 10\non_full = \"drop\"\n");
    work(&s, 100);
    std::thread::sleep(Duration::from_millis(300));
    collector.start();
    // Once it delivers again, later records arrive.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fx
        .diagnostics()
        .contains("delivering to the collector again")
    {
        assert!(Instant::now() < deadline, "{}", fx.diagnostics());
        std::thread::sleep(Duration::from_millis(100));
    }
    work(&s, 5);
    drop(s);
    p.finalize().expect("finalize");
    let trail = trail_lines(&fx);
    let losses: Vec<Value> = trail
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|v| v["event"]["action"] == "records_lost")
        .collect();
    let mut lost = 0;
    for loss in &losses {
        let detail = &loss["keytrail"];
        assert!(
            detail["sink"]
                .as_str()
                .is_some_and(|s| s.starts_with("syslog tcp 127.0.0.1:")),
            "{loss:#}"
        );
        lost += detail["lost"].as_u64().expect("lost");
    }
    assert!(lost > 0);
    // What was lost after the stream's stop record is said in the diagnostics instead.
    let diag = fx.diagnostics();
    let after_stop: u64 =
        regex::Regex::new(r"and (\d+) more were lost that the trail does not record")
            .expect("regex")
            .captures_iter(&diag)
            .map(|c| c[1].parse::<u64>().expect("number"))
            .sum();
    let lost = lost + after_stop;
    // The collector has every record but the lost ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (unique, got) = loop {
        let got = collector.lines();
        let mut seen = std::collections::BTreeSet::new();
        let unique = got.iter().filter(|l| seen.insert(stream_seq(l))).count() as u64;
        if unique + lost >= trail.len() as u64 || Instant::now() > deadline {
            break (unique, got);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        unique + lost,
        trail.len() as u64,
        "{losses:#?}\n{}\n{got:#?}",
        fx.diagnostics()
    );
}

#[test]
fn the_heads_at_the_collector_prove_a_truncated_local_trail() {
    let Setup {
        fx,
        collector,
        p,
        s,
    } = setup(Kind::Tcp, true, "");
    work(&s, 20);
    drop(s);
    p.finalize().expect("finalize");
    let trail = trail_lines(&fx);
    collector.wait_for(&trail);
    let (code, v) = verify(&[Path::new("--head"), &collector.out(), &fx.trail_path()]);
    assert_eq!(code, 0, "{v:#}");
    // An intruder cuts the local trail's last records.
    std::fs::write(fx.trail_path(), trail[..trail.len() - 5].join("\n") + "\n").expect("truncate");
    let (code, v) = verify(&[&fx.trail_path()]);
    assert_ne!(code, 0, "{v:#}");
    let (code, v) = verify(&[Path::new("--head"), &collector.out(), &fx.trail_path()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["streams"][0]["verdict"], "TRUNCATED", "{v:#}");
}

#[test]
fn without_threads_the_writer_delivers_on_the_calling_thread() {
    use common::raw::{self, Raw};
    use cryptoki_sys::*;
    let fx = Fixture::new();
    let mut collector = Rsyslog::new(fx.path(), Kind::Tcp);
    collector.start();
    fx.configure(&collector.sink());
    let module = Raw::load(&keytrail_module());
    let l = module.list();
    let mut args = raw::init_args();
    args.flags |= CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    // SAFETY (test): valid arguments.
    let rv = unsafe { (l.C_Initialize.expect("f"))(&mut args as *mut _ as CK_VOID_PTR) };
    assert_eq!(rv, CKR_OK);
    let s = raw::open_rw(l);
    assert_eq!(raw::login(l, s), CKR_OK);
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("keytrail"))
        .collect();
    assert!(threads.is_empty(), "{threads:?}");
    // Delivered by the call itself: the login is at the collector already.
    let trail = trail_lines(&fx);
    let got = collector.wait_for(&trail);
    assert_exactly_once(&trail, &got);
    assert_eq!(raw::finalize(l), CKR_OK);
    let trail = trail_lines(&fx);
    assert_exactly_once(&trail, &collector.wait_for(&trail));
}

#[test]
fn a_sink_under_deny_refuses_calls_while_its_collector_is_away() {
    let Setup {
        fx,
        mut collector,
        p,
        s,
    } = setup(Kind::Tcp, true, "on_failure = \"deny\"\ntimeout_ms = 500\n");
    work(&s, 5);
    collector.stop();
    // The first records after the collector left reveal it; later calls are refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        if let Err(e) = aes_key_result(&s) {
            break e;
        }
        assert!(Instant::now() < deadline, "never refused");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        matches!(
            refused,
            cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::FunctionFailed, _)
        ),
        "{refused}"
    );
    collector.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while aes_key_result(&s).is_err() {
        assert!(
            Instant::now() < deadline,
            "still refused: {}",
            fx.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(s);
    p.finalize().expect("finalize");
    // Nothing was lost meanwhile: what was queued reached the collector.
    let trail = trail_lines(&fx);
    assert_all_arrived(&trail, &collector.wait_for(&trail));
}

fn aes_key_result(
    s: &cryptoki::session::Session,
) -> cryptoki::error::Result<cryptoki::object::ObjectHandle> {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &support::aes_template("again", b"a", false),
    )
}

#[test]
fn a_repeat_that_differs_from_its_first_copy_is_still_a_finding() {
    let Setup {
        fx,
        collector,
        p,
        s,
    } = setup(Kind::Tcp, true, "");
    work(&s, 5);
    drop(s);
    p.finalize().expect("finalize");
    let trail = trail_lines(&fx);
    let mut got = collector.wait_for(&trail);
    let copy = fx.path().join("copy.jsonl");
    // Sent again: an exact repeat is left out.
    got.insert(4, got[2].clone());
    std::fs::write(&copy, got.join("\n") + "\n").expect("write");
    let (code, v) = verify(&[Path::new("--collected"), &copy]);
    assert_eq!((code, v["repeats"].as_u64()), (0, Some(1)), "{v:#}");
    let (code, _) = verify(&[&copy]);
    assert_eq!(code, 1, "without --collected a repeat is a duplicate");
    // A forged "repeat" (same seq, other content) is not.
    got[4] = got[4].replace("\"outcome\":\"success\"", "\"outcome\":\"failure\"");
    std::fs::write(&copy, got.join("\n") + "\n").expect("write");
    let (code, v) = verify(&[Path::new("--collected"), &copy]);
    assert_eq!(code, 1, "{v:#}");
}

#[test]
fn a_sink_that_cannot_be_set_up_is_reported_and_under_deny_refuses_calls() {
    for deny in [false, true] {
        let fx = Fixture::new();
        let bad_ca = fx.path().join("not-a-ca.pem");
        std::fs::write(&bad_ca, "not a certificate\n").expect("write");
        fx.configure(&format!(
            "[[syslog]]\ntransport = \"tls\"\naddress = \"127.0.0.1:9\"\nca_file = \"{}\"\n{}",
            bad_ca.display(),
            if deny { "on_failure = \"deny\"\n" } else { "" }
        ));
        // keytrail is loaded once per process: the second round runs in a child.
        if deny {
            let out = Command::new(std::env::current_exe().expect("self"))
                .args(["--exact", "deny_child_probe", "--ignored", "--nocapture"])
                .env("KEYTRAIL_CONFIG", &fx.keytrail_conf)
                .env("SOFTHSM2_CONF", &fx.softhsm_conf)
                .output()
                .expect("child");
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let p = open(&keytrail_module());
            let s = user_session(&p);
            aes_key(&s, "k", b"k", false);
            drop(s);
            p.finalize().expect("finalize");
            let diag = fx.diagnostics();
            assert!(diag.contains("syslog sink left out"), "{diag}");
            assert!(diag.contains("holds no PEM certificate"), "{diag}");
        }
    }
}

/// Run by the test above in a child process: with a sink under `deny` that cannot be set
/// up, audited calls are refused.
#[test]
#[ignore = "run as a child process"]
fn deny_child_probe() {
    let p = open(&keytrail_module());
    let s = p
        .open_rw_session(token_slot(&p))
        .expect_err("an audited call is refused");
    assert!(
        matches!(
            s,
            cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::FunctionFailed, _)
        ),
        "{s}"
    );
}
