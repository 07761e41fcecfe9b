//! Configuration: one TOML file plus a few environment overrides.
//!
//! Environment variables alone are not enough (`sudo`, service managers and Java strip
//! them), so the file is the primary source; `KEYTRAIL_MODULE` and friends exist for tests
//! and one-off runs.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration file is looked for when `KEYTRAIL_CONFIG` is not set.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/keytrail/keytrail.toml";
/// Environment variable naming the configuration file.
pub const ENV_CONFIG: &str = "KEYTRAIL_CONFIG";
/// Environment variable naming the real PKCS#11 module; overrides `module` in the file.
pub const ENV_MODULE: &str = "KEYTRAIL_MODULE";

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from, if any.
    pub source: Option<PathBuf>,
    /// Path of the real PKCS#11 module.
    pub module: PathBuf,
    /// Optional file that receives keytrail's own diagnostics, besides stderr.
    pub diagnostics: Option<PathBuf>,
    /// `service.name` on every record: which application this is.
    pub service: Option<String>,
    /// What is audited.
    pub audit: AuditConfig,
    /// Where the trail goes.
    pub trail: TrailConfig,
    /// The hash chain: checkpoints and the optional HMAC key.
    pub integrity: IntegrityConfig,
    /// `[seal]`: the token key a separate agent signs checkpoint heads with.
    pub seal: Option<SealSection>,
    /// `[[syslog]]`: collectors that receive every record besides the trail file.
    pub syslog: Vec<SyslogConfig>,
    /// SHA-256 (hex) of the configuration file's bytes as read, for the trail's start
    /// record.
    pub source_sha256: Option<String>,
    /// Environment overrides that were set but ignored because the process runs in
    /// secure-execution mode, for the diagnostics to say so.
    pub env_ignored: Vec<&'static str>,
}

/// Every environment variable keytrail reads.
pub const ENV_VARS: [&str; 3] = [ENV_CONFIG, ENV_MODULE, ENV_LOG];

/// The environment overrides. Every variable keytrail reads is read here, once, and
/// nowhere else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvOverrides {
    /// `KEYTRAIL_CONFIG`.
    pub config: Option<PathBuf>,
    /// `KEYTRAIL_MODULE`.
    pub module: Option<PathBuf>,
    /// `KEYTRAIL_LOG`.
    pub log: Option<PathBuf>,
    /// Variables that were set but are ignored (secure execution).
    pub ignored: Vec<&'static str>,
}

impl EnvOverrides {
    /// This process's overrides. A process in secure-execution mode (setuid, setgid or
    /// with capabilities gained on exec: the kernel's `AT_SECURE`) ignores all of them,
    /// as glibc's `secure_getenv` would: its environment was chosen by a less privileged
    /// user, who must not pick the code it loads or the files it writes.
    pub fn from_process() -> EnvOverrides {
        Self::from_lookup(|k| std::env::var_os(k), crate::os::secure_execution())
    }

    /// The overrides an environment gives a process, `secure` telling whether that
    /// process runs in secure-execution mode.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<std::ffi::OsString>,
        secure: bool,
    ) -> EnvOverrides {
        let mut o = EnvOverrides::default();
        for name in ENV_VARS {
            let Some(value) = get(name).filter(|v| !v.is_empty()) else {
                continue;
            };
            if secure {
                o.ignored.push(name);
                continue;
            }
            let slot = match name {
                ENV_CONFIG => &mut o.config,
                ENV_MODULE => &mut o.module,
                _ => &mut o.log,
            };
            *slot = Some(PathBuf::from(value));
        }
        o
    }

    /// Says which variables were ignored and why.
    pub fn ignored_note(&self) -> String {
        format!(
            "{} in the environment ignored: the process runs setuid, setgid or with added \
             capabilities (AT_SECURE), so its environment is not trusted",
            self.ignored.join(", ")
        )
    }
}

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

enum ReadError {
    Io(std::io::Error),
    Refused(String),
}

/// Reads the configuration file after checking that only root or this process's own
/// user can change it (see [`crate::trust`]): its owner and mode as opened, and every
/// directory above it.
fn read_trusted(path: &Path) -> Result<String, ReadError> {
    use std::io::Read;
    let resolved = std::fs::canonicalize(path).map_err(ReadError::Io)?;
    let mut file = std::fs::File::open(&resolved).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    match crate::trust::check_opened(path, &resolved, &meta, crate::os::euid()) {
        Ok(()) => {}
        Err(crate::trust::TrustError::Io(e)) => return Err(ReadError::Io(e)),
        Err(crate::trust::TrustError::Untrusted(u)) => {
            return Err(ReadError::Refused(format!("refused: {}", u.reason())));
        }
    }
    let mut text = String::new();
    (&mut file)
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(ReadError::Io)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ReadError::Refused(format!(
            "is larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// Environment variable naming the trail file; overrides `trail.path`.
pub const ENV_LOG: &str = "KEYTRAIL_LOG";
/// Where the trail goes when nothing says otherwise.
pub const DEFAULT_TRAIL_PATH: &str = "/var/log/keytrail/keytrail.jsonl";

/// A lifecycle category of the trail (CSA CCM LOG-11's key lifecycle events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Opening and closing sessions.
    Session,
    /// Logins and logouts.
    Auth,
    /// Token initialisation and PIN management.
    TokenAdmin,
    /// New keys made by the module.
    Generate,
    /// Keys brought in: created from a template, copied, unwrapped, derived.
    Import,
    /// Cryptographic operations with a key.
    Use,
    /// Key material leaving the module (wrapped or read as an attribute).
    Export,
    /// Attribute changes.
    Modify,
    /// Object destruction.
    Destroy,
    /// Discovery calls, recorded only at level `trace`.
    Discovery,
    /// The trail's own records: start, stop, gaps, faults.
    Audit,
}

impl Lifecycle {
    /// Every category that can be switched on or off.
    pub const ALL: [Lifecycle; 10] = [
        Lifecycle::Session,
        Lifecycle::Auth,
        Lifecycle::TokenAdmin,
        Lifecycle::Generate,
        Lifecycle::Import,
        Lifecycle::Use,
        Lifecycle::Export,
        Lifecycle::Modify,
        Lifecycle::Destroy,
        Lifecycle::Discovery,
    ];

    /// The name used in the trail and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Session => "session",
            Lifecycle::Auth => "auth",
            Lifecycle::TokenAdmin => "token_admin",
            Lifecycle::Generate => "generate",
            Lifecycle::Import => "import",
            Lifecycle::Use => "use",
            Lifecycle::Export => "export",
            Lifecycle::Modify => "modify",
            Lifecycle::Destroy => "destroy",
            Lifecycle::Discovery => "discovery",
            Lifecycle::Audit => "audit",
        }
    }
}

