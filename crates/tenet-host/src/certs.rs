//! Certificates, made with one command each: a development CA (`tenet ca
//! init`), host certificates for links between hosts (`tenet host certs`),
//! and entity certificates for cards (`tenet card new --ca`) and the TTP.
//!
//! A host certificate names, as DNS subject alternative names, `host.tenet`
//! (every host's certificate has it; links connect to that name) and one
//! `DOMAIN.domain.tenet` per domain the host may serve. A peer may announce
//! a domain only if its certificate names it (or the config lists it for
//! that peer). An entity certificate names `DOMAIN-PORT.id.tenet`
//! ([`EntityId::certificate_name`]) as its only name (an empty subject and a
//! critical subject alternative name) and has no extended key usage, so it
//! cannot stand in for a host; it carries nothing else a verifier does not
//! use, as cards send it in every exchange. Keys are ECDSA P-256; files are
//! PEM.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use tenet_proto::{Domain, EntityId};

/// The name every host certificate carries and every link connects to.
pub const HOST_NAME: &str = "host.tenet";

/// The DNS name that authorizes a host to serve `d`.
pub fn domain_name(d: Domain) -> String {
    format!("{d}.domain.tenet")
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// rcgen failed.
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    /// The system's random source failed (for a serial number).
    #[error("random serial number: {0}")]
    Random(String),
    /// A PEM file holds no certificate.
    #[error("PEM: {0}")]
    Pem(String),
}

/// Files of one TLS or entity identity.
#[derive(Debug, Clone)]
pub struct HostFiles {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The key (PEM, PKCS#8, mode 0600).
    pub key: PathBuf,
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Makes `dir/ca.pem` and `dir/ca.key` unless they exist; returns whether
/// it made them.
pub fn ensure_ca(dir: &Path, name: &str) -> Result<bool, CertError> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let c = p.self_signed(&k)?;
    write(&key, &k.serialize_pem(), 0o600)?;
    write(&cert, &c.pem(), 0o644)?;
    Ok(true)
}

/// Signs a leaf certificate for `subject_key` with the CA in `dir`.
fn sign_leaf(
    dir: &Path,
    sans: Vec<String>,
    common_name: &str,
    host: bool,
    subject_key: &impl PublicKeyData,
) -> Result<(Certificate, String), CertError> {
    let ca_pem = read(&dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let mut p = CertificateParams::new(sans)?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if host {
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
    } else {
        // An entity certificate travels in the exchange's m2 and m3 over
        // the cards' links: only what a verifier uses. The name is the
        // subject alternative name (critical, as the subject is empty); no
        // key identifiers, no basic constraints (absent means not a CA);
        // a 64-bit serial.
        p.distinguished_name = DistinguishedName::new();
        p.is_ca = IsCa::NoCa;
        let mut serial = [0u8; 8];
        getrandom::fill(&mut serial).map_err(|e| CertError::Random(e.to_string()))?;
        serial[0] &= 0x7f; // a positive INTEGER
        serial[0] |= 0x40; // of exactly 8 bytes
        p.serial_number = Some(SerialNumber::from_slice(&serial));
    }
    // rcgen writes the CA's subject back as the issuer, and panics (in
    // yasna) on an attribute type it read as an invalid OID: a first byte of
    // 120 or more becomes a first arc of 3 or more. A corrupt CA file is an
    // error, not a crash.
    let signed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.signed_by(subject_key, &issuer)
    }))
    .map_err(|_| CertError::Gen(rcgen::Error::CouldNotParseCertificate))??;
    Ok((signed, ca_pem))
}

/// Makes a key and a certificate for it, saved as `dir/STEM.pem`, `.key`.
fn issue_with_new_key(
    dir: &Path,
    stem: &str,
    sans: Vec<String>,
    cn: &str,
    host: bool,
) -> Result<HostFiles, CertError> {
    let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (c, _) = sign_leaf(dir, sans, cn, host, &k)?;
    let files = HostFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    };
    write(&files.key, &k.serialize_pem(), 0o600)?;
    write(&files.cert, &c.pem(), 0o644)?;
    Ok(files)
}

/// Issues `dir/NAME.pem` and `dir/NAME.key` for a host serving `domains`,
/// signed by the CA in `dir`.
pub fn issue_host(dir: &Path, name: &str, domains: &[Domain]) -> Result<HostFiles, CertError> {
    let mut sans = vec![HOST_NAME.to_owned()];
    sans.extend(domains.iter().map(|d| domain_name(*d)));
    issue_with_new_key(dir, name, sans, name, true)
}

/// Issues a key and certificate for a software entity (the TTP's host
/// entity): `dir/NAME-entity.pem` and `.key`.
pub fn issue_entity_key(dir: &Path, name: &str, id: EntityId) -> Result<HostFiles, CertError> {
    issue_with_new_key(
        dir,
        &format!("{name}-entity"),
        vec![id.certificate_name()],
        &id.to_string(),
        false,
    )
}

/// DER prefix of a P-256 SubjectPublicKeyInfo before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Issues, with the CA in `dir`, a certificate for entity `id` whose key is
/// `public_key` (uncompressed SEC1 P-256, as a card reports it): the card
/// keeps its private key; only the public key leaves it. Returns the
/// certificate and the CA certificate, both DER.
pub fn issue_entity(
    dir: &Path,
    id: EntityId,
    public_key: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let spki_der = [&P256_SPKI_PREFIX[..], public_key].concat();
    let spki = rcgen::SubjectPublicKeyInfo::from_der(&spki_der)?;
    let (c, ca_pem) = sign_leaf(
        dir,
        vec![id.certificate_name()],
        &id.to_string(),
        false,
        &spki,
    )?;
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| CertError::Pem(e.to_string()))?;
    Ok((c.der().to_vec(), ca_der.to_vec()))
}
