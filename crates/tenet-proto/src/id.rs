//! Entity identifiers (paper 4.2): a 16-byte [`EntityId`] is a 12-byte
//! [`Domain`] followed by a big-endian u32 [`Port`].
//!
//! Text form, used everywhere ids are printed or parsed (CLI, config, logs):
//! 24 lowercase hex digits for the domain, a colon, and the port in decimal,
//! e.g. `00112233445566778899aabb:7`. Parsing accepts upper-case hex too.
//! A domain alone prints and parses as its 24 hex digits.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::codec::{Codec, DecodeError, Reader};

/// Length of a domain in bytes.
pub const DOMAIN_LEN: usize = 12;
/// Length of an entity id in bytes.
pub const ENTITY_ID_LEN: usize = 16;

/// Why a text id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdParseError {
    /// The domain part is not 24 hex digits.
    #[error("domain must be 24 hex digits, got {0:?}")]
    BadDomain(String),
    /// The port part is not a decimal u32.
    #[error("port must be a decimal number from 0 to 4294967295, got {0:?}")]
    BadPort(String),
    /// There is no `:` between domain and port.
    #[error("entity id must look like DOMAIN:PORT (24 hex digits, colon, decimal), got {0:?}")]
    MissingColon(String),
}

/// The 12-byte domain of a card (its uCode part) or of a software domain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain([u8; DOMAIN_LEN]);

impl Domain {
    /// Wraps raw bytes; every 12-byte value is a valid domain.
    pub const fn new(bytes: [u8; DOMAIN_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn bytes(&self) -> &[u8; DOMAIN_LEN] {
        &self.0
    }

    /// The id of the domain's owner (a card or a host's software domain):
    /// this domain with port 0.
    pub const fn owner(self) -> EntityId {
        EntityId::new(self, Port::OWNER)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({self})")
    }
}

impl FromStr for Domain {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdParseError::BadDomain(s.to_owned());
        // Hex digits only: `from_str_radix` alone would also take a `+`.
        if s.len() != 2 * DOMAIN_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; DOMAIN_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// A port: unique within a domain, assigned by the domain's owner, never
/// reused. Port 0 is the owner itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Port(u32);

impl Port {
    /// Port 0: the card (or software domain) itself, never assigned to an app.
    pub const OWNER: Port = Port(0);

    /// Wraps a port number.
    pub const fn new(n: u32) -> Self {
        Self(n)
    }

    /// The port number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Port {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdParseError::BadPort(s.to_owned()));
        }
        s.parse::<u32>()
            .map(Port)
            .map_err(|_| IdParseError::BadPort(s.to_owned()))
    }
}

/// A 16-byte entity id: domain ‖ port.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId {
    domain: Domain,
    port: Port,
}

impl EntityId {
    /// Joins a domain and a port.
    pub const fn new(domain: Domain, port: Port) -> Self {
        Self { domain, port }
    }

    /// The domain part.
    pub const fn domain(&self) -> Domain {
        self.domain
    }

    /// The port part.
    pub const fn port(&self) -> Port {
        self.port
    }

    /// True for the id of a domain's owner (port 0).
    pub fn is_owner(&self) -> bool {
        self.port == Port::OWNER
    }

    /// The DNS name a certificate carries to certify this entity (a card
    /// `DOMAIN:0`, the TTP's entity): `DOMAIN-PORT.id.tenet`.
    pub fn certificate_name(&self) -> String {
        format!("{}-{}.id.tenet", self.domain, self.port)
    }

    /// The 16 wire bytes.
    pub fn to_array(&self) -> [u8; ENTITY_ID_LEN] {
        let mut out = [0u8; ENTITY_ID_LEN];
        out[..DOMAIN_LEN].copy_from_slice(&self.domain.0);
        out[DOMAIN_LEN..].copy_from_slice(&self.port.0.to_be_bytes());
        out
    }

    /// Builds an id from its 16 wire bytes.
    pub fn from_array(b: [u8; ENTITY_ID_LEN]) -> Self {
        let mut d = [0u8; DOMAIN_LEN];
        d.copy_from_slice(&b[..DOMAIN_LEN]);
        let p = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        Self::new(Domain(d), Port(p))
    }
}

impl Codec for EntityId {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_array());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self::from_array(r.array("entity id")?))
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.domain, self.port)
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityId({self})")
    }
}

impl FromStr for EntityId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (d, p) = s
            .split_once(':')
            .ok_or_else(|| IdParseError::MissingColon(s.to_owned()))?;
        Ok(Self::new(d.parse()?, p.parse()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_form_is_documented_one() {
        let id = EntityId::new(
            Domain::new([
                0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
            ]),
            Port::new(7),
        );
        assert_eq!(id.to_string(), "00112233445566778899aabb:7");
        assert_eq!("00112233445566778899AABB:7".parse::<EntityId>(), Ok(id));
        assert_eq!(
            id.to_array()[12..],
            [0, 0, 0, 7],
            "port is big-endian on the wire"
        );
    }

    #[test]
    fn malformed_text_ids_are_refused_with_cause() {
        assert!(matches!(
            "0011".parse::<EntityId>(),
            Err(IdParseError::MissingColon(_))
        ));
        assert!(matches!(
            "0011:1".parse::<EntityId>(),
            Err(IdParseError::BadDomain(_))
        ));
        assert!(matches!(
            "zz112233445566778899aabb:1".parse::<EntityId>(),
            Err(IdParseError::BadDomain(_))
        ));
        assert!(matches!(
            "00112233445566778899aabb:-1".parse::<EntityId>(),
            Err(IdParseError::BadPort(_))
        ));
        assert!(matches!(
            "00112233445566778899aabb:4294967296".parse::<EntityId>(),
            Err(IdParseError::BadPort(_))
        ));
        assert!(matches!(
            "00112233445566778899aabé:1".parse::<EntityId>(),
            Err(IdParseError::BadDomain(_))
        ));
    }

    proptest! {
        #[test]
        fn id_round_trips_through_text_and_wire(bytes in any::<[u8; 16]>()) {
            let id = EntityId::from_array(bytes);
            prop_assert_eq!(id.to_string().parse::<EntityId>(), Ok(id));
            prop_assert_eq!(EntityId::decode(&id.to_bytes()), Ok(id));
            prop_assert_eq!(id.to_array(), bytes);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = s.parse::<EntityId>();
            let _ = s.parse::<Domain>();
        }
    }
}
