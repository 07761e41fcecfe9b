//! Real clients side by side: the same flow run against SoftHSM directly and through
//! keytrail, each side on its own fresh token store, as separate processes; exit statuses
//! and masked output compared step by step; then the trail the keytrail side left:
//! records per process, `keytrail verify` and `keytrail report --json`.

use super::*;
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One client run: exit status and masked output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, for assertions that do not care which one a client writes to.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// What differs between two fresh token stores and two runs a second apart: patterns and
/// their replacements, applied in order after the side's own serial number and slot ID.
pub struct Mask(Vec<(Regex, String)>, Option<fn(&str) -> String>);

impl Mask {
    /// Masks every client needs: PEM bodies, hex dumps (a line of their own each, in
    /// blocks whose length varies with leading zeros) and digests (random keys and
    /// signatures), dates, 0x numbers of five or more digits (SoftHSM slot IDs).
    pub fn standard() -> Mask {
        Mask(Vec::new(), None)
            .with(r"(?s)-----BEGIN [^-]+-----.*?-----END [^-]+-----", "<pem>")
            .with(
                r"(?m)(^[ \t]*[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*:?[ \t]*\n)+",
                "<hex dump>\n",
            )
            .with(r"\b[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){3,}:?", "<hex>")
            .with(r"\b[0-9A-Fa-f]{32,}\b", "<hex>")
            .with(r"pin-sha256:\S+", "pin-sha256:<pin>")
            .with(
                r"\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\d{1,2} \d\d:\d\d:\d\d( UTC)? \d{4}",
                "<date>",
            )
            .with(r"\b0x[0-9A-Fa-f]{5,}\b", "0x<id>")
    }

    /// Adds a pattern (a `regex` crate expression) and its replacement (`$1` for groups).
    pub fn with(mut self, pattern: &str, replacement: &str) -> Mask {
        let re = Regex::new(pattern).unwrap_or_else(|e| panic!("mask {pattern:?}: {e}"));
        self.0.push((re, replacement.to_string()));
        self
    }

    /// Adds a last step after the patterns (sorting lines a client prints in an order
    /// that depends on the token store, say).
    pub fn then(mut self, f: fn(&str) -> String) -> Mask {
        self.1 = Some(f);
        self
    }

    fn apply(&self, side: &Side, text: &str) -> String {
        let mut t = text.replace(&side.serial, "<serial>");
        for (re, with) in &self.0 {
            t = re.replace_all(&t, with.as_str()).into_owned();
        }
        // The slot ID is the low bits of the serial number, printed in decimal by some
        // clients; masked last, as a whole number, so no other number is touched.
        let slot = Regex::new(&format!(r"\b{}\b", side.slot)).expect("slot pattern");
        let t = slot.replace_all(&t, "<slot>").into_owned();
        match self.1 {
            Some(f) => f(&t),
            None => t,
        }
    }
}

/// One side of a comparison: a token store, the module the client loads, a working
/// directory for the files the flow writes.
pub struct Side {
    /// `direct` or `keytrail`.
    pub name: &'static str,
    /// SoftHSM for the direct side, the built libkeytrail.so for the other.
    pub module: PathBuf,
    pub softhsm_conf: PathBuf,
    /// The client's working directory: files named relative to it are the same text on
    /// both sides.
    pub work: PathBuf,
    keytrail_conf: PathBuf,
    serial: String,
    slot: u64,
}

impl Side {
    fn new(name: &'static str, module: PathBuf, softhsm_conf: PathBuf, fx: &Fixture) -> Side {
        let work = fx.path().join(format!("work-{name}"));
        std::fs::create_dir_all(&work).expect("work dir");
        let (serial, slot) = token_serial_and_slot(&softhsm_conf);
        Side {
            name,
            module,
            softhsm_conf,
            work,
            keytrail_conf: fx.keytrail_conf.clone(),
            serial,
            slot,
        }
    }

    /// The keytrail side alone, on the fixture's own store: for tests that need no
    /// comparison.
    pub fn new_single(fx: &Fixture) -> Side {
        Side::new("keytrail", keytrail_module(), fx.softhsm_conf.clone(), fx)
    }

