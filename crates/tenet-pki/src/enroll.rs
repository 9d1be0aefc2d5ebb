//! Enrollment by certificate request (PKCS#10), the production path: the
//! key is made where it is used and never moves; only a request and a
//! certificate travel.
//!
//! - A host makes its key and a request naming its domains
//!   ([`make_request`] with [`Asked::Domains`], `tenet host csr --domain`),
//!   or the key of its entity and a request naming that entity
//!   ([`Asked::Entity`], `tenet host csr --id`: the TTP's signing key). A
//!   card makes a request with the key it holds ([`card_request`]).
//! - The CA reads the request ([`Request::read`], at most
//!   [`MAX_REQUEST_BYTES`]), which checks everything it says: its
//!   self-signature, an ECDSA P-256 key signed with SHA-256, a subject of at
//!   most a common name, no attribute but the extension request, no
//!   extension but the subject alternative names (and `CA:FALSE`), and names
//!   that are all `host.tenet` and `DOMAIN.domain.tenet`, or exactly one
//!   `DOMAIN-PORT.id.tenet`. Anything else is refused, naming what.
//! - The CA signs it for one role ([`sign_request`]): the certificate is
//!   built from the checked key and names only, with the role's extensions,
//!   exactly as `tenet host certs`, `tenet ca entity` and `tenet card new
//!   --ca` make them; nothing else of the request is copied, so a request
//!   cannot smuggle a CA flag or a key usage into its certificate. An entity
//!   or card role needs the CA operator to name the id it approves.
//!
//! Renewal is a new request for the same key (the key file is kept), signed
//! again.

use std::io::Read;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SigningKey};
use tenet_proto::{Domain, EntityId};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_PKCS9_EXTENSION_REQUEST, OID_SIG_ECDSA_WITH_SHA256, OID_X509_COMMON_NAME,
};
use x509_parser::prelude::FromDer;

use crate::cv::{Anchor, CvCertificate, CvRole};
use crate::issue::Leaf;
use crate::issue::{CARD_DAYS, ENTITY_DAYS, HOST_DAYS, Lifetime, P256_SPKI_PREFIX};
use crate::roles::{HOST_NAME, domain_name};
use crate::{CertError, Validity};
use pki_types::ServerName;

/// The largest request file the CA reads (a request naming a few domains
/// is under 1 kB).
pub const MAX_REQUEST_BYTES: u64 = 16 * 1024;

/// The longest name (file stem and common name) a request may carry.
pub const MAX_NAME_LEN: usize = 64;

/// The role a CA signs a request for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A host certificate, for TLS links: the domains it may serve.
    Host,
    /// A software entity's signing certificate (the TTP's host entity).
    Entity,
    /// A card's signing certificate (its id `DOMAIN:0`).
    Card,
}

impl Role {
    /// The default lifetime of the role's certificates, in days.
    pub fn default_days(self) -> u32 {
        match self {
            Role::Host => HOST_DAYS,
            Role::Entity => ENTITY_DAYS,
            Role::Card => CARD_DAYS,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Host => "host",
            Role::Entity => "entity",
            Role::Card => "card",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = RequestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Role::Host),
            "entity" => Ok(Role::Entity),
            "card" => Ok(Role::Card),
            _ => Err(RequestError::UnknownRole(s.to_owned())),
        }
    }
}

/// What a request asks to be certified for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// A host serving these domains (and `host.tenet`).
    Domains(Vec<Domain>),
    /// One entity (a card, the TTP's host entity).
    Entity(EntityId),
}

impl std::fmt::Display for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Asked::Domains(ds) => {
                let list: Vec<String> = ds.iter().map(ToString::to_string).collect();
                write!(f, "domains {}", list.join(", "))
            }
            Asked::Entity(id) => write!(f, "entity {id}"),
        }
    }
}

