//! `stress --report run.html`: the report as one self-contained HTML file
//! (inline CSS and SVG, no script, nothing fetched): the figures, a
//! latency histogram and a timeline of sends and deliveries.

use super::report::{StressReport, check_text, peak_rss_text};
use crate::diagram::html_escape as esc;
use crate::load::TimelineEvent;
use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// At most this many events are drawn on the timeline; beyond it every
/// k-th is (the page says so), so a long run stays a light page.
const MAX_POINTS: usize = 6000;

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// Latency buckets doubling from 0.1 ms: `(upper bound µs, count)`.
fn latency_buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_log(100, 2.0)
        .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
        .collect()
}

/// The histogram as an SVG bar chart (log-spaced buckets).
pub(super) fn histogram_svg(h: &Histogram<u64>) -> String {
    let buckets = latency_buckets(h);
    let (w, ht, left, bottom) = (720.0_f64, 260.0_f64, 50.0_f64, 40.0_f64);
    let mut s = format!(
        r#"<svg id="latency-histogram" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" viewBox="0 0 {w} {ht}" role="img" aria-label="latency histogram">"#
    );
    if buckets.is_empty() {
        s.push_str(r#"<text x="20" y="40">no latency samples</text></svg>"#);
        return s;
    }
    let max = buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let bw = (w - left - 10.0) / buckets.len() as f64;
    let plot_h = ht - bottom - 20.0;
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{y}" x2="{x2}" y2="{y}" stroke="#444"/>"##,
        y = ht - bottom,
        x2 = w - 10.0
    );
    let _ = write!(
        s,
        r#"<text x="4" y="24" font-size="11">{}</text><text x="4" y="{}" font-size="11">0</text>"#,
        max as u64,
        ht - bottom
    );
    for (i, (upper, count)) in buckets.iter().enumerate() {
        let bh = *count as f64 / max * plot_h;
        let x = left + i as f64 * bw;
        let _ = write!(
            s,
            r##"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{bwi:.1}" height="{bh:.1}" fill="#3b7dd8"><title>&lt;= {} : {count}</title></rect>"##,
            ms(*upper),
            y = ht - bottom - bh,
            bwi = (bw - 2.0).max(1.0),
        );
        // Every other label, so they do not overlap.
        if i % 2 == 0 {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
                x + bw / 2.0,
                ht - bottom + 14.0,
                esc(&format!("{:.1}", *upper as f64 / 1000.0))
            );
        }
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">latency send to delivery (ms, bucket upper bound)</text></svg>"#,
        w / 2.0,
        ht - 6.0
    );
    s
}

