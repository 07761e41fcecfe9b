//! How serious a record is: one ranking for every consumer of the trail (the syslog
//! severity, alert levels, other schemas' severity fields), so that a token wipe ranks the
//! same wherever the record goes.
//!
//! The ranking works on a record's fields as written to the trail (`event.action`,
//! `event.outcome`, `pkcs11.flags`, the key's class), so that a reader of the JSON trail
//! ranks a record exactly as the writer did. Repeated failed logins are the one ranking
//! that depends on earlier records: [`FailedLogins`] counts them.

use std::collections::VecDeque;
use std::time::Duration;

/// A syslog severity (RFC 5424, section 6.2.1): lower is more severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Severity {
    /// 0: the system is unusable.
    Emergency = 0,
    /// 1: act immediately.
    Alert = 1,
    /// 2: critical: a token wiped.
    Critical = 2,
    /// 3: error: records of the trail lost.
    Error = 3,
    /// 4: warning: key material leaving the module, keys destroyed, repeated failed
    /// logins, PINs changed.
    Warning = 4,
    /// 5: notice: keys made or brought in, attributes changed, failures, the trail's
    /// start and stop.
    Notice = 5,
    /// 6: informational: routine use, sessions, successful logins, checkpoints.
    Informational = 6,
    /// 7: debug: discovery calls (level `trace`).
    Debug = 7,
}

impl Severity {
    /// The RFC 5424 numeric value.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The syslog keyword (`crit`, `warning`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Emergency => "emerg",
            Severity::Alert => "alert",
            Severity::Critical => "crit",
            Severity::Error => "err",
            Severity::Warning => "warning",
            Severity::Notice => "notice",
            Severity::Informational => "info",
            Severity::Debug => "debug",
        }
    }

    /// OCSF's `severity` caption for [`Severity::ocsf_id`].
    pub fn ocsf_name(self) -> &'static str {
        match self.ocsf_id() {
            6 => "Fatal",
            5 => "Critical",
            4 => "High",
            3 => "Medium",
            2 => "Low",
            _ => "Informational",
        }
    }

    /// OCSF's `severity_id`: 1 informational, 2 low, 3 medium, 4 high, 5 critical, 6 fatal.
    pub fn ocsf_id(self) -> u8 {
        match self {
            Severity::Emergency => 6,
            Severity::Alert | Severity::Critical => 5,
            Severity::Error => 4,
            Severity::Warning => 3,
            Severity::Notice => 2,
            Severity::Informational | Severity::Debug => 1,
        }
    }
}

/// The fields of a record that decide its severity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// `event.action`.
    pub action: &'a str,
    /// `event.outcome`: `success`, `failure` or `unknown`.
    pub outcome: &'a str,
    /// `pkcs11.lifecycle`.
    pub lifecycle: &'a str,
    /// Whether `pkcs11.flags` holds `token_wiped`.
    pub token_wiped: bool,
    /// Whether `pkcs11.flags` holds `secret_value_read`.
    pub secret_value_read: bool,
    /// The class of the object the record is about (`pkcs11.key.class`), when known.
    pub class: Option<&'a str>,
}

/// The severity of a record, without the history [`FailedLogins`] adds.
pub fn of(f: &Facts<'_>) -> Severity {
    let ok = f.outcome == "success";
    let key = f
        .class
        .is_none_or(|c| matches!(c, "CKO_SECRET_KEY" | "CKO_PRIVATE_KEY"));
    match f.action {
        // A wiped token destroys every key on it at once.
        "token_init" if ok || f.token_wiped => Severity::Critical,
        _ if f.token_wiped => Severity::Critical,
        // The trail itself has a hole.
        "records_lost" | "records_dropped" => Severity::Error,
        "key_wrap" | "attribute_read_secret" if ok => Severity::Warning,
        _ if f.secret_value_read => Severity::Warning,
        "object_destroy" if ok && key => Severity::Warning,
        "pin_init" | "pin_set" if ok => Severity::Warning,
        // Refused attempts at the same are still worth a look.
        "token_init"
        | "key_wrap"
        | "attribute_read_secret"
        | "object_destroy"
        | "pin_init"
        | "pin_set" => Severity::Notice,
        "key_generate" | "key_pair_generate" | "key_derive" | "object_create" | "object_copy"
        | "key_unwrap" | "attribute_set" => Severity::Notice,
        "trail_start" | "trail_stop" | "trail_resume" | "trail_reopened" => Severity::Notice,
        _ if f.lifecycle == "discovery" => Severity::Debug,
        _ if f.outcome == "failure" => Severity::Notice,
        _ => Severity::Informational,
    }
}

