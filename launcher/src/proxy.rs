//! `launcher proxy`: the fault-injecting delay proxy.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ProxyArgs {
    pub file: PathBuf,
}

pub fn run(_a: ProxyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("launcher proxy: not yet implemented")
}
