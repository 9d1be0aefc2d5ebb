//! Topologies of TENeT host daemons on loopback, for the demo, the
//! benchmarks and tests.
//!
//! A [`Topology`] is a CA in a directory and a list of hosts, each with a
//! name, a software domain and, if asked, a virtual card personalized by
//! the CA, the trusted third party ([`TtpIdentity`]) with its decisions in
//! SQLite, peers it dials (named by host), guard rules and any other
//! setting of its [`tenet_host::Config`]. [`Topology::start`] starts the
//! hosts in the process, every one listening for TLS links on
//! `127.0.0.1:0`: a host is started after the hosts it dials, and dials the
//! address its peer reports ([`tenet_host::HostHandle::remote_addr`]), so
//! no port is guessed. It returns when every link carries echoes, with a
//! [`Running`] that names each host and its bound address.
//!
//! On such a topology, [`exchange`] runs the voucher exchange of `tenet
//! demo`, a message lost on purpose if asked, and reports its flow and
//! outcome.
//!
//! The kit also makes the pieces one at a time ([`Ca`], [`make_card`],
//! [`blank_card`], [`host_config`], [`wait_links`]) and starts a private
//! `nats-server` on a port of its choosing ([`NatsServer`]), or a cluster
//! of them with one user per host as `docs/nats-server.example.conf` has
//! it ([`NatsCluster`], [`NatsUser`]).
//!
//! The topologies do not simulate: the hosts are the real daemon on real
//! sockets, with tokio's clock. [`sim`] does: a deterministic simulator of
//! several hosts' cores ([`tenet_dispatch::HostCore`]), their virtual cards
//! and the TTP on a network that loses, duplicates and reorders, in
//! simulated time, from a seed. Nothing here is for production: keys and stores go
//! to the directory the caller names, and every card has the PIN [`PIN`].

use std::path::PathBuf;
use std::time::Duration;

use tenet_proto::EntityId;

pub mod exchange;
mod nats;
mod pki;
pub mod sim;
pub mod story;
mod topology;

pub use nats::{NatsCluster, NatsServer, NatsUser};
pub use pki::{Ca, TtpIdentity, blank_card, make_card};
pub use topology::{CardSpec, HostSpec, Running, Topology, host_config, wait_links};

/// The PIN of every card the kit makes.
pub const PIN: &[u8] = b"1234";

/// The PUK of every card the kit makes.
pub const PUK: &[u8] = b"12345678";

/// How long the kit waits for anything that should happen (a link to come
/// up, nats-server to listen).
pub const WAIT: Duration = Duration::from_secs(10);

/// Why a topology, or a piece of one, could not be made or started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA could not make or issue a certificate.
    #[error(transparent)]
    Cert(#[from] tenet_pki::CertError),
    /// A certificate file could not be read.
    #[error("reading certificate {path}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: pki_types::pem::Error,
    },
    /// A card's store could not be created.
    #[error(transparent)]
    Store(#[from] tenet_card::StoreError),
    /// A card refused its personalization.
    #[error(transparent)]
    Card(#[from] tenet_card::CardError),
    /// No randomness for a card's domain.
    #[error("no randomness: {0}")]
    Random(getrandom::Error),
    /// A host did not start.
    #[error("host {name}")]
    Host {
        /// The host's name in the topology.
        name: String,
        /// The cause.
        source: tenet_host::HostError,
    },
    /// An app could not talk to its host daemon.
    #[error(transparent)]
    Client(#[from] tenet_client::ClientError),
    /// A link did not carry an echo within [`WAIT`].
    #[error("no link from {from} to {to}")]
    NoLink {
        /// The host the echo was sent from.
        from: EntityId,
        /// The entity that never answered.
        to: EntityId,
    },
    /// Two hosts of the topology have the same name.
    #[error("two hosts are named {0:?}")]
    DuplicateHost(String),
    /// A host dials a peer the topology does not have.
    #[error("host {host:?} dials {peer:?}, which is not in the topology")]
    UnknownPeer {
        /// The dialing host.
        host: String,
        /// The name it gave.
        peer: String,
    },
    /// Hosts dial each other in a circle, so none can start first.
    #[error("hosts {0:?} dial each other in a circle: none can start first")]
    Circle(Vec<String>),
    /// A host is dialed but its config (as changed by
    /// [`HostSpec::config`]) has no `remote.listen`.
    #[error("host {0:?} is dialed but does not listen")]
    NotListening(String),
    /// A wallet's order failed.
    #[error(transparent)]
    Wallet(#[from] tenet_client::wallet::WalletError),
    /// A scenario stalled.
    #[error("{0}")]
    Stalled(&'static str),
    /// nats-server could not be started (not installed, for one).
    #[error("cannot run nats-server")]
    NatsSpawn(#[source] std::io::Error),
    /// nats-server started but did not say where it listens within [`WAIT`].
    #[error("nats-server did not start: {0}")]
    NatsStart(String),
}
