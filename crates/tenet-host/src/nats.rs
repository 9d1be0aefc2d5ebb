//! The NATS transport: hosts reach each other through a NATS server or
//! cluster, on subjects derived from their domains, with no routing table.
//!
//! Subjects (`PREFIX` is `tenet` unless configured):
//!
//! - `PREFIX.d.DST.s.SRC`: an eTP message from domain `SRC` to domain
//!   `DST` (24 hex digits each). A host publishes only with `SRC` one of
//!   its own domains (its software domain and its card's), and subscribes
//!   to `PREFIX.d.D.s.*` for each of its domains `D` (in a queue group when
//!   `queue` is set, so replicas of one domain, such as TTP replicas, share
//!   its traffic).
//! - `PREFIX.i.HOST`: the prefix of this host's request inboxes (`HOST` is
//!   its software domain); answers come back below it.
//!
//! Origin is bound to the subject. The NATS server's per-user permissions
//! (`docs/nats-server.example.conf`) let a host publish only on
//! `PREFIX.d.*.s.OWN` for its own domains (and answer requests it
//! received), and subscribe only to `PREFIX.d.OWN.>` and `PREFIX.i.HOST.>`:
//! a host can neither send on another's subjects nor read them. The
//! receiving host checks the rest, through the same remote-ingress path as
//! a TLS link ([`crate::remote`]): the message's dst must be in the
//! subject's destination domain, its src in the subject's sender domain
//! and not in one of this host's domains, and the guard chain must pass
//! it. A refused message is dropped, logged and counted in [`NatsStats`].
//!
//! A message for a domain that is neither local nor routed over a TLS link
//! goes out through NATS (the dispatch table's default route) as a request
//! carrying the eTP message as payload. The receiving host stores it and
//! answers with an empty reply, or with the reason it refused; it answers
//! only into an inbox (`PREFIX.i.`), so a request cannot make it publish
//! on a data subject. No responder means no host serves that domain: the
//! sender gets `undeliverable` (no route). NATS carries only this host's
//! own traffic: a message from another host's domain (one that came over a
//! TLS link) is not relayed; its sender gets `undeliverable` (no route).
//!
//! NATS core delivers at most once: a message in flight when the server or
//! a daemon dies is lost, and its sender gets `undeliverable` only when the
//! request times out. A publish the server's permissions refuse is logged
//! (the server says so) and its request times out the same way.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tenet_dispatch::{Budget, EndpointId, Usage};
use tenet_proto::notice::UndeliverableReason;
use tenet_proto::{Codec, DecodeError, Domain, EntityId, Message};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::{ConfigError, NatsSection};
use crate::remote::RemoteSetupError;
use crate::server::{HostError, Shared, lock};
use tenet_dispatch::IngressRefusal;

/// How long a sender waits for the receiving host's answer.
const ANSWER: Duration = Duration::from_secs(5);
/// Requests in flight at once.
const IN_FLIGHT: usize = 1024;
/// The subject prefix unless `prefix` is set.
const DEFAULT_PREFIX: &str = "tenet";

/// Counters of the NATS link, apart from the TLS links' ([`crate::remote::RemoteStats`]).
#[derive(Debug, Default)]
pub struct NatsStats {
    /// Messages whose src is not in the subject's sender domain, or is in
    /// one of this host's own domains.
    pub forged_dropped: AtomicU64,
    /// Messages dropped by the guard chain on remote ingress.
    pub guard_dropped: AtomicU64,
    /// Payloads that are no eTP message, and messages whose dst is not in
    /// the subject's destination domain.
    pub malformed: AtomicU64,
    /// Messages received and stored.
    pub received: AtomicU64,
    /// Messages routed to NATS with a src of another host, not sent.
    pub not_relayed: AtomicU64,
}

/// A snapshot of [`NatsStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatsCounters {
    /// See [`NatsStats::forged_dropped`].
    pub forged_dropped: u64,
    /// See [`NatsStats::guard_dropped`].
    pub guard_dropped: u64,
    /// See [`NatsStats::malformed`].
    pub malformed: u64,
    /// See [`NatsStats::received`].
    pub received: u64,
    /// See [`NatsStats::not_relayed`].
    pub not_relayed: u64,
}

impl NatsStats {
    /// The counters now.
    pub fn snapshot(&self) -> NatsCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NatsCounters {
            forged_dropped: g(&self.forged_dropped),
            guard_dropped: g(&self.guard_dropped),
            malformed: g(&self.malformed),
            received: g(&self.received),
            not_relayed: g(&self.not_relayed),
        }
    }
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The NATS link of this host.
pub(crate) struct Nats {
    pub(crate) ep: EndpointId,
    pub(crate) wake: Notify,
    pub(crate) stats: NatsStats,
    /// The connection, once up: drained when the host stops.
    pub(crate) client: std::sync::Mutex<Option<async_nats::Client>>,
}

