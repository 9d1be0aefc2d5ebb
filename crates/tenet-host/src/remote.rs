//! The remote proxy (paper 4.3.5): links to other hosts, routing by
//! domain, and the remote ingress path through the guard chain.
//!
//! Each peer host has one dispatch endpoint for the daemon's lifetime. The
//! domains routed to it (listed in the config, or announced by the peer and
//! authorized by its certificate) are handler subscriptions of that
//! endpoint, so the dispatch table does the routing. While a peer's link is
//! down, messages for it wait in the table under its bounds and time to
//! live, then their senders get `undeliverable`.
//!
//! Identity is what the certificate says ([`crate::certs`]). TLS accepts
//! only host certificates (a card's or the TTP entity's is refused in the
//! handshake). A link comes up only if the certificate presented on that
//! connection names the peer's host id's domain, every domain it announces
//! and every domain the config routes to it; the config's domains
//! pre-route, they authorize nothing. A dialer told which host it must
//! reach (`host`) checks the certificate before it sends its hello. On an
//! up link, a message comes in only from a domain that link's certificate
//! names, and one taken from the table goes out only to such a domain
//! (resent ones went to the same host id before).
//!
//! A link is a byte stream (TLS 1.3 with mutual authentication, or
//! plaintext under `danger_plaintext`) carrying length-prefixed
//! [`LinkFrame`]s. [`PeerLink`] numbers messages and resends what the peer
//! has not acknowledged after a reconnect, and the receiver drops what it
//! already stored: a link that breaks and comes back loses and duplicates
//! nothing while both daemons stay up. See `docs/remote.md`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tenet_dispatch::reliable::{Inbound, PeerLink};
use tenet_dispatch::{
    EndpointId, EndpointKind, HelloFacts, HelloRefusal, IngressRefusal, TokenBucket, hello_refusal,
};
use tenet_proto::frame::{FrameDecoder, write_codec_frame};
use tenet_proto::link::{LinkFrame, MAX_LINK_FRAME};
use tenet_proto::notice::UndeliverableReason;
use tenet_proto::{Codec, DecodeError, Domain, EntityId, Filter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::{Config, Settings};
use crate::server::{HostError, Shared, lock};
use tenet_pki::{self as certs, HOST_NAME};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest delay of a bare acknowledgement.
const ACK_DELAY: Duration = Duration::from_millis(20);

/// Counters of the remote proxy.
#[derive(Debug, Default)]
pub struct RemoteStats {
    /// Messages from a peer whose src domain the peer is not authorized for.
    pub forged_dropped: AtomicU64,
    /// Messages dropped by the guard chain on remote ingress.
    pub guard_dropped: AtomicU64,
    /// Messages over a peer's rate limit.
    pub rate_dropped: AtomicU64,
    /// Links refused (bad hello, unauthorized or conflicting domains,
    /// duplicates).
    pub links_refused: AtomicU64,
    /// Links closed for a malformed or oversized frame or a protocol error.
    pub links_broken: AtomicU64,
    /// Messages received from peers and stored.
    pub received: AtomicU64,
    /// Links that came up (hello accepted), reconnects included.
    pub links_up: AtomicU64,
}

/// Why the remote links cannot be set up ([`HostError::Remote`]): this
/// host's TLS files, its listener, its NATS connection. Each text holds its
/// cause.
#[derive(Debug, thiserror::Error)]
pub enum RemoteSetupError {
    /// The CA file (`remote.ca`) cannot be read as PEM.
    #[error("CA file {}: {error}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: pem::Error,
    },
    /// A certificate in the CA file cannot be a root.
    #[error("CA certificate: {0}")]
    CaCertificate(rustls::Error),
    /// The certificate file (`remote.cert`) cannot be read as PEM.
    #[error("certificate file {}: {error}", path.display())]
    CertFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: pem::Error,
    },
    /// The certificate file's certificate is not a host certificate.
    #[error("certificate file {}: {error}", path.display())]
    NotHost {
        /// The file.
        path: PathBuf,
        /// Why it is not a host's.
        error: certs::CertError,
    },
    /// The key file (`remote.key`) cannot be read as PEM.
    #[error("key file {}: {error}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: pem::Error,
    },
    /// The verifier of peers' client certificates cannot be made.
    #[error("client verifier: {0}")]
    ClientVerifier(rustls::server::VerifierBuilderError),
    /// The verifier of peers' server certificates cannot be made.
    #[error("server verifier: {0}")]
    ServerVerifier(rustls::server::VerifierBuilderError),
    /// rustls refuses the TLS configuration.
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// rustls refuses the host's certificate or key.
    #[error("host certificate: {0}")]
    HostCertificate(rustls::Error),
    /// The system's random source failed (for the link session id).
    #[error("no randomness: {0}")]
    Randomness(getrandom::Error),
    /// A memory link on a host without its TLS identity: the link's
    /// certificate could not be checked.
    #[error(
        "a memory link needs the host's [remote] ca, cert and key, to check the certificate it is given"
    )]
    MemoryLinkWithoutIdentity,
    /// The listener (`remote.listen`) cannot be bound.
    #[error("cannot listen on {address}: {error}")]
    Listen {
        /// The address as configured.
        address: String,
        /// The cause.
        error: std::io::Error,
    },
    /// No NATS server answered in time.
    #[error("NATS server {0} not reachable")]
    NatsUnreachable(String),
    /// The NATS server refused the connection.
    #[error("NATS server {url}: {error}")]
    NatsConnect {
        /// The configured URL(s).
        url: String,
        /// The cause.
        error: async_nats::ConnectError,
    },
    /// A subscription to this host's subjects failed.
    #[error("NATS subscribe: {0}")]
    NatsSubscribe(async_nats::SubscribeError),
    /// The subscriptions could not be flushed to the server.
    #[error("NATS: {0}")]
    NatsFlush(async_nats::client::FlushError),
}

