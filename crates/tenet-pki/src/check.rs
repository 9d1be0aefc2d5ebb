//! The certificate checks cards and the TTP make, in one place: chain,
//! validity at the card's time, the signer's name, the key of a pinned
//! certificate. (The checks of the TLS links between hosts, on the host
//! role, are in [`crate::roles`].)
//!
//! Validity follows the card's clock (`tenet_card::clock`): a
//! certificate that expired before the card's time is refused; one that is
//! not valid yet is refused only when the card's time came from its host
//! since power-up. Before that the card's time is the bound it keeps, a
//! time that has certainly passed, so "not valid yet" would be a guess.
//! The TTP checks against its own system clock ([`CardTime::real`]).

use pki_types::{CertificateDer, ServerName, UnixTime};
use tenet_proto::EntityId;
use tenet_proto::time::{CardTime, Utc};

/// Why a signature or certificate did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("verification failed: {0}")]
pub struct VerifyError(pub String);

/// The DER value of the id-kp-clientAuth OID; a certificate with an EKU
/// extension must allow it (card certificates have none).
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

/// Reads the validity period of `cert` (DER).
pub fn validity(cert: &[u8]) -> Result<Validity, VerifyError> {
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

/// Checks `cert` against `ca` at the real time `now`, that it names
/// `signer`, and `sig` over `msg`.
pub fn verify_with_ca(
    ca: &[u8],
    now: UnixTime,
    signer: EntityId,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    verify_at(ca, CardTime::real(now.as_secs()), signer, cert, msg, sig).map(|_| ())
}

/// [`verify_with_ca`], but a certificate that has expired by `now` is
/// checked as at its last valid second: the TTP deciding a recovery
/// (`tenet_voucher::crypto::Crypto::verify_for_recovery`). One not valid yet is
/// still refused.
pub fn verify_ignoring_expiry(
    ca: &[u8],
    now: UnixTime,
    signer: EntityId,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let at = now.as_secs().min(validity(cert)?.not_after);
    verify_at(ca, CardTime::real(at), signer, cert, msg, sig).map(|_| ())
}

/// Checks `cert` against `ca` at the card's `time` ([`check_validity`]),
/// that it names `signer`, and `sig` over `msg`. Returns the certificate's
/// validity (a card remembers it with the certificate).
pub fn verify_at(
    ca: &[u8],
    time: CardTime,
    signer: EntityId,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<Validity, VerifyError> {
    let e = |what: &str, err: webpki::Error| VerifyError(format!("{what}: {err}"));
    let v = validity(cert)?;
    check_validity(v, time, &format!("for {signer}"))?;
    let ca = CertificateDer::from(ca);
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|err| e("CA certificate", err))?;
    let cert = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&cert).map_err(|err| e("certificate", err))?;
    // The validity is checked above, by the card's rules; webpki checks the
    // chain at a time within it.
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(time.now.max(v.not_before)));
    ee.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &[],
        at,
        webpki::KeyUsage::required_if_present(CLIENT_AUTH),
        None,
        None,
    )
    .map_err(|err| e("certificate chain", err))?;
    verify_signed_by(&ee, signer, msg, sig)?;
    Ok(v)
}

/// Checks that `cert`, already checked against the CA (and its validity
/// by the caller), names `signer`, and `sig` over `msg`.
pub fn verify_known(
    signer: EntityId,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let cert = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&cert)
        .map_err(|err| VerifyError(format!("certificate: {err}")))?;
    verify_signed_by(&ee, signer, msg, sig)
}

fn verify_signed_by(
    ee: &webpki::EndEntityCert<'_>,
    signer: EntityId,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let e = |what: &str, err: webpki::Error| VerifyError(format!("{what}: {err}"));
    let name = ServerName::try_from(signer.certificate_name())
        .map_err(|_| VerifyError("bad name".into()))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|err| e(&format!("certificate for {signer}"), err))?;
    ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, msg, sig)
        .map_err(|err| e("signature", err))
}

/// Whether `cert` (DER) names the entity `id` (`DOMAIN-PORT.id.tenet`).
pub fn names(cert: &[u8], id: EntityId) -> bool {
    let cert = CertificateDer::from(cert);
    let Ok(ee) = webpki::EndEntityCert::try_from(&cert) else {
        return false;
    };
    ServerName::try_from(id.certificate_name())
        .is_ok_and(|name| ee.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Whether `presented` is the `pinned` certificate or a certificate for the
/// same key (a renewal: `tenet ca entity` renews in place, keeping the
/// key). The caller has checked `presented` against the CA.
pub fn same_key(pinned: &[u8], presented: &[u8]) -> bool {
    if pinned == presented {
        return true;
    }
    let key = |der| {
        x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| c.public_key().raw.to_vec())
    };
    matches!((key(pinned), key(presented)), (Some(a), Some(b)) if a == b)
}