    /// A command for this side: run in its working directory, with its token store, the
    /// fixture's keytrail configuration, and `MODULE` naming the module it loads.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.work)
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .env("KEYTRAIL_CONFIG", &self.keytrail_conf)
            .env("MODULE", &self.module)
            .env_remove("KEYTRAIL_MODULE");
        c
    }

    /// Runs a command and masks its output.
    pub fn run(&self, mut cmd: Command, mask: &Mask) -> Run {
        let what = format!("{cmd:?}");
        let out: Output = cmd.output().unwrap_or_else(|e| {
            panic!(
                "{}: run {what}: {e} (scripts/test.sh installs the clients)",
                self.name
            )
        });
        Run {
            code: out.status.code(),
            stdout: mask.apply(self, &String::from_utf8_lossy(&out.stdout)),
            stderr: mask.apply(self, &String::from_utf8_lossy(&out.stderr)),
        }
    }
}

/// The serial number and slot ID of the initialised token in a store.
fn token_serial_and_slot(softhsm_conf: &Path) -> (String, u64) {
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", softhsm_conf)
        .arg("--show-slots")
        .output()
        .expect("softhsm2-util --show-slots");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut slot = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(n) = line
            .strip_prefix("Slot ")
            .and_then(|n| n.parse::<u64>().ok())
        {
            slot = Some(n);
        }
        if let Some(s) = line.strip_prefix("Serial number:") {
            let s = s.trim();
            if !s.is_empty() {
                return (s.to_string(), slot.expect("a slot line before the serial"));
            }
        }
    }
    panic!("no initialised token in {}: {text}", softhsm_conf.display());
}

/// A fixture with two fresh token stores: `direct` (SoftHSM) and `keytrail`
/// (libkeytrail.so forwarding to SoftHSM). Only the keytrail side writes the trail.
pub struct Matrix {
    pub fx: Fixture,
    pub direct: Side,
    pub keytrail: Side,
}

impl Matrix {
    pub fn new() -> Matrix {
        let fx = Fixture::new();
        let direct = Side::new("direct", softhsm_module(), fx.softhsm_conf.clone(), &fx);
        let keytrail_store = fx.fresh_store("b");
        let keytrail = Side::new("keytrail", keytrail_module(), keytrail_store, &fx);
        Matrix {
            fx,
            direct,
            keytrail,
        }
    }

    /// Runs one step of a flow on both sides (the command `build` makes for each), asserts
    /// the same exit status and the same masked output, and returns the keytrail side's run.
    pub fn step(&self, mask: &Mask, build: impl Fn(&Side) -> Command) -> Run {
        let cmd = build(&self.direct);
        let what = format!(
            "{:?} {:?}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>()
        );
        let direct = self.direct.run(cmd, mask);
        let through = self.keytrail.run(build(&self.keytrail), mask);
        assert_eq!(
            direct, through,
            "{what}: through keytrail (right) differs from the module directly (left)"
        );
        assert!(
            !through.stderr.contains("keytrail:"),
            "{what}: keytrail complained: {}",
            through.stderr
        );
        through
    }

    /// Every record of the trail, parsed; asserts that keytrail wrote no diagnostics.
    pub fn trail(&self) -> Vec<Value> {
        assert_eq!(self.fx.diagnostics(), "", "keytrail reported a problem");
        self.fx.trail()
    }
}