/// The subjects under one prefix.
#[derive(Debug, Clone)]
struct Subjects {
    prefix: String,
}

impl Subjects {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The subject of a message from domain `src` to domain `dst`.
    fn data(&self, dst: Domain, src: Domain) -> String {
        format!("{}.d.{dst}.s.{src}", self.prefix)
    }

    /// What a host serving `d` subscribes to.
    fn inbound(&self, d: Domain) -> String {
        format!("{}.d.{d}.s.*", self.prefix)
    }

    /// The inbox prefix of the host whose software domain is `host`.
    fn inbox(&self, host: Domain) -> String {
        format!("{}.i.{host}", self.prefix)
    }

    /// `(dst, src)` domains of a data subject.
    fn parse(&self, subject: &str) -> Option<(Domain, Domain)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".d.")?;
        let (dst, src) = rest.split_once(".s.")?;
        Some((dst.parse().ok()?, src.parse().ok()?))
    }

    /// Whether `reply` is below some host's inbox prefix.
    fn is_inbox(&self, reply: &str) -> bool {
        reply
            .strip_prefix(&self.prefix)
            .is_some_and(|r| r.starts_with(".i."))
    }
}

fn config_error(key: &'static str, detail: String) -> HostError {
    HostError::Config(ConfigError::Value { key, detail })
}

/// The certificates in a PEM file, at least one.
fn check_certificates(key: &'static str, path: &Path) -> Result<(), HostError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect())
        .map_err(|e| config_error(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(
            key,
            format!("{}: no certificate in the file", path.display()),
        ));
    }
    Ok(())
}

/// The connect options `[remote.nats]` asks for, with its files checked now
/// (the client reads them only when it connects, and retries forever).
async fn connect_options(
    cfg: &NatsSection,
    inbox: String,
) -> Result<async_nats::ConnectOptions, HostError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("tenet host")
        .retry_on_initial_connect()
        .custom_inbox_prefix(inbox)
        .event_callback(|event| async move {
            match event {
                // Permission violations and refused credentials.
                async_nats::Event::ServerError(e) => warn!(error = %e, "NATS server error"),
                async_nats::Event::Disconnected => warn!("NATS disconnected; reconnecting"),
                async_nats::Event::Connected => info!("NATS connected"),
                other => debug!(event = %other, "NATS"),
            }
        });
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    if let Some(path) = &cfg.creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| config_error("remote.nats.creds", format!("{}: {e}", path.display())))?;
    }
    if let Some(path) = &cfg.nkey_seed_file {
        let key = "remote.nats.nkey_seed_file";
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error(key, format!("{}: {e}", path.display())))?;
        let seed = text.trim();
        let pair = nkeys::KeyPair::from_seed(seed)
            .ok()
            .filter(|p| p.key_pair_type() == nkeys::KeyPairType::User)
            .ok_or_else(|| {
                config_error(
                    key,
                    format!("{} does not hold a user NKey seed (SU...)", path.display()),
                )
            })?;
        info!(nkey = %pair.public_key(), "NATS user NKey");
        opts = opts.nkey(seed.to_owned());
    }
    if let Some(ca) = &cfg.tls_ca {
        check_certificates("remote.nats.tls_ca", ca)?;
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        check_certificates("remote.nats.tls_cert", cert)?;
        PrivateKeyDer::from_pem_file(key)
            .map_err(|e| config_error("remote.nats.tls_key", format!("{}: {e}", key.display())))?;
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if cfg.tls_required.unwrap_or(false) {
        opts = opts.require_tls(true);
    }
    Ok(opts)
}

