//! Presenting vouchers without giving them (RFC 4154's present): a
//! verifier sends a fresh challenge, the holder's card answers with a
//! signed statement "card C holds at least N of CLASS at time T", bound to
//! the challenge and to the verifier's id. Nothing moves.
//!
//! The holder's wallet orders the statement ([`PRESENT`], privileged: the
//! holder consents to show); the card checks that it holds the amount and
//! signs. The verifier checks the signature against the CA, that the
//! statement names it and a challenge it issued and has not seen answered
//! yet ([`Challenges`]), and that the amount is what it asked for: a
//! statement replayed, for another verifier, or for another challenge is
//! refused. All pure; the verifier's wallet-side loop is in
//! `tenet_client::wallet`.

use std::collections::VecDeque;

use tenet_proto::EntityId;
use tenet_proto::codec::{Codec, DecodeError, Reader};
use tenet_proto::tlv::{self, Fields, Tag};

use crate::crypto::VerifyError;
use crate::model::Amount;
use crate::msg::amount_at;
pub use crate::mtype::{PRESENT, PRESENTATION};

const T_HOLDER: Tag = Tag(0x80);
const T_VERIFIER: Tag = Tag(0x81);
const T_CHALLENGE: Tag = Tag(0x82);
const T_TIME: Tag = Tag(0x83);
const T_SIG: Tag = Tag(0x84);
const T_CERT: Tag = Tag(0x85);
const T_AMOUNT: Tag = Tag(0xa0);

/// A verifier's challenge: 16 random bytes.
pub type Challenge = [u8; 16];

/// The holder's wallet's order to its card ([`PRESENT`]): show `amount`
/// to `verifier`, answering `challenge`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PresentOrder {
    /// Who asked, and gets the statement.
    pub verifier: EntityId,
    /// The verifier's challenge.
    pub challenge: Challenge,
    /// At least this much of its class.
    pub amount: Amount,
}

impl Codec for PresentOrder {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_VERIFIER, &self.verifier.to_array());
        tlv::write(out, T_CHALLENGE, &self.challenge);
        tlv::write_codec(out, T_AMOUNT, &self.amount);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_VERIFIER, T_CHALLENGE, T_AMOUNT], "present order")?;
        Ok(Self {
            verifier: EntityId::from_array(f.require_array(T_VERIFIER, "verifier")?),
            challenge: f.require_array(T_CHALLENGE, "challenge")?,
            amount: amount_at(&f, T_AMOUNT, "amount")?,
        })
    }
}

/// The card's signed statement ([`PRESENTATION`]): `holder` holds at
/// least `amount` at card time `time`, for `verifier`'s `challenge`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Presentation {
    /// The card.
    pub holder: EntityId,
    /// The verifier it answers.
    pub verifier: EntityId,
    /// The verifier's challenge.
    pub challenge: Challenge,
    /// At least this much of its class.
    pub amount: Amount,
    /// The card's time (seconds since the Unix epoch).
    pub time: u64,
    /// The card's signature over [`Presentation::signed_bytes`].
    pub signature: Vec<u8>,
    /// The card's certificate.
    pub certificate: Vec<u8>,
}

impl Presentation {
    /// The bytes the card signs: domain-separated from every exchange
    /// message, so no statement can stand for an agreement or the like.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = b"tenet-present".to_vec();
        b.extend_from_slice(&self.holder.to_array());
        b.extend_from_slice(&self.verifier.to_array());
        b.extend_from_slice(&self.challenge);
        b.extend_from_slice(&self.time.to_be_bytes());
        self.amount.encode(&mut b);
        b
    }
}

impl Codec for Presentation {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_HOLDER, &self.holder.to_array());
        tlv::write(out, T_VERIFIER, &self.verifier.to_array());
        tlv::write(out, T_CHALLENGE, &self.challenge);
        tlv::write_codec(out, T_AMOUNT, &self.amount);
        tlv::write(out, T_TIME, &self.time.to_be_bytes());
        tlv::write(out, T_SIG, &self.signature);
        tlv::write(out, T_CERT, &self.certificate);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(
            &[
                T_HOLDER,
                T_VERIFIER,
                T_CHALLENGE,
                T_AMOUNT,
                T_TIME,
                T_SIG,
                T_CERT,
            ],
            "presentation",
        )?;
        Ok(Self {
            holder: EntityId::from_array(f.require_array(T_HOLDER, "holder")?),
            verifier: EntityId::from_array(f.require_array(T_VERIFIER, "verifier")?),
            challenge: f.require_array(T_CHALLENGE, "challenge")?,
            amount: amount_at(&f, T_AMOUNT, "amount")?,
            time: u64::from_be_bytes(f.require_array(T_TIME, "time")?),
            signature: f.require(T_SIG, "signature")?.to_vec(),
            certificate: f.require(T_CERT, "certificate")?.to_vec(),
        })
    }
}

