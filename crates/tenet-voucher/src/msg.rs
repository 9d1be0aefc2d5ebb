//! The exchange's messages as eTP params (BER-TLV), and their mtypes.
//!
//! | mtype | name | from → to | param |
//! |-------|------|-----------|-------|
//! | `0201` | start-exchange (privileged) | P_A → S_A | [`StartExchange`] |
//! | `0202` | offer `m1` | S_A → P_B | [`Offer`] |
//! | `0203` | accept (privileged) | P_B → S_B | [`Offer`] |
//! | `0204` | agreement `m2` | S_B → S_A | [`Agreement`] |
//! | `0205` | confirmation `m3` | S_A → S_B | [`Confirmation`] |
//! | `0206` | commitment `m4` | S_B → S_A | [`Commitment`] |
//! | `0207` | recovery request `m_r1` / `m_a1` | card → T | [`RecoveryRequest`] |
//! | `0208` | admission `m_r2` / `m_a2` | T → card | [`Admission`] |
//! | `0209` | recover (privileged) | wallet → its card | [`ExchangeId`] |
//!
//! Signed bytes, each with a distinct label so no signature can stand in
//! for another: `m2` signs `"tenet-m2" ‖ h(offer) ‖ h(n2)`; `m3` signs
//! `"tenet-m3" ‖ h(n2)`; a recovery request signs `"tenet-resolve"` or
//! `"tenet-abort"` ‖ h(n2); an admission signs `"tenet-admit" ‖ kind ‖
//! h(n2)`.

use std::fmt;

use tenet_proto::codec::{Codec, DecodeError, Reader};
use tenet_proto::tlv::{self, Fields, Tag};
use tenet_proto::{EntityId, Mtype};

use crate::model::{Amount, h};
use crate::redeem::Delegation;

pub use crate::mtype::{
    ACCEPT, ADMISSION, AGREEMENT, COMMITMENT, CONFIRMATION, OFFER, RECOVER, RECOVERY_REQUEST,
    START_EXCHANGE,
};

/// The mtypes a voucher card accepts only from its authenticated wallet.
pub const PRIVILEGED: [Mtype; 3] = [START_EXCHANGE, ACCEPT, RECOVER];

/// An exchange's identifier: `h(n2)` (the appendix: never `n1`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExchangeId(pub [u8; 32]);

impl ExchangeId {
    /// `h(n2)`.
    pub fn of_n2(n2: &[u8; 16]) -> Self {
        Self(h(&[b"tenet-n2", n2]))
    }

    /// A gift's id: `n2` hashed under its own label, so that no gift and
    /// no exchange ever share an id.
    pub fn of_gift_n2(n2: &[u8; 16]) -> Self {
        Self(h(&[b"tenet-gift-n2", n2]))
    }

    /// A redemption's id: `n2` hashed under the redemptions' own label.
    pub fn of_redeem_n2(n2: &[u8; 16]) -> Self {
        Self(h(&[b"tenet-redeem-n2", n2]))
    }

    /// The id of `offer`'s run with `n2`: [`ExchangeId::of_redeem_n2`] for
    /// a redemption, [`ExchangeId::of_gift_n2`] for a gift, else
    /// [`ExchangeId::of_n2`].
    pub fn for_offer(offer: &Offer, n2: &[u8; 16]) -> Self {
        if offer.redeem.is_some() {
            Self::of_redeem_n2(n2)
        } else if offer.is_gift() {
            Self::of_gift_n2(n2)
        } else {
            Self::of_n2(n2)
        }
    }
}

impl fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ExchangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExchangeId({self})")
    }
}

impl Codec for ExchangeId {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, Tag(0x80), &self.0);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[Tag(0x80)], "exchange id")?;
        Ok(Self(f.require_array(Tag(0x80), "exchange id")?))
    }
}

