//! The certificate checks cards and the TTP make, in one place, on CV
//! certificates ([`crate::cv`]): the CA's signature, validity at the
//! card's time, the signer's name, the key of a pinned certificate. (The checks of the TLS links between hosts, on the host
//! role, are in [`crate::roles`].)
//!
//! Validity follows the card's clock (`tenet_card::clock`): a
//! certificate that expired before the card's time is refused; one that is
//! not valid yet is refused only when the card's time came from its host
//! since power-up. Before that the card's time is the bound it keeps, a
//! time that has certainly passed, so "not valid yet" would be a guess.
//! The TTP checks against its own system clock ([`CardTime::real`]).

use pki_types::UnixTime;
use tenet_proto::EntityId;
use tenet_proto::time::{CardTime, Utc};

use crate::cv::{Anchor, CvCertificate, CvRole};

/// Who must have signed: an entity in a role. A card's signature (an
/// agreement, a confirmation, a delegation, a presentation, a recovery
/// request) needs a card's certificate; the TTP's admissions need a
/// software entity's. The TTP's entity id may have the shape of a card's
/// (`DOMAIN:0`), so the name alone does not tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signer {
    /// The entity the certificate must name.
    pub id: EntityId,
    /// What it must be.
    pub role: CvRole,
}

impl Signer {
    /// The card `id`.
    pub fn card(id: EntityId) -> Self {
        Self {
            id,
            role: CvRole::Card,
        }
    }

    /// The software entity `id` (the TTP's).
    pub fn entity(id: EntityId) -> Self {
        Self {
            id,
            role: CvRole::Entity,
        }
    }
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.id, self.role)
    }
}

/// Why a signature or certificate did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("verification failed: {0}")]
pub struct VerifyError(pub String);

/// The DER value of the id-kp-clientAuth OID; a certificate with an EKU
/// extension must allow it (card certificates have none).
#[cfg(feature = "issue")]
pub(crate) const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// A certificate's validity period, in seconds since the Unix epoch,
/// both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first second it is valid.
    pub not_before: u64,
    /// The last second it is valid.
    pub not_after: u64,
}

impl std::fmt::Display for Validity {
    /// `valid FROM to TO`, in UTC.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "valid {} to {}",
            Utc(self.not_before),
            Utc(self.not_after)
        )
    }
}

/// Reads the validity period of the X.509 certificate `cert` (DER).
pub fn x509_validity(cert: &[u8]) -> Result<Validity, VerifyError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| VerifyError(format!("certificate: {e}")))?;
    let v = parsed.validity();
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok(Validity {
        not_before: secs(v.not_before.timestamp()),
        not_after: secs(v.not_after.timestamp()),
    })
}

/// What the extended key usage of `cert` (DER) grants for TLS: (server
/// authentication, client authentication), or `None` when it has no such
/// extension (card and entity certificates: signatures only).
pub fn tls_key_purposes(cert: &[u8]) -> Result<Option<(bool, bool)>, VerifyError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| VerifyError(format!("certificate: {e}")))?;
    let eku = parsed
        .extended_key_usage()
        .map_err(|e| VerifyError(format!("extended key usage: {e}")))?;
    Ok(eku.map(|e| (e.value.server_auth, e.value.client_auth)))
}

/// Checks `v`, the validity of `whose` certificate, at the card's `time`:
/// expired is refused always, not valid yet only with a time from the host.
pub fn check_validity(v: Validity, time: CardTime, whose: &str) -> Result<(), VerifyError> {
    if time.now > v.not_after {
        return Err(VerifyError(format!(
            "certificate {whose} expired at {} (card time {time})",
            Utc(v.not_after)
        )));
    }
    if time.from_host && time.now < v.not_before {
        return Err(VerifyError(format!(
            "certificate {whose} is not valid before {} (card time {time})",
            Utc(v.not_before)
        )));
    }
    Ok(())
}

/// The anchor and certificate of a check, decoded.
fn decode(anchor: &[u8], cert: &[u8]) -> Result<(Anchor, CvCertificate), VerifyError> {
    let anchor = Anchor::decode(anchor).map_err(|e| VerifyError(format!("CA anchor: {e}")))?;
    Ok((anchor, decode_cert(cert)?))
}

fn decode_cert(cert: &[u8]) -> Result<CvCertificate, VerifyError> {
    CvCertificate::decode(cert).map_err(|e| VerifyError(format!("CV certificate: {e}")))
}

/// Checks the CV certificate `cert` against the CA `anchor` ([`Anchor`]
/// bytes) at the real time `now`, that it names `signer` in its role, and
/// `sig` (r || s) over `msg`: the TTP and hosts checking cards' signatures.
pub fn verify_with_ca(
    anchor: &[u8],
    now: UnixTime,
    signer: Signer,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    verify_at(
        anchor,
        CardTime::real(now.as_secs()),
        signer,
        cert,
        msg,
        sig,
    )
    .map(|_| ())
}

/// [`verify_with_ca`], but a certificate that has expired by `now` is
/// checked as at its last valid second: the TTP deciding a recovery
/// (`tenet_voucher::crypto::Crypto::verify_for_recovery`). One not valid yet is
/// still refused.
pub fn verify_ignoring_expiry(
    anchor: &[u8],
    now: UnixTime,
    signer: Signer,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let at = now.as_secs().min(decode_cert(cert)?.validity.not_after);
    verify_at(anchor, CardTime::real(at), signer, cert, msg, sig).map(|_| ())
}

/// Checks the CV certificate `cert` against the CA `anchor` at the card's
/// `time` ([`check_validity`]), that it names `signer` in its role, and
/// `sig` (r || s)
/// over `msg`. Returns the certificate's validity (a card remembers it
/// with the certificate).
pub fn verify_at(
    anchor: &[u8],
    time: CardTime,
    signer: Signer,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<Validity, VerifyError> {
    let (anchor, c) = decode(anchor, cert)?;
    c.check_time(time)?;
    c.check_signature(&anchor)?;
    c.check_signed(signer, msg, sig)?;
    Ok(c.validity)
}

/// Checks that the CV certificate `cert`, already checked against the CA
/// (and its validity by the caller), names `signer`, and `sig` over `msg`.
pub fn verify_known(
    signer: Signer,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    decode_cert(cert)?.check_signed(signer, msg, sig)
}

/// The validity of the CV certificate `cert`.
pub fn validity(cert: &[u8]) -> Result<Validity, VerifyError> {
    Ok(decode_cert(cert)?.validity)
}

/// Whether the CV certificate `cert` names the entity `id`.
pub fn names(cert: &[u8], id: EntityId) -> bool {
    CvCertificate::decode(cert).is_ok_and(|c| c.holder == id)
}

/// Whether two X.509 certificates (DER) certify the same key: a host's
/// certificate renewed for its key (`tenet host certs`, `tenet ca sign`).
pub fn x509_same_key(a: &[u8], b: &[u8]) -> bool {
    let key = |der| {
        x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| c.public_key().raw.to_vec())
    };
    matches!((key(a), key(b)), (Some(a), Some(b)) if a == b)
}

/// Whether the CV certificate `presented` is `pinned` or one for the same
/// key (a renewal: `tenet ca entity` renews in place, keeping the key).
/// The caller has checked `presented` against the CA.
pub fn same_key(pinned: &[u8], presented: &[u8]) -> bool {
    if pinned == presented {
        return true;
    }
    match (
        CvCertificate::decode(pinned),
        CvCertificate::decode(presented),
    ) {
        (Ok(a), Ok(b)) => a.public_key == b.public_key,
        _ => false,
    }
}
