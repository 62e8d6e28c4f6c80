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

#[cfg(test)]
mod tests {
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
