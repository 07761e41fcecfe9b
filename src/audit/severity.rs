//! How much a record matters to someone watching the trail: one ranking shared by every
//! consumer (the OCSF `severity_id`, a syslog severity, alerts), so that they agree.
//!
//! A token wipe, a secret value read, a key destroyed and the trail's own losses rank
//! highest; keys leaving the module and failed logins next; other failures above routine
//! use.

use super::event::{Event, Flag, Outcome};
use crate::config::Lifecycle;

/// A record's severity, from routine to most notable. The numbers are OCSF's
/// `severity_id` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Routine use.
    Informational = 1,
    /// A call that failed.
    Low = 2,
    /// A key leaving the module wrapped, a failed login.
    Medium = 3,
    /// A token wiped, a key destroyed, a secret attribute's value read, perhaps read or
    /// refused, records of the trail lost or dropped.
    High = 4,
}

impl Severity {
    /// The severity of a record.
    pub fn of(e: &Event) -> Severity {
        let ok = e.outcome == Outcome::Success;
        if e.flags.has(Flag::TokenWiped) || e.flags.has(Flag::SecretValueRead) {
            return Severity::High;
        }
        match e.lifecycle {
            Lifecycle::Destroy if ok => Severity::High,
            Lifecycle::TokenAdmin if ok && e.action == "token_init" => Severity::High,
            // A secret attribute asked for: read, perhaps read, or refused (an attempt).
            Lifecycle::Export if e.action == "attribute_read_secret" => Severity::High,
            Lifecycle::Export => Severity::Medium,
            Lifecycle::Auth if !ok && e.action == "login" => Severity::Medium,
            Lifecycle::Audit => match e.action {
                "records_lost" | "records_dropped" | "trail_reopened" => Severity::High,
                _ => Severity::Informational,
            },
            _ if e.flags.has(Flag::PossibleSecretRead) => Severity::Medium,
            _ if e.outcome == Outcome::Failure => Severity::Low,
            _ => Severity::Informational,
        }
    }

    /// OCSF's `severity_id`.
    pub fn ocsf_id(self) -> u8 {
        self as u8
    }

    /// OCSF's `severity` caption.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Informational => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
        }
    }

    /// The syslog severity (RFC 5424): informational, notice, warning, critical.
    pub fn syslog(self) -> u8 {
        match self {
            Severity::Informational => 6,
            Severity::Low => 5,
            Severity::Medium => 4,
            Severity::High => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Started;
    use cryptoki_sys::*;

    fn rec(action: &'static str, l: Lifecycle, rv: CK_RV) -> Event {
        Event::call(Started::now(), "C_X", action, l, rv)
    }

    #[test]
    fn lifecycle_events_rank_above_routine_use() {
        let sev = |e: &Event| Severity::of(e);
        assert_eq!(
            sev(&rec("sign", Lifecycle::Use, CKR_OK)),
            Severity::Informational
        );
        assert_eq!(
            sev(&rec("login", Lifecycle::Auth, CKR_OK)),
            Severity::Informational
        );
        assert_eq!(
            sev(&rec("sign", Lifecycle::Use, CKR_KEY_HANDLE_INVALID)),
            Severity::Low
        );
        assert_eq!(
            sev(&rec("login", Lifecycle::Auth, CKR_PIN_INCORRECT)),
            Severity::Medium
        );
        assert_eq!(
            sev(&rec("key_wrap", Lifecycle::Export, CKR_OK)),
            Severity::Medium
        );
        assert_eq!(
            sev(&rec("object_destroy", Lifecycle::Destroy, CKR_OK)),
            Severity::High
        );
        assert_eq!(
            sev(&rec("token_init", Lifecycle::TokenAdmin, CKR_OK)),
            Severity::High
        );
        let mut read = rec(
            "attribute_read_secret",
            Lifecycle::Export,
            CKR_ATTRIBUTE_SENSITIVE,
        );
        read.flag(Flag::SecretValueRead);
        assert_eq!(sev(&read), Severity::High);
        let lost = Event::audit("records_lost", String::new(), serde_json::json!({}));
        assert_eq!(sev(&lost), Severity::High);
        assert!(Severity::High.syslog() < Severity::Informational.syslog());
    }
}
