//! The launcher: run, supervise, fault-inject, stress and benchmark a
//! cluster of `chatserver`s.
//!
//! Layout (`main.rs` only parses the command line and dispatches here):
//!
//! - `cluster/`: the shared layer. `plan` (a cluster file resolved into
//!   command lines), `process` (spawn one server with the parent-death
//!   signal, its ready line, graceful stop), `restart` (the pure restart
//!   policy), `state` (the state file of a running `launcher up`), `procfs`
//!   (start time, memory, CPU of a known pid), `local` (a throw-away cluster
//!   on free ports) and `fault_proxy` (the delaying, dropping, duplicating
//!   proxy between servers).
//! - `net`: UDP sockets with large buffers, free ports, kernel drop counts.
//! - `load`: the client workload (many UDP clients, delivery logs for the
//!   checker) that `stress` and `bench` drive.
//! - `diagram`: the space-time diagram of chat messages (the `-v` line
//!   parser, its JSON, the shared script, the SVG), for `trace` and the
//!   console of `up`.
//! - One folder per subcommand: `up/` (`up`, `check`, `status`, `down`, the
//!   supervisor, its output and the web console), `proxy/`, `stress/`,
//!   `bench/`, `trace/`.
//!
//! A subcommand may use `cluster`, `net`, `load` and `diagram`, never
//! another subcommand; `cluster` uses only `net`; `load` uses only `net`;
//! `diagram` uses nothing.

/// `println!` that never panics: a closed stdout (`launcher ... | head`)
/// is ignored, the program goes on quietly (a stress run still stops the
/// servers it started, and its exit status still tells the result).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`outln!`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout();
        let _ = write!(o, $($arg)*);
        let _ = o.flush();
    }};
}

pub mod bench;
pub mod cluster;
pub mod diagram;
pub mod export;
pub mod load;
pub mod net;
pub mod proxy;
pub mod stress;
pub mod trace;
pub mod up;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "launcher",
    version,
    about = "Run, supervise, fault-inject and stress a chat server cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start every node of a cluster file and supervise them.
    Up(up::UpArgs),
    /// Validate a cluster file and print the resolved plan.
    Check(up::CheckArgs),
    /// Show the nodes of a running `launcher up`.
    Status(up::StatusArgs),
    /// Stop a running `launcher up` from another terminal.
    Down(up::DownArgs),
    /// Fault-injecting proxy on the servers' forwarding addresses.
    Proxy(proxy::ProxyArgs),
    /// Drive clients against a cluster and verify the ordering guarantees.
    Stress(stress::StressArgs),
    /// Run a named benchmark (W1..W4, latency, memory, cpu).
    Bench(bench::BenchArgs),
    /// Write what systemd, Kubernetes or compose need to run the cluster.
    Export(export::ExportArgs),
    /// Draw the space-time diagram of a run from the servers' `-v` logs.
    Trace(trace::TraceArgs),
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LAUNCHER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(a) => up::run_up(a),
        Command::Check(a) => up::run_check(a),
        Command::Status(a) => up::run_status(a),
        Command::Down(a) => up::run_down(a),
        Command::Proxy(a) => proxy::run(a),
        Command::Stress(a) => stress::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Export(a) => export::run(a),
        Command::Trace(a) => trace::run(a),
    }
}
