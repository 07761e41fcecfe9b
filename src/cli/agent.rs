//! `keytrail agent`: runs the recorder daemon (see `keytrail::agent`).

use keytrail::agent::daemon::{self, AgentConfig};
use std::path::PathBuf;

/// Where the agent's configuration is by default.
const DEFAULT_CONFIG: &str = "/etc/keytrail/agent.toml";

/// `keytrail agent`
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The agent's configuration (`[agent]`, `[trail]`, `[integrity]`); the defaults
    /// apply when it is absent and not named.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stay in the foreground (for containers, tests and systemd's Type=simple); the agent
    /// never forks itself, so this only says so explicitly.
    #[arg(long)]
    foreground: bool,
    /// Listen here instead of `[agent] socket`.
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// Runs the agent until SIGTERM; exit status 0 after a clean stop.
pub fn run(args: &AgentArgs) -> anyhow::Result<u8> {
    let _ = args.foreground;
    let mut config = match &args.config {
        Some(p) => AgentConfig::load(p).map_err(anyhow::Error::msg)?,
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            AgentConfig::load(std::path::Path::new(DEFAULT_CONFIG)).map_err(anyhow::Error::msg)?
        }
        None => AgentConfig::default(),
    };
    if let Some(s) = &args.socket {
        config.agent.socket = s.clone();
    }
    daemon::run(config).map_err(anyhow::Error::msg)?;
    Ok(0)
}