/// How much of key usage is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UsageDetail {
    /// One record per operation.
    #[default]
    Every,
    /// Only the first use of each key per process, as HSM audit logs offer to cut volume.
    First,
    /// One record per key, operation and mechanism per `summary_interval` seconds, with
    /// counts; every failure still has its own record.
    Summary,
}

/// How opening and closing sessions is recorded (`[audit] sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SessionDetail {
    /// One record per C_OpenSession, C_CloseSession and C_CloseAllSessions.
    #[default]
    Every,
    /// One record per slot per `summary_interval` seconds, with counts of the sessions
    /// opened and closed; every failed call still has its own record.
    Summary,
}

/// Audit level: `audit` records the key lifecycle; `trace` adds discovery calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// The key lifecycle (the default).
    #[default]
    Audit,
    /// The lifecycle plus discovery calls (C_Find*, C_Get*Info, non-secret attribute reads,
    /// random lengths), for debugging.
    Trace,
}

/// What is audited (`[audit]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Categories recorded; all lifecycle categories by default.
    pub categories: Vec<Lifecycle>,
    /// `audit` or `trace`.
    pub level: Level,
    /// `every`, `first` or `summary`.
    pub usage: UsageDetail,
    /// `every` or `summary`: a record per session opened and closed, or counts per slot
    /// and interval.
    pub sessions: SessionDetail,
    /// Seconds each usage or session summary covers (`usage = "summary"`,
    /// `sessions = "summary"`).
    pub summary_interval: u64,
    /// Look up a key's non-secret identity through the module when the trail has not seen
    /// it created.
    pub key_lookups: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            categories: Lifecycle::ALL
                .into_iter()
                .filter(|c| *c != Lifecycle::Discovery)
                .collect(),
            level: Level::Audit,
            usage: UsageDetail::Every,
            sessions: SessionDetail::Every,
            summary_interval: 60,
            key_lookups: true,
        }
    }
}

impl AuditConfig {
    /// Whether records of this category are written.
    pub fn enabled(&self, c: Lifecycle) -> bool {
        match c {
            Lifecycle::Audit => true,
            Lifecycle::Discovery => self.level == Level::Trace,
            _ => self.categories.contains(&c),
        }
    }
}

/// Where the trail goes and what happens when it cannot keep up (`[trail]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrailConfig {
    /// The trail file. `{pid}` in it becomes the process id, so that each process can
    /// have its own file; without it, processes share the file, each writing whole lines.
    pub path: PathBuf,
    /// Start a new file every hour or day (`never`, `hourly`, `daily`).
    pub rotate: Rotate,
    /// Start a new file when the current one reaches this size.
    pub max_bytes: Option<u64>,
    /// Keep at most this many trail files, deleting the oldest.
    pub keep: Option<usize>,
    /// Records the queue to the writer thread holds.
    pub queue: usize,
    /// When the queue is full: `wait` (nothing is lost) or `drop` (counted and recorded).
    pub on_full: OnFull,
    /// When the trail cannot be written: `continue` (serve, retry, report the loss) or
    /// `deny` (refuse audited calls until it can).
    pub on_failure: OnFailure,
    /// Under `on_full = "wait"`, how long a call waits for room (milliseconds) before the
    /// writer counts as stuck and `on_failure` applies.
    pub wait_ms: u64,
    /// The record format: `ecs` (Elastic Common Schema) or `ocsf` (OCSF 1.3).
    pub format: Format,
    /// Who writes the trail: `embedded` (a writer thread in this process, the default) or
    /// `agent` (the `keytrail agent` daemon at `agent_socket`; `path` is then used only
    /// when the agent cannot be reached and `on_failure = "continue"`).
    pub mode: TrailMode,
    /// The agent's socket (`mode = "agent"`).
    pub agent_socket: PathBuf,
}

/// The record format (`[trail] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Elastic Common Schema field names, PKCS#11 specifics under `pkcs11.*`.
    #[default]
    Ecs,
    /// OCSF 1.3 event classes (docs/events.md), PKCS#11 specifics under `unmapped`.
    Ocsf,
}

