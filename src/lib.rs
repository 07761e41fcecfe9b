//! keytrail: a PKCS#11 audit shim.
//!
//! `libkeytrail.so` is loaded by an application in place of its HSM's PKCS#11 module. It
//! loads the real module named in its configuration, forwards every call to it unchanged
//! and records the key lifecycle.
//!
//! Module map:
//! - [`entry`]: the C ABI — every exported `C_*` function and the function tables.
//! - [`backend`]: loading the real module and holding its function table.
//! - [`config`]: the configuration file and its environment overrides.
//! - [`diag`]: keytrail's own diagnostics (never the audit trail itself).
//! - [`trust`]: which configuration and module files may steer the process.
//! - [`agent`]: `keytrail agent`, the trail written outside the audited process.

pub mod agent;
pub mod audit;
pub mod backend;
pub mod config;
pub mod diag;
pub mod entry;
pub mod event;
pub mod names;
pub mod os;
pub mod probe;
pub mod seal;
pub mod sink;
#[cfg(test)]
mod test_alloc;
pub mod trust;
