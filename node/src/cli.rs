//! The `chatserver` command line, in the library so that a binary with extra
//! strategies (see `examples/`) is the same program.

use crate::config;
use crate::server::{self, ServerSetup};
use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use orderings::ServerId;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "chatserver",
    version,
    about = "Replicated chat server with ordered multicast over UDP",
    long_about = "Replicated chat server with ordered multicast over UDP.\n\n\
                  CONFIG lists every server (legacy lines `FWD_IP:PORT,BIND_IP:PORT` or `IP:PORT`, or a TOML cluster file); \
                  INDEX (from 1) says which one this is."
)]
pub struct ServerArgs {
    /// Cluster file: the spec's line format or TOML.
    pub config: PathBuf,
    /// Which server of the file this is, from 1.
    pub index: usize,
    /// Ordering mode (see the list below); default: the file's, else unordered.
    #[arg(short = 'o', long = "ordering", value_name = "MODE")]
    pub ordering: Option<String>,
    /// Print one line per event: `hh:mm:ss.uuuuuu Snn ...` (UTC); `-vv`
    /// adds per-packet chatter (heartbeats, acknowledgements, bad packets).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Number of chat rooms (1..=N); default: the file's, else 10.
    #[arg(long)]
    pub rooms: Option<u32>,
    /// Cluster secret file: authenticates every server-to-server packet.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Incarnation number of this start (default: microseconds since the epoch).
    #[arg(long, hide = true)]
    pub incarnation: Option<u64>,
    /// Most clients this server serves at once (at least 1).
    #[arg(long, default_value_t = 4096, value_parser = parse_max_clients)]
    pub max_clients: usize,
    /// A client that sends nothing for this long (seconds) loses its
    /// session and leaves its room; 0 = never.
    #[arg(long, default_value_t = crate::session::DEFAULT_IDLE_S, value_name = "SECONDS")]
    pub session_idle_s: u64,
    /// Until a client confirms its address (`/confirm TOKEN`, offered once
    /// it has used half of this), it is sent at most 3x the bytes it sent
    /// plus this many bytes; deliveries beyond are dropped. 0 = no limit.
    #[arg(long, default_value_t = crate::session::DEFAULT_UNCONFIRMED_ALLOWANCE, value_name = "BYTES")]
    pub unconfirmed_allowance: u64,
    /// `-ERR` replies per second to one client address (after a burst of
    /// --error-burst); the rest are not sent.
    #[arg(long, default_value_t = crate::guard::DEFAULT_ERROR_RATE, value_name = "N")]
    pub error_rate: u32,
    /// Burst of `-ERR` replies one client address may get at once.
    #[arg(long, default_value_t = crate::guard::DEFAULT_ERROR_BURST, value_name = "N")]
    pub error_burst: u32,
    /// `-ERR` replies per second from the whole server.
    #[arg(long, default_value_t = crate::guard::DEFAULT_ERROR_RATE_TOTAL, value_name = "N")]
    pub error_rate_total: u32,
    /// Most servers a cluster file may list (at most 65535, the id space).
    #[arg(long, default_value_t = config::DEFAULT_MAX_SERVERS, value_parser = parse_max_servers, value_name = "N")]
    pub max_servers: usize,
    /// After traffic, keep polling the socket this long (yielding the CPU)
    /// before sleeping in ppoll: lower latency at the cost of some CPU
    /// after traffic. 0 = off. 400 or more keeps a server awake between
    /// the messages of a steady load, so that no hop pays a wake-up: the
    /// lowest latency, at up to one core per server while such a load
    /// lasts (figures in BENCHMARKS.md). Default: the cluster file's
    /// `busy_poll_us`, else 50.
    #[arg(long, value_name = "US")]
    pub busy_poll_us: Option<u64>,
    /// Admission window: this server accepts a post only while every server
    /// has fewer than N of its messages not yet delivered (flow control; a
    /// flooding client is refused at the edge, fairly).
    #[arg(long, default_value_t = orderings::DEFAULT_WINDOW as u32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub admission_window: u32,
    /// Serve the Prometheus text format on http://IP:PORT/metrics (port 0:
    /// any free port; the `ready` line says which). Overrides the cluster
    /// file's `metrics` for this node.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Clock-skew bound: a peer's incarnation (its start time) further in
    /// the future than this is refused as forged.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub max_clock_skew_ms: u64,
    /// Every peer hears from this server at least this often (heartbeats on
    /// idle links); default: the file's `[membership] heartbeat_ms`, else 100
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub heartbeat_ms: Option<u64>,
    /// A server silent this long is suspected and leaves the view (if the
    /// rest still make up the quorum); default: the file's
    /// `[membership] suspect_ms`, else 700
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub suspect_ms: Option<u64>,
    /// Servers a view needs to order `total` messages; default: the file's
    /// `[membership] quorum`, else a majority of the servers listed
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=65_535))]
    pub quorum: Option<u64>,
    /// Create this file once the server is ready (bound, serving) and
    /// remove it when it stops: a readiness probe for supervisors such as
    /// Kubernetes (`test -e PATH`)
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// The `--ready-file`: created when the server is ready, removed when this
/// is dropped (on every way out of `run`).
struct ReadyFile(PathBuf);

