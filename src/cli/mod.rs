//! The `keytrail` command-line tool: `verify`, `report`, `show`, `doctor`, `seal-key`, `watch` and
//! `agent`.
//!
//! Compiled into the `keytrail` binary only (the library does not link clap).

pub mod agent;
pub mod doctor;
#[cfg(test)]
mod fuzz;
pub mod input;
pub mod keybook;
pub mod record;
pub mod report;
pub mod sealkey;
pub mod show;
pub mod text;
pub mod verify;
pub mod watch;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// keytrail: check and read the audit trail of the keytrail PKCS#11 shim.
#[derive(Parser, Debug)]
#[command(name = "keytrail", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Verify the hash chains of trail files: a verdict per stream and per file.
    Verify(verify::VerifyArgs),
    /// Summarise a trail: per key, failed logins, token administration, failures.
    Report(report::ReportArgs),
    /// Print the trail as a readable timeline, one line per record.
    Show(show::ShowArgs),
    /// Check the setup the library would use: configuration, module, tokens, trail.
    Doctor(doctor::DoctorArgs),
    /// Create the key pair that seals checkpoints on a token, and export its public key.
    SealKey(sealkey::SealKeyArgs),
    /// Follow a trail and raise an alert, one JSON line, when a [watch] rule matches.
    Watch(watch::WatchArgs),
    /// Run the agent: record the trail of every process whose `[trail] mode` is `agent`.
    Agent(agent::AgentArgs),
}

/// Parses the command line and runs the subcommand; errors go to stderr with exit status 2.
pub fn main() -> ExitCode {
    // SAFETY: restoring the default SIGPIPE action before any output, in a single-threaded
    // program, so that `keytrail report … | head` ends quietly instead of panicking.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Verify(a) => verify::run(a),
        Command::Report(a) => report::run(a),
        Command::Show(a) => show::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::SealKey(a) => sealkey::run(a),
        Command::Watch(a) => watch::run(a),
        Command::Agent(a) => agent::run(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            text::errln!("keytrail: error: {e:#}");
            ExitCode::from(verify::EXIT_ERROR)
        }
    }
}
