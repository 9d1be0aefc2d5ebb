//! `/metrics` of a real daemon (`[metrics] listen = "127.0.0.1:0"`),
//! scraped with hyper-util's HTTP client before and after traffic: the
//! counters move by what the traffic was, the app socket's status request
//! says the same, other paths and methods are refused, a malformed request
//! and idle connections do not stop it, and a port that cannot be had stops
//! the daemon at startup naming `metrics.listen`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tenet_client::Capability;
use tenet_host::plugin::{EntityService, HostSender};
use tenet_host::{Config, HostBuilder, HostError, HostHandle};
use tenet_pki::{ensure_ca, issue_host};
use tenet_proto::{Domain, EntityId, Message, Mtype, Port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::{WAIT, echo_eventually, recv};

/// The test service's request and answer.
const ASK: Mtype = Mtype(0x8a77);
const ANSWER: Mtype = Mtype(0x8a78);

/// A service of the host entity that answers [`ASK`] and counts each one
/// as its event `asked`.
struct Counting;

impl EntityService for Counting {
    fn name(&self) -> &str {
        "Counting"
    }

    fn mtypes(&self) -> Vec<Mtype> {
        vec![ASK]
    }

    fn run(self: Box<Self>, inbox: Receiver<Message>, host: HostSender) {
        while let Ok(m) = inbox.recv() {
            host.count("asked");
            host.send([Message::new(host.id(), m.src(), ANSWER, m.param)]);
        }
    }
}

fn config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.host.socket = Some(dir.join("host.sock"));
    c.host.state_dir = Some(dir.join("state"));
    c.metrics.listen = Some("127.0.0.1:0".into());
    c
}

async fn start(dir: &Path) -> HostHandle {
    HostBuilder::new(&config(dir))
        .service(Box::new(Counting))
        .start()
        .await
        .unwrap()
}

/// An HTTP client that keeps no idle connection: each request opens its
/// own and closes it after the response.
fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// `METHOD http://addr PATH`: the status, the content type and the body.
async fn request(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, String, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(WAIT, client().request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = res.status();
    let kind = res
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, kind, String::from_utf8(body.to_vec()).unwrap())
}

