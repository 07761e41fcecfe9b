//! `keytrail show`: the trail as a timeline for people, one line per record, streaming.
//!
//! ```text
//! === 2026-11-28 (UTC) ===
//! 18:12:01.123   4809 root     auth        login               FAIL  CKR_PIN_INCORRECT  CKU_USER  token "demo"
//! 18:12:01.201   4811 root     generate    key_generate        ok    key "payments-kek" (CKK_AES 256, id 6b01)  CKM_AES_KEY_GEN
//! ```
//!
//! Text from the trail (labels, user names, messages, everything but keytrail's own
//! colours) goes through [`super::text::escape`], so a crafted key label cannot drive
//! or mislead the terminal.

use super::input::{self, Progress};
use super::record::{FilterArgs, Filters, KeyRec, P11, Rec};
use super::text::{errln, escape};
use anyhow::Result;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

/// Options of `keytrail show`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Columns: time, pid, user, lifecycle category, action, outcome \
(ok, FAIL, or ? for an operation abandoned or cancelled), then the details: the CK_RV name \
of a failure, the keys (label, key type and size, CKA_ID), the mechanism, operation parts \
and data lengths, notable flags in [brackets], and the message of keytrail's own records.\n\n\
Damaged lines are reported on stderr with file:line and skipped."
)]
pub struct ShowArgs {
    /// Trail files, or directories (every *.jsonl* file in them).
    #[arg(required = true, value_name = "FILES|DIR")]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Show times in UTC instead of the local time zone.
    #[arg(long)]
    pub utc: bool,
    /// Colour the outcome and notable flags: `auto` colours only a terminal, and not when
    /// NO_COLOR is set.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// Read files in the order given instead of by their first record's time.
    #[arg(long)]
    pub keep_order: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// When to colour the output.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is not set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// Flags worth drawing attention to.
const NOTABLE_FLAGS: [&str; 3] = ["token_wiped", "plaintext_key_material", "secret_value_read"];

/// A record's time, split for display.
struct When {
    /// `YYYY-MM-DD`, with the zone: `2026-11-28 (UTC)`.
    date: String,
    /// `HH:MM:SS.mmm`.
    time: String,
}

/// Converts an RFC 3339 UTC `@timestamp` to the display zone.
fn when(timestamp: &str, utc: bool) -> Option<When> {
    if utc {
        // The trail's own form: 2026-11-28T18:10:44.837733Z. Checked byte by byte before
        // slicing: a crafted timestamp may hold multi-byte characters anywhere.
        let b = timestamp.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() >= 23
            && b[..23].is_ascii()
            && b[10] == b'T'
            && digits(0..4)
            && digits(11..13)
            && timestamp.ends_with('Z')
        {
            return Some(When {
                date: format!("{} (UTC)", &timestamp[..10]),
                time: timestamp[11..23].to_string(),
            });
        }
    }
    let t = humantime::parse_rfc3339_weak(timestamp).ok()?;
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    if utc {
        let s = humantime::format_rfc3339_millis(UNIX_EPOCH + since).to_string();
        return Some(When {
            date: format!("{} (UTC)", s.get(..10)?),
            time: s.get(11..23)?.to_string(),
        });
    }
    let secs = libc::time_t::try_from(since.as_secs()).ok()?;
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid for
    // the call, and tm_zone points into libc's static time zone data.
    let (tm, zone) = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return None;
        }
        let zone = if tm.tm_zone.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(tm.tm_zone)
                .to_string_lossy()
                .into_owned()
        };
        (tm, zone)
    };
    let off = tm.tm_gmtoff;
    let sign = if off < 0 { '-' } else { '+' };
    let abs = off.unsigned_abs();
    let zone = match (zone.as_str(), off) {
        ("UTC" | "GMT" | "", 0) => "UTC".to_string(),
        ("", _) => format!("UTC{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60),
        (name, _) => format!("{name}, UTC{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60),
    };
    Some(When {
        date: format!(
            "{:04}-{:02}-{:02} ({zone})",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
        ),
        time: format!(
            "{:02}:{:02}:{:02}.{:03}",
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            since.subsec_millis()
        ),
    })
}

/// `"payments-kek" (CKK_AES 256, id 6b01)`, without the noun.
fn key_body(k: &KeyRec<'_>) -> String {
    let mut s = String::new();
    if let Some(l) = &k.label {
        let _ = write!(s, "\"{}\" ", escape(l));
    }
    let mut inner = Vec::new();
    if let Some(t) = &k.key_type {
        inner.push(match k.bits {
            Some(b) => format!("{} {b}", escape(t)),
            None => escape(t).into_owned(),
        });
    } else if let Some(b) = k.bits {
        inner.push(format!("{b} bits"));
    }
    if let Some(id) = &k.id_hex {
        inner.push(format!("id {}", escape(id)));
    }
    if k.label.is_none() && inner.is_empty() {
        if let Some(u) = &k.unique_id {
            inner.push(format!("unique id {}", escape(u)));
        } else if let Some(h) = k.handle {
            inner.push(format!("handle {h}"));
        }
    }
    if k.token == Some(false) {
        inner.push("session object".into());
    }
    if !inner.is_empty() {
        let _ = write!(s, "({})", inner.join(", "));
    }
    s.trim_end().to_string()
}

/// What kind of object `k` is, in words.
fn key_noun(k: &KeyRec<'_>) -> &'static str {
    match k.class.as_deref() {
        None | Some("CKO_SECRET_KEY") => "key",
        Some("CKO_PRIVATE_KEY") => "private key",
        Some("CKO_PUBLIC_KEY") => "public key",
        Some("CKO_CERTIFICATE") => "certificate",
        Some("CKO_DATA") => "data object",
        Some(_) => "object",
    }
}

/// The keys of a record, compactly.
fn keys_text(p: &P11<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(k) = &p.key {
        out.push(format!("{} {}", key_noun(k), key_body(k)));
    }
    // A key pair whose halves share label and id: one item.
    if let (Some(pub_k), Some(priv_k)) = (p.keys.get("public"), p.keys.get("private")) {
        if p.key.is_none()
            && p.keys.len() == 2
            && pub_k.label == priv_k.label
            && pub_k.id_hex == priv_k.id_hex
        {
            let mut body = key_body(priv_k);
            if priv_k.key_type.is_none() && pub_k.key_type.is_some() {
                body = key_body(pub_k);
            }
            out.push(format!("key pair {body}"));
            return out;
        }
    }
    for (role, k) in &p.keys {
        let lead = match role.as_ref() {
            "public" | "private" => String::new(),
            "wrapping" | "unwrapping" => "with ".into(),
            "base" => "from ".into(),
            "source" => "copied from ".into(),
            other => format!("{}: ", escape(other)),
        };
        out.push(format!("{lead}{} {}", key_noun(k), key_body(k)));
    }
    out
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Formats one record as a line (without the newline).
fn line(r: &Rec<'_>, time: &str, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    };
    let outcome = match r.outcome() {
        "success" => paint(GREEN, "ok  "),
        "failure" => paint(&format!("{BOLD}{RED}"), "FAIL"),
        _ => paint(YELLOW, "?   "),
    };
    let pid = r.pid().map_or_else(|| "?".to_string(), |p| p.to_string());
    let user = escape(r.user().unwrap_or("?")).into_owned();
    let mut details: Vec<String> = Vec::new();
    if let Some(p) = &r.pkcs11 {
        if r.outcome() != "success" {
            if let Some(rv) = p.rv_name.as_deref().filter(|rv| *rv != "CKR_OK") {
                details.push(paint(RED, &escape(rv)));
            }
        }
        if let Some(a) = &p.auth {
            if let Some(ut) = &a.user_type {
                details.push(escape(ut).into_owned());
            }
            if let Some(un) = &a.username {
                details.push(format!("user \"{}\"", escape(un)));
            }
        }
        if matches!(r.lifecycle(), "auth" | "token_admin") {
            if let Some(l) = p.token.as_ref().and_then(|t| t.label.as_deref()) {
                details.push(format!("token \"{}\"", escape(l)));
            }
        }
        if let Some(c) = &p.sessions {
            // A session summary: what its slot's sessions did over the interval.
            let n = |v: Option<u64>| v.unwrap_or(0);
            details.push(format!(
                "{} opened ({} read/write), {} closed, {} open, at most {} at once",
                n(c.opened),
                n(c.opened_rw),
                n(c.closed),
                n(c.open),
                n(c.max_open)
            ));
            if let Some(l) = p.token.as_ref().and_then(|t| t.label.as_deref()) {
                details.push(format!("token \"{}\"", escape(l)));
            }
        }
        details.extend(keys_text(p));
        if let Some(m) = p.mechanism.as_ref().and_then(|m| m.name.as_deref()) {
            details.push(escape(m).into_owned());
        }
        let mut amounts = Vec::new();
        if let Some(op) = &p.operation {
            if let Some(n) = op.parts {
                amounts.push(plural(n, "part", "parts"));
            }
            if let Some(end) = op.end.as_deref().filter(|e| *e != "completed") {
                amounts.push(escape(end).into_owned());
            }
        }
        if let Some(d) = &p.data {
            match r.action() {
                "objects_find" => {
                    if let Some(n) = d.out_len {
                        amounts.push(plural(n, "object found", "objects found"));
                    }
                }
                _ => {
                    if let Some(n) = d.in_len {
                        amounts.push(format!("{n} B in"));
                    }
                    // A verification has no output: its answer is the outcome.
                    let verifies = p
                        .operation
                        .as_ref()
                        .and_then(|o| o.kind.as_deref())
                        .is_some_and(|k| k.ends_with("verify"));
                    if let Some(n) = d.out_len.filter(|n| *n > 0 || !verifies) {
                        amounts.push(format!("{n} B out"));
                    }
                }
            }
        }
        if !amounts.is_empty() {
            details.push(amounts.join(", "));
        }
        if !p.flags.is_empty() {
            let flags: Vec<String> = p
                .flags
                .iter()
                .map(|f| {
                    if NOTABLE_FLAGS.contains(&f.as_ref()) {
                        paint(&format!("{BOLD}{YELLOW}"), &escape(f))
                    } else {
                        escape(f).into_owned()
                    }
                })
                .collect();
            details.push(format!("[{}]", flags.join(", ")));
        }
    }
    if let Some(m) = &r.message {
        details.push(escape(m).into_owned());
    }
    if !r.labels.is_empty() {
        let labels: Vec<String> = r
            .labels
            .iter()
            .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
            .collect();
        details.push(paint(DIM, &format!("{{{}}}", labels.join(" "))));
    }
    let head = format!(
        "{time} {pid:>7} {user:<8} {:<11} {:<19} {outcome}",
        escape(r.lifecycle()),
        escape(r.action())
    );
    if details.is_empty() {
        head.trim_end().to_string()
    } else {
        format!("{head}  {}", details.join("  "))
    }
}

/// Runs `keytrail show`; returns the exit status: 0, or 2 when a file could not be read.
pub fn run(args: &ShowArgs) -> Result<u8> {
    let filters = Filters::new(&args.filter)?;
    let files = input::trail_files(&args.inputs, args.keep_order)?;
    let color = args.color.enabled();
    let mut progress = Progress::new(&files, args.quiet);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut errors = Vec::new();
    let mut damaged = 0u64;
    let mut shown = 0u64;
    let mut last_date = String::new();
    let mut write_error = None;
    input::for_each_line(
        &files,
        &mut progress,
        |_, e| errors.push(e),
        |l| {
            if (l.bytes.is_empty() && l.overlong.is_none()) || write_error.is_some() {
                return;
            }
            let parsed = match l.overlong_reason() {
                Some(reason) => Err(reason),
                None => Rec::parse(l.bytes).map_err(|e| e.to_string()),
            };
            let r = match parsed {
                Ok(r) => r,
                Err(e) => {
                    damaged += 1;
                    // Keep the report next to the records around it on a terminal.
                    let _ = out.flush();
                    errln!(
                        "keytrail: {}:{}: damaged line skipped ({}{e})",
                        files[l.file].display(),
                        l.number,
                        if l.complete { "" } else { "no newline; " }
                    );
                    return;
                }
            };
            if !filters.selects(&r) {
                return;
            }
            shown += 1;
            let stamp = r.timestamp.as_deref().unwrap_or("");
            let w = when(stamp, args.utc).unwrap_or_else(|| When {
                date: "unknown date".into(),
                time: format!("{:<12}", escape(stamp)),
            });
            let mut text = String::new();
            if w.date != last_date {
                let _ = writeln!(text, "=== {} ===", escape(&w.date));
                last_date = w.date;
            }
            text.push_str(&line(&r, &escape(&w.time), color));
            text.push('\n');
            if let Err(e) = out.write_all(text.as_bytes()) {
                write_error = Some(e);
            }
        },
    );
    if let Some(e) = write_error {
        return Err(e.into());
    }
    out.flush()?;
    drop(out);
    for e in &errors {
        errln!("keytrail: {e}");
    }
    if damaged > 0 {
        eprintln!("keytrail: {damaged} damaged line(s) skipped");
    }
    if shown == 0 && !args.quiet {
        eprintln!("keytrail: no records to show");
    }
    Ok(if errors.is_empty() { 0 } else { 2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(json: &str) -> String {
        let r: Rec<'_> = serde_json::from_str(json).expect("record");
        line(&r, "12:00:00.000", false)
    }

    #[test]
    fn login_failure_shows_rv_and_user_type() {
        let s = show(
            r#"{"@timestamp":"2026-01-02T03:04:05.000006Z","event":{"action":"login","outcome":"failure"},"pkcs11":{"lifecycle":"auth","rv_name":"CKR_PIN_INCORRECT","token":{"label":"demo"},"auth":{"user_type":"CKU_USER"}},"user":{"name":"alice"},"process":{"pid":42}}"#,
        );
        assert_eq!(
            s,
            "12:00:00.000      42 alice    auth        login               FAIL  \
             CKR_PIN_INCORRECT  CKU_USER  token \"demo\""
        );
    }

    #[test]
    fn keys_are_compact_and_labels_escaped() {
        let s = show(
            r#"{"event":{"action":"key_generate","outcome":"success"},"pkcs11":{"lifecycle":"generate","rv_name":"CKR_OK","mechanism":{"name":"CKM_AES_KEY_GEN"},"key":{"class":"CKO_SECRET_KEY","key_type":"CKK_AES","bits":256,"id_hex":"6b01","label":"payments-kek\u001b[2J"},"flags":["plaintext_key_material"]},"process":{"pid":1}}"#,
        );
        assert!(
            s.ends_with(
                "ok    key \"payments-kek\\u{1b}[2J\" (CKK_AES 256, id 6b01)  CKM_AES_KEY_GEN  \
                 [plaintext_key_material]"
            ),
            "{s}"
        );
        let s = show(
            r#"{"event":{"action":"key_pair_generate","outcome":"success"},"pkcs11":{"lifecycle":"generate","keys":{"public":{"class":"CKO_PUBLIC_KEY","key_type":"CKK_EC","id_hex":"51","label":"signer"},"private":{"class":"CKO_PRIVATE_KEY","key_type":"CKK_EC","id_hex":"51","label":"signer"}}}}"#,
        );
        assert!(s.ends_with("key pair \"signer\" (CKK_EC, id 51)"), "{s}");
        assert_eq!(escape("caf\u{e9} \u{202e}gpj"), "caf\u{e9} \\u{202e}gpj");
    }

    #[test]
    fn operations_show_parts_and_lengths() {
        let s = show(
            r#"{"event":{"action":"encrypt","outcome":"unknown"},"pkcs11":{"lifecycle":"use","mechanism":{"name":"CKM_AES_CBC_PAD"},"key":{"handle":7},"operation":{"kind":"encrypt","parts":2,"end":"abandoned"},"data":{"in_len":32,"out_len":16}}}"#,
        );
        assert!(
            s.ends_with(
                "?     key (handle 7)  CKM_AES_CBC_PAD  2 parts, abandoned, 32 B in, 16 B out"
            ),
            "{s}"
        );
    }

    #[test]
    fn a_session_summary_shows_its_counts() {
        let s = show(
            r#"{"event":{"action":"session_summary","outcome":"success"},"pkcs11":{"lifecycle":"session","slot_id":3,"token":{"label":"t","serial":"1"},"sessions":{"opened":42,"opened_rw":37,"opened_ro":5,"closed":40,"closed_by_close_all":0,"open":2,"max_open":3,"last":"2026-01-02T03:04:05.678901Z"}}}"#,
        );
        assert!(
            s.ends_with(
                "ok    42 opened (37 read/write), 40 closed, 2 open, at most 3 at once  token \"t\""
            ),
            "{s}"
        );
    }

    #[test]
    fn utc_times() {
        let w = when("2026-01-02T03:04:05.678901Z", true).expect("time");
        assert_eq!(w.date, "2026-01-02 (UTC)");
        assert_eq!(w.time, "03:04:05.678");
        let w = when("2026-01-02 03:04:05.678", true).expect("time");
        assert_eq!(w.time, "03:04:05.678");
    }
}
