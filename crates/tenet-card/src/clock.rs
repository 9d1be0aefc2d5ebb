//! The card's clock: the host's time, with a persisted lower bound that no
//! single wrong host time can break.
//!
//! A smartcard has no clock of its own. Its host tells it the time with
//! one card service, `set-time` (`0x0108`), which the smartcard proxy sends
//! as the card's own id `DOMAIN:0` (no app and no remote peer can send as
//! that id) when it attaches the card and every `[card] clock_secs` after
//! (10 s by default). Everything on the card that depends on time
//! (certificate validity, the recovery timeouts of its applets: each
//! accepted time is also a tick for them, [`crate::Applet::on_time`])
//! reads this clock and nothing else.
//!
//! The card keeps in its store a lower bound on the time, the *bound*:
//!
//! - personalization sets it to the personalizing machine's time, and
//!   `tenet card recertify` raises it to that machine's time;
//! - a host time more than [`TOLERANCE`] (a day) below the bound is
//!   refused: the card answers `refused`, the proxy logs it, and the card
//!   keeps the time it had. A host whose clock fell back to 1970 can
//!   therefore not make an expired certificate look valid again;
//! - otherwise the card's time becomes `max(bound, host time)`;
//! - the bound moves forward by at most [`STEP`] (a day) at a time, only
//!   when the host time is at least a day past it, and at most once per
//!   [`RAISE_EVERY`] host times accepted since power-up or the last raise,
//!   counting only host times at least [`COUNT_GAP`] (an hour) after the
//!   last one counted: a day of host time, however often the host ticks.
//!   That is at most one store write a day for a host whose clock is right, and a wrong host time in the
//!   future moves the bound one day per day of uptime at most, and not at
//!   all across restarts (a daemon in a restart loop with its clock in the
//!   future cannot push the bound ahead): when the host's clock is
//!   corrected, its times are accepted again, at once. Nothing a host says
//!   can move the bound backwards.
//!
//! Before its host has told it the time since power-up, the card's time is
//! its bound, a time that has certainly passed. Then a certificate is
//! refused if it expired before the bound, and is not refused as "not yet
//! valid" (the real time may well be past its start): [`CardTime::from_host`]
//! says which case applies.
//!
//! Between two host times the card's time stands still: it may be up to an
//! hour behind. Certificates are therefore issued valid from a day before
//! their issue (`tenet_pki::issue`).

pub use tenet_proto::time::{CardTime, DAY, MAX_TIME, Utc};

/// How far below the bound a host time may be and still be accepted.
pub const TOLERANCE: u64 = DAY;
/// The most the bound moves forward at once.
pub const STEP: u64 = DAY;
/// Host times counted between two raises of the bound.
pub const RAISE_EVERY: u32 = 24;
/// How far after the last counted host time the next one must be to count
/// towards [`RAISE_EVERY`]: the bound moves after a day of host time, not
/// after 24 ticks, whatever the proxy's tick period.
pub const COUNT_GAP: u64 = 3600;

/// Why the card refused a host time; it kept the time it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClockRefusal {
    /// The host time is more than a day below the card's bound.
    #[error(
        "host time {} is more than a day before the card's clock bound {}; the card keeps its time",
        Utc(*given),
        Utc(*bound)
    )]
    BeforeBound {
        /// The time the host gave.
        given: u64,
        /// The card's bound.
        bound: u64,
    },
    /// The host time is after the year 9999.
    #[error("host time {0} is after the year 9999")]
    TooLate(u64),
}

/// The volatile part of the clock (card RAM): the host time last accepted
/// since power-up, and the host times counted since the bound last moved
/// (how many, and the last one).
///
/// At power-up (`Default`) it has no host time and counts no host times:
/// a day of host times passes before the bound moves, so restarts never
/// move it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Clock {
    host: Option<u64>,
    since_raise: u32,
    counted: Option<u64>,
}

impl Clock {
    /// The card's time given its persisted `bound`.
    pub(crate) fn time(&self, bound: u64) -> CardTime {
        match self.host {
            Some(t) => CardTime {
                now: t.max(bound),
                from_host: true,
            },
            None => CardTime {
                now: bound,
                from_host: false,
            },
        }
    }

    /// Takes the host time `given` against the persisted `bound`: returns
    /// the new bound to persist, if it moves, or why `given` is refused
    /// (then nothing changed). Call [`Clock::accept`] once the new bound
    /// is stored.
    pub(crate) fn check(&self, given: u64, bound: u64) -> Result<Option<u64>, ClockRefusal> {
        if given > MAX_TIME {
            return Err(ClockRefusal::TooLate(given));
        }
        if given.saturating_add(TOLERANCE) < bound {
            return Err(ClockRefusal::BeforeBound { given, bound });
        }
        let raise = given >= bound.saturating_add(DAY)
            && self.counts(given)
            && self.since_raise.saturating_add(1) >= RAISE_EVERY;
        Ok(raise.then(|| given.min(bound + STEP)))
    }

