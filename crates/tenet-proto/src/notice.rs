//! Params of the framework's own notices: [`Undeliverable`] and [`Refused`].

use std::fmt;

use crate::Codec;
use crate::codec::{DecodeError, Reader};
use crate::id::EntityId;
use crate::mtype::Mtype;
use crate::tlv::{self, Fields, Tag};

/// Why a host could not deliver a message.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UndeliverableReason(pub u8);

impl UndeliverableReason {
    /// The destination's domain is local but no entity holds that id.
    pub const UNKNOWN_DESTINATION: Self = Self(1);
    /// No local entity, subscription or route claims the destination.
    pub const NO_ROUTE: Self = Self(2);
    /// The message outlived its time to live in the dispatch table.
    pub const EXPIRED: Self = Self(3);
    /// The destination disconnected before reading the message.
    pub const DESTINATION_GONE: Self = Self(4);
    /// A queue on the way was full (used by proxies that cannot return an
    /// error to the sender directly).
    pub const QUEUE_FULL: Self = Self(5);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::UNKNOWN_DESTINATION => "unknown destination",
            Self::NO_ROUTE => "no route",
            Self::EXPIRED => "expired",
            Self::DESTINATION_GONE => "destination gone",
            Self::QUEUE_FULL => "queue full",
            _ => return None,
        })
    }
}

impl fmt::Display for UndeliverableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "reason {:#04x}", self.0),
        }
    }
}

impl fmt::Debug for UndeliverableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UndeliverableReason({self})")
    }
}

const T_REASON: Tag = Tag(0x80);
const T_DST: Tag = Tag(0x81);
const T_MTYPE: Tag = Tag(0x82);
const T_TEXT: Tag = Tag(0x83);

/// Param of an [`Mtype::UNDELIVERABLE`] notice: which message failed and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undeliverable {
    /// Why.
    pub reason: UndeliverableReason,
    /// The failed message's destination.
    pub dst: EntityId,
    /// The failed message's mtype.
    pub mtype: Mtype,
}

impl Codec for Undeliverable {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_REASON, &[self.reason.0]);
        tlv::write(out, T_DST, &self.dst.to_array());
        tlv::write(out, T_MTYPE, &self.mtype.0.to_be_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_REASON, T_DST, T_MTYPE], "undeliverable notice")?;
        Ok(Self {
            reason: UndeliverableReason(f.require_array::<1>(T_REASON, "undeliverable reason")?[0]),
            dst: EntityId::from_array(f.require_array(T_DST, "undeliverable dst")?),
            mtype: Mtype(u16::from_be_bytes(
                f.require_array(T_MTYPE, "undeliverable mtype")?,
            )),
        })
    }
}

/// Param of an [`Mtype::REFUSED`] notice: the destination read the message
/// and refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The refused message's mtype.
    pub mtype: Mtype,
    /// Why, in words.
    pub text: String,
}

impl Codec for Refused {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_MTYPE, &self.mtype.0.to_be_bytes());
        tlv::write(out, T_TEXT, self.text.as_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_MTYPE, T_TEXT], "refused notice")?;
        let text = f.require(T_TEXT, "refused text")?;
        Ok(Self {
            mtype: Mtype(u16::from_be_bytes(
                f.require_array(T_MTYPE, "refused mtype")?,
            )),
            text: String::from_utf8(text.to_vec()).map_err(|_| DecodeError::Invalid {
                what: "refused text",
                detail: "not UTF-8".into(),
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn notices_round_trip() {
        let u = Undeliverable {
            reason: UndeliverableReason::EXPIRED,
            dst: EntityId::from_array([3; 16]),
            mtype: Mtype(0x8001),
        };
        assert_eq!(Undeliverable::decode(&u.to_bytes()), Ok(u));
        let r = Refused {
            mtype: Mtype(0x0201),
            text: "sender is not authenticated".into(),
        };
        assert_eq!(Refused::decode(&r.to_bytes()), Ok(r));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Undeliverable::decode(&b);
            let _ = Refused::decode(&b);
        }
    }
}
