//! Hostile input into tenet-pki: certificate chain verification with a
//! hostile CA certificate, certificate, message or signature, certificate
//! issuance with a hostile card public key or CA certificate file, and the
//! CA's check of a hostile certificate request.
//!
//! Each property asserts that nothing panics; the chain verification also
//! that it allocates within its bound `a·n + c` (counted by the counting
//! global allocator this binary installs; the harness is the tenet-hostile
//! crate), that the untouched inputs verify and that a certificate, message
//! or signature that differs in any byte never does. The bounds and where
//! the other crates' properties live are in `docs/hostile-input.md`.
//!
//! Needs the feature `issue` (to make the certificates):
//! `cargo test -p tenet-pki --all-features --test hostile`. Cases per
//! property: `TENET_HOSTILE_CASES` (default 2000; issuance runs a quarter).
//! A failure prints the shrunk input; `PROPTEST_RNG_SEED=N` fixes a run's
//! random seed.

use std::cell::Cell;
use std::path::Path;
use std::sync::OnceLock;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
};
use tenet_hostile::{
    Bound, DER_TOKENS, PEM_TOKENS, Probe, cases, check, check_with, hostile, shape,
};
use tenet_pki::cv::{Anchor, CvCertificate};
use tenet_pki::{Signer, ensure_ca, issue_entity, issue_entity_key, verify_with_ca};
use tenet_proto::{Domain, EntityId};

tenet_hostile::install_counting_allocator!();

/// A CA (its anchor, the form cards trust); the TTP's entity key and CV
/// certificate, and bytes it signed; and a
/// card's id and public key (a P-256 key made here, as uncompressed SEC1,
/// the form a card reports).
struct Fixture {
    _dir: tempfile::TempDir,
    ca_der: Vec<u8>,
    ttp: EntityId,
    ttp_cert_der: Vec<u8>,
    /// Bytes the TTP signed, and its signature.
    signed: Vec<u8>,
    signature: Vec<u8>,
    card: EntityId,
    card_public_key: Vec<u8>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(Fixture::new)
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ensure_ca(&ca, "hostile-input CA").unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        let rng = SystemRandom::new();

        let ttp = Domain::new([0x77; 12]).owner();
        let files = issue_entity_key(&ca, "ttp", ttp).unwrap();
        let ttp_key = PrivatePkcs8KeyDer::from_pem_slice(&read(&files.key)).unwrap();
        let ttp_key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            ttp_key.secret_pkcs8_der(),
            &rng,
        )
        .unwrap();
        let ttp_cert_der = tenet_pki::cv::from_pem(&read(&files.cert)).unwrap();
        let ca_der = CertificateDer::from_pem_slice(&read(&files.ca)).unwrap();
        let ca_der = Anchor::from_x509(&ca_der).unwrap().to_bytes();
        let signed = b"hostile input: bytes the TTP signed".to_vec();
        let signature = ttp_key.sign(&rng, &signed).unwrap().as_ref().to_vec();

        let card_key = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let card_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, card_key.as_ref(), &rng)
                .unwrap();
        Self {
            ca_der,
            ttp,
            ttp_cert_der,
            signed,
            signature,
            card: Domain::new([0xc0; 12]).owner(),
            card_public_key: card_key.public_key().as_ref().to_vec(),
            _dir: dir,
        }
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Part {
    Ca,
    Cert,
    Message,
    Signature,
}

/// Decoding an anchor and a CV certificate (lists of at most a few data
/// objects, the body copied, input over 256 bytes refused unread) and
/// checking two signatures: what it allocates is those lists and the error
/// text.
const CHAIN: Bound = Bound::new(16, 16 * 1024);

/// Hostile CV certificates into their decoder: no panic, allocation within
/// the bound, and whatever decodes is the one encoding of what it says
/// (encoding it again gives the input), so a card's cache of checked
/// certificates, keyed by the bytes, cannot be fooled by a re-encoding.
#[test]
fn cv_certificates_decode_only_their_one_encoding() {
    let fx = fixture();
    let probe = Probe::new("CvCertificate::decode", CHAIN);
    check(
        hostile(Just(fx.ttp_cert_der.clone()).boxed(), DER_TOKENS),
        |input| {
            let out = probe.run(input.bytes.len(), || CvCertificate::decode(&input.bytes))?;
            match out {
                Ok(c) => prop_assert_eq!(c.to_bytes(), input.bytes),
                Err(e) => prop_assert!(!input.pristine, "the untouched certificate: {e}"),
            }
            Ok(())
        },
    );
    probe.finish(cases());
}

