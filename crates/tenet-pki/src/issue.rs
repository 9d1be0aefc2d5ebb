//! Making certificates (feature `issue`, with rcgen): a development CA
//! (`tenet ca init`), host certificates for links between hosts (`tenet
//! host certs`), and entity certificates for cards (`tenet card new --ca`)
//! and the TTP (`tenet ca entity`). Keys are ECDSA P-256; files are PEM.
//! What the certificates say and who may use them is in the crate
//! documentation.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pki_types::CertificateDer;
use pki_types::pem::PemObject;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use tenet_proto::{Domain, EntityId};

use crate::cv::{Anchor, CvRole, Point};
use crate::roles::{HOST_NAME, domain_name};
use crate::{CertError, Validity};

/// Default lifetime of a CA, in days (10 years).
pub const CA_DAYS: u32 = 3650;
/// Default lifetime of a card's certificate, in days (3 years).
pub const CARD_DAYS: u32 = 1095;
/// Default lifetime of a host certificate, in days (1 year).
pub const HOST_DAYS: u32 = 365;
/// Default lifetime of the TTP entity's certificate, in days (1 year).
pub const ENTITY_DAYS: u32 = 365;
/// How long before its issue a certificate is valid from.
pub const BACKDATE: Duration = Duration::from_secs(86_400);

/// The validity period of a certificate to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// The first moment it is valid.
    pub not_before: SystemTime,
    /// The last moment it is valid.
    pub not_after: SystemTime,
}

impl Lifetime {
    /// Valid from [`BACKDATE`] before now until `days` days from now.
    pub fn days(days: u32) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - BACKDATE,
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    /// Valid from `not_before` to `not_after` (tests: expired, not yet
    /// valid).
    pub fn between(not_before: SystemTime, not_after: SystemTime) -> Self {
        Self {
            not_before,
            not_after,
        }
    }

