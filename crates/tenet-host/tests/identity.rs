//! Identity is what the certificate says (security issue 2, "a rogue host
//! takes over a peer it has met"). A peer serves only the domains its
//! certificate on that very connection names; the config's `domains` only
//! pre-route; a dialer told `host = ...` checks whom it reached; card and
//! entity certificates are refused for TLS links.
//!
//! Daemons listen on `127.0.0.1:0` and the tests read the bound address
//! from the daemon's "accepting host links" event. Every wait is for an
//! event (a log event, a frame, a closed stream) with a deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tenet_client::{Capability, ClientError};
use tenet_host::{Config, HostHandle};
use tenet_pki::{HostFiles, ensure_ca, issue_entity, issue_entity_key, issue_host};
use tenet_proto::frame::{begin_frame, finish_frame, split_frame};
use tenet_proto::link::{LinkFrame, MAX_LINK_FRAME};
use tenet_proto::{Codec, Domain, EntityId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::WAIT;

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

// ---------------------------------------------------------------- log events

#[path = "support/logs.rs"]
mod logs;
use logs::{Logged, capture_logs, logged_where};

/// Waits (up to [`WAIT`]) for the first event that has one of `messages`
/// and every field in `fields` equal to the given text.
async fn first_logged(messages: &[&str], fields: &[(&str, &str)]) -> Logged {
    logged_where(&format!("{messages:?} with {fields:?}"), |l| {
        messages.contains(&l.message.as_str()) && fields.iter().all(|(k, v)| l.field(k) == *v)
    })
    .await
}

async fn logged(message: &str, fields: &[(&str, &str)]) -> Logged {
    first_logged(&[message], fields).await
}

// ---------------------------------------------------------------- daemons

/// A daemon's configuration, as an operator writes it: software domain
/// `d`, TLS on `127.0.0.1:0` with `files`, and `extra` TOML (peers).
fn config(dir: &Path, name: &str, d: Domain, files: &HostFiles, extra: &str) -> Config {
    let text = format!(
        "[host]\nsocket = {:?}\nstate_dir = {:?}\ndomain = \"{d}\"\n\
         [remote]\nlisten = \"127.0.0.1:0\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n{extra}",
        dir.join(format!("{name}.sock")),
        dir.join(format!("{name}-state")),
        files.ca,
        files.cert,
        files.key,
    );
    Config::parse(&text, Path::new(name)).unwrap()
}

/// Starts a daemon whose host id is `id`; returns it and its link address.
async fn start(cfg: &Config, id: EntityId) -> (HostHandle, String) {
    capture_logs();
    let h = tenet_host::start(cfg).await.unwrap();
    let e = logged("accepting host links", &[("host", &id.to_string())]).await;
    (h, e.field("address").to_owned())
}

fn peer(address: &str, key: &str, value: &str) -> String {
    format!("[[remote.peers]]\naddress = \"{address}\"\n{key} = {value}\n")
}

// ---------------------------------------------------------------- a peer by hand

fn pem_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A TLS connection to `addr`, trusting the CA certificate `ca` and
/// presenting `chain` and `key`; also the local address (the daemon logs a
/// refused handshake with it). The handshake may succeed on this side even
/// when the daemon then refuses the certificate (TLS 1.3): the refusal
/// shows on the first read.
async fn tls(
    addr: &str,
    ca: &Path,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (
    std::io::Result<tokio_rustls::client::TlsStream<TcpStream>>,
    String,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_chain(ca) {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap().to_string();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("host.tenet").unwrap(), tcp)
        .await;
    (s, local)
}

fn hello(host: EntityId, domains: Vec<Domain>) -> LinkFrame {
    LinkFrame::Hello {
        host,
        session: 77,
        your_session: 0,
        recv_upto: 0,
        domains,
    }
}

/// Writes `f`; false when the stream is already refused.
async fn send<W: AsyncWriteExt + Unpin>(w: &mut W, f: LinkFrame) -> bool {
    let mut buf = Vec::new();
    let at = begin_frame(&mut buf);
    f.encode(&mut buf);
    finish_frame(&mut buf, at);
    w.write_all(&buf).await.is_ok() && w.flush().await.is_ok()
}

/// What the daemon did next on a link.
#[derive(Debug, PartialEq)]
enum Next {
    Frame(LinkFrame),
    /// End of stream or a TLS alert.
    Closed(String),
}

/// The next frame, or how the stream ended; panics when nothing happens
/// within [`WAIT`].
async fn next<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Next {
    loop {
        if let Some((used, body)) = split_frame(buf, MAX_LINK_FRAME).unwrap() {
            let f = LinkFrame::decode(body).unwrap();
            buf.drain(..used);
            return Next::Frame(f);
        }
        match tokio::time::timeout(WAIT, r.read_buf(buf)).await {
            Err(_) => panic!("the daemon neither answered nor closed the link"),
            Ok(Ok(0)) => return Next::Closed("end of stream".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Next::Closed(e.to_string()),
        }
    }
}

/// Nothing answers `dst` from `h` (the echo is not delivered anywhere).
async fn unanswered(h: &HostHandle, dst: EntityId) {
    let mut app = Capability::acquire(h.socket_path()).await.unwrap();
    match app.echo(dst, b"", Duration::from_millis(500)).await {
        Err(ClientError::Timeout { .. } | ClientError::Undeliverable { .. }) => {}
        other => panic!("{dst} answered: {other:?}"),
    }
}

// ---------------------------------------------------------------- the tests

/// The reported sequence: V lists T (the TTP's host) with its domain, meets
/// it once, T goes down; a rogue host whose certificate (same CA) names only
/// its own domain dials V announcing T's host id. V refuses it, says why in
/// the close frame and the log, and never routes T's domain to it.
/// A daemon that stops closes its links cleanly: its peer reads a close
/// frame ("host stopping") before TLS close_notify, and logs that, not a
/// connection cut without close_notify.
#[tokio::test]
async fn a_stopping_host_closes_its_links_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (p, q) = (dom(0x31), dom(0x32));
    let p_files = issue_host(&ca, "p", &[p]).unwrap();
    let (hp, p_addr) = start(&config(root.path(), "p", p, &p_files, ""), p.owner()).await;
    let q_files = issue_host(&ca, "q", &[q]).unwrap();
    let q_cfg = config(
        root.path(),
        "q",
        q,
        &q_files,
        &peer(&p_addr, "domains", "[]"),
    );
    let (hq, _) = start(&q_cfg, q.owner()).await;
    logged("link up", &[("host", &p.owner().to_string())]).await;
    hp.shutdown().await;
    // Q, the dialer, saw P close: the link went down for P's reason.
    let down = logged("link down", &[("host", &p.owner().to_string())]).await;
    assert_eq!(down.field("reason"), "peer closed: host stopping");
    assert_eq!(hq.remote_stats().unwrap().links_broken, 0);
    hq.shutdown().await;
}

#[tokio::test]
async fn rogue_host_announcing_a_met_peers_id_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (v, t, r) = (dom(0x51), dom(0x7d), dom(0x66));
    let t_files = issue_host(&ca, "t", &[t]).unwrap();
    let (ht, t_addr) = start(&config(root.path(), "t", t, &t_files, ""), t.owner()).await;
    let v_files = issue_host(&ca, "v", &[v]).unwrap();
    let v_cfg = config(
        root.path(),
        "v",
        v,
        &v_files,
        &peer(&t_addr, "domains", &format!("[\"{t}\"]")),
    );
    let (hv, v_addr) = start(&v_cfg, v.owner()).await;
    // V meets T, then T goes down.
    logged("link up", &[("host", &t.owner().to_string())]).await;
    let mut on_v = Capability::acquire(hv.socket_path()).await.unwrap();
    on_v.echo(t.owner(), b"", WAIT).await.expect("T answers");
    ht.shutdown().await;
    logged("link down", &[("host", &t.owner().to_string())]).await;
    let before = hv.remote_stats().unwrap();

    // The rogue: a valid host certificate naming only its own domain.
    let rogue = issue_host(&ca, "rogue", &[r]).unwrap();
    let key = PrivateKeyDer::from_pem_file(&rogue.key).unwrap();
    let (s, _) = tls(&v_addr, &rogue.ca, pem_chain(&rogue.cert), key).await;
    let mut s = s.expect("a host certificate passes the handshake");
    assert!(send(&mut s, hello(t.owner(), vec![t])).await);
    let mut buf = Vec::new();
    match next(&mut s, &mut buf).await {
        Next::Frame(LinkFrame::Close { reason }) => {
            assert!(reason.contains(&t.to_string()), "{reason}")
        }
        other => panic!("the rogue was answered with {other:?}"),
    }
    assert!(matches!(next(&mut s, &mut buf).await, Next::Closed(_)));
    let e = logged("link refused", &[("host", &t.owner().to_string())]).await;
    let reason = e.field("reason");
    assert!(
        reason.contains("certificate") && reason.contains(&t.to_string()),
        "{e:?}"
    );

    // The link is not used for T's domain: its route stays down, and a ping
    // of T's id finds nobody.
    let after = hv.remote_stats().unwrap();
    assert_eq!(after.links_up, before.links_up, "{after:?}");
    assert!(after.links_refused > before.links_refused, "{after:?}");
    assert_eq!(hv.remote_routes().get(&t).map(|(_, up)| *up), Some(false));
    unanswered(&hv, t.owner()).await;
    hv.shutdown().await;
}

/// A card's certificate (`tenet card new --ca`) or the TTP entity's (`tenet
/// ca entity`) is for signatures only: presented as a TLS client
/// certificate, with its key, it is refused in the handshake, before any
/// hello, with the reason in the log.
#[tokio::test]
async fn card_or_entity_certificate_is_refused_as_a_tls_certificate() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (v, t, k) = (dom(0x52), dom(0x7e), dom(0xca));
    // V lists T with T's domain (down or not, an accepted link here would
    // be a takeover).
    let v_files = issue_host(&ca, "v", &[v]).unwrap();
    let v_cfg = config(
        root.path(),
        "v",
        v,
        &v_files,
        &peer("127.0.0.1:9", "domains", &format!("[\"{t}\"]")),
    );
    let (hv, v_addr) = start(&v_cfg, v.owner()).await;

    let ttp = issue_entity_key(&ca, "ttp", t.owner()).unwrap();
    let card_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let card_cert = issue_entity(&ca, k.owner(), card_key.public_key_raw())
        .unwrap()
        .x509;
    let card_pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(card_key.serialize_der()));
    let cases = [
        (
            "the TTP entity",
            t,
            pem_chain(&ttp.cert),
            PrivateKeyDer::from_pem_file(&ttp.key).unwrap(),
        ),
        (
            "a card",
            k,
            vec![CertificateDer::from(card_cert)],
            card_pkcs8,
        ),
    ];
    for (what, d, chain, key) in cases {
        let before = hv.remote_stats().unwrap();
        let (s, local) = tls(&v_addr, &ttp.ca, chain, key).await;
        if let Ok(mut s) = s {
            send(&mut s, hello(d.owner(), vec![d])).await;
            let mut buf = Vec::new();
            match next(&mut s, &mut buf).await {
                Next::Closed(_) => {}
                other => panic!("{what}'s certificate passed the handshake: {other:?}"),
            }
        }
        let e = logged("TLS handshake refused", &[("from", &local)]).await;
        assert!(e.field("error").contains("not a host certificate"), "{e:?}");
        let after = hv.remote_stats().unwrap();
        assert_eq!(after.links_up, before.links_up, "{what}: {after:?}");
        assert!(after.links_refused > before.links_refused, "{what}");
    }
    unanswered(&hv, t.owner()).await;
    hv.shutdown().await;
}

