//! Server faults during a stress run: `--kill-server N --at T` (SIGKILL, no
//! restart) and `--stop-server N --at T [--for D]` (SIGSTOP, then SIGCONT
//! after D; without `--for` the server stays stopped until the end of the
//! run, and is continued then so that nothing is left stopped).
//!
//! The options pair up by position: each `--at` (and `--for`) belongs to
//! the `--kill-server` or `--stop-server` before it, so clap's derive
//! cannot express them; [`ServerFaultArgs`] implements clap's traits by
//! hand and reads the positions.
//!
//! The schedule runs on a thread of its own beside the load ([`run`]):
//! it learns when the sending starts, signals each server's process group
//! at its time, and stops (continuing every server it left stopped) as soon
//! as the load ends.

use crate::load::LoadEvent;
use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches, error::ErrorKind};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What happens to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL; not restarted.
    Kill,
    /// SIGSTOP; SIGCONT after `for_` (if any).
    Stop,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Stop => "stop",
        }
    }
}

/// One fault as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFault {
    pub kind: FaultKind,
    /// 1-based, as in the cluster file.
    pub server: usize,
    /// After the start of the sending.
    pub at: Duration,
    /// Stop only: resume after this long (`None`: never during the run).
    pub for_: Option<Duration>,
}

impl ServerFault {
    /// Whether the server does not come back during the run.
    pub fn for_good(&self) -> bool {
        self.kind == FaultKind::Kill || self.for_.is_none()
    }

    /// When the fault is over (`None`: never).
    fn ends(&self) -> Option<Duration> {
        match self.kind {
            FaultKind::Kill => None,
            FaultKind::Stop => self.for_.map(|d| self.at + d),
        }
    }

    /// The last moment the schedule acts for this fault.
    pub fn last_action(&self) -> Duration {
        self.ends().unwrap_or(self.at)
    }

    /// `kill server 3 at 2s`, `stop server 2 at 1s for 3s`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} server {} at {}",
            self.kind.as_str(),
            self.server,
            show_duration(self.at)
        );
        match (self.kind, self.for_) {
            (FaultKind::Stop, Some(d)) => s.push_str(&format!(" for {}", show_duration(d))),
            (FaultKind::Stop, None) => s.push_str(" (not resumed during the run)"),
            (FaultKind::Kill, _) => {}
        }
        s
    }
}

