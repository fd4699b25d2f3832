//! `launcher trace LOG... -o FILE`: the space-time diagram of a run from
//! the servers' `-v` logs (any order, any mix; junk lines are counted and
//! skipped), as a self-contained HTML page (the data and the diagram
//! script inline) or, for `FILE.svg`, an SVG drawn in Rust.

use crate::diagram::{self, Trace};
use anyhow::Context;
use clap::Args;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Logs of `chatserver -v` (e.g. `.state/NAME/logs/*.log`), in any order.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// Output: `.svg` for an SVG, anything else for an HTML page.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Only this chat room (SVG: default every room, one below the other;
    /// HTML: the room shown first).
    #[arg(long)]
    pub room: Option<u32>,
}

/// Reads every log into one sorted trace. Lines that are not UTF-8 are
/// read lossily (a log may hold anything a client typed).
pub fn read_logs(paths: &[PathBuf]) -> anyhow::Result<Trace> {
    let mut trace = Trace::default();
    for p in paths {
        let f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
        let mut r = BufReader::new(f);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = r
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("cannot read {}", p.display()))?;
            if n == 0 {
                break;
            }
            trace.add_line(&String::from_utf8_lossy(&buf));
        }
    }
    trace.sort();
    Ok(trace)
}

pub fn run(a: TraceArgs) -> anyhow::Result<ExitCode> {
    let mut trace = read_logs(&a.logs)?;
    if let Some(r) = a.room {
        trace.events.retain(|e| e.room == r);
    }
    let svg = a
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let text = if svg {
        diagram::svg::render(&trace, a.room)
    } else {
        let names: Vec<String> = a
            .logs
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        diagram::html_page(&format!("trace of {}", names.join(", ")), &trace)
    };
    std::fs::write(&a.output, text)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    let rooms = trace.rooms();
    crate::outln!(
        "trace: {} servers, {} messages in {} room{}, {} events; {} other -v lines, {} junk lines skipped; wrote {}",
        trace.servers.len(),
        rooms.values().sum::<usize>(),
        rooms.len(),
        if rooms.len() == 1 { "" } else { "s" },
        trace.events.len(),
        trace.other,
        trace.junk,
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
