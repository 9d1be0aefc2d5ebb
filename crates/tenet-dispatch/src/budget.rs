//! Budgets in messages and in bytes (DESIGN 4, "Bounds are in bytes too").
//!
//! Whatever holds messages in a daemon counts what it holds as a [`Usage`]
//! and asks a [`Budget`] before it takes more: the dispatch table (per
//! destination, in total, and each sender's [`Share`] of both), the tap
//! queues, the window of a link to a peer host
//! ([`PeerLink`](crate::reliable::PeerLink)) and the NATS requests in
//! flight. A message costs its encoded length (header and param,
//! [`Message::encoded_len`](tenet_proto::Message::encoded_len)); the
//! message count bounds the fixed overhead that comes with each.
//!
//! Two ways to ask:
//! - [`Budget::admits`] before storing a message of known size: beyond the
//!   budget it is refused and nothing is stored (the table).
//! - [`Budget::has_room`] before taking the next message whose size is not
//!   known yet: room while both counts are under the budget, so what is
//!   held exceeds the byte budget by less than one message (windows).

use std::fmt;

/// What a bound counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Messages.
    Messages,
    /// Bytes of encoded messages.
    Bytes,
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unit::Messages => "messages",
            Unit::Bytes => "bytes",
        })
    }
}

/// How much something may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Messages.
    pub messages: usize,
    /// Bytes of encoded messages.
    pub bytes: usize,
}

/// How much something holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Messages.
    pub messages: usize,
    /// Bytes of encoded messages.
    pub bytes: usize,
}

/// A budget that a message would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// The count that would exceed it.
    pub unit: Unit,
    /// The budget in that unit.
    pub limit: usize,
}

impl Budget {
    /// A budget of `messages` messages and `bytes` bytes.
    pub const fn new(messages: usize, bytes: usize) -> Self {
        Self { messages, bytes }
    }

    /// Whether one more message of `bytes` bytes fits beside `used`; if not,
    /// which count it would exceed (messages first).
    pub fn admits(&self, used: Usage, bytes: usize) -> Result<(), Exceeded> {
        if used.messages >= self.messages {
            return Err(Exceeded {
                unit: Unit::Messages,
                limit: self.messages,
            });
        }
        if used.bytes.saturating_add(bytes) > self.bytes {
            return Err(Exceeded {
                unit: Unit::Bytes,
                limit: self.bytes,
            });
        }
        Ok(())
    }

    /// Whether another message may be taken while `used` is held: both
    /// counts are under the budget. The byte count may then exceed it by
    /// less than one message.
    pub fn has_room(&self, used: Usage) -> bool {
        used.messages < self.messages && used.bytes < self.bytes
    }

    /// `share` of this budget (rounded up, at least one message and one
    /// byte).
    pub fn share(&self, share: Share) -> Budget {
        Budget {
            messages: share.of(self.messages),
            bytes: share.of(self.bytes),
        }
    }

    /// This budget `factor` times over.
    pub fn times(&self, factor: usize) -> Budget {
        Budget {
            messages: self.messages.saturating_mul(factor),
            bytes: self.bytes.saturating_mul(factor),
        }
    }
}

impl Usage {
    /// One message of `bytes` bytes.
    pub const fn one(bytes: usize) -> Self {
        Self { messages: 1, bytes }
    }

    /// Adds `u`.
    pub fn add(&mut self, u: Usage) {
        self.messages += u.messages;
        self.bytes += u.bytes;
    }

    /// Removes `u`, which must have been added.
    pub fn remove(&mut self, u: Usage) {
        debug_assert!(
            self.messages >= u.messages && self.bytes >= u.bytes,
            "{u:?} removed from {self:?}"
        );
        self.messages = self.messages.saturating_sub(u.messages);
        self.bytes = self.bytes.saturating_sub(u.bytes);
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.messages == 0 && self.bytes == 0
    }
}

/// A fraction of a budget, more than 0 and at most 1 (in millionths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Share(u32);

impl Share {
    const ONE: u32 = 1_000_000;
    /// All of it.
    pub const WHOLE: Share = Share(Self::ONE);
    /// One half.
    pub const HALF: Share = Share(Self::ONE / 2);

    /// The share `f` (0 < f <= 1), to the nearest millionth; `None` outside
    /// that range or for a share that rounds to 0.
    pub fn from_fraction(f: f64) -> Option<Share> {
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return None;
        }
        let ppm = (f * f64::from(Self::ONE)).round() as u32;
        (ppm > 0).then_some(Share(ppm.min(Self::ONE)))
    }

    /// The share as a fraction.
    pub fn fraction(&self) -> f64 {
        f64::from(self.0) / f64::from(Self::ONE)
    }

    /// This share of `n`, rounded up, at least 1.
    pub fn of(&self, n: usize) -> usize {
        let v = (n as u128 * u128::from(self.0)).div_ceil(u128::from(Self::ONE));
        usize::try_from(v).unwrap_or(usize::MAX).max(1)
    }
}

impl Default for Share {
    fn default() -> Self {
        Share::HALF
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fraction())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_counts_messages_then_bytes() {
        let b = Budget::new(2, 100);
        assert_eq!(b.admits(Usage::default(), 100), Ok(()));
        assert_eq!(
            b.admits(Usage::default(), 101),
            Err(Exceeded {
                unit: Unit::Bytes,
                limit: 100
            })
        );
        assert_eq!(
            b.admits(
                Usage {
                    messages: 2,
                    bytes: 0
                },
                1
            ),
            Err(Exceeded {
                unit: Unit::Messages,
                limit: 2
            })
        );
    }

    #[test]
    fn has_room_while_both_are_under() {
        let b = Budget::new(2, 100);
        assert!(b.has_room(Usage::one(99)));
        assert!(!b.has_room(Usage::one(100)));
        assert!(!b.has_room(Usage {
            messages: 2,
            bytes: 0
        }));
    }

    #[test]
    fn shares_round_up_and_never_reach_zero() {
        assert_eq!(Share::HALF.of(1024), 512);
        assert_eq!(Share::HALF.of(3), 2);
        assert_eq!(Share::HALF.of(1), 1);
        assert_eq!(Share::WHOLE.of(usize::MAX), usize::MAX);
        assert_eq!(
            Budget::new(1024, 8 << 20).share(Share::HALF),
            Budget::new(512, 4 << 20)
        );
        assert_eq!(Share::from_fraction(0.5), Some(Share::HALF));
        assert_eq!(Share::from_fraction(1.0), Some(Share::WHOLE));
        for bad in [0.0, -0.5, 1.5, f64::NAN, 1e-9] {
            assert_eq!(Share::from_fraction(bad), None, "{bad}");
        }
    }
}
