//! Card-verifiable certificates: what cards send and check.
//!
//! A card does not parse X.509. The CA issues each card, and the TTP
//! entity, two forms of one certificate: the X.509 certificate, for hosts,
//! TLS and `openssl`, and a card-verifiable (CV) certificate in the style of
//! ISO/IEC 7816-8 and BSI TR-03110: a fixed sequence of BER-TLV data
//! objects a card checks with one signature verification and no ASN.1
//! parser. The CV form carries the same key, holder, role and dates.
//!
//! ```text
//! 7F21  CV certificate
//!   7F4E  certificate body (the signed bytes: this whole data object)
//!     5F29 01       profile identifier: 00
//!     42   08       certification authority reference: the CA's key reference
//!     7F49 43       public key
//!       86 41       P-256 point, uncompressed (04 || x || y)
//!     5F20 10       certificate holder reference: the holder's entity id
//!     7F4C 03       holder authorization
//!       53 01       role: 01 a card, 02 a software entity (the TTP's)
//!     5F25 1..8     effective date: Unix seconds, big-endian, no leading zero
//!     5F24 1..8     expiry date: the last valid second, as above
//!   5F37 40         the CA's signature: ECDSA P-256 with SHA-256, raw r || s
//! ```
//!
//! TR-03110 writes dates as six digits (YYMMDD); here they are seconds,
//! so both forms of a certificate end at the same second.
//!
//! What a card trusts, its [`Anchor`], is the CA's public key with its
//! reference (the first 8 bytes of SHA-256 over the uncompressed point):
//!
//! ```text
//! 42   08   the CA's key reference
//! 7F49 43   the CA's public key
//!   86 41   P-256 point, uncompressed
//! ```
//!
//! Both decoders take only this one encoding (each length in its shortest
//! form, no other data object, nothing after). The CA's signature is ECDSA,
//! which anyone can rewrite into a second valid one (s into n - s), so a
//! certificate may have two byte strings; a card's cache of checked
//! certificates ([`crate::cache`]) keys each by its bytes and checks each
//! fully before remembering it. The role is checked with the holder: a
//! card's signature needs a card's certificate, the TTP's an entity's
//! ([`crate::Signer`]). A host derives the anchor from the
//! CA's X.509 certificate ([`Anchor::from_x509`]); an entity's PEM file
//! holds its X.509 certificate, then its CV certificate as a
//! [`PEM_LABEL`] block ([`from_pem`]).

use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use tenet_proto::EntityId;
use tenet_proto::codec::DecodeError;
use tenet_proto::time::CardTime;
use tenet_proto::tlv::{self, Tag, Tlv};

use crate::check::{Signer, Validity, VerifyError, check_validity};

/// The PEM label of a CV certificate in an entity's certificate file.
pub const PEM_LABEL: &str = "CV CERTIFICATE";
/// The longest CV certificate a decoder reads: the largest valid one is
/// 206 bytes (both dates 8 bytes long).
pub const MAX_BYTES: usize = 256;
/// The length of an anchor's encoding.
pub const ANCHOR_BYTES: usize = 80;
/// The profile identifier this version writes and reads.
pub const PROFILE: u8 = 0;

const T_CERT: Tag = Tag(0x7f21);
const T_BODY: Tag = Tag(0x7f4e);
const T_PROFILE: Tag = Tag(0x5f29);
const T_CAR: Tag = Tag(0x42);
const T_KEY: Tag = Tag(0x7f49);
const T_POINT: Tag = Tag(0x86);
const T_CHR: Tag = Tag(0x5f20);
const T_CHAT: Tag = Tag(0x7f4c);
const T_ROLE: Tag = Tag(0x53);
const T_FROM: Tag = Tag(0x5f25);
const T_TO: Tag = Tag(0x5f24);
const T_SIG: Tag = Tag(0x5f37);

/// An uncompressed P-256 point.
pub type Point = [u8; 65];

/// What a certificate's holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CvRole {
    /// A card (its id `DOMAIN:0`).
    Card,
    /// A software entity: the TTP's host entity.
    Entity,
}

impl CvRole {
    /// "a card", "a software entity".
    pub fn described(self) -> &'static str {
        match self {
            CvRole::Card => "a card",
            CvRole::Entity => "a software entity",
        }
    }

    fn byte(self) -> u8 {
        match self {
            CvRole::Card => 1,
            CvRole::Entity => 2,
        }
    }
}

