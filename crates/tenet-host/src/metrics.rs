//! The host's figures, read from its counters when asked: by a scrape of
//! `/metrics` (`[metrics] listen`, the Prometheus text format) and by an
//! app's status request on the app socket (`tenet status`). Both show the
//! same [`Figure`]s, built by [`figures`] from what the host already
//! counts: the dispatch table's [`tenet_dispatch::Stats`] and guard drops,
//! what it holds, the card link's [`crate::link::LinkStats`], the remote
//! proxy's and the NATS link's counters, each peer's link, each service's
//! busy refusals and the events it counts itself
//! ([`crate::plugin::HostSender::count`]). Nothing is counted twice: a
//! prometheus-client [`Collector`] turns the figures into metrics at each
//! scrape. The names and what they mean are in `docs/host.md`.
//!
//! The figures hold no app's or card's id: a peer is named by its
//! configured address or, if it connected to this host, by its host id
//! (`DOMAIN:0`); a guard and a service by their names.
//!
//! The HTTP server is hyper's HTTP/1 server on tokio: hyper parses the
//! requests and applies its limits (headers of at most about 400 KiB, a
//! client that does not send its headers within 30 seconds is closed, an
//! idle keep-alive connection too). At most [`MAX_CONNECTIONS`] connections
//! are served at once; the next waits in the listen backlog. Only
//! `GET /metrics` answers 200; another method on it gets 405, another path
//! 404. Request bodies are never read.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tenet_proto::Codec;
use tenet_proto::app::MAX_APP_FRAME;
use tenet_proto::status::{Figure, Status, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::server::{HostError, Shared, lock};

/// HTTP connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// A metric's type, as Prometheus knows it.
#[derive(Clone, Copy)]
enum Kind {
    /// Only goes up (until the daemon restarts); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One metric: its name without the `tenet_` prefix, its type and help.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Counter,
        help,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        help,
    }
}

/// Every metric the host exports, in the order they are served; the names
/// [`figures`] makes are these.
const FAMILIES: &[Family] = &[
    counter(
        "messages_routed_total",
        "Messages stored for a reader, by the path they came in on (app, card, remote, internal).",
    ),
    counter(
        "messages_delivered_total",
        "Messages taken by their readers (apps, the card, peer links, NATS), notices included.",
    ),
    counter(
        "messages_refused_total",
        "Messages refused because a bound of the dispatch table was reached: the table's or a \
         destination's (bound=table), or the sender's share of one (bound=sender_share).",
    ),
    counter(
        "messages_guard_dropped_total",
        "Messages a guard dropped, by guard and by the path they came in on; the reason of each \
         is in the log (target tenet::guard).",
    ),
    counter(
        "messages_undeliverable_total",
        "Messages whose sender was told they cannot be delivered, by reason (unknown_destination, \
         no_route, expired, destination_gone, queue_full, other).",
    ),
    counter(
        "messages_notices_dropped_total",
        "Undeliverable notices that could not be stored (the table was full).",
    ),
    counter(
        "messages_tap_skipped_total",
        "Tap copies skipped because a tap's queue was full.",
    ),
    gauge("queue_messages", "Messages waiting for their readers now."),
    gauge(
        "queue_held_messages",
        "Messages and tap copies the dispatch table holds now (bounded by dispatch.total).",
    ),
    gauge(
        "queue_held_bytes",
        "Bytes the dispatch table holds now, tap copies included (bounded by dispatch.total_bytes).",
    ),
    gauge(
        "queue_peak_bytes",
        "The most bytes the dispatch table held at once since the daemon started.",
    ),
    gauge(
        "queue_limit_messages",
        "dispatch.total: the most messages and tap copies the table holds.",
    ),
    gauge(
        "queue_limit_bytes",
        "dispatch.total_bytes: the most bytes the table holds.",
    ),
    gauge("apps_connected", "App connections open now."),
    counter("card_apdus_total", "Command APDUs sent to the host's card."),
    counter(
        "card_link_sent_bytes_total",
        "Bytes of command APDUs sent to the host's card.",
    ),
    counter(
        "card_link_received_bytes_total",
        "Bytes of response APDUs received from the host's card.",
    ),
    counter(
        "card_link_busy_seconds_total",
        "Time spent waiting for the card's responses.",
    ),
    counter(
        "remote_received_total",
        "Messages received from other hosts and stored, by transport (tls, nats).",
    ),
    counter(
        "remote_dropped_total",
        "Messages from or to other hosts dropped, by transport and reason: forged (a src its \
         sender may not send from), guard (the guard chain; also in \
         messages_guard_dropped_total), rate (over remote.rate), malformed (NATS payloads), \
         not_relayed (routed to NATS with another host's src).",
    ),
    counter(
        "remote_links_up_total",
        "TLS links to peers that came up, reconnects included.",
    ),
    counter(
        "remote_links_refused_total",
        "TLS links refused: a bad hello, unauthorized or conflicting domains, a duplicate.",
    ),
    counter(
        "remote_links_broken_total",
        "TLS links closed for a malformed or oversized frame or a protocol error.",
    ),
    gauge(
        "remote_peer_up",
        "1 if the link to the peer is up, else 0, by peer (its configured address, or the host id \
         of a peer that connected).",
    ),
    counter(
        "remote_peer_reconnects_total",
        "Links to the peer that came up after its first one.",
    ),
    counter(
        "service_busy_total",
        "Requests to a service of the host entity (the TTP) refused because it was busy.",
    ),
    counter(
        "service_events_total",
        "Events a service of the host entity counted itself, by service and event (the TTP: \
         admission_resolve, admission_abort, refused).",
    ),
];

