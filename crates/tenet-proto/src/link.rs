//! The host-to-host link protocol, carried in stream frames over TLS (or
//! as NATS message payloads).
//!
//! ```text
//! Hello  01 ‖ host id (16) ‖ session u64 ‖ your_session u64 ‖ recv_upto u64 ‖ n u16 ‖ n × domain (12)
//! Data   02 ‖ seq u64 ‖ ack u64 ‖ eTP message
//! Ack    03 ‖ ack u64
//! Close  04 ‖ reason (UTF-8)
//! ```
//!
//! Each side numbers the messages it sends on a link from 1 (`seq`);
//! `ack` and `recv_upto` are cumulative: every message up to that number
//! has been stored by the receiver. `session` is chosen at random when a
//! daemon starts, so a peer can tell a reconnect (same session: resend what
//! is unacknowledged) from a restart (new session: the old state is gone).
//! Sequencing lives outside the 34-byte eTP header.

use crate::codec::{Codec, DecodeError, Reader};
use crate::id::{Domain, EntityId};
use crate::message::{MAX_MESSAGE_LEN, Message};

/// Most domains one host may announce.
pub const MAX_DOMAINS: usize = 256;

/// Largest link frame body: op, seq, ack and the largest message.
pub const MAX_LINK_FRAME: usize = 1 + 8 + 8 + MAX_MESSAGE_LEN;

/// A frame between two hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFrame {
    /// First frame on a link, each way.
    Hello {
        /// The sender's host id.
        host: EntityId,
        /// The sender's session (random per daemon start).
        session: u64,
        /// The receiver's session as the sender last knew it (0: none);
        /// `recv_upto` counts only if this is the receiver's current one.
        your_session: u64,
        /// Highest seq the sender has stored from `your_session` (0: none).
        recv_upto: u64,
        /// Domains the sender serves (its card domains and software domain).
        domains: Vec<Domain>,
    },
    /// A message.
    Data {
        /// Its number on this link direction.
        seq: u64,
        /// Cumulative acknowledgement of the other direction.
        ack: u64,
        /// The message.
        message: Message,
    },
    /// A cumulative acknowledgement.
    Ack {
        /// Everything up to here is stored.
        ack: u64,
    },
    /// The sender closes the link, saying why.
    Close {
        /// Why.
        reason: String,
    },
}

impl Codec for LinkFrame {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Hello {
                host,
                session,
                your_session,
                recv_upto,
                domains,
            } => {
                out.push(0x01);
                host.encode(out);
                out.extend_from_slice(&session.to_be_bytes());
                out.extend_from_slice(&your_session.to_be_bytes());
                out.extend_from_slice(&recv_upto.to_be_bytes());
                out.extend_from_slice(&(domains.len().min(MAX_DOMAINS) as u16).to_be_bytes());
                for d in domains.iter().take(MAX_DOMAINS) {
                    out.extend_from_slice(d.bytes());
                }
            }
            Self::Data { seq, ack, message } => {
                out.push(0x02);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&ack.to_be_bytes());
                message.encode(out);
            }
            Self::Ack { ack } => {
                out.push(0x03);
                out.extend_from_slice(&ack.to_be_bytes());
            }
            Self::Close { reason } => {
                out.push(0x04);
                out.extend_from_slice(reason.as_bytes());
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("link frame op")? {
            0x01 => {
                let host = EntityId::read(r)?;
                let session = r.u64("session")?;
                let your_session = r.u64("your session")?;
                let recv_upto = r.u64("recv_upto")?;
                let n = usize::from(r.u16("domain count")?);
                if n > MAX_DOMAINS {
                    return Err(DecodeError::TooLarge {
                        what: "domain list",
                        len: n,
                        max: MAX_DOMAINS,
                    });
                }
                let mut domains = Vec::with_capacity(n);
                for _ in 0..n {
                    domains.push(Domain::new(r.array("domain")?));
                }
                Self::Hello {
                    host,
                    session,
                    your_session,
                    recv_upto,
                    domains,
                }
            }
            0x02 => Self::Data {
                seq: r.u64("seq")?,
                ack: r.u64("ack")?,
                message: Message::read(r)?,
            },
            0x03 => Self::Ack { ack: r.u64("ack")? },
            0x04 => Self::Close {
                reason: String::from_utf8_lossy(r.rest()).into_owned(),
            },
            op => {
                return Err(DecodeError::Invalid {
                    what: "link frame op",
                    detail: format!("unknown op {op:#04x}"),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mtype;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            LinkFrame::Hello {
                host: EntityId::from_array([1; 16]),
                session: 7,
                your_session: 8,
                recv_upto: 9,
                domains: vec![Domain::new([2; 12]), Domain::new([3; 12])],
            },
            LinkFrame::Data {
                seq: 1,
                ack: 0,
                message: Message::new(
                    EntityId::from_array([1; 16]),
                    EntityId::from_array([2; 16]),
                    Mtype(5),
                    vec![1],
                ),
            },
            LinkFrame::Ack { ack: 42 },
            LinkFrame::Close {
                reason: "bye".into(),
            },
        ];
        for f in frames {
            assert_eq!(LinkFrame::decode(&f.to_bytes()), Ok(f));
        }
    }

    #[test]
    fn hello_with_too_many_domains_is_refused() {
        let mut b = vec![0x01];
        b.extend_from_slice(&[0; 40]);
        b.extend_from_slice(&300u16.to_be_bytes());
        assert!(matches!(
            LinkFrame::decode(&b),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = LinkFrame::decode(&b);
        }
    }
}
