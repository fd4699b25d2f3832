//! `launcher bench faults`: how long `total` takes to deliver when the links
//! between servers are bad. Every datagram between servers goes through the
//! fault proxy with 0-20 ms of random delay and 10% loss; 4 clients per
//! server in 2 rooms send 200 messages/s in all (100 B); on 3 and on 10
//! servers. Reported: latency from send to each delivery (p50, p99, max)
//! and what the links resent.

use super::report::{PresetReport, Row, Target};
use super::runner::{Env, LoadSpec, bound, drive, figures, start_cluster_behind};
use crate::cluster::local::sum_counters;
use crate::cluster::settings::FaultConfig;
use std::time::Duration;
use testkit::check::Properties;

/// Messages per second over all clients.
const RATE: f64 = 200.0;

/// The proxy's faults between servers.
fn faults() -> FaultConfig {
    FaultConfig {
        delay_min_ms: 0.0,
        delay_max_ms: 20.0,
        loss: 0.10,
        duplicate: 0.0,
        seed: 16,
    }
}

pub(super) fn run(env: &Env) -> anyhow::Result<PresetReport> {
    let mode = env.total.as_str();
    let props = Properties::from_guarantees(orderings::lookup(&env.total)?.guarantees);
    let total = env.count(3_000.0, 100.0);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut runs = Vec::new();
    let mut ok = true;
    // (servers, target p50 ms, target p99 ms), from issue 16.
    for (servers, p50, p99) in [(3usize, 50.0, 120.0), (10, 80.0, 300.0)] {
        let clients = 4 * servers;
        let messages = (total as usize / clients).max(1) as u32;
        let spec = LoadSpec {
            clients,
            rooms: 2,
            messages,
            rate: RATE,
            window: 64,
            size: 100,
            timeout: bound(f64::from(total) / RATE),
            quiet: Duration::from_secs(5),
        };
        env.say(format!(
            "{servers} servers behind the proxy (0-20 ms, 10% loss): {clients} clients, {messages} messages each"
        ));
        let running = start_cluster_behind(
            env,
            servers,
            env.total.as_str(),
            10,
            None,
            Duration::from_secs(20),
            Some(faults()),
        )?;
        let binds = running.binds.clone();
        let result = drive(env, &binds, &spec);
        let (counters, problems) = running.stop(Duration::from_secs(3));
        let (load, drops) = result?;
        let mut f = figures(
            env.total.as_str(),
            servers,
            &spec,
            &load,
            drops,
            Some(props),
            problems,
        );
        f.server_totals = sum_counters(&counters);
        env.say(f.summary());
        ok &= f.complete && f.check_ok && f.server_problems.is_empty();
        let total_of = |k: &str| f.server_totals.get(k).copied().unwrap_or(0);
        rows.push(Row::new(
            format!("{servers} servers: p50"),
            Some(f.latency.p50_ms),
            "ms",
            Target::at_most(p50),
        ));
        rows.push(Row::new(
            format!("{servers} servers: p99"),
            Some(f.latency.p99_ms),
            "ms",
            Target::at_most(p99),
        ));
        rows.push(
            Row::new(
                format!("{servers} servers: max"),
                Some(f.latency.max_ms),
                "ms",
                None,
            )
            .note(format!(
                "{} deliveries of {}, datagrams between servers {} ({} second copies), frames resent {}, check: {}",
                f.deliveries,
                f.expected_deliveries,
                total_of("link_datagrams_sent"),
                total_of("duplicated_datagrams"),
                total_of("retransmissions"),
                if f.check_ok { "OK" } else { "FAILED" }
            )),
        );
        notes.extend(f.server_problems.iter().cloned());
        if !f.check_ok {
            notes.push(f.check.clone());
        }
        runs.push(f);
    }
    Ok(PresetReport {
        bench: "faults".into(),
        title: format!(
            "Latency under faults: {mode}, 0-20 ms delay and 10% loss between servers, 4 clients per server, 2 rooms, {RATE} messages/s in all, {total} messages, 100 B"
        ),
        quick: env.quick,
        ok,
        rows,
        notes,
        details: serde_json::to_value(&runs)?,
        duration_s: 0.0,
        cpu_load: None,
    })
}
