//! The card's persistent state: the one record its store holds.
//!
//! The PIN and the PUK are kept as [`SecretHash`]es: Argon2id with the
//! card's salt and the parameters each hash was made with, so that the
//! parameters can be raised later without breaking stored cards. Records
//! written before Argon2id (version 1) hold SHA-256 hashes; they are still
//! read, and the card replaces such a hash at the next successful use of
//! the secret (`docs/apdu.md`, "PIN hashes").

use std::collections::BTreeMap;

use tenet_proto::Domain;
use tenet_proto::codec::{Codec, DecodeError, Reader};
use tenet_proto::tlv::{self, Fields, Tag};

/// PIN tries after personalization or a successful verification.
pub const PIN_TRIES: u8 = 3;
/// PUK tries; after that only re-personalization helps.
pub const PUK_TRIES: u8 = 10;

/// The record version written. Version 1 (SHA-256 PIN hashes only) is
/// still read; an older build refuses a version 2 record instead of
/// misreading it.
const VERSION: u8 = 2;
const OLDEST_VERSION: u8 = 1;

/// Argon2id parameters: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// What this build hashes new PINs and PUKs with, and upgrades older
    /// hashes to: OWASP's first Argon2id recommendation (19 MiB, 2 passes,
    /// 1 lane); a verify-pin takes about 30 ms on the development
    /// machine (`docs/apdu.md`, "PIN hashes").
    pub const CURRENT: Self = Self {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };

    /// The most a stored hash may ask for, so that an edited record
    /// cannot make the card allocate or compute without bound: 256 MiB, 32
    /// passes, 8 lanes. A record asking more is refused as corrupt.
    pub const MAX: Self = Self {
        m_kib: 256 * 1024,
        t: 32,
        p: 8,
    };

    /// The argon2 crate's parameters (32-byte output), if these are valid
    /// and within [`Self::MAX`].
    pub fn argon2(&self) -> Option<argon2::Params> {
        if self.m_kib > Self::MAX.m_kib || self.t > Self::MAX.t || self.p > Self::MAX.p {
            return None;
        }
        argon2::Params::new(self.m_kib, self.t, self.p, Some(SECRET_HASH_LEN)).ok()
    }
}

/// Length of a PIN or PUK hash.
pub const SECRET_HASH_LEN: usize = 32;

/// A stored PIN or PUK: never the secret, only a hash of it.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretHash {
    /// SHA-256(salt ‖ secret): what records written before Argon2id hold.
    /// Still checked, and replaced by an Argon2id hash at the next
    /// successful use of the secret.
    Sha256([u8; SECRET_HASH_LEN]),
    /// Argon2id (version 0x13) of the secret, salted with the card's salt
    /// followed by `PIN` or `PUK`, made with `params`.
    Argon2id {
        /// The parameters it was made with.
        params: KdfParams,
        /// The 32-byte hash.
        hash: [u8; SECRET_HASH_LEN],
    },
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // How it was made, never the hash.
        match self {
            Self::Sha256(_) => f.write_str("Sha256(..)"),
            Self::Argon2id { params, .. } => write!(
                f,
                "Argon2id(m={} KiB, t={}, p={}, ..)",
                params.m_kib, params.t, params.p
            ),
        }
    }
}

impl SecretHash {
    /// Whether this hash is not what [`KdfParams::CURRENT`] makes, so the
    /// card replaces it at the next successful use.
    pub fn needs_upgrade(&self) -> bool {
        !matches!(self, Self::Argon2id { params, .. } if *params == KdfParams::CURRENT)
    }

    /// The stored form: 32 bytes for SHA-256 (the version 1 layout), else
    /// `01` ‖ m_kib ‖ t ‖ p (u32 big-endian each) ‖ the 32-byte hash.
    fn encode(&self, out: &mut Vec<u8>, tag: Tag) {
        match self {
            Self::Sha256(h) => tlv::write(out, tag, h),
            Self::Argon2id { params, hash } => tlv::write_with(out, tag, |v| {
                v.push(ALG_ARGON2ID);
                v.extend_from_slice(&params.m_kib.to_be_bytes());
                v.extend_from_slice(&params.t.to_be_bytes());
                v.extend_from_slice(&params.p.to_be_bytes());
                v.extend_from_slice(hash);
            }),
        }
    }