/// Who writes the trail (`[trail] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrailMode {
    /// A writer thread in the audited process.
    #[default]
    Embedded,
    /// The `keytrail agent` daemon, through a shared-memory ring.
    Agent,
}

/// Where the agent listens by default.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/keytrail/agent.sock";

/// Time-based rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Rotate {
    /// One file (unless `max_bytes` is set).
    #[default]
    Never,
    /// A file per UTC hour.
    Hourly,
    /// A file per UTC day.
    Daily,
}

/// Queue-full policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// The calling thread waits for room: nothing is lost.
    #[default]
    Wait,
    /// The record is dropped, counted, and the trail says how many were lost.
    Drop,
}

/// Sink-failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Keep serving; retry the sink; report the loss on stderr and in the trail.
    #[default]
    Continue,
    /// Fail closed: audited calls return CKR_FUNCTION_FAILED before reaching the module.
    Deny,
}

/// How long a call waits for room in a full queue by default (milliseconds).
pub const DEFAULT_WAIT_MS: u64 = 2000;

/// Records the writer queue holds by default.
pub const DEFAULT_QUEUE: usize = 8192;

/// The largest `[trail] queue` accepted: larger queues are refused when the configuration
/// is read, so that a typo can never make the host allocate gigabytes (or abort).
pub const MAX_QUEUE: usize = 262_144;

impl Default for TrailConfig {
    fn default() -> Self {
        TrailConfig {
            path: PathBuf::from(DEFAULT_TRAIL_PATH),
            rotate: Rotate::Never,
            max_bytes: None,
            keep: None,
            queue: DEFAULT_QUEUE,
            on_full: OnFull::Wait,
            on_failure: OnFailure::Continue,
            wait_ms: DEFAULT_WAIT_MS,
            format: Format::Ecs,
            mode: TrailMode::Embedded,
            agent_socket: PathBuf::from(DEFAULT_AGENT_SOCKET),
        }
    }
}

/// Default interval between checkpoint records.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// Default length of a forward-secure epoch.
pub const DEFAULT_EPOCH_INTERVAL: Duration = Duration::from_secs(3600);

/// How records are sealed (`[integrity] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IntegrityMode {
    /// A hash chain, keyed when `key_file` is set.
    Chained,
    /// One HMAC key per epoch, each derived one-way from the previous one.
    ForwardSecure,
}

/// The hash chain (`[integrity]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrityConfig {
    /// `"chained"` (default: SHA-256, or HMAC with `key_file`) or `"forward-secure"`
    /// (one key per epoch, see docs/integrity.md).
    pub mode: IntegrityMode,
    /// Forward-secure mode: the length of an epoch.
    pub epoch_interval: Interval,
    /// Forward-secure mode: where the initial key is written once, when `key_file` does
    /// not exist yet, for the verifier (move it off the host).
    pub initial_key_file: Option<PathBuf>,
    /// How often a checkpoint record carrying the head of the chain is written, even when
    /// idle: `"60s"`, `"5m"`, or an integer number of seconds; `0` or `"off"` disables.
    pub checkpoint_interval: Interval,
    /// Keyed mode: the file whose bytes are the HMAC-SHA256 key. It must be readable by its
    /// owner only.
    pub key_file: Option<PathBuf>,
    /// A second file (on another disk or a remote mount) that receives a copy of every
    /// `trail_start`, `checkpoint` and `trail_stop` record: the heads that let
    /// `keytrail verify --head` detect a truncated trail.
    pub anchor_file: Option<PathBuf>,
    /// Send the same records to syslog (facility authpriv), for a collector to keep.
    pub syslog: bool,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        IntegrityConfig {
            mode: IntegrityMode::Chained,
            epoch_interval: Interval(Some(DEFAULT_EPOCH_INTERVAL)),
            initial_key_file: None,
            checkpoint_interval: Interval(Some(DEFAULT_CHECKPOINT_INTERVAL)),
            key_file: None,
            anchor_file: None,
            syslog: false,
        }
    }
}

/// An optional interval, written as a humantime string (`"60s"`) or integer seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawInterval")]
pub struct Interval(pub Option<Duration>);

#[derive(Deserialize)]
#[serde(untagged)]
enum RawInterval {
    Seconds(u64),
    Text(String),
}

impl TryFrom<RawInterval> for Interval {
    type Error = String;
    fn try_from(raw: RawInterval) -> Result<Self, Self::Error> {
        let d = match raw {
            RawInterval::Seconds(n) => Duration::from_secs(n),
            RawInterval::Text(t) if t.trim() == "off" => Duration::ZERO,
            RawInterval::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                format!("`{t}` is not a duration ({e}); write e.g. \"60s\", \"5m\" or \"off\"")
            })?,
        };
        Ok(Interval((!d.is_zero()).then_some(d)))
    }
}

/// The file's shape. Unknown keys are errors: a misspelt key silently ignored is how an
/// operator ends up believing something is audited when it is not.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    module: Option<PathBuf>,
    diagnostics: Option<PathBuf>,
    service: Option<String>,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    trail: TrailConfig,
    #[serde(default)]
    integrity: IntegrityConfig,
    seal: Option<SealSection>,
    #[serde(default)]
    watch: WatchConfig,
    #[serde(default)]
    syslog: Vec<SyslogConfig>,
}

