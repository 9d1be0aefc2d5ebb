//! The host daemon's TOML configuration.
//!
//! Every field has a default, so an empty file (or no file) is a working
//! configuration. Unknown keys are errors, so a typo never silently
//! disables a setting. The commented example is `docs/host.example.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tenet_dispatch::{Limits, RuleError, RuleGuard, RuleSpec, Share};
use tenet_proto::{Domain, EntityId};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (line, column, key).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid config value {key}: {detail}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A guard rule is malformed (its text says which and why; not also
    /// given as the source, or a chain would print it twice).
    #[error("invalid config: {0}")]
    Rule(RuleError),
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[host]`.
    #[serde(default)]
    pub host: HostSection,
    /// `[dispatch]`.
    #[serde(default)]
    pub dispatch: DispatchSection,
    /// `[guard]`.
    #[serde(default)]
    pub guard: GuardSection,
    /// `[card]`: the host's smartcard, if it has one.
    #[serde(default)]
    pub card: CardSection,
    /// `[remote]`: links to other hosts.
    #[serde(default)]
    pub remote: RemoteSection,
    /// `[ttp]`: this host's entity acts as the trusted third party.
    pub ttp: Option<TtpSection>,
    /// `[metrics]`: serve `/metrics` over HTTP.
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// `[metrics]`: the daemon's figures in the Prometheus text format at
/// `http://LISTEN/metrics` (the same figures `tenet status` prints; see
/// `docs/host.md`). Off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// IP address and port to serve on, e.g. `"127.0.0.1:9464"`; port 0
    /// lets the system choose ([`crate::HostHandle::metrics_addr`]). The
    /// figures hold no app's or card's id, but keep it on loopback or a
    /// monitoring network: anyone who reaches it sees the host's traffic.
    pub listen: Option<String>,
}

/// `[ttp]`: the host's own entity `DOMAIN:0` answers recovery requests
/// (`tenet ttp`). Its key and certificate name that entity (`tenet ca
/// entity`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtpSection {
    /// The TTP's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The TTP's certificate (PEM), naming `DOMAIN-0.id.tenet`.
    pub cert: PathBuf,
    /// The CA certificate cards' certificates chain to (PEM).
    pub ca: PathBuf,
    /// The SQLite database of decisions; default `STATE_DIR/ttp.sqlite`.
    pub database: Option<PathBuf>,
    /// A PostgreSQL connection string instead of SQLite, for a scale-out
    /// TTP (build with `--features postgres`), e.g.
    /// `"host=/run/postgresql user=tenet dbname=tenet"`.
    pub postgres: Option<String>,
}

/// `[remote]`: links to other hosts over TLS (see `docs/remote.md`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RemoteToml")]
pub struct RemoteSection {
    /// Address to accept links on, e.g. `"127.0.0.1:7001"`.
    pub listen: Option<String>,
    /// CA certificate(s) that peers' certificates must chain to (PEM).
    pub ca: Option<PathBuf>,
    /// This host's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// This host's private key (PEM).
    pub key: Option<PathBuf>,
    /// Links without TLS and without peer authentication. Only for tests on
    /// a closed machine; default `false`.
    pub danger_plaintext: Option<bool>,
    /// Messages in flight to one peer before waiting for its acknowledgement;
    /// default 1024.
    pub window: Option<usize>,
    /// Messages per second one peer may send; default 20000.
    pub rate: Option<f64>,
    /// Burst allowance of `rate`; default 2 × rate.
    pub burst: Option<f64>,
    /// `[[remote.peers]]`: hosts to dial.
    pub peers: Vec<PeerSection>,
    /// The `host` of `[[remote.peers]]` entries, by `address`: the host id
    /// (`DOMAIN:0`) the dialer must reach there. Kept beside
    /// [`PeerSection`] so that code building a `PeerSection` by its fields
    /// stays as it is.
    pub peer_hosts: BTreeMap<String, String>,
    /// `[remote.nats]`: route through a NATS server or cluster.
    pub nats: Option<NatsSection>,
}

/// `[remote]` as written: [`RemoteSection`] with the `host` of each
/// `[[remote.peers]]` entry in the entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteToml {
    listen: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    danger_plaintext: Option<bool>,
    window: Option<usize>,
    rate: Option<f64>,
    burst: Option<f64>,
    #[serde(default)]
    peers: Vec<PeerToml>,
    nats: Option<NatsSection>,
}

/// One `[[remote.peers]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerToml {
    address: String,
    #[serde(default)]
    domains: Vec<String>,
    host: Option<String>,
}

/// Two `[[remote.peers]]` entries for one address both name a `host`.
#[derive(Debug, thiserror::Error)]
#[error("[[remote.peers]] address {address} has two entries with a host")]
struct TwoPeerHosts {
    address: String,
}

impl TryFrom<RemoteToml> for RemoteSection {
    type Error = TwoPeerHosts;