    fn read(f: &Fields<'_>, tag: Tag, what: &'static str) -> Result<Self, DecodeError> {
        let v = f.require(tag, what)?;
        if let Ok(h) = <[u8; SECRET_HASH_LEN]>::try_from(v) {
            return Ok(Self::Sha256(h));
        }
        let mut r = Reader::new(v);
        let alg = r.u8(what)?;
        if alg != ALG_ARGON2ID {
            return Err(DecodeError::Invalid {
                what,
                detail: format!("unknown algorithm {alg:#04x}"),
            });
        }
        let params = KdfParams {
            m_kib: r.u32(what)?,
            t: r.u32(what)?,
            p: r.u32(what)?,
        };
        if params.argon2().is_none() {
            return Err(DecodeError::Invalid {
                what,
                detail: format!("Argon2id parameters {params:?} are invalid or too large"),
            });
        }
        let hash = r.array(what)?;
        r.expect_empty(what)?;
        Ok(Self::Argon2id { params, hash })
    }
}

/// Algorithm byte of an Argon2id [`SecretHash`].
const ALG_ARGON2ID: u8 = 0x01;

/// Everything a card keeps across power cycles.
#[derive(Clone, PartialEq, Eq)]
pub struct CardState {
    /// The card's domain.
    pub domain: Domain,
    /// The private key, PKCS#8; it never leaves the card.
    pub key_pkcs8: Vec<u8>,
    /// The public key, uncompressed SEC1.
    pub public_key: Vec<u8>,
    /// Salt of the PIN and PUK hashes.
    pub salt: [u8; 16],
    /// The PIN's hash.
    pub pin_hash: SecretHash,
    /// PIN tries left; 0 means blocked.
    pub pin_tries: u8,
    /// The PUK's hash.
    pub puk_hash: SecretHash,
    /// PUK tries left.
    pub puk_tries: u8,
    /// The next port ASSIGN PORT hands out.
    pub next_port: u32,
    /// The card's CV certificate, once issued.
    pub certificate: Option<Vec<u8>>,
    /// The CA anchor the card trusts (its key and reference), once
    /// installed.
    pub ca_certificate: Option<Vec<u8>>,
    /// The lower bound of the card's clock, seconds since the Unix epoch
    /// ([`crate::clock`]); 0 on a card personalized before cards had one.
    pub clock_bound: u64,
    /// Each applet's own persistent data, by applet id.
    pub applets: BTreeMap<u16, Vec<u8>>,
}

