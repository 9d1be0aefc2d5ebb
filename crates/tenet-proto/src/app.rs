//! The app-socket protocol between an app (through the client library) and
//! its host daemon, over a Unix stream socket.
//!
//! Each direction is a sequence of stream frames ([`crate::frame`]); a frame
//! body is one op byte and the op's payload. Every request from the client
//! gets exactly one reply (`Acquired`, `Ok`, `Status` or `Error`), in
//! request order.
//! `Deliver`, `Tapped` and `Lagged` are unsolicited and may arrive between a
//! request and its reply. Byte layouts are in `docs/wire.md`.

use std::fmt;

use crate::codec::{Codec, DecodeError, Reader};
use crate::filter::Filter;
use crate::id::EntityId;
use crate::message::{MAX_MESSAGE_LEN, Message};
use crate::status::Status;

/// Largest frame body on the app socket: an op byte, the largest per-op
/// prefix (tap id and timestamp, 12 bytes) and the largest eTP message.
pub const MAX_APP_FRAME: usize = 1 + 12 + MAX_MESSAGE_LEN;

/// Identifies one subscription of one connection; 0 means "addressed to
/// the app itself, no subscription".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct SubscriptionId(pub u32);

/// Identifies one tap of one connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct TapId(pub u32);

/// Error codes the daemon returns to a client.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The connection has not acquired an id yet.
    pub const NOT_ACQUIRED: Self = Self(1);
    /// The connection already holds an id.
    pub const ALREADY_ACQUIRED: Self = Self(2);
    /// The message's src is not the id bound to this connection.
    pub const FORGED_SRC: Self = Self(3);
    /// A dispatch-table bound is reached; nothing was stored.
    pub const QUEUE_FULL: Self = Self(4);
    /// The message exceeds the maximum size.
    pub const TOO_LARGE: Self = Self(5);
    /// The frame could not be decoded.
    pub const MALFORMED: Self = Self(6);
    /// The request is not allowed for this connection.
    pub const PERMISSION_DENIED: Self = Self(7);
    /// A guard rule dropped the message.
    pub const REJECTED_BY_GUARD: Self = Self(8);
    /// No subscription or tap with that id.
    pub const NO_SUCH_ID: Self = Self(9);
    /// The daemon cannot assign an id now (no card, counter exhausted, store
    /// not writable).
    pub const ID_UNAVAILABLE: Self = Self(10);
    /// Too many subscriptions or taps on this connection.
    pub const LIMIT: Self = Self(11);
    /// The daemon failed internally; the request had no effect.
    pub const INTERNAL: Self = Self(12);

    /// A short name for the code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::NOT_ACQUIRED => "not acquired",
            Self::ALREADY_ACQUIRED => "already acquired",
            Self::FORGED_SRC => "forged src",
            Self::QUEUE_FULL => "queue full",
            Self::TOO_LARGE => "too large",
            Self::MALFORMED => "malformed",
            Self::PERMISSION_DENIED => "permission denied",
            Self::REJECTED_BY_GUARD => "rejected by guard",
            Self::NO_SUCH_ID => "no such id",
            Self::ID_UNAVAILABLE => "id unavailable",
            Self::LIMIT => "limit reached",
            Self::INTERNAL => "internal error",
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "error {:#06x}", self.0),
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({self})")
    }
}

/// A request from client to daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `0x01`: acquire an id for this connection.
    Acquire,
    /// `0x02`: store a message in the dispatch table; `src` must be the
    /// connection's id.
    Send(Message),
    /// `0x03`: register a handler; matching messages are delivered here.
    Subscribe(Filter),
    /// `0x04`: observe matching messages without consuming them.
    Tap(Filter),
    /// `0x05`: drop a subscription.
    Unsubscribe(SubscriptionId),
    /// `0x06`: drop a tap.
    Untap(TapId),
    /// `0x07`: ask for the daemon's figures ([`crate::status`]); allowed
    /// before `Acquire`, answered with `Status`.
    Status,
}

/// A frame from daemon to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonFrame {
    /// `0x81`: reply to `Acquire`.
    Acquired(EntityId),
    /// `0x82`: success; the value is the new subscription or tap id, or 0.
    Ok(u32),
    /// `0x83`: failure of the current request, which had no effect.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Details for people.
        text: String,
    },
    /// `0x84`: a message for this connection, and the subscription that
    /// claimed it (0: addressed to the connection's id).
    Deliver {
        /// The claiming subscription.
        subscription: SubscriptionId,
        /// The message, now read from the dispatch table.
        message: Message,
    },
    /// `0x85`: a copy of a message a tap matched.
    Tapped {
        /// The tap.
        tap: TapId,
        /// When the message was stored, microseconds since the Unix epoch.
        at_micros: u64,
        /// The copy.
        message: Message,
    },
    /// `0x86`: the tap's queue overflowed and `missed` copies were skipped
    /// (taps observe; they never hold up delivery).
    Lagged {
        /// The tap.
        tap: TapId,
        /// How many copies were skipped.
        missed: u64,
    },
    /// `0x87`: reply to `Status`: the daemon's figures.
    Status(Status),
}

fn op(r: &mut Reader<'_>) -> Result<u8, DecodeError> {
    r.u8("app frame op")
}

fn bad_op(op: u8) -> DecodeError {
    DecodeError::Invalid {
        what: "app frame op",
        detail: format!("unknown op {op:#04x}"),
    }
}