/// A byte stream to a peer host: the one interface the link code needs from
/// a stream transport. TLS streams (both directions) carry the peer's
/// certificate; plaintext TCP (`danger_plaintext`) carries none.
pub trait LinkStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The peer's end-entity certificate, when the transport authenticated
    /// the peer.
    fn peer_certificate(&self) -> Option<CertificateDer<'static>>;
}

impl LinkStream for tokio_rustls::client::TlsStream<TcpStream> {
    fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        self.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
    }
}

impl LinkStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        self.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
    }
}

impl LinkStream for TcpStream {
    fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        None
    }
}

struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

/// An active link of a peer.
struct Active {
    id: u64,
    dialer: EntityId,
    stop: Arc<Notify>,
}

struct PeerInner {
    host: Option<EntityId>,
    link: PeerLink,
    active: Option<Active>,
    /// What the certificate of the current (or last) link certified: the
    /// domains messages may come from and go to on it.
    authorized: Vec<Domain>,
    subscribed: Vec<Domain>,
    /// The peer's rate limit on messages it sends this host.
    bucket: TokenBucket,
}

/// One peer host.
pub(crate) struct Peer {
    ep: EndpointId,
    label: String,
    /// Domains the config routes to this peer before it connects.
    config_domains: Vec<Domain>,
    /// The host the config says must answer at this peer's address.
    expected: Option<EntityId>,
    inner: std::sync::Mutex<PeerInner>,
    wake: Notify,
}

/// The remote proxy's state.
pub(crate) struct Remote {
    session: u64,
    me: EntityId,
    my_domains: Vec<Domain>,
    tls: Option<Tls>,
    /// Unacknowledged messages and bytes towards one peer: `remote.window`
    /// messages and `dispatch.per_destination_bytes` bytes.
    window: tenet_dispatch::Budget,
    rate: f64,
    burst: f64,
    pub(crate) peers: std::sync::Mutex<Vec<Arc<Peer>>>,
    next_link: AtomicU64,
    /// Set when the host stops: links close cleanly (a close frame, then
    /// TLS close_notify) and dialers stop dialing.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// Links up now; [`Remote::links_closed`] waits for none.
    live: tokio::sync::watch::Sender<usize>,
    pub(crate) stats: RemoteStats,
}

/// A certificate refused for its role, as rustls carries it: the peer gets
/// a `handshake_failure` alert, the log the reason.
fn role_error(e: certs::CertError) -> rustls::Error {
    rustls::Error::Other(rustls::OtherError(Arc::new(e)))
}

