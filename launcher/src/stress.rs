//! `launcher stress`: drive clients and verify the ordering guarantees.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct StressArgs {
    pub file: PathBuf,
}

pub fn run(_a: StressArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("launcher stress: not yet implemented")
}
