//! Certificates a card has already checked against its CA, remembered in
//! card RAM (never in the store).
//!
//! Checking a peer's certificate costs a signature verification (the CA's
//! signature over it) on top of the verification of the signature the peer
//! made with it. Between the same cards the certificate does not change, so
//! a card remembers the last [`CheckedCertificates::CAPACITY`] certificates
//! it accepted, keyed by the SHA-256 of the CA certificate and the whole
//! certificate. A remembered certificate is still checked for its validity
//! period at the card's current time and for the signer's name, and the
//! peer's signature is always verified; only the CA's signature, which
//! depends on nothing but those bytes, is not verified again.
//!
//! The verification against the CA (webpki) checks nothing else that could
//! change with time: no revocation lists are used. A card powered up again
//! (the daemon restarted) starts with an empty list.

use std::collections::VecDeque;

use pki_types::UnixTime;

/// A certificate and the CA it was checked against: SHA-256 over the CA
/// certificate's length, the CA certificate and the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 32]);

/// One remembered certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: Key,
    /// The validity period, in seconds since the Unix epoch, inclusive.
    not_before: u64,
    not_after: u64,
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

    /// True if the certificate of `key` was checked before and is valid
    /// at `now`; a hit becomes the most recently used.
    pub fn contains(&mut self, key: &Key, now: UnixTime) -> bool {
        let Some(i) = self.entries.iter().position(|e| e.key == *key) else {
            return false;
        };
        let e = &self.entries[i];
        let now = now.as_secs();
        if now < e.not_before || now > e.not_after {
            return false;
        }
        let e = self.entries.remove(i).expect("index found above");
        self.entries.push_front(e);
        true
    }

    /// Remembers `cert` under `key`: the caller has just checked it
    /// against the CA (webpki accepted it). The least recently used goes if
    /// the list is full; a certificate whose validity cannot be read is not
    /// remembered.
    pub fn insert(&mut self, key: Key, cert: &[u8]) {
        if self.is_disabled() {
            return;
        }
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
            return;
        };
        let v = parsed.validity();
        let secs = |t: i64| u64::try_from(t).unwrap_or(0);
        let e = Entry {
            key,
            not_before: secs(v.not_before.timestamp()),
            not_after: secs(v.not_after.timestamp()),
        };
        self.entries.retain(|x| x.key != e.key);
        if self.entries.len() == self.capacity {
            self.entries.pop_back();
        }
        self.entries.push_front(e);
    }

    /// SHA-256 blocks of one [`CheckedCertificates::key`] (for a card's
    /// timing model): the CA certificate and the certificate, with padding.
    pub fn hash_blocks(ca: &[u8], cert: &[u8]) -> u64 {
        (8 + ca.len() + cert.len() + 9).div_ceil(64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_proto::{Domain, EntityId, Port};

    fn certs(n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        use pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        tenet_host::certs::ensure_ca(dir.path(), "test CA").unwrap();
        let der = |p: &std::path::Path| {
            pki_types::CertificateDer::from_pem_file(p)
                .unwrap()
                .to_vec()
        };
        let ca = der(&dir.path().join("ca.pem"));
        let certs = (0..n)
            .map(|i| {
                let id = EntityId::new(Domain::new([i as u8; 12]), Port::new(0));
                let f =
                    tenet_host::certs::issue_entity_key(dir.path(), &format!("e{i}"), id).unwrap();
                der(&f.cert)
            })
            .collect();
        (ca, certs)
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
    }

    /// 2026-11-27, inside the certificates' validity (1975 to 4096).
    const NOW: u64 = 1_795_737_600;

    #[test]
    fn remembers_a_certificate_for_its_ca_within_its_validity() {
        let (ca, c) = certs(1);
        let mut k = CheckedCertificates::default();
        let key = CheckedCertificates::key(&ca, &c[0]);
        assert!(!k.contains(&key, at(NOW)));
        k.insert(key, &c[0]);
        assert!(k.contains(&key, at(NOW)));
        // Before 1975 and after 4096 the certificate is not valid.
        assert!(!k.contains(&key, at(0)));
        assert!(!k.contains(&key, at(67_000_000_000 + 200_000_000)));
        // The same certificate under another CA is another key.
        let (other_ca, _) = certs(0);
        assert!(!k.contains(&CheckedCertificates::key(&other_ca, &c[0]), at(NOW)));
        // One byte changed is another key.
        let mut changed = c[0].clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(!k.contains(&CheckedCertificates::key(&ca, &changed), at(NOW)));
    }

    #[test]
    fn forgets_the_least_recently_used_and_can_remember_nothing() {
        let (ca, c) = certs(3);
        let key = |i: usize| CheckedCertificates::key(&ca, &c[i]);
        let mut k = CheckedCertificates::new(2);
        k.insert(key(0), &c[0]);
        k.insert(key(1), &c[1]);
        assert!(k.contains(&key(0), at(NOW)), "0 is now the most recent");
        k.insert(key(2), &c[2]);
        assert_eq!(k.len(), 2);
        assert!(k.contains(&key(0), at(NOW)));
        assert!(!k.contains(&key(1), at(NOW)), "1 was the least recent");
        assert!(k.contains(&key(2), at(NOW)));
        k.insert(key(2), &c[2]);
        assert_eq!(k.len(), 2, "no duplicates");

        let mut none = CheckedCertificates::new(0);
        none.insert(key(0), &c[0]);
        assert!(none.is_empty() && !none.contains(&key(0), at(NOW)));
    }

    #[test]
    fn a_remembered_certificate_must_still_name_the_signer() {
        let (_, c) = certs(2);
        let signer = EntityId::new(Domain::new([1; 12]), Port::new(0));
        let err = crate::applet::verify_known(signer, &c[0], b"m", b"sig").unwrap_err();
        assert!(err.0.contains("certificate for"), "{err}");
        let err = crate::applet::verify_known(signer, &c[1], b"m", b"sig").unwrap_err();
        assert!(err.0.contains("signature"), "{err}");
    }
}
