//! The attestation's messages as eTP params (BER-TLV), their mtypes, and
//! the transcript both cards sign.
//!
//! | mtype | name | from → to | param |
//! |-------|------|-----------|-------|
//! | `8a01` | attest-start (privileged) | P_A → S_A | [`Start`] |
//! | `8a02` | attest-hello | S_A → S_B | [`Hello`] |
//! | `8a03` | attest-reply | S_B → S_A | [`Reply`] |
//! | `8a04` | attest-finish | S_A → S_B | [`Finish`] |
//! | `8a05` | attest-done | S_B → S_A | [`Done`] |
//! | `8a06` | attest-abort | either card → the other | [`Abort`] |
//! | `8a07` | attest-result | S_A → P_A | [`AttestResult`] |
//! | `8a08` | attest-query (privileged) | app → its card | none |
//! | `8a09` | attest-peers | card → app | [`Peers`] |
//!
//! The mtypes are in the range `0x8000-0xffff` that `tenet_proto::mtype`
//! leaves free for applications; they are not in the framework's registry
//! (which names the framework's own ranges), so `tenet tap` prints them in
//! hex.
//!
//! The transcript `T` is both ids, both nonces and both certificates
//! ([`Transcript`]); its hash `h(T)` is what each card records. The
//! responder signs `"tenet-attest-responder" ‖ h(T)`, the initiator
//! `"tenet-attest-initiator" ‖ h(T)`: the same transcript, with a label so
//! that neither signature can stand in for the other.

use ring::digest;
use tenet_proto::codec::{Codec, DecodeError, Reader};
use tenet_proto::tlv::{self, Fields, Tag};
use tenet_proto::{EntityId, Mtype};

/// attest-start (privileged): an app orders its card to attest with a peer.
pub const START: Mtype = Mtype(0x8a01);
/// attest-hello: the initiator's nonce and certificate.
pub const HELLO: Mtype = Mtype(0x8a02);
/// attest-reply: the responder's nonce, certificate and signature.
pub const REPLY: Mtype = Mtype(0x8a03);
/// attest-finish: the initiator's signature.
pub const FINISH: Mtype = Mtype(0x8a04);
/// attest-done: the responder recorded the initiator.
pub const DONE: Mtype = Mtype(0x8a05);
/// attest-abort: a card refused its peer; the session ends on both sides.
pub const ABORT: Mtype = Mtype(0x8a06);
/// attest-result: how a session the app started ended.
pub const RESULT: Mtype = Mtype(0x8a07);
/// attest-query (privileged): who has attested with this card.
pub const QUERY: Mtype = Mtype(0x8a08);
/// attest-peers: the answer to attest-query.
pub const PEERS: Mtype = Mtype(0x8a09);

/// Every mtype of the attestation.
pub const ALL: [Mtype; 9] = [
    START, HELLO, REPLY, FINISH, DONE, ABORT, RESULT, QUERY, PEERS,
];

/// The mtypes a card accepts only from authenticated apps of its own
/// domain: starting a session (it uses the card's key) and asking who
/// attested.
pub const PRIVILEGED: [Mtype; 2] = [START, QUERY];

/// A session nonce.
pub type Nonce = [u8; NONCE_LEN];

/// Bytes in a nonce.
pub const NONCE_LEN: usize = 32;

/// The largest certificate a card takes in a hello or a reply. The CV
/// certificates `tenet card new` makes are 197 bytes; the bound
/// keeps what a responder stores for a session it answered small, whatever
/// a stranger sends it.
pub const MAX_CERTIFICATE: usize = 1024;

/// The longest reason text an abort or a result carries; longer ones are
/// cut (at a character boundary).
pub const MAX_REASON: usize = 240;

const T_0: Tag = Tag(0x80);
const T_1: Tag = Tag(0x81);
const T_2: Tag = Tag(0x82);
const T_3: Tag = Tag(0x83);
const T_4: Tag = Tag(0x84);
const T_RECORD: Tag = Tag(0xa0);