/// V dials P and lists domain X for it; P's software domain is X, but its
/// certificate names only Y. The config's `domains` pre-route; they do not
/// authorize: V refuses P's hello and routes nothing of X to it.
#[tokio::test]
async fn announced_domain_not_in_the_certificate_is_refused_even_if_configured() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (v, x, y) = (dom(0x53), dom(0x58), dom(0x59));
    let p_files = issue_host(&ca, "p", &[y]).unwrap();
    let (hp, p_addr) = start(&config(root.path(), "p", x, &p_files, ""), x.owner()).await;
    let v_files = issue_host(&ca, "v", &[v]).unwrap();
    let v_cfg = config(
        root.path(),
        "v",
        v,
        &v_files,
        &peer(&p_addr, "domains", &format!("[\"{x}\"]")),
    );
    let (hv, _) = start(&v_cfg, v.owner()).await;
    let host = x.owner().to_string();
    let e = first_logged(&["link up", "link refused"], &[("host", &host)]).await;
    assert_eq!(e.message, "link refused", "{e:?}");
    let reason = e.field("reason");
    assert!(
        reason.contains("certificate") && reason.contains(&x.to_string()),
        "{e:?}"
    );
    assert_eq!(hv.remote_stats().unwrap().links_up, 0);
    assert_eq!(hv.remote_routes().get(&x).map(|(_, up)| *up), Some(false));
    unanswered(&hv, x.owner()).await;
    hv.shutdown().await;
    hp.shutdown().await;
}

