//! RFC 5424 messages made from trail records, and RFC 6587 octet-counting framing.
//!
//! The message is the record's JSON line exactly as sealed (so its hash travels with it);
//! the header carries what a collector filters on without parsing JSON: the severity
//! ([`crate::event::severity`]), the record's time, host and process, the action as
//! MSGID, and the stream and sequence number as structured data, by which a collector
//! tells a record delivered twice from two records.

use crate::event::severity::{Facts, FailedLogins, Severity};
use serde::Deserialize;
use std::borrow::Cow;

/// The SD-ID of keytrail's structured data element. 32473 is the private enterprise
/// number RFC 5612 reserves for documentation and examples.
pub const SD_ID: &str = "keytrail@32473";

/// RFC 5424 field limits (section 6).
const MAX_HOSTNAME: usize = 255;
const MAX_APP_NAME: usize = 48;
const MAX_MSGID: usize = 32;

/// What a message says about the record it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    /// `integrity.stream`, if the record had one.
    pub stream: Option<String>,
    /// `integrity.seq`.
    pub seq: Option<u64>,
    /// The severity given.
    pub severity: Severity,
}

/// Makes RFC 5424 messages for one sink: its facility and app name, and the failed-login
/// history its severities depend on.
#[derive(Debug, Clone)]
pub struct Framer {
    facility: u8,
    app_name: String,
    logins: FailedLogins,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Record<'a> {
    #[serde(rename = "@timestamp", borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: EventPart<'a>,
    #[serde(borrow)]
    pkcs11: Pkcs11Part<'a>,
    #[serde(borrow)]
    host: HostPart<'a>,
    process: ProcessPart,
    #[serde(borrow)]
    integrity: Option<IntegrityPart<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EventPart<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Pkcs11Part<'a> {
    #[serde(borrow)]
    lifecycle: Cow<'a, str>,
    #[serde(borrow)]
    flags: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    key: Option<KeyPart<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct KeyPart<'a> {
    #[serde(borrow)]
    class: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HostPart<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProcessPart {
    pid: Option<u32>,
}

#[derive(Deserialize)]
struct IntegrityPart<'a> {
    #[serde(borrow)]
    stream: Cow<'a, str>,
    seq: u64,
}

impl Framer {
    /// A framer for `facility` (0–23) and `app_name`.
    pub fn new(facility: u8, app_name: &str) -> Framer {
        Framer {
            facility: facility.min(23),
            app_name: header_field(app_name, MAX_APP_NAME).into_owned(),
            logins: FailedLogins::default(),
        }
    }

    /// Appends the RFC 5424 message carrying `line` (one trail record, with or without its
    /// newline) to `out`.
    pub fn message(&mut self, line: &[u8], out: &mut Vec<u8>) -> Framed {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        // A line that is not a record (it cannot happen with the trail's own writer) is
        // still delivered, as a notice without structured data.
        let rec: Record<'_> = serde_json::from_slice(line).unwrap_or_default();
        let facts = Facts {
            action: &rec.event.action,
            outcome: &rec.event.outcome,
            lifecycle: &rec.pkcs11.lifecycle,
            token_wiped: rec.pkcs11.flags.iter().any(|f| f == "token_wiped"),
            secret_value_read: rec.pkcs11.flags.iter().any(|f| f == "secret_value_read"),
            class: rec.pkcs11.key.as_ref().and_then(|k| k.class.as_deref()),
        };
        let time = rec
            .timestamp
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let sev = if rec.event.action.is_empty() {
            Severity::Notice
        } else {
            self.logins.rank(&facts, time)
        };
        let pri = u16::from(self.facility) * 8 + u16::from(sev.code());
        out.push(b'<');
        out.extend_from_slice(itoa::Buffer::new().format(pri).as_bytes());
        out.extend_from_slice(b">1 ");
        let ts = rec.timestamp.as_deref().filter(|t| valid_timestamp(t));
        out.extend_from_slice(ts.unwrap_or("-").as_bytes());
        out.push(b' ');
        let host = rec.host.name.as_deref().unwrap_or("");
        out.extend_from_slice(header_field(host, MAX_HOSTNAME).as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.app_name.as_bytes());
        out.push(b' ');
        match rec.process.pid {
            Some(pid) => out.extend_from_slice(itoa::Buffer::new().format(pid).as_bytes()),
            None => out.push(b'-'),
        }
        out.push(b' ');
        out.extend_from_slice(header_field(&rec.event.action, MAX_MSGID).as_bytes());
        out.push(b' ');
        match &rec.integrity {
            Some(i) => {
                out.push(b'[');
                out.extend_from_slice(SD_ID.as_bytes());
                out.extend_from_slice(b" stream=\"");
                param_value(&i.stream, out);
                out.extend_from_slice(b"\" seq=\"");
                out.extend_from_slice(itoa::Buffer::new().format(i.seq).as_bytes());
                out.extend_from_slice(b"\"]");
            }
            None => out.push(b'-'),
        }
        out.push(b' ');
        out.extend_from_slice(line);
        Framed {
            stream: rec.integrity.as_ref().map(|i| i.stream.to_string()),
            seq: rec.integrity.as_ref().map(|i| i.seq),
            severity: sev,
        }
    }
}