impl Codec for ClientFrame {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Acquire => out.push(0x01),
            Self::Send(m) => {
                out.push(0x02);
                m.encode(out);
            }
            Self::Subscribe(f) => {
                out.push(0x03);
                f.encode(out);
            }
            Self::Tap(f) => {
                out.push(0x04);
                f.encode(out);
            }
            Self::Unsubscribe(id) => {
                out.push(0x05);
                out.extend_from_slice(&id.0.to_be_bytes());
            }
            Self::Untap(id) => {
                out.push(0x06);
                out.extend_from_slice(&id.0.to_be_bytes());
            }
            Self::Status => out.push(0x07),
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match op(r)? {
            0x01 => Self::Acquire,
            0x02 => Self::Send(Message::read(r)?),
            0x03 => Self::Subscribe(Filter::read(r)?),
            0x04 => Self::Tap(Filter::read(r)?),
            0x05 => Self::Unsubscribe(SubscriptionId(r.u32("subscription id")?)),
            0x06 => Self::Untap(TapId(r.u32("tap id")?)),
            0x07 => Self::Status,
            other => return Err(bad_op(other)),
        })
    }
}

impl Codec for DaemonFrame {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Acquired(id) => {
                out.push(0x81);
                id.encode(out);
            }
            Self::Ok(v) => {
                out.push(0x82);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Self::Error { code, text } => {
                out.push(0x83);
                out.extend_from_slice(&code.0.to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            Self::Deliver {
                subscription,
                message,
            } => {
                out.push(0x84);
                out.extend_from_slice(&subscription.0.to_be_bytes());
                message.encode(out);
            }
            Self::Tapped {
                tap,
                at_micros,
                message,
            } => {
                out.push(0x85);
                out.extend_from_slice(&tap.0.to_be_bytes());
                out.extend_from_slice(&at_micros.to_be_bytes());
                message.encode(out);
            }
            Self::Lagged { tap, missed } => {
                out.push(0x86);
                out.extend_from_slice(&tap.0.to_be_bytes());
                out.extend_from_slice(&missed.to_be_bytes());
            }
            Self::Status(s) => {
                out.push(0x87);
                s.encode(out);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match op(r)? {
            0x81 => Self::Acquired(EntityId::read(r)?),
            0x82 => Self::Ok(r.u32("ok value")?),
            0x83 => {
                let code = ErrorCode(r.u16("error code")?);
                let text = String::from_utf8_lossy(r.rest()).into_owned();
                Self::Error { code, text }
            }
            0x84 => Self::Deliver {
                subscription: SubscriptionId(r.u32("subscription id")?),
                message: Message::read(r)?,
            },
            0x85 => Self::Tapped {
                tap: TapId(r.u32("tap id")?),
                at_micros: r.u64("tap time")?,
                message: Message::read(r)?,
            },
            0x86 => Self::Lagged {
                tap: TapId(r.u32("tap id")?),
                missed: r.u64("missed count")?,
            },
            0x87 => Self::Status(Status::read(r)?),
            other => return Err(bad_op(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtype::Mtype;
    use proptest::prelude::*;

    fn msg(p: Vec<u8>) -> Message {
        Message::new(
            EntityId::from_array([1; 16]),
            EntityId::from_array([2; 16]),
            Mtype(7),
            p,
        )
    }

    #[test]
    fn every_frame_round_trips() {
        let client = [
            ClientFrame::Acquire,
            ClientFrame::Send(msg(vec![1, 2, 3])),
            ClientFrame::Subscribe(Filter::to(EntityId::from_array([9; 16]))),
            ClientFrame::Tap(Filter::ANY),
            ClientFrame::Unsubscribe(SubscriptionId(4)),
            ClientFrame::Untap(TapId(5)),
            ClientFrame::Status,
        ];
        for f in client {
            assert_eq!(ClientFrame::decode(&f.to_bytes()), Ok(f));
        }
        let daemon = [
            DaemonFrame::Acquired(EntityId::from_array([3; 16])),
            DaemonFrame::Ok(17),
            DaemonFrame::Error {
                code: ErrorCode::FORGED_SRC,
                text: "nope".into(),
            },
            DaemonFrame::Deliver {
                subscription: SubscriptionId(0),
                message: msg(vec![]),
            },
            DaemonFrame::Tapped {
                tap: TapId(1),
                at_micros: 123,
                message: msg(vec![4]),
            },
            DaemonFrame::Lagged {
                tap: TapId(1),
                missed: 9,
            },
            DaemonFrame::Status(Status::default()),
            DaemonFrame::Status(Status {
                figures: vec![
                    crate::status::Figure::count("queue_messages", &[], 3),
                    crate::status::Figure::new(
                        "card_link_busy_seconds_total",
                        &[],
                        crate::status::Value::Time(std::time::Duration::from_micros(5)),
                    ),
                    crate::status::Figure::count("peer_link_up", &[("peer", "127.0.0.1:7001")], 1),
                ],
                omitted: 4,
            }),
        ];
        for f in daemon {
            assert_eq!(DaemonFrame::decode(&f.to_bytes()), Ok(f));
        }
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        assert!(matches!(
            ClientFrame::decode(&[]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            ClientFrame::decode(&[0x7f]),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            ClientFrame::decode(&[0x01, 0]),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(matches!(
            ClientFrame::decode(&[0x02, 1, 2]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            ClientFrame::decode(&[0x05, 0, 0, 0, 1, 9]),
            Err(DecodeError::TrailingBytes { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = ClientFrame::decode(&b);
            let _ = DaemonFrame::decode(&b);
        }
    }
}
