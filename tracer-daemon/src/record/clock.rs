//! The clocks of a record: the kernel stamps records with CLOCK_MONOTONIC; events and spans
//! show wall-clock time, converted with one offset per run.

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of `bpf_ktime_get_ns()` and of ftrace's
/// `mono` trace clock.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time: the offset between
/// CLOCK_REALTIME and CLOCK_MONOTONIC, sampled once (per run), so all of a run's events
/// share one conversion and keep their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        // Sample realtime between two monotonic readings and use their midpoint.
        let before = clock_ns(libc::CLOCK_MONOTONIC);
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        let after = clock_ns(libc::CLOCK_MONOTONIC);
        let monotonic = before + (after - before) / 2;
        Self {
            offset_ns: realtime - monotonic,
        }
    }

    /// The offset (CLOCK_REALTIME − CLOCK_MONOTONIC), to keep with records that outlive the
    /// run (a span spool), and back.
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    pub fn from_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Nanoseconds since the Unix epoch for a CLOCK_MONOTONIC reading.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        i128::from(monotonic_ns) + self.offset_ns
    }
}

/// Now, as RFC 3339 UTC with nanoseconds.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// RFC 3339 in UTC with all nine digits of nanoseconds (`2026-11-22T09:05:00.000000001Z`):
/// fixed width, so timestamps sort as text, and written by hand because `time`'s formatter
/// trims trailing zeros.
pub fn rfc3339(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond()
    )
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut now) };
    i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_is_close_to_the_system_clock() {
        let clock = WallClock::now();
        let unix = clock.unix_ns(monotonic_ns());
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((unix - system).abs() < 50_000_000, "{unix} vs {system}");
    }

    #[test]
    fn timestamps_keep_all_nine_digits() {
        let at =
            time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_120_000_000).unwrap();
        assert_eq!(rfc3339(at), "2023-11-14T22:13:20.120000000Z");
    }

    #[test]
    fn an_offset_survives_the_round_trip() {
        let clock = WallClock::from_offset_ns(1_700_000_000_000_000_000);
        assert_eq!(WallClock::from_offset_ns(clock.offset_ns()), clock);
        assert_eq!(clock.unix_ns(5), 1_700_000_000_000_000_005);
    }
}