/// Why a verifier refuses a presentation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresentError {
    /// It came from another sender than the card it names.
    #[error("sent by {sender}, but names card {holder}")]
    NotFromHolder {
        /// The message's sender.
        sender: EntityId,
        /// The card the statement names.
        holder: EntityId,
    },
    /// It answers another verifier.
    #[error("made for verifier {0}, not this one")]
    OtherVerifier(EntityId),
    /// Its challenge is not one this verifier issued, or was answered
    /// already (a replay).
    #[error("its challenge is not one this verifier issued and still waits on (replayed?)")]
    UnknownChallenge,
    /// It shows another class or less than asked.
    #[error("it shows {shown}, not at least {wanted}")]
    NotEnough {
        /// What it shows.
        shown: Amount,
        /// What the verifier asked for.
        wanted: Amount,
    },
    /// The signature or the certificate does not verify.
    #[error("signature: {0}")]
    Signature(VerifyError),
}

/// The challenges a verifier issued and waits on: each answers one
/// presentation, once. At most [`Challenges::MAX`] are remembered (the
/// oldest is forgotten first, and a statement for it is then refused).
#[derive(Debug, Default, Clone)]
pub struct Challenges {
    open: VecDeque<Challenge>,
}

impl Challenges {
    /// Challenges remembered at most.
    pub const MAX: usize = 64;

    /// Issues a fresh random challenge and remembers it.
    pub fn fresh(&mut self) -> Challenge {
        use ring::rand::SecureRandom;
        let mut c = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut c)
            .expect("the operating system provides randomness");
        self.issue(c);
        c
    }

    /// Remembers `c`, a fresh random challenge, as issued.
    pub fn issue(&mut self, c: Challenge) {
        if self.open.len() == Self::MAX {
            self.open.pop_front();
        }
        self.open.push_back(c);
    }

    /// Checks presentation `p` that `sender` sent to verifier `me`, for
    /// at least `wanted`, and consumes its challenge if it verifies:
    /// the same statement again is refused. `check(signer, certificate,
    /// message, signature)` checks the card's certificate against the CA
    /// and its signature ([`ca_check`], or a test's crypto).
    pub fn verify(
        &mut self,
        check: impl Fn(EntityId, &[u8], &[u8], &[u8]) -> Result<(), VerifyError>,
        me: EntityId,
        sender: EntityId,
        p: &Presentation,
        wanted: &Amount,
    ) -> Result<(), PresentError> {
        if sender != p.holder {
            return Err(PresentError::NotFromHolder {
                sender,
                holder: p.holder,
            });
        }
        if p.verifier != me {
            return Err(PresentError::OtherVerifier(p.verifier));
        }
        let Some(at) = self.open.iter().position(|c| *c == p.challenge) else {
            return Err(PresentError::UnknownChallenge);
        };
        if p.amount.class != wanted.class || p.amount.quantity < wanted.quantity {
            return Err(PresentError::NotEnough {
                shown: p.amount.clone(),
                wanted: wanted.clone(),
            });
        }
        check(p.holder, &p.certificate, &p.signed_bytes(), &p.signature)
            .map_err(PresentError::Signature)?;
        self.open.remove(at);
        Ok(())
    }
}

/// The check of a card's CV certificate (from the CA of the anchor `ca`,
/// [`tenet_pki::cv::Anchor`] bytes, valid now,
/// naming the signer) and of its signature, for [`Challenges::verify`].
pub fn ca_check(
    ca: &[u8],
) -> impl Fn(EntityId, &[u8], &[u8], &[u8]) -> Result<(), VerifyError> + '_ {
    move |signer, cert, msg, sig| {
        let signer = tenet_pki::Signer::card(signer);
        tenet_pki::verify_with_ca(ca, pki_types::UnixTime::now(), signer, cert, msg, sig)
    }
}