/// Hostile CA certificates, certificates, messages and signatures into the
/// chain verification the voucher applet and the TTP use. No panic,
/// allocation within the bound, the untouched inputs verify, and a
/// certificate, message or signature that differs in any byte never does.
#[test]
fn certificate_chain_verification() {
    let fx = fixture();
    let parts = [
        (Part::Ca, fx.ca_der.clone()),
        (Part::Cert, fx.ttp_cert_der.clone()),
        (Part::Message, fx.signed.clone()),
        (Part::Signature, fx.signature.clone()),
    ];
    let cases_for = parts
        .into_iter()
        .map(|(part, seed)| {
            hostile(Just(seed).boxed(), DER_TOKENS)
                .prop_map(move |i| (part, i))
                .boxed()
        })
        .collect::<Vec<_>>();
    let strategy = proptest::strategy::Union::new(cases_for);
    let probe = Probe::new("verify_with_ca", CHAIN);
    let now = UnixTime::now();
    check(strategy, |(part, input)| {
        let mut ca = &fx.ca_der[..];
        let mut cert = &fx.ttp_cert_der[..];
        let mut message = &fx.signed[..];
        let mut sig = &fx.signature[..];
        let original = match part {
            Part::Ca => std::mem::replace(&mut ca, &input.bytes),
            Part::Cert => std::mem::replace(&mut cert, &input.bytes),
            Part::Message => std::mem::replace(&mut message, &input.bytes),
            Part::Signature => std::mem::replace(&mut sig, &input.bytes),
        };
        let n = ca.len() + cert.len() + message.len() + sig.len();
        let out = probe.run(n, || {
            verify_with_ca(ca, now, Signer::entity(fx.ttp), cert, message, sig)
        })?;
        let changed = input.bytes != original;
        if !changed {
            prop_assert!(out.is_ok(), "the untouched inputs do not verify: {out:?}");
        } else if part != Part::Ca {
            prop_assert!(out.is_err(), "a changed {part:?} still verifies");
        }
        Ok(())
    });
    probe.finish(cases());
}

/// Certificate issuance parses the CA certificate file and the public key a
/// card reports: hostile ones are refused or certified, never a panic.
#[test]
fn certificate_issuance_with_hostile_keys_and_ca_files() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "issuing CA").unwrap();
    let ca_pem = std::fs::read(ca.join("ca.pem")).unwrap();
    let issued = Cell::new(0u64);
    let refused = Cell::new(0u64);
    let strategy = prop_oneof![
        hostile(Just(fx.card_public_key.clone()).boxed(), DER_TOKENS).prop_map(|i| (false, i)),
        hostile(Just(ca_pem.clone()).boxed(), PEM_TOKENS).prop_map(|i| (true, i)),
    ];
    check_with(cases().div_ceil(4), strategy, |(ca_file, input)| {
        let key = if ca_file {
            std::fs::write(ca.join("ca.pem"), &input.bytes).unwrap();
            &fx.card_public_key[..]
        } else {
            std::fs::write(ca.join("ca.pem"), &ca_pem).unwrap();
            &input.bytes[..]
        };
        let out = issue_entity(&ca, fx.card, key);
        if input.pristine {
            prop_assert!(
                out.is_ok(),
                "the valid key and CA were refused: {:?}",
                out.err()
            );
        }
        match out {
            Ok(_) => issued.set(issued.get() + 1),
            Err(_) => refused.set(refused.get() + 1),
        }
        Ok(())
    });
    eprintln!(
        "issue_entity: {} issued, {} refused",
        issued.get(),
        refused.get()
    );
}

/// Parsing a request: x509-parser borrows the DER; it allocates the
/// subject's and the extensions' lists and the error text.
const REQUEST: Bound = Bound::new(64, 64 * 1024);