/// Connects, subscribes to this host's domains (`domains[0]` is its
/// software domain) and starts the sender.
pub(crate) async fn start(
    shared: Arc<Shared>,
    cfg: &NatsSection,
    domains: Vec<Domain>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, HostError> {
    let (Some(nats), Some(&host)) = (shared.nats.clone(), domains.first()) else {
        return Ok(Vec::new());
    };
    let subjects = Subjects::new(cfg.prefix.as_deref().unwrap_or(DEFAULT_PREFIX));
    // The client buffers each subscription's messages until `receive` stores
    // them; as many as fill `dispatch.per_destination_bytes` with messages
    // of the maximum size (beyond that it drops them as a slow consumer).
    let per_destination_bytes = lock(&shared.table).limits().per_destination_bytes;
    let opts = connect_options(cfg, subjects.inbox(host))
        .await?
        .subscription_capacity((per_destination_bytes / tenet_proto::MAX_MESSAGE_LEN).max(1));
    let urls = cfg.servers()?;
    let client = tokio::time::timeout(Duration::from_secs(10), opts.connect(urls.clone()))
        .await
        .map_err(|_| HostError::Remote(RemoteSetupError::NatsUnreachable(cfg.url.clone())))?
        .map_err(|error| {
            HostError::Remote(RemoteSetupError::NatsConnect {
                url: cfg.url.clone(),
                error,
            })
        })?;
    let mut tasks = Vec::new();
    for d in &domains {
        let subject = subjects.inbound(*d);
        let sub = match &cfg.queue {
            Some(q) => client.queue_subscribe(subject, q.clone()).await,
            None => client.subscribe(subject).await,
        }
        .map_err(|e| HostError::Remote(RemoteSetupError::NatsSubscribe(e)))?;
        tasks.push(tokio::spawn(receive(
            shared.clone(),
            nats.clone(),
            client.clone(),
            subjects.clone(),
            sub,
        )));
    }
    client
        .flush()
        .await
        .map_err(|e| HostError::Remote(RemoteSetupError::NatsFlush(e)))?;
    info!(url = %cfg.url, subjects = ?domains.iter().map(|d| subjects.inbound(*d)).collect::<Vec<_>>(), queue = ?cfg.queue, "NATS link up");
    *lock(&nats.client) = Some(client.clone());
    tasks.push(tokio::spawn(send_loop(
        shared, nats, client, subjects, domains,
    )));
    Ok(tasks)
}

async fn receive(
    shared: Arc<Shared>,
    nats: Arc<Nats>,
    client: async_nats::Client,
    subjects: Subjects,
    mut sub: async_nats::Subscriber,
) {
    while let Some(msg) = sub.next().await {
        let answer = match ingress(&shared, &nats.stats, &subjects, &msg.subject, &msg.payload) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        };
        match msg.reply {
            Some(reply) if subjects.is_inbox(&reply) => {
                let _ = client.publish(reply, answer.into_bytes().into()).await;
            }
            Some(reply) => {
                warn!(subject = %msg.subject, %reply, "answer wanted outside the inboxes; not sent");
            }
            None => {}
        }
    }
}

/// Why a message from NATS was not stored: the answer its sender gets.
#[derive(Debug, thiserror::Error)]
enum NatsRefusal {
    /// The subject is not a data subject under this host's prefix.
    #[error("not a PREFIX.d.DOMAIN.s.DOMAIN subject")]
    Subject,
    /// The payload is no eTP message.
    #[error("malformed: {0}")]
    Malformed(DecodeError),
    /// The message's dst is not in the subject's destination domain.
    #[error("dst {dst} is not in the subject's domain {subject}")]
    OtherDomain {
        /// The message's dst.
        dst: EntityId,
        /// The subject's destination domain.
        subject: Domain,
    },
    /// Remote ingress refused it.
    #[error(transparent)]
    Ingress(IngressRefusal),
}

/// One message from NATS through remote ingress, its origin the subject's
/// sender domain; the refusal its sender gets as the answer.
fn ingress(
    shared: &Shared,
    stats: &NatsStats,
    subjects: &Subjects,
    subject: &str,
    payload: &[u8],
) -> Result<(), NatsRefusal> {
    let refuse = |counter: &AtomicU64, why: NatsRefusal| {
        count(counter);
        warn!(%subject, reason = %why, "message from NATS refused");
        why
    };
    let Some((to, from)) = subjects.parse(subject) else {
        return Err(refuse(&stats.malformed, NatsRefusal::Subject));
    };
    let m = Message::decode(payload)
        .map_err(|e| refuse(&stats.malformed, NatsRefusal::Malformed(e)))?;
    if m.dst().domain() != to {
        return Err(refuse(
            &stats.malformed,
            NatsRefusal::OtherDomain {
                dst: m.dst(),
                subject: to,
            },
        ));
    }
    let result = shared.with_core(|t| t.remote_ingress(&[from], m, Instant::now()));
    match result {
        Ok(()) => {
            count(&stats.received);
            Ok(())
        }
        Err(
            e @ (IngressRefusal::Forged(_)
            | IngressRefusal::OwnDomain(_)
            | IngressRefusal::ForgedNotice { .. }),
        ) => Err(refuse(&stats.forged_dropped, NatsRefusal::Ingress(e))),
        Err(e @ IngressRefusal::Guard(_)) => {
            Err(refuse(&stats.guard_dropped, NatsRefusal::Ingress(e)))
        }
        Err(e @ IngressRefusal::NotStored(_)) => {
            debug!(%subject, error = %e, "message from NATS not stored");
            Err(NatsRefusal::Ingress(e))
        }
    }
}

