//! What the applet keeps in the card's store: the peers that attested
//! (the records), and the sessions in progress, each as the card's role in
//! it.
//!
//! All of it is bounded, so the applet's share of the card's storage
//! budget is too: at most [`MAX_PEERS`] records (one per peer: a new
//! attestation with the same peer replaces its record; beyond that the
//! oldest is dropped), at most [`MAX_SESSIONS`] sessions in each role (one
//! per peer: a new one replaces it; beyond that the oldest is dropped), and
//! a session is forgotten [`SESSION_SECS`] after it began, by the card's
//! clock. A session this card answered holds the initiator's certificate,
//! at most [`MAX_CERTIFICATE`](crate::msg::MAX_CERTIFICATE) bytes. So the data is never more than 7 KiB,
//! and under 5 KiB with the certificates `tenet card new` makes.
//!
//! The state is encoded as BER-TLV, canonically: the same state always
//! gives the same bytes, so the runtime sees a query (or anything that
//! changed nothing) as no change and does not write the store.

use tenet_proto::EntityId;
use tenet_proto::codec::{Codec, DecodeError, Reader};
use tenet_proto::tlv::{self, Fields, Tag};

use crate::msg::{Nonce, Record};

/// Records kept, one per peer.
pub const MAX_PEERS: usize = 16;

/// Sessions in progress kept in each role, one per peer.
pub const MAX_SESSIONS: usize = 4;

/// Seconds (card time) a session may take before it is forgotten.
pub const SESSION_SECS: u64 = 300;

/// Where a session this card started stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// The hello is out; the reply is awaited.
    AwaitReply,
    /// The responder is verified and the finish is out; its done is
    /// awaited before the card records it.
    AwaitDone {
        /// `h(T)`.
        transcript: [u8; 32],
        /// SHA-256 of the responder's certificate.
        certificate: [u8; 32],
    },
}

/// A session this card started (it is the initiator).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Started {
    /// The responder.
    pub peer: EntityId,
    /// The app that ordered it, which gets the result.
    pub app: EntityId,
    /// This card's nonce `n_a`.
    pub n_a: Nonce,
    /// The card's time when it began.
    pub at: u64,
    /// Where it stands.
    pub phase: Phase,
}

/// A session this card answered (it is the responder): the reply is out,
/// the finish is awaited.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Answered {
    /// The initiator.
    pub peer: EntityId,
    /// The initiator's nonce.
    pub n_a: Nonce,
    /// This card's nonce.
    pub n_b: Nonce,
    /// The initiator's CV certificate, checked when its signature comes.
    pub certificate: Vec<u8>,
    /// `h(T)`.
    pub transcript: [u8; 32],
    /// The card's time when it began.
    pub at: u64,
}

/// The applet's persistent data.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AttestState {
    /// Peers that attested with this card, oldest first.
    pub peers: Vec<Record>,
    /// Sessions this card started, oldest first.
    pub started: Vec<Started>,
    /// Sessions this card answered, oldest first.
    pub answered: Vec<Answered>,
}

/// Puts `item` last, after removing any item `same` matches, and drops the
/// oldest beyond `max`.
fn push_bounded<T>(list: &mut Vec<T>, item: T, max: usize, same: impl Fn(&T) -> bool) {
    list.retain(|x| !same(x));
    list.push(item);
    if list.len() > max {
        list.drain(..list.len() - max);
    }
}

impl AttestState {
    /// Records `r`, replacing any record of the same peer.
    pub fn record(&mut self, r: Record) {
        push_bounded(&mut self.peers, r, MAX_PEERS, |x| x.peer == r.peer);
    }

    /// Keeps `s`, replacing any session this card started with the same
    /// peer.
    pub fn begin(&mut self, s: Started) {
        let peer = s.peer;
        push_bounded(&mut self.started, s, MAX_SESSIONS, |x| x.peer == peer);
    }

    /// Keeps `a`, replacing any session this card answered for the same
    /// initiator.
    pub fn answer(&mut self, a: Answered) {
        let peer = a.peer;
        push_bounded(&mut self.answered, a, MAX_SESSIONS, |x| x.peer == peer);
    }

    /// The session this card started with `peer` under `n_a`, if any.
    pub fn started_with(&self, peer: EntityId, n_a: &Nonce) -> Option<usize> {
        self.started
            .iter()
            .position(|s| s.peer == peer && s.n_a == *n_a)
    }