impl std::fmt::Display for CvRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CvRole::Card => "card",
            CvRole::Entity => "entity",
        })
    }
}

/// A CA key reference: the first 8 bytes of SHA-256 over its point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef(pub [u8; 8]);

impl KeyRef {
    /// The reference of the key `point`.
    pub fn of(point: &Point) -> Self {
        Self(reference(point))
    }
}

/// The first 8 bytes of SHA-256 over `bytes`: how a CA key
/// ([`KeyRef`]) and a certificate (`crate::cache::cert_ref`) are named in
/// few bytes.
pub fn reference(bytes: &[u8]) -> [u8; 8] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut r = [0u8; 8];
    r.copy_from_slice(&d.as_ref()[..8]);
    r
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What a card trusts: the CA's public key and its reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The CA's key reference ([`KeyRef::of`] its point).
    pub reference: KeyRef,
    /// The CA's public key.
    pub public_key: Point,
}

impl Anchor {
    /// The anchor of the CA key `point`.
    pub fn of(point: Point) -> Self {
        Self {
            reference: KeyRef::of(&point),
            public_key: point,
        }
    }

    /// The anchor of a CA's X.509 certificate (DER): its P-256 key.
    pub fn from_x509(ca: &[u8]) -> Result<Self, VerifyError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(ca)
            .map_err(|e| VerifyError(format!("CA certificate: {e}")))?;
        let point: Point = parsed
            .public_key()
            .subject_public_key
            .data
            .as_ref()
            .try_into()
            .map_err(|_| VerifyError("CA certificate: not a P-256 key".into()))?;
        Ok(Self::of(point))
    }

    /// The anchor of the CA certificate in PEM text (a CA's `ca.pem`).
    pub fn from_pem(text: &[u8]) -> Result<Self, VerifyError> {
        use pki_types::pem::PemObject;
        let der = pki_types::CertificateDer::from_pem_slice(text)
            .map_err(|e| VerifyError(format!("CA certificate: {e}")))?;
        Self::from_x509(&der)
    }

    /// Its encoding (80 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80);
        tlv::write(&mut out, T_CAR, &self.reference.0);
        write_key(&mut out, &self.public_key);
        out
    }

    /// Decodes an anchor; the reference must be its key's.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != ANCHOR_BYTES {
            return Err(invalid("CV anchor", "not 80 bytes"));
        }
        let items = strict(bytes, 2, "CV anchor")?;
        let reference = KeyRef(array(expect(&items[0], T_CAR, "CA reference")?)?);
        let public_key = read_key(&items[1])?;
        if KeyRef::of(&public_key) != reference {
            return Err(invalid("CV anchor", "the reference is not its key's"));
        }
        Ok(Self {
            reference,
            public_key,
        })
    }
}

/// A decoded CV certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CvCertificate {
    /// The CA key that signed it.
    pub authority: KeyRef,
    /// The holder's public key.
    pub public_key: Point,
    /// The holder.
    pub holder: EntityId,
    /// What the holder is.
    pub role: CvRole,
    /// Its first and last valid seconds.
    pub validity: Validity,
    /// The CA's signature (r || s) over `body`.
    pub signature: [u8; 64],
    /// The signed bytes: the body data object.
    body: Vec<u8>,
}

impl CvCertificate {
    /// The body of a certificate (the bytes the CA signs).
    pub fn body(
        authority: KeyRef,
        public_key: &Point,
        holder: EntityId,
        role: CvRole,
        validity: Validity,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(140);
        tlv::write_with(&mut out, T_BODY, |out| {
            tlv::write(out, T_PROFILE, &[PROFILE]);
            tlv::write(out, T_CAR, &authority.0);
            write_key(out, public_key);
            tlv::write(out, T_CHR, &holder.to_array());
            tlv::write_with(out, T_CHAT, |out| tlv::write(out, T_ROLE, &[role.byte()]));
            tlv::write(out, T_FROM, seconds(&validity.not_before.to_be_bytes()));
            tlv::write(out, T_TO, seconds(&validity.not_after.to_be_bytes()));
        });
        out
    }