    fn try_from(r: RemoteToml) -> Result<Self, TwoPeerHosts> {
        let mut peers = Vec::with_capacity(r.peers.len());
        let mut peer_hosts = BTreeMap::new();
        for p in r.peers {
            if let Some(h) = p.host
                && peer_hosts.insert(p.address.clone(), h).is_some()
            {
                return Err(TwoPeerHosts { address: p.address });
            }
            peers.push(PeerSection {
                address: p.address,
                domains: p.domains,
            });
        }
        Ok(Self {
            listen: r.listen,
            ca: r.ca,
            cert: r.cert,
            key: r.key,
            danger_plaintext: r.danger_plaintext,
            window: r.window,
            rate: r.rate,
            burst: r.burst,
            peers,
            peer_hosts,
            nats: r.nats,
        })
    }
}

/// `[remote.nats]`: hosts reach each other through NATS subjects derived
/// from their domains, with no routing table (see `docs/remote.md`). The
/// server's per-user permissions decide who may send as and receive for a
/// domain (`docs/nats-server.example.conf`); this host authenticates with
/// one of `user` and `password`, `token`, `creds` or `nkey_seed_file`, and
/// optionally its TLS client certificate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// Server URL(s), e.g. `"nats://127.0.0.1:4222"` or
    /// `"tls://nats.example:4222"`; comma-separated for a cluster.
    pub url: String,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Token, instead of user and password.
    pub token: Option<String>,
    /// A `.creds` file (user JWT and NKey seed, as `nsc` writes it), for a
    /// server in operator mode.
    pub creds: Option<PathBuf>,
    /// A file holding this host's user NKey seed (`SU...`), for a server
    /// whose user entry names the matching public key.
    pub nkey_seed_file: Option<PathBuf>,
    /// CA certificate(s) the server's certificate must chain to (PEM).
    /// Given, only these are trusted; otherwise the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// This host's TLS client certificate (PEM), for a server that verifies
    /// clients (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Refuse a server that does not speak TLS; default `false` (a
    /// `tls://` URL requires TLS anyway).
    pub tls_required: Option<bool>,
    /// Subject prefix; default `"tenet"` (subjects are
    /// `PREFIX.d.DSTDOMAIN.s.SRCDOMAIN`, inboxes `PREFIX.i.HOSTDOMAIN`).
    pub prefix: Option<String>,
    /// A queue group for this host's subscriptions: hosts serving the same
    /// domains in one group (TTP replicas) each get a share of its traffic
    /// instead of every one a copy.
    pub queue: Option<String>,
}

impl NatsSection {
    /// The servers of `url`, in the order given: one address, or several
    /// separated by commas (the nodes of a cluster; the client picks one at
    /// random and moves to another when it goes away). Each is
    /// `nats://HOST:PORT` or `tls://HOST:PORT` (also `ws://`, `wss://`;
    /// no scheme means `nats://`, no port 4222). An empty entry, or one
    /// that is no such address, is an error naming `remote.nats.url`.
    pub fn servers(&self) -> Result<Vec<String>, ConfigError> {
        let refuse = |detail: String| ConfigError::Value {
            key: "remote.nats.url",
            detail,
        };
        let mut servers: Vec<String> = Vec::new();
        for entry in self.url.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(refuse(format!(
                    "{:?}: an empty server address (comma-separated addresses, at least one)",
                    self.url
                )));
            }
            entry
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| refuse(format!("{entry:?}: {e}")))?;
            if servers.iter().any(|s| s == entry) {
                return Err(refuse(format!("{entry:?} is listed twice")));
            }
            servers.push(entry.to_owned());
        }
        Ok(servers)
    }
}

/// One `[[remote.peers]]` entry: a host this one dials and keeps a link to.
/// Its optional `host` key is in [`RemoteSection::peer_hosts`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// `HOST:PORT` of its `remote.listen`.
    pub address: String,
    /// Domains routed to it even before it connects (24 hex digits each).
    /// They only pre-route: they authorize nothing. A link to this peer
    /// comes up only if the peer's certificate names each of them, as well
    /// as every domain the peer announces.
    #[serde(default)]
    pub domains: Vec<String>,
}

/// A checked `[[remote.peers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    /// Where to dial.
    pub address: String,
    /// Domains routed to it before it connects.
    pub domains: Vec<Domain>,
    /// The host it must be (`host`): the dialer refuses a peer whose
    /// certificate does not name this id's domain, or whose hello names
    /// another host.
    pub host: Option<EntityId>,
}