/// rustls's webpki verifier of client certificates (chain to the CA,
/// validity), then the host role ([`certs::check_host_role`]): a card's or
/// an entity's certificate is refused in the handshake.
#[derive(Debug)]
struct HostClientVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for HostClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        certs::check_host_role(end_entity).map_err(role_error)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// rustls's webpki verifier of server certificates (chain to the CA,
/// validity, `host.tenet`), then the host role.
#[derive(Debug)]
struct HostServerVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for HostServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        certs::check_host_role(end_entity).map_err(role_error)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn load_tls(cfg: &Config, my_domains: &[Domain]) -> Result<Option<Tls>, RemoteSetupError> {
    let r = &cfg.remote;
    if r.danger_plaintext.unwrap_or(false) {
        return Ok(None);
    }
    let (Some(ca), Some(cert), Some(key)) = (&r.ca, &r.cert, &r.key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_file = |error| RemoteSetupError::CaFile {
        path: ca.clone(),
        error,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(ca_file)? {
        roots
            .add(c.map_err(ca_file)?)
            .map_err(RemoteSetupError::CaCertificate)?;
    }
    let roots = Arc::new(roots);
    let cert_file = |error| RemoteSetupError::CertFile {
        path: cert.clone(),
        error,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(cert_file)?
        .collect::<Result<_, _>>()
        .map_err(cert_file)?;
    // This host's own certificate must be a host certificate, and should
    // name its domains (peers refuse a link otherwise).
    if let Some(ee) = chain.first() {
        certs::check_host_role(ee).map_err(|error| RemoteSetupError::NotHost {
            path: cert.clone(),
            error,
        })?;
        if let Err(e) = certs::check_domains(ee, my_domains) {
            warn!(file = %cert.display(), error = %e, "this host's certificate does not name all its domains; peers will refuse its links");
        }
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| RemoteSetupError::KeyFile {
        path: key.clone(),
        error,
    })?;
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(RemoteSetupError::ClientVerifier)?;
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(RemoteSetupError::ServerVerifier)?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(RemoteSetupError::Tls)?
        .with_client_cert_verifier(Arc::new(HostClientVerifier(client_verifier)))
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(RemoteSetupError::HostCertificate)?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(RemoteSetupError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(HostServerVerifier(server_verifier)))
        .with_client_auth_cert(chain, key)
        .map_err(RemoteSetupError::HostCertificate)?;
    Ok(Some(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
    }))
}

impl Remote {
    /// Builds the remote proxy from the config; `None` when no links are
    /// configured.
    /// The link state of a host with `[remote] listen` or peers, or with
    /// another transport that carries links (`links`: a [`MemoryLink`](crate::transport::MemoryLink)).
    pub(crate) fn new(
        cfg: &Config,
        settings: &Settings,
        me: EntityId,
        my_domains: Vec<Domain>,
        links: bool,
    ) -> Result<Option<Self>, HostError> {
        let r = &cfg.remote;
        if r.listen.is_none() && r.peers.is_empty() && !links {
            return Ok(None);
        }
        let mut session = [0u8; 8];
        getrandom::fill(&mut session)
            .map_err(|e| HostError::Remote(RemoteSetupError::Randomness(e)))?;
        let rate = r.rate.unwrap_or(20_000.0);
        let tls = load_tls(cfg, &my_domains).map_err(HostError::Remote)?;
        Ok(Some(Self {
            session: u64::from_be_bytes(session) | 1,
            me,
            my_domains,
            tls,
            window: tenet_dispatch::Budget::new(
                r.window.unwrap_or(1024),
                settings.limits.per_destination_bytes,
            ),
            rate,
            burst: r.burst.unwrap_or(2.0 * rate),
            peers: std::sync::Mutex::new(Vec::new()),
            next_link: AtomicU64::new(1),
            stopping: tokio::sync::watch::channel(false).0,
            live: tokio::sync::watch::channel(0).0,
            stats: RemoteStats::default(),
        }))
    }

    /// Tells every link to close cleanly and every dialer to stop.
    pub(crate) fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Waits until no link is up.
    pub(crate) async fn links_closed(&self) {
        let _ = self.live.subscribe().wait_for(|n| *n == 0).await;
    }

    /// The peer whose link last said it is `host`.
    fn known(&self, host: EntityId) -> Option<Arc<Peer>> {
        lock(&self.peers)
            .iter()
            .find(|p| lock(&p.inner).host == Some(host))
            .cloned()
    }

    fn new_peer(
        &self,
        shared: &Shared,
        label: String,
        config_domains: Vec<Domain>,
        expected: Option<EntityId>,
    ) -> Arc<Peer> {
        let ep = {
            let mut t = lock(&shared.table);
            let ep = t.add_endpoint(EndpointKind::Peer);
            for d in &config_domains {
                let _ = t.table_mut().subscribe(ep, Filter::to_domain(*d));
            }
            ep
        };
        let p = Arc::new(Peer {
            ep,
            label,
            config_domains: config_domains.clone(),
            expected,
            inner: std::sync::Mutex::new(PeerInner {
                host: expected,
                link: PeerLink::new(self.session, self.window),
                active: None,
                authorized: Vec::new(),
                subscribed: config_domains,
                bucket: TokenBucket::new(self.rate, self.burst),
            }),
            wake: Notify::new(),
        });
        lock(&self.peers).push(p.clone());
        p
    }

    /// The peer that reads endpoint `ep`, if any.
    pub(crate) fn peer_by_ep(&self, ep: EndpointId) -> Option<Arc<Peer>> {
        lock(&self.peers).iter().find(|p| p.ep == ep).cloned()
    }

    /// Domains served by connected peers, with the peer's label.
    pub(crate) fn routes(&self) -> Vec<(Domain, String, bool)> {
        let mut out = Vec::new();
        for p in lock(&self.peers).iter() {
            let i = lock(&p.inner);
            for d in &i.subscribed {
                out.push((*d, p.label.clone(), i.active.is_some()));
            }
        }
        out
    }

    /// Each peer: its label, whether its link is up, and how many links to
    /// it came up (reconnects are one less).
    pub(crate) fn peer_links(&self) -> Vec<(String, bool, u64)> {
        lock(&self.peers)
            .iter()
            .map(|p| {
                let i = lock(&p.inner);
                (p.label.clone(), i.active.is_some(), i.link.links_up())
            })
            .collect()
    }
}

impl Peer {
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What [`start`] started: the listener's and dialers' tasks, and the
/// address the listener is bound to (`remote.listen` with the port the
/// system chose for port 0), if it listens.
/// Starts the listener and the dialers. The listener is bound first, so a
/// port that cannot be had leaves no dialer behind.
pub(crate) async fn start(
    shared: Arc<Shared>,
    cfg: &Config,
    routes: Vec<crate::config::PeerRoute>,
) -> Result<crate::transport::Started, HostError> {
    let Some(remote) = shared.remote.clone() else {
        return Ok(crate::transport::Started {
            tasks: Vec::new(),
            listening: None,
        });
    };
    let listener = match &cfg.remote.listen {
        Some(listen) => {
            let listen_error = |error| {
                HostError::Remote(RemoteSetupError::Listen {
                    address: listen.clone(),
                    error,
                })
            };
            let l = TcpListener::bind(listen).await.map_err(listen_error)?;
            // The bound address, so `listen = "127.0.0.1:0"` says which port it got.
            let bound = l.local_addr().map_err(listen_error)?;
            Some((l, bound))
        }
        None => None,
    };
    let mut tasks = Vec::new();
    for route in routes {
        let peer = remote.new_peer(&shared, route.address.clone(), route.domains, route.host);
        tasks.push(tokio::spawn(dial_loop(
            shared.clone(),
            remote.clone(),
            peer,
            route.address,
        )));
    }
    let listening = listener.map(|(l, bound)| {
        info!(host = %remote.me, address = %bound, tls = remote.tls.is_some(), "accepting host links");
        tasks.push(tokio::spawn(accept_loop(shared.clone(), remote.clone(), l)));
        bound
    });
    Ok(crate::transport::Started { tasks, listening })
}

/// Runs one end of a [`MemoryLink`](crate::transport::MemoryLink) as a
/// link of this host, the other end's certificate as its peer's. The host
/// must have its TLS identity (`[remote] ca`, `cert`, `key`): the
/// certificate is checked as a TLS peer's would be.
pub(crate) fn start_memory_link(
    shared: Arc<Shared>,
    stream: tokio::io::DuplexStream,
    peer_certificate: CertificateDer<'static>,
    dials: bool,
) -> Result<tokio::task::JoinHandle<()>, HostError> {
    let remote = shared
        .remote
        .clone()
        .filter(|r| r.tls.is_some())
        .ok_or(HostError::Remote(
            RemoteSetupError::MemoryLinkWithoutIdentity,
        ))?;
    let stream = MemoryStream {
        io: stream,
        peer_certificate,
    };
    Ok(tokio::spawn(async move {
        let dialed = dials.then(|| remote.new_peer(&shared, "memory".into(), Vec::new(), None));
        run_link(&shared, &remote, stream, dialed).await;
    }))
}

/// An in-memory byte stream with the certificate its pair was made with.
struct MemoryStream {
    io: tokio::io::DuplexStream,
    peer_certificate: CertificateDer<'static>,
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl LinkStream for MemoryStream {
    fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        Some(self.peer_certificate.clone())
    }
}

async fn dial_loop(shared: Arc<Shared>, remote: Arc<Remote>, peer: Arc<Peer>, addr: String) {
    let mut backoff = BACKOFF_MIN;
    let mut logged = false;
    let stopping = remote.stopping.subscribe();
    loop {
        if *stopping.borrow() {
            return;
        }
        match TcpStream::connect(&addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let up = Instant::now();
                match &remote.tls {
                    Some(tls) => {
                        let name = ServerName::try_from(HOST_NAME).expect("valid DNS name");
                        match tls.connector.connect(name, tcp).await {
                            Ok(s) => {
                                logged = false;
                                run_link(&shared, &remote, s, Some(peer.clone())).await;
                            }
                            Err(e) => {
                                remote.stats.links_refused.fetch_add(1, Ordering::Relaxed);
                                warn!(peer = %addr, error = %e, "TLS handshake with peer failed");
                            }
                        }
                    }
                    None => {
                        logged = false;
                        run_link(&shared, &remote, tcp, Some(peer.clone())).await;
                    }
                }
                if up.elapsed() > Duration::from_secs(5) {
                    backoff = BACKOFF_MIN;
                }
            }
            Err(e) => {
                if !logged {
                    info!(peer = %addr, error = %e, "peer not reachable; retrying");
                    logged = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn accept_loop(shared: Arc<Shared>, remote: Arc<Remote>, l: TcpListener) {
    let mut links = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = l.accept() => {
                let Ok((tcp, from)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (shared, remote) = (shared.clone(), remote.clone());
                links.spawn(async move {
                    match &remote.tls {
                        Some(tls) => match tokio::time::timeout(HELLO_TIMEOUT, tls.acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => run_link(&shared, &remote, s, None).await,
                            Ok(Err(e)) => {
                                remote.stats.links_refused.fetch_add(1, Ordering::Relaxed);
                                warn!(%from, error = %e, "TLS handshake refused");
                            }
                            Err(_) => warn!(%from, "TLS handshake timed out"),
                        },
                        None => run_link(&shared, &remote, tcp, None).await,
                    }
                });
            }
            Some(_) = links.join_next(), if !links.is_empty() => {}
        }
    }
}

/// Why a link was refused at its hello: what the peer is told in the
/// close frame, and the log says.
#[derive(Debug, thiserror::Error)]
enum LinkRefusal {
    /// A dialer reached another host than the config says must answer.
    #[error("expected host {expected}: {why}")]
    NotExpected {
        /// The host the config names.
        expected: EntityId,
        /// Why the certificate is not that host's.
        why: Unnamed,
    },
    /// The hello itself is refused ([`hello_refusal`]).
    #[error(transparent)]
    Hello(HelloRefusal<Unnamed>),
}

/// Why a link's certificate does not name the domains asked for.
#[derive(Debug, thiserror::Error)]
enum Unnamed {
    /// The TLS peer presented no certificate.
    #[error("no peer certificate")]
    NoCertificate,
    /// The certificate does not name them, or cannot be read.
    #[error("{0}")]
    Certificate(certs::CertError),
}

/// Why an up link went down (logged).
#[derive(Debug, thiserror::Error)]
enum LinkDown {
    /// The read side ended.
    #[error(transparent)]
    Ended(LinkEnd),
    /// A data frame skipped a sequence number: the peer misbehaves.
    #[error("sequence gap: expected {expected}, got {got}")]
    Gap {
        /// The sequence number expected.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// The peer closed the link, saying why.
    #[error("peer closed: {0}")]
    PeerClosed(String),
    /// The peer sent a second hello on the link.
    #[error("second hello")]
    SecondHello,
    /// Writing to the stream failed.
    #[error("write failed")]
    WriteFailed,
    /// A newer link to the same peer replaced this one.
    #[error("replaced by a newer link")]
    Replaced,
    /// This host is stopping.
    #[error("host stopping")]
    HostStopping,
}

/// Why a link's read side ended.
#[derive(Debug, thiserror::Error)]
enum LinkEnd {
    /// The peer closed the stream.
    #[error("closed by peer")]
    Closed,
    /// A TLS peer went away without close_notify (a daemon stopping or
    /// dying): a close, not a protocol error.
    #[error("closed by peer without close_notify")]
    ClosedWithoutNotify,
    /// A frame's length prefix is over the maximum.
    #[error("bad framing: {0}")]
    Framing(DecodeError),
    /// A frame's body is not a link frame.
    #[error("malformed frame: {0}")]
    Malformed(DecodeError),
    /// The stream failed.
    #[error("read error: {0}")]
    Read(std::io::Error),
}

impl LinkEnd {
    /// The peer ended the link (rather than breaking it).
    fn is_close(&self) -> bool {
        matches!(self, LinkEnd::Closed | LinkEnd::ClosedWithoutNotify)
    }
}

/// Reads length-prefixed link frames.
struct FrameReader<R> {
    r: R,
    frames: FrameDecoder,
    /// Frames decoded but not yet handed out.
    pending: Vec<LinkFrame>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(r: R) -> Self {
        Self {
            r,
            frames: FrameDecoder::new(MAX_LINK_FRAME),
            pending: Vec::new(),
        }
    }

    /// The next frame, or why the link ended.
    async fn next_frame(&mut self) -> Result<LinkFrame, LinkEnd> {
        loop {
            if let Some(f) = self.pending.pop() {
                return Ok(f);
            }
            self.pending = self.next_batch().await?;
            self.pending.reverse();
        }
    }

    /// The next frames available (at least one), or why the link ended.
    async fn next_batch(&mut self) -> Result<Vec<LinkFrame>, LinkEnd> {
        if !self.pending.is_empty() {
            let mut out = std::mem::take(&mut self.pending);
            out.reverse();
            return Ok(out);
        }
        loop {
            let mut out = Vec::new();
            while let Some(body) = self.frames.next_frame().map_err(LinkEnd::Framing)? {
                out.push(LinkFrame::decode(body).map_err(LinkEnd::Malformed)?);
            }
            if !out.is_empty() {
                return Ok(out);
            }
            match self.r.read_buf(self.frames.read_buf()).await {
                Ok(0) => return Err(LinkEnd::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(LinkEnd::ClosedWithoutNotify);
                }
                Err(e) => return Err(LinkEnd::Read(e)),
            }
        }
    }
}

fn encode(frames: &[LinkFrame], out: &mut Vec<u8>) {
    for f in frames {
        write_codec_frame(out, f);
    }
}

async fn send_close<W: AsyncWrite + Unpin>(w: &mut W, reason: &str) {
    let mut buf = Vec::new();
    encode(
        &[LinkFrame::Close {
            reason: reason.into(),
        }],
        &mut buf,
    );
    let _ = w.write_all(&buf).await;
    let _ = w.flush().await;
}

/// Runs one link until it ends, in steps: a dialer checks whom it reached
/// and greets ([`greet`]); the peer's hello arrives ([`await_hello`]); the
/// hello is authorized ([`authorize`], its decision [`hello_refusal`] pure);
/// the link comes up in the peer's state and the table ([`bring_up`]); then
/// the writer ([`write_loop`]) and the reader ([`read_loop`]) run until one
/// ends or a newer link replaces this one ([`take_down`]).
async fn run_link<S: LinkStream>(
    shared: &Arc<Shared>,
    remote: &Arc<Remote>,
    stream: S,
    dialed: Option<Arc<Peer>>,
) {
    // Identity is what the certificate on this connection says: `named`
    // checks that it names every domain given (plaintext links have no
    // identity).
    let named = Named {
        cert: stream.peer_certificate(),
        plaintext: remote.tls.is_none(),
    };
    let (rd, mut wr) = tokio::io::split(stream);
    let mut reader = FrameReader::new(rd);
    if let Some(p) = &dialed
        && !greet(remote, p, &named, &mut wr).await
    {
        return;
    }
    let Some(their) = await_hello(remote, &mut reader, &mut wr).await else {
        return;
    };
    let auth = match authorize(shared, remote, &named, dialed.as_ref(), &their) {
        Ok(a) => a,
        Err(reason) => {
            remote.stats.links_refused.fetch_add(1, Ordering::Relaxed);
            send_close(&mut wr, &reason.to_string()).await;
            return;
        }
    };
    let Some(up) = bring_up(shared, remote, dialed.is_some(), their, auth) else {
        remote.stats.links_refused.fetch_add(1, Ordering::Relaxed);
        send_close(&mut wr, "duplicate link").await;
        return;
    };
    let Up {
        peer,
        host,
        id,
        stop,
        first,
    } = up;
    remote.live.send_modify(|n| *n += 1);
    // The writer watches for the host stopping between its writes (a write
    // cut off mid-frame would garble the close that follows).
    let stopping = remote.stopping.subscribe();
    let reason = tokio::select! {
        r = write_loop(shared, &peer, &mut wr, first, stopping) => r,
        r = read_loop(shared, remote, &peer, &mut reader) => r,
        _ = stop.notified() => LinkDown::Replaced,
    };
    if matches!(reason, LinkDown::HostStopping) {
        // A clean close: the peer reads why, then TLS close_notify.
        send_close(&mut wr, "host stopping").await;
        let _ = wr.shutdown().await;
    }
    take_down(&peer, host, id, reason);
    remote.live.send_modify(|n| *n -= 1);
}

/// What a link's certificate authorizes (plaintext links: everything).
struct Named {
    cert: Option<CertificateDer<'static>>,
    plaintext: bool,
}

impl Named {
    /// Checks that the certificate names every one of `domains`.
    fn check(&self, domains: &[Domain]) -> Result<(), Unnamed> {
        match (&self.cert, self.plaintext) {
            (_, true) => Ok(()),
            (Some(c), false) => certs::check_domains(c, domains).map_err(Unnamed::Certificate),
            (None, false) => Err(Unnamed::NoCertificate),
        }
    }
}

/// This host's hello, with the link state's fields.
fn our_hello(remote: &Remote, fields: (u64, u64)) -> LinkFrame {
    LinkFrame::Hello {
        host: remote.me,
        session: remote.session,
        your_session: fields.0,
        recv_upto: fields.1,
        domains: remote.my_domains.clone(),
    }
}

/// A dialer told which host it must reach checks whom it reached before it
/// says anything, then sends its hello. Returns whether to go on.
async fn greet<W: AsyncWrite + Unpin>(
    remote: &Remote,
    p: &Peer,
    named: &Named,
    wr: &mut W,
) -> bool {
    if let Some(expected) = p.expected
        && let Err(why) = named.check(&[expected.domain()])
    {
        let reason = LinkRefusal::NotExpected { expected, why };
        remote.stats.links_refused.fetch_add(1, Ordering::Relaxed);
        warn!(peer = %p.label, %expected, %reason, "link refused");
        send_close(wr, &reason.to_string()).await;
        return false;
    }
    let f = our_hello(remote, lock(&p.inner).link.hello_fields());
    let mut buf = Vec::new();
    encode(&[f], &mut buf);
    wr.write_all(&buf).await.is_ok() && wr.flush().await.is_ok()
}

/// The peer's hello, the first frame, within [`HELLO_TIMEOUT`].
struct Hello {
    host: EntityId,
    session: u64,
    your_session: u64,
    recv_upto: u64,
    domains: Vec<Domain>,
}

async fn await_hello<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    remote: &Remote,
    reader: &mut FrameReader<R>,
    wr: &mut W,
) -> Option<Hello> {
    match tokio::time::timeout(HELLO_TIMEOUT, reader.next_frame()).await {
        Ok(Ok(LinkFrame::Hello {
            host,
            session,
            your_session,
            recv_upto,
            domains,
        })) => Some(Hello {
            host,
            session,
            your_session,
            recv_upto,
            domains,
        }),
        Ok(Ok(_)) => {
            remote.stats.links_refused.fetch_add(1, Ordering::Relaxed);
            send_close(wr, "the first frame must be a hello").await;
            None
        }
        Ok(Err(e)) => {
            debug!(error = %e, "link ended before hello");
            None
        }
        Err(_) => {
            send_close(wr, "no hello in time").await;
            None
        }
    }
}

/// An authorized hello: the peer it belongs to (if known), the domains the
/// link will carry, and those its certificate names.
struct Authorized {
    existing: Option<Arc<Peer>>,
    label: String,
    wanted: Vec<Domain>,
    certified: Vec<Domain>,
}

/// Authorizes `their` hello: the certificate must name the host id's
/// domain, every announced domain, and every domain the config routes to
/// this peer (they would travel on this link). A refusal is logged here;
/// the caller sends it to the peer.
fn authorize(
    shared: &Shared,
    remote: &Remote,
    named: &Named,
    dialed: Option<&Arc<Peer>>,
    their: &Hello,
) -> Result<Authorized, LinkRefusal> {
    let host = their.host;
    // A host not seen before gets its peer state only once its hello is
    // accepted: refused hellos with ever new host ids must not pile up
    // peers and dispatch endpoints.
    let existing = match dialed {
        Some(p) => Some(p.clone()),
        None => remote.known(host),
    };
    let label = existing
        .as_ref()
        .map_or_else(|| host.to_string(), |p| p.label.clone());
    let mut wanted = their.domains.clone();
    if !wanted.contains(&host.domain()) {
        wanted.push(host.domain());
    }
    let others: Vec<Domain> = {
        let peers: Vec<Arc<Peer>> = lock(&remote.peers)
            .iter()
            .filter(|p| existing.as_ref().is_none_or(|e| p.ep != e.ep))
            .cloned()
            .collect();
        peers
            .iter()
            .flat_map(|p| lock(&p.inner).subscribed.clone())
            .collect()
    };
    let pinned = existing.as_ref().and_then(|p| lock(&p.inner).host);
    let config_domains: &[Domain] = existing.as_ref().map_or(&[], |p| &p.config_domains);
    let mut certified = wanted.clone();
    certified.extend(config_domains.iter().filter(|d| !wanted.contains(d)));
    let local: Vec<(Domain, bool)> = {
        let t = lock(&shared.table);
        wanted
            .iter()
            .map(|d| (*d, t.table().is_local_domain(*d)))
            .collect()
    };
    let refusal = hello_refusal(HelloFacts {
        me: remote.me,
        host,
        pinned,
        named: named.check(&certified),
        wanted: &local,
        others: &others,
    });
    if let Some(reason) = refusal.map(LinkRefusal::Hello) {
        warn!(peer = %label, %host, %reason, "link refused");
        return Err(reason);
    }
    Ok(Authorized {
        existing,
        label,
        wanted,
        certified,
    })
}

/// A link that came up.
struct Up {
    peer: Arc<Peer>,
    host: EntityId,
    /// This link's number, to tell it from a newer one of the same peer.
    id: u64,
    /// Notified when a newer link replaces this one.
    stop: Arc<Notify>,
    /// What the writer sends first: our hello (to a dialer) and what the
    /// peer did not acknowledge on the last link.
    first: Vec<LinkFrame>,
}

/// Makes the link this peer's one link: the peer state (created for a new
/// host), the session resumed from the hello, the table's subscriptions
/// for the domains it carries; what the peer lost goes back to its senders
/// as undeliverable. `None` for a duplicate link: of two links dialed in
/// opposite directions, the one dialed by the smaller host id stays; a
/// reconnect in the same direction replaces the old one.
fn bring_up(
    shared: &Arc<Shared>,
    remote: &Arc<Remote>,
    dialed: bool,
    their: Hello,
    auth: Authorized,
) -> Option<Up> {
    let Hello {
        host,
        session,
        your_session,
        recv_upto,
        ..
    } = their;
    let Authorized {
        existing,
        label,
        wanted,
        certified,
    } = auth;
    let peer = match existing.or_else(|| remote.known(host)) {
        Some(p) => p,
        None => remote.new_peer(shared, label, Vec::new(), None),
    };
    let dialer = if dialed { remote.me } else { host };
    let id = remote.next_link.fetch_add(1, Ordering::Relaxed);
    let stop = Arc::new(Notify::new());
    let duplicate = lock(&peer.inner)
        .active
        .as_ref()
        .is_some_and(|old| old.dialer != dialer && old.dialer < dialer);
    if duplicate {
        debug!(peer = %peer.label, "duplicate link in the other direction closed");
        return None;
    }
    let (resume, new_domains, hello) = {
        let mut i = lock(&peer.inner);
        if let Some(old) = &i.active {
            old.stop.notify_one();
        }
        let hello = our_hello(remote, i.link.hello_fields());
        i.host = Some(host);
        let resume = i.link.on_hello(session, your_session, recv_upto);
        let new_domains: Vec<Domain> = wanted
            .iter()
            .copied()
            .filter(|d| !i.subscribed.contains(d))
            .collect();
        i.subscribed.extend(&new_domains);
        // This link's certificate, not an earlier one's, decides.
        i.authorized = certified;
        i.active = Some(Active {
            id,
            dialer,
            stop: stop.clone(),
        });
        (resume, new_domains, hello)
    };
    shared.with_core(|t| {
        for d in &new_domains {
            let _ = t.table_mut().subscribe(peer.ep, Filter::to_domain(*d));
        }
        for m in &resume.lost {
            t.undeliverable(m, UndeliverableReason::DESTINATION_GONE, Instant::now());
        }
    });
    remote.stats.links_up.fetch_add(1, Ordering::Relaxed);
    info!(peer = %peer.label, %host, domains = ?wanted, resent = resume.resend.len(), lost = resume.lost.len(), restarted = resume.peer_restarted, "link up");
    let mut first = Vec::new();
    if !dialed {
        first.push(hello);
    }
    first.extend(resume.resend);
    Some(Up {
        peer,
        host,
        id,
        stop,
        first,
    })
}

/// Sends `first`, then what waits in the table for this peer while the
/// window has room, and delayed acknowledgements; returns when a write
/// fails, or between writes when the host stops.
async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    peer: &Peer,
    wr: &mut W,
    first: Vec<LinkFrame>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> LinkDown {
    let mut ack_tick = tokio::time::interval(ACK_DELAY);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::new();
    encode(&first, &mut buf);
    loop {
        if *stopping.borrow() {
            return LinkDown::HostStopping;
        }
        // Take what waits in the table while the window has room. A
        // message for a domain this link's certificate does not name
        // (routed here by an earlier link's announcement) goes back to
        // its sender as undeliverable. The peer is locked before the
        // table, and unlocked with it (when the closure ends), before
        // the table's events run.
        let inner = lock(&peer.inner);
        let frames = shared.with_core(|t| {
            let mut i = inner;
            let mut frames = Vec::new();
            while i.link.has_room() {
                let Some(d) = t.take(peer.ep) else { break };
                if i.authorized.contains(&d.message.dst().domain()) {
                    frames.push(i.link.send(d.message));
                } else {
                    let why = UndeliverableReason::DESTINATION_GONE;
                    t.undeliverable(&d.message, why, Instant::now());
                }
            }
            frames
        });
        encode(&frames, &mut buf);
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                return LinkDown::WriteFailed;
            }
            buf.clear();
        }
        tokio::select! {
            _ = peer.wake.notified() => {}
            changed = stopping.changed() => {
                if changed.is_err() {
                    return LinkDown::HostStopping;
                }
            }
            _ = ack_tick.tick() => {
                // Delayed acknowledgement: data frames carry acks for
                // free; a bare one goes out only when none did lately.
                if let Some(a) = lock(&peer.inner).link.ack_due() {
                    encode(&[a], &mut buf);
                }
            }
        }
    }
}

/// The link ended: it is no longer the peer's active link (unless a newer
/// one already is).
fn take_down(peer: &Peer, host: EntityId, id: u64, reason: LinkDown) {
    {
        let mut i = lock(&peer.inner);
        if i.active.as_ref().is_some_and(|a| a.id == id) {
            i.active = None;
        }
    }
    info!(peer = %peer.label, %host, %reason, "link down");
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    remote: &Remote,
    peer: &Peer,
    reader: &mut FrameReader<R>,
) -> LinkDown {
    loop {
        let frames = match reader.next_batch().await {
            Ok(f) => f,
            Err(e) => {
                if !e.is_close() {
                    remote.stats.links_broken.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %peer.label, error = %e, "closing link");
                }
                return LinkDown::Ended(e);
            }
        };
        let mut stored = Vec::new();
        let mut outcome: Option<LinkDown> = None;
        let reopened;
        let authorized;
        {
            let mut i = lock(&peer.inner);
            // This link's certificate decides (a newer link replaces this
            // one, and this loop with it).
            authorized = i.authorized.clone();
            let was_full = !i.link.has_room();
            for f in frames {
                match f {
                    LinkFrame::Data { seq, ack, message } => {
                        i.link.on_ack(ack);
                        match i.link.on_data(seq) {
                            Inbound::Duplicate => {}
                            Inbound::Gap { expected } => {
                                outcome = Some(LinkDown::Gap { expected, got: seq });
                                break;
                            }
                            Inbound::New => {
                                i.link.stored();
                                if i.bucket.take(Instant::now()).is_err() {
                                    remote.stats.rate_dropped.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                stored.push(message);
                            }
                        }
                    }
                    LinkFrame::Ack { ack } => i.link.on_ack(ack),
                    LinkFrame::Close { reason } => {
                        outcome = Some(LinkDown::PeerClosed(reason));
                        break;
                    }
                    LinkFrame::Hello { .. } => {
                        outcome = Some(LinkDown::SecondHello);
                        break;
                    }
                }
            }
            reopened = was_full && i.link.has_room();
        }
        if !stored.is_empty() {
            shared.with_core(|t| {
                for m in stored {
                    let src = m.src();
                    match t.remote_ingress(&authorized, m, Instant::now()) {
                        Ok(()) => {
                            remote.stats.received.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(
                            e @ (IngressRefusal::Forged(_)
                            | IngressRefusal::OwnDomain(_)
                            | IngressRefusal::ForgedNotice { .. }),
                        ) => {
                            remote.stats.forged_dropped.fetch_add(1, Ordering::Relaxed);
                            warn!(peer = %peer.label, %src, reason = %e, "message with a src the peer does not serve dropped");
                        }
                        Err(IngressRefusal::Guard(_)) => {
                            remote.stats.guard_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e @ IngressRefusal::NotStored(_)) => {
                            debug!(peer = %peer.label, error = %e, "remote message not stored");
                        }
                    }
                }
            });
        }
        // Let the writer use the room that acknowledgements opened; our own
        // acknowledgements ride on data frames or go out on the writer's tick.
        if reopened {
            peer.wake();
        }
        if let Some(reason) = outcome {
            // A close frame is the peer's deliberate end (it stops, or
            // refuses a duplicate): not a broken link.
            if !matches!(reason, LinkDown::PeerClosed(_)) {
                remote.stats.links_broken.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %peer.label, %reason, "closing link");
            }
            return reason;
        }
    }
}

/// A snapshot of [`RemoteStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteCounters {
    /// See [`RemoteStats::forged_dropped`].
    pub forged_dropped: u64,
    /// See [`RemoteStats::guard_dropped`].
    pub guard_dropped: u64,
    /// See [`RemoteStats::rate_dropped`].
    pub rate_dropped: u64,
    /// See [`RemoteStats::links_refused`].
    pub links_refused: u64,
    /// See [`RemoteStats::links_broken`].
    pub links_broken: u64,
    /// See [`RemoteStats::received`].
    pub received: u64,
    /// See [`RemoteStats::links_up`].
    pub links_up: u64,
}

impl RemoteStats {
    /// The counters now.
    pub fn snapshot(&self) -> RemoteCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteCounters {
            forged_dropped: g(&self.forged_dropped),
            guard_dropped: g(&self.guard_dropped),
            rate_dropped: g(&self.rate_dropped),
            links_refused: g(&self.links_refused),
            links_broken: g(&self.links_broken),
            received: g(&self.received),
            links_up: g(&self.links_up),
        }
    }
}

/// Routes by domain: `(domain, peer label, link up)`.
pub(crate) fn routes(remote: &Remote) -> HashMap<Domain, (String, bool)> {
    remote
        .routes()
        .into_iter()
        .map(|(d, l, up)| (d, (l, up)))
        .collect()
}