/// Appends `msg` framed by octet counting (RFC 6587 section 3.4.1, RFC 5425 section 4.3):
/// its length in decimal, a space, the message.
pub fn octet_counted(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(msg.len()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

/// A header field: printable US-ASCII without spaces, at most `max` characters; `-` (the
/// NILVALUE) when nothing is left.
fn header_field(value: &str, max: usize) -> Cow<'_, str> {
    let clean = |b: u8| (33..=126).contains(&b);
    if !value.is_empty() && value.len() <= max && value.bytes().all(clean) {
        return Cow::Borrowed(value);
    }
    let s: String = value
        .bytes()
        .filter(|b| clean(*b))
        .take(max)
        .map(char::from)
        .collect();
    if s.is_empty() {
        Cow::Borrowed("-")
    } else {
        Cow::Owned(s)
    }
}

/// A PARAM-VALUE: `"`, `\` and `]` escaped with a backslash (RFC 5424 section 6.3.3).
fn param_value(value: &str, out: &mut Vec<u8>) {
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// Whether the record's time is a valid RFC 5424 TIMESTAMP: the trail writes
/// `YYYY-MM-DDThh:mm:ss.ffffffZ`, at most six fraction digits.
fn valid_timestamp(t: &str) -> bool {
    let frac = t
        .split_once('.')
        .map_or(0, |(_, f)| f.len().saturating_sub(1));
    t.len() >= 20 && frac <= 6 && t.bytes().all(|b| (33..=126).contains(&b))
}

/// The facility names of RFC 5424 (section 6.2.1) and their codes.
pub const FACILITIES: [(&str, u8); 24] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("solaris-cron", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// The code of a facility name.
pub fn facility_code(name: &str) -> Option<u8> {
    FACILITIES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"@timestamp":"2026-12-04T04:08:55.145531Z","event":{"kind":"event","action":"token_init","outcome":"success","sequence":5},"pkcs11":{"lifecycle":"token_admin","flags":["token_wiped"],"label":"a \"quoted\" ] label"},"host":{"name":"vm"},"process":{"pid":5262},"integrity":{"stream":"4e5f9cba983bca49794bbf7d48ea6600","seq":5,"prev":null,"hash":"65fb"}}"#;

    fn text(f: &mut Framer, line: &str) -> (String, Framed) {
        let mut out = Vec::new();
        let framed = f.message(format!("{line}\n").as_bytes(), &mut out);
        (String::from_utf8(out).expect("utf-8"), framed)
    }

    #[test]
    fn a_record_becomes_an_rfc5424_message_with_the_line_unchanged() {
        let mut f = Framer::new(facility_code("authpriv").expect("known"), "keytrail");
        let (msg, framed) = text(&mut f, LINE);
        // authpriv (10) * 8 + crit (2)
        assert_eq!(
            msg,
            format!(
                "<82>1 2026-12-04T04:08:55.145531Z vm keytrail 5262 token_init \
                 [keytrail@32473 stream=\"4e5f9cba983bca49794bbf7d48ea6600\" seq=\"5\"] {LINE}"
            )
        );
        assert_eq!(framed.seq, Some(5));
        assert_eq!(framed.severity, Severity::Critical);
    }

    #[test]
    fn routine_use_is_informational_and_header_fields_are_cleaned() {
        let mut f = Framer::new(facility_code("local3").expect("known"), "key trail\u{e9}");
        let line = r#"{"@timestamp":"bad time","event":{"action":"sign","outcome":"success"},"pkcs11":{"lifecycle":"use"},"host":{"name":"h o\u00e9st"},"integrity":{"stream":"s\"]\\","seq":9}}"#;
        let (msg, framed) = text(&mut f, line);
        assert_eq!(framed.severity, Severity::Informational);
        // local3 (19) * 8 + info (6)
        assert!(
            msg.starts_with(
                "<158>1 - host keytrail - sign [keytrail@32473 stream=\"s\\\"\\]\\\\\" seq=\"9\"] {"
            ),
            "{msg}"
        );
        assert!(msg.ends_with(line), "{msg}");
    }

    #[test]
    fn a_line_that_is_not_a_record_is_still_carried() {
        let mut f = Framer::new(10, "keytrail");
        let (msg, framed) = text(&mut f, "not json");
        assert_eq!(msg, "<85>1 - - keytrail - - - not json");
        assert_eq!(framed.seq, None);
    }

    #[test]
    fn repeated_failed_logins_raise_the_priority() {
        let mut f = Framer::new(10, "keytrail");
        let fail = r#"{"@timestamp":"2026-12-04T04:08:55Z","event":{"action":"login","outcome":"failure"},"pkcs11":{"lifecycle":"auth"}}"#;
        let sev: Vec<Severity> = (0..4).map(|_| text(&mut f, fail).1.severity).collect();
        assert_eq!(
            sev,
            [
                Severity::Notice,
                Severity::Notice,
                Severity::Warning,
                Severity::Warning
            ]
        );
    }

    #[test]
    fn octet_counting_prefixes_the_length_in_bytes() {
        let mut out = Vec::new();
        octet_counted("é x".as_bytes(), &mut out);
        octet_counted(b"", &mut out);
        assert_eq!(out, "4 é x0 ".as_bytes());
        assert_eq!(facility_code("LOCAL7"), Some(23));
        assert_eq!(facility_code("nope"), None);
    }
}