/// `host = "DOMAIN:0"` on a `[[remote.peers]]` entry: the dialer checks the
/// certificate of whoever answers at the address before it says anything.
/// Another host of the same CA (W) is refused, and never even gets V's
/// hello; a dialer expecting W gets its link.
#[tokio::test]
async fn dialer_with_an_expected_host_refuses_another_host_of_the_same_ca() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (v, t, w, u) = (dom(0x54), dom(0x7f), dom(0x57), dom(0x55));
    let w_files = issue_host(&ca, "w", &[w]).unwrap();
    let (hw, w_addr) = start(&config(root.path(), "w", w, &w_files, ""), w.owner()).await;

    // V means T, but W answers at the address.
    let v_files = issue_host(&ca, "v", &[v]).unwrap();
    let v_cfg = config(
        root.path(),
        "v",
        v,
        &v_files,
        &peer(&w_addr, "host", &format!("\"{}\"", t.owner())),
    );
    let (hv, _) = start(&v_cfg, v.owner()).await;
    let label = w_addr.as_str();
    let e = first_logged(&["link up", "link refused"], &[("peer", label)]).await;
    assert_eq!(e.message, "link refused", "{e:?}");
    let reason = e.field("reason");
    assert!(
        reason.contains(&t.owner().to_string()) && reason.contains("certificate"),
        "{e:?}"
    );
    assert_eq!(hv.remote_stats().unwrap().links_up, 0);
    assert!(!hv.remote_routes().contains_key(&w), "nothing learned of W");
    assert_eq!(
        hw.remote_stats().unwrap().links_up,
        0,
        "W never got a hello"
    );
    assert_eq!(hw.remote_peers(), 0);

    // The control: U expects W and gets it.
    let u_files = issue_host(&ca, "u", &[u]).unwrap();
    let u_cfg = config(
        root.path(),
        "u",
        u,
        &u_files,
        &peer(&w_addr, "host", &format!("\"{}\"", w.owner())),
    );
    let (hu, _) = start(&u_cfg, u.owner()).await;
    logged("link up", &[("host", &w.owner().to_string())]).await;
    let mut on_u = Capability::acquire(hu.socket_path()).await.unwrap();
    on_u.echo(w.owner(), b"", WAIT).await.expect("W answers U");
    hu.shutdown().await;
    hv.shutdown().await;
    hw.shutdown().await;
}