/// The rules `keytrail watch` knows, in the order of the documentation.
pub const WATCH_RULES: [&str; 9] = [
    "key_destroyed",
    "key_exported",
    "secret_attribute_read",
    "failed_logins",
    "token_initialized",
    "new_key_user",
    "records_lost",
    "chain_invalid",
    "checkpoint_overdue",
];

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Worth a look soon.
    Medium,
    /// Someone should act.
    High,
    /// Someone should act now.
    Critical,
}

impl Severity {
    /// The name used in alerts and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// The syslog severity (RFC 5424): notice, warning, error, critical.
    pub fn syslog(self) -> u8 {
        match self {
            Severity::Low => 5,
            Severity::Medium => 4,
            Severity::High => 3,
            Severity::Critical => 2,
        }
    }
}

/// One rule's settings (`[watch.rules.<name>]`); what is left out keeps the rule's
/// default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Whether the rule runs.
    pub enabled: Option<bool>,
    /// The severity of its alerts.
    pub severity: Option<Severity>,
    /// `failed_logins`: how many failures raise an alert.
    pub threshold: Option<u64>,
    /// `failed_logins`: within how long.
    pub window: Option<Interval>,
    /// `failed_logins`: count per `"user"` or per `"process"`.
    pub per: Option<String>,
    /// `checkpoint_overdue`: how long past its checkpoint interval a stream may stay
    /// silent.
    pub slack: Option<Interval>,
}

/// Where alerts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AlertOutput {
    /// One JSON line per alert on standard output.
    #[default]
    Stdout,
    /// Appended to `[watch] file`.
    File,
    /// An RFC 5424 message to the local syslog socket (`[watch] syslog_socket`).
    Syslog,
}

/// `keytrail watch` (`[watch]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Trail files or directories to follow; the directory of `[trail] path` when empty.
    pub paths: Vec<PathBuf>,
    /// Where alerts go.
    pub output: AlertOutput,
    /// The file alerts are appended to with `output = "file"`.
    pub file: Option<PathBuf>,
    /// The local syslog socket (a unix datagram socket).
    pub syslog_socket: PathBuf,
    /// A program run once per alert, with the alert's JSON on its standard input: the
    /// program and its arguments, never through a shell.
    pub command: Vec<String>,
    /// Where what the rules learnt (which executables and users use each key) and how far
    /// each file was read are kept across restarts.
    pub state_file: Option<PathBuf>,
    /// How often the trail is looked at for new records, in milliseconds.
    pub poll_ms: u64,
    /// Per-rule settings, by rule name.
    pub rules: std::collections::BTreeMap<String, RuleConfig>,
}

/// The local syslog socket.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            paths: Vec::new(),
            output: AlertOutput::Stdout,
            file: None,
            syslog_socket: PathBuf::from(DEFAULT_SYSLOG_SOCKET),
            command: Vec::new(),
            state_file: None,
            poll_ms: 500,
            rules: std::collections::BTreeMap::new(),
        }
    }
}

/// What `keytrail watch` reads of the configuration file: its own section, where the
/// trail is and how it is sealed. Unlike [`Config`], no module is needed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchSettings {
    /// The file it was read from, if any.
    pub source: Option<PathBuf>,
    /// `[watch]`.
    pub watch: WatchConfig,
    /// `[trail]`.
    pub trail: TrailConfig,
    /// `[integrity]`.
    pub integrity: IntegrityConfig,
}

impl WatchSettings {
    /// Reads `path` (a missing file is an error only when `must_exist`), checked as the
    /// library checks its configuration, and validates the `[watch]` section.
    pub fn resolve(path: &Path, must_exist: bool) -> Result<WatchSettings, ConfigError> {
        let bad = |key: String, problem: String| ConfigError {
            file: Some(path.to_path_buf()),
            key: Some(key),
            problem,
        };
        let (file, source, _) = Config::read_file(path, must_exist)?;
        let w = &file.watch;
        for (name, rule) in &w.rules {
            if !WATCH_RULES.contains(&name.as_str()) {
                return Err(bad(
                    format!("watch.rules.{name}"),
                    format!("unknown rule; one of {}", WATCH_RULES.join(", ")),
                ));
            }
            let counts = name == "failed_logins";
            let misplaced = if !counts && rule.threshold.is_some() {
                Some("threshold")
            } else if !counts && rule.window.is_some() {
                Some("window")
            } else if !counts && rule.per.is_some() {
                Some("per")
            } else if name != "checkpoint_overdue" && rule.slack.is_some() {
                Some("slack")
            } else {
                None
            };
            if let Some(key) = misplaced {
                return Err(bad(
                    format!("watch.rules.{name}.{key}"),
                    format!("`{key}` is not a setting of this rule"),
                ));
            }
            if rule.window.is_some_and(|w| w.0.is_none()) {
                return Err(bad(
                    format!("watch.rules.{name}.window"),
                    "must be longer than 0".into(),
                ));
            }
            if rule.threshold == Some(0) {
                return Err(bad(
                    format!("watch.rules.{name}.threshold"),
                    "must be at least 1".into(),
                ));
            }
            if let Some(per) = &rule.per
                && per != "user"
                && per != "process"
            {
                return Err(bad(
                    format!("watch.rules.{name}.per"),
                    format!("`{per}`: write \"user\" or \"process\""),
                ));
            }
        }
        if w.output == AlertOutput::File && w.file.is_none() {
            return Err(bad(
                "watch.file".into(),
                "output = \"file\" needs the file to append alerts to".into(),
            ));
        }
        if w.poll_ms == 0 {
            return Err(bad("watch.poll_ms".into(), "must be at least 1".into()));
        }
        Ok(WatchSettings {
            source,
            watch: file.watch,
            trail: file.trail,
            integrity: file.integrity,
        })
    }
}