/// `[card]`: the host's smartcard. With a card, apps acquire their ids from
/// it (its domain, ports it assigns); without one, from the software domain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardSection {
    /// A virtual card's store file, run inside the daemon (`tenet card new`
    /// makes one).
    #[serde(rename = "virtual")]
    pub virtual_store: Option<PathBuf>,
    /// A PC/SC reader name (needs the `pcsc` build feature), e.g.
    /// `"Virtual PCD 00 00"` for vpcd's first slot.
    pub reader: Option<String>,
    /// Use short APDUs with command chaining even if the link could carry
    /// extended ones; default `false`.
    pub short_apdus: Option<bool>,
    /// Seconds to wait at startup for a card in the reader; default 10.
    pub wait_secs: Option<f64>,
    /// Largest eTP message the virtual card accepts and emits, 34 to 65535;
    /// default 65535. Larger ones are refused with status `6a84`.
    pub max_message: Option<usize>,
    /// The TTP's id (`DOMAIN:PORT`) the virtual card was personalized for
    /// (`tenet card new --ttp --ttp-cert`). Only a check: a host cannot
    /// swap its card's TTP, so naming another one (or one for a card
    /// personalized without a TTP) stops the daemon at startup.
    pub ttp: Option<String>,
    /// Seconds between two times the daemon gives its card (`set-time`,
    /// the card's clock and the tick its applets act on, e.g. a voucher
    /// card recovering a stuck exchange by itself), 1 to 3600; default 10.
    pub clock_secs: Option<u64>,
}

/// `[host]`: where the daemon listens and keeps its state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// App socket path; default: see [`tenet_proto::socket::default_socket_path`].
    pub socket: Option<PathBuf>,
    /// Permission bits of the app socket, octal string; default `"0660"`.
    /// Bits for "others" are refused: the socket is the capability boundary.
    pub socket_mode: Option<String>,
    /// Directory for persistent state (domain, port counter); default
    /// `/var/lib/tenet` for root, else `$XDG_STATE_HOME/tenet` or
    /// `~/.local/state/tenet`.
    pub state_dir: Option<PathBuf>,
    /// The host's software domain, 24 hex digits; default: generated at
    /// first start and kept in the state directory.
    pub domain: Option<String>,
    /// Whether apps may tap traffic; default `true`.
    pub allow_taps: Option<bool>,
    /// Ids one local user (by the uid the app socket reports) may acquire
    /// per second, over all its connections; default 16. Each acquisition
    /// writes the card's store (its EEPROM) or the state directory.
    pub acquire_rate: Option<f64>,
    /// Ids one local user may acquire at once before the rate applies;
    /// default 256.
    pub acquire_burst: Option<u32>,
}

/// `[dispatch]`: the dispatch table's bounds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchSection {
    /// Messages waiting for one destination; default 1024.
    pub per_destination: Option<usize>,
    /// Bytes waiting for one destination; default 8 MiB (8388608). At
    /// least one message of the maximum size (65535 bytes).
    pub per_destination_bytes: Option<usize>,
    /// Messages waiting in the table, tap copies included; default 65536.
    pub total: Option<usize>,
    /// Bytes held in the table, tap copies included; default 64 MiB
    /// (67108864). At least `per_destination_bytes`.
    pub total_bytes: Option<usize>,
    /// The most of each of these bounds that one sender may take, more than
    /// 0 and at most 1; default 0.5. A sender is a local app, card or host,
    /// or a whole foreign domain; all tap copies together are one sender.
    pub per_sender_share: Option<f64>,
    /// Seconds a message may wait to be read; default 30.
    pub ttl_secs: Option<f64>,
    /// Tap copies waiting for one app; default 1024.
    pub tap_queue: Option<usize>,
    /// Subscriptions plus taps per app; default 64.
    pub handlers_per_app: Option<usize>,
}

/// `[guard]`: rule guards, checked after the default remote-ingress guard.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSection {
    /// `[[guard.rules]]`, in order.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// `[guard.offers]`: the offer guard of a host with a card (option 2a).
    #[serde(default)]
    pub offers: OffersSection,
}