/// The samples of a scrape: `name{labels}` as written, and the value.
async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, kind, body) = request(addr, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("NAME VALUE");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// The value of `sample` (0 if absent: a counter not yet counted).
fn get(samples: &BTreeMap<String, f64>, sample: &str) -> f64 {
    samples.get(sample).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_by_the_traffic_through_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path()).await;
    let addr = h.metrics_addr().expect("serves metrics");
    assert_ne!(addr.port(), 0, "the port the system chose");
    let before = scrape(addr).await;
    assert_eq!(get(&before, "tenet_apps_connected"), 0.0);

    let mut a = Capability::acquire(h.socket_path()).await.unwrap();
    let mut b = Capability::acquire(h.socket_path()).await.unwrap();
    // Three messages from app to app, two echoes of the host entity, one
    // message to nobody, one request to the service.
    for i in 0..3u8 {
        a.send(b.id(), Mtype(0x8001), vec![i]).await.unwrap();
        recv(&mut b).await;
    }
    for _ in 0..2 {
        a.echo(h.host_id(), b"", WAIT).await.unwrap();
    }
    let nobody = EntityId::new(h.host_id().domain(), Port::new(4242));
    a.send(nobody, Mtype(0x8001), vec![]).await.unwrap();
    assert_eq!(recv(&mut a).await.mtype(), Mtype::UNDELIVERABLE);
    a.send(h.host_id(), ASK, b"?".to_vec()).await.unwrap();
    assert_eq!(recv(&mut a).await.mtype(), ANSWER);

    let after = scrape(addr).await;
    let moved = |sample: &str| get(&after, sample) - get(&before, sample);
    assert_eq!(
        moved(r#"tenet_messages_routed_total{ingress="app"}"#),
        6.0,
        "3 to b, 2 echo requests, 1 service request"
    );
    assert_eq!(
        moved(r#"tenet_messages_routed_total{ingress="internal"}"#),
        3.0,
        "2 echo replies, 1 service answer"
    );
    assert_eq!(moved(r#"tenet_messages_routed_total{ingress="card"}"#), 0.0);
    assert_eq!(
        moved("tenet_messages_delivered_total"),
        10.0,
        "b's 3, the host entity's 3, a's 2 echo replies, 1 notice, 1 answer"
    );
    assert_eq!(
        moved(r#"tenet_messages_undeliverable_total{reason="unknown_destination"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"tenet_service_events_total{service="Counting",event="asked"}"#),
        1.0
    );
    assert_eq!(
        get(&after, r#"tenet_service_busy_total{service="Counting"}"#),
        0.0
    );
    assert_eq!(get(&after, "tenet_apps_connected"), 2.0);
    assert_eq!(get(&after, "tenet_queue_messages"), 0.0, "everything read");
    assert!(get(&after, "tenet_queue_peak_bytes") > 0.0);
    assert_eq!(get(&after, "tenet_queue_limit_messages"), 65536.0);
    assert!(
        !after.keys().any(|k| k.starts_with("tenet_card_")),
        "no card, no card figures"
    );

    // Every figure of the host is served, under its type and help.
    let (_, _, text) = request(addr, Method::GET, "/metrics").await;
    for f in h.figures() {
        assert!(
            text.contains(&format!("\ntenet_{}", f.name)),
            "{} missing:\n{text}",
            f.name
        );
    }
    assert!(text.contains("# TYPE tenet_messages_routed_total counter\n"));
    assert!(text.contains("# TYPE tenet_queue_messages gauge\n"));
    assert!(text.contains("# HELP tenet_queue_held_bytes "));

    // The app socket's status request says the same, without an id.
    let status = tenet_client::host_status(h.socket_path()).await.unwrap();
    assert_eq!(
        status.count("messages_routed_total", &[("ingress", "app")]) as f64,
        get(&after, r#"tenet_messages_routed_total{ingress="app"}"#)
    );
    assert_eq!(
        status.count("apps_connected", &[]),
        3,
        "the two apps and the asker, which needs no id"
    );
    assert_eq!(status.omitted, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn only_get_metrics_answers_and_bad_or_idle_clients_do_not_stop_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path()).await;
    let addr = h.metrics_addr().unwrap();
    let (status, _, _) = request(addr, Method::GET, "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = request(addr, Method::GET, "/metrics/x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = request(addr, Method::POST, "/metrics").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Bytes that are no HTTP get hyper's 400 and a closed connection.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    scrape(addr).await;

    // Idle connections take the 16 slots: the next scrape waits for one.
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let waiting = tokio::spawn(scrape(addr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a 17th connection is not served");
    drop(idle);
    let samples = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("served once the idle ones are gone")
        .unwrap();
    assert!(samples.contains_key("tenet_queue_messages"));
    h.shutdown().await;
}

#[tokio::test]
async fn a_metrics_port_in_use_stops_the_host_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // Held for the whole test: the daemon cannot have this port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(dir.path());
    cfg.metrics.listen = Some(taken.local_addr().unwrap().to_string());
    let err = match tenet_host::start(&cfg).await {
        Ok(_) => panic!("started on a port in use"),
        Err(e) => e,
    };
    assert!(matches!(err, HostError::Metrics { .. }), "{err:?}");
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(text.starts_with("metrics.listen 127.0.0.1:"), "{text}");
    assert!(
        !dir.path().join("host.sock").exists(),
        "stopped before its socket"
    );
    // A malformed address is refused as a config error naming the key.
    cfg.metrics.listen = Some("localhost:9464".into());
    let err = tenet_host::start(&cfg).await.err().unwrap();
    assert!(err.to_string().contains("metrics.listen"), "{err}");
}

#[tokio::test]
async fn peer_links_show_per_peer() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let host = |b: u8, peer: Option<SocketAddr>| {
        let dir = root.path().join(format!("host{b}"));
        std::fs::create_dir_all(&dir).unwrap();
        let files = issue_host(&ca, &format!("host{b}"), &[Domain::new([b; 12])]).unwrap();
        let mut c = config(&dir);
        c.host.domain = Some(Domain::new([b; 12]).to_string());
        c.remote.listen = Some("127.0.0.1:0".into());
        c.remote.ca = Some(files.ca);
        c.remote.cert = Some(files.cert);
        c.remote.key = Some(files.key);
        c.remote.peers = peer
            .map(|a| tenet_host::config::PeerSection {
                address: a.to_string(),
                domains: Vec::new(),
            })
            .into_iter()
            .collect();
        c
    };
    let a = tenet_host::start(&host(0xa1, None)).await.unwrap();
    let a_addr = a.remote_addr().unwrap();
    let b = tenet_host::start(&host(0xb2, Some(a_addr))).await.unwrap();
    let mut on_b = Capability::acquire(b.socket_path()).await.unwrap();
    echo_eventually(&mut on_b, a.host_id()).await;

    let on_b_side = scrape(b.metrics_addr().unwrap()).await;
    let peer = format!(r#"{{peer="{a_addr}"}}"#);
    assert_eq!(get(&on_b_side, &format!("tenet_remote_peer_up{peer}")), 1.0);
    assert_eq!(
        get(
            &on_b_side,
            &format!("tenet_remote_peer_reconnects_total{peer}")
        ),
        0.0
    );
    assert_eq!(get(&on_b_side, "tenet_remote_links_up_total"), 1.0);
    assert!(
        get(
            &on_b_side,
            r#"tenet_remote_received_total{transport="tls"}"#
        ) >= 1.0
    );
    let on_a_side = scrape(a.metrics_addr().unwrap()).await;
    assert!(
        get(
            &on_a_side,
            r#"tenet_remote_received_total{transport="tls"}"#
        ) >= 1.0
    );
    assert_eq!(
        get(
            &on_a_side,
            r#"tenet_remote_dropped_total{transport="tls",reason="forged"}"#
        ),
        0.0
    );
    assert_eq!(
        on_a_side
            .iter()
            .filter(|(k, v)| k.starts_with("tenet_remote_peer_up{") && **v == 1.0)
            .count(),
        1,
        "b, as it connected"
    );
    b.shutdown().await;
    a.shutdown().await;
}
