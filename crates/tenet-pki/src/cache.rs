//! Certificates a card has already checked against its CA, remembered in
//! card RAM (never in the store).
//!
//! Checking a peer's certificate costs a signature verification (the CA's
//! signature over it) on top of the verification of the signature the peer
//! made with it. Between the same cards the certificate does not change, so
//! a card remembers the last [`CheckedCertificates::CAPACITY`] certificates
//! it accepted, keyed by the SHA-256 of the CA anchor and the whole
//! certificate. A remembered certificate is still checked for its validity
//! period at the card's current time ([`crate::check::check_validity`]) and
//! for the signer's name and role, and the peer's signature is always
//! verified; only the CA's signature, which depends on nothing but those
//! bytes, is not verified again. It keeps the certificate's bytes too:
//! a peer that knows the card holds them may leave its certificate out.
//!
//! The verification against the CA checks nothing else that could change
//! with time: no revocation lists are used. A card powered up again (the
//! daemon restarted) starts with an empty list.

use std::collections::VecDeque;

use tenet_proto::EntityId;

use crate::check::Validity;

/// A certificate and the CA it was checked against: SHA-256 over the CA
/// anchor's length, the anchor and the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 32]);

/// One remembered certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: Key,
    /// Its validity period.
    validity: Validity,
    /// Whom it names (checked), and its bytes: a peer that knows the card
    /// holds them may leave its certificate out of its next message.
    holder: EntityId,
    cert: Vec<u8>,
    /// [`cert_ref`] of `cert`, made once when it is remembered.
    reference: CertRef,
}

/// A short reference to a certificate: the first 8 bytes of SHA-256 over
/// it. A card names the peer certificate it holds by its reference; the
/// peer may then leave it out.
pub type CertRef = [u8; 8];

/// The reference of `cert` ([`CertRef`]).
pub fn cert_ref(cert: &[u8]) -> CertRef {
    crate::cv::reference(cert)
}

/// Certificates checked against a CA, most recently used first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCertificates {
    entries: VecDeque<Entry>,
    capacity: usize,
}

impl Default for CheckedCertificates {
    fn default() -> Self {
        Self::new(Self::CAPACITY)
    }
}

impl CheckedCertificates {
    /// How many certificates a card remembers.
    pub const CAPACITY: usize = 16;

    /// Remembers up to `capacity` certificates; 0 remembers none (every
    /// certificate is checked against the CA every time).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// True if this list remembers nothing.
    pub fn is_disabled(&self) -> bool {
        self.capacity == 0
    }

    /// How many certificates are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if none is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key of `cert` checked against `ca`.
    pub fn key(ca: &[u8], cert: &[u8]) -> Key {
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        d.update(&(ca.len() as u64).to_be_bytes());
        d.update(ca);
        d.update(cert);
        let mut out = [0; 32];
        out.copy_from_slice(d.finish().as_ref());
        Key(out)
    }

    /// The validity of the certificate of `key`, if it was checked against
    /// the CA before; the caller checks it at the card's time. A hit
    /// becomes the most recently used.
    pub fn lookup(&mut self, key: &Key) -> Option<Validity> {
        let i = self.entries.iter().position(|e| e.key == *key)?;
        let e = self.entries.remove(i).expect("index found above");
        let v = e.validity;
        self.entries.push_front(e);
        Some(v)
    }

    /// Remembers the certificate `cert` of `key`, naming `holder`, of
    /// validity `validity`: the caller has just checked it against the CA.
    /// It makes the certificate's reference ([`cert_ref`]: SHA-256 blocks,
    /// [`CheckedCertificates::reference_blocks`]). The least recently used
    /// goes if the list is full.
    pub fn insert(&mut self, key: Key, validity: Validity, holder: EntityId, cert: &[u8]) {
        if self.is_disabled() {
            return;
        }
        let e = Entry {
            key,
            validity,
            holder,
            cert: cert.to_vec(),
            reference: cert_ref(cert),
        };
        self.entries.retain(|x| x.key != e.key);
        if self.entries.len() == self.capacity {
            self.entries.pop_back();
        }
        self.entries.push_front(e);
    }

    /// The reference of the most recently used certificate naming
    /// `holder`, if one is remembered.
    pub fn reference_for(&self, holder: EntityId) -> Option<CertRef> {
        self.entries
            .iter()
            .find(|e| e.holder == holder)
            .map(|e| e.reference)
    }

    /// The remembered certificate naming `holder` whose reference is `r`.
    pub fn certificate(&self, holder: EntityId, r: &CertRef) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.holder == holder && e.reference == *r)
            .map(|e| &e.cert[..])
    }

    /// SHA-256 blocks of the reference of `cert` (for a card's timing
    /// model).
    pub fn reference_blocks(cert: &[u8]) -> u64 {
        (cert.len() + 9).div_ceil(64) as u64
    }

    /// SHA-256 blocks of one [`CheckedCertificates::key`] (for a card's
    /// timing model): the CA certificate and the certificate, with padding.
    pub fn hash_blocks(ca: &[u8], cert: &[u8]) -> u64 {
        (8 + ca.len() + cert.len() + 9).div_ceil(64) as u64
    }
}

