//! What an application plugs into a host: applets for its virtual card,
//! guards for a host with a card, and services of the host's own entity.
//! The host knows no application; the CLI plugs the voucher application in
//! (`tenet-voucher-app`), and `docs/applets.md` shows how to write one.
//!
//! - An [`AppletFactory`] makes an applet to install on the in-process
//!   virtual card when the host opens it; it sees the card's state first
//!   and may refuse to start (a host naming the wrong TTP for the card).
//! - A card guard ([`HostBuilder::card_guard`]) joins the guard chain when
//!   a card is attached: it sees every message the table stores.
//! - An [`EntityService`] answers messages of its mtypes addressed to the
//!   host's own entity `DOMAIN:0`, on a thread of its own, through a
//!   [`HostSender`]. Requests wait in a hand-off channel bounded by
//!   `dispatch.per_destination`; beyond it the host answers `refused`
//!   ("the NAME is busy") and counts it ([`crate::HostHandle::service_busy`]).
//!   A service may count events of its own ([`HostSender::count`]): they
//!   show in `tenet status` and `/metrics` with the host's figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tenet_card::Applet;
use tenet_card::state::CardState;
use tenet_dispatch::{Guard, Ingress};
use tenet_proto::{EntityId, Message, Mtype};
use tracing::warn;

use crate::config::Config;
use crate::server::{HostError, HostHandle, Shared};

/// Why a plug-in refused to start; the host names the plug-in around it.
pub type PluginError = Box<dyn std::error::Error + Send + Sync>;

/// Why a service of the host entity (the TTP) cannot start
/// ([`HostError::Ttp`]). Each text holds its cause.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// `[ttp]` is configured, but no service was plugged in.
    #[error(
        "[ttp] is configured, but this host runs no service of its entity; \
         start it with the voucher application (tenet host, tenet ttp)"
    )]
    NoService,
    /// The service's thread cannot be started.
    #[error("cannot start the {name} thread: {error}")]
    Thread {
        /// The service's name.
        name: String,
        /// The cause.
        error: std::io::Error,
    },
    /// The service could not be made (its keys, its store).
    #[error("{0}")]
    Plugin(PluginError),
}

/// Makes an applet for the host's in-process virtual card, given the card's
/// state as it was opened.
pub type AppletFactory =
    Box<dyn Fn(&CardState) -> Result<Box<dyn Applet>, PluginError> + Send + Sync>;

/// A service of the host's own entity.
pub trait EntityService: Send + 'static {
    /// Its name in logs and in the busy notice ("the TTP is busy").
    fn name(&self) -> &str;
    /// The mtypes it answers when they are addressed to the host entity.
    fn mtypes(&self) -> Vec<Mtype>;
    /// Runs until `inbox` closes (the host stopped), on a thread of its
    /// own: takes each request from `inbox` and answers through `host`.
    fn run(self: Box<Self>, inbox: Receiver<Message>, host: HostSender);
}

/// How a service sends: as the host's own entity, into the dispatch table.
#[derive(Clone)]
pub struct HostSender {
    pub(crate) shared: Arc<Shared>,
    /// The service it sends for: its index in the host's services.
    pub(crate) service: usize,
}

impl HostSender {
    /// The host's own entity, `DOMAIN:0`: the sender of every answer.
    pub fn id(&self) -> EntityId {
        self.shared.domain.owner()
    }

    /// `dispatch.per_destination`: how many messages any one reader may
    /// have waiting (and how many requests the hand-off channel holds).
    pub fn per_destination(&self) -> usize {
        self.shared.with_core(|t| t.limits().per_destination)
    }

    /// Stores `messages` (from the host entity) and delivers them; a
    /// message the table refuses (full) is logged and dropped, and so is
    /// one that claims another sender than the host entity.
    pub fn send(&self, messages: impl IntoIterator<Item = Message>) {
        let me = self.id();
        self.shared.with_core(|t| {
            for m in messages {
                let to = m.dst();
                if m.src() != me {
                    warn!(src = %m.src(), %to, "service message with another src than the host entity dropped");
                    continue;
                }
                if let Err(e) = t.store(Ingress::Internal, m, Instant::now()) {
                    warn!(error = %e, %to, "host entity answer not stored");
                }
            }
        });
    }

    /// Counts `n` requests refused as busy ([`HostHandle::service_busy`]).
    pub fn count_busy(&self, n: u64) {
        if let Some(route) = self.shared.services.get(self.service) {
            route.busy.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts one `event` of this service: `tenet status` and `/metrics`
    /// show it as `tenet_service_events_total{service="NAME",event="EVENT"}`.
    /// Events are the service's own fixed words (the TTP counts
    /// `admission_resolve`, `admission_abort` and `refused`), never ids or
    /// other values from outside: each one is a figure for as long as the
    /// host runs.
    pub fn count(&self, event: &'static str) {
        if let Some(route) = self.shared.services.get(self.service) {
            let mut events = crate::server::lock(&route.events);
            match events.iter_mut().find(|(e, _)| *e == event) {
                Some((_, n)) => *n += 1,
                None => events.push((event, 1)),
            }
        }
    }
}

/// A service plugged in, as routing sees it.
pub(crate) struct ServiceRoute {
    pub(crate) name: String,
    /// The service's inbox; taken when the host stops, so that the
    /// service's thread ends (its `HostSender` keeps the host's state
    /// alive, and with it this sender).
    pub(crate) tx: Mutex<Option<std::sync::mpsc::SyncSender<Message>>>,
    /// Requests refused because the service was busy.
    pub(crate) busy: AtomicU64,
    /// The service's own events ([`HostSender::count`]), in the order first
    /// counted.
    pub(crate) events: Mutex<Vec<(&'static str, u64)>>,
}

/// A host with its plug-ins, ready to start.
pub struct HostBuilder<'a> {
    pub(crate) config: &'a Config,
    pub(crate) applets: Vec<AppletFactory>,
    pub(crate) card_guards: Vec<Box<dyn Guard>>,
    pub(crate) services: Vec<Box<dyn EntityService>>,
    pub(crate) transports: Vec<Box<dyn crate::transport::RemoteTransport>>,
}

impl<'a> HostBuilder<'a> {
    /// A host from `config` with no application plugged in.
    pub fn new(config: &'a Config) -> Self {
        Self {
            config,
            applets: Vec::new(),
            card_guards: Vec::new(),
            services: Vec::new(),
            transports: Vec::new(),
        }
    }

    /// Installs the applet `make` makes on the in-process virtual card.
    pub fn applet(mut self, make: AppletFactory) -> Self {
        self.applets.push(make);
        self
    }

    /// Adds `guard` to the guard chain when a card is attached.
    pub fn card_guard(mut self, guard: Box<dyn Guard>) -> Self {
        self.card_guards.push(guard);
        self
    }

    /// Runs `service` for the host's own entity.
    pub fn service(mut self, service: Box<dyn EntityService>) -> Self {
        self.services.push(service);
        self
    }

    /// Reaches other hosts also through `transport` (besides the TLS links
    /// and NATS the config names), e.g. a [`MemoryLink`](crate::transport::MemoryLink).
    pub fn transport(mut self, transport: Box<dyn crate::transport::RemoteTransport>) -> Self {
        self.transports.push(transport);
        self
    }

    /// Starts the daemon on the current tokio runtime.
    pub async fn start(self) -> Result<HostHandle, HostError> {
        crate::server::start_with(self).await
    }
}
