//! `launcher stress --report run.html` end to end. A test binary of its
//! own: the tests of one binary run in parallel, and this run's servers
//! beside `tests/stress.rs`'s flooding client would starve it of CPU on
//! two cores.

mod support;

use std::process::Command;
use support::{Scratch, bin, legacy_config};

#[test]
fn report_writes_self_contained_html_with_the_svgs_and_the_counts() {
    let dir = Scratch::new("stress-report");
    let (text, _, _) = legacy_config(3, false);
    let cfg = dir.write("servers.txt", &text);
    let html = dir.path().join("run.html");
    let out = Command::new(bin("launcher"))
        .arg("stress")
        .arg(&cfg)
        .args(["-o", "total", "--clients", "4", "--rooms", "2"])
        .args(["--messages", "10", "--timeout", "60", "--report"])
        .arg(&html)
        .output()
        .expect("run launcher stress");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("result: PASS"), "{said}");
    let page = std::fs::read_to_string(&html).expect("the report was written");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains("stress run: <span class=\"pass\">PASS</span>"));
    // 4 clients x 10 messages; 2 rooms of 2 members: 80 deliveries.
    assert!(page.contains("<tr><th>sent</th><td>40</td></tr>"), "{page}");
    assert!(
        page.contains("<tr><th>deliveries (distinct / expected)</th><td>80 / 80</td></tr>"),
        "{page}"
    );
    assert!(page.contains("(80 samples)"), "{page}");
    // The histogram: bars whose counts add up to the 80 samples.
    assert!(page.contains("<svg id=\"latency-histogram\""), "{page}");
    let bar_total: u64 = page
        .split("class=\"bar\"")
        .skip(1)
        .map(|bar| {
            let title = bar.split("<title>").nth(1).expect("a bar has a title");
            let count = title.split("</title>").next().expect("title end");
            count
                .rsplit(": ")
                .next()
                .and_then(|c| c.parse::<u64>().ok())
                .expect("a count")
        })
        .sum();
    assert_eq!(bar_total, 80);
    // The timeline: every send and every delivery (few enough to show all).
    assert!(page.contains("<svg id=\"timeline\""), "{page}");
    assert!(page.contains("all 120 events"), "{page}");
    assert_eq!(page.matches("class=\"send\"").count(), 40);
    assert_eq!(page.matches("class=\"delivery\"").count(), 80);
    // Self-contained: nothing to fetch, no script.
    for outside in ["<script", " src=", "href=", "<link", "url("] {
        assert!(!page.contains(outside), "{outside} in the page");
    }
}
