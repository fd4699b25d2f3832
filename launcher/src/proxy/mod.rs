//! `launcher proxy FILE`: the fault-injecting proxy of
//! [`crate::cluster::fault_proxy`] in front of a cluster someone else runs,
//! until SIGINT or SIGTERM.

use crate::cluster::fault_proxy::{self, BoundProxy, FaultArgs, ProxyCounters, ProxyPlan};
use crate::cluster::settings::{self, ClusterFile};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Cluster file (legacy lines `FWD,BIND` or TOML); every server needs a
    /// forwarding address different from its bind address.
    pub file: PathBuf,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Runs until SIGINT or SIGTERM, then prints the counts and exits 0.
pub fn run(a: ProxyArgs) -> anyhow::Result<ExitCode> {
    let ClusterFile { cfg, settings } = settings::load(&a.file)?;
    let faults = a.faults.over(settings.faults.as_ref());
    let plan = ProxyPlan::from_config(&cfg)?;
    let bound = BoundProxy::bind(plan.clone())?;
    let counters = Arc::new(ProxyCounters::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        eprintln!(
            "proxy ready: {} servers ({}), {}",
            plan.forwards.len(),
            plan.forwards
                .iter()
                .zip(&plan.binds)
                .map(|(f, b)| format!("{f}->{b}"))
                .collect::<Vec<_>>()
                .join(" "),
            fault_proxy::describe_faults(&faults)
        );
        fault_proxy::serve(bound, faults, counters.clone(), async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await
    })?;
    eprintln!("proxy stopped: {}", counters.snapshot());
    Ok(ExitCode::SUCCESS)
}
