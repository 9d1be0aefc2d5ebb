//! Ways to reach other hosts, behind one trait.
//!
//! A [`RemoteTransport`] establishes where a message comes from and hands
//! it to the host's core with that origin
//! ([`tenet_dispatch::HostCore::remote_ingress`], the one ingress policy of
//! every transport); it takes what the core routes to its endpoints and
//! sends it. Three exist:
//!
//! - TLS links (`[remote] listen` and `[[remote.peers]]`): the origin is
//!   what the certificate on the connection names (see [`crate::remote`]).
//! - NATS (`[remote.nats]`): the origin is the sender domain of the subject
//!   a message came on (see [`crate::nats`]).
//! - [`MemoryLink`]: a link between two hosts in one process over an
//!   in-memory byte stream, for tests and simulations. It runs the same
//!   link protocol as TLS links (hello, authorization, reliable delivery);
//!   the certificate each end presents is the one the pair was made with.
//!   Its role (a host certificate) and the domains it names are checked
//!   as a TLS peer's are; its chain and dates are not: whoever builds the
//!   pair, in the same process, vouches for them.
//!
//! The daemon starts the transports its config names; [`crate::HostBuilder::transport`]
//! adds more.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

use crate::config::{Config, Settings};
use crate::server::{HostError, Shared};

/// What a transport's start returns.
pub struct Started {
    /// Its tasks; the daemon aborts them at shutdown.
    pub tasks: Vec<JoinHandle<()>>,
    /// The address it accepts connections on, if it listens.
    pub listening: Option<SocketAddr>,
}

/// The host a transport starts for (opaque: transports of this crate use
/// its insides).
pub struct TransportHost {
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: Config,
    pub(crate) settings: Settings,
}

/// A future a transport's start returns.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<Started, HostError>> + Send>>;

/// A way to reach other hosts.
pub trait RemoteTransport: Send {
    /// Its name in logs.
    fn name(&self) -> &'static str;
    /// Whether it carries the link protocol of [`crate::remote`] (then the
    /// host keeps link state for it even without `[remote] listen` or
    /// peers).
    fn uses_links(&self) -> bool {
        false
    }
    /// Starts it on the current runtime.
    fn start(self: Box<Self>, host: &TransportHost) -> StartFuture;
}

/// TLS links (or plaintext TCP under `danger_plaintext`), from `[remote]`.
pub(crate) struct TlsLinks;

impl RemoteTransport for TlsLinks {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn start(self: Box<Self>, host: &TransportHost) -> StartFuture {
        let (shared, config, peers) = (
            host.shared.clone(),
            host.config.clone(),
            host.settings.peers.clone(),
        );
        Box::pin(async move { crate::remote::start(shared, &config, peers).await })
    }
}

/// NATS, from `[remote.nats]`, for this host's domains (its own first).
pub(crate) struct NatsLinks {
    pub(crate) domains: Vec<tenet_proto::Domain>,
}

impl RemoteTransport for NatsLinks {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn start(self: Box<Self>, host: &TransportHost) -> StartFuture {
        let (shared, config) = (host.shared.clone(), host.config.clone());
        Box::pin(async move {
            let Some(section) = &config.remote.nats else {
                return Ok(Started {
                    tasks: Vec::new(),
                    listening: None,
                });
            };
            let tasks = crate::nats::start(shared, section, self.domains).await?;
            Ok(Started {
                tasks,
                listening: None,
            })
        })
    }
}

/// One end of a link between two hosts in one process.
pub struct MemoryLink {
    stream: DuplexStream,
    /// The certificate this end sees from the other (what TLS would have
    /// authenticated).
    peer_certificate: CertificateDer<'static>,
    /// Whether this end dials (sends the first hello).
    dials: bool,
}

impl MemoryLink {
    /// The two ends of a link: `a` goes to the host whose certificate is
    /// `a_cert`, `b` to the other. Each end presents the other host's
    /// certificate to its host, which checks its role and names as a TLS
    /// peer's (so a pair made with a certificate that does not name the
    /// other host's domains is refused, as over TLS); the chain and dates
    /// are the caller's to vouch for. `a` dials.
    pub fn pair(
        a_cert: CertificateDer<'static>,
        b_cert: CertificateDer<'static>,
    ) -> (MemoryLink, MemoryLink) {
        let (x, y) = tokio::io::duplex(64 * 1024);
        (
            MemoryLink {
                stream: x,
                peer_certificate: b_cert,
                dials: true,
            },
            MemoryLink {
                stream: y,
                peer_certificate: a_cert,
                dials: false,
            },
        )
    }
}

impl RemoteTransport for MemoryLink {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn uses_links(&self) -> bool {
        true
    }

    fn start(self: Box<Self>, host: &TransportHost) -> StartFuture {
        let shared = host.shared.clone();
        Box::pin(async move {
            let task = crate::remote::start_memory_link(
                shared,
                self.stream,
                self.peer_certificate,
                self.dials,
            )?;
            Ok(Started {
                tasks: vec![task],
                listening: None,
            })
        })
    }
}
