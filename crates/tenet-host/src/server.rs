//! The daemon: the app socket server around a [`DispatchTable`].
//!
//! One task per app connection reads requests; a message stored for a
//! connection is written straight into its socket by whichever task caused
//! it to be stored (a non-blocking write under the connection's output
//! lock), so an app-to-app message costs no task switch inside the daemon.
//! When a socket is full, the rest waits in that connection's output buffer
//! and a per-connection writer task finishes it; meanwhile further messages
//! stay in the dispatch table, where the table's bounds apply (flow
//! control: a slow app fills its own queue, then its senders get "queue
//! full"). Lock order: connection output, then table.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenet_dispatch::{
    Effect, EndpointId, EndpointKind, HostCore, Ingress, StoreError, TableError, TapItem,
};
use tenet_proto::app::{ClientFrame, DaemonFrame, ErrorCode, MAX_APP_FRAME, TapId};
use tenet_proto::frame::{FrameDecoder, write_codec_frame};
use tenet_proto::{Codec, Domain, EntityId, Filter, Message};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use tenet_card::{Card, FileStore, SystemEntropy};
use tenet_proto::card::CardInfo;

use crate::config::{Config, ConfigError, Settings};
use crate::link::{CardSession, InProcessLink, LinkStats, SessionError};
use crate::plugin::{
    AppletFactory, HostBuilder, HostSender, PluginError, ServiceError, ServiceRoute,
};
use crate::proxy::ProxyCmd;
use crate::remote::RemoteSetupError;
use crate::state::{self, PortAllocator, StateError};
use crate::transport::{NatsLinks, RemoteTransport, TlsLinks, TransportHost};

/// Output bytes waiting for one app beyond which the daemon stops reading
/// that app's requests until it reads its replies.
const MAX_PENDING_OUT: usize = 1 << 20;
/// Bytes taken from the table per write.
const WRITE_BATCH: usize = 64 * 1024;
/// How long links get to close cleanly when the daemon stops.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often expired messages are removed.
const TICK: Duration = Duration::from_millis(250);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The app socket could not be set up.
    #[error("app socket {path}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The socket's folder could be controlled by another user.
    #[error(transparent)]
    UnsafeSocketDir(#[from] tenet_proto::socket::UnsafeSocketDir),
    /// Another daemon answers on the socket path.
    #[error("another tenet host is already running at {0}")]
    AlreadyRunning(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The configured card cannot be used. The text holds the cause, so
    /// it is not also given as [`source`](std::error::Error::source): an
    /// error chain (`{:#}`) prints it once.
    #[error("card: {0}")]
    Card(CardAttachError),
    /// The remote links cannot be set up (the text holds the cause, as for
    /// [`HostError::Card`]).
    #[error("remote links: {0}")]
    Remote(RemoteSetupError),
    /// The TTP (a service of the host entity) cannot be set up (the text
    /// holds the cause, as for [`HostError::Card`]).
    #[error("TTP: {0}")]
    Ttp(ServiceError),
    /// The metrics listener (`metrics.listen`) cannot be bound.
    #[error("metrics.listen {addr}")]
    Metrics {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
}

/// Why the configured card cannot be used. Each text holds its cause.
#[derive(Debug, thiserror::Error)]
pub enum CardAttachError {
    /// The virtual card's store cannot be opened.
    #[error("{}", crate::chain(.0))]
    Store(tenet_card::StoreError),
    /// The virtual card's store holds no usable card.
    #[error("{}: {}", path.display(), crate::chain(error))]
    Open {
        /// The store.
        path: PathBuf,
        /// The cause.
        error: tenet_card::CardError,
    },
    /// A plugged-in applet refused to start on the virtual card.
    #[error("{}: {error}", path.display())]
    Applet {
        /// The store.
        path: PathBuf,
        /// The applet's reason.
        error: PluginError,
    },
    /// The virtual card did not answer its selection.
    #[error("{0}")]
    Session(SessionError),
    /// No usable card in the PC/SC reader in time (`card.wait_secs`).
    #[cfg(feature = "pcsc")]
    #[error("reader {reader:?}: {error}")]
    Reader {
        /// The reader's name.
        reader: String,
        /// The last attempt's failure.
        error: SessionError,
    },
    /// The card's domain is the host's software domain.
    #[error(
        "the card's domain {0} is also the host's software domain; give the host another domain"
    )]
    SameDomain(Domain),
    /// The card's id cannot be bound in the dispatch table.
    #[error("{0}")]
    Bind(TableError),
    /// The thread opening the card failed.
    #[error("{0}")]
    Join(tokio::task::JoinError),
    /// The smartcard proxy's thread cannot be started.
    #[error("cannot start the smartcard proxy: {0}")]
    Thread(io::Error),
}