    /// The certificate of `body` ([`CvCertificate::body`]) and the CA's
    /// raw signature over it.
    pub fn assemble(body: &[u8], signature: &[u8; 64]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 72);
        tlv::write_with(&mut out, T_CERT, |out| {
            out.extend_from_slice(body);
            tlv::write(out, T_SIG, signature);
        });
        out
    }

    /// Decodes a certificate (its signature is not checked:
    /// [`CvCertificate::check_signature`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_BYTES {
            return Err(DecodeError::TooLarge {
                what: "CV certificate",
                len: bytes.len(),
                max: MAX_BYTES,
            });
        }
        let outer = strict(bytes, 1, "CV certificate")?;
        let parts = strict(
            expect(&outer[0], T_CERT, "CV certificate")?,
            2,
            "CV certificate",
        )?;
        let body_bytes = encoding_of(&parts[0]);
        let f = strict(
            expect(&parts[0], T_BODY, "certificate body")?,
            7,
            "certificate body",
        )?;
        if expect(&f[0], T_PROFILE, "profile identifier")? != [PROFILE] {
            return Err(invalid("profile identifier", "not 00"));
        }
        let authority = KeyRef(array(expect(&f[1], T_CAR, "CA reference")?)?);
        let public_key = read_key(&f[2])?;
        let holder = EntityId::from_array(array(expect(&f[3], T_CHR, "holder reference")?)?);
        let chat = strict(
            expect(&f[4], T_CHAT, "holder authorization")?,
            1,
            "holder authorization",
        )?;
        let role = match expect(&chat[0], T_ROLE, "role")? {
            [1] => CvRole::Card,
            [2] => CvRole::Entity,
            _ => return Err(invalid("role", "not 01 (card) or 02 (entity)")),
        };
        let validity = Validity {
            not_before: read_seconds(expect(&f[5], T_FROM, "effective date")?)?,
            not_after: read_seconds(expect(&f[6], T_TO, "expiry date")?)?,
        };
        if validity.not_after < validity.not_before {
            return Err(invalid("expiry date", "before the effective date"));
        }
        let signature = array(expect(&parts[1], T_SIG, "signature")?)?;
        Ok(Self {
            authority,
            public_key,
            holder,
            role,
            validity,
            signature,
            body: body_bytes.to_vec(),
        })
    }

    /// Its encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        Self::assemble(&self.body, &self.signature)
    }

    /// Checks the CA's signature with `anchor`, which must be the CA the
    /// certificate names.
    pub fn check_signature(&self, anchor: &Anchor) -> Result<(), VerifyError> {
        if self.authority != anchor.reference {
            return Err(VerifyError(format!(
                "certificate chain: the certificate for {} was issued by CA key {}, not the trusted {}",
                self.holder, self.authority, anchor.reference
            )));
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &anchor.public_key)
            .verify(&self.body, &self.signature)
            .map_err(|_| {
                VerifyError(format!(
                    "certificate chain: the CA's signature over the certificate for {} does not verify",
                    self.holder
                ))
            })
    }

    /// Checks that it names `signer` in its role and that `sig` (r || s)
    /// over `msg` verifies with its key.
    pub fn check_signed(&self, signer: Signer, msg: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
        if self.holder != signer.id {
            return Err(VerifyError(format!(
                "the certificate for {} is not for {}",
                self.holder, signer.id
            )));
        }
        if self.role != signer.role {
            return Err(VerifyError(format!(
                "the certificate for {} certifies {}; this signature must be {}'s",
                self.holder,
                self.role.described(),
                signer.role.described()
            )));
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_key)
            .verify(msg, sig)
            .map_err(|_| VerifyError(format!("signature by {} does not verify", signer.id)))
    }

    /// Checks its validity at `time` ([`check_validity`]).
    pub fn check_time(&self, time: CardTime) -> Result<(), VerifyError> {
        check_validity(self.validity, time, &format!("for {}", self.holder))
    }
}

impl std::fmt::Display for CvCertificate {
    /// `HOLDER (ROLE), key KEYREF-of-its-point, by CA KEYREF, valid FROM to TO`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}), CA key {}, {}",
            self.holder, self.role, self.authority, self.validity
        )
    }
}

/// The CV certificate in an entity's PEM certificate file, if it holds one.
pub fn from_pem(text: &[u8]) -> Result<Vec<u8>, VerifyError> {
    let blocks = pem::parse_many(text).map_err(|e| VerifyError(format!("PEM: {e}")))?;
    let cv = blocks
        .into_iter()
        .find(|b| b.tag() == PEM_LABEL)
        .ok_or_else(|| {
            VerifyError(format!(
                "the certificate file holds no {PEM_LABEL} (issued before cards used CV certificates: issue it again)"
            ))
        })?;
    CvCertificate::decode(cv.contents()).map_err(|e| VerifyError(format!("{PEM_LABEL}: {e}")))?;
    Ok(cv.into_contents())
}

