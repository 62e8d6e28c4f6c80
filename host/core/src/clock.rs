//! The host's clock, as events and reports write it.

/// The current time as RFC 3339, in UTC, to the microsecond, always in
/// the same number of bytes (`2026-11-22T10:00:00.000000Z`), so that an
/// emitted event's size does not depend on the moment it was emitted.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    )
}

/// A time in milliseconds since the Unix epoch as RFC 3339 (UTC); the
/// number itself when it is out of the calendar's range.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn milliseconds_print_as_rfc3339_or_as_the_number() {
        assert_eq!(super::rfc3339_ms(1_500), "1970-01-01T00:00:01.5Z");
        assert_eq!(super::rfc3339_ms(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn the_clock_prints_microseconds_in_utc() {
        let at = super::now_rfc3339();
        assert_eq!(at.len(), "2026-11-22T10:00:00.000000Z".len(), "{at}");
        assert!(
            time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
                .is_ok()
        );
    }
}
