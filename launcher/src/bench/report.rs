//! A benchmark's report: figures next to their targets, as printed and as
//! `--json` writes them.

use super::machine::Machine;
use serde::Serialize;

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    AtLeast,
    AtMost,
    Below,
    Equal,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    pub op: Op,
    pub value: f64,
}

impl Target {
    pub fn at_least(value: f64) -> Option<Target> {
        Some(Target {
            op: Op::AtLeast,
            value,
        })
    }
    pub fn at_most(value: f64) -> Option<Target> {
        Some(Target {
            op: Op::AtMost,
            value,
        })
    }
    pub fn below(value: f64) -> Option<Target> {
        Some(Target {
            op: Op::Below,
            value,
        })
    }
    pub fn equal(value: f64) -> Option<Target> {
        Some(Target {
            op: Op::Equal,
            value,
        })
    }
    fn met(&self, v: f64) -> bool {
        match self.op {
            Op::AtLeast => v >= self.value,
            Op::AtMost => v <= self.value,
            Op::Below => v < self.value,
            Op::Equal => v == self.value,
        }
    }
    fn text(&self, unit: &str) -> String {
        let op = match self.op {
            Op::AtLeast => ">=",
            Op::AtMost => "<=",
            Op::Below => "<",
            Op::Equal => "=",
        };
        format!("{op} {} {unit}", fmt_num(self.value))
            .trim_end()
            .to_string()
    }
}

/// One line of a benchmark's table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: String,
    /// `None`: could not be measured here (see `note`).
    pub value: Option<f64>,
    pub unit: String,
    pub target: Option<Target>,
    /// `None` without a target or a value.
    pub met: Option<bool>,
    pub note: String,
}

impl Row {
    pub fn new(
        figure: impl Into<String>,
        value: Option<f64>,
        unit: &str,
        target: Option<Target>,
    ) -> Row {
        let met = target.zip(value).map(|(t, v)| t.met(v));
        Row {
            figure: figure.into(),
            value,
            unit: unit.to_string(),
            target,
            met,
            note: String::new(),
        }
    }
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }
}

/// The report of one benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct PresetReport {
    pub bench: String,
    pub title: String,
    pub quick: bool,
    /// Every run delivered everything, in order, without server trouble.
    pub ok: bool,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub details: serde_json::Value,
    pub duration_s: f64,
    /// How busy the machine was during the benchmark, and how much the
    /// hypervisor took (set by the caller that timed it).
    pub cpu_load: Option<super::machine::CpuLoad>,
}

/// What `--json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub command: Vec<String>,
    /// Server-to-server packets were authenticated (`--secret`).
    pub secret: bool,
    pub ok: bool,
    pub benches: Vec<PresetReport>,
}

/// Numbers with thousands separators (integers) or up to 3 decimals.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let s = format!("{}", v.abs() as u64);
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub(super) fn print(r: &PresetReport) {
    crate::outln!();
    crate::outln!(
        "== {}{}",
        r.title,
        if r.quick {
            " [--quick: figures not meaningful]"
        } else {
            ""
        }
    );
    let w = r
        .rows
        .iter()
        .map(|x| x.figure.len())
        .max()
        .unwrap_or(6)
        .max(6);
    crate::outln!(
        "  {:<w$}  {:>14}  {:>16}  {:<4}  note",
        "figure",
        "value",
        "target",
        "met"
    );
    for x in &r.rows {
        let value = match x.value {
            Some(v) => format!("{} {}", fmt_num(v), x.unit).trim_end().to_string(),
            None => "n/a".into(),
        };
        let target = x
            .target
            .map(|t| t.text(&x.unit))
            .unwrap_or_else(|| "-".into());
        let met = match x.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        crate::outln!(
            "  {:<w$}  {:>14}  {:>16}  {:<4}  {}",
            x.figure,
            value,
            target,
            met,
            x.note
        );
    }
    for n in &r.notes {
        crate::outln!("  note: {}", n.replace('\n', "\n        "));
    }
    crate::outln!(
        "  result: {} ({:.1}s)",
        if r.ok { "OK" } else { "RUN FAILED" },
        r.duration_s
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_readably() {
        assert_eq!(fmt_num(50_000.0), "50,000");
        assert_eq!(fmt_num(1_234_567.0), "1,234,567");
        assert_eq!(fmt_num(0.1), "0.1");
        assert_eq!(fmt_num(0.125), "0.125");
        assert_eq!(fmt_num(12.0), "12");
        assert_eq!(fmt_num(-1024.0), "-1,024");
    }

    #[test]
    fn targets_compare() {
        assert_eq!(
            Row::new("x", Some(0.1), "ms", Target::at_most(0.10)).met,
            Some(true)
        );
        assert_eq!(
            Row::new("x", Some(5.0), "ms", Target::below(5.0)).met,
            Some(false)
        );
        assert_eq!(
            Row::new("x", Some(49_999.0), "msg/s", Target::at_least(50_000.0)).met,
            Some(false)
        );
        assert_eq!(
            Row::new("x", None, "msg/s", Target::at_least(1.0)).met,
            None
        );
        assert_eq!(Row::new("x", Some(3.0), "", None).met, None);
    }
}