/// Why a certificate request was refused, or could not be made or signed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The request file is larger than [`MAX_REQUEST_BYTES`].
    #[error("{path} is larger than {MAX_REQUEST_BYTES} bytes: not a certificate request")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The text holds no PEM `CERTIFICATE REQUEST`.
    #[error("not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----): {0}")]
    NotPem(String),
    /// The request is not well-formed DER.
    #[error("malformed certificate request: {0}")]
    Malformed(String),
    /// The request's key is not an ECDSA P-256 key.
    #[error("the request's key is not an ECDSA P-256 key (the only key type TENeT certifies)")]
    KeyType,
    /// The request is signed with another algorithm than ECDSA with SHA-256.
    #[error("the request is signed with {0}, not ecdsa-with-SHA256")]
    SignatureAlgorithm(String),
    /// The request's self-signature does not verify with its key: it was
    /// altered, or made without the private key.
    #[error(
        "the request's signature does not verify with its key: it was altered or not made with that key"
    )]
    BadSignature,
    /// The request's subject holds more than a common name.
    #[error("the request's subject may hold only a common name; it has {0}")]
    Subject(String),
    /// A name (file stem, common name) that is empty, too long, or has
    /// characters other than letters, digits, `.`, `_` and `-`.
    #[error(
        "name {0:?}: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', not starting with '.'"
    )]
    BadName(String),
    /// The request carries an attribute the CA does not sign.
    #[error("the request carries attribute {0}; only an extension request is signed")]
    Attribute(String),
    /// The request asks for an extension the CA does not copy.
    #[error(
        "the request asks for {0}; the CA gives each role its own extensions, make the request without it"
    )]
    Extension(String),
    /// The request asks to be a CA.
    #[error(
        "the request asks to be a CA (basicConstraints CA:TRUE); the CA certifies only end entities"
    )]
    AsksCa,
    /// A subject alternative name that is not a TENeT name.
    #[error(
        "the request names {0:?}: only host.tenet, DOMAIN.domain.tenet (24 hex digits) and DOMAIN-PORT.id.tenet are certified"
    )]
    Name(String),
    /// The request names no domain and no entity.
    #[error("the request names no domain and no entity")]
    NoNames,
    /// The request names domains and an entity, or several entities.
    #[error("the request names {0}; a request is for a host's domains or for one entity")]
    MixedNames(String),
    /// The role given is none of host, entity, card.
    #[error("unknown role {0:?}: host, entity or card")]
    UnknownRole(String),
    /// The request asks for something the role cannot have.
    #[error("the request asks for {asked}, which the {role} role does not certify{hint}")]
    WrongRole {
        /// The role the CA was asked to sign for.
        role: Role,
        /// What the request asks for.
        asked: Asked,
        /// What to do instead.
        hint: &'static str,
    },
    /// An entity or card role without the id the CA operator approves.
    #[error("a {0} certificate needs --id DOMAIN:PORT, the entity the CA approves")]
    IdRequired(Role),
    /// An id given for a host role.
    #[error(
        "--id is for the entity and card roles; a host certificate names the domains of its request"
    )]
    IdForHost,
    /// The request names another entity than the one approved.
    #[error("the request is for entity {asked}, not {approved} (--id)")]
    IdMismatch {
        /// What the request names.
        asked: EntityId,
        /// What the CA operator approved.
        approved: EntityId,
    },
    /// A card's id has a port other than 0.
    #[error("a card is DOMAIN:0; {0} is not a card")]
    NotCard(EntityId),
    /// A certificate to install that is not from the CA, not for this
    /// entity or not for this key.
    #[error("the certificate is not for this card: {0}")]
    NotIssued(String),
    /// Making or signing the certificate failed.
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl From<rcgen::Error> for RequestError {
    fn from(e: rcgen::Error) -> Self {
        RequestError::Cert(CertError::Gen(e))
    }
}

/// A request whose every field was checked: a P-256 key that signed it, a
/// common name, and the names it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The subject's common name, if any (a host's name).
    pub name: Option<String>,
    /// What it asks to be certified for.
    pub asked: Asked,
    /// The key, uncompressed SEC1 P-256 (65 bytes).
    public_key: Vec<u8>,
}

/// Checks a name used as a file stem and common name.
pub fn check_name(name: &str) -> Result<(), RequestError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RequestError::BadName(name.to_owned()))
    }
}

impl Request {
    /// Reads and checks the PEM request in `path`, refusing a file larger
    /// than [`MAX_REQUEST_BYTES`] before reading it whole.
    pub fn read(path: &Path) -> Result<Self, RequestError> {
        let io = |source| RequestError::Io {
            path: path.to_owned(),
            source,
        };
        let mut text = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_REQUEST_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::from_pem(&text)
    }

    /// Checks a PEM request.
    pub fn from_pem(text: &[u8]) -> Result<Self, RequestError> {
        use pki_types::pem::PemObject;
        let der = pki_types::CertificateSigningRequestDer::from_pem_slice(text)
            .map_err(|e| RequestError::NotPem(e.to_string()))?;
        Self::from_der(der.as_ref())
    }