    fn apply(self, p: &mut CertificateParams) {
        p.not_before = self.not_before.into();
        p.not_after = self.not_after.into();
    }
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

pub(crate) fn write(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
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

pub(crate) fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Makes `dir/ca.pem` and `dir/ca.key`, valid [`CA_DAYS`], unless they
/// exist; returns whether it made them.
pub fn ensure_ca(dir: &Path, name: &str) -> Result<bool, CertError> {
    ensure_ca_with(dir, name, Lifetime::days(CA_DAYS))
}

/// [`ensure_ca`] with the CA's lifetime.
pub fn ensure_ca_with(dir: &Path, name: &str, lifetime: Lifetime) -> Result<bool, CertError> {
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
    check_lifetime(lifetime)?;
    lifetime.apply(&mut p);
    let c = p.self_signed(&k)?;
    write(&key, &k.serialize_pem(), 0o600)?;
    write(&cert, &c.pem(), 0o644)?;
    Ok(true)
}

fn check_lifetime(l: Lifetime) -> Result<(), CertError> {
    if unix(l.not_after) > tenet_proto::time::MAX_TIME {
        return Err(CertError::TooLong);
    }
    match l.not_after.duration_since(l.not_before) {
        Ok(d) if !d.is_zero() => Ok(()),
        _ => Err(CertError::Lifetime),
    }
}

/// Seconds since the Unix epoch (0 before it).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The validity of the certificate `der` (seconds since the Unix epoch).
pub fn validity(der: &[u8]) -> Result<Validity, CertError> {
    crate::check::x509_validity(der).map_err(|e| CertError::Malformed(e.0))
}

/// Signs a leaf certificate for `subject_key` with the CA in `dir`, valid
/// for `lifetime` but not beyond the CA's own end.
/// What a leaf certificate is for.
pub(crate) enum Leaf<'a> {
    /// A host's TLS certificate, with its common name.
    Host(&'a str),
    /// An entity's signing certificate: it has a CV form too
    /// ([`crate::cv`]), for the key `point`.
    Entity(EntityId, CvRole, &'a Point),
}

/// A signed leaf: the X.509 certificate, the CA certificate (PEM) and, for
/// an entity, its CV certificate.
pub(crate) struct SignedLeaf {
    pub(crate) cert: Certificate,
    pub(crate) ca_pem: String,
    pub(crate) cv: Option<Vec<u8>>,
}

impl SignedLeaf {
    /// The certificate file: the X.509 certificate, then the CV one.
    pub(crate) fn pem(&self) -> String {
        let mut pem = self.cert.pem();
        if let Some(cv) = &self.cv {
            pem += &crate::cv::to_pem(cv);
        }
        pem
    }
}

pub(crate) fn sign_leaf(
    dir: &Path,
    sans: Vec<String>,
    leaf: Leaf<'_>,
    subject_key: &impl PublicKeyData,
    lifetime: Lifetime,
) -> Result<SignedLeaf, CertError> {
    let ca_pem = read(&dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let ca_pkcs8 = ca_key.serialize_der();
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| CertError::Pem(e.to_string()))?;
    let ca_end = validity(&ca_der)?.not_after;
    if ca_end < unix(SystemTime::now()) {
        return Err(CertError::CaExpired {
            dir: dir.to_owned(),
            at: tenet_proto::time::Utc(ca_end).to_string(),
        });
    }
    check_lifetime(lifetime)?;
    let mut lifetime = lifetime;
    let ca_end_time = SystemTime::UNIX_EPOCH + Duration::from_secs(ca_end);
    lifetime.not_after = lifetime.not_after.min(ca_end_time);
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let mut p = CertificateParams::new(sans)?;
    lifetime.apply(&mut p);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if let Leaf::Host(common_name) = leaf {
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
    // The CV form: the same key, holder and dates, signed by the same CA.
    let cv = match leaf {
        Leaf::Host(_) => None,
        Leaf::Entity(id, role, point) => {
            let v = validity(signed.der())?;
            Some(
                crate::cv::issue::sign(&ca_pkcs8, point, id, role, v)
                    .map_err(|e| CertError::Malformed(e.0))?,
            )
        }
    };
    Ok(SignedLeaf {
        cert: signed,
        ca_pem,
        cv,
    })
}

/// The files of `dir/STEM.pem` and `.key`.
fn files(dir: &Path, stem: &str) -> HostFiles {
    HostFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    }
}

/// Whether `dir/STEM.key` exists: issuing renews that key's certificate.
fn renews(dir: &Path, stem: &str) -> bool {
    files(dir, stem).key.exists()
}

/// Makes a certificate saved as `dir/STEM.pem` for the key in
/// `dir/STEM.key`, kept if it exists (renewal), else made.
fn issue_for_key(
    dir: &Path,
    stem: &str,
    sans: Vec<String>,
    entity: Option<(EntityId, CvRole)>,
    lifetime: Lifetime,
) -> Result<HostFiles, CertError> {
    let files = files(dir, stem);
    let (k, new) = if files.key.exists() {
        (KeyPair::from_pem(&read(&files.key)?)?, false)
    } else {
        (KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?, true)
    };
    let point = point_of(k.public_key_raw())?;
    let leaf = match entity {
        None => Leaf::Host(stem),
        Some((id, role)) => Leaf::Entity(id, role, &point),
    };
    let signed = sign_leaf(dir, sans, leaf, &k, lifetime)?;
    if new {
        write(&files.key, &k.serialize_pem(), 0o600)?;
    }
    write(&files.cert, &signed.pem(), 0o644)?;
    Ok(files)
}

/// `raw` as an uncompressed P-256 point.
pub(crate) fn point_of(raw: &[u8]) -> Result<Point, CertError> {
    raw.try_into()
        .map_err(|_| CertError::Malformed("not an uncompressed P-256 public key".into()))
}

/// Issues `dir/NAME.pem` and `dir/NAME.key` for a host serving `domains`,
/// signed by the CA in `dir`, valid [`HOST_DAYS`]; renews the certificate
/// of the key in place if the files exist.
pub fn issue_host(dir: &Path, name: &str, domains: &[Domain]) -> Result<HostFiles, CertError> {
    issue_host_with(dir, name, domains, Lifetime::days(HOST_DAYS))
}

/// [`issue_host`] with the certificate's lifetime.
pub fn issue_host_with(
    dir: &Path,
    name: &str,
    domains: &[Domain],
    lifetime: Lifetime,
) -> Result<HostFiles, CertError> {
    let mut sans = vec![HOST_NAME.to_owned()];
    sans.extend(domains.iter().map(|d| domain_name(*d)));
    issue_for_key(dir, name, sans, None, lifetime)
}

/// Whether [`issue_host`] for `name` renews (the key exists).
pub fn host_renews(dir: &Path, name: &str) -> bool {
    renews(dir, name)
}

/// Issues a key and certificate for a software entity (the TTP's host
/// entity): `dir/NAME-entity.pem` and `.key`, valid [`ENTITY_DAYS`];
/// renews the certificate of the key in place if the files exist (cards
/// that pinned the old certificate accept the renewal: same key).
pub fn issue_entity_key(dir: &Path, name: &str, id: EntityId) -> Result<HostFiles, CertError> {
    issue_entity_key_with(dir, name, id, Lifetime::days(ENTITY_DAYS))
}

/// [`issue_entity_key`] with the certificate's lifetime.
pub fn issue_entity_key_with(
    dir: &Path,
    name: &str,
    id: EntityId,
    lifetime: Lifetime,
) -> Result<HostFiles, CertError> {
    issue_signing_key(dir, &format!("{name}-entity"), id, CvRole::Entity, lifetime)
}

/// A signing key and certificate for `id` in `role`, `dir/STEM.pem` and
/// `.key` (renewed in place if they exist).
fn issue_signing_key(
    dir: &Path,
    stem: &str,
    id: EntityId,
    role: CvRole,
    lifetime: Lifetime,
) -> Result<HostFiles, CertError> {
    issue_for_key(
        dir,
        stem,
        vec![id.certificate_name()],
        Some((id, role)),
        lifetime,
    )
}

/// A card whose key is in a file, `dir/NAME-card.pem` and `.key`, with a
/// card's certificate for `id` (renewed in place if they exist): for
/// simulations, tests and benchmarks that play a card in software. A real
/// card makes its key inside and never lets it out ([`issue_entity`]).
pub fn issue_card_key_with(
    dir: &Path,
    name: &str,
    id: EntityId,
    lifetime: Lifetime,
) -> Result<HostFiles, CertError> {
    issue_signing_key(dir, &format!("{name}-card"), id, CvRole::Card, lifetime)
}

/// [`issue_card_key_with`] for [`CARD_DAYS`].
pub fn issue_card_key(dir: &Path, name: &str, id: EntityId) -> Result<HostFiles, CertError> {
    issue_card_key_with(dir, name, id, Lifetime::days(CARD_DAYS))
}

/// Whether [`issue_entity_key`] for `name` renews (the key exists).
pub fn entity_renews(dir: &Path, name: &str) -> bool {
    renews(dir, &format!("{name}-entity"))
}

/// DER prefix of a P-256 SubjectPublicKeyInfo before the 65-byte point.
pub(crate) const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The public key `point` (uncompressed SEC1 P-256) as rcgen signs it.
pub(crate) fn p256_spki(point: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CertError> {
    let spki_der = [&P256_SPKI_PREFIX[..], point].concat();
    Ok(rcgen::SubjectPublicKeyInfo::from_der(&spki_der)?)
}

/// A card's certificates, as the CA issued them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardCertificates {
    /// The X.509 certificate (DER), for hosts and `openssl`.
    pub x509: Vec<u8>,
    /// The CV certificate ([`crate::cv`]): what the card sends and others
    /// check.
    pub cv: Vec<u8>,
    /// The CA certificate (DER).
    pub ca: Vec<u8>,
}

impl CardCertificates {
    /// What the card stores: its CV certificate and the CA's anchor
    /// ([`crate::cv::Anchor`]).
    pub fn card_forms(&self) -> Result<(Vec<u8>, Vec<u8>), CertError> {
        let anchor = Anchor::from_x509(&self.ca).map_err(|e| CertError::Malformed(e.0))?;
        Ok((self.cv.clone(), anchor.to_bytes()))
    }
}

/// Issues, with the CA in `dir`, a certificate for card `id` whose key is
/// `public_key` (uncompressed SEC1 P-256, as a card reports it), valid
/// [`CARD_DAYS`], in both forms: the card keeps its private key; only the
/// public key leaves it.
pub fn issue_entity(
    dir: &Path,
    id: EntityId,
    public_key: &[u8],
) -> Result<CardCertificates, CertError> {
    issue_entity_with(dir, id, public_key, Lifetime::days(CARD_DAYS))
}

/// [`issue_entity`] with the certificate's lifetime (`tenet card new
/// --days`, `tenet card recertify`).
pub fn issue_entity_with(
    dir: &Path,
    id: EntityId,
    public_key: &[u8],
    lifetime: Lifetime,
) -> Result<CardCertificates, CertError> {
    let spki = p256_spki(public_key)?;
    let point = point_of(public_key)?;
    let signed = sign_leaf(
        dir,
        vec![id.certificate_name()],
        Leaf::Entity(id, CvRole::Card, &point),
        &spki,
        lifetime,
    )?;
    let ca_der = pki_types::CertificateDer::from_pem_slice(signed.ca_pem.as_bytes())
        .map_err(|e| CertError::Pem(e.to_string()))?;
    Ok(CardCertificates {
        x509: signed.cert.der().to_vec(),
        cv: signed.cv.unwrap_or_default(),
        ca: ca_der.to_vec(),
    })
}

/// The validity of the certificate in the PEM file `path`.
pub fn file_validity(path: &Path) -> Result<Validity, CertError> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| CertError::Pem(format!("{}: {e}", path.display())))?;
    validity(&der)
}

/// `tenet host certs`: makes a development CA in `dir` (once) and a host
/// certificate for `name` serving `domains` (renewed for the same key if
/// it exists); returns what to tell the user, the config lines included.
pub fn host_certs_report(
    dir: &Path,
    name: &str,
    domains: &[Domain],
    lifetime: Lifetime,
) -> Result<String, CertError> {
    let mut out = String::new();
    if ensure_ca(dir, "tenet development CA")? {
        out += &format!("made CA {}\n", dir.join("ca.pem").display());
    }
    let renews = host_renews(dir, name);
    let f = issue_host_with(dir, name, domains, lifetime)?;
    let (cert, key) = (f.cert.display(), f.key.display());
    out += &match renews {
        true => format!("renewed {cert} (same key {key})\n"),
        false => format!("made {cert} and {key}\n"),
    };
    let list: Vec<String> = domains.iter().map(ToString::to_string).collect();
    out += &format!(
        "{}\nrole: host (TLS links); may serve only {}\nconfig: [remote] ca = {:?}, cert = {:?}, key = {:?}",
        file_validity(&f.cert)?,
        list.join(", "),
        f.ca,
        f.cert,
        f.key
    );
    Ok(out)
}

/// `tenet ca entity`: a key and certificate for entity `id` (renewed for
/// the same key if they exist); returns what to tell the user.
pub fn entity_report(
    dir: &Path,
    name: &str,
    id: EntityId,
    lifetime: Lifetime,
) -> Result<String, CertError> {
    let renews = entity_renews(dir, name);
    let f = issue_entity_key_with(dir, name, id, lifetime)?;
    let made = if renews { "renewed (same key)" } else { "made" };
    Ok(format!(
        "{made} {} and {} for {id}\n{}\nrole: entity (signatures only; refused for TLS links)",
        f.cert.display(),
        f.key.display(),
        file_validity(&f.cert)?
    ))
}

/// `tenet ca init`: a CA in `dir` unless one is there; returns what to
/// tell the user.
pub fn ca_init_report(dir: &Path, name: &str, lifetime: Lifetime) -> Result<String, CertError> {
    let ca = dir.join("ca.pem");
    let made = match ensure_ca_with(dir, name, lifetime)? {
        true => format!("made CA {}", ca.display()),
        false => format!("CA {} exists; kept", ca.display()),
    };
    Ok(format!("{made}\n{}", file_validity(&ca)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::{authorized_domains, check_domains, check_host_role};
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};

    fn ca() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        ensure_ca(dir.path(), "test CA").unwrap();
        dir
    }

    /// A certificate from the CA in `dir` for a fresh key, naming `names`,
    /// with the extended key usages `usages`.
    fn leaf(
        dir: &Path,
        names: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
        custom: Vec<rcgen::CustomExtension>,
    ) -> CertificateDer<'static> {
        let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key")).unwrap()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&read(&dir.join("ca.pem")).unwrap(), ca_key).unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.extended_key_usages = usages;
        p.custom_extensions = custom;
        let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        p.signed_by(&k, &issuer).unwrap().der().clone()
    }

