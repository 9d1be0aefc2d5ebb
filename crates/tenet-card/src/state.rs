//! The card's persistent state: the one record its store holds.

use std::collections::BTreeMap;

use tenet_proto::Domain;
use tenet_proto::codec::{Codec, DecodeError, Reader};
use tenet_proto::tlv::{self, Fields, Tag};

/// PIN tries after personalization or a successful verification.
pub const PIN_TRIES: u8 = 3;
/// PUK tries; after that only re-personalization helps.
pub const PUK_TRIES: u8 = 10;

const VERSION: u8 = 1;

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
    /// SHA-256(salt ‖ PIN).
    pub pin_hash: [u8; 32],
    /// PIN tries left; 0 means blocked.
    pub pin_tries: u8,
    /// SHA-256(salt ‖ PUK).
    pub puk_hash: [u8; 32],
    /// PUK tries left.
    pub puk_tries: u8,
    /// The next port ASSIGN PORT hands out.
    pub next_port: u32,
    /// The card's certificate, once issued.
    pub certificate: Option<Vec<u8>>,
    /// The CA certificate the card trusts, once installed.
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
        tlv::write(out, T_PIN, &self.pin_hash);
        tlv::write(out, T_PIN_TRIES, &[self.pin_tries]);
        tlv::write(out, T_PUK, &self.puk_hash);
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
        if v != VERSION {
            return Err(DecodeError::Invalid {
                what: "card state version",
                detail: format!("{v} is not supported (expected {VERSION})"),
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
            pin_hash: f.require_array(T_PIN, "PIN hash")?,
            pin_tries: f.require_array::<1>(T_PIN_TRIES, "PIN tries")?[0],
            puk_hash: f.require_array(T_PUK, "PUK hash")?,
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
            pin_hash: [6; 32],
            pin_tries: 3,
            puk_hash: [7; 32],
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

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CardState::decode(&b);
        }
    }
}
