//! `node::config::parse` (by extension and by content), `parse_legacy` and
//! `parse_toml` on arbitrary text. Inputs in which a parser could look a
//! host name up are skipped: a fuzzer must not send DNS queries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::config;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

fn address_may_resolve(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return false;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && matches!(port.parse::<u16>(), Ok(p) if p != 0) && names_a_host(host)
}

fn names_a_host(s: &str) -> bool {
    !s.is_empty()
        && s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_err()
}

fn may_resolve(text: &str) -> bool {
    let legacy = text.lines().any(|raw| {
        let line = raw.split('#').next().unwrap_or("").trim();
        line.split(',').map(str::trim).any(address_may_resolve)
    });
    if legacy
        || text
            .split(['"', '\''])
            .skip(1)
            .step_by(2)
            .any(address_may_resolve)
    {
        return true;
    }
    fn walk(v: &toml::Value, key: &str) -> bool {
        match v {
            toml::Value::String(s) => address_may_resolve(s) || (key == "host" && names_a_host(s)),
            toml::Value::Array(a) => a.iter().any(|x| walk(x, key)),
            toml::Value::Table(t) => t.iter().any(|(k, x)| walk(x, k)),
            _ => false,
        }
    }
    match text.parse::<toml::Table>() {
        Ok(t) => t.iter().any(|(k, v)| walk(v, k)),
        Err(_) => text.contains("host"),
    }
}

/// Any integer above 1000 (or one in a form this check does not read).
fn large_number(text: &str) -> bool {
    ["0x", "0o", "0b"].iter().any(|p| text.contains(p))
        || text
            .replace('_', "")
            .split(|c: char| !c.is_ascii_digit())
            .any(|d| d.len() > 4 || d.parse::<u32>().is_ok_and(|n| n > 1000))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Large node counts are slow (quadratic duplicate checks), not wrong.
    if may_resolve(text) || text.contains("count") && large_number(text) {
        return;
    }
    for name in ["servers.txt", "cluster.toml"] {
        if let Ok(c) = config::parse(Path::new(name), text) {
            assert!(!c.servers.is_empty() && c.rooms >= 1);
        }
    }
    let _ = config::parse_legacy(Path::new("x"), text);
    let _ = config::parse_toml(Path::new("x"), text);
});
