//! The command line of `launcher bench`.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    W1,
    #[value(alias = "latency")]
    W2,
    W3,
    #[value(name = "w3-one-room")]
    W3OneRoom,
    W4,
    Memory,
    Cpu,
    /// Latency between servers behind the fault proxy (delay and loss).
    Faults,
    All,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::W1 => "w1",
            Preset::W2 => "w2",
            Preset::W3 => "w3",
            Preset::W3OneRoom => "w3-one-room",
            Preset::W4 => "w4",
            Preset::Memory => "memory",
            Preset::Cpu => "cpu",
            Preset::Faults => "faults",
            Preset::All => "all",
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark: w1, w2 (or latency), w3, w3-one-room, w4, memory,
    /// cpu, faults, or all.
    #[arg(value_enum)]
    pub name: Preset,
    /// A tiny run that only proves the benchmark works (figures meaningless).
    #[arg(long)]
    pub quick: bool,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// The mode of the total-order runs: `total` (stamps and
    /// acknowledgements) or `isis` (agreement through the origin), to
    /// compare the two on the same figures.
    #[arg(long, short = 'o', default_value = "total", value_name = "MODE")]
    pub ordering: String,
    /// The chatserver binary (default: next to the launcher).
    #[arg(long, value_name = "PATH")]
    pub chatserver: Option<PathBuf>,
    /// Multiply message counts and durations by this (e.g. 0.2 for a shorter
    /// run, 3 for a longer one).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub scale: f64,
    /// Most un-echoed messages per client in the as-fast-as-possible runs
    /// (w1, w4, cpu). Default: w1 and w4 try several windows and report the
    /// best run that lost nothing; cpu uses 64.
    #[arg(long, value_name = "N")]
    pub window: Option<u32>,
    /// Authenticate server-to-server packets with a generated cluster secret
    /// (as `launcher up` does by default); off by default, like a plain
    /// `chatserver` start.
    #[arg(long)]
    pub secret: bool,
    /// The servers' `--busy-poll-us`: how long each keeps polling its
    /// socket after traffic before it sleeps (default: the server's, 20).
    /// 400 or more keeps the servers awake between the messages of a
    /// steady load (lower latency, more CPU: see BENCHMARKS.md, W2).
    #[arg(long, value_name = "US")]
    pub busy_poll_us: Option<u64>,
    /// w2: how long before each send deadline the sender busy-waits (µs).
    #[arg(long, default_value_t = 100, value_name = "US")]
    pub spin_us: u64,
    /// The load's clients read one datagram per read, as a client of the
    /// spec does, instead of whole runs of deliveries (`UDP_GRO`): what the
    /// servers cost with clients that do not coalesce.
    #[arg(long)]
    pub no_gro: bool,
    /// Run each benchmark N times in a row, then print each figure's range
    /// over the runs (min, median, max) and in how many it met its target:
    /// on a shared machine one run says little.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}