fn id_at(f: &Fields<'_>, t: Tag, what: &'static str) -> Result<EntityId, DecodeError> {
    Ok(EntityId::from_array(f.require_array(t, what)?))
}

fn u64_at(f: &Fields<'_>, t: Tag, what: &'static str) -> Result<u64, DecodeError> {
    Ok(u64::from_be_bytes(f.require_array(t, what)?))
}

fn text_at(f: &Fields<'_>, t: Tag, what: &'static str) -> Result<String, DecodeError> {
    let v = f.require(t, what)?;
    if v.len() > MAX_REASON {
        return Err(DecodeError::TooLarge {
            what,
            len: v.len(),
            max: MAX_REASON,
        });
    }
    String::from_utf8(v.to_vec()).map_err(|_| DecodeError::Invalid {
        what,
        detail: "not UTF-8".into(),
    })
}

fn certificate_at(f: &Fields<'_>, t: Tag, what: &'static str) -> Result<Vec<u8>, DecodeError> {
    let v = f.require(t, what)?;
    if v.is_empty() {
        return Err(DecodeError::Invalid {
            what,
            detail: "empty".into(),
        });
    }
    if v.len() > MAX_CERTIFICATE {
        return Err(DecodeError::TooLarge {
            what,
            len: v.len(),
            max: MAX_CERTIFICATE,
        });
    }
    Ok(v.to_vec())
}

/// `text` cut to at most [`MAX_REASON`] bytes, at a character boundary.
pub fn reason(text: &str) -> String {
    let mut end = text.len().min(MAX_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// SHA-256.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// attest-start: attest with `peer`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Start {
    /// The card to attest with.
    pub peer: EntityId,
}

impl Codec for Start {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_0, &self.peer.to_array());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_0], "attest-start")?;
        Ok(Self {
            peer: id_at(&f, T_0, "peer")?,
        })
    }
}

/// attest-hello: the initiator's nonce `n_a` and CV certificate.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Hello {
    /// `n_a`.
    pub n_a: Nonce,
    /// The initiator's certificate.
    pub certificate: Vec<u8>,
}

impl Codec for Hello {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_0, &self.n_a);
        tlv::write(out, T_1, &self.certificate);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_0, T_1], "attest-hello")?;
        Ok(Self {
            n_a: f.require_array(T_0, "n_a")?,
            certificate: certificate_at(&f, T_1, "initiator certificate")?,
        })
    }
}

/// attest-reply: `n_a` again (it names the session), the responder's nonce
/// `n_b`, its certificate, and its signature over the transcript.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reply {
    /// `n_a`.
    pub n_a: Nonce,
    /// `n_b`.
    pub n_b: Nonce,
    /// The responder's certificate.
    pub certificate: Vec<u8>,
    /// ECDSA P-256 (raw r || s) over [`responder_signs`].
    pub signature: Vec<u8>,
}

impl Codec for Reply {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_0, &self.n_a);
        tlv::write(out, T_1, &self.n_b);
        tlv::write(out, T_2, &self.certificate);
        tlv::write(out, T_3, &self.signature);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_0, T_1, T_2, T_3], "attest-reply")?;
        Ok(Self {
            n_a: f.require_array(T_0, "n_a")?,
            n_b: f.require_array(T_1, "n_b")?,
            certificate: certificate_at(&f, T_2, "responder certificate")?,
            signature: f.require(T_3, "responder signature")?.to_vec(),
        })
    }
}

/// attest-finish: both nonces (they name the session) and the initiator's
/// signature over the same transcript.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Finish {
    /// `n_a`.
    pub n_a: Nonce,
    /// `n_b`.
    pub n_b: Nonce,
    /// ECDSA P-256 (raw r || s) over [`initiator_signs`].
    pub signature: Vec<u8>,
}

