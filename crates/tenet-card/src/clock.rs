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
//!   when the host time is at least a day past it, and only after a day of
//!   real time since power-up or the last raise ([`RAISE_AFTER`]). Each
//!   host time credits the smaller of how far the host's clock moved since
//!   the one before and how much time passed meanwhile by the proxy's
//!   monotonic clock (`set-time`'s `elapsed`, which a wrong or racing wall
//!   clock does not move); a set-time without `elapsed` credits nothing.
//!   That is at most one store write a day for a host whose clock is
//!   right; a host clock in the future, or one that keeps jumping ahead,
//!   moves the bound one day per day of uptime at most, and not at all
//!   across restarts (a daemon in a restart loop with its clock in the
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
/// Real time credited (see the module's doc) between two raises of the
/// bound.
pub const RAISE_AFTER: u64 = DAY;

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
/// since power-up, and the real time credited since power-up or the bound
/// last moved.
///
/// At power-up (`Default`) it has no host time and no credit: a day of
/// real time passes before the bound moves, so restarts never move it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Clock {
    host: Option<u64>,
    credit: u64,
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
    pub(crate) fn check(
        &self,
        given: u64,
        elapsed: Option<u64>,
        bound: u64,
    ) -> Result<Option<u64>, ClockRefusal> {
        if given > MAX_TIME {
            return Err(ClockRefusal::TooLate(given));
        }
        if given.saturating_add(TOLERANCE) < bound {
            return Err(ClockRefusal::BeforeBound { given, bound });
        }
        let raise = given >= bound.saturating_add(DAY)
            && self.credit.saturating_add(self.credits(given, elapsed)) >= RAISE_AFTER;
        Ok(raise.then(|| given.min(bound + STEP)))
    }

    /// Records the accepted host time `given`; `raised` says whether the
    /// bound moved.
    pub(crate) fn accept(&mut self, given: u64, elapsed: Option<u64>, raised: bool) {
        self.credit = if raised {
            0
        } else {
            self.credit.saturating_add(self.credits(given, elapsed))
        };
        self.host = Some(given);
    }

    /// The real time host time `given` credits: the smaller of how far the
    /// host's clock moved since the last accepted time and `elapsed`, the
    /// real time the sender measured; nothing without either.
    fn credits(&self, given: u64, elapsed: Option<u64>) -> u64 {
        match (self.host, elapsed) {
            (Some(last), Some(e)) => given.saturating_sub(last).min(e),
            _ => 0,
        }
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
        assert_eq!(c.check(T - 3600, None, T), Ok(None), "within the tolerance");
        c.accept(T - 3600, None, false);
        assert_eq!(c.time(T).now, T);
        assert_eq!(c.check(T + 3600, None, T), Ok(None), "less than a day past");
        c.accept(T + 3600, None, false);
        assert_eq!(c.time(T), CardTime::real(T + 3600));
    }

    #[test]
    fn a_host_time_far_below_the_bound_is_refused() {
        let c = Clock::default();
        assert_eq!(
            c.check(0, None, T),
            Err(ClockRefusal::BeforeBound { given: 0, bound: T })
        );
        assert_eq!(
            c.check(T - DAY - 1, None, T)
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            "host time 2026-11-25T23:59:59Z is more than a day before the card's clock bound 2026-11-27T00:00:00Z; the card keeps its time"
        );
        assert_eq!(c.check(T - DAY, None, T), Ok(None));
        assert_eq!(
            c.check(MAX_TIME + 1, None, T),
            Err(ClockRefusal::TooLate(MAX_TIME + 1))
        );
    }

    /// Host times `from`, `from + step`, ... every `elapsed` seconds of
    /// real time, `n` of them, against `bound`; returns the bound after.
    fn ticks(c: &mut Clock, mut bound: u64, from: u64, step: u64, elapsed: u64, n: u64) -> u64 {
        for i in 0..n {
            let t = from + i * step;
            let raised = c.check(t, Some(elapsed), bound).unwrap();
            c.accept(t, Some(elapsed), raised.is_some());
            bound = raised.unwrap_or(bound);
        }
        bound
    }

    #[test]
    fn the_bound_moves_a_day_at_most_and_once_per_day_of_real_time() {
        let far = T + 100 * 365 * DAY;
        // A host clock a century ahead, ticking every 10 s: a day of
        // ticks moves the bound one day, two days two.
        let mut c = Clock::default();
        assert_eq!(ticks(&mut c, T, far, 10, 10, DAY / 10), T);
        assert_eq!(ticks(&mut c, T, far + DAY, 10, 10, 1), T + DAY);
        let mut c = Clock::default();
        assert_eq!(ticks(&mut c, T, far, 10, 10, 2 * DAY / 10 + 1), T + 2 * DAY);
        // Hourly ticks: the same, a day per day.
        let mut c = Clock::default();
        assert_eq!(ticks(&mut c, T, far, 3600, 3600, 25), T + DAY);
        // A restart loop with the clock in the future never moves it: the
        // first time after power-up credits nothing.
        for _ in 0..1000 {
            let mut c = Clock::default();
            assert_eq!(ticks(&mut c, T, far, 10, 10, 1), T);
        }
        // A time less than a day past the bound does not move it.
        let mut c = Clock::default();
        assert_eq!(ticks(&mut c, T, T + DAY - 10 * 8641, 10, 10, 8641), T);
    }

    /// A host clock that jumps ahead an hour at every 10 s tick (a spoofed
    /// time source, a racing virtual machine) credits only the 10 s that
    /// really passed: the bound still moves a day per day of real time,
    /// not a day per 24 ticks. Ticks at one host time credit nothing, and
    /// a set-time without `elapsed` (an older proxy) credits nothing.
    #[test]
    fn a_racing_host_clock_does_not_move_the_bound_faster() {
        let far = T + 100 * 365 * DAY;
        let mut c = Clock::default();
        assert_eq!(
            ticks(&mut c, T, far, 3600, 10, 720),
            T,
            "2 h of racing ticks"
        );
        let mut c = Clock::default();
        assert_eq!(ticks(&mut c, T, far, 3600, 10, DAY / 10 + 1), T + DAY);
        let mut c = Clock::default();
        assert_eq!(
            ticks(&mut c, T, far, 0, 10, 20_000),
            T,
            "no host time passed"
        );
        let mut c = Clock::default();
        for i in 0..100 {
            let t = far + i * DAY;
            assert_eq!(c.check(t, None, T), Ok(None));
            c.accept(t, None, false);
        }
    }
}
