//! Reading of records shared by every consumer of the trail (syslog delivery, alerting,
//! other output formats): what a record means, independent of how it is written.

pub mod severity;
