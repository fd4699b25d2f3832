//! Logging: with `-v`, one line per event on stdout as
//! `hh:mm:ss.uuuuuu Snn text` (UTC), so the logs of all servers can be
//! concatenated and sorted into one history. Without `-v`, warnings only, on
//! stderr.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// UTC wall clock with microseconds, followed by the server tag.
#[derive(Debug, Clone)]
pub struct ServerClock {
    pub tag: String,
}

/// `hh:mm:ss.uuuuuu` for a time since the Unix epoch.
pub fn utc_hms_micros(t: SystemTime) -> String {
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

/// Installs the subscriber for server `tag` (e.g. `S02`).
pub fn init(tag: &str, verbose: bool) {
    let clock = ServerClock {
        tag: tag.to_string(),
    };
    if verbose {
        let _ = tracing_subscriber::fmt()
            .with_timer(clock)
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::stdout)
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
}