async fn send_loop(
    shared: Arc<Shared>,
    nats: Arc<Nats>,
    client: async_nats::Client,
    subjects: Subjects,
    domains: Vec<Domain>,
) {
    // Requests in flight hold their messages: at most IN_FLIGHT of them and
    // `dispatch.per_destination_bytes`, like a TLS link's window.
    let window = Budget::new(
        IN_FLIGHT,
        lock(&shared.table).limits().per_destination_bytes,
    );
    let in_flight = Arc::new(std::sync::Mutex::new(Usage::default()));
    loop {
        loop {
            if !window.has_room(*lock(&in_flight)) {
                break;
            }
            let Some(d) = lock(&shared.table).take(nats.ep) else {
                break;
            };
            let m = d.message;
            let src = m.src().domain();
            if !domains.contains(&src) {
                // The server would refuse the publish: NATS carries only this
                // host's own domains.
                count(&nats.stats.not_relayed);
                warn!(src = %m.src(), dst = %m.dst(), "message of another host not relayed through NATS");
                bounce(&shared, &m, UndeliverableReason::NO_ROUTE);
                continue;
            }
            let permit = InFlight::hold(&in_flight, &nats, &m);
            let (shared, client) = (shared.clone(), client.clone());
            let subject = subjects.data(m.dst().domain(), src);
            tokio::spawn(async move {
                let _permit = permit;
                let payload = m.to_bytes();
                let r =
                    tokio::time::timeout(ANSWER, client.request(subject.clone(), payload.into()))
                        .await;
                let reason = match r {
                    Ok(Ok(answer)) if answer.payload.is_empty() => return,
                    Ok(Ok(answer)) => {
                        debug!(%subject, answer = %String::from_utf8_lossy(&answer.payload), "refused by the receiving host");
                        return;
                    }
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        UndeliverableReason::NO_ROUTE
                    }
                    Ok(Err(e)) => {
                        warn!(%subject, error = %e, "NATS request failed");
                        UndeliverableReason::NO_ROUTE
                    }
                    Err(_) => {
                        warn!(%subject, "no answer through NATS in time; the message may be lost");
                        UndeliverableReason::EXPIRED
                    }
                };
                bounce(&shared, &m, reason);
            });
        }
        nats.wake.notified().await;
    }
}

/// A request's share of the send window, given back (and the sender woken)
/// when the request ends, however it ends.
struct InFlight {
    used: Arc<std::sync::Mutex<Usage>>,
    nats: Arc<Nats>,
    cost: Usage,
}

impl InFlight {
    fn hold(used: &Arc<std::sync::Mutex<Usage>>, nats: &Arc<Nats>, m: &Message) -> Self {
        let cost = Usage::one(m.encoded_len());
        lock(used).add(cost);
        Self {
            used: used.clone(),
            nats: nats.clone(),
            cost,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.used).remove(self.cost);
        self.nats.wake.notify_one();
    }
}

/// Tells the sender of `m` that it is undeliverable.
fn bounce(shared: &Shared, m: &Message, reason: UndeliverableReason) {
    shared.with_core(|t| t.undeliverable(m, reason, Instant::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_carry_both_domains_and_parse_back() {
        let s = Subjects::new("tenet.x");
        let (a, b) = (Domain::new([0xa1; 12]), Domain::new([0xb2; 12]));
        let subject = s.data(a, b);
        assert_eq!(
            subject,
            "tenet.x.d.a1a1a1a1a1a1a1a1a1a1a1a1.s.b2b2b2b2b2b2b2b2b2b2b2b2"
        );
        assert_eq!(s.parse(&subject), Some((a, b)));
        assert_eq!(s.inbound(a), "tenet.x.d.a1a1a1a1a1a1a1a1a1a1a1a1.s.*");
        for bad in [
            "tenet.x.d.a1a1a1a1a1a1a1a1a1a1a1a1",
            "tenet.y.d.a1a1a1a1a1a1a1a1a1a1a1a1.s.b2b2b2b2b2b2b2b2b2b2b2b2",
            "tenet.x.d.a1a1a1a1a1a1a1a1a1a1a1a1.s.b2b2",
            "tenet.x.d.a1a1a1a1a1a1a1a1a1a1a1a1.s.b2b2b2b2b2b2b2b2b2b2b2b2.s.x",
        ] {
            assert_eq!(s.parse(bad), None, "{bad}");
        }
        assert!(s.is_inbox(&format!("{}.abc.1", s.inbox(a))));
        assert!(!s.is_inbox(&subject));
        assert!(!s.is_inbox("_INBOX.abc.1"));
        assert!(!s.is_inbox("tenet.x.ix.abc"));
    }
}
