//! Hosts linked over TLS on loopback: routing among three daemons, forged
//! src from a rogue peer, a certificate from the wrong CA, a link cut and
//! restored mid-stream, a peer restarted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tenet_client::{Capability, ClientError};
use tenet_host::config::PeerSection;
use tenet_host::{Config, HostHandle};
use tenet_pki::{HostFiles, ensure_ca, issue_host};
use tenet_proto::frame::{begin_frame, finish_frame, split_frame};
use tenet_proto::link::LinkFrame;
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::{WAIT, echo_eventually};

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

/// A host listening for TLS links on `127.0.0.1:0`: peers dial the address
/// it reports once started ([`Host::addr`]), so it starts before them.
struct Host {
    dir: PathBuf,
    domain: Domain,
    /// Where it listens: port 0 until it first started, then the address it
    /// got, so that a restarted host is where its peers dial.
    listen: SocketAddr,
    files: HostFiles,
    peers: Vec<PeerSection>,
    ttl: Option<f64>,
    handle: Option<HostHandle>,
}

impl Host {
    fn new(root: &Path, ca_dir: &Path, b: u8) -> Self {
        let dir = root.join(format!("host{b}"));
        std::fs::create_dir_all(&dir).unwrap();
        let files = issue_host(ca_dir, &format!("host{b}"), &[dom(b)]).unwrap();
        Self {
            dir,
            domain: dom(b),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            files,
            peers: Vec::new(),
            ttl: None,
            handle: None,
        }
    }

    /// Dials `other`, which must be running.
    fn dial(&mut self, other: &Host) {
        self.dial_addr(&other.addr().to_string());
    }

    fn dial_addr(&mut self, addr: &str) {
        self.peers.push(PeerSection {
            address: addr.into(),
            domains: Vec::new(),
        });
    }

    fn config(&self) -> Config {
        let mut c = Config::default();
        c.host.socket = Some(self.dir.join("host.sock"));
        c.host.state_dir = Some(self.dir.join("state"));
        c.host.domain = Some(self.domain.to_string());
        c.dispatch.ttl_secs = self.ttl;
        c.remote.listen = Some(self.listen.to_string());
        c.remote.ca = Some(self.files.ca.clone());
        c.remote.cert = Some(self.files.cert.clone());
        c.remote.key = Some(self.files.key.clone());
        c.remote.peers = self.peers.clone();
        c
    }

    async fn start(&mut self) {
        let cfg = self.config();
        self.start_with(&cfg).await;
    }

    /// Starts the host with `cfg` (its [`Host::config`], changed) and keeps
    /// the address it got for a restart. A restart listens there again, as
    /// a real host does: the port is free while the host is down, and taken
    /// only if another process binds it meanwhile (then the restart fails
    /// to listen and says so). Nothing here can hand the host a bound
    /// socket instead.
    async fn start_with(&mut self, cfg: &Config) {
        let h = tenet_host::start(cfg).await.unwrap();
        if let Some(addr) = h.remote_addr() {
            self.listen = addr;
        }
        self.handle = Some(h);
    }

    /// The address it accepts links on.
    fn addr(&self) -> SocketAddr {
        self.h().remote_addr().expect("the host listens")
    }

    async fn stop(&mut self) {
        self.handle.take().unwrap().shutdown().await;
    }

    fn h(&self) -> &HostHandle {
        self.handle.as_ref().unwrap()
    }

    async fn app(&self) -> Capability {
        Capability::acquire(self.h().socket_path()).await.unwrap()
    }

    fn id(&self) -> EntityId {
        self.domain.owner()
    }
}