/// The host's figures now, grouped by name in the order of [`FAMILIES`].
/// The table is locked once, briefly; the other counters are atomics or
/// short locks of their own.
pub(crate) fn figures(shared: &Shared) -> Vec<Figure> {
    let (stats, drops, held, waiting, limits) = {
        let core = lock(&shared.table);
        let t = core.table();
        (
            t.stats(),
            t.guard_drops().to_vec(),
            t.held(),
            t.len(),
            t.limits(),
        )
    };
    let mut out = Vec::new();
    let mut count = |name: &str, labels: &[(&str, &str)], n: u64| {
        out.push(Figure::count(name, labels, n));
    };
    for (ingress, n) in stats.routed.iter() {
        count("messages_routed_total", &[("ingress", ingress.name())], n);
    }
    count("messages_delivered_total", &[], stats.delivered);
    let table = stats.refused_full.saturating_sub(stats.refused_share);
    count("messages_refused_total", &[("bound", "table")], table);
    let share = stats.refused_share;
    count(
        "messages_refused_total",
        &[("bound", "sender_share")],
        share,
    );
    for d in &drops {
        for (ingress, n) in d.dropped.iter().filter(|(_, n)| *n > 0) {
            let labels = [("guard", d.guard.as_str()), ("ingress", ingress.name())];
            count("messages_guard_dropped_total", &labels, n);
        }
    }
    let reasons = stats.undeliverable_by_reason;
    for (reason, n) in reasons.iter() {
        let label = reason.to_string().replace(' ', "_");
        count("messages_undeliverable_total", &[("reason", &label)], n);
    }
    let other = reasons.other();
    count(
        "messages_undeliverable_total",
        &[("reason", "other")],
        other,
    );
    count("messages_notices_dropped_total", &[], stats.notices_dropped);
    count("messages_tap_skipped_total", &[], stats.tap_skipped);
    count("queue_messages", &[], waiting as u64);
    count("queue_held_messages", &[], held.messages as u64);
    count("queue_held_bytes", &[], held.bytes as u64);
    count("queue_peak_bytes", &[], stats.peak_bytes);
    count("queue_limit_messages", &[], limits.total as u64);
    count("queue_limit_bytes", &[], limits.total_bytes as u64);
    count("apps_connected", &[], shared.apps_connected() as u64);
    if let Some(card) = &shared.card {
        let (apdus, sent, received) = card.stats.snapshot();
        count("card_apdus_total", &[], apdus);
        count("card_link_sent_bytes_total", &[], sent);
        count("card_link_received_bytes_total", &[], received);
        let busy = Duration::from_nanos(card.stats.busy_ns.load(Ordering::Relaxed));
        out.push(Figure::new(
            "card_link_busy_seconds_total",
            &[],
            Value::Time(busy),
        ));
    }
    remote_figures(shared, &mut out);
    for s in &shared.services {
        let busy = s.busy.load(Ordering::Relaxed);
        out.push(Figure::count(
            "service_busy_total",
            &[("service", &s.name)],
            busy,
        ));
    }
    for s in &shared.services {
        for (event, n) in lock(&s.events).iter() {
            let labels = [("service", s.name.as_str()), ("event", event)];
            out.push(Figure::count("service_events_total", &labels, *n));
        }
    }
    out
}