/// `[guard.offers]`: offers addressed to this host's card are held for the
/// card's acceptor app; a merchant may add a standing policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffersSection {
    /// `GIVE>=N:ISSUERHEX:PROMISE,WANT<=M:ISSUERHEX:PROMISE`: offers to the
    /// card outside it are dropped before card or app sees them.
    pub policy: Option<String>,
    /// `REDEEM<=N:ISSUERHEX:PROMISE`: redemptions at the card outside it
    /// are dropped (with `policy` set and this unset, all are).
    pub redeem: Option<String>,
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every value that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.socket_mode()?;
        self.acquire_limit()?;
        self.domain()?;
        self.limits()?;
        RuleGuard::from_specs(&self.guard.rules)?;
        self.card_wait()?;
        self.card_clock()?;
        self.card_limits()?;
        self.card_ttp()?;
        self.metrics_listen()?;
        if let Some(t) = &self.ttp
            && t.postgres.is_some()
            && t.database.is_some()
        {
            return Err(ConfigError::Value {
                key: "ttp",
                detail: "set either database (SQLite) or postgres, not both".into(),
            });
        }
        self.remote_checked()?;
        if self.card.virtual_store.is_some() && self.card.reader.is_some() {
            return Err(ConfigError::Value {
                key: "card",
                detail: "set either `virtual` or `reader`, not both".into(),
            });
        }
        if self.card.reader.is_some() && !cfg!(feature = "pcsc") {
            return Err(ConfigError::Value {
                key: "card.reader",
                detail: "this build has no PC/SC support; rebuild with `--features pcsc`".into(),
            });
        }
        Ok(())
    }

    /// Checks `[remote]` and returns the static peer routes.
    pub fn remote_checked(&self) -> Result<Vec<PeerRoute>, ConfigError> {
        let r = &self.remote;
        if let Some(n) = &r.nats {
            n.servers()?;
            if n.user.is_some() != n.password.is_some() {
                return Err(ConfigError::Value {
                    key: "remote.nats",
                    detail: "user and password go together".into(),
                });
            }
            let ways = [
                n.user.is_some(),
                n.token.is_some(),
                n.creds.is_some(),
                n.nkey_seed_file.is_some(),
            ];
            if ways.into_iter().filter(|w| *w).count() > 1 {
                return Err(ConfigError::Value {
                    key: "remote.nats",
                    detail: "use one of user and password, token, creds or nkey_seed_file".into(),
                });
            }
            if n.tls_cert.is_some() != n.tls_key.is_some() {
                return Err(ConfigError::Value {
                    key: "remote.nats",
                    detail: "tls_cert and tls_key go together".into(),
                });
            }
            if n.queue.as_deref().is_some_and(|q| {
                q.is_empty() || q.contains(['*', '>']) || q.contains(char::is_whitespace)
            }) {
                return Err(ConfigError::Value {
                    key: "remote.nats.queue",
                    detail: "must be a non-empty name without wildcards or spaces".into(),
                });
            }
            if n.prefix.as_deref().is_some_and(|p| {
                p.split('.').any(str::is_empty)
                    || p.contains(['*', '>'])
                    || p.contains(char::is_whitespace)
            }) {
                return Err(ConfigError::Value {
                    key: "remote.nats.prefix",
                    detail: "must be a subject of non-empty tokens without wildcards or spaces"
                        .into(),
                });
            }
        }
        let active = r.listen.is_some() || !r.peers.is_empty();
        if active
            && !r.danger_plaintext.unwrap_or(false)
            && (r.ca.is_none() || r.cert.is_none() || r.key.is_none())
        {
            return Err(ConfigError::Value {
                key: "remote",
                detail: "links need ca, cert and key (make them with `tenet host certs`), or danger_plaintext = true".into(),
            });
        }
        if r.window == Some(0) {
            return Err(ConfigError::Value {
                key: "remote.window",
                detail: "must be at least 1".into(),
            });
        }
        for (key, v) in [("remote.rate", r.rate), ("remote.burst", r.burst)] {
            if let Some(x) = v
                && !(x.is_finite() && x > 0.0)
            {
                return Err(ConfigError::Value {
                    key,
                    detail: format!("{x} is not a positive number"),
                });
            }
        }
        if let Some(a) = r
            .peer_hosts
            .keys()
            .find(|a| !r.peers.iter().any(|p| &p.address == *a))
        {
            return Err(ConfigError::Value {
                key: "remote.peers.host",
                detail: format!("no [[remote.peers]] entry has address {a}"),
            });
        }
        r.peers
            .iter()
            .map(|p| {
                check_peer_address(&p.address)?;
                let domains = p
                    .domains
                    .iter()
                    .map(|d| {
                        d.parse::<Domain>().map_err(|e| ConfigError::Value {
                            key: "remote.peers.domains",
                            detail: e.to_string(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let host = r
                    .peer_hosts
                    .get(&p.address)
                    .map(|h| {
                        let bad = |detail: String| ConfigError::Value {
                            key: "remote.peers.host",
                            detail,
                        };
                        let id: EntityId = h.parse().map_err(|e| bad(format!("{e}")))?;
                        if !id.is_owner() {
                            return Err(bad(format!("{h} is not a host id (DOMAIN:0)")));
                        }
                        Ok(id)
                    })
                    .transpose()?;
                Ok(PeerRoute {
                    address: p.address.clone(),
                    domains,
                    host,
                })
            })
            .collect()
    }

    /// The address `/metrics` is served on, if `[metrics] listen` is set.
    pub fn metrics_listen(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        self.metrics
            .listen
            .as_deref()
            .map(|s| {
                s.parse().map_err(|_| ConfigError::Value {
                    key: "metrics.listen",
                    detail: format!(
                        "{s:?} is not an IP address and port like \"127.0.0.1:9464\" or \"[::1]:9464\""
                    ),
                })
            })
            .transpose()
    }

    /// The virtual card's limits.
    pub fn card_limits(&self) -> Result<tenet_card::CardLimits, ConfigError> {
        match self.card.max_message {
            None => Ok(tenet_card::CardLimits::default()),
            Some(n) if (tenet_proto::HEADER_LEN..=tenet_proto::MAX_MESSAGE_LEN).contains(&n) => {
                Ok(tenet_card::CardLimits { max_message: n })
            }
            Some(n) => Err(ConfigError::Value {
                key: "card.max_message",
                detail: format!("{n} is not between 34 and 65535"),
            }),
        }
    }

    /// The TTP `[card] ttp` names, if configured; the daemon checks it is
    /// the card's own (`VoucherApplet::check_ttp`).
    pub fn card_ttp(&self) -> Result<Option<tenet_proto::EntityId>, ConfigError> {
        if self.card.ttp.is_some() && self.card.virtual_store.is_none() {
            return Err(ConfigError::Value {
                key: "card.ttp",
                detail: "names the TTP of a virtual card (card.virtual); a card in a reader runs \
                         with the TTP it was personalized for (tenet card serve --ttp checks it)"
                    .into(),
            });
        }
        self.card
            .ttp
            .as_deref()
            .map(|s| {
                s.parse().map_err(|e| ConfigError::Value {
                    key: "card.ttp",
                    detail: format!("{e}"),
                })
            })
            .transpose()
    }

    /// How long to wait for a card at startup.
    pub fn card_wait(&self) -> Result<Duration, ConfigError> {
        match self.card.wait_secs {
            None => Ok(Duration::from_secs(10)),
            Some(t) if t.is_finite() && (0.0..=3600.0).contains(&t) => {
                Ok(Duration::from_secs_f64(t))
            }
            Some(t) => Err(ConfigError::Value {
                key: "card.wait_secs",
                detail: format!("{t} is not between 0 and 3600 seconds"),
            }),
        }
    }

    /// How often the daemon gives its card the time.
    pub fn card_clock(&self) -> Result<Duration, ConfigError> {
        match self.card.clock_secs {
            None => Ok(Duration::from_secs(10)),
            Some(t @ 1..=3600) => Ok(Duration::from_secs(t)),
            Some(t) => Err(ConfigError::Value {
                key: "card.clock_secs",
                detail: format!("{t} is not between 1 and 3600 seconds"),
            }),
        }
    }

    /// The app socket's permission bits.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        let Some(s) = &self.host.socket_mode else {
            return Ok(0o660);
        };
        let mode =
            u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| ConfigError::Value {
                key: "host.socket_mode",
                detail: format!("{s:?} is not an octal mode like \"0660\""),
            })?;
        if mode & !0o770 != 0 {
            return Err(ConfigError::Value {
                key: "host.socket_mode",
                detail: format!("{s} grants access beyond owner and group; use at most 0770"),
            });
        }
        Ok(mode)
    }

    /// The configured software domain, if any.
    pub fn domain(&self) -> Result<Option<Domain>, ConfigError> {
        self.host
            .domain
            .as_deref()
            .map(|s| {
                s.parse().map_err(|e| ConfigError::Value {
                    key: "host.domain",
                    detail: format!("{e}"),
                })
            })
            .transpose()
    }

    /// The dispatch table's bounds.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let s = &self.dispatch;
        let positive = |key, v: Option<usize>, default| match v {
            Some(0) => Err(ConfigError::Value {
                key,
                detail: "must be at least 1".into(),
            }),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let ttl = match s.ttl_secs {
            None => d.ttl,
            Some(t) if t.is_finite() && t > 0.0 && t <= 86_400.0 => Duration::from_secs_f64(t),
            Some(t) => {
                return Err(ConfigError::Value {
                    key: "dispatch.ttl_secs",
                    detail: format!("{t} is not between 0 and 86400 seconds"),
                });
            }
        };
        let limits = Limits {
            per_destination: positive(
                "dispatch.per_destination",
                s.per_destination,
                d.per_destination,
            )?,
            per_destination_bytes: positive(
                "dispatch.per_destination_bytes",
                s.per_destination_bytes,
                d.per_destination_bytes,
            )?,
            total: positive("dispatch.total", s.total, d.total)?,
            total_bytes: positive("dispatch.total_bytes", s.total_bytes, d.total_bytes)?,
            per_sender_share: match s.per_sender_share {
                None => d.per_sender_share,
                Some(f) => Share::from_fraction(f).ok_or_else(|| ConfigError::Value {
                    key: "dispatch.per_sender_share",
                    detail: format!("{f} is not more than 0 and at most 1"),
                })?,
            },
            ttl,
            tap_queue: positive("dispatch.tap_queue", s.tap_queue, d.tap_queue)?,
            handlers_per_endpoint: positive(
                "dispatch.handlers_per_app",
                s.handlers_per_app,
                d.handlers_per_endpoint,
            )?,
        };
        check_dispatch_budgets(&limits)?;
        Ok(limits)
    }

    /// The app socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.host
            .socket
            .clone()
            .unwrap_or_else(tenet_proto::socket::default_socket_path)
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.host.state_dir {
            return d.clone();
        }
        if crate::is_root() {
            return PathBuf::from("/var/lib/tenet");
        }
        if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("tenet");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        PathBuf::from(home).join(".local/state/tenet")
    }

    /// The rule guard made of `[[guard.rules]]`.
    pub fn rule_guard(&self) -> Result<RuleGuard, ConfigError> {
        Ok(RuleGuard::from_specs(&self.guard.rules)?)
    }

    /// Whether apps may tap.
    pub fn allow_taps(&self) -> bool {
        self.host.allow_taps.unwrap_or(true)
    }

    /// Ids one local user may acquire: (per second, at once).
    pub fn acquire_limit(&self) -> Result<(f64, u32), ConfigError> {
        let rate = self.host.acquire_rate.unwrap_or(16.0);
        if !(rate.is_finite() && rate > 0.0 && rate <= 1e6) {
            return Err(ConfigError::Value {
                key: "host.acquire_rate",
                detail: format!("{rate} is not a rate between 0 (excluded) and 1000000 per second"),
            });
        }
        let burst = self.host.acquire_burst.unwrap_or(256);
        if burst == 0 {
            return Err(ConfigError::Value {
                key: "host.acquire_burst",
                detail: "0 would let no app acquire an id".into(),
            });
        }
        Ok((rate, burst))
    }
}

