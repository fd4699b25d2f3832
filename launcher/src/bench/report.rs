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
    /// With `--repeat N`: each benchmark's figures over its N runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub summaries: Vec<Summary>,
}

/// One benchmark's figures over several runs (`--repeat`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub bench: String,
    pub title: String,
    pub runs: usize,
    pub rows: Vec<SummaryRow>,
    /// Each run's share of CPU time taken by the hypervisor (%), in order.
    pub steal_pct: Vec<Option<f64>>,
}

/// One figure over the runs that measured it.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    pub figure: String,
    pub unit: String,
    /// Runs with a value for it.
    pub measured: usize,
    pub min: Option<f64>,
    pub median: Option<f64>,
    pub max: Option<f64>,
    pub target: Option<Target>,
    /// Runs in which it met its target (of `measured`).
    pub met: usize,
}

impl Summary {
    /// The figures of `runs` (of one benchmark), matched by name in the
    /// order they first appear.
    pub fn of(runs: &[PresetReport]) -> Summary {
        let mut rows: Vec<SummaryRow> = Vec::new();
        let mut values: Vec<Vec<f64>> = Vec::new();
        for r in runs {
            for x in &r.rows {
                let i = match rows.iter().position(|s| s.figure == x.figure) {
                    Some(i) => i,
                    None => {
                        rows.push(SummaryRow {
                            figure: x.figure.clone(),
                            unit: x.unit.clone(),
                            measured: 0,
                            min: None,
                            median: None,
                            max: None,
                            target: x.target,
                            met: 0,
                        });
                        values.push(Vec::new());
                        rows.len() - 1
                    }
                };
                if let Some(v) = x.value.filter(|v| v.is_finite()) {
                    values[i].push(v);
                    rows[i].met += usize::from(x.met == Some(true));
                }
            }
        }
        for (row, mut v) in rows.iter_mut().zip(values) {
            v.sort_by(f64::total_cmp);
            row.measured = v.len();
            row.min = v.first().copied();
            row.max = v.last().copied();
            row.median = match v.len() {
                0 => None,
                n if n % 2 == 1 => Some(v[n / 2]),
                n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
            };
        }
        Summary {
            bench: runs.first().map(|r| r.bench.clone()).unwrap_or_default(),
            title: runs.first().map(|r| r.title.clone()).unwrap_or_default(),
            runs: runs.len(),
            rows,
            steal_pct: runs
                .iter()
                .map(|r| r.cpu_load.map(|l| l.steal_pct))
                .collect(),
        }
    }
}

/// Width of the figure column: the longest figure name, at least 6.
fn figure_width<'a>(figures: impl Iterator<Item = &'a str>) -> usize {
    figures.map(str::len).max().unwrap_or(6).max(6)
}

/// A figure's value with its unit, or `n/a`.
fn value_text(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) => format!("{} {unit}", fmt_num(v)).trim_end().to_string(),
        None => "n/a".into(),
    }
}

pub(super) fn print_summary(s: &Summary) {
    crate::outln!();
    crate::outln!("== {} over {} runs", s.title, s.runs);
    let w = figure_width(s.rows.iter().map(|x| x.figure.as_str()));
    crate::outln!(
        "  {:<w$}  {:>14}  {:>14}  {:>14}  {:>16}  met",
        "figure",
        "min",
        "median",
        "max",
        "target"
    );
    for x in &s.rows {
        let (target, met) = match x.target {
            Some(t) => (t.text(&x.unit), format!("{} of {}", x.met, x.measured)),
            None => ("-".into(), String::new()),
        };
        crate::outln!(
            "  {:<w$}  {:>14}  {:>14}  {:>14}  {:>16}  {}",
            x.figure,
            value_text(x.min, &x.unit),
            value_text(x.median, &x.unit),
            value_text(x.max, &x.unit),
            target,
            met
        );
    }
    let steal: Vec<String> = s
        .steal_pct
        .iter()
        .map(|p| p.map_or("?".into(), |p| format!("{p:.0}%")))
        .collect();
    crate::outln!(
        "  note: CPU time stolen by the hypervisor, run by run: {}",
        steal.join(", ")
    );
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
    let w = figure_width(r.rows.iter().map(|x| x.figure.as_str()));
    crate::outln!(
        "  {:<w$}  {:>14}  {:>16}  {:<4}  note",
        "figure",
        "value",
        "target",
        "met"
    );
    for x in &r.rows {
        let value = value_text(x.value, &x.unit);
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

    fn run(p50: f64, extra: Option<f64>, steal: f64) -> PresetReport {
        let mut rows = vec![Row::new("p50", Some(p50), "ms", Target::at_most(0.10))];
        if let Some(v) = extra {
            rows.push(Row::new("only sometimes", Some(v), "", None));
        }
        PresetReport {
            bench: "w2".into(),
            title: "W2".into(),
            quick: false,
            ok: true,
            rows,
            notes: Vec::new(),
            details: serde_json::Value::Null,
            duration_s: 0.0,
            cpu_load: Some(super::super::machine::CpuLoad {
                busy_pct: 50.0,
                steal_pct: steal,
            }),
        }
    }

    #[test]
    fn a_summary_gives_each_figure_its_range_and_how_often_it_met_its_target() {
        let s = Summary::of(&[
            run(0.12, None, 1.0),
            run(0.09, Some(7.0), 20.0),
            run(0.30, Some(5.0), 3.0),
            run(0.10, None, 0.0),
        ]);
        assert_eq!((s.bench.as_str(), s.runs), ("w2", 4));
        assert_eq!(
            s.steal_pct,
            vec![Some(1.0), Some(20.0), Some(3.0), Some(0.0)]
        );
        let p50 = &s.rows[0];
        assert_eq!(p50.figure, "p50");
        assert_eq!((p50.min, p50.max), (Some(0.09), Some(0.30)));
        assert_eq!(p50.median, Some(0.11), "the mean of the middle two");
        assert_eq!((p50.met, p50.measured), (2, 4), "0.09 and 0.10 are <= 0.10");
        let some = &s.rows[1];
        assert_eq!((some.measured, some.median, some.met), (2, Some(6.0), 0));
        assert!(some.target.is_none());
    }

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