/// The figures of the TLS links and the NATS link, when configured.
fn remote_figures(shared: &Shared, out: &mut Vec<Figure>) {
    let tls = shared.remote.as_ref().map(|r| r.stats.snapshot());
    let nats = shared.nats.as_ref().map(|n| n.stats.snapshot());
    let mut count = |name: &str, labels: &[(&str, &str)], n: u64| {
        out.push(Figure::count(name, labels, n));
    };
    if let Some(t) = &tls {
        count("remote_received_total", &[("transport", "tls")], t.received);
    }
    if let Some(n) = &nats {
        count(
            "remote_received_total",
            &[("transport", "nats")],
            n.received,
        );
    }
    if let Some(t) = &tls {
        for (reason, n) in [
            ("forged", t.forged_dropped),
            ("guard", t.guard_dropped),
            ("rate", t.rate_dropped),
        ] {
            let labels = [("transport", "tls"), ("reason", reason)];
            count("remote_dropped_total", &labels, n);
        }
    }
    if let Some(n) = &nats {
        for (reason, n) in [
            ("forged", n.forged_dropped),
            ("guard", n.guard_dropped),
            ("malformed", n.malformed),
            ("not_relayed", n.not_relayed),
        ] {
            let labels = [("transport", "nats"), ("reason", reason)];
            count("remote_dropped_total", &labels, n);
        }
    }
    let (Some(t), Some(remote)) = (&tls, &shared.remote) else {
        return;
    };
    count("remote_links_up_total", &[], t.links_up);
    count("remote_links_refused_total", &[], t.links_refused);
    count("remote_links_broken_total", &[], t.links_broken);
    let peers = remote.peer_links();
    for (peer, up, _) in &peers {
        count("remote_peer_up", &[("peer", peer)], u64::from(*up));
    }
    for (peer, _, links) in &peers {
        let reconnects = links.saturating_sub(1);
        count(
            "remote_peer_reconnects_total",
            &[("peer", peer)],
            reconnects,
        );
    }
}

/// The answer to an app's status request: the figures, as many as fit in
/// one app-socket frame (all of them but on a host with thousands of
/// peers; the rest are counted as omitted).
pub(crate) fn status(shared: &Shared) -> Status {
    let mut status = Status::default();
    // The op byte, the omitted count and the figure count.
    let mut len = 1 + 4 + 2;
    for f in figures(shared) {
        let n = f.to_bytes().len();
        let fits = len + n <= MAX_APP_FRAME && status.figures.len() < usize::from(u16::MAX);
        if status.omitted == 0 && fits {
            len += n;
            status.figures.push(f);
        } else {
            status.omitted = status.omitted.saturating_add(1);
        }
    }
    status
}

/// Binds the metrics listener; returns it with the address it got.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), HostError> {
    let err = |source| HostError::Metrics { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Serves `/metrics` on `listener` until the task is aborted (the host
/// stops); its connections end with it.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut registry = Registry::with_prefix("tenet");
    registry.register_collector(Box::new(HostCollector(shared)));
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new());
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let answer = answer(&registry, &req);
            async move { Ok::<_, Infallible>(answer) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        conns.spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics connection closed");
            }
            drop(slot);
        });
    }
}

/// The response to one request.
fn answer(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the figures are at /metrics\n",
        );
    }
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
        warn!(error = %e, "metrics: encoding failed");
        return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Encodes [`figures`] at each scrape.
struct HostCollector(Arc<Shared>);

impl fmt::Debug for HostCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostCollector")
    }
}

impl Collector for HostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let figures = figures(&self.0);
        for family in FAMILIES {
            let mut members = figures.iter().filter(|f| f.name == family.name).peekable();
            if members.peek().is_none() {
                continue;
            }
            // prometheus-client appends `_total` to a counter's name.
            let (name, kind) = match family.kind {
                Kind::Counter => (
                    family.name.strip_suffix("_total").unwrap_or(family.name),
                    MetricType::Counter,
                ),
                Kind::Gauge => (family.name, MetricType::Gauge),
            };
            let mut metric = encoder.encode_descriptor(name, family.help, None, kind)?;
            for f in members {
                let labels: Vec<(&str, &str)> = f
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let sample = metric.encode_family(&labels)?;
                match (family.kind, f.value) {
                    (Kind::Counter, Value::Count(n)) => ConstCounter::new(n).encode(sample)?,
                    (Kind::Counter, v @ Value::Time(_)) => {
                        ConstCounter::new(v.as_f64()).encode(sample)?
                    }
                    (Kind::Gauge, Value::Count(n)) => ConstGauge::new(n).encode(sample)?,
                    (Kind::Gauge, v @ Value::Time(_)) => {
                        ConstGauge::new(v.as_f64()).encode(sample)?
                    }
                }
            }
        }
        Ok(())
    }
}