#[cfg(all(test, feature = "issue"))]
mod tests {
    use super::*;
    use tenet_proto::time::CardTime;
    use tenet_proto::{Domain, EntityId, Port};

    use crate::check::{check_validity, validity};

    fn certs(n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        use pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        crate::issue::ensure_ca(dir.path(), "test CA").unwrap();
        let der = |p: &std::path::Path| {
            pki_types::CertificateDer::from_pem_file(p)
                .unwrap()
                .to_vec()
        };
        let ca = crate::cv::Anchor::from_x509(&der(&dir.path().join("ca.pem")))
            .unwrap()
            .to_bytes();
        let certs = (0..n)
            .map(|i| {
                let id = EntityId::new(Domain::new([i as u8; 12]), Port::new(0));
                let f = crate::issue::issue_entity_key(dir.path(), &format!("e{i}"), id).unwrap();
                crate::cv::from_pem(&std::fs::read(&f.cert).unwrap()).unwrap()
            })
            .collect();
        (ca, certs)
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn remembers_a_certificate_for_its_ca_with_its_validity() {
        let (ca, c) = certs(1);
        let mut k = CheckedCertificates::default();
        let key = CheckedCertificates::key(&ca, &c[0]);
        assert_eq!(k.lookup(&key), None);
        let v = validity(&c[0]).unwrap();
        let holder = EntityId::new(Domain::new([0; 12]), Port::new(0));
        k.insert(key, v, holder, &c[0]);
        assert_eq!(k.lookup(&key), Some(v));
        // It is found by its holder and reference, and not by another's.
        let r = cert_ref(&c[0]);
        assert_eq!(k.reference_for(holder), Some(r));
        assert_eq!(k.certificate(holder, &r), Some(&c[0][..]));
        let other = EntityId::new(Domain::new([1; 12]), Port::new(0));
        assert_eq!(k.certificate(other, &r), None);
        assert_eq!(k.certificate(holder, &[0; 8]), None);
        // An entity certificate lives a year from a day before its issue.
        let t = now();
        assert!(
            v.not_before.abs_diff(t - 86_400) < 60,
            "{v:?} issued at {t}"
        );
        assert!(
            v.not_after.abs_diff(t + 365 * 86_400) < 60,
            "{v:?} issued at {t}"
        );
        // A remembered certificate is still checked at the card's time.
        check_validity(v, CardTime::real(t), "e0").unwrap();
        let err = check_validity(v, CardTime::real(v.not_after + 1), "e0").unwrap_err();
        assert!(err.0.contains("expired"), "{err}");
        // The same certificate under another CA is another key.
        let (other_ca, _) = certs(0);
        assert_eq!(k.lookup(&CheckedCertificates::key(&other_ca, &c[0])), None);
        // One byte changed is another key.
        let mut changed = c[0].clone();
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(k.lookup(&CheckedCertificates::key(&ca, &changed)), None);
    }

    #[test]
    fn forgets_the_least_recently_used_and_can_remember_nothing() {
        let (ca, c) = certs(3);
        let key = |i: usize| CheckedCertificates::key(&ca, &c[i]);
        let v = |i: usize| validity(&c[i]).unwrap();
        let holder = |i: u8| EntityId::new(Domain::new([i; 12]), Port::new(0));
        let mut k = CheckedCertificates::new(2);
        k.insert(key(0), v(0), holder(0), &c[0]);
        k.insert(key(1), v(1), holder(1), &c[1]);
        assert!(k.lookup(&key(0)).is_some(), "0 is now the most recent");
        k.insert(key(2), v(2), holder(2), &c[2]);
        assert_eq!(k.len(), 2);
        assert!(k.lookup(&key(0)).is_some());
        assert!(k.lookup(&key(1)).is_none(), "1 was the least recent");
        assert!(k.lookup(&key(2)).is_some());
        k.insert(key(2), v(2), holder(2), &c[2]);
        assert_eq!(k.len(), 2, "no duplicates");

        let mut none = CheckedCertificates::new(0);
        none.insert(key(0), v(0), holder(0), &c[0]);
        assert!(none.is_empty() && none.lookup(&key(0)).is_none());
    }

    #[test]
    fn a_remembered_certificate_must_still_name_the_signer() {
        let (_, c) = certs(2);
        let signer = EntityId::new(Domain::new([1; 12]), Port::new(0));
        let err = crate::check::verify_known(crate::Signer::entity(signer), &c[0], b"m", b"sig")
            .unwrap_err();
        assert!(err.0.contains("certificate for"), "{err}");
        let err = crate::check::verify_known(crate::Signer::entity(signer), &c[1], b"m", b"sig")
            .unwrap_err();
        assert!(err.0.contains("signature"), "{err}");
    }
}