/// Recovery: resolve (the initiator's) or abort (the responder's).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Kind {
    /// Complete the exchange.
    Resolve,
    /// Undo the exchange.
    Abort,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Resolve => 1,
            Kind::Abort => 2,
        }
    }

    fn from_code(c: u8) -> Result<Self, DecodeError> {
        match c {
            1 => Ok(Kind::Resolve),
            2 => Ok(Kind::Abort),
            _ => Err(DecodeError::Invalid {
                what: "recovery kind",
                detail: format!("unknown code {c}"),
            }),
        }
    }

    /// The bytes a recovery request signs.
    pub fn request_bytes(self, id: &ExchangeId) -> Vec<u8> {
        let label: &[u8] = match self {
            Kind::Resolve => b"tenet-resolve",
            Kind::Abort => b"tenet-abort",
        };
        [label, &id.0[..]].concat()
    }

    /// The bytes an admission signs.
    pub fn admission_bytes(self, id: &ExchangeId) -> Vec<u8> {
        [&b"tenet-admit"[..], &[self.code()], &id.0[..]].concat()
    }
}

// Tags shared by the messages below.
const T_A: Tag = Tag(0x80);
const T_B: Tag = Tag(0x81);
const T_C: Tag = Tag(0x82);
const T_D: Tag = Tag(0x83);
const T_GIVE: Tag = Tag(0xa0);
const T_WANT: Tag = Tag(0xa1);
const T_OFFER: Tag = Tag(0xa2);
const T_AGREEMENT: Tag = Tag(0xa3);
const T_EXPIRES: Tag = Tag(0x84);
const T_REDEEM: Tag = Tag(0x85);
const T_DELEGATION: Tag = Tag(0xa4);
const T_KNOWS: Tag = Tag(0x86);

fn id_at(f: &Fields<'_>, t: Tag, what: &'static str) -> Result<EntityId, DecodeError> {
    Ok(EntityId::from_array(f.require_array(t, what)?))
}

/// The optional `want` of an offer (absent: a gift).
fn want_at(f: &Fields<'_>) -> Result<Option<Amount>, DecodeError> {
    f.get(T_WANT)
        .map(|_| amount_at(f, T_WANT, "want"))
        .transpose()
}

pub(crate) fn amount_at(f: &Fields<'_>, t: Tag, what: &'static str) -> Result<Amount, DecodeError> {
    let a = Amount::decode(f.require(t, what)?)?;
    if a.quantity == 0 {
        return Err(DecodeError::Invalid {
            what,
            detail: "quantity 0".into(),
        });
    }
    Ok(a)
}

/// start-exchange: the initiator's wallet orders its card to offer `give`
/// (`v1`) for `want` (`v2`) to the card `responder`, sending the offer to
/// the wallet app `peer_wallet` (option 2b) or to the card itself (2a).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StartExchange {
    /// The other card.
    pub responder: EntityId,
    /// Where the offer goes: the other card's wallet app, or the card.
    pub peer_wallet: EntityId,
    /// `v1`.
    pub give: Amount,
    /// `v2`; `None` for a gift (a transfer: nothing comes back).
    pub want: Option<Amount>,
    /// Seconds of the card's time the offer stays open; `None`: until it
    /// is withdrawn.
    pub expires_in: Option<u32>,
    /// A redemption at `responder` (the issuer's card or its delegate): the
    /// vouchers are destroyed for a receipt; `want` must be `None`.
    pub redeem: bool,
}

impl Codec for StartExchange {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_A, &self.responder.to_array());
        tlv::write(out, T_B, &self.peer_wallet.to_array());
        tlv::write_codec(out, T_GIVE, &self.give);
        if let Some(w) = &self.want {
            tlv::write_codec(out, T_WANT, w);
        }
        if let Some(s) = self.expires_in {
            tlv::write(out, T_EXPIRES, &s.to_be_bytes());
        }
        if self.redeem {
            tlv::write(out, T_REDEEM, &[]);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(
            &[T_A, T_B, T_GIVE, T_WANT, T_EXPIRES, T_REDEEM],
            "start-exchange",
        )?;
        let redeem = match f.get(T_REDEEM) {
            None => false,
            Some([]) => true,
            Some(_) => {
                return Err(DecodeError::Invalid {
                    what: "redeem flag",
                    detail: "must be empty".into(),
                });
            }
        };
        Ok(Self {
            redeem,
            responder: id_at(&f, T_A, "responder")?,
            peer_wallet: id_at(&f, T_B, "peer wallet")?,
            give: amount_at(&f, T_GIVE, "give")?,
            want: want_at(&f)?,
            expires_in: f
                .get(T_EXPIRES)
                .map(|_| f.require_array(T_EXPIRES, "expires in"))
                .transpose()?
                .map(u32::from_be_bytes),
        })
    }
}