    /// The session this card answered for `peer` under `n_a`, if any.
    pub fn answered_for(&self, peer: EntityId, n_a: &Nonce) -> Option<usize> {
        self.answered
            .iter()
            .position(|a| a.peer == peer && a.n_a == *n_a)
    }

    /// Forgets the sessions that began more than [`SESSION_SECS`] before
    /// `now`.
    pub fn expire(&mut self, now: u64) {
        let live = |at: u64| now.saturating_sub(at) <= SESSION_SECS;
        self.started.retain(|s| live(s.at));
        self.answered.retain(|a| live(a.at));
    }
}

const T_RECORD: Tag = Tag(0xa1);
const T_STARTED: Tag = Tag(0xa2);
const T_ANSWERED: Tag = Tag(0xa3);

const T_PEER: Tag = Tag(0x80);
const T_APP: Tag = Tag(0x81);
const T_NA: Tag = Tag(0x82);
const T_AT: Tag = Tag(0x83);
const T_TRANSCRIPT: Tag = Tag(0x84);
const T_CERT_HASH: Tag = Tag(0x85);
const T_NB: Tag = Tag(0x86);
const T_CERT: Tag = Tag(0x87);

fn id_at(f: &Fields<'_>, t: Tag, what: &'static str) -> Result<EntityId, DecodeError> {
    Ok(EntityId::from_array(f.require_array(t, what)?))
}

fn u64_at(f: &Fields<'_>, t: Tag, what: &'static str) -> Result<u64, DecodeError> {
    Ok(u64::from_be_bytes(f.require_array(t, what)?))
}

impl Codec for Started {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_PEER, &self.peer.to_array());
        tlv::write(out, T_APP, &self.app.to_array());
        tlv::write(out, T_NA, &self.n_a);
        tlv::write(out, T_AT, &self.at.to_be_bytes());
        if let Phase::AwaitDone {
            transcript,
            certificate,
        } = &self.phase
        {
            tlv::write(out, T_TRANSCRIPT, transcript);
            tlv::write(out, T_CERT_HASH, certificate);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(
            &[T_PEER, T_APP, T_NA, T_AT, T_TRANSCRIPT, T_CERT_HASH],
            "started session",
        )?;
        let phase = match (f.get(T_TRANSCRIPT), f.get(T_CERT_HASH)) {
            (None, None) => Phase::AwaitReply,
            _ => Phase::AwaitDone {
                transcript: f.require_array(T_TRANSCRIPT, "transcript hash")?,
                certificate: f.require_array(T_CERT_HASH, "certificate hash")?,
            },
        };
        Ok(Self {
            peer: id_at(&f, T_PEER, "peer")?,
            app: id_at(&f, T_APP, "app")?,
            n_a: f.require_array(T_NA, "n_a")?,
            at: u64_at(&f, T_AT, "time")?,
            phase,
        })
    }
}

impl Codec for Answered {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_PEER, &self.peer.to_array());
        tlv::write(out, T_NA, &self.n_a);
        tlv::write(out, T_NB, &self.n_b);
        tlv::write(out, T_CERT, &self.certificate);
        tlv::write(out, T_TRANSCRIPT, &self.transcript);
        tlv::write(out, T_AT, &self.at.to_be_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(
            &[T_PEER, T_NA, T_NB, T_CERT, T_TRANSCRIPT, T_AT],
            "answered session",
        )?;
        Ok(Self {
            peer: id_at(&f, T_PEER, "peer")?,
            n_a: f.require_array(T_NA, "n_a")?,
            n_b: f.require_array(T_NB, "n_b")?,
            certificate: f.require(T_CERT, "certificate")?.to_vec(),
            transcript: f.require_array(T_TRANSCRIPT, "transcript hash")?,
            at: u64_at(&f, T_AT, "time")?,
        })
    }
}

