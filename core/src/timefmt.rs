//! Event-time formatting for people (history texts, the demo, the CLI).

use std::time::{Duration, UNIX_EPOCH};

/// RFC 3339 (UTC, seconds) of an event time in microseconds since the epoch.
pub fn rfc3339(micros: i64) -> String {
    if micros < 0 {
        return format!("{micros}us");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(micros as u64)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seconds_in_utc_and_pre_epoch_times_stay_readable() {
        assert_eq!(super::rfc3339(1_772_409_600_000_000), "2026-03-02T00:00:00Z");
        assert_eq!(super::rfc3339(1_772_409_600_999_999), "2026-03-02T00:00:00Z", "truncated to the second");
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(-5), "-5us");
    }
}