/// Opens the configured card link, selects the applet and reads the card's
/// info; waits up to `card.wait_secs` for a card in a PC/SC reader.
async fn open_card(
    config: &Config,
    settings: &Settings,
    applets: Vec<AppletFactory>,
) -> Result<Option<(CardSession, CardInfo)>, HostError> {
    let short = config.card.short_apdus.unwrap_or(false);
    let limits = settings.card_limits;
    if let Some(path) = config.card.virtual_store.clone() {
        let opened = tokio::task::spawn_blocking(move || -> Result<_, CardAttachError> {
            let store = FileStore::open(&path).map_err(CardAttachError::Store)?;
            let mut card = Card::open(store, limits, Box::new(SystemEntropy)).map_err(|error| {
                CardAttachError::Open {
                    path: path.clone(),
                    error,
                }
            })?;
            for make in &applets {
                let applet = make(card.state()).map_err(|error| CardAttachError::Applet {
                    path: path.clone(),
                    error,
                })?;
                card.install(applet);
            }
            let mut session = CardSession::new(Box::new(InProcessLink::new(card)), short);
            let info = session.reconnect().map_err(CardAttachError::Session)?;
            Ok((session, info))
        })
        .await
        .map_err(CardAttachError::Join)
        .and_then(|opened| opened)
        .map_err(HostError::Card)?;
        return Ok(Some(opened));
    }
    #[cfg(feature = "pcsc")]
    if let Some(reader) = config.card.reader.clone() {
        let wait = settings.card_wait;
        let opened = tokio::task::spawn_blocking(move || -> Result<_, CardAttachError> {
            let deadline = Instant::now() + wait;
            loop {
                let attempt = crate::link::PcscLink::connect(&reader, !short)
                    .map_err(crate::link::SessionError::from)
                    .and_then(|link| {
                        let mut session = CardSession::new(Box::new(link), short);
                        let info = session.select()?;
                        Ok((session, info))
                    });
                match attempt {
                    Ok(ok) => return Ok(ok),
                    Err(error) if Instant::now() >= deadline => {
                        return Err(CardAttachError::Reader { reader, error });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
        .await
        .map_err(CardAttachError::Join)
        .and_then(|opened| opened)
        .map_err(HostError::Card)?;
        return Ok(Some(opened));
    }
    Ok(None)
}

#[derive(Default)]
struct Out {
    pending: Vec<u8>,
    off: usize,
    closed: bool,
    /// The connection's task is handling what it read: answers to it
    /// (acknowledgements, and what the table holds for it) wait in
    /// `pending` and go out in one write when it is done (`uncork`).
    corked: bool,
    /// While corked, messages for the connection were stored.
    pump_due: bool,
}

impl Out {
    fn pending_len(&self) -> usize {
        self.pending.len() - self.off
    }
}

struct Conn {
    ep: EndpointId,
    /// The local user at the other end, as the socket reports it.
    uid: Option<u32>,
    stream: UnixStream,
    out: Mutex<Out>,
    kick: Notify,
    drained: Notify,
}

struct Clock {
    instant: Instant,
    system: SystemTime,
}

impl Clock {
    fn micros(&self, at: Instant) -> u64 {
        let t = self.system + at.saturating_duration_since(self.instant);
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}

pub(crate) struct Shared {
    /// The host's decisions and its dispatch table ([`HostCore`]).
    pub(crate) table: Mutex<HostCore>,
    conns: Mutex<HashMap<EndpointId, Arc<Conn>>>,
    ports: Mutex<PortAllocator>,
    pub(crate) domain: Domain,
    allow_taps: bool,
    clock: Clock,
    pub(crate) card: Option<CardAttach>,
    pub(crate) remote: Option<Arc<crate::remote::Remote>>,
    pub(crate) nats: Option<Arc<crate::nats::Nats>>,
    /// The services of the host entity, by [`tenet_dispatch::ServiceId`],
    /// with their busy counts.
    pub(crate) services: Vec<ServiceRoute>,
    /// Ids acquired, limited per local user (uid), not per connection.
    acquires: Mutex<tenet_dispatch::KeyedBuckets<u32>>,
}

/// The host's card, as the daemon sees it.
pub(crate) struct CardAttach {
    pub(crate) ep: EndpointId,
    id: EntityId,
    tx: std::sync::mpsc::Sender<ProxyCmd>,
    pub(crate) stats: Arc<LinkStats>,
    link: String,
    /// The session with the card: the proxy thread's, and also, for a card
    /// whose link waits on nothing outside the daemon (`inline`), that of
    /// any task that stores a message for the card (`proxy::drive`).
    /// `None` once the host stopped, so the card's store is closed.
    pub(crate) session: Mutex<Option<crate::proxy::Attached>>,
    pub(crate) inline: bool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Shared {
    /// Runs `f` on the host's core, then does what the core says (wakes
    /// readers, hands requests to services, logs) with the core unlocked:
    /// the one way host code changes the table. Never called with the core
    /// locked; a lock `f` takes or is given (a peer's) ends with it, before
    /// the effects run. It may be called with the card's session held (the
    /// proxy stores what the card answered), so the session is never taken
    /// while the core, a connection's `out` or a peer is locked: the
    /// effects only `try_lock` it (`proxy::drive`).
    pub(crate) fn with_core<R>(&self, f: impl FnOnce(&mut HostCore) -> R) -> R {
        let (r, effects) = {
            let mut core = lock(&self.table);
            let r = f(&mut core);
            core.process_events(Instant::now());
            (
                r,
                std::iter::from_fn(|| core.poll_effect()).collect::<Vec<_>>(),
            )
        };
        for e in effects {
            act(self, e);
        }
        r
    }

    /// App connections open now.
    pub(crate) fn apps_connected(&self) -> usize {
        lock(&self.conns).len()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; the data is still
    // consistent enough to keep serving other apps.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running daemon. Dropping it does not stop it; call
/// [`HostHandle::shutdown`].
pub struct HostHandle {
    shared: Arc<Shared>,
    socket: PathBuf,
    remote_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl HostHandle {
    /// The app socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The address the remote listener (`remote.listen`) is bound to, with
    /// the port the system chose if the config said port 0; `None` if the
    /// host accepts no TLS links. Peers of a host started with
    /// `listen = "127.0.0.1:0"` dial this.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// The address `/metrics` is served on (`metrics.listen`), with the
    /// port the system chose if the config said port 0; `None` if the host
    /// serves no metrics.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The host's figures now: what `tenet status` prints and `/metrics`
    /// serves (names without the `tenet_` prefix; `docs/host.md`).
    pub fn figures(&self) -> Vec<tenet_proto::status::Figure> {
        crate::metrics::figures(&self.shared)
    }

    /// The host's own id (`DOMAIN:0` of its software domain).
    pub fn host_id(&self) -> EntityId {
        self.shared.domain.owner()
    }

    /// The host's card id, if it has a card.
    pub fn card_id(&self) -> Option<EntityId> {
        self.shared.card.as_ref().map(|c| c.id)
    }

    /// `(apdus, bytes_out, bytes_in)` on the card link so far.
    pub fn card_link_stats(&self) -> Option<(u64, u64, u64)> {
        self.shared.card.as_ref().map(|c| c.stats.snapshot())
    }

    /// Messages for the card delivered by the task that stored them rather
    /// than by the proxy thread, so far (the in-process card only).
    pub fn card_link_inline(&self) -> Option<u64> {
        self.shared
            .card
            .as_ref()
            .map(|c| c.stats.inline.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Time spent waiting for the card's responses on the card link so far.
    pub fn card_link_busy(&self) -> Option<std::time::Duration> {
        self.shared.card.as_ref().map(|c| {
            std::time::Duration::from_nanos(
                c.stats.busy_ns.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// Counters of the remote proxy, if links are configured.
    pub fn remote_stats(&self) -> Option<crate::remote::RemoteCounters> {
        self.shared.remote.as_ref().map(|r| r.stats.snapshot())
    }

    /// Counters of the NATS link, if `[remote.nats]` is configured.
    pub fn nats_stats(&self) -> Option<crate::nats::NatsCounters> {
        self.shared.nats.as_ref().map(|n| n.stats.snapshot())
    }

    /// Remote routes: domain -> (peer, link up).
    pub fn remote_routes(&self) -> std::collections::HashMap<Domain, (String, bool)> {
        self.shared
            .remote
            .as_ref()
            .map(|r| crate::remote::routes(r))
            .unwrap_or_default()
    }

    /// Counters of the dispatch table.
    pub fn stats(&self) -> tenet_dispatch::Stats {
        lock(&self.shared.table).table().stats()
    }

    /// Messages waiting in the dispatch table now (notices included).
    pub fn queued(&self) -> usize {
        lock(&self.shared.table).table().len()
    }

    /// What the dispatch table holds now, in messages and bytes (messages
    /// waiting and tap copies): what `dispatch.total` and
    /// `dispatch.total_bytes` bound. The most bytes it ever held is in
    /// [`stats`](Self::stats) (`peak_bytes`).
    pub fn held(&self) -> tenet_dispatch::Usage {
        lock(&self.shared.table).table().held()
    }

    /// Recovery requests refused with "the TTP is busy": their domain
    /// already had `dispatch.per_destination` requests waiting for a
    /// decision, or more than that arrived during one decision (the
    /// hand-off to the TTP thread was full).
    pub fn service_busy(&self) -> u64 {
        self.shared
            .services
            .iter()
            .map(|s| s.busy.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// Peer hosts the remote proxy keeps state for (configured peers and
    /// hosts whose hello was accepted).
    pub fn remote_peers(&self) -> usize {
        self.shared
            .remote
            .as_ref()
            .map_or(0, |r| lock(&r.peers).len())
    }

    /// Says where the daemon serves (`tenet host ID listening on SOCKET`,
    /// on stderr), waits for SIGINT or SIGTERM, then shuts down cleanly
    /// ([`HostHandle::shutdown`]): a daemon's life after [`start`].
    pub async fn serve_until_signal(self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let (id, socket) = (self.host_id(), self.socket_path().display());
        eprintln!("tenet host {id} listening on {socket}");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        self.shutdown().await;
        Ok(())
    }

    /// Stops accepting, closes every connection and removes the socket.
    pub async fn shutdown(self) {
        // Links first: each sends a close frame and TLS close_notify, so
        // peers log a clean close; then the rest is stopped.
        if let Some(remote) = &self.shared.remote {
            remote.stop();
            let _ = tokio::time::timeout(STOP_GRACE, remote.links_closed()).await;
        }
        // NATS: what was published is flushed and the subscriptions end
        // before the connection closes.
        let nats = self
            .shared
            .nats
            .as_ref()
            .and_then(|n| lock(&n.client).clone());
        if let Some(client) = nats {
            match tokio::time::timeout(STOP_GRACE, client.drain()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "NATS drain failed"),
                Err(_) => debug!("NATS drain did not finish in time"),
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        // The services' inboxes close: their threads end.
        for svc in &self.shared.services {
            lock(&svc.tx).take();
        }
        stop_card(&self.shared).await;
        let _ = std::fs::remove_file(&self.socket);
        info!(socket = %self.socket.display(), "host stopped");
    }
}

/// Ends the proxy thread and closes the card's store (its session is
/// dropped, so no task drives the card after).
async fn stop_card(shared: &Shared) {
    if let Some(card) = &shared.card {
        let _ = card.tx.send(ProxyCmd::Stop);
        let thread = lock(&card.thread).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        lock(&card.session).take();
    }
}

/// Starts a daemon from `config` on the current tokio runtime, with no
/// application plugged in ([`HostBuilder`] plugs them in).
pub async fn start(config: &Config) -> Result<HostHandle, HostError> {
    HostBuilder::new(config).start().await
}

pub(crate) async fn start_with(plugins: HostBuilder<'_>) -> Result<HostHandle, HostError> {
    let HostBuilder {
        config,
        applets,
        card_guards,
        services,
        transports: extra,
    } = plugins;
    // Every value checked and typed once; the rest of the start reads these.
    let settings = Settings::try_from(config)?;
    if config.ttp.is_some() && services.is_empty() {
        return Err(HostError::Ttp(ServiceError::NoService));
    }
    // Bound first: a port that cannot be had stops the host before it
    // opens its card or its socket.
    let metrics = match config.metrics_listen()? {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let state_dir = settings.state_dir.clone();
    state::ensure_dir(&state_dir)?;
    let domain = state::load_domain(&state_dir, settings.domain)?;
    let ports = PortAllocator::open(&state_dir, domain)?;
    let mut core = HostCore::new(domain.owner(), settings.limits);
    let rules = settings.rule_guard()?;
    if !rules.is_empty() {
        core.table_mut().push_guard(Box::new(rules));
    }
    let card = open_card(config, &settings, applets).await?;
    let card_ep = match &card {
        Some((_, info)) if info.domain == domain => {
            return Err(HostError::Card(CardAttachError::SameDomain(info.domain)));
        }
        Some((_, info)) => {
            let table = core.table_mut();
            table.add_card(info.domain, info.privileged.iter().copied());
            for g in card_guards {
                table.push_guard(g);
            }
            let ep = core.add_endpoint(EndpointKind::Card);
            core.table_mut()
                .bind(ep, info.domain.owner())
                .map_err(|e| HostError::Card(CardAttachError::Bind(e)))?;
            Some(ep)
        }
        None => None,
    };
    let socket = settings.socket.clone();
    let listener = bind_socket(&socket, settings.socket_mode)?;
    info!(socket = %socket.display(), host = %domain.owner(), guards = ?core.table().guard_names(), "host started");
    // Requests waiting for a service are bounded like any reader's queue;
    // beyond that the requester is told to ask again.
    let per_destination = core.limits().per_destination;
    let (routes, inboxes): (Vec<_>, Vec<_>) = services
        .into_iter()
        .map(|svc| {
            // Service ids are given in order: the route's index.
            core.add_service(svc.mtypes());
            let (tx, rx) = std::sync::mpsc::sync_channel(per_destination);
            let route = ServiceRoute {
                name: svc.name().to_owned(),
                tx: Mutex::new(Some(tx)),
                busy: Default::default(),
                events: Default::default(),
            };
            (route, (svc, rx))
        })
        .unzip();
    let mut my_domains = vec![domain];
    if let Some((_, info)) = &card {
        my_domains.push(info.domain);
    }
    let links = extra.iter().any(|t| t.uses_links());
    let remote =
        crate::remote::Remote::new(config, &settings, domain.owner(), my_domains.clone(), links)?;
    let nats = config.remote.nats.as_ref().map(|_| {
        let ep = core.add_endpoint(EndpointKind::DefaultRoute);
        core.table_mut().set_default_route(Some(ep));
        Arc::new(crate::nats::Nats {
            ep,
            wake: tokio::sync::Notify::new(),
            stats: Default::default(),
            client: Mutex::new(None),
        })
    });
    let (proxy_tx, proxy_rx) = std::sync::mpsc::channel();
    let card_info = card.as_ref().map(|(_, info)| info.clone());
    let attach = card.zip(card_ep).map(|((session, info), ep)| CardAttach {
        ep,
        id: info.domain.owner(),
        tx: proxy_tx,
        stats: session.stats(),
        link: session.describe(),
        inline: session.in_process(),
        session: Mutex::new(Some(crate::proxy::Attached::new(
            session,
            info.domain.owner(),
            settings.card_clock,
        ))),
        thread: Mutex::new(None),
    });
    let shared = Arc::new(Shared {
        table: Mutex::new(core),
        conns: Mutex::new(HashMap::new()),
        ports: Mutex::new(ports),
        domain,
        allow_taps: settings.allow_taps,
        clock: Clock {
            instant: Instant::now(),
            system: SystemTime::now(),
        },
        card: attach,
        remote: remote.map(Arc::new),
        nats,
        services: routes,
        acquires: Mutex::new({
            let (rate, burst) = settings.acquire;
            tenet_dispatch::KeyedBuckets::new(rate, f64::from(burst))
        }),
    });
    for (service, (svc, rx)) in inboxes.into_iter().enumerate() {
        let host = HostSender {
            shared: shared.clone(),
            service,
        };
        let name = svc.name().to_owned();
        std::thread::Builder::new()
            .name(format!("tenet-{}", name.to_lowercase()))
            .spawn(move || svc.run(rx, host))
            .map_err(|error| HostError::Ttp(ServiceError::Thread { name, error }))?;
    }
    if let (Some(info), Some(a)) = (card_info, &shared.card) {
        info!(card = %info.domain.owner(), link = %a.link, privileged = ?info.privileged, "card attached");
        let sh = shared.clone();
        let t = std::thread::Builder::new()
            .name("tenet-card-proxy".into())
            .spawn(move || crate::proxy::run(sh, proxy_rx))
            .map_err(|e| HostError::Card(CardAttachError::Thread(e)))?;
        *lock(&a.thread) = Some(t);
    }
    let accept = tokio::spawn(accept_loop(shared.clone(), listener));
    let timer = tokio::spawn(timer_loop(shared.clone()));
    let mut tasks = vec![accept, timer];
    let mut metrics_addr = None;
    if let Some((listener, addr)) = metrics {
        info!(%addr, "serving /metrics");
        tasks.push(tokio::spawn(crate::metrics::serve(
            shared.clone(),
            listener,
        )));
        metrics_addr = Some(addr);
    }
    // The transports the config names, then those plugged in; a failed
    // start leaves none of the others' tasks behind.
    let mut transports: Vec<Box<dyn RemoteTransport>> = vec![
        Box::new(TlsLinks),
        Box::new(NatsLinks {
            domains: my_domains,
        }),
    ];
    transports.extend(extra);
    let cx = TransportHost {
        shared: shared.clone(),
        config: config.clone(),
        settings: settings.clone(),
    };
    let mut started: Result<(Vec<JoinHandle<()>>, Option<SocketAddr>), HostError> =
        Ok((Vec::new(), None));
    for t in transports {
        let name = t.name();
        match t.start(&cx).await {
            Ok(s) => {
                if let Ok((tasks, listening)) = &mut started {
                    tasks.extend(s.tasks);
                    *listening = listening.or(s.listening);
                }
            }
            Err(e) => {
                if let Ok((tasks, _)) = &started {
                    tasks.iter().for_each(JoinHandle::abort);
                }
                debug!(transport = name, error = %e, "transport did not start");
                started = Err(e);
                break;
            }
        }
    }
    let remote_addr = match started {
        Ok((t, listening)) => {
            tasks.extend(t);
            listening
        }
        Err(e) => {
            for t in &tasks {
                t.abort();
            }
            stop_card(&shared).await;
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    Ok(HostHandle {
        shared,
        socket,
        remote_addr,
        metrics_addr,
        tasks,
    })
}

fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, HostError> {
    let err = |source| HostError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // A folder made here gets what the socket needs: the group may
        // reach a socket shared with it, no one else may enter. One that
        // exists (made by anyone, maybe just now) must pass the check.
        let dir_mode = if mode & 0o070 != 0 { 0o750 } else { 0o700 };
        if let Some(grand) = parent.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(grand).map_err(err)?;
        }
        match std::fs::create_dir(parent) {
            Ok(()) => {
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(dir_mode))
                    .map_err(err)?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
        tenet_proto::socket::check_for_daemon(parent, mode)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(HostError::NotASocket(path.to_owned()));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(HostError::AlreadyRunning(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    // Create the socket without any group/other bits, then widen to `mode`:
    // there is no moment at which others could connect.
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ep = lock(&shared.table).add_endpoint(EndpointKind::App);
                    let uid = stream.peer_cred().ok().map(|c| c.uid());
                    let conn = Arc::new(Conn {
                        ep,
                        uid,
                        stream,
                        out: Mutex::new(Out::default()),
                        kick: Notify::new(),
                        drained: Notify::new(),
                    });
                    lock(&shared.conns).insert(ep, conn.clone());
                    // Made before the task: a task cancelled before it
                    // first runs still unregisters its connection.
                    conns.spawn(serve(Registered::new(shared.clone(), conn)));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(ended) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = ended
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "an app connection's task panicked; its connection is closed");
                }
            }
        }
    }
}

async fn timer_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.with_core(|t| {
            if t.poll_timeout().is_some_and(|d| d <= Instant::now()) {
                t.handle_timeout(Instant::now());
            }
        });
    }
}

/// Does what the core said; called with the core unlocked (by
/// [`Shared::with_core`] only).
fn act(shared: &Shared, effect: Effect) {
    match effect {
        Effect::Wake { ep, kind } => wake_reader(shared, ep, kind),
        Effect::Service { service, message } => {
            let Some(svc) = shared.services.get(service.0) else {
                return;
            };
            let sent = match lock(&svc.tx).as_ref() {
                Some(tx) => tx.try_send(message).map_err(|e| match e {
                    std::sync::mpsc::TrySendError::Full(m)
                    | std::sync::mpsc::TrySendError::Disconnected(m) => m,
                }),
                // The host is stopping.
                None => Err(message),
            };
            if let Err(m) = sent {
                svc.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(requester = %m.src(), service = %svc.name, "service busy: request refused");
                shared.with_core(|core| core.service_busy(&svc.name, &m, Instant::now()));
            }
        }
        Effect::GuardNote(n) => info!(target: "tenet::guard", "{n}"),
        Effect::GuardDropped {
            ingress,
            src,
            dst,
            mtype,
            why,
        } => {
            warn!(target: "tenet::guard", ingress = ingress.name(), %src, %dst, %mtype, "{why}")
        }
        Effect::NoticeDropped { to, reason } => {
            warn!(%to, %reason, "undeliverable notice dropped: dispatch table full")
        }
        Effect::AnswerDropped { to, error } => {
            warn!(error = %error, %to, "host entity answer not stored")
        }
    }
}

/// Hands a readable endpoint to its reader, by the kind the core knows it
/// as: an app connection, the smartcard proxy, the NATS sender, or a peer
/// link.
fn wake_reader(shared: &Shared, ep: EndpointId, kind: EndpointKind) {
    match kind {
        EndpointKind::App => {
            let conn = lock(&shared.conns).get(&ep).cloned();
            if let Some(conn) = conn {
                pump(shared, &conn);
            }
        }
        EndpointKind::Card => {
            if let Some(c) = shared.card.as_ref().filter(|c| c.ep == ep)
                && !crate::proxy::drive(shared, c)
            {
                let _ = c.tx.send(ProxyCmd::Wake);
            }
        }
        EndpointKind::DefaultRoute => {
            if let Some(n) = shared.nats.as_ref().filter(|n| n.ep == ep) {
                n.wake.notify_one();
            }
        }
        EndpointKind::Peer => {
            if let Some(p) = shared.remote.as_ref().and_then(|r| r.peer_by_ep(ep)) {
                p.wake();
            }
        }
        EndpointKind::HostEntity => {}
    }
}

/// Moves messages waiting for `conn` from the table into its socket until
/// the table has none or the socket is full.
fn pump(shared: &Shared, conn: &Conn) {
    pump_after(shared, conn, Vec::new());
}

/// [`pump`], writing `first` (encoded frames) before the messages.
fn pump_after(shared: &Shared, conn: &Conn, mut first: Vec<u8>) {
    let mut out = lock(&conn.out);
    if out.closed {
        return;
    }
    if out.corked {
        // The connection's task writes them when it is done (only it
        // passes `first`, after uncorking).
        debug_assert!(first.is_empty());
        out.pump_due = true;
        return;
    }
    if out.pending_len() > 0 {
        out.pending.extend_from_slice(&first);
        conn.kick.notify_one();
        return;
    }
    loop {
        let mut buf = std::mem::take(&mut first);
        {
            let mut t = lock(&shared.table);
            while buf.len() < WRITE_BATCH {
                let frame = if let Some(d) = t.take(conn.ep) {
                    DaemonFrame::Deliver {
                        subscription: d.subscription,
                        message: d.message,
                    }
                } else if let Some(item) = t.take_tap(conn.ep) {
                    match item {
                        TapItem::Copy { tap, at, message } => DaemonFrame::Tapped {
                            tap,
                            at_micros: shared.clock.micros(at),
                            message,
                        },
                        TapItem::Lagged { tap, missed } => DaemonFrame::Lagged { tap, missed },
                    }
                } else {
                    break;
                };
                write_codec_frame(&mut buf, &frame);
            }
        }
        if buf.is_empty() {
            return;
        }
        write_now(conn, &mut out, buf);
        if out.closed || out.pending_len() > 0 {
            return;
        }
    }
}

/// Writes as much of `buf` as the socket takes now; keeps the rest for the
/// writer task. `out` must have nothing pending.
fn write_now(conn: &Conn, out: &mut Out, buf: Vec<u8>) {
    let mut off = 0;
    while off < buf.len() {
        match conn.stream.try_write(&buf[off..]) {
            Ok(0) => {
                out.closed = true;
                return;
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                out.closed = true;
                conn.kick.notify_one();
                return;
            }
        }
    }
    if off < buf.len() {
        out.pending = buf;
        out.off = off;
        conn.kick.notify_one();
    }
}

/// Holds what is written to `conn` while its task handles what it read
/// (`uncork` writes it): an acknowledgement and the answer to the message
/// it acknowledges then go out in one write, and wake the app once.
/// Nothing is held if the socket is already behind.
fn cork(conn: &Conn) -> bool {
    let mut out = lock(&conn.out);
    if out.closed || out.pending_len() > 0 {
        return false;
    }
    out.corked = true;
    true
}

/// Writes what [`cork`] held, with the messages stored for `conn`
/// meanwhile.
fn uncork(shared: &Shared, conn: &Conn) {
    let mut out = lock(&conn.out);
    out.corked = false;
    // What the writer task did not already send of it.
    let off = std::mem::take(&mut out.off);
    let mut held = std::mem::take(&mut out.pending);
    held.drain(..off);
    if std::mem::take(&mut out.pump_due) {
        drop(out);
        // Appends after anything another task wrote since (it found the
        // connection uncorked).
        pump_after(shared, conn, held);
    } else if !out.closed && !held.is_empty() {
        // Under the same lock: nothing else can be pending.
        write_now(conn, &mut out, held);
    }
}

fn reply(conn: &Conn, frame: &DaemonFrame) {
    let mut buf = Vec::new();
    write_codec_frame(&mut buf, frame);
    let mut out = lock(&conn.out);
    if out.closed {
        return;
    }
    if out.corked || out.pending_len() > 0 {
        out.pending.extend_from_slice(&buf);
    } else {
        write_now(conn, &mut out, buf);
    }
}

fn error(conn: &Conn, code: ErrorCode, text: impl Into<String>) {
    reply(
        conn,
        &DaemonFrame::Error {
            code,
            text: text.into(),
        },
    );
}

async fn writer(shared: Arc<Shared>, conn: Arc<Conn>) {
    loop {
        conn.kick.notified().await;
        loop {
            let pending = {
                let out = lock(&conn.out);
                if out.closed {
                    return;
                }
                if out.corked {
                    // The connection's task writes when it uncorks.
                    break;
                }
                out.pending_len()
            };
            if pending == 0 {
                pump(&shared, &conn);
                let out = lock(&conn.out);
                if out.closed {
                    return;
                }
                if out.pending_len() == 0 {
                    break;
                }
            }
            if conn.stream.writable().await.is_err() {
                lock(&conn.out).closed = true;
                return;
            }
            let mut out = lock(&conn.out);
            while out.pending_len() > 0 {
                let off = out.off;
                match conn.stream.try_write(&out.pending[off..]) {
                    Ok(0) => {
                        out.closed = true;
                        return;
                    }
                    Ok(n) => out.off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        out.closed = true;
                        return;
                    }
                }
            }
            if out.pending_len() == 0 {
                out.pending = Vec::new();
                out.off = 0;
                conn.drained.notify_waiters();
            }
        }
    }
}

/// Per-connection state owned by its reader.
struct Session {
    id: Option<EntityId>,
}

/// Serves one app's connection; `registered` unregisters it when this
/// ends, however it ends.
async fn serve(registered: Registered) {
    let Registered { shared, conn, .. } = &registered;
    let mut session = Session { id: None };
    let reason = read_loop(shared, conn, &mut session).await;
    debug!(endpoint = conn.ep.0, id = ?session.id, reason, "app disconnected");
}

/// An app's connection, unregistered however its task ends: it returns,
/// it is cancelled, or it panics (a bug, say in a guard a plug-in added,
/// which runs in the task that stores the app's message). The socket then
/// closes, so the app sees the end rather than waiting for an answer; its
/// endpoint leaves the table, so messages to its id are undeliverable
/// rather than queued for no one.
struct Registered {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    writer: tokio::task::JoinHandle<()>,
}

impl Registered {
    /// Starts the connection's writer task.
    fn new(shared: Arc<Shared>, conn: Arc<Conn>) -> Self {
        let writer = tokio::spawn(writer(shared.clone(), conn.clone()));
        Self {
            shared,
            conn,
            writer,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.conn.out).closed = true;
        self.conn.kick.notify_one();
        lock(&self.shared.conns).remove(&self.conn.ep);
        // This may run while the task unwinds from a panic: a second panic
        // here, let out, would abort the daemon.
        let (shared, ep) = (&self.shared, self.conn.ep);
        let removed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared.with_core(|t| t.remove_endpoint(ep, Instant::now()));
        }));
        if removed.is_err() {
            tracing::error!(
                endpoint = ep.0,
                "removing a closed app connection's endpoint panicked"
            );
        }
        self.writer.abort();
    }
}

async fn read_loop(shared: &Shared, conn: &Conn, session: &mut Session) -> &'static str {
    let mut frames = FrameDecoder::new(MAX_APP_FRAME);
    loop {
        // Backpressure: an app that does not read its replies is not read.
        loop {
            let drained = conn.drained.notified();
            {
                let out = lock(&conn.out);
                if out.closed {
                    return "socket closed";
                }
                if out.pending_len() <= MAX_PENDING_OUT {
                    break;
                }
            }
            drained.await;
        }
        if conn.stream.readable().await.is_err() {
            return "read error";
        }
        match conn.stream.try_read_buf(frames.read_buf()) {
            Ok(0) => return "end of stream",
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return "read error",
        }
        // Only an app holding an id is corked: its requests never wait
        // (acquiring one waits for the card).
        let corked = session.id.is_some() && cork(conn);
        let ended = loop {
            match frames.next_frame() {
                Ok(Some(body)) => handle(shared, conn, session, body).await,
                Ok(None) => break None,
                Err(e) => {
                    warn!(endpoint = conn.ep.0, id = ?session.id, error = %e, "closing app connection: bad framing");
                    error(
                        conn,
                        ErrorCode::TOO_LARGE,
                        format!("{e}; closing the connection"),
                    );
                    break Some("bad framing");
                }
            }
        };
        if corked {
            uncork(shared, conn);
        }
        if let Some(reason) = ended {
            return reason;
        }
    }
}

async fn handle(shared: &Shared, conn: &Conn, session: &mut Session, body: &[u8]) {
    let req = match ClientFrame::decode(body) {
        Ok(r) => r,
        Err(e) => {
            debug!(endpoint = conn.ep.0, error = %e, "malformed request");
            return error(
                conn,
                ErrorCode::MALFORMED,
                format!("malformed request: {e}"),
            );
        }
    };
    match req {
        ClientFrame::Acquire => return acquire(shared, conn, session).await,
        // Figures only, no app's or card's id: any app that may connect may
        // ask, before it holds an id (asking costs no card write).
        ClientFrame::Status => {
            return reply(conn, &DaemonFrame::Status(crate::metrics::status(shared)));
        }
        _ => {}
    }
    let Some(id) = session.id else {
        return error(
            conn,
            ErrorCode::NOT_ACQUIRED,
            "acquire an id before any other request",
        );
    };
    match req {
        ClientFrame::Acquire | ClientFrame::Status => unreachable!("handled above"),
        ClientFrame::Send(m) => send(shared, conn, id, m),
        ClientFrame::Subscribe(f) => subscribe(shared, conn, id, f),
        ClientFrame::Tap(f) => {
            if !shared.allow_taps {
                return error(
                    conn,
                    ErrorCode::PERMISSION_DENIED,
                    "taps are disabled on this host (host.allow_taps)",
                );
            }
            let r = lock(&shared.table).table_mut().tap(conn.ep, f);
            match r {
                Ok(TapId(t)) => reply(conn, &DaemonFrame::Ok(t)),
                Err(e) => error(conn, ErrorCode::LIMIT, e.to_string()),
            }
        }
        ClientFrame::Unsubscribe(s) => {
            let r = lock(&shared.table).table_mut().unsubscribe(conn.ep, s);
            match r {
                Ok(()) => reply(conn, &DaemonFrame::Ok(0)),
                Err(e) => error(conn, ErrorCode::NO_SUCH_ID, e.to_string()),
            }
        }
        ClientFrame::Untap(t) => {
            let r = lock(&shared.table).table_mut().untap(conn.ep, t);
            match r {
                Ok(()) => reply(conn, &DaemonFrame::Ok(0)),
                Err(e) => error(conn, ErrorCode::NO_SUCH_ID, e.to_string()),
            }
        }
    }
}

/// Assigns an id: from the card when the host has one (paper 4.2), else
/// from the software domain.
async fn acquire(shared: &Shared, conn: &Conn, session: &mut Session) {
    if let Some(id) = session.id {
        return error(
            conn,
            ErrorCode::ALREADY_ACQUIRED,
            format!("this connection already holds {id}"),
        );
    }
    // Each id writes the card's store or the state directory: a local user
    // gets so many, over all its connections. A socket that reports no
    // user shares one bucket (uid u32::MAX).
    let uid = conn.uid.unwrap_or(u32::MAX);
    let limited = {
        let mut a = lock(&shared.acquires);
        a.take(&uid, Instant::now())
            .map_err(|wait| (wait, a.rate(), a.burst()))
    };
    if let Err((wait, rate, burst)) = limited {
        warn!(uid, "id acquisitions beyond the user's rate refused");
        return error(
            conn,
            ErrorCode::LIMIT,
            format!(
                "uid {uid} acquires ids too fast (at most {burst} at once, then {rate} per second: \
                 host.acquire_burst, host.acquire_rate); retry in {:.1} s",
                wait.as_secs_f64()
            ),
        );
    }
    let id = match &shared.card {
        Some(card) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if card.tx.send(ProxyCmd::AssignPort(tx)).is_err() {
                return error(
                    conn,
                    ErrorCode::ID_UNAVAILABLE,
                    "the smartcard proxy has stopped",
                );
            }
            match rx.await {
                Ok(Ok(port)) => EntityId::new(card.id.domain(), port),
                Ok(Err(e)) => {
                    warn!(error = %e, "card cannot assign a port");
                    return error(conn, ErrorCode::ID_UNAVAILABLE, e.to_string());
                }
                Err(_) => {
                    return error(
                        conn,
                        ErrorCode::ID_UNAVAILABLE,
                        "the smartcard proxy has stopped",
                    );
                }
            }
        }
        None => {
            let port = lock(&shared.ports).allocate();
            match port {
                Ok(p) => EntityId::new(shared.domain, p),
                Err(e) => {
                    warn!(error = %crate::chain(&e), "cannot assign a port");
                    return error(conn, ErrorCode::ID_UNAVAILABLE, crate::chain(&e));
                }
            }
        }
    };
    if let Err(e) = lock(&shared.table).table_mut().bind(conn.ep, id) {
        warn!(error = %e, "fresh port already bound");
        return error(conn, ErrorCode::INTERNAL, e.to_string());
    }
    session.id = Some(id);
    debug!(endpoint = conn.ep.0, %id, "id acquired");
    reply(conn, &DaemonFrame::Acquired(id));
}

fn send(shared: &Shared, conn: &Conn, id: EntityId, m: Message) {
    if m.src() != id {
        warn!(endpoint = conn.ep.0, bound = %id, claimed = %m.src(), dst = %m.dst(), mtype = %m.mtype(), "forged src rejected");
        return error(
            conn,
            ErrorCode::FORGED_SRC,
            format!("src {} is not this connection's id {id}", m.src()),
        );
    }
    // Deliver first (with_core acts on the events before it returns), then
    // acknowledge: the destination's latency matters more.
    let result = shared.with_core(|t| t.store(Ingress::App, m, Instant::now()));
    match result {
        Ok(_) => reply(conn, &DaemonFrame::Ok(0)),
        Err(e @ StoreError::QueueFull { .. }) => error(conn, ErrorCode::QUEUE_FULL, e.to_string()),
        Err(e @ StoreError::Guard(_)) => error(conn, ErrorCode::REJECTED_BY_GUARD, e.to_string()),
        Err(e @ StoreError::TooLarge { .. }) => error(conn, ErrorCode::TOO_LARGE, e.to_string()),
    }
}

fn subscribe(shared: &Shared, conn: &Conn, id: EntityId, f: Filter) {
    // Apps may only claim messages addressed to themselves: anything wider
    // would let one app read another entity's messages.
    let f = if f.dst.is_none() && f.dst_domain.is_none() {
        Filter { dst: Some(id), ..f }
    } else {
        f
    };
    if f.fixed_dst() != Some(id) {
        return error(
            conn,
            ErrorCode::PERMISSION_DENIED,
            format!("apps may subscribe only to messages addressed to themselves ({id})"),
        );
    }
    let r = lock(&shared.table).table_mut().subscribe(conn.ep, f);
    match r {
        Ok(s) => reply(conn, &DaemonFrame::Ok(s.0)),
        Err(e) => error(conn, ErrorCode::LIMIT, e.to_string()),
    }
}
