//! `launcher up/check/status/down`.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Cluster file (TOML or the legacy line format).
    pub file: PathBuf,
    /// Ordering mode (required for legacy files unless given in TOML).
    #[arg(short = 'o', long = "ordering")]
    pub ordering: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    pub file: PathBuf,
    #[arg(short = 'o', long = "ordering")]
    pub ordering: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    pub file: PathBuf,
}

pub fn run_up(_a: UpArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("launcher up: not yet implemented")
}
pub fn run_check(_a: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("launcher check: not yet implemented")
}
pub fn run_status(_a: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("launcher status: not yet implemented")
}
pub fn run_down(_a: DownArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("launcher down: not yet implemented")
}