/// How long a wallet's offer stays open unless it says otherwise: five
/// minutes of the initiator card's time.
pub const DEFAULT_OFFER_SECS: u32 = 300;

/// The offer `m1 = {v1, v2, n1}`, naming both cards so that every later
/// signature binds the parties.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Offer {
    /// `S_A`.
    pub initiator: EntityId,
    /// `S_B`.
    pub responder: EntityId,
    /// `v1`, from the initiator.
    pub give: Amount,
    /// `v2`, from the responder; `None` for a gift (a transfer: the
    /// responder gives nothing back).
    pub want: Option<Amount>,
    /// `n1`.
    pub n1: [u8; 16],
    /// When the offer expires, in the initiator card's time (seconds
    /// since the Unix epoch); `None`: never. Part of the signed digest:
    /// neither card accepts it later by its own clock.
    pub expires: Option<u64>,
    /// A redemption ([`crate::redeem`]): the TTP both cards use, named in
    /// the signed digest so that a receipt names the TTP whose resolve
    /// proves it; `want` is then `None`.
    pub redeem: Option<EntityId>,
    /// The reference (`tenet_pki::cache::cert_ref`) of the responder's
    /// certificate the initiator's card holds, checked before: the
    /// responder may then leave its certificate out of `m2`.
    pub knows: Option<[u8; 8]>,
}

impl Offer {
    /// Whether this is a gift: nothing is wanted back, nothing destroyed.
    pub fn is_gift(&self) -> bool {
        self.want.is_none() && self.redeem.is_none()
    }

    /// Whether this is a redemption: the vouchers are destroyed for a
    /// receipt.
    pub fn is_redemption(&self) -> bool {
        self.redeem.is_some()
    }

    /// Whether the offer has expired at `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
}

impl Offer {
    /// `h(offer)`, the paper's `h(v1 v2 n1)` with both card ids.
    pub fn digest(&self) -> [u8; 32] {
        h(&[b"tenet-offer", &self.to_bytes()])
    }
}

impl Codec for Offer {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_A, &self.initiator.to_array());
        tlv::write(out, T_B, &self.responder.to_array());
        tlv::write_codec(out, T_GIVE, &self.give);
        if let Some(w) = &self.want {
            tlv::write_codec(out, T_WANT, w);
        }
        tlv::write(out, T_C, &self.n1);
        if let Some(e) = self.expires {
            tlv::write(out, T_EXPIRES, &e.to_be_bytes());
        }
        if let Some(t) = &self.redeem {
            tlv::write(out, T_REDEEM, &t.to_array());
        }
        if let Some(k) = &self.knows {
            tlv::write(out, T_KNOWS, k);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(
            &[T_A, T_B, T_GIVE, T_WANT, T_C, T_EXPIRES, T_REDEEM, T_KNOWS],
            "offer",
        )?;
        let redeem = f
            .get(T_REDEEM)
            .map(|_| id_at(&f, T_REDEEM, "redemption's TTP"))
            .transpose()?;
        if redeem.is_some() && f.get(T_WANT).is_some() {
            return Err(DecodeError::Invalid {
                what: "offer",
                detail: "a redemption wants nothing back".into(),
            });
        }
        Ok(Self {
            redeem,
            knows: knows_at(&f)?,
            initiator: id_at(&f, T_A, "initiator")?,
            responder: id_at(&f, T_B, "responder")?,
            give: amount_at(&f, T_GIVE, "give")?,
            want: want_at(&f)?,
            n1: f.require_array(T_C, "n1")?,
            expires: f
                .get(T_EXPIRES)
                .map(|_| f.require_array(T_EXPIRES, "expires"))
                .transpose()?
                .map(u64::from_be_bytes),
        })
    }
}

/// The optional reference of a certificate the sender holds (`T_KNOWS`).
fn knows_at(f: &Fields<'_>) -> Result<Option<[u8; 8]>, DecodeError> {
    f.get(T_KNOWS)
        .map(|_| f.require_array(T_KNOWS, "known certificate"))
        .transpose()
}