    /// Checks a DER request: its structure, key type, self-signature,
    /// subject, attributes, extensions and names.
    pub fn from_der(der: &[u8]) -> Result<Self, RequestError> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| RequestError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(RequestError::Malformed(format!(
                "{} bytes after the request",
                rest.len()
            )));
        }
        let info = &csr.certification_request_info;
        if info.version.0 != 0 {
            return Err(RequestError::Malformed(format!(
                "version {} (only v1, 0, exists)",
                info.version.0
            )));
        }
        let spki = info.subject_pki.raw;
        let public_key = spki
            .strip_prefix(&P256_SPKI_PREFIX[..])
            .filter(|point| point.len() == 65 && point[0] == 0x04)
            .ok_or(RequestError::KeyType)?
            .to_vec();
        if csr.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256
            || csr.signature_algorithm.parameters.is_some()
        {
            return Err(RequestError::SignatureAlgorithm(
                csr.signature_algorithm.algorithm.to_id_string(),
            ));
        }
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &public_key,
        )
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| RequestError::BadSignature)?;

        let mut name = None;
        for attr in info.subject.iter_attributes() {
            let value = attr.as_str().ok().filter(|_| name.is_none());
            match value {
                Some(v) if *attr.attr_type() == OID_X509_COMMON_NAME => {
                    check_name(v)?;
                    name = Some(v.to_owned());
                }
                _ => {
                    return Err(RequestError::Subject(format!(
                        "attribute {}",
                        attr.attr_type().to_id_string()
                    )));
                }
            }
        }
        if let Some(a) = info
            .iter_attributes()
            .filter(|a| a.oid != OID_PKCS9_EXTENSION_REQUEST)
            .chain(
                info.iter_attributes()
                    .filter(|a| a.oid == OID_PKCS9_EXTENSION_REQUEST)
                    .skip(1),
            )
            .next()
        {
            return Err(RequestError::Attribute(a.oid.to_id_string()));
        }
        let mut dns = Vec::new();
        let mut sans = 0;
        for ext in csr.requested_extensions().into_iter().flatten() {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    sans += 1;
                    for g in &san.general_names {
                        match g {
                            GeneralName::DNSName(n) => dns.push(n.to_ascii_lowercase()),
                            other => return Err(RequestError::Name(other.to_string())),
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(RequestError::AsksCa);
                }
                ParsedExtension::BasicConstraints(_) => {}
                ParsedExtension::UnsupportedExtension { oid } => {
                    return Err(RequestError::Extension(format!(
                        "extension {}",
                        oid.to_id_string()
                    )));
                }
                ParsedExtension::ParseError { error } => {
                    return Err(RequestError::Malformed(format!("extension: {error}")));
                }
                other => return Err(RequestError::Extension(extension_name(other))),
            }
        }
        if sans > 1 {
            return Err(RequestError::Malformed(
                "two subjectAltName extensions".into(),
            ));
        }
        Ok(Self {
            name,
            asked: asked(&dns)?,
            public_key,
        })
    }

    /// The key to certify, uncompressed SEC1 P-256 (65 bytes).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }
}

/// The readable name of an extension the CA refuses to copy.
fn extension_name(e: &ParsedExtension<'_>) -> String {
    match e {
        ParsedExtension::KeyUsage(_) => "keyUsage".into(),
        ParsedExtension::ExtendedKeyUsage(_) => "extendedKeyUsage".into(),
        ParsedExtension::NameConstraints(_) => "nameConstraints".into(),
        ParsedExtension::SubjectKeyIdentifier(_) => "subjectKeyIdentifier".into(),
        ParsedExtension::AuthorityKeyIdentifier(_) => "authorityKeyIdentifier".into(),
        other => format!("extension {other:?}").chars().take(80).collect(),
    }
}

/// What the DNS names `dns` (lower case) ask for.
fn asked(dns: &[String]) -> Result<Asked, RequestError> {
    let mut domains = Vec::new();
    let mut ids = Vec::new();
    for n in dns {
        if n == HOST_NAME {
            continue;
        }
        if let Some(d) = n
            .strip_suffix(".domain.tenet")
            .and_then(|h| h.parse::<Domain>().ok())
            .filter(|d| domain_name(*d) == *n)
        {
            if !domains.contains(&d) {
                domains.push(d);
            }
        } else if let Some(id) = entity_of_name(n) {
            ids.push(id);
        } else {
            return Err(RequestError::Name(n.clone()));
        }
    }
    match (domains.is_empty(), ids.as_slice()) {
        (true, []) => Err(RequestError::NoNames),
        (false, []) => Ok(Asked::Domains(domains)),
        (true, [id]) if !dns.iter().any(|n| n == HOST_NAME) => Ok(Asked::Entity(*id)),
        _ => Err(RequestError::MixedNames(dns.join(", "))),
    }
}

