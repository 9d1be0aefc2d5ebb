//! Certificate roles on links between hosts: a host certificate, and the
//! domains it authorizes its holder to serve.

use pki_types::CertificateDer;
use tenet_proto::Domain;

use crate::CertError;

/// The name every host certificate carries and every link connects to.
pub const HOST_NAME: &str = "host.tenet";

/// The suffix of the DNS names that authorize a host to serve a domain.
const DOMAIN_SUFFIX: &str = ".domain.tenet";

/// The DNS name that authorizes a host to serve `d`.
pub fn domain_name(d: Domain) -> String {
    format!("{d}{DOMAIN_SUFFIX}")
}

/// Checks that `cert` is a host certificate, the one role TLS links
/// accept: its extended key usage lists both TLS server and client
/// authentication, and it names `host.tenet`. A card's or the TTP entity's
/// certificate has neither. Chain, validity and signatures are the TLS
/// verifier's; this checks the role only, from the certificate alone.
pub fn check_host_role(cert: &CertificateDer<'_>) -> Result<(), CertError> {
    let ee =
        webpki::EndEntityCert::try_from(cert).map_err(|e| CertError::Malformed(e.to_string()))?;
    let names: Vec<&str> = ee.valid_dns_names().collect();
    let not_host = |why| CertError::NotHost {
        names: names.join(", "),
        why,
    };
    let (server, client) = crate::check::tls_key_purposes(cert.as_ref())
        .map_err(|e| CertError::Malformed(e.0))?
        .ok_or_else(|| not_host("no extended key usage (signatures only: a card or entity)"))?;
    if !server {
        return Err(not_host(
            "its extended key usage lacks TLS server authentication",
        ));
    }
    if !client {
        return Err(not_host(
            "its extended key usage lacks TLS client authentication",
        ));
    }
    if !names.iter().any(|n| n.eq_ignore_ascii_case(HOST_NAME)) {
        return Err(not_host("it does not name host.tenet"));
    }
    Ok(())
}

/// The domains a host certificate authorizes its holder to serve: one per
/// `DOMAIN.domain.tenet` DNS name. Checks the role first
/// ([`check_host_role`]); a wildcard or any other name authorizes nothing.
pub fn authorized_domains(cert: &CertificateDer<'_>) -> Result<Vec<Domain>, CertError> {
    check_host_role(cert)?;
    let ee =
        webpki::EndEntityCert::try_from(cert).map_err(|e| CertError::Malformed(e.to_string()))?;
    let mut out = Vec::new();
    for name in ee.valid_dns_names() {
        let name = name.to_ascii_lowercase();
        if let Some(d) = name
            .strip_suffix(DOMAIN_SUFFIX)
            .and_then(|hex| hex.parse::<Domain>().ok())
            && !out.contains(&d)
        {
            out.push(d);
        }
    }
    Ok(out)
}

/// Checks that the host certificate `cert`, presented on a link, names
/// every one of `domains` (the peer's host id's domain, the domains it
/// announced, the domains routed to it).
pub fn check_domains(cert: &CertificateDer<'_>, domains: &[Domain]) -> Result<(), CertError> {
    let named = authorized_domains(cert)?;
    match domains.iter().find(|d| !named.contains(d)) {
        None => Ok(()),
        Some(d) => Err(CertError::DomainNotNamed {
            domain: *d,
            names: webpki::EndEntityCert::try_from(cert)
                .map(|ee| ee.valid_dns_names().collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
        }),
    }
}
