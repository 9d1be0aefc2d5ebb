//! Time as cards and certificate checks see it: seconds since the Unix
//! epoch, and whether they came from a real clock. A card's clock
//! (`tenet_card::clock`) keeps a [`CardTime`]; certificate checks
//! (`tenet_pki`) take one.

use std::fmt;

/// One day, in seconds.
pub const DAY: u64 = 86_400;
/// The latest time a card accepts: 9999-12-31T23:59:59Z.
pub const MAX_TIME: u64 = 253_402_300_799;

/// This machine's time in seconds since the Unix epoch (0 before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The card's time as its applets see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardTime {
    /// Seconds since the Unix epoch: `max(bound, host time)`, or the bound
    /// before the host told the time.
    pub now: u64,
    /// Whether the host told the card the time since power-up. If not,
    /// `now` is only a lower bound of the real time.
    pub from_host: bool,
}

impl CardTime {
    /// A time from a real clock (the TTP's, a test's).
    pub fn real(now: u64) -> Self {
        Self {
            now,
            from_host: true,
        }
    }
}

impl fmt::Display for CardTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from_host {
            write!(f, "{}", Utc(self.now))
        } else {
            write!(f, "at least {} (no host time yet)", Utc(self.now))
        }
    }
}

/// Seconds since the Unix epoch, printed as UTC (`2026-11-27T00:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc(pub u64);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Howard Hinnant's days-to-civil algorithm, for days since 1970.
        let days = self.0 / DAY;
        let secs = self.0 % DAY;
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + u64::from(m <= 2);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-27T00:00:00Z.
    const T: u64 = 1_795_737_600;

    #[test]
    fn prints_utc() {
        assert_eq!(Utc(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Utc(T).to_string(), "2026-11-27T00:00:00Z");
        assert_eq!(Utc(951_782_400).to_string(), "2000-02-29T00:00:00Z");
        assert_eq!(Utc(MAX_TIME).to_string(), "9999-12-31T23:59:59Z");
        assert_eq!(Utc(T + 3661).to_string(), "2026-11-27T01:01:01Z");
    }
}
