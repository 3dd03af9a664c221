//! Wall-clock time as outboxd stores and prints it: unix milliseconds,
//! RFC 3339 for events and the `yyyy/mm/dd/hh` parts of object keys.

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn utc(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Formats unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_time_ms(ms: i64) -> String {
    let time = utc(ms);
    let (y, mo, d) = (time.year(), time.month() as u8, time.day());
    let (h, mi, s, milli) = (
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond(),
    );
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// `[yyyy, mm, dd, hh]` of unix milliseconds, UTC (for object keys).
pub fn format_key_time(ms: i64) -> [String; 4] {
    let time = utc(ms);
    [
        format!("{:04}", time.year()),
        format!("{:02}", time.month() as u8),
        format!("{:02}", time.day()),
        format!("{:02}", time.hour()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_milliseconds_in_utc() {
        assert_eq!(
            format_time_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_key_time(1_700_000_000_123),
            ["2023", "11", "14", "22"]
        );
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