/// Hostile certificate requests into the CA's check (`tenet ca sign`): no
/// panic, allocation within the bound, the untouched request is accepted,
/// and a request that differs in any byte is refused or says exactly what
/// the untouched one says (same key, names and common name): nothing
/// unsigned gets through.
#[test]
fn certificate_requests_the_ca_checks() {
    let dir = tempfile::tempdir().unwrap();
    let asked = tenet_pki::Asked::Domains(vec![Domain::new([0xa1; 12]), Domain::new([0xb2; 12])]);
    let files = tenet_pki::make_request(dir.path(), "host", &asked).unwrap();
    let der = pki_types::CertificateSigningRequestDer::from_pem_slice(
        &std::fs::read(&files.csr).unwrap(),
    )
    .unwrap()
    .to_vec();
    let original = tenet_pki::Request::from_der(&der).unwrap();
    let probe = Probe::new("Request::from_der", REQUEST);
    check(hostile(Just(der.clone()).boxed(), DER_TOKENS), |input| {
        let out = probe.run(input.bytes.len(), || {
            tenet_pki::Request::from_der(&input.bytes)
        })?;
        match out {
            Ok(r) => prop_assert_eq!(r, original.clone()),
            Err(e) => prop_assert!(input.bytes != der, "the untouched request was refused: {e}"),
        }
        Ok(())
    });
    probe.finish(cases());
}

// ---------------------------------------------------------------------------
// Worst-case shape
// ---------------------------------------------------------------------------

/// A certificate that presents the most names: the name check fails and
/// its error lists every name presented (the per-byte factor of [`CHAIN`]).
#[test]
fn worst_case_shapes_stay_within_the_bounds() {
    let fx = fixture();
    // A host certificate presenting 1500 names: the name check fails and its
    // error lists every name presented.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "shape CA").unwrap();
    let domains: Vec<Domain> = (0..1500u32)
        .map(|i| {
            let mut d = [0u8; 12];
            d[..4].copy_from_slice(&i.to_be_bytes());
            Domain::new(d)
        })
        .collect();
    let files = tenet_pki::issue_host(&ca, "many-names", &domains).unwrap();
    let cert = CertificateDer::from_pem_slice(&std::fs::read(&files.cert).unwrap())
        .unwrap()
        .to_vec();
    let ca_der = fx.ca_der.clone();
    let now = UnixTime::now();
    shape(
        "verify_with_ca, an X.509 certificate of 1500 names presented",
        CHAIN,
        &cert,
        |c| verify_with_ca(&ca_der, now, Signer::entity(fx.ttp), c, b"m", b"s"),
    );
}

// ---------------------------------------------------------------------------
// Regressions: inputs the properties above found
// ---------------------------------------------------------------------------

/// PEM text of `der` (base64, 64 columns).
fn to_pem(label: &str, der: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::new();
    for c in der.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(c.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(c.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            b64.push(if i <= c.len() {
                DIGITS[(n >> (18 - 6 * i)) as usize & 63]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Certificate issuance read the CA certificate with rcgen, which decodes
/// an attribute type whose first byte is 120 or more as an OID with a first
/// arc of 3 or more and then panics (in yasna) writing it back as the
/// issuer: a corrupt CA file crashed `tenet card new --ca`, `tenet host
/// certs` and the TTP's certificate issuance. Found by
/// `certificate_issuance_with_hostile_keys_and_ca_files` at 200 000 cases.
#[test]
fn regression_ca_subject_with_an_invalid_oid_is_an_error() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "regression CA").unwrap();
    let pem = std::fs::read(ca.join("ca.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap().to_vec();
    // The re-encoding itself is sound: the untouched CA still issues.
    std::fs::write(ca.join("ca.pem"), to_pem("CERTIFICATE", &der)).unwrap();
    issue_entity(&ca, fx.card, &fx.card_public_key).expect("the untouched CA issues");
    let common_name = [0x06, 0x03, 0x55, 0x04, 0x03];
    for first in [0x78u8, 0x89, 0xff] {
        let mut bad = der.clone();
        let mut hits = 0;
        for i in 0..bad.len() - common_name.len() {
            if bad[i..i + common_name.len()] == common_name {
                bad[i + 2] = first;
                hits += 1;
            }
        }
        assert!(hits > 0, "no common name in the CA certificate");
        std::fs::write(ca.join("ca.pem"), to_pem("CERTIFICATE", &bad)).unwrap();
        assert!(
            issue_entity(&ca, fx.card, &fx.card_public_key).is_err(),
            "first OID byte {first:#04x}"
        );
    }
}
