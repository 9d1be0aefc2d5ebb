//! Hosts, their cards and links, started in an order that lets each dial
//! the address its peer reports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tenet_card::FileStore;
use tenet_client::Capability;
use tenet_dispatch::RuleSpec;
use tenet_host::config::{PeerSection, TtpSection};
use tenet_host::{Config, HostHandle};
use tenet_proto::{Domain, EntityId};

use crate::{Ca, Error, PIN, TtpIdentity, WAIT};

/// A change to a host's config, applied last.
type Tweak = Box<dyn FnOnce(&mut Config) + Send>;

/// Hosts to start together, with the CA that certifies them.
pub struct Topology {
    dir: PathBuf,
    ca: Ca,
    hosts: Vec<HostSpec>,
}

/// One host of a [`Topology`].
pub struct HostSpec {
    name: String,
    domain: Domain,
    card: Option<CardSpec>,
    ttp: Option<(TtpIdentity, PathBuf)>,
    peers: Vec<String>,
    rules: Vec<RuleSpec>,
    tweaks: Vec<Tweak>,
}

/// A host's virtual card.
#[derive(Debug, Clone)]
pub struct CardSpec {
    domain: Domain,
    pin: Vec<u8>,
    ttp: Option<TtpIdentity>,
    dir: Option<PathBuf>,
    capacity: usize,
}

/// A started [`Topology`]: its hosts, by name, in the order they started.
pub struct Running {
    hosts: Vec<(String, HostHandle)>,
}

impl Topology {
    /// Hosts in `dir` (sockets, state, card stores, the TTP's database)
    /// certified by `ca`. `dir` must outlive the hosts.
    pub fn new(dir: impl Into<PathBuf>, ca: Ca) -> Self {
        Self {
            dir: dir.into(),
            ca,
            hosts: Vec::new(),
        }
    }

    /// Adds a host.
    pub fn host(mut self, host: HostSpec) -> Self {
        self.hosts.push(host);
        self
    }

    /// Starts every host, each after the hosts it dials, and returns when
    /// each link carries echoes both ways to the host entities and cards
    /// at its ends ([`wait_links`]). On an error, the hosts started so far
    /// are shut down.
    pub async fn start(self) -> Result<Running, Error> {
        let order = start_order(&self.hosts)?;
        let mut specs: Vec<Option<HostSpec>> = self.hosts.into_iter().map(Some).collect();
        let mut running = Running { hosts: Vec::new() };
        let mut links = Vec::new();
        for i in order {
            let spec = specs[i].take().expect("each host started once");
            let started = match start_host(&self.dir, &self.ca, &running, spec).await {
                Ok(s) => s,
                Err(e) => {
                    running.shutdown().await;
                    return Err(e);
                }
            };
            links.extend(
                started
                    .1
                    .into_iter()
                    .map(|peer| (started.0.0.clone(), peer)),
            );
            running.hosts.push(started.0);
        }
        for (from, to) in &links {
            let (a, b) = (running.host(from), running.host(to));
            let waited = match wait_links(a, &ends(b)).await {
                Ok(()) => wait_links(b, &ends(a)).await,
                Err(e) => Err(e),
            };
            if let Err(e) = waited {
                running.shutdown().await;
                return Err(e);
            }
        }
        Ok(running)
    }
}

/// Indexes of `hosts` in an order in which each comes after every host it
/// dials, otherwise in the order given.
fn start_order(hosts: &[HostSpec]) -> Result<Vec<usize>, Error> {
    for (i, h) in hosts.iter().enumerate() {
        if hosts[..i].iter().any(|o| o.name == h.name) {
            return Err(Error::DuplicateHost(h.name.clone()));
        }
        if let Some(p) = h
            .peers
            .iter()
            .find(|p| !hosts.iter().any(|o| &o.name == *p))
        {
            return Err(Error::UnknownPeer {
                host: h.name.clone(),
                peer: p.clone(),
            });
        }
    }
    let mut order: Vec<usize> = Vec::with_capacity(hosts.len());
    while order.len() < hosts.len() {
        let next = (0..hosts.len()).find(|&i| {
            !order.contains(&i)
                && hosts[i]
                    .peers
                    .iter()
                    .all(|p| order.iter().any(|&j| hosts[j].name == *p))
        });
        match next {
            Some(i) => order.push(i),
            None => {
                return Err(Error::Circle(
                    (0..hosts.len())
                        .filter(|i| !order.contains(i))
                        .map(|i| hosts[i].name.clone())
                        .collect(),
                ));
            }
        }
    }
    Ok(order)
}