/// The agreement `m2 = {(h(v1 v2 n1) | h(n2))_PkB, Cert_B}`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Agreement {
    /// `h(offer)`.
    pub offer_digest: [u8; 32],
    /// `h(n2)`: the exchange id.
    pub id: ExchangeId,
    /// `S_B`'s signature.
    pub signature: Vec<u8>,
    /// `S_B`'s certificate; empty on the link when the offer named it as
    /// one `S_A` holds (`Offer::knows`).
    pub certificate: Vec<u8>,
    /// For a redemption at a card other than the issuer's: the issuer
    /// card's delegation to `S_B`.
    pub delegation: Option<Delegation>,
    /// The reference of `S_A`'s certificate `S_B` holds, checked before:
    /// `S_A` may then leave its certificate out of `m3`. Not signed: a
    /// hint, which at worst makes a certificate missing (the exchange then
    /// ends through the TTP).
    pub knows: Option<[u8; 8]>,
}

impl Agreement {
    /// The bytes `S_B` signs.
    pub fn signed_bytes(offer_digest: &[u8; 32], id: &ExchangeId) -> Vec<u8> {
        [&b"tenet-m2"[..], offer_digest, &id.0].concat()
    }
}

impl Agreement {
    /// The agreement as a card keeps it in its record: without what the
    /// card knows otherwise, which [`Agreement::decode_stored`] puts back.
    /// The offer's digest always goes (it is `h(offer)`, and the record
    /// keeps the offer); the id goes unless `id`; the certificate goes
    /// unless `certificate` (the record keeps it elsewhere). The signature
    /// comes first, next to the fields a step changes.
    pub(crate) fn encode_stored(&self, out: &mut Vec<u8>, id: bool, certificate: bool) {
        tlv::write(out, T_C, &self.signature);
        if id {
            tlv::write(out, T_B, &self.id.0);
        }
        if certificate {
            tlv::write(out, T_D, &self.certificate);
        }
        if let Some(d) = &self.delegation {
            tlv::write_codec(out, T_DELEGATION, d);
        }
        if let Some(k) = &self.knows {
            tlv::write(out, T_KNOWS, k);
        }
    }

    /// Reads an agreement a card kept ([`Agreement::encode_stored`], or
    /// whole as records written before kept it), with what the record
    /// knows otherwise: the offer's digest, the id where the record can
    /// derive it, and the certificate where the record keeps it elsewhere.
    /// A digest or an id the bytes hold must be the derived one (a card
    /// never stores another).
    pub(crate) fn decode_stored(
        bytes: &[u8],
        offer_digest: [u8; 32],
        id: Option<ExchangeId>,
        certificate: Option<&[u8]>,
    ) -> Result<Self, DecodeError> {
        let f = Fields::parse(bytes)?;
        f.only(
            &[T_A, T_B, T_C, T_D, T_DELEGATION, T_KNOWS],
            "stored agreement",
        )?;
        let stored = |derived: &[u8], t: Tag, what: &'static str| match f.get(t) {
            Some(v) if v != derived => Err(DecodeError::Invalid {
                what,
                detail: "not the one derived from the offer".into(),
            }),
            _ => Ok(()),
        };
        stored(&offer_digest, T_A, "stored agreement's offer digest")?;
        let id = match id {
            Some(id) => {
                stored(&id.0, T_B, "stored agreement's exchange id")?;
                id
            }
            None => ExchangeId(f.require_array(T_B, "exchange id")?),
        };
        let certificate = match (f.get(T_D), certificate) {
            (Some(c), _) => c,
            (None, Some(c)) => c,
            (None, None) => f.require(T_D, "certificate")?,
        };
        Ok(Self {
            knows: knows_at(&f)?,
            delegation: f.get(T_DELEGATION).map(Delegation::decode).transpose()?,
            offer_digest,
            id,
            signature: f.require(T_C, "signature")?.to_vec(),
            certificate: certificate.to_vec(),
        })
    }
}

impl Codec for Agreement {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_A, &self.offer_digest);
        tlv::write(out, T_B, &self.id.0);
        tlv::write(out, T_C, &self.signature);
        tlv::write(out, T_D, &self.certificate);
        if let Some(d) = &self.delegation {
            tlv::write_codec(out, T_DELEGATION, d);
        }
        if let Some(k) = &self.knows {
            tlv::write(out, T_KNOWS, k);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_A, T_B, T_C, T_D, T_DELEGATION, T_KNOWS], "agreement")?;
        Ok(Self {
            knows: knows_at(&f)?,
            delegation: f.get(T_DELEGATION).map(Delegation::decode).transpose()?,
            offer_digest: f.require_array(T_A, "offer digest")?,
            id: ExchangeId(f.require_array(T_B, "exchange id")?),
            signature: f.require(T_C, "signature")?.to_vec(),
            certificate: f.require(T_D, "certificate")?.to_vec(),
        })
    }
}

