//! What the protocol needs from cryptography, injected so the same state
//! machines run on a card (ECDSA P-256 with its CV certificate), in the
//! TTP, and in deterministic tests and the model checker.

use tenet_proto::EntityId;

use tenet_pki::Signer;
pub use tenet_pki::VerifyError;
use tenet_pki::cache::{CertRef, cert_ref};

/// A party's keys and the trust anchor it checks others against.
pub trait Crypto {
    /// Signs `msg` with this party's private key.
    fn sign(&mut self, msg: &[u8]) -> Vec<u8>;
    /// This party's certificate.
    fn certificate(&self) -> Vec<u8>;
    /// Checks that `cert` was issued by the trusted CA for the card
    /// `signer` (a card's certificate), and that `sig` over `msg` verifies
    /// with its key.
    fn verify(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError>;
    /// [`Crypto::verify`] for the TTP's signature: `cert` must be a
    /// software entity's certificate (the TTP's id may have the shape of a
    /// card's).
    fn verify_ttp(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify(signer, cert, msg, sig)
    }
    /// [`Crypto::verify`] (a card's signature) for the TTP deciding a
    /// recovery: a certificate
    /// that has expired since is still taken (its chain, its name and the
    /// signature are checked). The exchange was agreed when the cards
    /// checked each other's certificates; the TTP must be able to finish
    /// it whenever a party asks, or the party's voucher stays deleted.
    /// Only the entitled party itself (its host stamps its id) can ask, so
    /// an expired key gains nobody anything.
    fn verify_for_recovery(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify(signer, cert, msg, sig)
    }
    /// Fills `out` with random bytes.
    fn random(&mut self, out: &mut [u8]);
    /// The reference of this party's certificate
    /// (`tenet_pki::cache::cert_ref`).
    fn certificate_ref(&self) -> CertRef {
        cert_ref(&self.certificate())
    }
    /// The reference of a certificate naming `peer` that this party
    /// checked before and still holds, if any: it names it in its next
    /// message, and `peer` may leave its certificate out of its answer.
    fn known_reference(&self, _peer: EntityId) -> Option<CertRef> {
        None
    }
    /// The certificate naming `peer` of reference `r` this party checked
    /// before and still holds.
    fn known_certificate(&self, _peer: EntityId, _r: &CertRef) -> Option<Vec<u8>> {
        None
    }
}

/// [`Crypto::verify`] or [`Crypto::verify_ttp`], by the signer's role: a
/// check for [`crate::redeem::Check`].
pub fn check_by_role(
    crypto: &dyn Crypto,
    signer: Signer,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    match signer.role {
        tenet_pki::cv::CvRole::Card => crypto.verify(signer.id, cert, msg, sig),
        tenet_pki::cv::CvRole::Entity => crypto.verify_ttp(signer.id, cert, msg, sig),
    }
}

/// A deterministic stand-in for tests and the model checker: a
/// "certificate" is the entity id, a "signature" is a keyed hash that only
/// this module can make. Not for use outside tests.
#[derive(Debug, Clone)]
pub struct TestCrypto {
    id: EntityId,
    counter: u64,
}

impl TestCrypto {
    /// Keys for `id`; `seed` varies its random numbers.
    pub fn new(id: EntityId, seed: u64) -> Self {
        Self {
            id,
            counter: seed << 32,
        }
    }

    fn mac(id: &EntityId, msg: &[u8]) -> Vec<u8> {
        crate::model::h(&[b"test-sig", &id.to_array(), msg]).to_vec()
    }
}

impl Crypto for TestCrypto {
    fn sign(&mut self, msg: &[u8]) -> Vec<u8> {
        Self::mac(&self.id, msg)
    }

    fn certificate(&self) -> Vec<u8> {
        self.id.to_array().to_vec()
    }

    fn verify(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        let bytes: [u8; 16] = cert
            .try_into()
            .map_err(|_| VerifyError("bad certificate".into()))?;
        let id = EntityId::from_array(bytes);
        if id != signer {
            return Err(VerifyError(format!(
                "certificate is for {id}, not {signer}"
            )));
        }
        if Self::mac(&id, msg) == sig {
            Ok(())
        } else {
            Err(VerifyError("bad signature".into()))
        }
    }

    fn random(&mut self, out: &mut [u8]) {
        self.counter += 1;
        let r = crate::model::h(&[
            b"test-rand",
            &self.id.to_array(),
            &self.counter.to_be_bytes(),
        ]);
        for (i, b) in out.iter_mut().enumerate() {
            *b = r[i % 32];
        }
    }
}

/// A party whose private key is in software (the TTP): ECDSA P-256 (raw
/// r || s signatures) with its CV certificate, checking others' CV
/// certificates against the CA's anchor (`tenet_pki::cv`).
pub struct KeyCrypto {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    certificate: Vec<u8>,
    ca: Vec<u8>,
}

impl KeyCrypto {
    /// From a PKCS#8 private key, its CV certificate and the CA's anchor.
    pub fn new(pkcs8: &[u8], certificate: Vec<u8>, ca: Vec<u8>) -> Result<Self, VerifyError> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &rng,
        )
        .map_err(|e| VerifyError(format!("private key: {e}")))?;
        Ok(Self {
            key,
            rng,
            certificate,
            ca,
        })
    }

    /// From PEM text: key (PKCS#8), the entity's certificate file (its CV
    /// certificate is used), CA certificate (its anchor is used).
    pub fn from_pem(key: &[u8], cert: &[u8], ca: &[u8]) -> Result<Self, VerifyError> {
        use pki_types::pem::PemObject;
        let k = pki_types::PrivatePkcs8KeyDer::from_pem_slice(key)
            .map_err(|e| VerifyError(format!("key: {e}")))?;
        let c = tenet_pki::cv::from_pem(cert)?;
        let a = pki_types::CertificateDer::from_pem_slice(ca)
            .map_err(|e| VerifyError(format!("CA certificate: {e}")))?;
        let anchor = tenet_pki::cv::Anchor::from_x509(&a)?;
        Self::new(k.secret_pkcs8_der(), c, anchor.to_bytes())
    }
}

impl Crypto for KeyCrypto {
    fn sign(&mut self, msg: &[u8]) -> Vec<u8> {
        self.key
            .sign(&self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default()
    }

    fn certificate(&self) -> Vec<u8> {
        self.certificate.clone()
    }

    fn verify(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        let signer = Signer::card(signer);
        tenet_pki::verify_with_ca(&self.ca, pki_types::UnixTime::now(), signer, cert, msg, sig)
    }

    fn verify_ttp(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        let signer = Signer::entity(signer);
        tenet_pki::verify_with_ca(&self.ca, pki_types::UnixTime::now(), signer, cert, msg, sig)
    }

    fn verify_for_recovery(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        tenet_pki::verify_ignoring_expiry(
            &self.ca,
            pki_types::UnixTime::now(),
            Signer::card(signer),
            cert,
            msg,
            sig,
        )
    }

    fn random(&mut self, out: &mut [u8]) {
        use ring::rand::SecureRandom;
        self.rng
            .fill(out)
            .expect("the operating system provides randomness");
    }
}
