//! `keytrail doctor`: checks the setup the library would use, and says in plain words
//! where the trail goes.

use super::text::{self, outln};
use super::verify;
use anyhow::Result;
use keytrail::audit::event::Event;
use keytrail::config::{self, Config, EnvOverrides};
use keytrail::os;
use keytrail::sink::chain::{self, Chain, Hasher, Key};
use keytrail::sink::json::Origin;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Options of `keytrail doctor`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Exit status: 0 when every check passed (warnings allowed), 1 when one failed.")]
pub struct DoctorArgs {
    /// Read the configuration as this running process sees it (its KEYTRAIL_CONFIG,
    /// KEYTRAIL_MODULE and KEYTRAIL_LOG, from /proc/PID/environ). For a process of
    /// another user, the checks run as that user.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Do not write the self-test records to the trail.
    #[arg(long)]
    pub no_write: bool,
}

struct Checks {
    failed: usize,
}

impl Checks {
    fn ok(&self, what: &str) {
        outln!("  ok    {what}");
    }
    fn warn(&self, what: &str) {
        outln!("  warn  {what}");
    }
    fn fail(&mut self, what: &str) {
        self.failed += 1;
        outln!("  FAIL  {what}");
    }
}

/// The environment of process `pid`, as it is (names and values are bytes).
fn environ(pid: u32) -> Result<Vec<(OsString, OsString)>> {
    use std::os::unix::ffi::OsStrExt;
    let raw = std::fs::read(format!("/proc/{pid}/environ")).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the environment of process {pid}: {e} (run as its user or root)"
        )
    })?;
    Ok(raw
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=')?;
            Some((
                OsStr::from_bytes(&kv[..eq]).to_os_string(),
                OsStr::from_bytes(&kv[eq + 1..]).to_os_string(),
            ))
        })
        .collect())
}

/// Where the configuration comes from, in words.
fn how(env: &EnvOverrides, whose: &str) -> String {
    match &env.config {
        Some(p) => format!("{whose} {} = {}", config::ENV_CONFIG, p.display()),
        None => format!(
            "{whose} no {}, so the default {}",
            config::ENV_CONFIG,
            config::DEFAULT_CONFIG_PATH
        ),
    }
}

/// Largest output relayed from a child running as another user.
const RELAY_LIMIT: usize = 1 << 20;

/// Runs `keytrail doctor`; returns the exit status.
///
/// With `--pid` of a process of another user, nothing that process's environment or
/// configuration names — the configuration file, the module, the trail, the key file —
/// is touched with this command's privileges: the checks run in a child process that
/// holds exactly that process's user and groups (see [`keytrail::os::run_as`]), and its
/// output is relayed here, escaped.
pub fn run(args: &DoctorArgs) -> Result<u8> {
    let Some(pid) = args.pid else {
        let env = EnvOverrides::from_process();
        return Ok(checks(args, &env, &how(&env, "this process has")));
    };
    let creds = os::credentials_of(pid)
        .map_err(|e| anyhow::anyhow!("cannot read the credentials of process {pid}: {e}"))?;
    let environ = environ(pid)?;
    let secure = os::secure_execution_of(pid).unwrap_or(false);
    let env = EnvOverrides::from_lookup(
        |k| {
            environ
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        },
        secure,
    );
    let how = how(&env, &format!("process {pid} has"));
    if creds.uid == os::euid() {
        return Ok(checks(args, &env, &how));
    }
    let user = os::user_name(creds.uid).unwrap_or_else(|| creds.uid.to_string());
    outln!(
        "process {pid} runs as {user} (uid {}, gid {}): the checks run as that user, in a \
         child process, so that nothing its environment or configuration names runs with \
         more privileges than the process itself has",
        creds.uid,
        creds.gid
    );
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let out = os::run_as(&creds, &environ, cwd.as_deref(), RELAY_LIMIT, || {
        checks(args, &env, &how)
    })
    .map_err(|e| anyhow::anyhow!("cannot start the checks as uid {}: {e}", creds.uid))?;
    let text = out.output.strip_suffix(b"\n").unwrap_or(&out.output);
    for line in text.split(|b| *b == b'\n') {
        println!("{}", text::escape_bytes(line));
    }
    if out.truncated {
        outln!("… output cut after {RELAY_LIMIT} bytes");
    }
    Ok(match out.status {
        0 => 0,
        1 => 1,
        os::RUN_AS_FAILED => verify::EXIT_ERROR,
        _ => {
            outln!("the checks ended abnormally (status {})", out.status);
            1
        }
    })
}