/// How a syslog sink reaches its collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyslogTransport {
    /// A local datagram socket (`path`, `/dev/log` by default).
    #[default]
    Local,
    /// TCP to `address`, octet-counted (RFC 6587).
    Tcp,
    /// TLS to `address` (RFC 5425), the collector checked against `ca_file`.
    Tls,
}

/// Where the local transport sends by default.
pub const DEFAULT_SYSLOG_PATH: &str = "/dev/log";
/// Messages sent again after a TCP or TLS connection broke, by default.
pub const DEFAULT_SYSLOG_RESEND: usize = 64;

/// One `[[syslog]]` sink: every record of the trail, sealed, as an RFC 5424 message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The sink's name in loss records and diagnostics (default: transport and address).
    #[serde(default)]
    pub name: Option<String>,
    /// `local`, `tcp` or `tls`.
    #[serde(default)]
    pub transport: SyslogTransport,
    /// The local socket (`transport = "local"`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `host:port` of the collector (`tcp`, `tls`).
    #[serde(default)]
    pub address: Option<String>,
    /// The name the collector's certificate must carry (default: the host of `address`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file of the certificates that may sign the collector's (`tls`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to the collector (`tls`, optional).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`, readable by its owner only.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Syslog facility name (default `authpriv`).
    #[serde(default = "default_facility")]
    pub facility: String,
    /// APP-NAME of the messages (default `keytrail`).
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// Records held for this sink while its collector is slow or unreachable.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// When that queue is full; the trail's `on_full` by default.
    #[serde(default)]
    pub on_full: Option<OnFull>,
    /// When the collector cannot be reached; the trail's `on_failure` by default.
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// Under `on_full = "wait"`, how long the writer waits for room (milliseconds); the
    /// trail's `wait_ms` by default.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Connect and write timeout (milliseconds).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Messages sent again after a TCP or TLS connection broke: records the collector may
    /// not have read before it went away. Duplicates carry the same stream and seq.
    #[serde(default = "default_resend")]
    pub resend: usize,
}

fn default_facility() -> String {
    "authpriv".into()
}
fn default_app_name() -> String {
    "keytrail".into()
}
fn default_queue() -> usize {
    DEFAULT_QUEUE
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_resend() -> usize {
    DEFAULT_SYSLOG_RESEND
}

impl SyslogConfig {
    /// Checks what can be checked without connecting; the error names the key.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if crate::sink::syslog::frame::facility_code(&self.facility).is_none() {
            return Err((
                "facility",
                format!(
                    "`{}` is not a syslog facility (auth, authpriv, daemon, local0 … local7, …)",
                    self.facility
                ),
            ));
        }
        if self.queue == 0 || self.queue > MAX_QUEUE {
            return Err(("queue", format!("must be between 1 and {MAX_QUEUE}")));
        }
        match self.transport {
            SyslogTransport::Local => {
                if self.address.is_some() {
                    return Err(("address", "only for transport \"tcp\" or \"tls\"".into()));
                }
            }
            SyslogTransport::Tcp | SyslogTransport::Tls => {
                let Some(a) = &self.address else {
                    return Err(("address", "required: \"host:port\" of the collector".into()));
                };
                if a.rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                {
                    return Err(("address", format!("`{a}` is not host:port")));
                }
                if self.path.is_some() {
                    return Err(("path", "only for transport \"local\"".into()));
                }
            }
        }
        let tls = self.transport == SyslogTransport::Tls;
        if tls && self.ca_file.is_none() {
            return Err((
                "ca_file",
                "required with transport \"tls\": the CA that signs the collector's certificate"
                    .into(),
            ));
        }
        let tls_keys = [
            ("ca_file", self.ca_file.is_some()),
            ("cert_file", self.cert_file.is_some()),
            ("key_file", self.key_file.is_some()),
            ("server_name", self.server_name.is_some()),
        ];
        if let Some((k, _)) = tls_keys.iter().find(|(_, set)| *set && !tls) {
            return Err((k, "only for transport \"tls\"".into()));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err((
                if self.cert_file.is_some() {
                    "key_file"
                } else {
                    "cert_file"
                },
                "cert_file and key_file go together".into(),
            ));
        }
        Ok(())
    }
}

/// `[seal]`: where the key that signs checkpoint heads is (see `keytrail::seal`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealSection {
    /// The module holding the key; the trail's module when absent.
    pub module: Option<PathBuf>,
    /// The token's label.
    pub token_label: String,
    /// The private key's CKA_LABEL.
    pub key_label: Option<String>,
    /// The private key's CKA_ID, in hex.
    pub key_id: Option<String>,
    /// A file holding the user PIN, readable by its owner only.
    pub pin_file: PathBuf,
}

