//! eTP messages (paper 4.2): `(src, dst, mtype, param)`.
//!
//! Byte layout, exactly 34 header bytes then the param:
//!
//! ```text
//! offset  0..16  src    (domain 12 ‖ port u32 BE)
//! offset 16..32  dst    (domain 12 ‖ port u32 BE)
//! offset 32..34  mtype  (u16 BE)
//! offset 34..    param  (BER-TLV by convention; opaque here)
//! ```
//!
//! A message carries no length of its own: its end is given by the frame
//! around it (a stream frame's length prefix, or an APDU's Lc).

use crate::codec::{Codec, DecodeError, Reader};
use crate::id::EntityId;
use crate::mtype::Mtype;

/// Size of the eTP header in bytes.
pub const HEADER_LEN: usize = 34;

/// Largest eTP message (header and param) in bytes: the data field of one
/// ISO 7816-4 extended-length command APDU (Lc up to 65 535).
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// Largest param in bytes.
pub const MAX_PARAM_LEN: usize = MAX_MESSAGE_LEN - HEADER_LEN;

/// The 34-byte eTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Sender.
    pub src: EntityId,
    /// Destination.
    pub dst: EntityId,
    /// Format of the param.
    pub mtype: Mtype,
}

impl Codec for Header {
    fn encode(&self, out: &mut Vec<u8>) {
        self.src.encode(out);
        self.dst.encode(out);
        out.extend_from_slice(&self.mtype.0.to_be_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.left() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                what: "eTP header",
                needed: HEADER_LEN - r.left(),
            });
        }
        Ok(Self {
            src: EntityId::read(r)?,
            dst: EntityId::read(r)?,
            mtype: Mtype(r.u16("mtype")?),
        })
    }
}

/// A whole eTP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender, destination and type.
    pub header: Header,
    /// The parameters, at most [`MAX_PARAM_LEN`] bytes.
    pub param: Vec<u8>,
}

impl Message {
    /// Builds a message.
    pub fn new(src: EntityId, dst: EntityId, mtype: Mtype, param: Vec<u8>) -> Self {
        Self {
            header: Header { src, dst, mtype },
            param,
        }
    }

    /// Sender.
    pub fn src(&self) -> EntityId {
        self.header.src
    }

    /// Destination.
    pub fn dst(&self) -> EntityId {
        self.header.dst
    }

    /// Message type.
    pub fn mtype(&self) -> Mtype {
        self.header.mtype
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.param.len()
    }

    /// Fails if the message is larger than [`MAX_MESSAGE_LEN`].
    pub fn check_size(&self) -> Result<(), DecodeError> {
        if self.encoded_len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLarge {
                what: "eTP message",
                len: self.encoded_len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        Ok(())
    }
}

impl Codec for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        self.header.encode(out);
        out.extend_from_slice(&self.param);
    }

    /// Reads a header and takes everything left in `r` as the param.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let total = r.left();
        if total > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLarge {
                what: "eTP message",
                len: total,
                max: MAX_MESSAGE_LEN,
            });
        }
        let header = Header::read(r)?;
        Ok(Self {
            header,
            param: r.rest().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_is_exactly_34_bytes() {
        let m = Message::new(
            EntityId::from_array([1; 16]),
            EntityId::from_array([2; 16]),
            Mtype(0x0102),
            vec![],
        );
        let b = m.to_bytes();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(&b[32..], &[0x01, 0x02]);
    }

    #[test]
    fn truncated_header_is_an_error() {
        for n in 0..HEADER_LEN {
            assert!(matches!(
                Message::decode(&vec![0u8; n]),
                Err(DecodeError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn oversized_message_is_an_error() {
        let big = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            Message::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(Message::decode(&big[..MAX_MESSAGE_LEN]).is_ok());
    }

    proptest! {
        #[test]
        fn message_round_trips(src in any::<[u8;16]>(), dst in any::<[u8;16]>(), mt in any::<u16>(),
                               param in proptest::collection::vec(any::<u8>(), 0..300)) {
            let m = Message::new(EntityId::from_array(src), EntityId::from_array(dst), Mtype(mt), param);
            prop_assert_eq!(Message::decode(&m.to_bytes()), Ok(m));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Message::decode(&b);
            let _ = Header::decode(&b);
        }
    }
}