/// The checks, with the configuration these overrides give; returns the exit status.
fn checks(args: &DoctorArgs, env: &EnvOverrides, how: &str) -> u8 {
    let mut c = Checks { failed: 0 };
    outln!("configuration");
    outln!("  {how}");
    if !env.ignored.is_empty() {
        c.warn(&env.ignored_note());
    }
    let config = match Config::load_with(env) {
        Ok(cfg) => {
            match &cfg.source {
                Some(p) => c.ok(&format!("read {}", p.display())),
                None => c.warn("no configuration file: defaults and environment variables only"),
            }
            cfg
        }
        Err(e) => {
            c.fail(&e.to_string());
            outln!();
            outln!("result: the library would refuse C_Initialize (CKR_GENERAL_ERROR)");
            return 1;
        }
    };

    outln!("real module");
    let module = &config.module;
    match chain::sha256_file(module) {
        Ok(d) => c.ok(&format!("{} (sha256 {d})", module.display())),
        Err(e) => c.fail(&format!("{} cannot be read: {e}", module.display())),
    }
    if c.failed == 0 {
        match keytrail::probe::probe(module) {
            Ok(info) => {
                c.ok(&format!(
                    "loaded: {} {} (library {}, PKCS#11 {})",
                    info.manufacturer,
                    info.description,
                    info.library_version,
                    info.cryptoki_version
                ));
                if info.slots.is_empty() {
                    c.warn("the module has no slots");
                }
                for s in &info.slots {
                    match &s.token {
                        Some(t) => outln!(
                            "        slot {}: token \"{}\" serial {} model {}{}",
                            s.id,
                            t.label,
                            t.serial,
                            t.model,
                            if t.initialized {
                                ""
                            } else {
                                " (not initialised)"
                            }
                        ),
                        None => outln!("        slot {}: {} (no token)", s.id, s.description),
                    }
                }
            }
            Err(e) => c.fail(&format!("{}: {e}", module.display())),
        }
    }

    outln!("integrity");
    match config.integrity.checkpoint_interval.0 {
        Some(d) => c.ok(&format!(
            "checkpoints every {}",
            humantime::format_duration(d)
        )),
        None => c.warn("checkpoints are off: truncation of a live trail cannot be anchored"),
    }
    match &config.integrity.key_file {
        Some(k) => match Key::load(k) {
            Ok(key) => c.ok(&format!(
                "keyed mode: HMAC-SHA256 with {} (key id {})",
                k.display(),
                key.id()
            )),
            Err(e) => c.fail(&e),
        },
        None => c.ok("unkeyed mode: SHA-256 chain (anyone can recompute it; set [integrity] key_file for HMAC)"),
    }

    outln!("trail");
    let trail = &config.trail.path;
    check_dir(&mut c, trail);
    if !args.no_write {
        self_test(&mut c, &config);
    }

    outln!();
    outln!("An application that loads libkeytrail.so with this configuration writes its trail to");
    outln!("  {}", trail.display());
    outln!(
        "as user {} — that user must be able to create and append to it (files are created 0600,",
        os::user_name(os::uid()).unwrap_or_else(|| os::uid().to_string())
    );
    outln!(
        "a missing directory 0700). keytrail's own diagnostics go to stderr{}.",
        config
            .diagnostics
            .as_ref()
            .map(|d| format!(" and {}", d.display()))
            .unwrap_or_default()
    );
    outln!(
        "Remember: sudo, systemd and Java may strip {} / {}, and a setuid program ignores them; the configuration file is what they all read.",
        config::ENV_CONFIG,
        config::ENV_LOG
    );
    outln!();
    if c.failed > 0 {
        outln!("result: {} check(s) FAILED", c.failed);
        1
    } else {
        outln!("result: all checks passed");
        0
    }
}

