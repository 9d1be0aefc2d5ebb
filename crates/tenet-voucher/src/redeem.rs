//! Redeeming vouchers at their issuer (RFC 4154's consume), with a receipt.
//!
//! A redemption is the exchange with nothing wanted back and the vouchers
//! destroyed, not credited: the holder's card (`S_A`) offers them to the
//! issuer's card, or to a redeemer card the issuer's card delegated
//! ([`Delegation`]), marking the offer as a redemption naming the TTP both
//! cards use. The redeemer's agreement `m2`, its signature over the offer
//! and `h(n2)`, is the receipt's signed part; it counts only with the proof
//! that the run completed: `n2` itself (the commitment `m4`, which the
//! redeemer's card sends only once it destroyed the vouchers) or the TTP's
//! resolve admission for the run. An aborted redemption gives the holder
//! its vouchers back and neither `n2` nor a resolve admission, so there is
//! no receipt without the vouchers gone, and none for vouchers kept.
//!
//! A redemption's id is `n2` hashed under its own label (`tenet-redeem-n2`),
//! so the TTP keeps its decisions apart from exchanges' and gifts'.

use std::fmt;

use tenet_proto::EntityId;
use tenet_proto::codec::{Codec, DecodeError, Reader};
use tenet_proto::tlv::{self, Fields, Tag};

use crate::crypto::VerifyError;
use crate::model::VoucherClass;
use crate::msg::{Admission, Agreement, ExchangeId, Kind, Offer};
use tenet_pki::Signer;

pub use crate::mtype::{DELEGATE, DELEGATION, INSTALL_DELEGATION};

/// A check of a signer's certificate (from the CA, naming the signer in
/// its role) and of its signature over a message: `check(signer,
/// certificate, message, signature)`.
pub type Check<'a> = dyn Fn(Signer, &[u8], &[u8], &[u8]) -> Result<(), VerifyError> + 'a;

/// Most delegations a redeemer card holds (one per class).
pub const MAX_DELEGATIONS: usize = 16;

const T_A: Tag = Tag(0x80);
const T_B: Tag = Tag(0x81);
const T_C: Tag = Tag(0x82);
const T_D: Tag = Tag(0x83);
const T_E: Tag = Tag(0x84);
const T_CLASS: Tag = Tag(0xa0);
const T_OFFER: Tag = Tag(0xa1);
const T_AGREEMENT: Tag = Tag(0xa2);
const T_ADMISSION: Tag = Tag(0xa3);

fn id_at(f: &Fields<'_>, t: Tag, what: &'static str) -> Result<EntityId, DecodeError> {
    Ok(EntityId::from_array(f.require_array(t, what)?))
}

/// The issuer's wallet's order to its card ([`DELEGATE`], privileged):
/// let `redeemer` redeem `class` until the card time `until`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DelegateOrder {
    /// The redeemer's card.
    pub redeemer: EntityId,
    /// The class, of the issuer card's own domain.
    pub class: VoucherClass,
    /// Until when (seconds since the Unix epoch, card time).
    pub until: u64,
}

impl Codec for DelegateOrder {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_A, &self.redeemer.to_array());
        tlv::write_codec(out, T_CLASS, &self.class);
        tlv::write(out, T_B, &self.until.to_be_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_A, T_CLASS, T_B], "delegate order")?;
        Ok(Self {
            redeemer: id_at(&f, T_A, "redeemer")?,
            class: VoucherClass::decode(f.require(T_CLASS, "class")?)?,
            until: u64::from_be_bytes(f.require_array(T_B, "until")?),
        })
    }
}

/// The issuer's card's signed word that `redeemer` may redeem `class` until
/// `until` ([`DELEGATION`], sent to the issuer's wallet, installed on the
/// redeemer's card with [`INSTALL_DELEGATION`]). The redeemer's card sends
/// it in its agreement, and the holder's card checks it before it gives.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Delegation {
    /// The issuer's card (its domain issues `class`).
    pub issuer: EntityId,
    /// The redeemer's card.
    pub redeemer: EntityId,
    /// The class it may redeem.
    pub class: VoucherClass,
    /// Until when, in card time.
    pub until: u64,
    /// The issuer card's signature over [`Delegation::signed_bytes`].
    pub signature: Vec<u8>,
    /// The issuer card's certificate.
    pub certificate: Vec<u8>,
}