    #[test]
    fn a_host_certificate_authorizes_the_domains_it_names() {
        let dir = ca();
        let (a, b, c) = (
            Domain::new([0xa1; 12]),
            Domain::new([0xb2; 12]),
            Domain::new([0xc3; 12]),
        );
        let files = issue_host(dir.path(), "h", &[a, b]).unwrap();
        let cert = CertificateDer::from_pem_file(&files.cert).unwrap();
        check_host_role(&cert).unwrap();
        assert_eq!(authorized_domains(&cert).unwrap(), vec![a, b]);
        check_domains(&cert, &[b, a]).unwrap();
        assert!(matches!(
            check_domains(&cert, &[a, c]),
            Err(CertError::DomainNotNamed { domain, .. }) if domain == c
        ));
    }

    #[test]
    fn card_and_entity_certificates_are_not_host_certificates() {
        let dir = ca();
        let ttp = issue_entity_key(dir.path(), "ttp", Domain::new([0x77; 12]).owner()).unwrap();
        let ttp = CertificateDer::from_pem_file(&ttp.cert).unwrap();
        let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let card = Domain::new([0xca; 12]).owner();
        let card = issue_entity(dir.path(), card, k.public_key_raw())
            .unwrap()
            .x509;
        for cert in [ttp, CertificateDer::from(card)] {
            assert!(
                matches!(check_host_role(&cert), Err(CertError::NotHost { .. })),
                "{:?}",
                check_host_role(&cert)
            );
            assert!(matches!(
                authorized_domains(&cert),
                Err(CertError::NotHost { .. })
            ));
        }
    }