/// A configuration problem, worded for the operator: it names the file, the key and what
/// is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file concerned, if any.
    pub file: Option<PathBuf>,
    /// The key concerned, if any.
    pub key: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "configuration {}", p.display())?,
            None => write!(f, "configuration")?,
        }
        if let Some(k) = &self.key {
            write!(f, ", key `{k}`")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the configuration the way the library does: the file named by
    /// `KEYTRAIL_CONFIG` (which must then exist), else the default path if it exists, then
    /// the environment overrides — all of which a process in secure-execution mode ignores
    /// (see [`EnvOverrides::from_process`]).
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_with(&EnvOverrides::from_process())
    }

    /// Reads the configuration with the given environment overrides.
    pub fn load_with(env: &EnvOverrides) -> Result<Config, ConfigError> {
        let (path, must_exist) = match &env.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut config =
            Self::resolve(&path, must_exist, env.module.clone()).map_err(|mut e| {
                if !env.ignored.is_empty() {
                    e.problem.push_str(&format!(" ({})", env.ignored_note()));
                }
                e
            })?;
        if let Some(log) = &env.log {
            config.trail.path = log.clone();
        }
        config.env_ignored = env.ignored.clone();
        Ok(config)
    }

    /// Reads `path` (a missing file is an error only when `must_exist`) and applies an
    /// optional module override.
    pub fn resolve(
        path: &Path,
        must_exist: bool,
        module_override: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let (file, source, source_sha256) = Self::read_file(path, must_exist)?;
        let module = match module_override.or(file.module) {
            Some(m) => m,
            None => {
                let problem = match &source {
                    Some(_) => format!(
                        "no real PKCS#11 module is named; set `module = \"/path/to/module.so\"` or {ENV_MODULE}"
                    ),
                    None => format!(
                        "the file does not exist and {ENV_MODULE} is not set, so there is no real PKCS#11 module to load; create it or set {ENV_CONFIG}"
                    ),
                };
                return Err(ConfigError {
                    file: Some(path.to_path_buf()),
                    key: source.as_ref().map(|_| "module".to_string()),
                    problem,
                });
            }
        };
        if file.trail.queue == 0 || file.trail.queue > MAX_QUEUE {
            return Err(ConfigError {
                file: Some(path.to_path_buf()),
                key: Some("trail.queue".into()),
                problem: format!("must be between 1 and {MAX_QUEUE}"),
            });
        }
        if file.trail.keep == Some(0) || file.trail.max_bytes == Some(0) {
            return Err(ConfigError {
                file: Some(path.to_path_buf()),
                key: Some(
                    if file.trail.keep == Some(0) {
                        "trail.keep"
                    } else {
                        "trail.max_bytes"
                    }
                    .into(),
                ),
                problem: "must be at least 1".into(),
            });
        }
        if let Some(key_file) = &file.integrity.key_file
            // A forward-secure key file is made on first use.
            && (file.integrity.mode == IntegrityMode::Chained || key_file.exists())
        {
            crate::sink::chain::check_key_file(key_file).map_err(|problem| ConfigError {
                file: Some(path.to_path_buf()),
                key: Some("integrity.key_file".into()),
                problem,
            })?;
        }
        for (i, sink) in file.syslog.iter().enumerate() {
            sink.check().map_err(|(key, problem)| ConfigError {
                file: Some(path.to_path_buf()),
                key: Some(format!("syslog[{i}].{key}")),
                problem,
            })?;
        }
        Ok(Config {
            source,
            module,
            diagnostics: file.diagnostics,
            service: file.service,
            audit: file.audit,
            trail: file.trail,
            integrity: file.integrity,
            seal: file.seal,
            syslog: file.syslog,
            source_sha256,
            env_ignored: Vec::new(),
        })
    }

    /// Reads and parses `path` after the trust checks: the file's contents (defaults
    /// when it is missing and need not exist), where they came from and their SHA-256.
    fn read_file(
        path: &Path,
        must_exist: bool,
    ) -> Result<(FileConfig, Option<PathBuf>, Option<String>), ConfigError> {
        let problem = |problem: String| ConfigError {
            file: Some(path.to_path_buf()),
            key: None,
            problem,
        };
        match read_trusted(path) {
            Ok(text) => {
                use sha2::Digest;
                let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
                Ok((
                    Self::parse(&text, path)?,
                    Some(path.to_path_buf()),
                    Some(digest),
                ))
            }
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                Ok((FileConfig::default(), None, None))
            }
            Err(ReadError::Io(e)) => Err(problem(format!("cannot be read: {e}"))),
            Err(ReadError::Refused(p)) => Err(problem(p)),
        }
    }

    fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str::<FileConfig>(text).map_err(|e| {
            let key = unknown_or_bad_key(&e, text);
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            let location = if line > 0 {
                format!("line {line}, column {col}: ")
            } else {
                String::new()
            };
            ConfigError {
                file: Some(path.to_path_buf()),
                key,
                problem: format!("{location}{}", e.message().trim()),
            }
        })
    }
}