fn keytrail_json(args: &[&OsStr]) -> (Option<i32>, Value) {
    let o = Command::new(super::kryoptic::keytrail_bin())
        .args(args)
        .output()
        .expect("run keytrail");
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "keytrail {args:?} prints JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

/// `keytrail verify --json TRAIL`: asserts exit 0, a valid verdict, `streams` streams, each
/// ended by a clean stop; returns the report.
pub fn assert_verifies(trail: &Path, streams: usize) -> Value {
    let (code, v) = keytrail_json(&["verify".as_ref(), "--json".as_ref(), trail.as_os_str()]);
    assert_eq!(code, Some(0), "keytrail verify: {v:#}");
    assert_eq!(v["verdict"], "valid", "{v:#}");
    let all = v["streams"].as_array().expect("streams");
    assert_eq!(all.len(), streams, "one stream per process: {v:#}");
    for s in all {
        assert_eq!(s["verdict"], "valid", "{s:#}");
        assert_eq!(s["closed"], true, "stream ended without trail_stop: {s:#}");
    }
    v
}

/// `keytrail report --json TRAIL`.
pub fn report(trail: &Path) -> Value {
    let (code, v) = keytrail_json(&[
        "report".as_ref(),
        "--json".as_ref(),
        "--quiet".as_ref(),
        trail.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "keytrail report: {v:#}");
    v
}

/// The report's keys as `CLASS label` lines (`-` for no label), sorted, each once.
pub fn report_keys(report: &Value) -> Vec<String> {
    let mut keys: Vec<String> = report["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            format!(
                "{} {}",
                k["class"].as_str().unwrap_or("?"),
                k["label"].as_str().filter(|l| !l.is_empty()).unwrap_or("-")
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The report's entry for the key of `class` with `label` (exactly one).
pub fn report_key<'a>(report: &'a Value, class: &str, label: &str) -> &'a Value {
    let found: Vec<&Value> = report["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["class"] == class && k["label"] == label)
        .collect();
    assert_eq!(found.len(), 1, "{class} {label} in {:#}", report["keys"]);
    found[0]
}

/// Successful uses of a report key, by `operation / mechanism`.
pub fn uses(key: &Value) -> BTreeMap<String, u64> {
    key["uses"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, c)| c["success"].as_u64().unwrap_or(0) > 0)
                .map(|(k, c)| (k.clone(), c["success"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// The processes on a trail, as (pid, name) in order of their first record.
pub fn processes(trail: &[Value]) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = Vec::new();
    for r in trail {
        let pid = r["process"]["pid"].as_u64().expect("process.pid");
        if !out.iter().any(|(p, _)| *p == pid) {
            let name = r["process"]["name"].as_str().unwrap_or("").to_string();
            out.push((pid, name));
        }
    }
    out
}

/// Counts of a process's records by `lifecycle/action/outcome`, without keytrail's own
/// `audit` records.
pub fn tally(trail: &[Value], pid: u64) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for r in trail.iter().filter(|r| r["process"]["pid"] == pid) {
        let lifecycle = r["pkcs11"]["lifecycle"].as_str().unwrap_or("?");
        if lifecycle == "audit" {
            continue;
        }
        let key = format!(
            "{lifecycle}/{}/{}",
            r["event"]["action"].as_str().unwrap_or("?"),
            r["event"]["outcome"].as_str().unwrap_or("?")
        );
        *t.entry(key).or_insert(0) += 1;
    }
    t
}

/// Counts of the processes named `name`, summed.
pub fn tally_of(trail: &[Value], name: &str) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for (pid, n) in processes(trail) {
        if n == name {
            for (k, v) in tally(trail, pid) {
                *t.entry(k).or_insert(0) += v;
            }
        }
    }
    t
}

/// One count from a tally (0 when absent).
pub fn count(t: &BTreeMap<String, u64>, key: &str) -> u64 {
    t.get(key).copied().unwrap_or(0)
}

/// Asserts the counts of the key lifecycle proper (generate, import, use, export,
/// modify, destroy: what the flow did to keys) in a tally: exactly `expected`, nothing else.
pub fn assert_key_events(t: &BTreeMap<String, u64>, expected: &[(&str, u64)]) {
    let got: BTreeMap<String, u64> = t
        .iter()
        .filter(|(k, _)| {
            [
                "generate/",
                "import/",
                "use/",
                "export/",
                "modify/",
                "destroy/",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let want: BTreeMap<String, u64> = expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(got, want, "key lifecycle records (full tally: {t:#?})");
}

/// The labels of the keys records name, per role (`key`, `private`, `public`, …), for one
/// `lifecycle/action`, in trail order.
pub fn labels(trail: &[Value], lifecycle: &str, action: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in trail {
        if r["pkcs11"]["lifecycle"] != lifecycle || r["event"]["action"] != action {
            continue;
        }
        // An empty CKA_LABEL is no label.
        if let Some(l) = r["pkcs11"]["key"]["label"]
            .as_str()
            .filter(|l| !l.is_empty())
        {
            out.push(l.to_string());
        }
        if let Some(keys) = r["pkcs11"]["keys"].as_object() {
            for (role, k) in keys {
                if let Some(l) = k["label"].as_str().filter(|l| !l.is_empty()) {
                    out.push(format!("{role}:{l}"));
                }
            }
        }
    }
    out
}

/// An executable on this machine, or a panic that says scripts/test.sh installs it.
pub fn need(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{program} is not installed (Debian package {package}): run scripts/test.sh, which installs it"
    );
}

/// The first of `candidates` that exists (a library in the multiarch directories).
pub fn find_lib(candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        for dir in [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
        ] {
            let p = Path::new(dir).join(c);
            if p.exists() {
                return Some(p);
            }
        }
    }
    None
}

/// tests/clients/JavaFlow.java.
pub fn java_flow_source() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/JavaFlow.java")
}

/// keytool's configuration: the module alone. JavaFlow's adds attributes, so the keys it
/// generates are token objects with labels and IDs.
pub fn java_configs(side: &Side) {
    std::fs::write(
        side.work.join("keytool.cfg"),
        format!("name = keytrail\nlibrary = {}\n", side.module.display()),
    )
    .expect("keytool.cfg");
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    std::fs::write(
        side.work.join("flow.cfg"),
        format!(
            "name = keytrail\nlibrary = {}\n\
             attributes(generate, *, *) = {{\n  CKA_TOKEN = true\n}}\n\
             attributes(generate, CKO_PRIVATE_KEY, CKK_EC) = {{\n  CKA_LABEL = 0h{ec}\n  CKA_ID = 0h0b\n}}\n\
             attributes(generate, CKO_PUBLIC_KEY, CKK_EC) = {{\n  CKA_LABEL = 0h{ec}\n  CKA_ID = 0h0b\n}}\n\
             attributes(generate, CKO_SECRET_KEY, CKK_AES) = {{\n  CKA_LABEL = 0h{aes}\n  CKA_ID = 0h0c\n}}\n",
            side.module.display(),
            ec = hex("java-ec-gen"),
            aes = hex("java-aes"),
        ),
    )
    .expect("flow.cfg");
}

/// keytool on the token, through `keytool.cfg`.
pub fn keytool(side: &Side, args: &[&str]) -> Command {
    let mut c = side.command(need("keytool", "default-jdk-headless"));
    c.args(args).args([
        "-keystore",
        "NONE",
        "-storetype",
        "PKCS11",
        "-providerClass",
        "sun.security.pkcs11.SunPKCS11",
        "-providerArg",
        "keytool.cfg",
        "-storepass",
        USER_PIN,
    ]);
    c
}

/// `java JavaFlow.java flow.cfg PIN ROUNDS [--no-keygen]`.
pub fn java_flow(side: &Side, rounds: u64, keygen: bool) -> Command {
    let mut c = side.command(need("java", "default-jdk-headless"));
    c.arg(java_flow_source())
        .args(["flow.cfg", USER_PIN, &rounds.to_string()]);
    if !keygen {
        c.arg("--no-keygen");
    }
    c
}

/// A command running tests/clients/python_flow.py with python-pkcs11.
pub fn python_flow(side: &Side, rounds: u64, keygen: bool) -> Command {
    let python = std::env::var_os("KEYTRAIL_PYTHON").unwrap_or_else(|| {
        panic!("KEYTRAIL_PYTHON is not set: run scripts/test.sh, which installs python-pkcs11 and sets it")
    });
    let mut c = side.command(python);
    c.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_flow.py"))
        .arg(&side.module)
        .args([USER_PIN, &rounds.to_string()]);
    if !keygen {
        c.arg("--no-keygen");
    }
    c
}

/// An OpenSSL configuration that loads libp11's engine with the side's module.
pub fn engine_conf(side: &Side) -> String {
    let engine = find_lib(&["engines-3/pkcs11.so", "engines-3/libpkcs11.so"]).unwrap_or_else(|| {
        panic!("libp11's engine is not installed (Debian package libengine-pkcs11-openssl): run scripts/test.sh")
    });
    format!(
        "openssl_conf = openssl_init\n\
         [openssl_init]\nengines = engine_section\n\
         [engine_section]\npkcs11 = pkcs11_section\n\
         [pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {}\nMODULE_PATH = {}\nPIN = {USER_PIN}\ninit = 0\n\
         [req]\ndistinguished_name = dn\n[dn]\n",
        engine.display(),
        side.module.display()
    )
}

/// `keytool -genkeypair`: an EC P-256 key under `alias`, with a self-signed certificate.
pub fn keytool_genkeypair(side: &Side, alias: &str) -> Command {
    keytool(
        side,
        &[
            "-genkeypair",
            "-alias",
            alias,
            "-keyalg",
            "EC",
            "-groupname",
            "secp256r1",
            "-dname",
            "CN=keytrail-java",
            "-validity",
            "30",
        ],
    )
}

/// pkcs11-tool logged in as the user, generating an EC P-256 key pair.
pub fn pkcs11_tool_ec_keypair(side: &Side, id: &str, label: &str) -> Command {
    let mut c = side.command(need("pkcs11-tool", "opensc"));
    c.arg("--module").arg(&side.module).args([
        "--login",
        "--pin",
        USER_PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        id,
        "--label",
        label,
    ]);
    c
}