impl Codec for Finish {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_0, &self.n_a);
        tlv::write(out, T_1, &self.n_b);
        tlv::write(out, T_2, &self.signature);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_0, T_1, T_2], "attest-finish")?;
        Ok(Self {
            n_a: f.require_array(T_0, "n_a")?,
            n_b: f.require_array(T_1, "n_b")?,
            signature: f.require(T_2, "initiator signature")?.to_vec(),
        })
    }
}

/// attest-done: the responder recorded the initiator under `h(T)`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Done {
    /// `n_a`.
    pub n_a: Nonce,
    /// `h(T)`.
    pub transcript: [u8; 32],
}

impl Codec for Done {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_0, &self.n_a);
        tlv::write(out, T_1, &self.transcript);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_0, T_1], "attest-done")?;
        Ok(Self {
            n_a: f.require_array(T_0, "n_a")?,
            transcript: f.require_array(T_1, "transcript hash")?,
        })
    }
}

/// attest-abort: the session named by `n_a` ends; `reason` says why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Abort {
    /// `n_a`.
    pub n_a: Nonce,
    /// Why, in words (at most [`MAX_REASON`] bytes).
    pub reason: String,
}

impl Codec for Abort {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_0, &self.n_a);
        tlv::write(out, T_1, reason(&self.reason).as_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_0, T_1], "attest-abort")?;
        Ok(Self {
            n_a: f.require_array(T_0, "n_a")?,
            reason: text_at(&f, T_1, "abort reason")?,
        })
    }
}

/// How a session ended, as the card tells the app that started it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Both cards verified each other and recorded the session.
    Attested {
        /// `h(T)`, as both cards recorded it.
        transcript: [u8; 32],
        /// SHA-256 of the peer's CV certificate.
        certificate: [u8; 32],
    },
    /// This card refused the peer (its certificate or signature); nothing
    /// was recorded, and the peer was told.
    Refused {
        /// Why.
        reason: String,
    },
    /// The peer refused this card, or ended the session; nothing was
    /// recorded here.
    Aborted {
        /// Why, as the peer put it.
        reason: String,
    },
}

/// attest-result: how the session with `peer` ended.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AttestResult {
    /// The peer.
    pub peer: EntityId,
    /// How it ended.
    pub outcome: Outcome,
}

impl Codec for AttestResult {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_0, &self.peer.to_array());
        match &self.outcome {
            Outcome::Attested {
                transcript,
                certificate,
            } => {
                tlv::write(out, T_1, &[0]);
                tlv::write(out, T_2, transcript);
                tlv::write(out, T_3, certificate);
            }
            Outcome::Refused { reason: r } => {
                tlv::write(out, T_1, &[1]);
                tlv::write(out, T_4, reason(r).as_bytes());
            }
            Outcome::Aborted { reason: r } => {
                tlv::write(out, T_1, &[2]);
                tlv::write(out, T_4, reason(r).as_bytes());
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        let peer = id_at(&f, T_0, "peer")?;
        let [code] = f.require_array(T_1, "outcome")?;
        let outcome = match code {
            0 => {
                f.only(&[T_0, T_1, T_2, T_3], "attest-result")?;
                Outcome::Attested {
                    transcript: f.require_array(T_2, "transcript hash")?,
                    certificate: f.require_array(T_3, "certificate hash")?,
                }
            }
            1 | 2 => {
                f.only(&[T_0, T_1, T_4], "attest-result")?;
                let reason = text_at(&f, T_4, "reason")?;
                if code == 1 {
                    Outcome::Refused { reason }
                } else {
                    Outcome::Aborted { reason }
                }
            }
            c => {
                return Err(DecodeError::Invalid {
                    what: "outcome",
                    detail: format!("unknown code {c}"),
                });
            }
        };
        Ok(Self { peer, outcome })
    }
}

/// One peer that attested with a card: what the card recorded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Record {
    /// The peer's id.
    pub peer: EntityId,
    /// SHA-256 of the peer's CV certificate.
    pub certificate: [u8; 32],
    /// `h(T)` of the session; both cards record the same.
    pub transcript: [u8; 32],
    /// The card's time when it recorded the peer (seconds since the Unix
    /// epoch).
    pub at: u64,
}