/// The timeline as an SVG scatter: one lane per client, a dot per send,
/// a tick per delivery. Returns the SVG and how many events it shows.
pub(super) fn timeline_svg(events: &[TimelineEvent]) -> (String, usize) {
    let (w, left, lane) = (900.0_f64, 50.0_f64, 8.0_f64);
    let clients = events.iter().map(|e| e.client).max().map_or(0, |m| m + 1) as f64;
    let ht = (clients * lane).clamp(60.0, 600.0) + 50.0;
    let lane_h = (ht - 50.0) / clients.max(1.0);
    let mut s = format!(
        r#"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" viewBox="0 0 {w} {ht}" role="img" aria-label="timeline of sends and deliveries">"#
    );
    if events.is_empty() {
        s.push_str(r#"<text x="20" y="40">no events</text></svg>"#);
        return (s, 0);
    }
    let t0 = events.first().map_or(0, |e| e.at_us);
    let t1 = events.last().map_or(0, |e| e.at_us).max(t0 + 1);
    let x = |t: u64| left + (t - t0) as f64 / (t1 - t0) as f64 * (w - left - 10.0);
    let stride = events.len().div_ceil(MAX_POINTS).max(1);
    let mut shown = 0;
    for e in events.iter().step_by(stride) {
        let y = 10.0 + e.client as f64 * lane_h + lane_h / 2.0;
        if e.send {
            let _ = write!(
                s,
                r##"<circle class="send" cx="{:.1}" cy="{y:.1}" r="2" fill="#3b7dd8"/>"##,
                x(e.at_us)
            );
        } else {
            let _ = write!(
                s,
                r##"<rect class="delivery" x="{:.1}" y="{:.1}" width="1" height="{:.1}" fill="#e07b22"/>"##,
                x(e.at_us),
                y - lane_h / 2.5,
                (lane_h / 1.25).max(1.0)
            );
        }
        shown += 1;
    }
    let _ = write!(
        s,
        r#"<text x="{left}" y="{}" font-size="11">0 s</text><text x="{}" y="{}" font-size="11" text-anchor="end">{:.3} s</text>"#,
        ht - 24.0,
        w - 10.0,
        ht - 24.0,
        (t1 - t0) as f64 / 1e6
    );
    let _ = write!(
        s,
        r#"<text x="4" y="{}" font-size="11">clients 1..{} top to bottom; blue dot: send, orange tick: delivery</text></svg>"#,
        ht - 6.0,
        clients as u64
    );
    (s, shown)
}

/// The whole page.
pub(super) fn page(r: &StressReport, latency: &Histogram<u64>, events: &[TimelineEvent]) -> String {
    let (timeline, shown) = timeline_svg(events);
    let mut rows = vec![
        ("result", if r.ok { "PASS" } else { "FAIL" }.to_string()),
        ("mode", r.mode.clone()),
        ("properties checked", r.properties.to_string()),
        ("servers", r.servers.to_string()),
        ("clients", r.clients.to_string()),
        ("rooms", r.rooms.to_string()),
        ("messages per client", r.messages_per_client.to_string()),
        ("sent", r.sent.to_string()),
        (
            "deliveries (distinct / expected)",
            format!("{} / {}", r.distinct_deliveries, r.expected_deliveries),
        ),
        ("delivery datagrams", r.deliveries.to_string()),
        ("run time", format!("{:.3} s", r.run_duration_s)),
        (
            "throughput",
            format!(
                "{:.0} messages/s, {:.0} deliveries/s",
                r.messages_per_s, r.deliveries_per_s
            ),
        ),
        ("latency", r.latency.text()),
        ("stopped", r.stop_reason.clone()),
    ];
    if let Some(f) = &r.faults {
        rows.push((
            "faults",
            format!(
                "delay {}..{} ms, loss {}, duplicate {}, seed {}",
                f.delay_min_ms, f.delay_max_ms, f.loss, f.duplicate, f.seed
            ),
        ));
    }
    if let Some(f) = &r.flood {
        rows.push((
            "flood",
            format!(
                "{} clients sent {}; {} reached the room; {} -ERR replies",
                f.clients, f.sent, f.delivered, f.refused_replies
            ),
        ));
    }
    if let Some(each) = peak_rss_text(r) {
        rows.push(("peak RSS", each));
    }
    let mut table = String::new();
    for (k, v) in rows {
        let _ = write!(table, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    let counters: String = r
        .server_counters
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("<tr><th>{}</th><td>{v}</td></tr>", esc(k)))
        .collect();
    let sampled = if shown < events.len() {
        format!(
            "{shown} of {} events shown (every {}th)",
            events.len(),
            events.len().div_ceil(shown.max(1))
        )
    } else {
        format!("all {} events", events.len())
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>stress run: {mode}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 2px 12px; border-bottom: 1px solid #ddd; }}
th {{ font-weight: 600; }}
.pass {{ color: #1a7f37; }} .fail {{ color: #c62828; }}
pre {{ background: #f6f6f6; padding: 8px; white-space: pre-wrap; }}
</style></head>
<body>
<h1>stress run: <span class="{class}">{result}</span></h1>
<h2>Results</h2>
<table id="results">{table}</table>
<h2>Check</h2>
<pre>{check}</pre>
<h2>Latency</h2>
{hist}
<h2>Timeline of sends and deliveries</h2>
<p>{sampled}</p>
{timeline}
<h2>Server counters (summed, non-zero)</h2>
<table id="counters">{counters}</table>
</body></html>
"#,
        mode = esc(&r.mode),
        class = if r.ok { "pass" } else { "fail" },
        result = if r.ok { "PASS" } else { "FAIL" },
        check = esc(&check_text(&r.check)),
        hist = histogram_svg(latency),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn histogram_has_a_bar_per_bucket() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in [150, 900, 950, 5_000, 40_000] {
            h.record(v).unwrap();
        }
        let svg = histogram_svg(&h);
        assert!(svg.starts_with("<svg id=\"latency-histogram\""));
        let bars = svg.matches("class=\"bar\"").count();
        assert_eq!(bars, latency_buckets(&h).len());
        let total: u64 = latency_buckets(&h).iter().map(|b| b.1).sum();
        assert_eq!(total, 5);
        assert!(histogram_svg(&Histogram::new(3).unwrap()).contains("no latency samples"));
    }

    #[test]
    fn timeline_samples_many_events() {
        let few: Vec<TimelineEvent> = (0..10)
            .map(|i| TimelineEvent {
                at_us: i * 100,
                client: (i % 3) as u32,
                send: i % 2 == 0,
            })
            .collect();
        let (svg, shown) = timeline_svg(&few);
        assert_eq!(shown, 10);
        assert_eq!(svg.matches("class=\"send\"").count(), 5);
        assert_eq!(svg.matches("class=\"delivery\"").count(), 5);
        let many: Vec<TimelineEvent> = (0..50_000)
            .map(|i| TimelineEvent {
                at_us: i,
                client: 0,
                send: true,
            })
            .collect();
        let (_, shown) = timeline_svg(&many);
        assert!(shown <= MAX_POINTS && shown > MAX_POINTS / 2, "{shown}");
    }
}