/// `[dispatch]` byte bounds that fit together: a destination's within the
/// table's, and room for one message of the maximum size in a sender's
/// share of a destination (else that sender could never send one).
fn check_dispatch_budgets(l: &Limits) -> Result<(), ConfigError> {
    let err = |key, detail| Err(ConfigError::Value { key, detail });
    let max = tenet_proto::MAX_MESSAGE_LEN;
    if l.per_destination_bytes > l.total_bytes {
        return err(
            "dispatch.per_destination_bytes",
            format!(
                "{} exceeds dispatch.total_bytes ({})",
                l.per_destination_bytes, l.total_bytes
            ),
        );
    }
    let share = l.per_sender_share.of(l.per_destination_bytes);
    if share < max {
        return err(
            "dispatch.per_sender_share",
            format!(
                "a sender's share of dispatch.per_destination_bytes is {share} bytes, less than \
                 one message of the maximum size ({max} bytes)"
            ),
        );
    }
    Ok(())
}

impl From<RuleError> for ConfigError {
    fn from(e: RuleError) -> Self {
        ConfigError::Rule(e)
    }
}

/// Checks a peer's `address`: `HOST:PORT`, a host name or IP address and
/// a port from 1 to 65535 (an IPv6 address in brackets).
fn check_peer_address(a: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Value {
        key: "remote.peers.address",
        detail: format!(
            "{a:?}: {why}; write HOST:PORT, e.g. \"peer.example:7000\" or \"[::1]:7000\""
        ),
    };
    let (host, port) = a.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("the port is not a number from 1 to 65535")),
    }
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            return v6
                .parse::<std::net::Ipv6Addr>()
                .map(|_| ())
                .map_err(|_| bad("not an IPv6 address in the brackets"));
        }
        None => host,
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if name_ok || host.parse::<std::net::Ipv4Addr>().is_ok() {
        Ok(())
    } else {
        Err(bad("not a host name or an IP address"))
    }
}

