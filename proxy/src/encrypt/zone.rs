//! The session's `TimeZone`, for `timestamptz` text on protected columns.
//!
//! PostgreSQL reads a `timestamptz` literal without an offset as local time in the session's
//! `TimeZone` and shows `timestamptz` values in it. The server reports the setting in
//! ParameterStatus (at start-up and after every change), so the proxy follows it exactly and
//! reads and renders protected values as PostgreSQL would. Names resolve through the system
//! time-zone database (a bundled copy when the host has none), then as POSIX TZ strings (what
//! PostgreSQL reports for `SET TIME ZONE -7`: `<-07>+07`). A setting that resolves to nothing
//! fails closed: text input without an explicit offset and text output of protected
//! `timestamptz` values are refused with a message naming the setting; binary format and
//! explicit offsets keep working.

use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;
use pgseal_crypto::value::datetime::SessionZone;

/// The session's time zone.
#[derive(Debug, Clone)]
pub struct Zone {
    name: String,
    tz: Option<TimeZone>,
}

impl Zone {
    /// UTC (the default when the server reports nothing).
    pub fn utc() -> Self {
        Self {
            name: "UTC".to_owned(),
            tz: Some(TimeZone::UTC),
        }
    }

    /// The zone for a `TimeZone` setting as the server reports it.
    pub fn from_setting(name: &str) -> Self {
        let tz = resolve(name);
        if tz.is_none() {
            tracing::warn!(time_zone = %name,
                "cannot resolve the session TimeZone; timestamptz text on protected columns needs an explicit offset");
        }
        Self {
            name: name.to_owned(),
            tz,
        }
    }

    /// Whether this is the zone of setting `name`.
    pub fn is(&self, name: &str) -> bool {
        self.name == name
    }
}

fn resolve(name: &str) -> Option<TimeZone> {
    if name.eq_ignore_ascii_case("UTC") || name.eq_ignore_ascii_case("Etc/UTC") {
        return Some(TimeZone::UTC);
    }
    TimeZone::get(name)
        .ok()
        .or_else(|| TimeZone::posix(name).ok())
}

/// Seconds in 400 Gregorian years: calendar and weekdays repeat, so do daylight-saving rules.
const CYCLE_SECS: i64 = 146_097 * 86_400;

/// `secs` (Unix time) as a jiff timestamp. After jiff's range (year 9999) PostgreSQL keeps
/// applying the zone's current rule; the same instant 400·k years earlier has the same offset.
/// Before its range, the earliest offset (local mean time) applies, as in PostgreSQL.
fn timestamp(secs: i64) -> Timestamp {
    let max = Timestamp::MAX.as_second();
    let secs = if secs > max {
        secs - ((secs - max) / CYCLE_SECS + 1) * CYCLE_SECS
    } else {
        secs.max(Timestamp::MIN.as_second())
    };
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl SessionZone for Zone {
    fn name(&self) -> &str {
        &self.name
    }

    fn offset_at_utc(&self, utc_secs: i64) -> Option<i32> {
        let tz = self.tz.as_ref()?;
        Some(tz.to_offset(timestamp(utc_secs)).seconds())
    }

    fn offset_for_local(&self, local_secs: i64) -> Option<i32> {
        let tz = self.tz.as_ref()?;
        // The wall-clock reading of `local_secs`, as a civil date-time.
        let civil = TimeZone::UTC.to_datetime(timestamp(local_secs));
        Some(match tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.seconds(),
            // PostgreSQL: a time in a gap gets the offset before the transition, a time in a
            // fold the offset after it.
            AmbiguousOffset::Gap { before, .. } => before.seconds(),
            AmbiguousOffset::Fold { after, .. } => after.seconds(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgseal_crypto::value::LogicalType;

    fn show(z: &Zone, input: &str) -> String {
        let v = LogicalType::TimestampTz.parse_text_in(input, z).unwrap();
        let mut out = Vec::new();
        v.write_text_in(&mut out, z).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn iana_posix_and_unknown_zones() {
        let berlin = Zone::from_setting("Europe/Berlin");
        assert_eq!(show(&berlin, "2024-07-01 12:00"), "2024-07-01 12:00:00+02");
        assert_eq!(
            show(&berlin, "2024-07-01 12:00+00"),
            "2024-07-01 14:00:00+02"
        );
        // Gap and fold as PostgreSQL resolves them.
        assert_eq!(show(&berlin, "2024-03-31 02:30"), "2024-03-31 03:30:00+02");
        assert_eq!(show(&berlin, "2024-10-27 02:30"), "2024-10-27 02:30:00+01");
        // Local mean time before 1893.
        assert_eq!(
            show(&berlin, "1850-01-01 00:00+00"),
            "1850-01-01 00:53:28+00:53:28"
        );
        let kolkata = Zone::from_setting("Asia/Kolkata");
        assert_eq!(
            show(&kolkata, "2024-01-01 00:00+00"),
            "2024-01-01 05:30:00+05:30"
        );
        // What PostgreSQL reports after SET TIME ZONE -7 (a POSIX string: 7 hours west).
        let minus7 = Zone::from_setting("<-07>+07");
        assert_eq!(
            show(&minus7, "2024-01-01 12:00+00"),
            "2024-01-01 05:00:00-07"
        );
        assert_eq!(
            show(&Zone::utc(), "2024-01-01 12:00"),
            "2024-01-01 12:00:00+00"
        );
        let unknown = Zone::from_setting("Mars/Olympus_Mons");
        assert!(LogicalType::TimestampTz
            .parse_text_in("2024-01-01 12:00", &unknown)
            .is_err());
        assert!(LogicalType::TimestampTz
            .parse_text_in("2024-01-01 12:00+01", &unknown)
            .is_ok());
        // Far beyond jiff's range: the zone's current rule (PostgreSQL 15 prints the same).
        assert_eq!(
            show(&berlin, "200000-07-01 12:00+00"),
            "200000-07-01 14:00:00+02"
        );
        assert_eq!(
            show(&berlin, "200000-12-01 12:00"),
            "200000-12-01 12:00:00+01"
        );
        let ny = Zone::from_setting("America/New_York");
        assert_eq!(
            show(&ny, "0044-03-15 12:00+00 BC"),
            "0044-03-15 07:03:58-04:56:02 BC"
        );
        let lord_howe = Zone::from_setting("Australia/Lord_Howe");
        assert_eq!(
            show(&lord_howe, "2024-01-01 12:00+00"),
            "2024-01-01 23:00:00+11"
        );
        // POSIX: "UTC+3" is three hours west, as in PostgreSQL.
        let posix = Zone::from_setting("UTC+3");
        assert_eq!(
            show(&posix, "2024-01-01 12:00+00"),
            "2024-01-01 09:00:00-03"
        );
    }
}