/// Starts one host, its peers already running; returns it with the names
/// of the peers it dials.
async fn start_host(
    dir: &Path,
    ca: &Ca,
    running: &Running,
    spec: HostSpec,
) -> Result<((String, HostHandle), Vec<String>), Error> {
    let HostSpec {
        name,
        domain,
        card,
        ttp,
        peers,
        rules,
        tweaks,
    } = spec;
    let card_domains: Vec<Domain> = card.iter().map(|c| c.domain).collect();
    let mut cfg = host_config(dir, ca, &name, domain, &card_domains)?;
    if let Some(c) = card {
        let store = c.dir.as_deref().unwrap_or(dir).join(format!("{name}.card"));
        ca.card(
            FileStore::create(&store, c.capacity)?,
            c.domain,
            &c.pin,
            c.ttp.as_ref(),
        )?;
        cfg.card.virtual_store = Some(store);
    }
    if let Some((identity, database)) = ttp {
        cfg.ttp = Some(TtpSection {
            key: identity.files.key,
            cert: identity.files.cert,
            ca: identity.files.ca,
            database: Some(database),
            postgres: None,
        });
    }
    for p in &peers {
        let addr = running
            .remote_addr(p)
            .ok_or_else(|| Error::NotListening(p.clone()))?;
        cfg.remote.peers.push(PeerSection {
            address: addr.to_string(),
            domains: Vec::new(),
        });
    }
    cfg.guard.rules.extend(rules);
    for t in tweaks {
        t(&mut cfg);
    }
    let handle = tenet_voucher_app::start(&cfg)
        .await
        .map_err(|source| Error::Host {
            name: name.clone(),
            source,
        })?;
    Ok(((name, handle), peers))
}

/// The entities at a host's end of a link: the host's own and its card's.
fn ends(h: &HostHandle) -> Vec<EntityId> {
    std::iter::once(h.host_id()).chain(h.card_id()).collect()
}

impl HostSpec {
    /// A host named `name` (its files, its certificate's subject) with the
    /// software domain `domain`.
    pub fn new(name: &str, domain: Domain) -> Self {
        Self {
            name: name.to_owned(),
            domain,
            card: None,
            ttp: None,
            peers: Vec::new(),
            rules: Vec::new(),
            tweaks: Vec::new(),
        }
    }

    /// Gives the host a virtual card, in-process.
    pub fn card(mut self, card: CardSpec) -> Self {
        self.card = Some(card);
        self
    }

    /// Makes the host's own entity the TTP `ttp` (whose id must be the
    /// host's `DOMAIN:0`), with its decisions in the SQLite file
    /// `database`.
    pub fn ttp(mut self, ttp: &TtpIdentity, database: impl Into<PathBuf>) -> Self {
        self.ttp = Some((ttp.clone(), database.into()));
        self
    }

    /// The host dials the host named `name` (started first).
    pub fn peer(mut self, name: &str) -> Self {
        self.peers.push(name.to_owned());
        self
    }

    /// Adds a guard rule after those of the config.
    pub fn rule(mut self, rule: RuleSpec) -> Self {
        self.rules.push(rule);
        self
    }

    /// Changes the host's config after the kit has made it, just before
    /// the host starts.
    pub fn config(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweaks.push(Box::new(f));
        self
    }
}

impl CardSpec {
    /// A card in domain `domain`, PIN [`PIN`], certified by the topology's
    /// CA, its store (32 KiB) in the topology's directory, without a TTP.
    pub fn new(domain: Domain) -> Self {
        Self {
            domain,
            pin: PIN.to_vec(),
            ttp: None,
            dir: None,
            capacity: 32 * 1024,
        }
    }

    /// The card's PIN.
    pub fn pin(mut self, pin: &[u8]) -> Self {
        self.pin = pin.to_vec();
        self
    }