/// Echoes until the route is up (links connect in the background).
#[tokio::test]
async fn three_hosts_route_among_each_other_over_tls() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let mut a = Host::new(root.path(), &ca, 0xa1);
    let mut b = Host::new(root.path(), &ca, 0xb2);
    let mut c = Host::new(root.path(), &ca, 0xc3);
    // Each starts after the hosts it dials.
    c.start().await;
    b.dial(&c);
    b.start().await;
    a.dial(&b);
    a.dial(&c);
    a.start().await;
    let mut on_a = a.app().await;
    let mut on_b = b.app().await;
    let on_c = c.app().await;
    // Host entities and apps, both directions of each link.
    echo_eventually(&mut on_a, b.id()).await;
    echo_eventually(&mut on_a, c.id()).await;
    echo_eventually(&mut on_b, c.id()).await;
    echo_eventually(&mut on_b, a.id()).await;
    let c_app = on_c.id();
    let responder = tokio::spawn(async move {
        let mut on_c = on_c;
        loop {
            if on_c.next().await.is_err() {
                break;
            }
        }
    });
    echo_eventually(&mut on_a, c_app).await;
    echo_eventually(&mut on_b, c_app).await;
    // A plain message app-to-app across hosts keeps its src.
    on_b.send(on_a.id(), Mtype(0x8001), b"from b".to_vec())
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, on_a.receive())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.src(), m.param.as_slice()), (on_b.id(), &b"from b"[..]));
    assert!(
        a.h()
            .remote_routes()
            .get(&b.domain)
            .is_some_and(|(_, up)| *up)
    );
    responder.abort();
    for h in [&mut a, &mut b, &mut c] {
        h.stop().await;
    }
}

/// A rogue peer with a valid certificate speaking the link protocol by hand.
async fn rogue_link(
    addr: SocketAddr,
    files: &HostFiles,
    me: EntityId,
    domains: Vec<Domain>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&files.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("host.tenet").unwrap(), tcp)
        .await
        .unwrap();
    send(
        &mut s,
        LinkFrame::Hello {
            host: me,
            session: 77,
            your_session: 0,
            recv_upto: 0,
            domains,
        },
    )
    .await;
    s
}

async fn send<W: AsyncWriteExt + Unpin>(w: &mut W, f: LinkFrame) {
    let mut buf = Vec::new();
    let at = begin_frame(&mut buf);
    f.encode(&mut buf);
    finish_frame(&mut buf, at);
    w.write_all(&buf).await.unwrap();
    w.flush().await.unwrap();
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Option<LinkFrame> {
    loop {
        if let Some((used, body)) = split_frame(buf, 1 << 17).unwrap() {
            let f = LinkFrame::decode(body).unwrap();
            buf.drain(..used);
            return Some(f);
        }
        if tokio::time::timeout(WAIT, r.read_buf(buf))
            .await
            .ok()?
            .ok()?
            == 0
        {
            return None;
        }
    }
}

#[tokio::test]
async fn rogue_peer_cannot_forge_a_local_card_or_foreign_src() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    // A has a card in domain K.
    let mut a = Host::new(root.path(), &ca, 0xa1);
    let k = dom(0x4b);
    let card_path = a.dir.join("card.store");
    let store = tenet_card::FileStore::create(&card_path, 8192).unwrap();
    let p = tenet_card::Personalization {
        domain: k,
        pin: b"1234".to_vec(),
        puk: b"12345678".to_vec(),
    };
    drop(
        tenet_card::Card::personalize(
            store,
            &p,
            Default::default(),
            Box::new(tenet_card::SeededEntropy::new(1)),
        )
        .unwrap(),
    );
    let mut cfg = a.config();
    cfg.card.virtual_store = Some(card_path);
    a.start_with(&cfg).await;
    let mut watcher = a.app().await;
    watcher
        .tap(tenet_proto::Filter::to(k.owner()))
        .await
        .unwrap();

    let rogue = dom(0x66);
    let files = issue_host(&ca, "rogue", &[rogue]).unwrap();
    let mut s = rogue_link(a.addr(), &files, rogue.owner(), vec![rogue]).await;
    let mut buf = Vec::new();
    assert!(matches!(
        read_frame(&mut s, &mut buf).await,
        Some(LinkFrame::Hello { .. })
    ));
    // 1: src in A's card domain (a privileged-looking PIN change from "an app of the card").
    let forged_card = Message::new(
        EntityId::new(k, Port::new(1)),
        k.owner(),
        Mtype::CHANGE_PIN,
        vec![],
    );
    // 2: src in a domain the rogue never announced (another host's).
    let forged_other = Message::new(
        EntityId::new(dom(0x77), Port::new(1)),
        k.owner(),
        Mtype::ECHO_REQUEST,
        vec![],
    );
    // 3: a privileged mtype to the local card from the rogue's own domain.
    let privileged = Message::new(
        EntityId::new(rogue, Port::new(1)),
        k.owner(),
        Mtype::CHANGE_PIN,
        vec![],
    );
    // 4: an honest echo to the card from the rogue's own domain.
    let honest = Message::new(
        EntityId::new(rogue, Port::new(1)),
        k.owner(),
        Mtype::ECHO_REQUEST,
        b"ok".to_vec(),
    );
    for (seq, m) in [forged_card, forged_other, privileged, honest]
        .into_iter()
        .enumerate()
    {
        send(
            &mut s,
            LinkFrame::Data {
                seq: seq as u64 + 1,
                ack: 0,
                message: m,
            },
        )
        .await;
    }
    // The honest echo is answered over the link; the forged ones never reach the card.
    let reply = loop {
        match read_frame(&mut s, &mut buf).await.expect("link stays up") {
            LinkFrame::Data { message, .. } => break message,
            _ => continue,
        }
    };
    assert_eq!(
        (reply.src(), reply.mtype(), reply.param.as_slice()),
        (k.owner(), Mtype::ECHO_REPLY, &b"ok"[..])
    );
    let stats = a.h().remote_stats().unwrap();
    assert_eq!(
        stats.forged_dropped, 2,
        "srcs outside the rogue's own domain were dropped: {stats:?}"
    );
    assert_eq!(
        stats.guard_dropped, 1,
        "the default guard dropped the privileged mtype: {stats:?}"
    );
    match tokio::time::timeout(WAIT, watcher.next())
        .await
        .unwrap()
        .unwrap()
    {
        tenet_client::Incoming::Tapped { message, .. } => {
            assert_eq!(message.src(), EntityId::new(rogue, Port::new(1)))
        }
        other => panic!("{other:?}"),
    }
    a.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (root.path().join("ca1"), root.path().join("ca2"));
    ensure_ca(&ca1, "CA one").unwrap();
    ensure_ca(&ca2, "CA two").unwrap();
    let mut a = Host::new(root.path(), &ca1, 0xa1);
    let mut m = Host::new(root.path(), &ca2, 0xee);
    a.start().await;
    m.dial(&a);
    m.start().await;
    let mut on_m = m.app().await;
    let err = on_m
        .echo(a.id(), b"", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Undeliverable { .. } | ClientError::Timeout { .. }
        ),
        "{err}"
    );
    assert!(
        !a.h().remote_routes().contains_key(&m.domain),
        "no route was learned"
    );
    assert!(m.h().remote_stats().unwrap().links_refused >= 1);
    a.stop().await;
    m.stop().await;
}