/// `1500ms`, `2s`.
pub fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A duration with a unit: `500ms`, `2s`, `1.5s`. A bare number is refused
/// (seconds or milliseconds would be a guess).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!(
            "'{s}' is not a duration: give a number with ms or s (e.g. 500ms, 2s)"
        ));
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        format!("'{s}' is not a duration: give a number with ms or s (e.g. 500ms, 2s)")
    })?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}': a duration must be 0 or more"));
    }
    let secs = v * scale;
    // Nobody means a fault days after the start; bounding it keeps
    // `Duration::from_secs_f64` away from overflow.
    if secs > 86_400.0 {
        return Err(format!("'{s}' is more than a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A server number: 1-based.
fn parse_server(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("servers are numbered from 1 (as in the cluster file)".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a server number (1, 2, ...)")),
    }
}

/// The fault options of `launcher stress`.
#[derive(Debug, Clone, Default)]
pub struct ServerFaultArgs {
    pub faults: Vec<ServerFault>,
}

const KILL: &str = "kill_server";
const STOP: &str = "stop_server";
const AT: &str = "fault_at";
const FOR: &str = "fault_for";

impl clap::Args for ServerFaultArgs {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new(KILL)
                .long("kill-server")
                .value_name("N")
                .action(ArgAction::Append)
                .value_parser(parse_server)
                .help(
                    "SIGKILL server N (1-based) at --at after the sending starts; no restart. \
                     Its clients are checked as partial; without --client-servers it gets none. \
                     May be given several times",
                ),
        )
        .arg(
            Arg::new(STOP)
                .long("stop-server")
                .value_name("N")
                .action(ArgAction::Append)
                .value_parser(parse_server)
                .help(
                    "SIGSTOP server N at --at, SIGCONT after --for (without --for: at the end \
                     of the run). May be given several times",
                ),
        )
        .arg(
            Arg::new(AT)
                .long("at")
                .value_name("DURATION")
                .action(ArgAction::Append)
                .value_parser(parse_duration)
                .help("When the --kill-server/--stop-server before it happens, after the sending starts (500ms, 2s)"),
        )
        .arg(
            Arg::new(FOR)
                .long("for")
                .value_name("DURATION")
                .action(ArgAction::Append)
                .value_parser(parse_duration)
                .help("How long the --stop-server before it lasts (500ms, 3s)"),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServerFaultArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        pair_up(m).map_err(|msg| clap::Error::raw(ErrorKind::ArgumentConflict, msg))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Given {
    Kill(usize),
    Stop(usize),
    At(Duration),
    For(Duration),
}

/// Pairs each `--at`/`--for` with the fault option before it.
fn pair_up(m: &ArgMatches) -> Result<ServerFaultArgs, String> {
    let mut given: Vec<(usize, Given)> = Vec::new();
    fn collect<T: Clone + Send + Sync + 'static>(
        m: &ArgMatches,
        id: &str,
        wrap: impl Fn(T) -> Given,
        out: &mut Vec<(usize, Given)>,
    ) {
        if let (Some(vals), Some(idx)) = (m.get_many::<T>(id), m.indices_of(id)) {
            out.extend(idx.zip(vals.cloned().map(wrap)));
        }
    }
    collect(m, KILL, Given::Kill, &mut given);
    collect(m, STOP, Given::Stop, &mut given);
    collect(m, AT, Given::At, &mut given);
    collect(m, FOR, Given::For, &mut given);
    given.sort_by_key(|(i, _)| *i);
    pair_in_order(given.into_iter().map(|(_, g)| g))
}

fn pair_in_order(given: impl Iterator<Item = Given>) -> Result<ServerFaultArgs, String> {
    struct Open {
        kind: FaultKind,
        server: usize,
        at: Option<Duration>,
        for_: Option<Duration>,
    }
    fn name(kind: FaultKind, server: usize) -> String {
        match kind {
            FaultKind::Kill => format!("--kill-server {server}"),
            FaultKind::Stop => format!("--stop-server {server}"),
        }
    }
    fn close(o: Open) -> Result<ServerFault, String> {
        let at = o.at.ok_or_else(|| {
            format!(
                "{} needs --at DURATION after it (e.g. --at 2s)",
                name(o.kind, o.server)
            )
        })?;
        Ok(ServerFault {
            kind: o.kind,
            server: o.server,
            at,
            for_: o.for_,
        })
    }
    let mut out = Vec::new();
    let mut open: Option<Open> = None;
    for g in given {
        match g {
            Given::Kill(server) | Given::Stop(server) => {
                if let Some(o) = open.take() {
                    out.push(close(o)?);
                }
                let kind = if matches!(g, Given::Kill(_)) {
                    FaultKind::Kill
                } else {
                    FaultKind::Stop
                };
                open = Some(Open {
                    kind,
                    server,
                    at: None,
                    for_: None,
                });
            }
            Given::At(d) => match open.as_mut() {
                None => {
                    return Err(format!(
                        "--at {} must follow --kill-server N or --stop-server N",
                        show_duration(d)
                    ));
                }
                Some(o) if o.at.is_some() => {
                    return Err(format!("{} has more than one --at", name(o.kind, o.server)));
                }
                Some(o) => o.at = Some(d),
            },
            Given::For(d) => match open.as_mut() {
                Some(o) if o.kind == FaultKind::Stop && o.for_.is_none() => {
                    if d.is_zero() {
                        return Err(format!(
                            "{}: --for must be more than 0",
                            name(o.kind, o.server)
                        ));
                    }
                    o.for_ = Some(d);
                }
                Some(o) if o.kind == FaultKind::Stop => {
                    return Err(format!(
                        "{} has more than one --for",
                        name(o.kind, o.server)
                    ));
                }
                _ => {
                    return Err(format!(
                        "--for {} must follow --stop-server N (a killed server does not come back)",
                        show_duration(d)
                    ));
                }
            },
        }
    }
    if let Some(o) = open.take() {
        out.push(close(o)?);
    }
    Ok(ServerFaultArgs { faults: out })
}

/// Checks the faults against a cluster of `servers` servers: every server
/// exists, and the faults of one server follow each other (a fault starts
/// after the one before it on that server is over; nothing follows a kill
/// or a stop without `--for`).
pub fn validate(faults: &[ServerFault], servers: usize) -> Result<(), String> {
    for f in faults {
        if f.server > servers {
            return Err(format!(
                "--{}-server {}: no server {} (the cluster has {servers})",
                f.kind.as_str(),
                f.server,
                f.server
            ));
        }
    }
    let mut sorted: Vec<&ServerFault> = faults.iter().collect();
    sorted.sort_by_key(|f| (f.server, f.at));
    for w in sorted.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.server != b.server {
            continue;
        }
        let overlaps = a.ends().is_none_or(|end| b.at < end);
        if overlaps {
            return Err(format!(
                "server {}: '{}' starts before '{}' is over",
                a.server,
                b.describe(),
                a.describe()
            ));
        }
    }
    if servers > 0 && (1..=servers).all(|s| faults.iter().any(|f| f.server == s && f.for_good())) {
        return Err(
            "every server is killed or stopped for good: nobody would be left to check".into(),
        );
    }
    Ok(())
}

/// What the schedule did about one fault (times since the sending started).
#[derive(Debug, Clone, Default)]
pub struct FaultOutcome {
    /// When the signal was sent (`None`: the load ended first, or it failed).
    pub done_at: Option<Duration>,
    /// When SIGCONT was sent as scheduled (`--for`).
    pub resumed_at: Option<Duration>,
    /// The server was still stopped when the load ended and was continued
    /// then.
    pub continued_at_end: bool,
    /// Why it could not be done.
    pub problem: Option<String>,
}

/// What the schedule works with.
pub struct Schedule<'a> {
    pub faults: &'a [ServerFault],
    /// Each server's pid (by index - 1), or `None` if it had exited. The
    /// servers are children of this process that nobody reaps while the
    /// schedule runs, so a pid cannot have been reused.
    pub pids: Vec<Option<u32>>,
    /// The load's per-slot flags (`LoadHooks::gone`), set for a server's
    /// slots when it is gone for good.
    pub gone: Arc<Vec<AtomicBool>>,
    /// Per server (index - 1): its slots in `gone` (the load's servers are
    /// the ones with clients, possibly listed twice).
    pub gone_slots: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Signal(usize),
    Resume(usize),
}

fn signal(pid: Option<u32>, sig: Signal) -> Result<(), String> {
    let pid = pid.ok_or("the server had already exited")?;
    let pid = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    // Each server runs in a process group of its own (`process::server_command`).
    killpg(Pid::from_raw(pid), sig).map_err(|e| format!("{sig}: {e}"))
}

/// Runs the schedule: waits for [`LoadEvent::Started`], then acts at each
/// fault's time until [`LoadEvent::Ended`] (or every sender is dropped).
/// Returns what happened to each fault, in `faults` order.
pub fn run(s: Schedule<'_>, events: Receiver<LoadEvent>) -> Vec<FaultOutcome> {
    let mut outcomes = vec![FaultOutcome::default(); s.faults.len()];
    // A resume is added once its SIGSTOP went out: `--for` counts from
    // the actual stop, which may come a little late on a busy machine.
    let mut actions: Vec<(Duration, Action)> = s
        .faults
        .iter()
        .enumerate()
        .map(|(i, f)| (f.at, Action::Signal(i)))
        .collect();
    // Which faults hold a server stopped right now.
    let mut stopped: Vec<bool> = vec![false; s.faults.len()];
    // The start, or the end of a load that never started (setup failed).
    let origin = match events.recv() {
        Ok(LoadEvent::Started(t)) => Some(t),
        Ok(LoadEvent::Ended) | Err(_) => None,
    };
    if let Some(origin) = origin {
        let mut ended = false;
        // The earliest action next (the first given, at equal times).
        while let Some(next) = actions
            .iter()
            .enumerate()
            .min_by_key(|(_, (t, _))| *t)
            .map(|(k, _)| k)
        {
            let (t, action) = actions.remove(next);
            let when = origin + t;
            // The fault's time is a scenario parameter: wait for it, but
            // leave at once when the load ends.
            let wait = when.saturating_duration_since(Instant::now());
            match events.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                // Only one start is ever sent.
                Ok(LoadEvent::Started(_)) => {}
                Ok(LoadEvent::Ended) | Err(RecvTimeoutError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
            // SIGCONT for fault `i`, as scheduled.
            let resume = |i: usize, stopped: &mut [bool], outcome: &mut FaultOutcome| match signal(
                s.pids[s.faults[i].server - 1],
                Signal::SIGCONT,
            ) {
                Ok(()) => {
                    outcome.resumed_at = Some(origin.elapsed());
                    stopped[i] = false;
                }
                Err(e) => outcome.problem = Some(e),
            };
            match action {
                Action::Signal(i) => {
                    let f = &s.faults[i];
                    // The stop before it on this server is due to end now
                    // (`validate`) but its resume, counted from its actual
                    // stop, may be a moment later: end it first.
                    for j in 0..s.faults.len() {
                        if j != i && s.faults[j].server == f.server && stopped[j] {
                            resume(j, &mut stopped, &mut outcomes[j]);
                        }
                    }
                    let sig = match f.kind {
                        FaultKind::Kill => Signal::SIGKILL,
                        FaultKind::Stop => Signal::SIGSTOP,
                    };
                    match signal(s.pids[f.server - 1], sig) {
                        Ok(()) => {
                            let now = origin.elapsed();
                            outcomes[i].done_at = Some(now);
                            stopped[i] = f.kind == FaultKind::Stop;
                            if let (FaultKind::Stop, Some(d)) = (f.kind, f.for_) {
                                actions.push((now + d, Action::Resume(i)));
                            }
                            if f.for_good() {
                                for &slot in &s.gone_slots[f.server - 1] {
                                    if let Some(g) = s.gone.get(slot) {
                                        g.store(true, Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                        Err(e) => outcomes[i].problem = Some(e),
                    }
                }
                Action::Resume(i) if stopped[i] => resume(i, &mut stopped, &mut outcomes[i]),
                Action::Resume(_) => {}
            }
        }
        // Nothing left to do: hold on until the load ends, so that a server
        // stopped for good stays stopped for the rest of the run.
        if !ended && stopped.iter().any(|&b| b) {
            while let Ok(LoadEvent::Started(_)) = events.recv() {}
        }
    }
    // Nothing is left stopped.
    for (i, f) in s.faults.iter().enumerate() {
        if stopped[i] {
            match signal(s.pids[f.server - 1], Signal::SIGCONT) {
                Ok(()) => outcomes[i].continued_at_end = true,
                Err(e) => outcomes[i].problem = Some(format!("continuing it at the end: {e}")),
            }
        }
    }
    for (i, f) in s.faults.iter().enumerate() {
        if outcomes[i].done_at.is_none() && outcomes[i].problem.is_none() {
            outcomes[i].problem = Some(format!(
                "not done: the load ended before {} (lower --at or send more messages)",
                show_duration(f.at)
            ));
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        f: ServerFaultArgs,
    }

    fn parse(args: &[&str]) -> Result<Vec<ServerFault>, String> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|t| t.f.faults)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["x", "2", "", "ms", "-1s", "2 m", "1e9s", "NaNs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_secs(3)), "3s");
    }

    #[test]
    fn options_pair_up_by_position() {
        let f = parse(&[
            "--kill-server",
            "3",
            "--at",
            "2s",
            "--stop-server",
            "2",
            "--at",
            "1s",
            "--for",
            "3s",
            "--stop-server",
            "1",
            "--at",
            "500ms",
        ])
        .unwrap();
        assert_eq!(
            f,
            vec![
                ServerFault {
                    kind: FaultKind::Kill,
                    server: 3,
                    at: Duration::from_secs(2),
                    for_: None
                },
                ServerFault {
                    kind: FaultKind::Stop,
                    server: 2,
                    at: Duration::from_secs(1),
                    for_: Some(Duration::from_secs(3))
                },
                ServerFault {
                    kind: FaultKind::Stop,
                    server: 1,
                    at: Duration::from_millis(500),
                    for_: None
                },
            ]
        );
        // --for before --at is fine too.
        let f = parse(&["--stop-server", "2", "--for", "1s", "--at", "0s"]).unwrap();
        assert_eq!(f[0].for_, Some(Duration::from_secs(1)));
        assert_eq!(parse(&[]).unwrap(), vec![]);
    }

    #[test]
    fn bad_options_are_refused_clearly() {
        let cases: &[(&[&str], &str)] = &[
            (&["--kill-server", "3"], "--kill-server 3 needs --at"),
            (&["--at", "2s"], "--at 2s must follow"),
            (&["--kill-server", "0", "--at", "1s"], "numbered from 1"),
            (&["--kill-server", "x", "--at", "1s"], "not a server number"),
            (
                &["--kill-server", "1", "--at", "x"],
                "'x' is not a duration",
            ),
            (
                &["--kill-server", "1", "--at", "1s", "--for", "1s"],
                "--for 1s must follow --stop-server",
            ),
            (
                &["--stop-server", "1", "--at", "1s", "--at", "2s"],
                "more than one --at",
            ),
            (
                &["--stop-server", "1", "--at", "1s", "--for", "0s"],
                "more than 0",
            ),
        ];
        for (args, want) in cases {
            let e = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    /// A `sleep` standing in for a server (own process group, like one),
    /// and the schedule of one stop of it running on a thread.
    struct Rig {
        child: std::process::Child,
        pid: u32,
        tx: std::sync::mpsc::Sender<LoadEvent>,
        returned: std::sync::mpsc::Receiver<()>,
        runner: std::thread::JoinHandle<Vec<FaultOutcome>>,
    }

    fn rig(for_: Duration) -> Rig {
        let child = crate::cluster::process::server_command(
            std::path::Path::new("/bin/sleep"),
            &["30".into()],
        )
        .spawn()
        .expect("spawn sleep");
        let pid = child.id();
        let faults = vec![ServerFault {
            kind: FaultKind::Stop,
            server: 1,
            at: Duration::ZERO,
            for_: Some(for_),
        }];
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, returned) = std::sync::mpsc::channel();
        let runner = std::thread::spawn(move || {
            let s = Schedule {
                faults: &faults,
                pids: vec![Some(pid)],
                gone: Arc::new(vec![AtomicBool::new(false)]),
                gone_slots: vec![vec![0]],
            };
            let out = run(s, rx);
            let _ = done_tx.send(());
            out
        });
        tx.send(LoadEvent::Started(Instant::now())).unwrap();
        Rig {
            child,
            pid,
            tx,
            returned,
            runner,
        }
    }

    impl Rig {
        /// Waits (bounded) until the child is stopped (`true`) or not.
        fn becomes(&self, stopped: bool) -> bool {
            crate::cluster::process::wait_until(Instant::now() + Duration::from_secs(10), || {
                (state(self.pid) == Some('T')) == stopped
            })
        }

        /// Ends the load; returns whether the schedule returned in time,
        /// the child's state it left, and the outcome. The child is
        /// continued and ended whatever happened.
        fn end(mut self) -> (bool, Option<char>, Vec<FaultOutcome>) {
            // The schedule may be over already (nothing left to do).
            let _ = self.tx.send(LoadEvent::Ended);
            let returned = self.returned.recv_timeout(Duration::from_secs(10)).is_ok();
            let st = state(self.pid);
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
            drop(self.tx);
            let out = self.runner.join().expect("schedule thread");
            (returned, st, out)
        }
    }

    /// The state of `pid` from /proc (`T` when stopped).
    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) S ...`: the state follows the last ')'.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// A load that ends while a server is still stopped (its `--for` runs
    /// past the end): the schedule returns at once and continues it.
    #[test]
    fn the_load_ending_during_a_stop_continues_the_server() {
        let r = rig(Duration::from_secs(3600));
        let stopped = r.becomes(true);
        let (returned, st, out) = r.end();
        assert!(stopped, "the schedule never stopped it");
        assert!(returned, "the schedule did not return after the load ended");
        assert!(out[0].done_at.is_some(), "{out:?}");
        assert!(out[0].resumed_at.is_none(), "{out:?}");
        assert!(out[0].continued_at_end, "{out:?}");
        assert_ne!(st, Some('T'), "left stopped");
    }

    /// `--for` counts from the SIGSTOP actually sent.
    #[test]
    fn a_stop_lasts_for_its_duration() {
        let r = rig(Duration::from_millis(100));
        let stopped = r.becomes(true);
        let resumed = r.becomes(false);
        let (returned, _, out) = r.end();
        assert!(
            stopped && resumed && returned,
            "{stopped} {resumed} {returned}"
        );
        let (Some(s), Some(c)) = (out[0].done_at, out[0].resumed_at) else {
            panic!("{out:?}");
        };
        assert!(c >= s + Duration::from_millis(100), "{out:?}");
        assert!(!out[0].continued_at_end, "{out:?}");
    }

    #[test]
    fn validation() {
        let f = |kind, server, at: u64, for_: Option<u64>| ServerFault {
            kind,
            server,
            at: Duration::from_millis(at),
            for_: for_.map(Duration::from_millis),
        };
        use FaultKind::*;
        assert!(validate(&[f(Kill, 3, 500, None)], 3).is_ok());
        let e = validate(&[f(Kill, 4, 500, None)], 3).unwrap_err();
        assert!(e.contains("no server 4 (the cluster has 3)"), "{e}");
        // One server: a stop, then after its end another stop, then a kill.
        assert!(
            validate(
                &[
                    f(Stop, 1, 0, Some(100)),
                    f(Stop, 1, 100, Some(50)),
                    f(Kill, 1, 200, None)
                ],
                2
            )
            .is_ok()
        );
        assert!(validate(&[f(Stop, 1, 0, Some(100)), f(Stop, 1, 50, Some(10))], 2).is_err());
        assert!(validate(&[f(Kill, 1, 0, None), f(Stop, 1, 50, Some(10))], 2).is_err());
        assert!(validate(&[f(Stop, 1, 0, None), f(Kill, 1, 50, None)], 2).is_err());
        let e = validate(&[f(Kill, 1, 0, None), f(Stop, 2, 0, None)], 2).unwrap_err();
        assert!(e.contains("nobody would be left"), "{e}");
    }
}