/// The configuration's values, checked and typed once
/// (`Settings::try_from(&config)`): the daemon reads these and never the
/// text again. An error names the key.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The app socket.
    pub socket: PathBuf,
    /// Its permission bits.
    pub socket_mode: u32,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The software domain, if the config fixes it.
    pub domain: Option<Domain>,
    /// The dispatch table's bounds.
    pub limits: Limits,
    /// The guard rules (`[[guard.rules]]`), checked.
    pub rules: Vec<RuleSpec>,
    /// Whether apps may tap.
    pub allow_taps: bool,
    /// Ids one local user may acquire: rate per second and burst.
    pub acquire: (f64, u32),
    /// The card's limits.
    pub card_limits: tenet_card::CardLimits,
    /// How long to wait for a card in a reader at startup.
    pub card_wait: Duration,
    /// How often the card is given the time (`[card] clock_secs`).
    pub card_clock: Duration,
    /// The TTP `[card] ttp` names.
    pub card_ttp: Option<tenet_proto::EntityId>,
    /// The static peer routes (`[[remote.peers]]`).
    pub peers: Vec<PeerRoute>,
}

impl TryFrom<&Config> for Settings {
    type Error = ConfigError;

    fn try_from(c: &Config) -> Result<Self, ConfigError> {
        c.validate()?;
        Ok(Self {
            socket: c.socket_path(),
            socket_mode: c.socket_mode()?,
            state_dir: c.state_dir(),
            domain: c.domain()?,
            limits: c.limits()?,
            rules: c.guard.rules.clone(),
            allow_taps: c.allow_taps(),
            acquire: c.acquire_limit()?,
            card_limits: c.card_limits()?,
            card_wait: c.card_wait()?,
            card_clock: c.card_clock()?,
            card_ttp: c.card_ttp()?,
            peers: c.remote_checked()?,
        })
    }
}