/// A TCP relay the test can cut: every accepted connection is forwarded to
/// `to`; `cut` closes all current ones.
struct Relay {
    addr: SocketAddr,
    cut: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

async fn relay(to: SocketAddr) -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cut = Arc::new(tokio::sync::Notify::new());
    let c2 = cut.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut inbound, _) = l.accept().await.unwrap();
            let cut = c2.clone();
            tokio::spawn(async move {
                let Ok(mut out) = TcpStream::connect(to).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                    _ = cut.notified() => {}
                }
            });
        }
    });
    Relay { addr, cut, task }
}

/// Sends until the daemon stores the message: while a link is down,
/// messages wait in the table, and at its bound the sender is told "queue
/// full" and tries again a little later.
async fn send_until_stored(sender: &mut Capability, dst: EntityId, mtype: Mtype, param: Vec<u8>) {
    loop {
        match sender.send(dst, mtype, param.clone()).await {
            Ok(()) => return,
            Err(ClientError::QueueFull(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn link_cut_mid_stream_loses_and_duplicates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let mut a = Host::new(root.path(), &ca, 0xa1);
    let mut b = Host::new(root.path(), &ca, 0xb2);
    b.start().await;
    let r = relay(b.addr()).await;
    a.dial_addr(&r.addr.to_string());
    a.start().await;
    let mut sender = a.app().await;
    let mut receiver = b.app().await;
    echo_eventually(&mut sender, b.id()).await;
    const N: u32 = 3000;
    /// Sent after the N: what comes before it is all that arrives of them.
    const END: Mtype = Mtype(0x8002);
    let dst = receiver.id();
    let recv = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), receiver.receive())
                .await
                .expect("all arrive")
                .unwrap();
            if m.mtype() == END {
                break;
            }
            if m.mtype() == Mtype(0x8001) {
                got.push(u32::from_be_bytes(m.param[..4].try_into().unwrap()));
            }
        }
        got
    });
    for i in 0..N {
        send_until_stored(&mut sender, dst, Mtype(0x8001), i.to_be_bytes().to_vec()).await;
        if i % 700 == 350 {
            r.cut.notify_waiters();
        }
    }
    // One sender's messages keep their order across the link, resent ones
    // included: a duplicate would arrive before this.
    send_until_stored(&mut sender, dst, END, Vec::new()).await;
    let got = recv.await.unwrap();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "each message once, in order"
    );
    let ups = a.h().remote_stats().unwrap().links_up;
    assert!(
        ups >= 3,
        "the link was cut and restored at least twice mid-stream: {ups} links"
    );
    r.task.abort();
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn restarted_peer_resumes_and_expired_messages_are_undeliverable() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let mut a = Host::new(root.path(), &ca, 0xa1);
    let mut b = Host::new(root.path(), &ca, 0xb2);
    a.ttl = Some(1.0);
    b.start().await;
    a.dial(&b);
    a.start().await;
    let mut on_a = a.app().await;
    echo_eventually(&mut on_a, b.id()).await;
    b.stop().await;
    // While B is down, a message for it waits, then expires.
    let err = on_a
        .echo(b.id(), b"", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Undeliverable {
                reason: tenet_proto::notice::UndeliverableReason::EXPIRED,
                ..
            }
        ),
        "{err}"
    );
    // Back on the address A dials (see Host::start_with).
    b.start().await;
    echo_eventually(&mut on_a, b.id()).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn malformed_or_oversized_frames_close_only_that_link_and_floods_are_limited() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let mut a = Host::new(root.path(), &ca, 0xa1);
    let mut b = Host::new(root.path(), &ca, 0xb2);
    let mut cfg = a.config();
    cfg.remote.rate = Some(50.0);
    cfg.remote.burst = Some(10.0);
    a.start_with(&cfg).await;
    b.dial(&a);
    b.start().await;
    let mut on_b = b.app().await;
    echo_eventually(&mut on_b, a.id()).await;

    let rogue = dom(0x66);
    let files = issue_host(&ca, "rogue", &[rogue]).unwrap();
    // A frame that is not a link frame.
    let mut s = rogue_link(a.addr(), &files, rogue.owner(), vec![rogue]).await;
    let mut buf = Vec::new();
    assert!(matches!(
        read_frame(&mut s, &mut buf).await,
        Some(LinkFrame::Hello { .. })
    ));
    s.write_all(&[0, 0, 0, 3, 0x7f, 1, 2]).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(read_frame(&mut s, &mut buf).await, None, "link closed");
    // A length prefix above the maximum.
    let mut s = rogue_link(a.addr(), &files, rogue.owner(), vec![rogue]).await;
    let mut buf = Vec::new();
    read_frame(&mut s, &mut buf).await;
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(read_frame(&mut s, &mut buf).await, None, "link closed");
    assert!(a.h().remote_stats().unwrap().links_broken >= 2);
    // A flood: far more than the rate allows in an instant.
    let mut s = rogue_link(a.addr(), &files, rogue.owner(), vec![rogue]).await;
    let mut buf = Vec::new();
    read_frame(&mut s, &mut buf).await;
    let m = Message::new(
        EntityId::new(rogue, Port::new(1)),
        a.id(),
        Mtype::ECHO_REPLY,
        vec![],
    );
    for seq in 1..=200u64 {
        send(
            &mut s,
            LinkFrame::Data {
                seq,
                ack: 0,
                message: m.clone(),
            },
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = a.h().remote_stats().unwrap();
        if st.rate_dropped + st.received >= 200 {
            assert!(st.rate_dropped >= 150, "{st:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The honest peer was never disturbed.
    echo_eventually(&mut on_b, a.id()).await;
    a.stop().await;
    b.stop().await;
}

/// `listen = "127.0.0.1:0"`: the host reports the port the system chose
/// (`HostHandle::remote_addr`), and a peer that dials it gets a link; a host
/// without a listener reports none.
#[tokio::test]
async fn a_host_listening_on_port_0_reports_the_port_it_got() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let mut b = Host::new(root.path(), &ca, 0xb7);
    b.start().await;
    let addr = b.h().remote_addr().expect("b listens");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let mut a = Host::new(root.path(), &ca, 0xa7);
    a.dial_addr(&addr.to_string());
    let mut cfg = a.config();
    cfg.remote.listen = None;
    let ha = tenet_host::start(&cfg).await.unwrap();
    assert_eq!(ha.remote_addr(), None);
    let mut on_a = Capability::acquire(ha.socket_path()).await.unwrap();
    echo_eventually(&mut on_a, b.id()).await;
    drop(on_a);
    ha.shutdown().await;
    b.stop().await;
}
