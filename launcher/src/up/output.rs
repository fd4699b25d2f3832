//! `launcher up` output: every node's lines prefixed `name | `, launcher
//! events on the same stream, whole lines only (one write per line under a
//! lock), colour per node only on a terminal without `NO_COLOR`, and a log
//! file per node.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;

const COLOURS: &[&str] = &[
    "36", "33", "35", "32", "34", "31", "96", "93", "95", "92", "94", "91",
];

pub struct Output {
    /// Held while a line is written to stdout.
    stdout: Mutex<()>,
    colour: bool,
    /// Prefix column width.
    width: usize,
    names: Vec<String>,
    logs: Vec<Mutex<Option<File>>>,
}

/// Colour only when stdout is a terminal and `NO_COLOR` is unset (or empty).
pub fn want_colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

impl Output {
    /// `names[i]` is node `i`; `log_dir`, if given, gets `NAME.log` per node
    /// (truncated now, appended to across restarts).
    pub fn new(
        names: Vec<String>,
        log_dir: Option<&Path>,
        colour: bool,
    ) -> std::io::Result<Output> {
        let mut logs = Vec::new();
        for n in &names {
            let f = match log_dir {
                Some(d) => Some(File::create(d.join(format!("{n}.log")))?),
                None => None,
            };
            logs.push(Mutex::new(f));
        }
        Ok(Output {
            stdout: Mutex::new(()),
            colour,
            width: names.iter().map(|n| n.len()).max().unwrap_or(0),
            names,
            logs,
        })
    }

    fn prefix(&self, node: usize) -> String {
        let name = self.names.get(node).map(String::as_str).unwrap_or("?");
        let padded = format!("{name:<width$}", width = self.width);
        if self.colour {
            format!("\x1b[{}m{padded} |\x1b[0m ", COLOURS[node % COLOURS.len()])
        } else {
            format!("{padded} | ")
        }
    }

    /// One line to stdout with a single write under the lock. Errors (a
    /// closed pipe) are ignored: the nodes keep running regardless.
    fn emit(&self, line: &str) {
        let _g = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    fn log(&self, node: usize, text: &str) {
        if let Some(m) = self.logs.get(node) {
            let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = g.as_mut() {
                let mut line = String::with_capacity(text.len() + 1);
                line.push_str(text);
                line.push('\n');
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    /// A line the node printed.
    pub fn node_line(&self, node: usize, text: &str) {
        self.emit(&format!("{}{text}\n", self.prefix(node)));
        self.log(node, text);
    }

    /// A launcher event about one node: `s1 | launcher: TEXT`.
    pub fn event(&self, node: usize, text: &str) {
        let t = format!("launcher: {text}");
        self.emit(&format!("{}{t}\n", self.prefix(node)));
        self.log(node, &t);
    }

    /// A launcher event about the whole cluster: `launcher: TEXT`.
    pub fn global(&self, text: &str) {
        let line = if self.colour {
            format!("\x1b[1mlauncher:\x1b[0m {text}\n")
        } else {
            format!("launcher: {text}\n")
        };
        self.emit(&line);
    }
}