/// The entity named `DOMAIN-PORT.id.tenet`, written exactly as
/// [`EntityId::certificate_name`] writes it.
fn entity_of_name(n: &str) -> Option<EntityId> {
    let (d, p) = n.strip_suffix(".id.tenet")?.split_once('-')?;
    let id = EntityId::new(d.parse().ok()?, p.parse().ok()?);
    (id.certificate_name() == n).then_some(id)
}

/// The names a request (and its certificate) carries for `asked`.
fn names_of(asked: &Asked) -> Vec<String> {
    match asked {
        Asked::Domains(ds) => std::iter::once(HOST_NAME.to_owned())
            .chain(ds.iter().map(|d| domain_name(*d)))
            .collect(),
        Asked::Entity(id) => vec![id.certificate_name()],
    }
}

/// The files of a request made by [`make_request`].
#[derive(Debug, Clone)]
pub struct RequestFiles {
    /// The key (PEM, PKCS#8, mode 0600), kept if it existed.
    pub key: PathBuf,
    /// The request (PEM).
    pub csr: PathBuf,
    /// Whether the key existed: the request renews its certificate.
    pub renews: bool,
    /// What the request asks for.
    pub asked: Asked,
}

impl std::fmt::Display for RequestFiles {
    /// The files, what the request asks for and the CA's next step.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.renews {
            "kept (renewal)"
        } else {
            "made"
        };
        let (k, csr) = (self.key.display(), self.csr.display());
        writeln!(f, "key {k} {key}; it stays on this machine")?;
        writeln!(f, "request {csr} for {}", self.asked)?;
        let role = match self.asked {
            Asked::Domains(_) => "host".to_owned(),
            Asked::Entity(id) => format!("entity --id {id}"),
        };
        write!(
            f,
            "next: the CA runs `tenet ca sign --csr {csr} --role {role}`"
        )
    }
}

/// Makes `dir/STEM.key` unless it exists (then the request renews that
/// key's certificate) and `dir/STEM.csr`, a request for `asked`. STEM is
/// `name` for domains, `name-entity` for an entity (as `tenet ca entity`
/// names its files). The host's request carries `name` as its common name.
pub fn make_request(dir: &Path, name: &str, asked: &Asked) -> Result<RequestFiles, RequestError> {
    check_name(name)?;
    let stem = match asked {
        Asked::Domains(ds) if ds.is_empty() => return Err(RequestError::NoNames),
        Asked::Domains(_) => name.to_owned(),
        Asked::Entity(_) => format!("{name}-entity"),
    };
    std::fs::create_dir_all(dir).map_err(|source| RequestError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let key = dir.join(format!("{stem}.key"));
    let csr = dir.join(format!("{stem}.csr"));
    let renews = key.exists();
    let k = if renews {
        KeyPair::from_pem(&crate::issue::read(&key)?)?
    } else {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?
    };
    if k.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(RequestError::KeyType);
    }
    let pem = request_pem(asked, Some(name).filter(|_| stem == name), &k)?;
    if !renews {
        crate::issue::write(&key, &k.serialize_pem(), 0o600)?;
    }
    crate::issue::write(&csr, &pem, 0o644)?;
    Ok(RequestFiles {
        key,
        csr,
        renews,
        asked: asked.clone(),
    })
}

/// A PEM request for `asked`, with `name` as common name, signed by `key`.
fn request_pem(
    asked: &Asked,
    name: Option<&str>,
    key: &impl SigningKey,
) -> Result<String, RequestError> {
    let mut p = CertificateParams::new(names_of(asked))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(n) = name {
        p.distinguished_name.push(DnType::CommonName, n);
    }
    Ok(p.serialize_request(key)?.pem()?)
}

/// A card's key, seen from outside the card: its public point and a way to
/// have the card sign.
struct CardKey<'a> {
    point: &'a [u8],
    sign: &'a dyn Fn(&[u8]) -> Vec<u8>,
}

impl PublicKeyData for CardKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for CardKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok((self.sign)(msg))
    }
}

/// A PEM request for the card `id` whose key is `public_key` (uncompressed
/// SEC1 P-256), signed on the card by `sign` (ECDSA P-256 SHA-256, ASN.1
/// DER): the private key stays on the card.
pub fn card_request(
    id: EntityId,
    public_key: &[u8],
    sign: &dyn Fn(&[u8]) -> Vec<u8>,
) -> Result<String, RequestError> {
    if !id.is_owner() {
        return Err(RequestError::NotCard(id));
    }
    let key = CardKey {
        point: public_key,
        sign,
    };
    request_pem(&Asked::Entity(id), None, &key)
}

