//! The NATS transport: hosts reach each other through a NATS server or
//! cluster, on subjects derived from their domains, with no routing table.
//!
//! Each host subscribes to `PREFIX.d.DOMAINHEX` for each of its domains
//! (its software domain and its card's). A message for a domain that is
//! neither local nor routed over a TLS link goes out through NATS (the
//! dispatch table's default route) as a request to the destination
//! domain's subject, carrying the eTP message as payload. The receiving
//! host stores it (remote ingress, through the guard chain) and answers
//! with an empty reply; an error text otherwise. No responder means no
//! host serves that domain: the sender gets `undeliverable` (no route).
//!
//! NATS core delivers at most once: a message in flight when the server or
//! a daemon dies is lost, and its sender gets `undeliverable` only when the
//! request times out. Who may receive a domain's traffic, and who may send
//! it, is governed by the NATS server's accounts and subject permissions:
//! give each host's user permission to subscribe only to its own domains'
//! subjects. The default guard still drops remote messages that claim a
//! src in one of this host's domains, and privileged mtypes for local
//! cards.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tenet_dispatch::{EndpointId, Ingress, StoreError};
use tenet_proto::notice::UndeliverableReason;
use tenet_proto::{Codec, Domain, Message};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::config::NatsSection;
use crate::server::{HostError, Shared, drain_events, lock, run_events};

/// How long a sender waits for the receiving host's answer.
const ANSWER: Duration = Duration::from_secs(5);
/// Requests in flight at once.
const IN_FLIGHT: usize = 1024;

/// The NATS link of this host.
pub(crate) struct Nats {
    pub(crate) ep: EndpointId,
    pub(crate) wake: Notify,
}

fn subject(prefix: &str, d: Domain) -> String {
    format!("{prefix}.d.{d}")
}

/// Connects, subscribes to this host's domains and starts the sender.
pub(crate) async fn start(
    shared: Arc<Shared>,
    cfg: &NatsSection,
    domains: Vec<Domain>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, HostError> {
    let Some(nats) = shared.nats.clone() else {
        return Ok(Vec::new());
    };
    let mut opts = async_nats::ConnectOptions::new()
        .name("tenet host")
        .retry_on_initial_connect();
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    let urls: Vec<String> = cfg.url.split(',').map(|u| u.trim().to_owned()).collect();
    let client = tokio::time::timeout(Duration::from_secs(10), opts.connect(urls.clone()))
        .await
        .map_err(|_| HostError::Remote(format!("NATS server {} not reachable", cfg.url)))?
        .map_err(|e| HostError::Remote(format!("NATS server {}: {e}", cfg.url)))?;
    let prefix = cfg.prefix.clone().unwrap_or_else(|| "tenet".into());
    let mut tasks = Vec::new();
    for d in &domains {
        let sub = client
            .subscribe(subject(&prefix, *d))
            .await
            .map_err(|e| HostError::Remote(format!("NATS subscribe: {e}")))?;
        tasks.push(tokio::spawn(receive(shared.clone(), client.clone(), sub)));
    }
    client
        .flush()
        .await
        .map_err(|e| HostError::Remote(format!("NATS: {e}")))?;
    info!(url = %cfg.url, subjects = ?domains.iter().map(|d| subject(&prefix, *d)).collect::<Vec<_>>(), "NATS link up");
    tasks.push(tokio::spawn(send_loop(shared, nats, client, prefix)));
    Ok(tasks)
}

async fn receive(shared: Arc<Shared>, client: async_nats::Client, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let answer = match Message::decode(&msg.payload) {
            Err(e) => {
                if let Some(r) = &shared.remote_stats() {
                    r.links_broken.fetch_add(1, Ordering::Relaxed);
                }
                warn!(subject = %msg.subject, error = %e, "malformed message from NATS dropped");
                format!("malformed: {e}")
            }
            Ok(m) => {
                let (result, events) = {
                    let mut t = lock(&shared.table);
                    let r = if t.is_local_domain(m.src().domain()) {
                        Err(format!("src {} claims a domain of this host", m.src()))
                    } else if !t.is_local_domain(m.dst().domain()) {
                        Err(format!("dst {} is not served here", m.dst()))
                    } else {
                        match t.store(Ingress::Remote, m.clone(), Instant::now()) {
                            Ok(_) => Ok(()),
                            Err(StoreError::Guard(d)) => Err(d.to_string()),
                            Err(e) => {
                                t.undeliverable(
                                    &m,
                                    UndeliverableReason::QUEUE_FULL,
                                    Instant::now(),
                                );
                                Err(e.to_string())
                            }
                        }
                    };
                    (r, drain_events(&mut t))
                };
                run_events(&shared, events);
                match result {
                    Ok(()) => String::new(),
                    Err(e) => {
                        warn!(src = %m.src(), dst = %m.dst(), reason = %e, "message from NATS refused");
                        e
                    }
                }
            }
        };
        if let Some(reply) = msg.reply {
            let _ = client.publish(reply, answer.into_bytes().into()).await;
        }
    }
}

async fn send_loop(
    shared: Arc<Shared>,
    nats: Arc<Nats>,
    client: async_nats::Client,
    prefix: String,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        loop {
            let Some(d) = lock(&shared.table).take(nats.ep) else {
                break;
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let m = d.message;
            let (shared, client) = (shared.clone(), client.clone());
            let subj = subject(&prefix, m.dst().domain());
            tokio::spawn(async move {
                let _permit = permit;
                let payload = m.to_bytes();
                let r = tokio::time::timeout(ANSWER, client.request(subj.clone(), payload.into()))
                    .await;
                let reason = match r {
                    Ok(Ok(answer)) if answer.payload.is_empty() => return,
                    Ok(Ok(answer)) => {
                        debug!(subject = %subj, answer = %String::from_utf8_lossy(&answer.payload), "refused by the receiving host");
                        return;
                    }
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        UndeliverableReason::NO_ROUTE
                    }
                    Ok(Err(e)) => {
                        warn!(subject = %subj, error = %e, "NATS request failed");
                        UndeliverableReason::NO_ROUTE
                    }
                    Err(_) => {
                        warn!(subject = %subj, "no answer through NATS in time; the message may be lost");
                        UndeliverableReason::EXPIRED
                    }
                };
                let events = {
                    let mut t = lock(&shared.table);
                    t.undeliverable(&m, reason, Instant::now());
                    drain_events(&mut t)
                };
                run_events(&shared, events);
            });
        }
        nats.wake.notified().await;
    }
}