impl Delegation {
    /// The bytes the issuer's card signs, under their own label.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = b"tenet-delegation".to_vec();
        b.extend_from_slice(&self.issuer.to_array());
        b.extend_from_slice(&self.redeemer.to_array());
        b.extend_from_slice(&self.class.to_bytes());
        b.extend_from_slice(&self.until.to_be_bytes());
        b
    }

    /// Checks that this delegation lets `redeemer` redeem `class`: it names
    /// them, its signer is the card of the class's issuer domain, and its
    /// signature verifies with `check` (certificate from the CA, naming the
    /// signer); with `now`, also that it has not expired.
    pub fn check(
        &self,
        check: &Check<'_>,
        redeemer: EntityId,
        class: &VoucherClass,
        now: Option<u64>,
    ) -> Result<(), RedeemError> {
        if self.redeemer != redeemer || self.class != *class {
            return Err(RedeemError::DelegationElsewhere);
        }
        if self.issuer != class.issuer.owner() {
            return Err(RedeemError::DelegationNotFromIssuer(self.issuer));
        }
        if let Some(now) = now.filter(|n| *n >= self.until) {
            return Err(RedeemError::DelegationExpired {
                until: self.until,
                now,
            });
        }
        check(
            Signer::card(self.issuer),
            &self.certificate,
            &self.signed_bytes(),
            &self.signature,
        )
        .map_err(RedeemError::Delegation)
    }
}

impl Codec for Delegation {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_A, &self.issuer.to_array());
        tlv::write(out, T_B, &self.redeemer.to_array());
        tlv::write_codec(out, T_CLASS, &self.class);
        tlv::write(out, T_C, &self.until.to_be_bytes());
        tlv::write(out, T_D, &self.signature);
        tlv::write(out, T_E, &self.certificate);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_A, T_B, T_CLASS, T_C, T_D, T_E], "delegation")?;
        for (t, what, max) in [
            (T_D, "delegation signature", crate::ttp::MAX_SIGNATURE_LEN),
            (
                T_E,
                "delegation certificate",
                crate::ttp::MAX_CERTIFICATE_LEN,
            ),
        ] {
            let len = f.get(t).map_or(0, <[u8]>::len);
            if len > max {
                return Err(DecodeError::TooLarge { what, len, max });
            }
        }
        Ok(Self {
            issuer: id_at(&f, T_A, "issuer")?,
            redeemer: id_at(&f, T_B, "redeemer")?,
            class: VoucherClass::decode(f.require(T_CLASS, "class")?)?,
            until: u64::from_be_bytes(f.require_array(T_C, "until")?),
            signature: f.require(T_D, "signature")?.to_vec(),
            certificate: f.require(T_E, "certificate")?.to_vec(),
        })
    }
}

/// What proves that a redemption completed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Proof {
    /// `n2`, from the redeemer's commitment `m4`.
    Commitment([u8; 16]),
    /// The TTP's resolve admission for the run.
    Admission(Admission),
}

/// A receipt: the redeemer card's agreement to the redemption offer, and
/// the proof that the run completed. Verifies offline with the CA
/// ([`Receipt::verify`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Receipt {
    /// The redemption offer: the holder, the redeemer, the vouchers.
    pub offer: Offer,
    /// The redeemer's agreement (its signature and certificate, and its
    /// delegation when it is not the issuer's card).
    pub agreement: Agreement,
    /// That the run completed.
    pub proof: Proof,
}

/// Why a receipt, a delegation or a redemption was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    /// The offer is not a redemption.
    #[error("the offer is not a redemption")]
    NotARedemption,
    /// The agreement is for another offer.
    #[error("the agreement is for another offer")]
    WrongOffer,
    /// The redeemer's signature or certificate does not verify.
    #[error("the redeemer's agreement: {0}")]
    Agreement(VerifyError),
    /// The redeemer is not the issuer's card and shows no delegation.
    #[error("card {redeemer} is not the card of issuer {issuer} and shows no delegation")]
    NotEntitled {
        /// The redeemer.
        redeemer: EntityId,
        /// The class's issuer domain.
        issuer: tenet_proto::Domain,
    },
    /// The delegation names another redeemer or class.
    #[error("the delegation is for another card or class")]
    DelegationElsewhere,
    /// The delegation is not signed by the issuer's card.
    #[error("the delegation is signed by {0}, not the issuer's card")]
    DelegationNotFromIssuer(EntityId),
    /// The delegation expired.
    #[error("the delegation expired at {until} (card time {now})")]
    DelegationExpired {
        /// Its end.
        until: u64,
        /// The card's time.
        now: u64,
    },
    /// The delegation's signature or certificate does not verify.
    #[error("the delegation: {0}")]
    Delegation(VerifyError),
    /// `n2` is not the redemption's.
    #[error("the commitment is not this redemption's n2")]
    WrongCommitment,
    /// The admission is not a resolve of this redemption.
    #[error("the admission is not the TTP's resolve of this redemption")]
    WrongAdmission,
    /// The admission's signature or certificate does not verify.
    #[error("the TTP's admission: {0}")]
    Admission(VerifyError),
}