/// Counts failed logins, so that the `threshold`-th failure within `window` (and every
/// one after it while the window holds that many) ranks [`Severity::Warning`]. Keep one
/// per stream, or per user or process, whichever the consumer groups by.
#[derive(Debug, Clone)]
pub struct FailedLogins {
    threshold: usize,
    window: Duration,
    /// When the recent failures happened (seconds since the epoch, as in the records).
    recent: VecDeque<f64>,
}

/// Failed logins within [`DEFAULT_WINDOW`] that make the later ones a warning.
pub const DEFAULT_THRESHOLD: usize = 3;
/// The window of [`DEFAULT_THRESHOLD`].
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

impl Default for FailedLogins {
    fn default() -> Self {
        FailedLogins::new(DEFAULT_THRESHOLD, DEFAULT_WINDOW)
    }
}

impl FailedLogins {
    /// Ranks the `threshold`-th failed login within `window` as a warning.
    pub fn new(threshold: usize, window: Duration) -> FailedLogins {
        FailedLogins {
            threshold: threshold.max(1),
            window,
            recent: VecDeque::new(),
        }
    }

    /// The severity of a record at `time` (seconds since the epoch), counting it when it
    /// is a failed login.
    pub fn rank(&mut self, f: &Facts<'_>, time: f64) -> Severity {
        let base = of(f);
        if f.action != "login" || f.outcome != "failure" {
            return base;
        }
        let horizon = time - self.window.as_secs_f64();
        while self.recent.front().is_some_and(|t| *t <= horizon) {
            self.recent.pop_front();
        }
        self.recent.push_back(time);
        // Bounded: only the last `threshold` failures matter.
        while self.recent.len() > self.threshold {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.threshold {
            base.min(Severity::Warning)
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(action: &str, outcome: &str) -> Facts<'static> {
        Facts {
            action: Box::leak(action.to_string().into_boxed_str()),
            outcome: Box::leak(outcome.to_string().into_boxed_str()),
            lifecycle: "use",
            ..Facts::default()
        }
    }

    #[test]
    fn lifecycle_events_rank_above_routine_use() {
        let routine = of(&facts("sign", "success"));
        assert_eq!(routine, Severity::Informational);
        for (action, want) in [
            ("token_init", Severity::Critical),
            ("records_lost", Severity::Error),
            ("key_wrap", Severity::Warning),
            ("attribute_read_secret", Severity::Warning),
            ("object_destroy", Severity::Warning),
            ("key_generate", Severity::Notice),
        ] {
            let s = of(&facts(action, "success"));
            assert_eq!(s, want, "{action}");
            assert!(s < routine, "{action}");
        }
        // A destroyed certificate is not a destroyed key.
        let mut cert = facts("object_destroy", "success");
        cert.class = Some("CKO_CERTIFICATE");
        assert_eq!(of(&cert), Severity::Notice);
        // A refused wipe is not a wipe.
        assert_eq!(of(&facts("token_init", "failure")), Severity::Notice);
        let mut discovery = facts("objects_find", "success");
        discovery.lifecycle = "discovery";
        assert_eq!(of(&discovery), Severity::Debug);
    }

    #[test]
    fn repeated_failed_logins_become_a_warning() {
        let mut c = FailedLogins::new(3, Duration::from_secs(60));
        let fail = facts("login", "failure");
        assert_eq!(c.rank(&fail, 0.0), Severity::Notice);
        assert_eq!(c.rank(&fail, 10.0), Severity::Notice);
        assert_eq!(
            c.rank(&facts("login", "success"), 11.0),
            Severity::Informational
        );
        assert_eq!(c.rank(&fail, 20.0), Severity::Warning);
        // The first two have left the window by t = 70.
        assert_eq!(c.rank(&fail, 75.0), Severity::Notice);
        assert_eq!(c.rank(&fail, 79.0), Severity::Warning);
    }

    #[test]
    fn codes_and_names() {
        assert_eq!(Severity::Critical.code(), 2);
        assert_eq!(Severity::Warning.as_str(), "warning");
        assert_eq!(Severity::Critical.ocsf_id(), 5);
    }
}