/// The confirmation `m3 = {(h(n2))_PkA, Cert_A}`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Confirmation {
    /// `h(n2)`.
    pub id: ExchangeId,
    /// `S_A`'s signature.
    pub signature: Vec<u8>,
    /// `S_A`'s certificate; empty when the agreement named it as one `S_B`
    /// holds (`Agreement::knows`).
    pub certificate: Vec<u8>,
}

impl Confirmation {
    /// The bytes `S_A` signs.
    pub fn signed_bytes(id: &ExchangeId) -> Vec<u8> {
        [&b"tenet-m3"[..], &id.0].concat()
    }
}

impl Codec for Confirmation {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_A, &self.id.0);
        tlv::write(out, T_B, &self.signature);
        tlv::write(out, T_C, &self.certificate);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_A, T_B, T_C], "confirmation")?;
        Ok(Self {
            id: ExchangeId(f.require_array(T_A, "exchange id")?),
            signature: f.require(T_B, "signature")?.to_vec(),
            certificate: f.require(T_C, "certificate")?.to_vec(),
        })
    }
}

/// The commitment `m4 = n2`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Commitment {
    /// `n2`.
    pub n2: [u8; 16],
}

impl Codec for Commitment {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_A, &self.n2);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_A], "commitment")?;
        Ok(Self {
            n2: f.require_array(T_A, "n2")?,
        })
    }
}

/// A recovery request `m_r1` / `m_a1 = {(resolve|abort | h(n2))_Pk, Cert}`,
/// carrying the offer and `S_B`'s agreement so the TTP can check that the
/// requester is the party entitled to it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecoveryRequest {
    /// Resolve or abort.
    pub kind: Kind,
    /// The offer.
    pub offer: Offer,
    /// `S_B`'s agreement.
    pub agreement: Agreement,
    /// The requester's signature over [`Kind::request_bytes`].
    pub signature: Vec<u8>,
    /// The requester's certificate.
    pub certificate: Vec<u8>,
}

impl Codec for RecoveryRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_A, &[self.kind.code()]);
        tlv::write_codec(out, T_OFFER, &self.offer);
        tlv::write_codec(out, T_AGREEMENT, &self.agreement);
        tlv::write(out, T_B, &self.signature);
        tlv::write(out, T_C, &self.certificate);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_A, T_OFFER, T_AGREEMENT, T_B, T_C], "recovery request")?;
        Ok(Self {
            kind: Kind::from_code(f.require_array::<1>(T_A, "kind")?[0])?,
            offer: Offer::decode(f.require(T_OFFER, "offer")?)?,
            agreement: Agreement::decode(f.require(T_AGREEMENT, "agreement")?)?,
            signature: f.require(T_B, "signature")?.to_vec(),
            certificate: f.require(T_C, "certificate")?.to_vec(),
        })
    }
}

/// The TTP's admission `m_r2` / `m_a2 = {(resolve|abort | h(n2))_PkT, Cert_T}`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Admission {
    /// The decision.
    pub kind: Kind,
    /// `h(n2)`.
    pub id: ExchangeId,
    /// The TTP's signature over [`Kind::admission_bytes`].
    pub signature: Vec<u8>,
    /// The TTP's certificate.
    pub certificate: Vec<u8>,
}

impl Codec for Admission {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_A, &[self.kind.code()]);
        tlv::write(out, T_B, &self.id.0);
        tlv::write(out, T_C, &self.signature);
        tlv::write(out, T_D, &self.certificate);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_A, T_B, T_C, T_D], "admission")?;
        Ok(Self {
            kind: Kind::from_code(f.require_array::<1>(T_A, "kind")?[0])?,
            id: ExchangeId(f.require_array(T_B, "exchange id")?),
            signature: f.require(T_C, "signature")?.to_vec(),
            certificate: f.require(T_D, "certificate")?.to_vec(),
        })
    }
}