/// Both forms in an entity's PEM certificate file: the X.509 certificate
/// (DER) and the CV certificate.
pub fn both_from_pem(text: &[u8]) -> Result<(Vec<u8>, Vec<u8>), VerifyError> {
    use pki_types::pem::PemObject;
    let x509 = pki_types::CertificateDer::from_pem_slice(text)
        .map_err(|e| VerifyError(format!("X.509 certificate: {e}")))?;
    Ok((x509.to_vec(), from_pem(text)?))
}

/// `cv` as a [`PEM_LABEL`] block.
pub fn to_pem(cv: &[u8]) -> String {
    pem::encode(&pem::Pem::new(PEM_LABEL, cv.to_vec()))
}

fn write_key(out: &mut Vec<u8>, point: &Point) {
    tlv::write_with(out, T_KEY, |out| tlv::write(out, T_POINT, point));
}

fn read_key(t: &Tlv<'_>) -> Result<Point, DecodeError> {
    let inner = strict(expect(t, T_KEY, "public key")?, 1, "public key")?;
    let point: Point = array(expect(&inner[0], T_POINT, "public key point")?)?;
    if point[0] != 4 {
        return Err(invalid("public key point", "not uncompressed"));
    }
    Ok(point)
}

/// The shortest big-endian form of a number of seconds (at least a byte).
fn seconds(be: &[u8; 8]) -> &[u8] {
    let start = be.iter().position(|b| *b != 0).unwrap_or(7);
    &be[start..]
}

fn read_seconds(v: &[u8]) -> Result<u64, DecodeError> {
    if v.is_empty() || v.len() > 8 || (v.len() > 1 && v[0] == 0) {
        return Err(invalid("date", "not 1 to 8 bytes without a leading zero"));
    }
    Ok(v.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
}

/// Exactly `n` data objects filling `bytes`, each length in its shortest
/// form.
fn strict<'a>(bytes: &'a [u8], n: usize, what: &'static str) -> Result<Vec<Tlv<'a>>, DecodeError> {
    let items = tlv::parse_all(bytes)?;
    if items.len() != n {
        return Err(invalid(
            what,
            &format!("{} data objects, not {n}", items.len()),
        ));
    }
    let canonical: usize = items.iter().map(encoded_len).sum();
    if canonical != bytes.len() {
        return Err(invalid(what, "a length not in its shortest form"));
    }
    Ok(items)
}

/// The bytes a data object takes in its shortest encoding.
fn encoded_len(t: &Tlv<'_>) -> usize {
    let tag = match t.tag.0 {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        _ => 3,
    };
    let len = match t.value.len() {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 4,
    };
    tag + len + t.value.len()
}

/// The whole encoding of `t`, which lies in the input it was read from
/// (its value's end, its shortest header before it: [`strict`] checked).
fn encoding_of<'a>(t: &Tlv<'a>) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(t));
    tlv::write(&mut out, t.tag, t.value);
    out
}

fn expect<'a>(t: &Tlv<'a>, tag: Tag, what: &'static str) -> Result<&'a [u8], DecodeError> {
    if t.tag == tag {
        Ok(t.value)
    } else {
        Err(invalid(
            what,
            &format!("tag {:#x} where {:#x} belongs", t.tag.0, tag.0),
        ))
    }
}

fn array<const N: usize>(v: &[u8]) -> Result<[u8; N], DecodeError> {
    v.try_into().map_err(|_| DecodeError::Invalid {
        what: "CV data object",
        detail: format!("{} bytes where {N} belong", v.len()),
    })
}

fn invalid(what: &'static str, detail: &str) -> DecodeError {
    DecodeError::Invalid {
        what,
        detail: detail.to_owned(),
    }
}