/// The key a TOML error is about, as a dotted path (`section.key`): the key on the line
/// the error points at, prefixed by the table header above it.
fn unknown_or_bad_key(e: &toml::de::Error, text: &str) -> Option<String> {
    let offset = e.span()?.start.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next()?.trim().trim_matches('"');
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !is_key {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn reads_module_and_diagnostics() {
        let f = write("module = \"/x/y.so\"\ndiagnostics = \"/tmp/d.log\"\n");
        let c = Config::resolve(f.path(), true, None).expect("valid");
        assert_eq!(c.module, PathBuf::from("/x/y.so"));
        assert_eq!(c.diagnostics, Some(PathBuf::from("/tmp/d.log")));
        assert_eq!(c.source.as_deref(), Some(f.path()));
    }

    #[test]
    fn queue_sizes_beyond_the_maximum_are_refused() {
        for q in ["100000000", "18446744073709551615", "0"] {
            let f = write(&format!("module = \"/x/y.so\"\n[trail]\nqueue = {q}\n"));
            let e = Config::resolve(f.path(), true, None).expect_err("too large");
            assert_eq!(e.key.as_deref(), Some("trail.queue"), "{q}: {e}");
        }
        let f = write(&format!(
            "module = \"/x/y.so\"\n[trail]\nqueue = {MAX_QUEUE}\n"
        ));
        assert_eq!(
            Config::resolve(f.path(), true, None)
                .expect("max")
                .trail
                .queue,
            MAX_QUEUE
        );
    }

    #[test]
    fn environment_overrides_module() {
        let f = write("module = \"/x/y.so\"\n");
        let c = Config::resolve(f.path(), true, Some("/other.so".into())).expect("valid");
        assert_eq!(c.module, PathBuf::from("/other.so"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let f = write("module = \"/x/y.so\"\nmodul = \"/typo.so\"\n");
        let e = Config::resolve(f.path(), true, None).expect_err("unknown key");
        assert_eq!(e.key.as_deref(), Some("modul"));
        let msg = e.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn malformed_toml_names_the_line() {
        let f = write("module = \"/x/y.so\n");
        let e = Config::resolve(f.path(), true, None).expect_err("malformed");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let f = write("module = 3\n");
        let e = Config::resolve(f.path(), true, None).expect_err("wrong type");
        assert_eq!(e.key.as_deref(), Some("module"), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("absent.toml");
        let e = Config::resolve(&p, true, Some("/m.so".into())).expect_err("explicit");
        assert!(e.problem.contains("cannot be read"), "{e}");
        let c = Config::resolve(&p, false, Some("/m.so".into())).expect("default absent");
        assert_eq!(c.source, None);
        let e = Config::resolve(&p, false, None).expect_err("no module at all");
        assert!(e.problem.contains("KEYTRAIL_MODULE"), "{e}");
    }

    #[test]
    fn audit_section_is_read_and_validated() {
        let f = write(
            "module = \"/m.so\"\n[audit]\ncategories = [\"use\", \"destroy\"]\nusage = \"first\"\n",
        );
        let c = Config::resolve(f.path(), true, None).expect("valid");
        assert!(c.audit.enabled(Lifecycle::Use));
        assert!(!c.audit.enabled(Lifecycle::Auth));
        assert!(c.audit.enabled(Lifecycle::Audit));
        assert_eq!(c.audit.usage, UsageDetail::First);
        let f = write("module = \"/m.so\"\n[audit]\nusage = \"sometimes\"\n");
        let e = Config::resolve(f.path(), true, None).expect_err("bad value");
        assert_eq!(e.key.as_deref(), Some("audit.usage"), "{e}");
        assert!(e.problem.contains("line 3"), "{e}");
        assert_eq!(c.audit.sessions, SessionDetail::Every);
        let f = write("module = \"/m.so\"\n[audit]\nsessions = \"summary\"\n");
        let c = Config::resolve(f.path(), true, None).expect("valid");
        assert_eq!(c.audit.sessions, SessionDetail::Summary);
        let f = write("module = \"/m.so\"\n[audit]\nsessions = \"some\"\n");
        let e = Config::resolve(f.path(), true, None).expect_err("bad value");
        assert_eq!(e.key.as_deref(), Some("audit.sessions"), "{e}");
    }

    #[test]
    fn file_without_module_names_the_key() {
        let f = write("diagnostics = \"/tmp/d\"\n");
        let e = Config::resolve(f.path(), true, None).expect_err("no module");
        assert_eq!(e.key.as_deref(), Some("module"));
    }

    #[test]
    fn integrity_section_reads_intervals_and_checks_the_key_file() {
        let c = Config::resolve(write("module = \"/m.so\"\n").path(), true, None).expect("valid");
        assert_eq!(
            c.integrity.checkpoint_interval,
            Interval(Some(DEFAULT_CHECKPOINT_INTERVAL))
        );
        assert!(c.source_sha256.is_some());
        for (text, want) in [
            ("\"5m\"", Some(Duration::from_secs(300))),
            ("7", Some(Duration::from_secs(7))),
            ("0", None),
            ("\"off\"", None),
        ] {
            let f = write(&format!(
                "module = \"/m.so\"\n[integrity]\ncheckpoint_interval = {text}\n"
            ));
            let c = Config::resolve(f.path(), true, None).expect("valid");
            assert_eq!(c.integrity.checkpoint_interval, Interval(want), "{text}");
        }
        let f = write("module = \"/m.so\"\n[integrity]\ncheckpoint_interval = \"soon\"\n");
        let e = Config::resolve(f.path(), true, None).expect_err("bad interval");
        assert_eq!(
            e.key.as_deref(),
            Some("integrity.checkpoint_interval"),
            "{e}"
        );

        use std::os::unix::fs::PermissionsExt;
        let key = write("0123456789abcdef0123456789abcdef");
        std::fs::set_permissions(key.path(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let f = write(&format!(
            "module = \"/m.so\"\n[integrity]\nkey_file = \"{}\"\n",
            key.path().display()
        ));
        let e = Config::resolve(f.path(), true, None).expect_err("key readable by others");
        assert_eq!(e.key.as_deref(), Some("integrity.key_file"), "{e}");
        assert!(e.problem.contains("chmod 600"), "{e}");
        std::fs::set_permissions(key.path(), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let c = Config::resolve(f.path(), true, None).expect("private key file");
        assert_eq!(c.integrity.key_file.as_deref(), Some(key.path()));
    }

    #[test]
    fn secure_execution_ignores_every_environment_override() {
        let env = |k: &str| {
            Some(std::ffi::OsString::from(match k {
                ENV_CONFIG => "/home/u/evil.toml",
                ENV_MODULE => "/home/u/evil.so",
                ENV_LOG => "/root/only.log",
                _ => return None,
            }))
        };
        let plain = EnvOverrides::from_lookup(env, false);
        assert_eq!(plain.module.as_deref(), Some(Path::new("/home/u/evil.so")));
        assert_eq!(plain.log.as_deref(), Some(Path::new("/root/only.log")));
        assert!(plain.ignored.is_empty());
        let secure = EnvOverrides::from_lookup(env, true);
        assert_eq!(
            (secure.config, secure.module, secure.log),
            (None, None, None)
        );
        assert_eq!(secure.ignored, ENV_VARS.to_vec());
        // The default file is absent here: the error says the variables were ignored.
        let secure = EnvOverrides::from_lookup(env, true);
        if !Path::new(DEFAULT_CONFIG_PATH).exists() {
            let e = Config::load_with(&secure).expect_err("no module without the variables");
            assert!(e.problem.contains("KEYTRAIL_MODULE"), "{e}");
            assert!(e.problem.contains("AT_SECURE"), "{e}");
        }
    }

    #[test]
    fn watch_section_needs_no_module_and_checks_rule_names() {
        let f = write(
            "[watch]\noutput = \"file\"\nfile = \"/tmp/a.jsonl\"\n[watch.rules.failed_logins]\nthreshold = 3\nwindow = \"10s\"\nper = \"process\"\n",
        );
        let w = WatchSettings::resolve(f.path(), true).expect("valid");
        assert_eq!(w.watch.output, AlertOutput::File);
        let r = &w.watch.rules["failed_logins"];
        assert_eq!(r.threshold, Some(3));
        assert_eq!(r.window, Some(Interval(Some(Duration::from_secs(10)))));
        let f = write("[watch.rules.key_destroyd]\nenabled = false\n");
        let e = WatchSettings::resolve(f.path(), true).expect_err("typo");
        assert_eq!(e.key.as_deref(), Some("watch.rules.key_destroyd"), "{e}");
        let f = write("[watch]\noutput = \"file\"\n");
        let e = WatchSettings::resolve(f.path(), true).expect_err("no file");
        assert_eq!(e.key.as_deref(), Some("watch.file"), "{e}");
        let f = write("[watch.rules.key_destroyed]\nthreshold = 2\n");
        let e = WatchSettings::resolve(f.path(), true).expect_err("not a counting rule");
        assert_eq!(
            e.key.as_deref(),
            Some("watch.rules.key_destroyed.threshold"),
            "{e}"
        );
        let f = write("[watch.rules.failed_logins]\nper = \"host\"\n");
        let e = WatchSettings::resolve(f.path(), true).expect_err("bad per");
        assert_eq!(
            e.key.as_deref(),
            Some("watch.rules.failed_logins.per"),
            "{e}"
        );
    }

    #[test]
    fn syslog_sinks_are_read_and_checked() {
        let f = write(
            "module = \"/m.so\"\n[[syslog]]\n[[syslog]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:514\"\nfacility = \"local4\"\non_failure = \"deny\"\n",
        );
        let c = Config::resolve(f.path(), true, None).expect("valid");
        assert_eq!(c.syslog.len(), 2);
        assert_eq!(c.syslog[0].transport, SyslogTransport::Local);
        assert_eq!(c.syslog[0].app_name, "keytrail");
        assert_eq!(c.syslog[1].on_failure, Some(OnFailure::Deny));
        for (body, key) in [
            ("transport = \"tcp\"\n", "syslog[0].address"),
            (
                "transport = \"tcp\"\naddress = \"nohost\"\n",
                "syslog[0].address",
            ),
            (
                "transport = \"tls\"\naddress = \"h:1\"\n",
                "syslog[0].ca_file",
            ),
            ("ca_file = \"/ca.pem\"\n", "syslog[0].ca_file"),
            ("facility = \"mars\"\n", "syslog[0].facility"),
            ("queue = 0\n", "syslog[0].queue"),
            (
                "transport = \"tls\"\naddress = \"h:1\"\nca_file = \"/ca\"\ncert_file = \"/c\"\n",
                "syslog[0].key_file",
            ),
        ] {
            let f = write(&format!("module = \"/m.so\"\n[[syslog]]\n{body}"));
            let e = Config::resolve(f.path(), true, None).expect_err(body);
            assert_eq!(e.key.as_deref(), Some(key), "{body}: {e}");
        }
    }

    #[test]
    fn a_file_others_can_write_is_refused_with_owner_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let f = write("module = \"/m.so\"\n");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = Config::resolve(f.path(), true, None).expect_err("world-writable");
        let msg = e.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("mode 0666"), "{msg}");
        assert!(msg.contains("owner "), "{msg}");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        Config::resolve(f.path(), true, None).expect("private again");
    }
}