impl Settings {
    /// The rule guard made of the rules (checked when the settings were).
    pub fn rule_guard(&self) -> Result<RuleGuard, ConfigError> {
        Ok(RuleGuard::from_specs(&self.rules)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn empty_config_is_valid_with_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.socket_mode().unwrap(), 0o660);
        assert_eq!(c.limits().unwrap(), Limits::default());
        assert!(c.allow_taps());
    }

    #[test]
    fn shipped_example_config_parses() {
        let text = include_str!("../../../docs/host.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.rule_guard().unwrap().len(), 2);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[host]\nsocket_mode = \"0666\"", "host.socket_mode"),
            ("[host]\nsocket_mode = \"rw\"", "host.socket_mode"),
            ("[host]\ndomain = \"12\"", "host.domain"),
            ("[dispatch]\ntotal = 0", "dispatch.total"),
            ("[dispatch]\nttl_secs = -1.0", "dispatch.ttl_secs"),
            (
                "[dispatch]\nper_destination_bytes = 9000000\ntotal_bytes = 8000000",
                "dispatch.per_destination_bytes",
            ),
            ("[dispatch]\ntotal_bytes = 0", "dispatch.total_bytes"),
            (
                "[dispatch]\nper_sender_share = 0.0",
                "dispatch.per_sender_share",
            ),
            (
                "[dispatch]\nper_sender_share = 1.5",
                "dispatch.per_sender_share",
            ),
            (
                "[dispatch]\nper_destination_bytes = 100000",
                "dispatch.per_sender_share",
            ),
            ("[card]\nvirtual = \"a\"\nreader = \"b\"", "card"),
            ("[card]\nwait_secs = -3.0", "card.wait_secs"),
            ("[card]\nclock_secs = 0", "card.clock_secs"),
            ("[card]\nclock_secs = 3601", "card.clock_secs"),
            ("[card]\nmax_message = 70000", "card.max_message"),
            (
                "[card]\nreader = \"b\"\nttp = \"777777777777777777777777:0\"",
                "card.ttp",
            ),
            ("[remote]\nlisten = \"127.0.0.1:1\"", "remote"),
            ("[metrics]\nlisten = \"localhost:9464\"", "metrics.listen"),
            ("[metrics]\nlisten = \"127.0.0.1\"", "metrics.listen"),
            ("[metrics]\nlisten = \"127.0.0.1:99999\"", "metrics.listen"),
            (
                "[remote]\ndanger_plaintext = true\nwindow = 0",
                "remote.window",
            ),
            (
                "[remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = \"x:1\"\ndomains = [\"zz\"]",
                "remote.peers.domains",
            ),
            (
                "[remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = \"x:1\"\nhost = \"zz:0\"",
                "remote.peers.host",
            ),
            (
                "[remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = \"x:1\"\nhost = \"b2b2b2b2b2b2b2b2b2b2b2b2:7\"",
                "remote.peers.host",
            ),
        ];
        for (text, key) in cases {
            match parse(text) {
                Err(ConfigError::Value { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected a value error, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_peer_names_the_host_it_must_reach() {
        let c = parse(
            "[remote]\ndanger_plaintext = true\n\
             [[remote.peers]]\naddress = \"x:1\"\nhost = \"b2b2b2b2b2b2b2b2b2b2b2b2:0\"\n\
             [[remote.peers]]\naddress = \"y:1\"\ndomains = [\"c3c3c3c3c3c3c3c3c3c3c3c3\"]",
        )
        .unwrap();
        let routes = c.remote_checked().unwrap();
        assert_eq!(
            routes[0].host,
            Some(Domain::new([0xb2; 12]).owner()),
            "{routes:?}"
        );
        assert_eq!(
            (routes[1].host, routes[1].domains.as_slice()),
            (None, &[Domain::new([0xc3; 12])][..])
        );
        // Two entries of one address with a host each, and a host of no
        // entry (set in code), are errors.
        assert!(matches!(
            parse(
                "[remote]\ndanger_plaintext = true\n\
                 [[remote.peers]]\naddress = \"x:1\"\nhost = \"b2b2b2b2b2b2b2b2b2b2b2b2:0\"\n\
                 [[remote.peers]]\naddress = \"x:1\"\nhost = \"c3c3c3c3c3c3c3c3c3c3c3c3:0\""
            ),
            Err(ConfigError::Parse { .. })
        ));
        let mut c = parse("[remote]\ndanger_plaintext = true").unwrap();
        c.remote
            .peer_hosts
            .insert("z:1".into(), "b2b2b2b2b2b2b2b2b2b2b2b2:0".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Value {
                key: "remote.peers.host",
                ..
            })
        ));
    }

    #[test]
    fn nats_credentials_and_tls_are_checked() {
        let ok = parse(
            "[remote.nats]\nurl = \"tls://n:4222\"\nnkey_seed_file = \"host.nk\"\n\
             tls_ca = \"ca.pem\"\ntls_cert = \"h.pem\"\ntls_key = \"h.key\"\n\
             tls_required = true\nqueue = \"ttp\"",
        )
        .unwrap();
        let n = ok.remote.nats.unwrap();
        assert_eq!(
            (
                n.nkey_seed_file.unwrap(),
                n.tls_required,
                n.queue.as_deref()
            ),
            (PathBuf::from("host.nk"), Some(true), Some("ttp"))
        );
        let url = "[remote.nats]\nurl = \"nats://n\"\n";
        let cases = [
            (
                "user = \"u\"\npassword = \"p\"\ncreds = \"c\"",
                "remote.nats",
            ),
            ("token = \"t\"\nnkey_seed_file = \"k\"", "remote.nats"),
            ("creds = \"c\"\nnkey_seed_file = \"k\"", "remote.nats"),
            ("tls_cert = \"h.pem\"", "remote.nats"),
            ("tls_key = \"h.key\"", "remote.nats"),
            ("queue = \"\"", "remote.nats.queue"),
            ("queue = \"a b\"", "remote.nats.queue"),
            ("prefix = \"a..b\"", "remote.nats.prefix"),
            ("prefix = \"a.*\"", "remote.nats.prefix"),
        ];
        for (text, key) in cases {
            match parse(&format!("{url}{text}")) {
                Err(ConfigError::Value { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected a value error, got {other:?}"),
            }
        }
        // A cluster: several servers, comma-separated, each checked.
        let n = parse(
            "[remote.nats]\nurl = \"nats://a:4222, nats://b:4223,tls://c:4224\"\ntoken = \"t\"",
        )
        .unwrap()
        .remote
        .nats
        .unwrap();
        assert_eq!(
            n.servers().unwrap(),
            ["nats://a:4222", "nats://b:4223", "tls://c:4224"]
        );
        let cases = [
            "",
            " ",
            "nats://a:4222,",
            "nats://a:4222,,nats://b:4222",
            "http://a:4222",
            "nats://a:99999",
            "nats://a:4222,nats://a:4222",
        ];
        for bad in cases {
            match parse(&format!("[remote.nats]\nurl = {bad:?}")) {
                Err(ConfigError::Value { key, detail }) => {
                    assert_eq!(key, "remote.nats.url", "{bad:?}: {detail}")
                }
                other => panic!("{bad:?}: expected a value error, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_and_bad_rules_are_errors() {
        assert!(matches!(
            parse("[host]\nsokcet = \"/x\""),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(parse("[hots]"), Err(ConfigError::Parse { .. })));
        assert!(matches!(
            parse("[[guard.rules]]\naction = \"explode\""),
            Err(ConfigError::Rule(_))
        ));
    }

    #[test]
    fn settings_are_the_checked_typed_values_and_a_bad_one_names_its_key() {
        let ok = parse(
            "[host]\nsocket_mode = \"0600\"\ndomain = \"a1a1a1a1a1a1a1a1a1a1a1a1\"\n[dispatch]\nper_destination = 7",
        )
        .unwrap();
        let s = Settings::try_from(&ok).unwrap();
        assert_eq!(s.socket_mode, 0o600);
        assert_eq!(s.domain, Some(Domain::new([0xa1; 12])));
        assert_eq!(s.limits.per_destination, 7);
        let mut bad = ok.clone();
        bad.host.socket_mode = Some("0999".into());
        assert!(matches!(
            Settings::try_from(&bad),
            Err(ConfigError::Value {
                key: "host.socket_mode",
                ..
            })
        ));
    }

    #[test]
    fn a_peer_address_is_host_and_port_or_a_clear_error() {
        for ok in [
            "peer.example:7000",
            "127.0.0.1:9",
            "[::1]:7000",
            "localhost:65535",
        ] {
            assert_eq!(
                check_peer_address(ok).map_err(|e| e.to_string()),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "nonsense",
            "127.0.0.1:0",
            "host:99999",
            "::1:7000",
            ":7000",
            "a..b:1",
            "[x]:1",
        ] {
            let e = check_peer_address(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::Value {
                        key: "remote.peers.address",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
        let cfg = "[remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = \"nonsense\"";
        assert!(matches!(
            parse(cfg),
            Err(ConfigError::Value {
                key: "remote.peers.address",
                ..
            })
        ));
    }
}
