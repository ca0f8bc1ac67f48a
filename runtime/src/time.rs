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

/// Event times for the live agent on a clock that a step of the wall clock cannot move.
///
/// The kernel stamps each event with its boot-time clock (`CLOCK_BOOTTIME`, which counts
/// suspend too and is never set). This maps boot time to wall time once, at start:
/// `wall_at_start + (boot_of_event - boot_at_start)`. So learning periods and forget-after
/// count real elapsed time even if someone (or a broken NTP) steps the wall clock by years;
/// the price is that signal times drift from the wall clock by whatever it was stepped by
/// since start (slewing, as NTP normally does, is tracked by neither and costs nothing).
#[derive(Clone, Copy, Debug)]
pub struct StableClock {
    wall_at_start_ns: i64,
    boot_at_start_ns: i64,
}

impl StableClock {
    /// Anchors the boot clock to the wall clock now.
    pub fn start() -> StableClock {
        StableClock {
            wall_at_start_ns: Timestamp::from_system_time(SystemTime::now()).as_nanos(),
            boot_at_start_ns: boot_ns(),
        }
    }

    /// The time of an event stamped `boot_ns` on the boot clock.
    pub fn from_boot(&self, boot_ns: i64) -> Timestamp {
        Timestamp(
            self.wall_at_start_ns
                .saturating_add(boot_ns.saturating_sub(self.boot_at_start_ns)),
        )
    }

    /// The time of an event that the probes dated `wall` (they convert the kernel's boot time
    /// with the wall clock's current offset): converted back to boot time with the offset of
    /// now (the two readings are microseconds apart, a step between them is all that could
    /// slip through), then onto the wall time anchored at start.
    pub fn stable(&self, wall: SystemTime) -> Timestamp {
        self.stable_at(wall, SystemTime::now(), boot_ns())
    }

    /// [`StableClock::stable`] with the clocks' readings given.
    pub fn stable_at(&self, wall: SystemTime, wall_now: SystemTime, boot_now: i64) -> Timestamp {
        let ago = wall_now
            .duration_since(wall)
            .map_or(0, |ago| i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX));
        self.from_boot(boot_now.saturating_sub(ago))
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds.
fn boot_ns() -> i64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and reads nothing else.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    assert_eq!(status, 0, "CLOCK_BOOTTIME is always available on Linux");
    now.tv_sec * 1_000_000_000 + now.tv_nsec
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
    fn a_wall_clock_step_does_not_move_event_times() {
        let clock = StableClock {
            wall_at_start_ns: 1_000 * 1_000_000_000,
            boot_at_start_ns: 50 * 1_000_000_000,
        };
        let s = Duration::from_secs(1);
        let start = UNIX_EPOCH + 1_000 * s;
        // Ten seconds after start, with no step: an event one second old is at start + 9 s.
        let stable = clock.stable_at(start + 9 * s, start + 10 * s, 60 * 1_000_000_000);
        assert_eq!(stable.as_nanos(), 1_009 * 1_000_000_000);
        // The same moment after the wall clock was stepped a century ahead (the probes' reading
        // of the event moved with it): the same event time.
        let century = 100 * 365 * 86_400 * s;
        let stepped = clock.stable_at(
            start + century + 9 * s,
            start + century + 10 * s,
            60 * 1_000_000_000,
        );
        assert_eq!(stepped, stable);
        // And stepped back to 1970.
        let back = clock.stable_at(UNIX_EPOCH + 9 * s, UNIX_EPOCH + 10 * s, 60 * 1_000_000_000);
        assert_eq!(back, stable);
        assert_eq!(
            clock.from_boot(61 * 1_000_000_000).as_nanos(),
            1_011 * 1_000_000_000
        );
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