    #[test]
    fn a_host_certificate_has_both_tls_usages_and_the_host_name() {
        let dir = ca();
        let d = Domain::new([0xd4; 12]);
        let name = domain_name(d);
        let cases = [
            (vec![HOST_NAME, &name], vec![ServerAuth], false),
            (vec![HOST_NAME, &name], vec![ClientAuth], false),
            (vec![HOST_NAME, &name], vec![], false),
            (vec![&name], vec![ServerAuth, ClientAuth], false),
            (vec![HOST_NAME, &name], vec![ClientAuth, ServerAuth], true),
        ];
        for (names, usages, ok) in cases {
            let cert = leaf(dir.path(), &names, usages.clone(), vec![]);
            assert_eq!(
                check_host_role(&cert).is_ok(),
                ok,
                "{names:?} {usages:?}: {:?}",
                check_host_role(&cert)
            );
        }
        // A critical extended key usage is read too. DER contents of
        // id-kp-serverAuth and id-kp-clientAuth (1.3.6.1.5.5.7.3.1 and .2):
        const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
        const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
        let mut eku = rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 37],
            [
                &[0x30, 0x14, 0x06, 0x08][..],
                SERVER_AUTH,
                &[0x06, 0x08],
                CLIENT_AUTH,
            ]
            .concat(),
        );
        eku.set_criticality(true);
        let cert = leaf(dir.path(), &[HOST_NAME, &name], vec![], vec![eku]);
        assert_eq!(authorized_domains(&cert).unwrap(), vec![d]);
    }

    /// Days from now to `v`, rounded.
    fn days_from_now(v: u64) -> i64 {
        let now = unix(SystemTime::now());
        (v as i64 - now as i64 + 43_200).div_euclid(86_400)
    }

    #[test]
    fn certificates_have_real_lifetimes_and_renewal_keeps_the_key() {
        let dir = ca();
        let der = |p: &Path| CertificateDer::from_pem_file(p).unwrap().to_vec();
        let ca_v = validity(&der(&dir.path().join("ca.pem"))).unwrap();
        assert_eq!(days_from_now(ca_v.not_after), 3650, "{ca_v:?}");
        assert_eq!(days_from_now(ca_v.not_before), -1, "a day back: {ca_v:?}");
        let d = Domain::new([0xd4; 12]);
        assert!(!host_renews(dir.path(), "h"));
        let h = issue_host(dir.path(), "h", &[d]).unwrap();
        let hv = validity(&der(&h.cert)).unwrap();
        assert_eq!(days_from_now(hv.not_after), 365, "{hv:?}");
        let ttp = issue_entity_key(dir.path(), "ttp", d.owner()).unwrap();
        assert_eq!(
            days_from_now(validity(&der(&ttp.cert)).unwrap().not_after),
            365
        );
        let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let card = issue_entity(dir.path(), d.owner(), k.public_key_raw())
            .unwrap()
            .x509;
        assert_eq!(days_from_now(validity(&card).unwrap().not_after), 1095);

        // Renewal in place: a new certificate, a later end, the same key.
        let key_before = std::fs::read(&h.key).unwrap();
        assert!(host_renews(dir.path(), "h"));
        let h2 = issue_host_with(dir.path(), "h", &[d], Lifetime::days(30)).unwrap();
        assert_eq!(std::fs::read(&h2.key).unwrap(), key_before, "same key");
        assert_eq!(
            days_from_now(validity(&der(&h2.cert)).unwrap().not_after),
            30
        );
        let ttp_key = std::fs::read(&ttp.key).unwrap();
        assert!(entity_renews(dir.path(), "ttp"));
        let ttp2 =
            issue_entity_key_with(dir.path(), "ttp", d.owner(), Lifetime::days(800)).unwrap();
        assert_eq!(std::fs::read(&ttp2.key).unwrap(), ttp_key, "same key");
        let cv = |p: &Path| crate::cv::from_pem(&std::fs::read(p).unwrap()).unwrap();
        assert!(crate::same_key(&cv(&ttp.cert), &cv(&ttp2.cert)));
        // Both forms of the entity's certificate: the same key, holder and
        // dates.
        let c = crate::cv::CvCertificate::decode(&cv(&ttp2.cert)).unwrap();
        assert_eq!(c.validity, validity(&der(&ttp2.cert)).unwrap());
        assert_eq!((c.holder, c.role), (d.owner(), crate::cv::CvRole::Entity));
        let x509 = der(&ttp2.cert);
        let (_, parsed) = x509_parser::parse_x509_certificate(&x509).unwrap();
        assert_eq!(
            parsed.public_key().subject_public_key.data.as_ref(),
            c.public_key.as_slice()
        );
    }

    #[test]
    fn a_lifetime_beyond_the_year_9999_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let e = ensure_ca_with(dir.path(), "long CA", Lifetime::days(4_000_000)).unwrap_err();
        assert!(matches!(e, CertError::TooLong), "{e}");
        assert!(e.to_string().contains("--days"), "{e}");
    }

    #[test]
    fn no_certificate_outlives_its_ca_and_an_expired_ca_issues_nothing() {
        let dir = tempfile::tempdir().unwrap();
        ensure_ca_with(dir.path(), "short CA", Lifetime::days(10)).unwrap();
        let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let id = Domain::new([0xca; 12]).owner();
        let card = issue_entity(dir.path(), id, k.public_key_raw())
            .unwrap()
            .x509;
        assert_eq!(days_from_now(validity(&card).unwrap().not_after), 10);
        assert!(matches!(
            issue_entity_with(
                dir.path(),
                id,
                k.public_key_raw(),
                Lifetime::between(SystemTime::now(), SystemTime::now() - BACKDATE)
            ),
            Err(CertError::Lifetime)
        ));

        let old = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let year = Duration::from_secs(365 * 86_400);
        ensure_ca_with(
            old.path(),
            "old CA",
            Lifetime::between(now - 2 * year, now - year),
        )
        .unwrap();
        let e = issue_entity(old.path(), id, k.public_key_raw()).unwrap_err();
        assert!(matches!(e, CertError::CaExpired { .. }), "{e}");
        assert!(e.to_string().contains("expired at"), "{e}");
    }

    #[test]
    fn wildcards_and_other_names_authorize_nothing_and_case_does_not_matter() {
        let dir = ca();
        let d = Domain::new([0xd4; 12]);
        let upper = domain_name(d).to_ascii_uppercase();
        let cert = leaf(
            dir.path(),
            &[
                HOST_NAME,
                "*.domain.tenet",
                "x.domain.tenet",
                "d4.tenet",
                &upper,
            ],
            vec![ServerAuth, ClientAuth],
            vec![],
        );
        assert_eq!(authorized_domains(&cert).unwrap(), vec![d]);
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            check_host_role(&garbage),
            Err(CertError::Malformed(_))
        ));
    }
}