impl ReadyFile {
    fn create(path: &std::path::Path) -> anyhow::Result<ReadyFile> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("creating the directory of --ready-file {}", path.display())
            })?;
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("creating --ready-file {}", path.display()))?;
        Ok(ReadyFile(path.to_path_buf()))
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Parses the command line (with the registered modes in `--help`), runs the
/// server until SIGINT or SIGTERM.
pub fn main() -> ExitCode {
    let cmd = ServerArgs::command().after_help(orderings::help_text());
    let matches = cmd.get_matches();
    let args = match ServerArgs::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_max_clients(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (a server with no clients serves no one)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
}

fn parse_max_servers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=config::HARD_MAX_SERVERS).contains(&n) => Ok(n),
        Ok(_) => Err(format!(
            "must be 1 to {} (server ids are 16 bits)",
            config::HARD_MAX_SERVERS
        )),
        Err(e) => Err(format!("{e}")),
    }
}

/// Derives the 32-byte link key from a secret's text.
pub fn key_from_secret(secret: &[u8]) -> [u8; 32] {
    blake3::derive_key("chatroom server links v1", secret)
}

/// How long a server keeps polling after traffic unless told otherwise:
/// long enough for the replies of a round under way (a hop there and back
/// on a quiet machine), so they do not each pay a wake-up; cheap at any
/// load (a server at full speed never polls an empty socket, a light one
/// polls 50 µs per burst). 20 µs missed the round's second hop.
pub const DEFAULT_BUSY_POLL_US: u64 = 50;

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let cluster = config::load_with(
        &args.config,
        config::ConfigLimits {
            max_servers: args.max_servers,
            ..config::ConfigLimits::default()
        },
    )?;
    let mut entry = cluster.server(args.index)?.clone();
    let me = ServerId((args.index - 1) as u16);
    crate::verbose::init(&me.to_string(), args.verbose);
    if !entry.bind_resolved() {
        // Our own bind address is a name: it must resolve now (the others'
        // names may resolve later).
        let text = entry.bind_text();
        let (host, port) = text
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .with_context(|| format!("bad bind address {text}"))?;
        entry.bind = config::lookup_now(host, port).with_context(|| {
            format!(
                "{}:{}: the bind address {text} of {} does not resolve; bind a local or wildcard address (bind = \"0.0.0.0:{port}\") and advertise the name",
                cluster.source.display(),
                entry.line,
                entry.name
            )
        })?;
    }
    let mode = args
        .ordering
        .clone()
        .or_else(|| cluster.ordering.clone())
        .unwrap_or_else(|| "unordered".to_string());
    let strategy = orderings::lookup(&mode)?;
    let key = match &args.secret_file {
        Some(p) => {
            let text =
                std::fs::read(p).with_context(|| format!("reading secret file {}", p.display()))?;
            let trimmed = text.trim_ascii();
            anyhow::ensure!(!trimmed.is_empty(), "secret file {} is empty", p.display());
            Some(key_from_secret(trimmed))
        }
        None => None,
    };
    let incarnation = args.incarnation.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1)
    });
    let rooms = args.rooms.unwrap_or(cluster.rooms);
    anyhow::ensure!(rooms >= 1, "--rooms must be at least 1");
    let mut membership = cluster.membership.clone();
    if args.heartbeat_ms.is_some() {
        membership.heartbeat_ms = args.heartbeat_ms;
    }
    if args.suspect_ms.is_some() {
        membership.suspect_ms = args.suspect_ms;
    }
    if let Some(q) = args.quorum {
        anyhow::ensure!(
            q as usize <= cluster.servers.len(),
            "--quorum {q} is more than the {} servers of {}",
            cluster.servers.len(),
            args.config.display()
        );
        membership.quorum = Some(q as usize);
    }
    let membership = membership.to_config();
    anyhow::ensure!(
        membership.suspect_us >= 2 * membership.heartbeat_us,
        "the suspicion time ({} ms) must be at least two heartbeats ({} ms each)",
        membership.suspect_us / 1000,
        membership.heartbeat_us / 1000
    );
    let busy_poll_us = args
        .busy_poll_us
        .or(cluster.busy_poll_us)
        .unwrap_or(DEFAULT_BUSY_POLL_US);
    // The async side (signals, metrics, host-name lookups) runs on a
    // runtime of its own thread; the server's loop runs on this one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let (control, inbox) = crate::control::channel().context("creating the loop's eventfd")?;
    let (std_sock, metrics, ready_file, shutdown) = rt.block_on(async {
        let (std_sock, granted) =
            crate::udp::bind_socket(entry.bind).with_context(|| format!("binding {} ({})", entry.bind, entry.name))?;
        // Bound before `ready`, so that a taken port fails the start.
        let metrics = match args.metrics.or(entry.metrics) {
            Some(addr) => {
                let (listener, local) = crate::metrics::bind(addr)
                    .with_context(|| format!("binding the metrics address {addr}"))?;
                Some((crate::metrics::serve(listener)?, local))
            }
            None => None,
        };
        let metrics_note = match &metrics {
            Some((_, a)) => format!(", {}{a}/metrics", crate::metrics::READY_MARK),
            None => String::new(),
        };
        if key.is_none() && cluster.servers.len() > 1 {
            eprintln!("{me} note: no cluster secret; server-to-server packets are not authenticated");
        }
        // Signal handlers go in before `ready`: a supervisor may stop us
        // the moment it reads that line (a signal that comes before the
        // runtime's thread runs is kept for it).
        let shutdown = shutdown_signal()?;
        // The file first: whoever reads the line may look for it.
        let ready = match &args.ready_file {
            Some(p) => Some(ReadyFile::create(p)?),
            None => None,
        };
        eprintln!(
            "{me} ready: listening on {} (ordering {}, {} rooms, incarnation {incarnation}, receive buffer {} KiB, polls {busy_poll_us} us after traffic){metrics_note}",
            entry.bind,
            strategy.name,
            rooms,
            granted / 1024
        );
        anyhow::Ok((std_sock, metrics.map(|(m, _)| m), ready, shutdown))
    })?;
    let setup = ServerSetup {
        cluster,
        me,
        strategy,
        rooms,
        max_clients: args.max_clients,
        incarnation,
        key,
        busy_poll_us,
        window: args.admission_window as usize,
        max_clock_skew_us: args.max_clock_skew_ms.saturating_mul(1000),
        membership,
        session_policy: crate::session::SessionPolicy {
            idle_us: args.session_idle_s.saturating_mul(1_000_000),
            unconfirmed_allowance: args.unconfirmed_allowance,
            cookie_key: crate::session::random_key(),
        },
        error_limits: crate::guard::ErrorLimits {
            per_addr_burst: args.error_burst,
            per_addr_rate: args.error_rate,
            total_rate: args.error_rate_total,
        },
    };
    let runtime = rt.handle().clone();
    let asks = metrics.as_ref().map(|m| m.asks());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let async_side = std::thread::Builder::new()
        .name("async side".into())
        .spawn(move || {
            rt.block_on(async move {
                let to_loop = control.clone();
                tokio::spawn(async move {
                    shutdown.await;
                    to_loop.send(crate::control::Control::Shutdown);
                });
                if let Some(asks) = asks {
                    tokio::spawn(async move {
                        loop {
                            asks.next().await;
                            if !control.send(crate::control::Control::MetricsWanted) {
                                break;
                            }
                        }
                    });
                }
                // Until the loop has stopped (or is gone).
                let _ = stopped.await;
            })
        })
        .context("starting the async side's thread")?;
    let stats = server::run(std_sock, setup, inbox, runtime, metrics);
    // Not ready any more, before anything says it stopped.
    drop(ready_file);
    drop(stop);
    let _ = async_side.join();
    let stats = stats?;
    eprintln!(
        "{}",
        crate::stats::ServerCounters::from(&stats).stopped_line(&me.to_string())
    );
    Ok(())
}

/// Installs SIGINT and SIGTERM handlers now; the returned future completes
/// on either.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