fn check_dir(c: &mut Checks, trail: &Path) {
    let dir = trail
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The nearest existing ancestor is where the directory would be created.
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => break,
        }
    }
    match std::fs::metadata(existing) {
        Ok(m) if !m.is_dir() => {
            c.fail(&format!(
                "{} is not a directory, so {} cannot be created",
                existing.display(),
                trail.display()
            ));
            return;
        }
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            let owner = keytrail::os::user_name(m.uid()).unwrap_or_else(|| m.uid().to_string());
            if existing == dir {
                c.ok(&format!(
                    "directory {} exists (mode {mode:04o}, owner {owner})",
                    dir.display()
                ));
            } else {
                c.warn(&format!(
                    "directory {} does not exist; the library will create it (0700) inside {} (mode {mode:04o}, owner {owner})",
                    dir.display(),
                    existing.display()
                ));
            }
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                c.warn(&format!(
                    "{} is writable by everyone: anyone could replace or remove trail files",
                    existing.display()
                ));
            }
            if !writable(existing) {
                c.fail(&format!(
                    "{} is not writable by this user ({})",
                    existing.display(),
                    keytrail::os::user_name(keytrail::os::uid()).unwrap_or_default()
                ));
            }
        }
        Err(e) => {
            c.fail(&format!("{}: {e}", existing.display()));
            return;
        }
    }
    if let Ok(m) = std::fs::metadata(trail) {
        let mode = m.permissions().mode() & 0o777;
        let what = format!(
            "trail file {} exists ({} bytes, mode {mode:03o})",
            trail.display(),
            m.len()
        );
        if mode & 0o077 != 0 {
            c.warn(&format!(
                "{what}: readable or writable by others than its owner"
            ));
        } else {
            c.ok(&what);
        }
    }
}

fn writable(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path for the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// Writes a self-test stream (start, self-test, stop) through the writer's chain code, then
/// reads it back and verifies it.
fn self_test(c: &mut Checks, config: &Config) {
    let trail = &config.trail.path;
    let mut chain = match Chain::new(&config.integrity) {
        Ok(ch) => ch,
        Err(e) => return c.fail(&format!("self-test: {e}")),
    };
    chain.set_format(config.trail.format);
    let origin = Origin::current(Some("keytrail-doctor".into()));
    let mut buf = Vec::new();
    let start = Event::audit(
        "trail_start",
        "keytrail doctor self-test".into(),
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "module": config.module.display().to_string(),
            "config": config.source.as_ref().map(|p| p.display().to_string()),
            "config_sha256": config.source_sha256,
            "doctor": true,
        }),
    );
    chain.append(&start, &origin, &mut buf);
    chain.append(
        &Event::audit(
            "selftest",
            "keytrail doctor self-test record".into(),
            serde_json::json!({}),
        ),
        &origin,
        &mut buf,
    );
    chain.append(
        &Event::audit(
            "trail_stop",
            "keytrail doctor self-test".into(),
            serde_json::json!({"reason": "doctor"}),
        ),
        &origin,
        &mut buf,
    );
    let stream = chain.stream().to_string();
    let mut file = match keytrail::sink::open_trail(trail) {
        Ok(f) => f,
        Err(e) => {
            return c.fail(&format!(
                "cannot open {} for appending: {e}",
                trail.display()
            ));
        }
    };
    let offset = file.metadata().map(|m| m.len()).unwrap_or(0);
    if let Err(e) = file.write_all(&buf) {
        return c.fail(&format!("cannot write {}: {e}", trail.display()));
    }
    // Read back what was appended since, and verify our stream.
    let mut back = Vec::new();
    let read = std::fs::File::open(trail).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        f.read_to_end(&mut back)
    });
    if let Err(e) = read {
        return c.fail(&format!("cannot read {} back: {e}", trail.display()));
    }
    let hasher = match &config.integrity.key_file {
        Some(k) => Key::load(k).and_then(|k| Hasher::new(Some(&k))),
        None => Ok(Hasher::Plain),
    };
    let Ok(hasher) = hasher else {
        return c.fail("self-test: the key cannot be read back");
    };
    let mut verified = 0;
    let mut prev: Option<String> = None;
    for line in back.split(|b| *b == b'\n') {
        if !line.windows(stream.len()).any(|w| w == stream.as_bytes()) {
            continue;
        }
        let ok = chain::split_signed(line).is_some_and(|(prefix, hash)| {
            let stated_prev = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| {
                    // ECS, or OCSF where the chain's fields are under `unmapped`.
                    let i = v.get("integrity").unwrap_or(&v["unmapped"]["integrity"]);
                    i["prev"].as_str().map(str::to_string)
                });
            hex::encode(hasher.hash(prefix)).as_bytes() == hash && stated_prev == prev && {
                prev = Some(String::from_utf8_lossy(hash).into_owned());
                true
            }
        });
        if !ok {
            return c.fail(&format!(
                "the self-test record read back from {} does not verify",
                trail.display()
            ));
        }
        verified += 1;
    }
    if verified == 3 {
        c.ok(&format!(
            "wrote and verified a self-test stream ({stream}, 3 records) in {}",
            trail.display()
        ));
    } else {
        c.fail(&format!(
            "wrote 3 self-test records to {} but read back {verified}",
            trail.display()
        ));
    }
}