/// A certificate the CA signed from a request.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The role it was signed for.
    pub role: Role,
    /// What it certifies.
    pub asked: Asked,
    /// Its subject's common name (hosts).
    pub name: Option<String>,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The certificate file: the X.509 certificate, PEM, then (an entity
    /// or card) its CV certificate ([`crate::cv`]).
    pub pem: String,
    /// The CV certificate (an entity or card).
    pub cv: Option<Vec<u8>>,
    /// The CA's certificate, DER.
    pub ca_der: Vec<u8>,
    /// Its validity.
    pub validity: Validity,
}

impl std::fmt::Display for Signed {
    /// What the CA operator approved, one fact a line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.role {
            Role::Host => "host (TLS links: server and client authentication)",
            Role::Entity => "entity (signatures only; refused for TLS links)",
            Role::Card => "card (signatures only; refused for TLS links)",
        };
        writeln!(f, "role: {what}")?;
        if let Some(n) = &self.name {
            writeln!(f, "name: {n}")?;
        }
        writeln!(f, "certifies: {}", self.asked)?;
        writeln!(f, "names: {}", names_of(&self.asked).join(", "))?;
        write!(f, "{}", self.validity)
    }
}

/// Signs the checked `request` with the CA in `ca_dir` for `role`, valid
/// for `lifetime` (never beyond the CA's end). An entity or card role needs
/// `id`, the entity the CA operator approves, and the request must name
/// exactly it; a host role names the request's domains. The certificate
/// carries the request's key and names and the role's extensions, nothing
/// else of the request.
pub fn sign_request(
    ca_dir: &Path,
    request: &Request,
    role: Role,
    id: Option<EntityId>,
    lifetime: Lifetime,
) -> Result<Signed, RequestError> {
    let wrong = |hint| RequestError::WrongRole {
        role,
        asked: request.asked.clone(),
        hint,
    };
    let point = crate::issue::point_of(&request.public_key)?;
    let leaf = match (role, &request.asked) {
        (Role::Host, _) if id.is_some() => return Err(RequestError::IdForHost),
        (Role::Host, Asked::Domains(_)) => Leaf::Host(request.name.as_deref().unwrap_or("host")),
        (Role::Host, Asked::Entity(_)) => {
            return Err(wrong(" (sign it with --role entity or card)"));
        }
        (Role::Entity | Role::Card, Asked::Domains(_)) => {
            return Err(wrong(" (a host's request: sign it with --role host)"));
        }
        (Role::Entity | Role::Card, Asked::Entity(asked)) => {
            let approved = id.ok_or(RequestError::IdRequired(role))?;
            if *asked != approved {
                return Err(RequestError::IdMismatch {
                    asked: *asked,
                    approved,
                });
            }
            if role == Role::Card && !approved.is_owner() {
                return Err(RequestError::NotCard(approved));
            }
            let cv_role = match role {
                Role::Card => CvRole::Card,
                _ => CvRole::Entity,
            };
            Leaf::Entity(approved, cv_role, &point)
        }
    };
    let host = matches!(leaf, Leaf::Host(_));
    let spki = crate::issue::p256_spki(&request.public_key)?;
    let signed = crate::issue::sign_leaf(ca_dir, names_of(&request.asked), leaf, &spki, lifetime)?;
    use pki_types::pem::PemObject;
    let ca_der = pki_types::CertificateDer::from_pem_slice(signed.ca_pem.as_bytes())
        .map_err(|e| CertError::Pem(e.to_string()))?;
    let der = signed.cert.der().to_vec();
    Ok(Signed {
        role,
        asked: request.asked.clone(),
        name: request.name.clone().filter(|_| host),
        validity: crate::issue::validity(&der)?,
        pem: signed.pem(),
        der,
        cv: signed.cv,
        ca_der: ca_der.to_vec(),
    })
}

