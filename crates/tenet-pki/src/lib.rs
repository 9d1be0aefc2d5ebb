//! # tenet-pki: making and checking TENeT certificates
//!
//! The one crate that parses X.509. It makes certificates (module
//! `issue`, feature `issue`, for the CLI and tests), makes, checks and signs
//! certificate requests (module `enroll`, feature `issue`: enrollment
//! without moving keys) and checks certificates: the
//! role of a certificate on a link between hosts ([`roles`]), and the
//! chain, validity at a card's time and names that cards and the TTP check
//! ([`check`], [`cache`]).
//!
//! Certificates have roles, and what a certificate authorizes is checked
//! here and nowhere else ([`check_host_role`], [`authorized_domains`],
//! [`check_domains`]; cards and the TTP: [`verify_at`], [`check_validity`]):
//!
//! - A host certificate is for TLS links only. Its extended key usage lists
//!   TLS server and client authentication; it names, as DNS subject
//!   alternative names, `host.tenet` (every host's certificate has it; links
//!   connect to that name) and one `DOMAIN.domain.tenet` per domain the host
//!   may serve. A peer may serve a domain, and use a host id, only if the
//!   certificate it presented on that very connection names the domain; the
//!   config's `[[remote.peers]] domains` pre-route and authorize nothing.
//! - An entity certificate (a card's, or the TTP entity's) is for
//!   signatures only. It names `DOMAIN-PORT.id.tenet`
//!   ([`EntityId::certificate_name`]) as its only name (an empty subject and
//!   a critical subject alternative name) and has no extended key usage, so
//!   it is refused for a TLS link: links want the host usages and
//!   `host.tenet`. It carries nothing else a verifier does not use, as
//!   cards send it in every exchange.
//!
//! Certificates have real lifetimes ([`Lifetime`]): by default the CA 10
//! years, cards 3, hosts and the TTP entity 1 (`--days` chooses), never
//! beyond the CA's own end. Each is valid from a day before its issue, as
//! a card's clock may lag its host's by an hour and hosts' clocks differ.
//! Renewal keeps the key: `tenet host certs` and `tenet ca entity` renew in
//! place when the files exist, `tenet card recertify` gives a card's key a
//! new certificate. What cards and the TTP check (chain, validity at the
//! card's time, names) is in [`check`], with the cache of certificates a
//! card has checked ([`cache`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod check;
pub mod cv;
#[cfg(feature = "issue")]
pub mod enroll;
#[cfg(feature = "issue")]
pub mod issue;
pub mod roles;

pub use cache::CheckedCertificates;
pub use check::{
    Signer, Validity, VerifyError, check_validity, names, same_key, tls_key_purposes, validity,
    verify_at, verify_ignoring_expiry, verify_known, verify_with_ca, x509_same_key, x509_validity,
};
#[cfg(feature = "issue")]
pub use enroll::{
    Asked, MAX_REQUEST_BYTES, Request, RequestError, RequestFiles, Role, Signed, card_request,
    check_issued, make_request, sign_request,
};
#[cfg(feature = "issue")]
pub use issue::*;
pub use roles::{HOST_NAME, authorized_domains, check_domains, check_host_role, domain_name};

use std::path::PathBuf;

use tenet_proto::Domain;

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
    #[cfg(feature = "issue")]
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    /// The system's random source failed (for a serial number).
    #[error("random serial number: {0}")]
    Random(String),
    /// A PEM file holds no certificate.
    #[error("PEM: {0}")]
    Pem(String),
    /// A certificate could not be read.
    #[error("certificate: {0}")]
    Malformed(String),
    /// A lifetime that ends before it starts.
    #[error("a certificate's lifetime must end after it starts")]
    Lifetime,
    /// A lifetime that ends after the year 9999 (X.509 cannot say so).
    #[error("a certificate's lifetime must end by the year 9999; choose fewer --days")]
    TooLong,
    /// The CA's own certificate has expired: it issues nothing more.
    #[error("the CA in {dir} expired at {at}; make a new one and personalize again")]
    CaExpired {
        /// The CA's directory.
        dir: PathBuf,
        /// When it expired (UTC).
        at: String,
    },
    /// A certificate used outside its role: a card's or an entity's (or
    /// any other) where a host certificate is needed, for a TLS link.
    #[error("not a host certificate (names: {names}): {why}")]
    NotHost {
        /// The DNS names it presents.
        names: String,
        /// What it lacks.
        why: &'static str,
    },
    /// A host certificate that does not name a domain its holder announced,
    /// or is routed.
    #[error(
        "not authorized for domain {domain}: the certificate does not name it (names: {names})"
    )]
    DomainNotNamed {
        /// The domain.
        domain: Domain,
        /// The DNS names it presents.
        names: String,
    },
}
