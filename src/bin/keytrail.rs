//! The keytrail command-line tool: `keytrail verify | report | show | doctor`.

#[path = "../cli/mod.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