impl Codec for AttestState {
    fn encode(&self, out: &mut Vec<u8>) {
        for r in &self.peers {
            tlv::write_codec(out, T_RECORD, r);
        }
        for s in &self.started {
            tlv::write_codec(out, T_STARTED, s);
        }
        for a in &self.answered {
            tlv::write_codec(out, T_ANSWERED, a);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut state = Self::default();
        for t in tlv::parse_all(r.rest())? {
            match t.tag {
                T_RECORD => state.peers.push(Record::decode(t.value)?),
                T_STARTED => state.started.push(Started::decode(t.value)?),
                T_ANSWERED => state.answered.push(Answered::decode(t.value)?),
                other => {
                    return Err(DecodeError::Invalid {
                        what: "attestation state",
                        detail: format!("unexpected tag {:#x}", other.0),
                    });
                }
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_proto::{Domain, Port};

    fn id(b: u8) -> EntityId {
        EntityId::new(Domain::new([b; 12]), Port::new(0))
    }

    fn record(b: u8, at: u64) -> Record {
        Record {
            peer: id(b),
            certificate: [b; 32],
            transcript: [b ^ 0xff; 32],
            at,
        }
    }

    fn started(b: u8, at: u64) -> Started {
        Started {
            peer: id(b),
            app: EntityId::new(Domain::new([0xaa; 12]), Port::new(1)),
            n_a: [b; 32],
            at,
            phase: Phase::AwaitReply,
        }
    }

    fn answered(b: u8, at: u64) -> Answered {
        Answered {
            peer: id(b),
            n_a: [b; 32],
            n_b: [b ^ 1; 32],
            certificate: vec![b; 400],
            transcript: [b ^ 2; 32],
            at,
        }
    }

    #[test]
    fn the_state_round_trips_and_empty_is_no_bytes() {
        assert!(AttestState::default().to_bytes().is_empty());
        let mut s = AttestState::default();
        s.record(record(1, 10));
        s.begin(started(2, 20));
        s.begin(Started {
            phase: Phase::AwaitDone {
                transcript: [5; 32],
                certificate: [6; 32],
            },
            ..started(3, 30)
        });
        s.answer(answered(4, 40));
        assert_eq!(AttestState::decode(&s.to_bytes()).unwrap(), s);
    }

    #[test]
    fn one_record_per_peer_and_the_oldest_go_first() {
        let mut s = AttestState::default();
        for b in 0..(MAX_PEERS as u8 + 3) {
            s.record(record(b, u64::from(b)));
        }
        assert_eq!(s.peers.len(), MAX_PEERS);
        assert_eq!(s.peers[0].peer, id(3), "the three oldest were dropped");
        s.record(record(5, 99));
        assert_eq!(s.peers.len(), MAX_PEERS);
        assert_eq!(s.peers.iter().filter(|r| r.peer == id(5)).count(), 1);
        assert_eq!(
            s.peers.last().unwrap().at,
            99,
            "the new record replaced the old"
        );
    }

    #[test]
    fn sessions_are_bounded_per_role_and_expire() {
        let mut s = AttestState::default();
        for b in 0..10 {
            s.begin(started(b, 1000));
            s.answer(answered(b, 1000 + u64::from(b)));
        }
        assert_eq!(s.started.len(), MAX_SESSIONS);
        assert_eq!(s.answered.len(), MAX_SESSIONS);
        // A new session with the same peer replaces the old one.
        s.answer(answered(9, 1100));
        assert_eq!(s.answered.len(), MAX_SESSIONS);
        assert!(s.answered_for(id(9), &[9; 32]).is_some());
        s.expire(1000 + SESSION_SECS + 8);
        assert!(s.started.is_empty());
        assert_eq!(
            s.answered.iter().map(|a| a.at).collect::<Vec<_>>(),
            [1008, 1100],
            "only the sessions younger than SESSION_SECS are left"
        );
    }

    /// The state with every list full, sessions awaiting their last
    /// message, and certificates of `cert_len` bytes.
    fn full(cert_len: usize) -> usize {
        let mut s = AttestState::default();
        for b in 0..=255u8 {
            s.record(record(b, u64::MAX));
            s.begin(Started {
                phase: Phase::AwaitDone {
                    transcript: [b; 32],
                    certificate: [b; 32],
                },
                ..started(b, u64::MAX)
            });
            s.answer(Answered {
                certificate: vec![b; cert_len],
                ..answered(b, u64::MAX)
            });
        }
        s.to_bytes().len()
    }

    #[test]
    fn a_full_state_fits_the_documented_bounds() {
        let most = full(crate::msg::MAX_CERTIFICATE);
        assert!(most <= 7 * 1024, "{most} bytes");
        let usual = full(197);
        assert!(usual < 5 * 1024, "{usual} bytes");
    }

    #[test]
    fn a_corrupt_state_is_a_decode_error() {
        assert!(AttestState::decode(&[0xa4, 0]).is_err());
        assert!(AttestState::decode(&[0xa1, 1, 0]).is_err());
    }
}