/// A peer announced its card's domain K on one link, and comes back with a
/// certificate that no longer names K (a new card, say). Its link comes up
/// for what the new certificate names, and a message for K is not sent on
/// it: its sender is told the destination is gone.
#[tokio::test]
async fn a_domain_the_current_certificate_no_longer_names_gets_no_traffic() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (v, p, k) = (dom(0x56), dom(0x50), dom(0x5c));
    let v_files = issue_host(&ca, "v", &[v]).unwrap();
    let (hv, v_addr) = start(&config(root.path(), "v", v, &v_files, ""), v.owner()).await;
    let host = p.owner().to_string();

    // First link: the certificate names P and K; P announces both.
    let old = issue_host(&ca, "p-old", &[p, k]).unwrap();
    let key = PrivateKeyDer::from_pem_file(&old.key).unwrap();
    let (s, _) = tls(&v_addr, &old.ca, pem_chain(&old.cert), key).await;
    let mut s = s.unwrap();
    assert!(send(&mut s, hello(p.owner(), vec![p, k])).await);
    let mut buf = Vec::new();
    assert!(matches!(
        next(&mut s, &mut buf).await,
        Next::Frame(LinkFrame::Hello { .. })
    ));
    drop(s);
    logged("link down", &[("host", &host)]).await;

    // Second link: the certificate names P only; P announces P.
    let new = issue_host(&ca, "p-new", &[p]).unwrap();
    let key = PrivateKeyDer::from_pem_file(&new.key).unwrap();
    let (s, _) = tls(&v_addr, &new.ca, pem_chain(&new.cert), key).await;
    let mut s = s.unwrap();
    assert!(send(&mut s, hello(p.owner(), vec![p])).await);
    let mut buf = Vec::new();
    assert!(matches!(
        next(&mut s, &mut buf).await,
        Next::Frame(LinkFrame::Hello { .. })
    ));
    let mut app = Capability::acquire(hv.socket_path()).await.unwrap();
    let card_app = EntityId::new(k, tenet_proto::Port::new(1));
    match app.echo(card_app, b"", WAIT).await {
        Err(ClientError::Undeliverable { reason, .. }) => assert_eq!(
            reason,
            tenet_proto::notice::UndeliverableReason::DESTINATION_GONE
        ),
        other => panic!("{other:?}"),
    }
    hv.shutdown().await;
}