impl Codec for Record {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_0, &self.peer.to_array());
        tlv::write(out, T_1, &self.certificate);
        tlv::write(out, T_2, &self.transcript);
        tlv::write(out, T_3, &self.at.to_be_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_0, T_1, T_2, T_3], "attestation record")?;
        Ok(Self {
            peer: id_at(&f, T_0, "peer")?,
            certificate: f.require_array(T_1, "certificate hash")?,
            transcript: f.require_array(T_2, "transcript hash")?,
            at: u64_at(&f, T_3, "time")?,
        })
    }
}

/// attest-peers: every peer the card has a record of, oldest first.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Peers(pub Vec<Record>);

impl Codec for Peers {
    fn encode(&self, out: &mut Vec<u8>) {
        for r in &self.0 {
            tlv::write_codec(out, T_RECORD, r);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let items = tlv::parse_all(r.rest())?;
        let mut records = Vec::with_capacity(items.len());
        for t in items {
            if t.tag != T_RECORD {
                return Err(DecodeError::Invalid {
                    what: "attest-peers",
                    detail: format!("unexpected tag {:#x}", t.tag.0),
                });
            }
            records.push(Record::decode(t.value)?);
        }
        Ok(Self(records))
    }
}

/// The session transcript `T`: both ids, both nonces, both certificates.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    /// The card that started the session.
    pub initiator: EntityId,
    /// The card it asked.
    pub responder: EntityId,
    /// `n_a`.
    pub n_a: &'a Nonce,
    /// `n_b`.
    pub n_b: &'a Nonce,
    /// The initiator's CV certificate.
    pub initiator_certificate: &'a [u8],
    /// The responder's CV certificate.
    pub responder_certificate: &'a [u8],
}

impl Transcript<'_> {
    /// Calls `f` with each part of `T`, in order.
    fn each_part(&self, mut f: impl FnMut(&[u8])) {
        f(b"tenet-attest-v1");
        f(&self.initiator.to_array());
        f(&self.responder.to_array());
        f(self.n_a);
        f(self.n_b);
        f(self.initiator_certificate);
        f(self.responder_certificate);
    }

    /// `h(T)`: SHA-256 of the parts, each after its length (u32 BE), so
    /// that no two transcripts hash the same bytes.
    pub fn hash(&self) -> [u8; 32] {
        let mut c = digest::Context::new(&digest::SHA256);
        self.each_part(|p| {
            c.update(&(p.len() as u32).to_be_bytes());
            c.update(p);
        });
        c.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
    }

    /// SHA-256 blocks [`Transcript::hash`] takes (for a card's timing
    /// model).
    pub fn hash_blocks(&self) -> u64 {
        let mut n = 0u64;
        self.each_part(|p| n += 4 + p.len() as u64);
        (n + 9).div_ceil(64)
    }
}

/// The bytes the responder signs: its label and `h(T)`.
pub fn responder_signs(transcript: &[u8; 32]) -> Vec<u8> {
    [&b"tenet-attest-responder"[..], transcript].concat()
}