/// Checks, before a card installs them, that `cert` (DER) chains to `ca`
/// (DER) and is valid now, names `id` and certifies `public_key`
/// (uncompressed SEC1 P-256, the card's), and that `cv`, its CV form, says
/// the same and was signed by the same CA; returns its validity.
pub fn check_issued(
    cert: &[u8],
    cv: &[u8],
    ca: &[u8],
    id: EntityId,
    public_key: &[u8],
) -> Result<Validity, RequestError> {
    let not = |why: String| RequestError::NotIssued(why);
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| not(format!("{e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != public_key {
        return Err(not("it certifies another key".into()));
    }
    let names = ServerName::try_from(id.certificate_name()).map_err(|_| not("bad name".into()))?;
    let ca_cert = pki_types::CertificateDer::from(ca);
    let anchor = webpki::anchor_from_trusted_cert(&ca_cert).map_err(|e| not(format!("CA: {e}")))?;
    let der = pki_types::CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&der).map_err(|e| not(e.to_string()))?;
    if ee.verify_is_valid_for_subject_name(&names).is_err() {
        return Err(not(format!("it does not name {id}")));
    }
    ee.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &[],
        pki_types::UnixTime::now(),
        webpki::KeyUsage::required_if_present(crate::check::CLIENT_AUTH),
        None,
        None,
    )
    .map_err(|e| not(format!("against the CA: {e}")))?;
    let validity = crate::issue::validity(cert)?;
    let c = CvCertificate::decode(cv).map_err(|e| not(format!("CV certificate: {e}")))?;
    c.check_signature(&Anchor::from_x509(ca).map_err(|e| not(e.0))?)
        .map_err(|e| not(e.0))?;
    if c.role != CvRole::Card {
        return Err(not(format!(
            "it certifies {}, not a card",
            c.role.described()
        )));
    }
    if c.public_key.as_slice() != public_key || c.holder != id || c.validity != validity {
        return Err(not(
            "its CV certificate certifies another key, holder or dates".into(),
        ));
    }
    Ok(validity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::ensure_ca;
    use crate::roles::{authorized_domains, check_host_role};
    use pki_types::CertificateDer;
    use pki_types::pem::PemObject;

    const A: Domain = Domain::new([0xa1; 12]);
    const B: Domain = Domain::new([0xb2; 12]);

    /// A CA directory and, apart from it, a host directory with no CA key.
    fn setup() -> (tempfile::TempDir, tempfile::TempDir) {
        let ca = tempfile::tempdir().unwrap();
        ensure_ca(ca.path(), "test CA").unwrap();
        (ca, tempfile::tempdir().unwrap())
    }

    fn years() -> Lifetime {
        Lifetime::days(365)
    }

    /// A request made with rcgen from `p` and a fresh P-256 key.
    fn raw_request(p: CertificateParams) -> Vec<u8> {
        let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        p.serialize_request(&k).unwrap().der().to_vec()
    }

    /// Request parameters naming `names`, with an empty subject.
    fn host_params(names: &[&str]) -> CertificateParams {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p
    }

    #[test]
    fn a_host_request_made_without_the_ca_key_is_signed_with_the_host_role() {
        let (ca, host) = setup();
        let files = make_request(host.path(), "alice", &Asked::Domains(vec![A, B])).unwrap();
        assert!(!files.renews);
        assert!(!host.path().join("ca.key").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is owner-only");
        let req = Request::read(&files.csr).unwrap();
        assert_eq!(req.asked, Asked::Domains(vec![A, B]));
        assert_eq!(req.name.as_deref(), Some("alice"));
        let signed = sign_request(ca.path(), &req, Role::Host, None, years()).unwrap();
        let cert = CertificateDer::from(signed.der.clone());
        check_host_role(&cert).unwrap();
        assert_eq!(authorized_domains(&cert).unwrap(), vec![A, B]);
        let key = KeyPair::from_pem(&std::fs::read_to_string(&files.key).unwrap()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&signed.der).unwrap();
        assert_eq!(
            &parsed.public_key().subject_public_key.data[..],
            key.public_key_raw()
        );
        let bc = parsed.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca, "a host is not a CA");
        let shown = signed.to_string();
        assert!(shown.contains("role: host"), "{shown}");
        assert!(
            shown.contains(&A.to_string()) && shown.contains("valid "),
            "{shown}"
        );
    }

    #[test]
    fn renewal_is_a_new_request_for_the_same_key() {
        let (ca, host) = setup();
        let asked = Asked::Domains(vec![A]);
        let first = make_request(host.path(), "alice", &asked).unwrap();
        let key = std::fs::read(&first.key).unwrap();
        let one = sign_request(
            ca.path(),
            &Request::read(&first.csr).unwrap(),
            Role::Host,
            None,
            years(),
        )
        .unwrap();
        let again = make_request(host.path(), "alice", &asked).unwrap();
        assert!(again.renews);
        assert_eq!(std::fs::read(&again.key).unwrap(), key, "the key is kept");
        let two = sign_request(
            ca.path(),
            &Request::read(&again.csr).unwrap(),
            Role::Host,
            None,
            Lifetime::days(30),
        )
        .unwrap();
        assert_ne!(one.der, two.der);
        let key_of = |der: &[u8]| {
            let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
            c.public_key().raw.to_vec()
        };
        assert_eq!(key_of(&one.der), key_of(&two.der), "same public key");
    }

    #[test]
    fn an_entity_request_needs_the_approved_id_and_the_entity_role() {
        let (ca, ttp) = setup();
        let id = Domain::new([0x77; 12]).owner();
        let other = Domain::new([0x78; 12]).owner();
        let files = make_request(ttp.path(), "ttp", &Asked::Entity(id)).unwrap();
        assert!(files.csr.ends_with("ttp-entity.csr"));
        let req = Request::read(&files.csr).unwrap();
        let sign = |role, id| sign_request(ca.path(), &req, role, id, years());
        assert!(matches!(
            sign(Role::Host, None),
            Err(RequestError::WrongRole { .. })
        ));
        assert!(matches!(
            sign(Role::Entity, None),
            Err(RequestError::IdRequired(_))
        ));
        assert!(matches!(
            sign(Role::Entity, Some(other)),
            Err(RequestError::IdMismatch { .. })
        ));
        let signed = sign(Role::Entity, Some(id)).unwrap();
        let cv = signed.cv.as_deref().unwrap();
        assert!(crate::names(cv, id));
        let cert = CertificateDer::from(signed.der);
        assert!(matches!(
            check_host_role(&cert),
            Err(CertError::NotHost { .. })
        ));
        // A host's request is no entity's.
        let h = make_request(ttp.path(), "h", &Asked::Domains(vec![A])).unwrap();
        let hreq = Request::read(&h.csr).unwrap();
        assert!(matches!(
            sign_request(ca.path(), &hreq, Role::Card, Some(A.owner()), years()),
            Err(RequestError::WrongRole { .. })
        ));
        assert!(matches!(
            sign_request(ca.path(), &hreq, Role::Host, Some(A.owner()), years()),
            Err(RequestError::IdForHost)
        ));
    }

    #[test]
    fn a_card_request_is_signed_by_the_card_and_certified_for_signatures_only() {
        let (ca, _) = setup();
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let k = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        use ring::signature::KeyPair as _;
        let id = Domain::new([0xca; 12]).owner();
        let sign = |m: &[u8]| k.sign(&rng, m).unwrap().as_ref().to_vec();
        let pem = card_request(id, k.public_key().as_ref(), &sign).unwrap();
        let req = Request::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(req.public_key(), k.public_key().as_ref());
        let signed =
            sign_request(ca.path(), &req, Role::Card, Some(id), Lifetime::days(1095)).unwrap();
        let cv = signed.cv.as_deref().unwrap();
        assert!(crate::names(cv, id));
        assert_eq!(crate::tls_key_purposes(&signed.der).unwrap(), None);
        check_issued(&signed.der, cv, &signed.ca_der, id, k.public_key().as_ref()).unwrap();
        let other = Domain::new([0xcb; 12]).owner();
        for (cert_id, key) in [(other, k.public_key().as_ref()), (id, &[4u8; 65][..])] {
            let e = check_issued(&signed.der, cv, &signed.ca_der, cert_id, key).unwrap_err();
            assert!(matches!(e, RequestError::NotIssued(_)), "{e}");
        }
        let (other_ca, _) = setup();
        let other_ca = pki_types::CertificateDer::from_pem_file(other_ca.path().join("ca.pem"));
        let e = check_issued(
            &signed.der,
            cv,
            &other_ca.unwrap(),
            id,
            k.public_key().as_ref(),
        );
        assert!(matches!(e, Err(RequestError::NotIssued(_))), "{e:?}");
        let port = EntityId::new(Domain::new([0xca; 12]), "5".parse().unwrap());
        assert!(matches!(
            card_request(port, k.public_key().as_ref(), &sign),
            Err(RequestError::NotCard(_))
        ));
    }

    #[test]
    fn a_tampered_request_is_refused() {
        let der = raw_request(host_params(&[HOST_NAME, &domain_name(A)]));
        Request::from_der(&der).unwrap();
        // Change one hex digit of the domain asked for: the self-signature
        // no longer verifies.
        let name = domain_name(A);
        let at = der
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .unwrap();
        let mut forged = der.clone();
        forged[at] = b'b';
        assert!(matches!(
            Request::from_der(&forged),
            Err(RequestError::BadSignature)
        ));
        // The signature's last byte.
        let mut sig = der.clone();
        *sig.last_mut().unwrap() ^= 1;
        assert!(Request::from_der(&sig).is_err());
        // Trailing bytes.
        let mut long = der;
        long.push(0);
        assert!(matches!(
            Request::from_der(&long),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn only_p256_keys_are_certified() {
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let k = KeyPair::generate_for(alg).unwrap();
            let der = host_params(&[&domain_name(A)])
                .serialize_request(&k)
                .unwrap();
            let e = Request::from_der(der.der()).unwrap_err();
            assert!(matches!(e, RequestError::KeyType), "{e}");
            assert!(e.to_string().contains("P-256"), "{e}");
        }
    }

    #[test]
    fn a_request_to_be_a_ca_or_for_key_usages_is_refused() {
        let mut p = host_params(&[HOST_NAME, &domain_name(A)]);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let e = Request::from_der(&raw_request(p)).unwrap_err();
        assert!(matches!(e, RequestError::AsksCa), "{e}");
        assert!(e.to_string().contains("CA:TRUE"), "{e}");

        let mut p = Request::from_der(&raw_request({
            let mut p = host_params(&[&domain_name(A)]);
            p.is_ca = rcgen::IsCa::ExplicitNoCa;
            p
        }));
        assert!(p.is_ok(), "CA:FALSE is harmless: {p:?}");
        p = Request::from_der(&raw_request({
            let mut p = host_params(&[&domain_name(A)]);
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
            p
        }));
        assert!(
            matches!(&p, Err(RequestError::Extension(e)) if e == "extendedKeyUsage"),
            "{p:?}"
        );
        p = Request::from_der(&raw_request({
            let mut p = host_params(&[&domain_name(A)]);
            p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
            p
        }));
        assert!(matches!(p, Err(RequestError::Extension(_))), "{p:?}");
    }

    #[test]
    fn malformed_names_and_subjects_are_refused() {
        let cases: &[&[&str]] = &[
            &["evil.example"],
            &["*.domain.tenet"],
            &["a1a1.domain.tenet"],
            &["zzzzzzzzzzzzzzzzzzzzzzzz.domain.tenet"],
            &["a1a1a1a1a1a1a1a1a1a1a1a1-01.id.tenet"],
            &[HOST_NAME],
        ];
        for names in cases {
            let e = Request::from_der(&raw_request(host_params(names))).unwrap_err();
            assert!(
                matches!(e, RequestError::Name(_) | RequestError::NoNames),
                "{names:?}: {e}"
            );
        }
        let mixed = [domain_name(A), A.owner().certificate_name()];
        let e = Request::from_der(&raw_request(host_params(&[&mixed[0], &mixed[1]])));
        assert!(matches!(e, Err(RequestError::MixedNames(_))), "{e:?}");
        let mut ip = host_params(&[&domain_name(A)]);
        ip.subject_alt_names
            .push(rcgen::SanType::IpAddress([10, 0, 0, 1].into()));
        assert!(matches!(
            Request::from_der(&raw_request(ip)),
            Err(RequestError::Name(_))
        ));
        let mut org = host_params(&[&domain_name(A)]);
        org.distinguished_name
            .push(DnType::OrganizationName, "Evil");
        assert!(matches!(
            Request::from_der(&raw_request(org)),
            Err(RequestError::Subject(_))
        ));
        let mut cn = host_params(&[&domain_name(A)]);
        cn.distinguished_name.push(DnType::CommonName, "a/b");
        assert!(matches!(
            Request::from_der(&raw_request(cn)),
            Err(RequestError::BadName(_))
        ));
        assert!(matches!(
            make_request(Path::new("/nonexistent"), "../x", &Asked::Domains(vec![A])),
            Err(RequestError::BadName(_))
        ));
    }

    #[test]
    fn a_file_too_large_or_not_pem_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.csr");
        std::fs::write(&big, vec![b'A'; MAX_REQUEST_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            Request::read(&big),
            Err(RequestError::TooLarge { .. })
        ));
        let text = dir.path().join("text.csr");
        std::fs::write(&text, "hello\n").unwrap();
        assert!(matches!(Request::read(&text), Err(RequestError::NotPem(_))));
        // A certificate is no request.
        let ca = tempfile::tempdir().unwrap();
        ensure_ca(ca.path(), "test CA").unwrap();
        let e = Request::read(&ca.path().join("ca.pem")).unwrap_err();
        assert!(matches!(e, RequestError::NotPem(_)), "{e}");
        let garbage =
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(
            Request::from_pem(garbage.as_bytes()),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            Request::read(&dir.path().join("missing.csr")),
            Err(RequestError::Io { .. })
        ));
    }
}