    /// Records the accepted host time `given`; `raised` says whether the
    /// bound moved.
    pub(crate) fn accept(&mut self, given: u64, raised: bool) {
        self.host = Some(given);
        if raised {
            self.since_raise = 0;
            self.counted = Some(given);
        } else if self.counts(given) {
            self.since_raise = self.since_raise.saturating_add(1);
            self.counted = Some(given);
        }
    }

    /// Whether the host time `given` counts towards [`RAISE_EVERY`]: the
    /// first since power-up, then one at least [`COUNT_GAP`] after the
    /// last counted.
    fn counts(&self, given: u64) -> bool {
        self.counted
            .is_none_or(|c| given >= c.saturating_add(COUNT_GAP))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-27T00:00:00Z.
    const T: u64 = 1_795_737_600;

    #[test]
    fn before_a_host_time_the_card_uses_its_bound() {
        let c = Clock::default();
        assert_eq!(
            c.time(T),
            CardTime {
                now: T,
                from_host: false
            }
        );
    }

    #[test]
    fn the_card_uses_the_later_of_bound_and_host_time() {
        let mut c = Clock::default();
        assert_eq!(c.check(T - 3600, T), Ok(None), "within the tolerance");
        c.accept(T - 3600, false);
        assert_eq!(c.time(T).now, T);
        assert_eq!(c.check(T + 3600, T), Ok(None), "less than a day past");
        c.accept(T + 3600, false);
        assert_eq!(c.time(T), CardTime::real(T + 3600));
    }

    #[test]
    fn a_host_time_far_below_the_bound_is_refused() {
        let c = Clock::default();
        assert_eq!(
            c.check(0, T),
            Err(ClockRefusal::BeforeBound { given: 0, bound: T })
        );
        assert_eq!(
            c.check(T - DAY - 1, T).map(|_| ()).unwrap_err().to_string(),
            "host time 2026-11-25T23:59:59Z is more than a day before the card's clock bound 2026-11-27T00:00:00Z; the card keeps its time"
        );
        assert_eq!(c.check(T - DAY, T), Ok(None));
        assert_eq!(
            c.check(MAX_TIME + 1, T),
            Err(ClockRefusal::TooLate(MAX_TIME + 1))
        );
    }

    #[test]
    fn the_bound_moves_a_day_at_most_and_once_per_day_of_ticks() {
        let mut c = Clock::default();
        let far = T + 100 * 365 * DAY;
        // After power-up, 23 hourly host times do not move the bound, the
        // 24th moves it by a day.
        let mut t = far;
        for _ in 0..RAISE_EVERY - 1 {
            assert_eq!(c.check(t, T), Ok(None));
            c.accept(t, false);
            t += COUNT_GAP;
        }
        assert_eq!(c.check(t, T), Ok(Some(T + DAY)));
        c.accept(t, true);
        let bound = T + DAY;
        // The next 23 do not move it, the 24th does.
        for _ in 0..RAISE_EVERY - 1 {
            t += COUNT_GAP;
            assert_eq!(c.check(t, bound), Ok(None));
            c.accept(t, false);
        }
        t += COUNT_GAP;
        assert_eq!(c.check(t, bound), Ok(Some(bound + DAY)));
        // A restart loop with the clock in the future never moves it.
        for _ in 0..1000 {
            assert_eq!(Clock::default().check(far, T), Ok(None));
        }
        // A time less than a day past the bound does not move it.
        let mut c = Clock::default();
        for i in 0..u64::from(RAISE_EVERY) - 1 {
            c.accept(
                T + DAY + 5 - (RAISE_EVERY as u64 - 1 - i) * COUNT_GAP,
                false,
            );
        }
        assert_eq!(c.check(T + DAY - 1, T), Ok(None));
        assert_eq!(c.check(T + DAY + 5, T), Ok(Some(T + DAY)));
    }

    /// The proxy ticks every few seconds: ticks closer than an hour of host
    /// time count once, so a host whose clock is in the future still moves
    /// the bound a day per day of host time, not a day per 24 ticks.
    #[test]
    fn frequent_ticks_do_not_move_the_bound_faster() {
        let mut c = Clock::default();
        let far = T + 100 * 365 * DAY;
        // A day of host time less a tick, one tick every 10 s.
        for i in 0..(DAY - COUNT_GAP) / 10 {
            let t = far + i * 10;
            assert_eq!(c.check(t, T), Ok(None), "tick {i}");
            c.accept(t, false);
        }
        // Ten thousand ticks at one host time: none moves it.
        let mut c = Clock::default();
        for _ in 0..10_000 {
            assert_eq!(c.check(far, T), Ok(None));
            c.accept(far, false);
        }
        // A day of host time in 10 s ticks moves it once.
        let mut c = Clock::default();
        let raises = (0..DAY / 10 + 1)
            .filter(|i| {
                let t = far + i * 10;
                let r = c.check(t, T).unwrap().is_some();
                c.accept(t, r);
                r
            })
            .count();
        assert_eq!(raises, 1);
    }
}
