//! Event-time formatting for people (history texts, the demo, the CLI).

use std::time::{Duration, UNIX_EPOCH};

/// RFC 3339 (UTC, seconds) of an event time in microseconds since the epoch.
pub fn rfc3339(micros: i64) -> String {
    if micros < 0 {
        return format!("{micros}us");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(micros as u64)).to_string()
}
