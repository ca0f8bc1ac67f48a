//! Event timestamps (RFC 3339 in JSON, nanoseconds inside) and the durations of settings.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time, nanoseconds since the Unix epoch (UTC). Covers the years 1678 to 2262.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From nanoseconds since the Unix epoch.
    pub const fn from_nanos(ns: i64) -> Timestamp {
        Timestamp(ns)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// From a wall-clock time.
    pub fn from_system_time(time: SystemTime) -> Timestamp {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Timestamp(i64::try_from(after.as_nanos()).unwrap_or(i64::MAX)),
            Err(before) => Timestamp(
                i64::try_from(before.duration().as_nanos())
                    .map(|ns| -ns)
                    .unwrap_or(i64::MIN),
            ),
        }
    }

    /// Parses RFC 3339, with any offset and up to nine fraction digits.
    pub fn parse(text: &str) -> Result<Timestamp, String> {
        let time = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|err| format!("`{text}` is not an RFC 3339 timestamp: {err}"))?;
        i64::try_from(time.unix_timestamp_nanos())
            .map(Timestamp)
            .map_err(|_| format!("`{text}` is outside the years 1678 to 2262"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0))
            .expect("every i64 of nanoseconds is a valid date");
        match time.format(&Rfc3339) {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{}ns", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        // A visitor rather than `String`/`Cow` so the text is parsed in place, not copied.
        struct TimestampVisitor;
        impl serde::de::Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
                Timestamp::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(TimestampVisitor)
    }
}

/// Parses a duration such as `0s`, `90m` or `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("`{text}` is not a duration such as 0s, 90m or 7d: {err}"))
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
pub fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_with_nanoseconds() {
        let ts = Timestamp::parse("2026-11-22T10:00:00.000000001Z").unwrap();
        assert_eq!(ts.to_string(), "2026-11-22T10:00:00.000000001Z");
        let offset = Timestamp::parse("2026-11-22T12:00:00+02:00").unwrap();
        assert_eq!(offset.to_string(), "2026-11-22T10:00:00Z");
        assert!(Timestamp::parse("2026-11-22 10:00:00").is_err());
        assert!(Timestamp::parse("9999-01-01T00:00:00Z").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("7 fortnights").is_err());
    }
}