impl Receipt {
    /// The redemption's id.
    pub fn id(&self) -> ExchangeId {
        self.agreement.id
    }

    /// Checks the receipt: the offer is a redemption; the agreement is the
    /// redeemer card's signature over it (`check`: its certificate from
    /// the CA, naming it); the redeemer is the issuer's card or shows the
    /// issuer card's delegation for the class; and the run completed: `n2`
    /// hashes to the id, or the TTP the offer names signed its resolve.
    pub fn verify(&self, check: &Check<'_>) -> Result<(), RedeemError> {
        let (offer, a) = (&self.offer, &self.agreement);
        let Some(ttp) = offer.redeem.filter(|_| offer.want.is_none()) else {
            return Err(RedeemError::NotARedemption);
        };
        if a.offer_digest != offer.digest() {
            return Err(RedeemError::WrongOffer);
        }
        check(
            Signer::card(offer.responder),
            &a.certificate,
            &Agreement::signed_bytes(&a.offer_digest, &a.id),
            &a.signature,
        )
        .map_err(RedeemError::Agreement)?;
        entitled(check, offer, a.delegation.as_ref(), None)?;
        match &self.proof {
            Proof::Commitment(n2) if ExchangeId::of_redeem_n2(n2) == a.id => Ok(()),
            Proof::Commitment(_) => Err(RedeemError::WrongCommitment),
            Proof::Admission(adm) if adm.kind == Kind::Resolve && adm.id == a.id => check(
                Signer::entity(ttp),
                &adm.certificate,
                &adm.kind.admission_bytes(&adm.id),
                &adm.signature,
            )
            .map_err(RedeemError::Admission),
            Proof::Admission(_) => Err(RedeemError::WrongAdmission),
        }
    }
}

/// Checks that the redemption `offer`'s responder may redeem what it gives:
/// it is the card of the class's issuer domain, or `delegation` (checked at
/// `now` if given) lets it.
pub fn entitled(
    check: &Check<'_>,
    offer: &Offer,
    delegation: Option<&Delegation>,
    now: Option<u64>,
) -> Result<(), RedeemError> {
    let class = &offer.give.class;
    if offer.responder == class.issuer.owner() {
        return Ok(());
    }
    let Some(d) = delegation else {
        return Err(RedeemError::NotEntitled {
            redeemer: offer.responder,
            issuer: class.issuer,
        });
    };
    d.check(check, offer.responder, class, now)
}

impl Codec for Receipt {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write_codec(out, T_OFFER, &self.offer);
        tlv::write_codec(out, T_AGREEMENT, &self.agreement);
        match &self.proof {
            Proof::Commitment(n2) => tlv::write(out, T_A, n2),
            Proof::Admission(a) => tlv::write_codec(out, T_ADMISSION, a),
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_OFFER, T_AGREEMENT, T_A, T_ADMISSION], "receipt")?;
        let proof = match (f.get(T_A), f.get(T_ADMISSION)) {
            (Some(_), None) => Proof::Commitment(f.require_array(T_A, "n2")?),
            (None, Some(a)) => Proof::Admission(Admission::decode(a)?),
            _ => {
                return Err(DecodeError::Invalid {
                    what: "receipt",
                    detail: "needs exactly one proof: n2 or the TTP's admission".into(),
                });
            }
        };
        Ok(Self {
            offer: Offer::decode(f.require(T_OFFER, "offer")?)?,
            agreement: Agreement::decode(f.require(T_AGREEMENT, "agreement")?)?,
            proof,
        })
    }
}

impl fmt::Display for Receipt {
    /// `ID  redeemed Q x CLASS at CARD (by n2 | by the TTP)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.id().0 {
            write!(f, "{b:02x}")?;
        }
        let by = match self.proof {
            Proof::Commitment(_) => "the redeemer's commitment",
            Proof::Admission(_) => "the TTP's resolve",
        };
        write!(
            f,
            "  redeemed {} at {} (by {by})",
            self.offer.give, self.offer.responder
        )
    }
}

/// The check of a CV certificate from the CA of the anchor `ca`
/// ([`tenet_pki::cv::Anchor`] bytes) naming the signer,
/// and of its signature, for [`Receipt::verify`]. A receipt records the
/// past: certificates that expired since are taken (their chain, name and
/// signature are checked).
pub fn receipt_check(
    ca: &[u8],
) -> impl Fn(Signer, &[u8], &[u8], &[u8]) -> Result<(), VerifyError> + '_ {
    move |signer, cert, msg, sig| {
        tenet_pki::verify_ignoring_expiry(ca, pki_types::UnixTime::now(), signer, cert, msg, sig)
    }
}