    /// Provisions the voucher applet with the TTP `ttp` (its id and pinned
    /// certificate).
    pub fn ttp(mut self, ttp: &TtpIdentity) -> Self {
        self.ttp = Some(ttp.clone());
        self
    }

    /// Puts the store file (`NAME.card`) in `dir` instead (tmpfs, a
    /// particular disk).
    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The store's size in bytes.
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }
}

impl Running {
    /// The host named `name`.
    ///
    /// # Panics
    ///
    /// If the topology has no such host.
    pub fn host(&self, name: &str) -> &HostHandle {
        match self.hosts.iter().find(|(n, _)| n == name) {
            Some((_, h)) => h,
            None => panic!("the topology has no host {name:?}"),
        }
    }

    /// The address the host named `name` accepts TLS links on, if it is in
    /// the topology and listens.
    pub fn remote_addr(&self, name: &str) -> Option<SocketAddr> {
        self.hosts
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, h)| h.remote_addr())
    }

    /// Each host's name and handle, in the order they started.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, &HostHandle)> {
        self.hosts.iter().map(|(n, h)| (n.as_str(), h))
    }

    /// Shuts every host down, the last started first.
    pub async fn shutdown(self) {
        for (_, h) in self.hosts.into_iter().rev() {
            h.shutdown().await;
        }
    }
}

/// The config of host `name` in `dir` (its app socket `NAME.sock`, its
/// state in `NAME-state`), software domain `sw`, linked over TLS with a
/// certificate from `ca` for `sw` and the `more` domains it serves (its
/// card's), listening on `127.0.0.1:0`: the port is in
/// [`HostHandle::remote_addr`] once it started. No peers, no card.
pub fn host_config(
    dir: &Path,
    ca: &Ca,
    name: &str,
    sw: Domain,
    more: &[Domain],
) -> Result<Config, Error> {
    let mut domains = vec![sw];
    domains.extend_from_slice(more);
    let files = tenet_pki::issue_host(ca.dir(), name, &domains)?;
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.join(format!("{name}.sock")));
    cfg.host.state_dir = Some(dir.join(format!("{name}-state")));
    cfg.host.domain = Some(sw.to_string());
    cfg.remote.listen = Some("127.0.0.1:0".into());
    (cfg.remote.ca, cfg.remote.cert, cfg.remote.key) =
        (Some(files.ca), Some(files.cert), Some(files.key));
    Ok(cfg)
}

/// Waits until an app on `from` gets an echo back from each of `to` (links
/// come up in the background), for at most [`WAIT`] each.
pub async fn wait_links(from: &HostHandle, to: &[EntityId]) -> Result<(), Error> {
    let mut probe = Capability::acquire(from.socket_path()).await?;
    for dst in to {
        let deadline = tokio::time::Instant::now() + WAIT;
        while probe
            .echo(*dst, b"", Duration::from_millis(500))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::NoLink {
                    from: from.host_id(),
                    to: *dst,
                });
            }
            // An undeliverable echo fails at once: do not spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, peers: &[&str]) -> HostSpec {
        peers
            .iter()
            .fold(HostSpec::new(name, Domain::new([1; 12])), |h, p| h.peer(p))
    }

    #[test]
    fn hosts_start_after_the_hosts_they_dial() {
        let hosts = [
            spec("bob", &["alice", "ttp"]),
            spec("alice", &["ttp"]),
            spec("ttp", &[]),
            spec("carol", &[]),
        ];
        assert_eq!(start_order(&hosts).unwrap(), [2, 1, 0, 3]);
    }

    #[test]
    fn a_circle_an_unknown_peer_and_a_name_twice_are_refused() {
        let circle = [spec("a", &["b"]), spec("b", &["a"]), spec("c", &[])];
        assert!(matches!(start_order(&circle), Err(Error::Circle(n)) if n == ["a", "b"]));
        let unknown = [spec("a", &["z"])];
        assert!(matches!(
            start_order(&unknown),
            Err(Error::UnknownPeer { host, peer }) if host == "a" && peer == "z"
        ));
        let twice = [spec("a", &[]), spec("a", &[])];
        assert!(matches!(start_order(&twice), Err(Error::DuplicateHost(n)) if n == "a"));
    }
}
