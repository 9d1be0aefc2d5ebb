//! Certificates for host-to-host TLS: a development CA and host
//! certificates, made with one command (`tenet host certs`).
//!
//! A host certificate names, as DNS subject alternative names, `host.tenet`
//! (every host's certificate has it; links connect to that name) and one
//! `DOMAIN.domain.tenet` per domain the host may serve. A peer may announce
//! a domain only if its certificate names it (or the config lists it for
//! that peer). Keys are ECDSA P-256; files are PEM.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use tenet_proto::Domain;

/// The name every host certificate carries and every link connects to.
pub const HOST_NAME: &str = "host.tenet";

/// The DNS name that authorizes a host to serve `d`.
pub fn domain_name(d: Domain) -> String {
    format!("{d}.domain.tenet")
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
    id: tenet_proto::EntityId,
    public_key: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let ca_pem = read(&dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let spki_der = [&P256_SPKI_PREFIX[..], public_key].concat();
    let spki = rcgen::SubjectPublicKeyInfo::from_der(&spki_der)?;
    let mut p = CertificateParams::new(vec![id.certificate_name()])?;
    p.distinguished_name
        .push(DnType::CommonName, id.to_string());
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    let c = p.signed_by(&spki, &issuer)?;
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| CertError::Pem(e.to_string()))?;
    Ok((c.der().to_vec(), ca_der.to_vec()))
}

/// Issues a certificate and key for a software entity (the TTP's host
/// entity): `dir/NAME-entity.pem` and `.key`.
pub fn issue_entity_key(
    dir: &Path,
    name: &str,
    id: tenet_proto::EntityId,
) -> Result<HostFiles, CertError> {
    let ca_pem = read(&dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::new(vec![id.certificate_name()])?;
    p.distinguished_name
        .push(DnType::CommonName, id.to_string());
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    let c = p.signed_by(&k, &issuer)?;
    let files = HostFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}-entity.pem")),
        key: dir.join(format!("{name}-entity.key")),
    };
    write(&files.key, &k.serialize_pem(), 0o600)?;
    write(&files.cert, &c.pem(), 0o644)?;
    Ok(files)
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
    /// A PEM file holds no certificate.
    #[error("PEM: {0}")]
    Pem(String),
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|source| CertError::Io {
            path: path.to_owned(),
            source,
        })?;
    f.write_all(text.as_bytes())
        .map_err(|source| CertError::Io {
            path: path.to_owned(),
            source,
        })
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Files of one host's TLS identity.
#[derive(Debug, Clone)]
pub struct HostFiles {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The host certificate (PEM).
    pub cert: PathBuf,
    /// The host key (PEM, PKCS#8, mode 0600).
    pub key: PathBuf,
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

/// Issues `dir/NAME.pem` and `dir/NAME.key` for a host serving `domains`,
/// signed by the CA in `dir`.
pub fn issue_host(dir: &Path, name: &str, domains: &[Domain]) -> Result<HostFiles, CertError> {
    let ca_pem = read(&dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let mut sans = vec![HOST_NAME.to_owned()];
    sans.extend(domains.iter().map(|d| domain_name(*d)));
    let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::new(sans)?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let c = p.signed_by(&k, &issuer)?;
    let files = HostFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    write(&files.key, &k.serialize_pem(), 0o600)?;
    write(&files.cert, &c.pem(), 0o644)?;
    Ok(files)
}