impl std::fmt::Debug for CardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material or PIN hashes.
        f.debug_struct("CardState")
            .field("domain", &self.domain)
            .field("pin_tries", &self.pin_tries)
            .field("puk_tries", &self.puk_tries)
            .field("next_port", &self.next_port)
            .field("clock_bound", &self.clock_bound)
            .field("applets", &self.applets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

const T_VERSION: Tag = Tag(0x80);
const T_DOMAIN: Tag = Tag(0x81);
const T_KEY: Tag = Tag(0x82);
const T_PUB: Tag = Tag(0x83);
const T_SALT: Tag = Tag(0x84);
const T_PIN: Tag = Tag(0x85);
const T_PIN_TRIES: Tag = Tag(0x86);
const T_PUK: Tag = Tag(0x87);
const T_PUK_TRIES: Tag = Tag(0x88);
const T_PORT: Tag = Tag(0x89);
const T_CERT: Tag = Tag(0x8a);
const T_APPLETS: Tag = Tag(0x8b);
const T_CA: Tag = Tag(0x8c);
const T_CLOCK: Tag = Tag(0x8d);

impl Codec for CardState {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_VERSION, &[VERSION]);
        tlv::write(out, T_DOMAIN, self.domain.bytes());
        tlv::write(out, T_KEY, &self.key_pkcs8);
        tlv::write(out, T_PUB, &self.public_key);
        tlv::write(out, T_SALT, &self.salt);
        self.pin_hash.encode(out, T_PIN);
        tlv::write(out, T_PIN_TRIES, &[self.pin_tries]);
        self.puk_hash.encode(out, T_PUK);
        tlv::write(out, T_PUK_TRIES, &[self.puk_tries]);
        tlv::write(out, T_PORT, &self.next_port.to_be_bytes());
        if let Some(c) = &self.certificate {
            tlv::write(out, T_CERT, c);
        }
        if let Some(c) = &self.ca_certificate {
            tlv::write(out, T_CA, c);
        }
        if self.clock_bound != 0 {
            tlv::write(out, T_CLOCK, &self.clock_bound.to_be_bytes());
        }
        tlv::write_with(out, T_APPLETS, |a| {
            for (id, data) in &self.applets {
                a.extend_from_slice(&id.to_be_bytes());
                a.extend_from_slice(&(data.len() as u32).to_be_bytes());
                a.extend_from_slice(data);
            }
        });
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        let [v] = f.require_array::<1>(T_VERSION, "card state version")?;
        if !(OLDEST_VERSION..=VERSION).contains(&v) {
            return Err(DecodeError::Invalid {
                what: "card state version",
                detail: format!("{v} is not supported (expected {OLDEST_VERSION} to {VERSION})"),
            });
        }
        let mut applets = BTreeMap::new();
        let mut ar = Reader::new(f.require(T_APPLETS, "applet data")?);
        while ar.left() > 0 {
            let id = ar.u16("applet id")?;
            let len = ar.u32("applet data length")? as usize;
            applets.insert(id, ar.take(len, "applet data")?.to_vec());
        }
        Ok(Self {
            domain: Domain::new(f.require_array(T_DOMAIN, "domain")?),
            key_pkcs8: f.require(T_KEY, "key")?.to_vec(),
            public_key: f.require(T_PUB, "public key")?.to_vec(),
            salt: f.require_array(T_SALT, "salt")?,
            pin_hash: SecretHash::read(&f, T_PIN, "PIN hash")?,
            pin_tries: f.require_array::<1>(T_PIN_TRIES, "PIN tries")?[0],
            puk_hash: SecretHash::read(&f, T_PUK, "PUK hash")?,
            puk_tries: f.require_array::<1>(T_PUK_TRIES, "PUK tries")?[0],
            next_port: u32::from_be_bytes(f.require_array(T_PORT, "next port")?),
            certificate: f.get(T_CERT).map(<[u8]>::to_vec),
            ca_certificate: f.get(T_CA).map(<[u8]>::to_vec),
            clock_bound: match f.get(T_CLOCK) {
                None => 0,
                Some(_) => u64::from_be_bytes(f.require_array(T_CLOCK, "clock bound")?),
            },
            applets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> CardState {
        CardState {
            domain: Domain::new([3; 12]),
            key_pkcs8: vec![1; 138],
            public_key: vec![4; 65],
            salt: [5; 16],
            pin_hash: SecretHash::Argon2id {
                params: KdfParams::CURRENT,
                hash: [6; 32],
            },
            pin_tries: 3,
            puk_hash: SecretHash::Sha256([7; 32]),
            puk_tries: 10,
            next_port: 42,
            certificate: Some(vec![0x30, 0]),
            ca_certificate: None,
            clock_bound: 1_795_737_600,
            applets: [(1, vec![9, 9]), (2, vec![])].into(),
        }
    }

    #[test]
    fn state_round_trips_and_debug_hides_secrets() {
        let s = sample();
        assert_eq!(CardState::decode(&s.to_bytes()).unwrap(), s);
        let d = format!("{s:?}");
        assert!(!d.contains("key_pkcs8") && !d.contains("pin_hash"), "{d}");
    }

    #[test]
    fn hashes_keep_their_parameters_and_old_records_are_read() {
        let mut s = sample();
        let params = KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 2,
        };
        s.puk_hash = SecretHash::Argon2id {
            params,
            hash: [8; 32],
        };
        let bytes = s.to_bytes();
        assert_eq!(CardState::decode(&bytes).unwrap(), s);
        assert!(s.puk_hash.needs_upgrade() && !s.pin_hash.needs_upgrade());
        // A version 1 record: SHA-256 hashes of 32 bytes.
        let mut old = sample();
        old.pin_hash = SecretHash::Sha256([6; 32]);
        let mut v1 = old.to_bytes();
        assert_eq!(v1[..3], [0x80, 1, VERSION]);
        v1[2] = 1;
        assert_eq!(CardState::decode(&v1).unwrap(), old);
        assert!(old.pin_hash.needs_upgrade());
        assert_eq!(format!("{:?}", old.pin_hash), "Sha256(..)");
        assert_eq!(
            format!("{:?}", s.puk_hash),
            "Argon2id(m=65536 KiB, t=3, p=2, ..)"
        );
        // Parameters beyond the bound are refused, not allocated.
        s.puk_hash = SecretHash::Argon2id {
            params: KdfParams {
                m_kib: u32::MAX,
                ..params
            },
            hash: [8; 32],
        };
        assert!(CardState::decode(&s.to_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CardState::decode(&b);
        }
    }
}