/// The bytes the initiator signs: its label and `h(T)`.
pub fn initiator_signs(transcript: &[u8; 32]) -> Vec<u8> {
    [&b"tenet-attest-initiator"[..], transcript].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_proto::{Domain, Port};

    fn id(b: u8, p: u32) -> EntityId {
        EntityId::new(Domain::new([b; 12]), Port::new(p))
    }

    #[test]
    fn every_param_round_trips() {
        let s = Start { peer: id(1, 0) };
        assert_eq!(Start::decode(&s.to_bytes()).unwrap(), s);
        let h = Hello {
            n_a: [1; 32],
            certificate: vec![0x30, 1, 2],
        };
        assert_eq!(Hello::decode(&h.to_bytes()).unwrap(), h);
        let r = Reply {
            n_a: [1; 32],
            n_b: [2; 32],
            certificate: vec![3; 300],
            signature: vec![4; 71],
        };
        assert_eq!(Reply::decode(&r.to_bytes()).unwrap(), r);
        let f = Finish {
            n_a: [1; 32],
            n_b: [2; 32],
            signature: vec![5; 72],
        };
        assert_eq!(Finish::decode(&f.to_bytes()).unwrap(), f);
        let d = Done {
            n_a: [1; 32],
            transcript: [6; 32],
        };
        assert_eq!(Done::decode(&d.to_bytes()).unwrap(), d);
        let a = Abort {
            n_a: [1; 32],
            reason: "no".into(),
        };
        assert_eq!(Abort::decode(&a.to_bytes()).unwrap(), a);
        for outcome in [
            Outcome::Attested {
                transcript: [7; 32],
                certificate: [8; 32],
            },
            Outcome::Refused {
                reason: "bad".into(),
            },
            Outcome::Aborted {
                reason: "worse".into(),
            },
        ] {
            let r = AttestResult {
                peer: id(2, 0),
                outcome,
            };
            assert_eq!(AttestResult::decode(&r.to_bytes()).unwrap(), r);
        }
        let p = Peers(vec![
            Record {
                peer: id(3, 0),
                certificate: [9; 32],
                transcript: [10; 32],
                at: 1_800_000_000,
            };
            2
        ]);
        assert_eq!(Peers::decode(&p.to_bytes()).unwrap(), p);
    }

    #[test]
    fn malformed_params_are_decode_errors() {
        assert!(Start::decode(&[]).is_err());
        assert!(Hello::decode(&[0x80, 1, 0]).is_err(), "short nonce");
        let mut h = Hello {
            n_a: [1; 32],
            certificate: vec![1],
        }
        .to_bytes();
        h.extend_from_slice(&[0x85, 0]);
        assert!(Hello::decode(&h).is_err(), "unknown tag");
        let empty_cert = Hello {
            n_a: [1; 32],
            certificate: vec![],
        }
        .to_bytes();
        assert!(Hello::decode(&empty_cert).is_err());
        let huge_cert = Hello {
            n_a: [1; 32],
            certificate: vec![0x30; MAX_CERTIFICATE + 1],
        }
        .to_bytes();
        assert!(Hello::decode(&huge_cert).is_err());
        let mut long = Vec::new();
        tlv::write(&mut long, T_0, &[1; 32]);
        tlv::write(&mut long, T_1, &[b'x'; MAX_REASON + 1]);
        assert!(Abort::decode(&long).is_err(), "reason too long");
        assert!(Peers::decode(&[0x80, 0]).is_err(), "not a record");
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_REASON);
        let cut = reason(&long);
        assert!(cut.len() <= MAX_REASON);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn every_part_of_the_transcript_changes_its_hash() {
        let (a, b) = (id(1, 0), id(2, 0));
        let base = Transcript {
            initiator: a,
            responder: b,
            n_a: &[1; 32],
            n_b: &[2; 32],
            initiator_certificate: b"cert a",
            responder_certificate: b"cert b",
        };
        let h = base.hash();
        let variants = [
            Transcript {
                initiator: b,
                responder: a,
                ..base
            },
            Transcript {
                n_a: &[3; 32],
                ..base
            },
            Transcript {
                n_b: &[3; 32],
                ..base
            },
            Transcript {
                initiator_certificate: b"cert c",
                ..base
            },
            Transcript {
                responder_certificate: b"cert c",
                ..base
            },
            // The length prefixes: moving a byte between certificates.
            Transcript {
                initiator_certificate: b"cert ac",
                responder_certificate: b"ert b",
                ..base
            },
        ];
        for v in variants {
            assert_ne!(v.hash(), h, "{v:?}");
        }
        assert_ne!(responder_signs(&h), initiator_signs(&h));
    }
}