/// Issuing CV certificates (the CA's side).
#[cfg(feature = "issue")]
pub mod issue {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    /// Signs the CV certificate of `holder` with the CA key `ca_pkcs8`.
    pub fn sign(
        ca_pkcs8: &[u8],
        public_key: &Point,
        holder: EntityId,
        role: CvRole,
        validity: Validity,
    ) -> Result<Vec<u8>, VerifyError> {
        let rng = ring::rand::SystemRandom::new();
        let ca = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ca_pkcs8, &rng)
            .map_err(|e| VerifyError(format!("CA key: {e}")))?;
        let ca_point: Point = ca
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| VerifyError("CA key: not P-256".into()))?;
        let body = CvCertificate::body(KeyRef::of(&ca_point), public_key, holder, role, validity);
        let sig = ca
            .sign(&rng, &body)
            .map_err(|e| VerifyError(format!("signing: {e}")))?;
        let sig: [u8; 64] = sig
            .as_ref()
            .try_into()
            .map_err(|_| VerifyError("signature: not 64 bytes".into()))?;
        Ok(CvCertificate::assemble(&body, &sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    fn key() -> (EcdsaKeyPair, Point) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let p = k.public_key().as_ref().try_into().unwrap();
        (k, p)
    }

    fn cert(ca: &EcdsaKeyPair, ca_point: &Point, holder: &Point, id: EntityId) -> Vec<u8> {
        let v = Validity {
            not_before: 1_700_000_000,
            not_after: 1_800_000_000,
        };
        let body = CvCertificate::body(KeyRef::of(ca_point), holder, id, CvRole::Card, v);
        let rng = ring::rand::SystemRandom::new();
        let sig = ca.sign(&rng, &body).unwrap();
        CvCertificate::assemble(&body, sig.as_ref().try_into().unwrap())
    }

    #[test]
    fn a_certificate_round_trips_and_verifies_with_its_anchor_only() {
        let (ca, ca_point) = key();
        let (other, other_point) = key();
        let (holder, point) = key();
        let id: EntityId = "0a0b0c0d0e0f101112131415:0".parse().unwrap();
        let bytes = cert(&ca, &ca_point, &point, id);
        assert!(bytes.len() <= MAX_BYTES, "{}", bytes.len());
        let c = CvCertificate::decode(&bytes).unwrap();
        assert_eq!(c.to_bytes(), bytes);
        assert_eq!((c.holder, c.role, c.public_key), (id, CvRole::Card, point));
        let anchor = Anchor::of(ca_point);
        assert_eq!(Anchor::decode(&anchor.to_bytes()).unwrap(), anchor);
        c.check_signature(&anchor).unwrap();
        let err = c.check_signature(&Anchor::of(other_point)).unwrap_err();
        assert!(err.0.contains("not the trusted"), "{err}");
        // A certificate naming the trusted CA's reference but signed by
        // another key.
        let forged = cert(&other, &ca_point, &point, id);
        let err = CvCertificate::decode(&forged)
            .unwrap()
            .check_signature(&anchor)
            .unwrap_err();
        assert!(err.0.contains("does not verify"), "{err}");
        let rng = ring::rand::SystemRandom::new();
        let sig = holder.sign(&rng, b"m").unwrap();
        c.check_signed(Signer::card(id), b"m", sig.as_ref())
            .unwrap();
        assert!(
            c.check_signed(Signer::card(id), b"n", sig.as_ref())
                .is_err()
        );
        let other_id: EntityId = "0a0b0c0d0e0f101112131415:1".parse().unwrap();
        assert!(
            c.check_signed(Signer::card(other_id), b"m", sig.as_ref())
                .is_err()
        );
        // A card's certificate does not sign for the TTP's entity.
        let e = c
            .check_signed(Signer::entity(id), b"m", sig.as_ref())
            .unwrap_err();
        assert!(e.0.contains("certifies a card"), "{e}");
    }

    #[test]
    fn only_the_one_encoding_decodes() {
        let (ca, ca_point) = key();
        let (_, point) = key();
        let id: EntityId = "0a0b0c0d0e0f101112131415:0".parse().unwrap();
        let bytes = cert(&ca, &ca_point, &point, id);
        // Every byte changed, every prefix and a trailing byte: refused or
        // another certificate whose signature fails.
        let anchor = Anchor::of(ca_point);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if let Ok(c) = CvCertificate::decode(&b) {
                assert!(c.check_signature(&anchor).is_err(), "byte {i}");
            }
        }
        for n in 0..bytes.len() {
            assert!(CvCertificate::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(CvCertificate::decode(&longer).is_err());
        // A long-form length where the short one belongs.
        assert_eq!(bytes[2], 0x81);
        let mut long_len = vec![0x7f, 0x21, 0x82, 0x00, bytes[3]];
        long_len.extend_from_slice(&bytes[4..]);
        assert!(CvCertificate::decode(&long_len).is_err());
    }
}
