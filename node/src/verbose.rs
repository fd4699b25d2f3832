//! Logging: with `-v`, one line per event on stdout as
//! `hh:mm:ss.uuuuuu Snn text` (UTC), so the logs of all servers can be
//! concatenated and sorted into one history: client lines, server packets
//! that carry messages, deliveries, holdback queue changes. `-vv` adds the
//! per-packet chatter (heartbeats and acknowledgement-only packets, bad
//! packets, failed sends). Without `-v`, warnings only, on stderr. A closed
//! stdout (`chatserver -v ... | head`) is ignored quietly.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// UTC wall clock with microseconds, followed by the server tag.
#[derive(Debug, Clone)]
pub(crate) struct ServerClock {
    pub(crate) tag: String,
}

/// `hh:mm:ss.uuuuuu` for a time since the Unix epoch.
pub(crate) fn utc_hms_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        d.subsec_micros()
    )
}

impl FormatTime for ServerClock {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write!(w, "{} {}", utc_hms_micros(SystemTime::now()), self.tag)
    }
}

/// Client text as a `-v` line shows it: as typed (quotes and all), with
/// invalid UTF-8 replaced and control characters escaped (`\n`, `\x1b`),
/// so that one event stays one line.
pub(crate) fn shown(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How many payloads (frames) a server datagram carries, when it can be
/// decoded (MAC, if any, not checked: this is for the log only). Zero for
/// a heartbeat or an acknowledgement-only packet.
pub(crate) fn payloads_in(data: &[u8]) -> Option<usize> {
    let mut raw = orderings::unstuff(data).ok()?;
    if raw.len() >= 3 && raw[2] & 0x01 != 0 {
        raw.truncate(raw.len().checked_sub(orderings::MAC_LEN)?);
    }
    let (d, _) = orderings::Datagram::decode_raw(&raw).ok()?;
    Some(d.frames.len())
}

/// Installs the subscriber for server `tag` (e.g. `S02`): `verbosity` 0 =
/// warnings on stderr, 1 (`-v`) = events on stdout, 2+ (`-vv`) = also the
/// per-packet chatter.
pub(crate) fn init(tag: &str, verbosity: u8) {
    let clock = ServerClock {
        tag: tag.to_string(),
    };
    if verbosity > 0 {
        let level = if verbosity >= 2 {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        };
        let _ = tracing_subscriber::fmt()
            .with_timer(clock)
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .with_max_level(level)
            .with_writer(std::io::stdout)
            .log_internal_errors(false)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_timer(clock)
            .with_target(false)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_with_micros() {
        let t = UNIX_EPOCH + Duration::from_micros(((3 * 3600 + 48 * 60 + 22) * 1_000_000) + 4_328);
        assert_eq!(utc_hms_micros(t), "03:48:22.004328");
    }

    #[test]
    fn client_text_is_shown_as_typed() {
        assert_eq!(shown(b"/nick 'Carol' \"x\""), "/nick 'Carol' \"x\"");
        assert_eq!(shown(b"a\nb\x1b[2J\xff"), "a\\nb\\u{1b}[2J\u{fffd}");
    }

    #[test]
    fn heartbeats_carry_no_payloads() {
        use orderings::{Datagram, seal_datagram};
        let hb = Datagram {
            src_incarnation: 7,
            dst_incarnation: 9,
            ack: 3,
            delivered: 0,
            report_wanted: false,
            excluded: false,
            gaps: vec![],
            frames: vec![],
        };
        assert_eq!(
            payloads_in(&seal_datagram(&hb.encode_raw(false), None)),
            Some(0)
        );
        let key = [5u8; 32];
        assert_eq!(
            payloads_in(&seal_datagram(&hb.encode_raw(true), Some(&key))),
            Some(0)
        );
        let data = Datagram {
            frames: vec![(4, b"abc".as_slice()), (5, b"\0\xfe".as_slice())],
            ..hb
        };
        assert_eq!(
            payloads_in(&seal_datagram(&data.encode_raw(true), Some(&key))),
            Some(2)
        );
        assert_eq!(payloads_in(b"hello"), None);
    }
}
