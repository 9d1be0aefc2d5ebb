//! The attack suite: each test mounts one attack on real daemons and checks
//! that it is rejected and that nothing was lost or changed (balances, PIN
//! tries, queued messages, other clients and peers still served).
//! `docs/security.md` maps every guarantee to its tests, here and in the
//! other test files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tenet_card::{Card, FileStore, Personalization, SystemEntropy};
use tenet_client::wallet::Wallet;
use tenet_client::{Capability, ClientError, Incoming};
use tenet_host::config::{PeerSection, TtpSection};
use tenet_host::{Config, HostHandle};
use tenet_pki::{HostFiles, ensure_ca, issue_entity, issue_entity_key, issue_host};
use tenet_proto::app::{ClientFrame, DaemonFrame, ErrorCode, MAX_APP_FRAME};
use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, UnblockPin, VerifyPin};
use tenet_proto::frame::{begin_frame, finish_frame, split_frame};
use tenet_proto::link::{LinkFrame, MAX_LINK_FRAME};
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, Domain, EntityId, Filter, MAX_MESSAGE_LEN, Message, Mtype, Port};
use tenet_voucher::card::{BALANCE_REQUEST, EXCHANGES_REQUEST, MINT, SET_ACCEPTOR, VoucherCard};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{self, Agreement, ExchangeId, Kind, Offer, RecoveryRequest};
use tenet_voucher_app::applet::{APPLET_ID, initial_data};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

// The daemon tests' helpers, shared rather than copied.
#[path = "../../tenet-host/tests/support/mod.rs"]
mod support;
use support::{Raw, WAIT, echo_eventually, error_code, recv};

const PIN: &[u8] = b"1234";
const PUK: &[u8] = b"12345678";

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

/// A daemon's configuration in `dir`, named `name`, with software domain `d`.
fn config(dir: &Path, name: &str, d: Domain) -> Config {
    let mut c = Config::default();
    c.host.socket = Some(dir.join(format!("{name}.sock")));
    c.host.state_dir = Some(dir.join(format!("{name}-state")));
    c.host.domain = Some(d.to_string());
    c
}

/// Adds TLS links to `c`: listens on a port of the system's choosing (the
/// started host reports it) with a certificate from the CA in `ca` naming
/// `domains`.
fn with_tls(c: &mut Config, ca: &Path, name: &str, domains: &[Domain]) {
    let f = issue_host(ca, name, domains).unwrap();
    c.remote.listen = Some("127.0.0.1:0".into());
    (c.remote.ca, c.remote.cert, c.remote.key) = (Some(f.ca), Some(f.cert), Some(f.key));
}

/// Dials the host listening on `addr` (started first).
fn dial(c: &mut Config, addr: SocketAddr) {
    c.remote.peers.push(PeerSection {
        address: addr.to_string(),
        domains: Vec::new(),
    });
}

async fn app(h: &HostHandle) -> Capability {
    Capability::acquire(h.socket_path()).await.unwrap()
}

/// Nothing more waits for `c`: a message `c` sends itself now is the next
/// thing it gets. The table keeps one queue per sender, in order, and
/// serves the queues in turn, those that were waiting first; the daemon
/// writes waiting messages before tap copies. So anything stored for `c`
/// before this message comes first. (What is still on its way, a link's
/// frames not yet read, is not covered: callers first see a message sent
/// after it arrive.)
async fn nothing_more(c: &mut Capability) {
    const END: Mtype = Mtype(0x80ff);
    c.send(c.id(), END, b"end".to_vec()).await.unwrap();
    match tokio::time::timeout(WAIT, c.next())
        .await
        .expect("the message to itself arrives")
        .unwrap()
    {
        Incoming::Message { message, .. } if (message.src(), message.mtype()) == (c.id(), END) => {}
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------- cards

/// A card store personalized for domain `d` with [`PIN`] and [`PUK`]; with
/// `ca`, the card also gets a certificate from that CA (the voucher applet
/// needs one).
/// Host "a" with a virtual card of domain `ca…` (no certificates): the
/// card's domain and the host's config.
fn host_with_card(dir: &Path) -> (Domain, Config) {
    let k = dom(0xca);
    let mut cfg = config(dir, "a", dom(0xa1));
    cfg.card.virtual_store = Some(make_card(dir, k, None));
    (k, cfg)
}

fn make_card(dir: &Path, d: Domain, ca: Option<&Path>) -> PathBuf {
    let path = dir.join(format!("{d}.card"));
    let p = Personalization {
        domain: d,
        pin: PIN.to_vec(),
        puk: PUK.to_vec(),
    };
    let mut c = Card::personalize(
        FileStore::create(&path, 32 * 1024).unwrap(),
        &p,
        Default::default(),
        Box::new(SystemEntropy),
    )
    .unwrap();
    if let Some(ca) = ca {
        let (cert, ca_der) = issue_entity(ca, c.id(), &c.state().public_key.clone())
            .unwrap()
            .card_forms()
            .unwrap();
        c.install_certificates(cert, ca_der).unwrap();
        // Personalized for the TTP 0x77…:0, which `voucher_host` names.
        c.provision(APPLET_ID, initial_data(dom(0x77).owner(), None))
            .unwrap();
    }
    path
}

/// What a card's store holds once its daemon has stopped: PIN tries left,
/// PUK tries left, and the voucher applet's state.
fn card_at_rest(path: &Path) -> (u8, u8, VoucherCard) {
    let c = Card::open(
        FileStore::open(path).unwrap(),
        Default::default(),
        Box::new(SystemEntropy),
    )
    .unwrap();
    let st = c.state();
    let v = st
        .applets
        .get(&APPLET_ID)
        .map(|d| VoucherCard::decode(d).unwrap())
        .unwrap_or_default();
    (st.pin_tries, st.puk_tries, v)
}

/// Sends a PIN message to `card` and returns the card's PIN status answer.
async fn pin(c: &mut Capability, card: EntityId, mtype: Mtype, param: Vec<u8>) -> PinStatus {
    c.send(card, mtype, param).await.unwrap();
    let m = recv(c).await;
    assert_eq!((m.src(), m.mtype()), (card, Mtype::PIN_STATUS), "{m:?}");
    PinStatus::decode(&m.param).unwrap()
}

fn verify_pin(p: &[u8]) -> Vec<u8> {
    VerifyPin { pin: p.to_vec() }.to_bytes()
}

fn amount(issuer: Domain, promise: &str, quantity: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer,
            promise: promise.into(),
        },
        quantity,
    }
}

/// A host with a voucher card of domain `k` (certified by the CA in `ca`),
/// software domain `d`, whose card trusts the TTP `0x77…:0`.
fn voucher_host(dir: &Path, ca: &Path, d: Domain, k: Domain) -> (Config, PathBuf) {
    let card = make_card(dir, k, Some(ca));
    let mut c = config(dir, "v", d);
    c.card.virtual_store = Some(card.clone());
    c.card.ttp = Some(dom(0x77).owner().to_string());
    (c, card)
}

// ---------------------------------------------------------------- raw app client

// ---------------------------------------------------------------- raw TLS peer

/// A TLS client configuration trusting the CA certificate `trust`,
/// presenting `me`'s certificate if given.
fn tls_client(trust: &Path, me: Option<&HostFiles>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(trust).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match me {
        Some(f) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f.cert)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&f.key).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("host.tenet").unwrap(), tcp)
        .await
}

/// A peer with a valid certificate speaking the link protocol by hand: it
/// connects and sends its hello as host `me` serving `domains`.
async fn rogue_link(
    addr: SocketAddr,
    files: &HostFiles,
    me: EntityId,
    domains: Vec<Domain>,
) -> Tls {
    let mut s = tls_connect(addr, tls_client(&files.ca, Some(files)))
        .await
        .unwrap();
    send_frames(
        &mut s,
        &[LinkFrame::Hello {
            host: me,
            session: 77,
            your_session: 0,
            recv_upto: 0,
            domains,
        }],
    )
    .await;
    s
}

/// Writes `frames` in one write.
async fn send_frames<W: AsyncWriteExt + Unpin>(w: &mut W, frames: &[LinkFrame]) {
    let mut buf = Vec::new();
    for f in frames {
        let at = begin_frame(&mut buf);
        f.encode(&mut buf);
        finish_frame(&mut buf, at);
    }
    w.write_all(&buf).await.unwrap();
    w.flush().await.unwrap();
}

/// Data frames numbered from `first`, one per message.
fn data(first: u64, messages: impl IntoIterator<Item = Message>) -> Vec<LinkFrame> {
    messages
        .into_iter()
        .zip(first..)
        .map(|(message, seq)| LinkFrame::Data {
            seq,
            ack: 0,
            message,
        })
        .collect()
}

/// The next link frame, or None when the link ends (or stays silent).
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Option<LinkFrame> {
    loop {
        if let Some((used, body)) = split_frame(buf, MAX_LINK_FRAME).unwrap() {
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

/// The next message the link carries, skipping acknowledgements.
async fn read_message<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Message {
    loop {
        match read_frame(r, buf).await.expect("link stays up") {
            LinkFrame::Data { message, .. } => return message,
            LinkFrame::Ack { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Polls `cond` until it holds, within [`WAIT`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ================================================================ (a) forged src, remote

/// A peer with a valid certificate for its own domain sends messages whose
/// src lies in another connected host's domain and in the receiving host's
/// own domain. All are dropped and counted; the peer's messages from its
/// own domain and the honest host's messages arrive, and nothing else.
#[tokio::test]
async fn a_peer_forging_another_hosts_src_is_dropped_and_that_host_still_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (da, db, dr) = (dom(0xa1), dom(0xb2), dom(0x66));
    let mut ca_cfg = config(dir.path(), "a", da);
    with_tls(&mut ca_cfg, &ca, "a", &[da]);
    let ha = tenet_voucher_app::start(&ca_cfg).await.unwrap();
    let pa = ha.remote_addr().unwrap();
    let mut cb = config(dir.path(), "b", db);
    with_tls(&mut cb, &ca, "b", &[db]);
    dial(&mut cb, pa);
    let hb = tenet_voucher_app::start(&cb).await.unwrap();
    let mut on_a = app(&ha).await;
    let mut on_b = app(&hb).await;
    echo_eventually(&mut on_b, da.owner()).await;

    let files = issue_host(&ca, "rogue", &[dr]).unwrap();
    let mut s = rogue_link(pa, &files, dr.owner(), vec![dr]).await;
    let mut buf = Vec::new();
    assert!(matches!(
        read_frame(&mut s, &mut buf).await,
        Some(LinkFrame::Hello { .. })
    ));
    let to_a =
        |src: EntityId, what: &[u8]| Message::new(src, on_a.id(), Mtype(0x8001), what.to_vec());
    let forged = [
        on_b.id(),                       // an app of the other connected host
        db.owner(),                      // the other host itself
        EntityId::new(da, Port::new(7)), // an app of the receiving host
        da.owner(),                      // the receiving host itself
    ];
    let mut messages: Vec<Message> = forged.iter().map(|f| to_a(*f, b"forged")).collect();
    messages.push(to_a(EntityId::new(dr, Port::new(1)), b"rogue's own"));
    send_frames(&mut s, &data(1, messages)).await;
    on_b.send(on_a.id(), Mtype(0x8001), b"from b".to_vec())
        .await
        .unwrap();

    let mut got = [recv(&mut on_a).await, recv(&mut on_a).await];
    got.sort_by_key(|m| m.param.clone());
    assert_eq!(
        got.iter()
            .map(|m| (m.src(), m.param.as_slice()))
            .collect::<Vec<_>>(),
        vec![
            (on_b.id(), &b"from b"[..]),
            (EntityId::new(dr, Port::new(1)), &b"rogue's own"[..]),
        ]
    );
    nothing_more(&mut on_a).await;
    let st = ha.remote_stats().unwrap();
    assert_eq!(st.forged_dropped, 4, "{st:?}");
    // The honest link carries on both ways.
    on_a.send(on_b.id(), Mtype(0x8001), b"to b".to_vec())
        .await
        .unwrap();
    assert_eq!(recv(&mut on_b).await.param, b"to b");
    ha.shutdown().await;
    hb.shutdown().await;
}

// ================================================================ (b) + (c) forged src, local

/// An app may not borrow the id of an app that verified the PIN: a
/// privileged order or a logout sent under that id is refused as a forgery
/// and never reaches the card; sent under its own id, the card refuses the
/// order. The PIN and the other app's authentication are unchanged.
#[tokio::test]
async fn a_local_app_cannot_act_under_an_authenticated_apps_id() {
    let dir = tempfile::tempdir().unwrap();
    let (k, cfg) = host_with_card(dir.path());
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    let mut alice = app(&h).await;
    assert_eq!(
        pin(&mut alice, k.owner(), Mtype::VERIFY_PIN, verify_pin(PIN))
            .await
            .outcome,
        PinOutcome::Verified
    );
    let mut mallory = Raw::connect(h.socket_path()).await;
    let mallory_id = mallory.acquire().await;
    let (apdus, ..) = h.card_link_stats().unwrap();
    let new_pin = ChangePin {
        new_pin: b"6666".to_vec(),
    }
    .to_bytes();
    for (mtype, param) in [
        (Mtype::CHANGE_PIN, new_pin.clone()),
        (Mtype::LOGOUT, vec![]),
    ] {
        let forged = Message::new(alice.id(), k.owner(), mtype, param);
        assert_eq!(
            error_code(mallory.request(&ClientFrame::Send(forged)).await),
            ErrorCode::FORGED_SRC,
            "{mtype}"
        );
    }
    assert_eq!(
        h.card_link_stats().unwrap().0,
        apdus,
        "no forged message reached the card"
    );
    // Under her own id, the card refuses her: she is not authenticated.
    // (The daemon may push the card's answer before its Ok to the send.)
    let own = Message::new(mallory_id, k.owner(), Mtype::CHANGE_PIN, new_pin);
    mallory.send_bytes(&ClientFrame::Send(own).to_bytes()).await;
    let (mut ok, mut refused) = (false, false);
    while !(ok && refused) {
        match mallory.read().await {
            Some(DaemonFrame::Ok(0)) if !ok => ok = true,
            Some(DaemonFrame::Deliver { message, .. }) if !refused => {
                assert_eq!(
                    (message.src(), message.mtype()),
                    (k.owner(), Mtype::REFUSED)
                );
                let r = Refused::decode(&message.param).unwrap();
                assert!(r.text.contains("not authenticated"), "{}", r.text);
                refused = true;
            }
            other => panic!("{other:?}"),
        }
    }
    // The PIN is the old one, with all its tries...
    let mut carol = app(&h).await;
    assert_eq!(
        pin(&mut carol, k.owner(), Mtype::VERIFY_PIN, verify_pin(PIN)).await,
        PinStatus {
            outcome: PinOutcome::Verified,
            tries_left: 3
        }
    );
    // ...and Alice is still authenticated (the forged logout never arrived).
    let change = ChangePin {
        new_pin: b"2468".to_vec(),
    };
    assert_eq!(
        pin(&mut alice, k.owner(), Mtype::CHANGE_PIN, change.to_bytes())
            .await
            .outcome,
        PinOutcome::Changed
    );
    h.shutdown().await;
}

/// Every privileged voucher order (and the card's own change-pin) from an
/// app that never verified the PIN is refused by the card, naming the
/// cause; balances, exchanges, offers and the acceptor stay as they were.
#[tokio::test]
async fn privileged_orders_from_an_unauthenticated_app_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let k = dom(0xca);
    let (cfg, card) = voucher_host(dir.path(), &ca, dom(0xa1), k);
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    let mut w = Wallet::open(app(&h).await, k.owner(), PIN).await.unwrap();
    w.mint(amount(k, "coffee", 5)).await.unwrap();
    let before = w.balances().await.unwrap();

    let mut mallory = app(&h).await;
    let other = dom(0xbb).owner();
    let offer = Offer {
        knows: None,
        redeem: None,
        initiator: other,
        responder: k.owner(),
        give: amount(dom(0xbb), "ticket", 1),
        want: Some(amount(k, "coffee", 5)),
        n1: [1; 16],
        expires: None,
    };
    let start = msg::StartExchange {
        redeem: false,
        responder: other,
        peer_wallet: mallory.id(),
        give: amount(k, "coffee", 5),
        want: Some(amount(dom(0xbb), "ticket", 1)),
        expires_in: None,
    };
    let orders = [
        (msg::START_EXCHANGE, start.to_bytes()),
        (msg::ACCEPT, offer.to_bytes()),
        (MINT, amount(k, "coffee", 100).to_bytes()),
        (msg::RECOVER, ExchangeId([3; 32]).to_bytes()),
        (SET_ACCEPTOR, mallory.id().to_bytes()),
        (BALANCE_REQUEST, vec![]),
        (EXCHANGES_REQUEST, vec![]),
        (
            Mtype::CHANGE_PIN,
            ChangePin {
                new_pin: b"0000".to_vec(),
            }
            .to_bytes(),
        ),
    ];
    for (mtype, param) in orders {
        mallory.send(k.owner(), mtype, param).await.unwrap();
        let m = recv(&mut mallory).await;
        assert_eq!((m.src(), m.mtype()), (k.owner(), Mtype::REFUSED), "{mtype}");
        let r = Refused::decode(&m.param).unwrap();
        assert_eq!(r.mtype, mtype);
        assert!(r.text.contains("not authenticated"), "{mtype}: {}", r.text);
    }
    nothing_more(&mut mallory).await;
    assert_eq!(w.balances().await.unwrap(), before);
    assert!(w.exchanges().await.unwrap().is_empty());
    drop(w);
    h.shutdown().await;
    let (pin_tries, _, v) = card_at_rest(&card);
    assert_eq!(pin_tries, 3);
    assert_eq!(v.balances.of(&amount(k, "coffee", 0).class), 5);
    assert_eq!(v.acceptor, None);
    assert!(v.offers.is_empty() && v.exchanges.is_empty() && v.accepted.is_empty());
}

/// An app that taps the card's traffic sees that other apps verify, change
/// and unblock the PIN, but never the PIN or PUK itself: those copies carry
/// no param. Knowing no PIN, its privileged order is still refused.
#[tokio::test]
async fn a_tap_never_shows_a_pin_or_puk() {
    let dir = tempfile::tempdir().unwrap();
    let (k, cfg) = host_with_card(dir.path());
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    let mut mallory = app(&h).await;
    let tap = mallory.tap(Filter::to(k.owner())).await.unwrap();
    let mut alice = app(&h).await;
    let secrets: [(Mtype, Vec<u8>); 3] = [
        (Mtype::VERIFY_PIN, verify_pin(PIN)),
        (
            Mtype::CHANGE_PIN,
            ChangePin {
                new_pin: b"8642".to_vec(),
            }
            .to_bytes(),
        ),
        (
            Mtype::UNBLOCK_PIN,
            UnblockPin {
                puk: PUK.to_vec(),
                new_pin: b"9753".to_vec(),
            }
            .to_bytes(),
        ),
    ];
    for (mtype, param) in &secrets {
        let st = pin(&mut alice, k.owner(), *mtype, param.clone()).await;
        assert!(
            matches!(st.outcome, PinOutcome::Verified | PinOutcome::Changed),
            "{mtype}: {st:?}"
        );
    }
    for (mtype, _) in &secrets {
        match tokio::time::timeout(WAIT, mallory.next())
            .await
            .unwrap()
            .unwrap()
        {
            Incoming::Tapped {
                tap: t, message, ..
            } => {
                assert_eq!(
                    (t, message.src(), message.dst(), message.mtype()),
                    (tap, alice.id(), k.owner(), *mtype)
                );
                assert!(message.param.is_empty(), "{mtype}: {:?}", message.param);
            }
            other => panic!("{other:?}"),
        }
    }
    // Knowing no PIN, mallory's own order is refused. Its copy is the next
    // on the tap (copies wait in order): no other copy came in between.
    mallory
        .send(k.owner(), Mtype::CHANGE_PIN, secrets[1].1.clone())
        .await
        .unwrap();
    assert_eq!(recv(&mut mallory).await.mtype(), Mtype::REFUSED);
    match tokio::time::timeout(WAIT, mallory.next())
        .await
        .unwrap()
        .unwrap()
    {
        Incoming::Tapped { message, .. } => {
            assert_eq!(
                (message.src(), message.mtype()),
                (mallory.id(), Mtype::CHANGE_PIN)
            );
            assert!(message.param.is_empty(), "{:?}", message.param);
        }
        other => panic!("{other:?}"),
    }
    nothing_more(&mut mallory).await;
    h.shutdown().await;
}

// ================================================================ (d) PIN brute force

/// Guessing the PIN from ever new connections, across a daemon restart:
/// the third wrong guess blocks the PIN, after which even the right PIN is
/// refused. The PUK restores access; the card's data and port counter are
/// intact.
#[tokio::test]
async fn pin_guessing_is_stopped_across_connections_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (k, cfg) = host_with_card(dir.path());
    let mut ids = Vec::new();
    let mut guess = async |h: &HostHandle, p: &[u8]| {
        let mut c = app(h).await;
        ids.push(c.id());
        pin(&mut c, k.owner(), Mtype::VERIFY_PIN, verify_pin(p)).await
    };
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    let status = |outcome, tries_left| PinStatus {
        outcome,
        tries_left,
    };
    assert_eq!(guess(&h, b"0000").await, status(PinOutcome::Wrong, 2));
    assert_eq!(guess(&h, b"1111").await, status(PinOutcome::Wrong, 1));
    h.shutdown().await;
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    assert_eq!(guess(&h, b"2222").await, status(PinOutcome::Blocked, 0));
    assert_eq!(
        guess(&h, PIN).await,
        status(PinOutcome::Blocked, 0),
        "even the right PIN"
    );
    // Nothing lost: the holder of the PUK sets a new PIN and gets in.
    let mut owner = app(&h).await;
    let unblock = UnblockPin {
        puk: PUK.to_vec(),
        new_pin: b"5678".to_vec(),
    };
    assert_eq!(
        pin(
            &mut owner,
            k.owner(),
            Mtype::UNBLOCK_PIN,
            unblock.to_bytes()
        )
        .await,
        status(PinOutcome::Changed, 3)
    );
    assert_eq!(
        pin(
            &mut owner,
            k.owner(),
            Mtype::VERIFY_PIN,
            verify_pin(b"5678")
        )
        .await,
        status(PinOutcome::Verified, 3)
    );
    ids.push(owner.id());
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "every connection got a fresh id");
    h.shutdown().await;
}

/// Guessing the PUK: ten wrong guesses block it for good (even the right
/// PUK is refused after), and the PIN is untouched throughout.
#[tokio::test]
async fn puk_guessing_blocks_the_puk_and_leaves_the_pin_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (k, cfg) = host_with_card(dir.path());
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    let unblock = |puk: &[u8]| {
        UnblockPin {
            puk: puk.to_vec(),
            new_pin: b"9999".to_vec(),
        }
        .to_bytes()
    };
    for i in 0..10u32 {
        let mut c = app(&h).await;
        let guess = format!("{:08}", 90_000_000 + i);
        assert_eq!(
            pin(
                &mut c,
                k.owner(),
                Mtype::UNBLOCK_PIN,
                unblock(guess.as_bytes())
            )
            .await
            .outcome,
            PinOutcome::WrongPuk
        );
    }
    let mut c = app(&h).await;
    c.send(k.owner(), Mtype::UNBLOCK_PIN, unblock(PUK))
        .await
        .unwrap();
    let m = recv(&mut c).await;
    assert_eq!(m.mtype(), Mtype::REFUSED);
    assert!(
        Refused::decode(&m.param)
            .unwrap()
            .text
            .contains("PUK is blocked")
    );
    assert_eq!(
        pin(&mut c, k.owner(), Mtype::VERIFY_PIN, verify_pin(PIN)).await,
        PinStatus {
            outcome: PinOutcome::Verified,
            tries_left: 3
        },
        "the PIN never changed"
    );
    drop(c);
    h.shutdown().await;
    let card = cfg.card.virtual_store.as_ref().expect("a virtual card");
    let (pin_tries, puk_tries, _) = card_at_rest(card);
    assert_eq!((pin_tries, puk_tries), (3, 0));
}

// ================================================================ (f) remote privilege

/// A peer tries to gain privilege on a local voucher card: it verifies the
/// PIN and unblocks it with the right secrets, sends every privileged
/// order, and sends orders under ids of the card's domain (even the
/// authenticated wallet's). The card answers the PIN messages with "not
/// allowed" and spends no try; the default guard drops the rest. A second
/// peer whose certificate names the card's domain cannot announce it.
/// Balances, exchanges, acceptor and PIN tries are unchanged.
#[tokio::test]
async fn a_remote_peer_gains_no_privilege_on_a_local_card() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (da, k, dr) = (dom(0xa1), dom(0xca), dom(0x66));
    let (mut cfg, card) = voucher_host(dir.path(), &ca, da, k);
    with_tls(&mut cfg, &ca, "a", &[da, k]);
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    let pa = h.remote_addr().unwrap();
    let mut w = Wallet::open(app(&h).await, k.owner(), PIN).await.unwrap();
    w.mint(amount(k, "coffee", 5)).await.unwrap();
    let before = w.balances().await.unwrap();

    let files = issue_host(&ca, "rogue", &[dr]).unwrap();
    let mut s = rogue_link(pa, &files, dr.owner(), vec![dr]).await;
    let mut buf = Vec::new();
    assert!(matches!(
        read_frame(&mut s, &mut buf).await,
        Some(LinkFrame::Hello { .. })
    ));
    let r = EntityId::new(dr, Port::new(1));
    let to_card = |src, mtype, param| Message::new(src, k.owner(), mtype, param);
    let offer = Offer {
        knows: None,
        redeem: None,
        initiator: dr.owner(),
        responder: k.owner(),
        give: amount(dr, "ticket", 1),
        want: Some(amount(k, "coffee", 5)),
        n1: [1; 16],
        expires: None,
    };
    let start = msg::StartExchange {
        redeem: false,
        responder: dr.owner(),
        peer_wallet: r,
        give: amount(k, "coffee", 5),
        want: Some(amount(dr, "ticket", 1)),
        expires_in: None,
    };
    let mut messages = vec![
        to_card(r, Mtype::VERIFY_PIN, verify_pin(PIN)),
        to_card(
            r,
            Mtype::UNBLOCK_PIN,
            UnblockPin {
                puk: PUK.to_vec(),
                new_pin: b"0000".to_vec(),
            }
            .to_bytes(),
        ),
    ];
    let privileged = [
        (
            Mtype::CHANGE_PIN,
            ChangePin {
                new_pin: b"0000".to_vec(),
            }
            .to_bytes(),
        ),
        (msg::START_EXCHANGE, start.to_bytes()),
        (msg::ACCEPT, offer.to_bytes()),
        (MINT, amount(k, "coffee", 100).to_bytes()),
        (msg::RECOVER, ExchangeId([3; 32]).to_bytes()),
        (SET_ACCEPTOR, EntityId::new(k, Port::new(999)).to_bytes()),
        (BALANCE_REQUEST, vec![]),
        (EXCHANGES_REQUEST, vec![]),
    ];
    messages.extend(privileged.iter().map(|(m, p)| to_card(r, *m, p.clone())));
    // Claiming ids of the card's domain: an app's, and the wallet's own.
    messages.push(to_card(
        EntityId::new(k, Port::new(1)),
        Mtype::VERIFY_PIN,
        verify_pin(PIN),
    ));
    messages.push(to_card(w.id(), MINT, amount(k, "coffee", 100).to_bytes()));
    messages.push(to_card(r, Mtype::ECHO_REQUEST, b"done".to_vec()));
    send_frames(&mut s, &data(1, messages)).await;

    // Back over the link: two "not allowed" PIN answers, then the echo.
    for _ in 0..2 {
        let m = read_message(&mut s, &mut buf).await;
        assert_eq!(
            (m.src(), m.dst(), m.mtype()),
            (k.owner(), r, Mtype::PIN_STATUS)
        );
        assert_eq!(
            PinStatus::decode(&m.param).unwrap(),
            PinStatus {
                outcome: PinOutcome::NotAllowed,
                tries_left: 3
            }
        );
    }
    let m = read_message(&mut s, &mut buf).await;
    assert_eq!(
        (m.mtype(), m.param.as_slice()),
        (Mtype::ECHO_REPLY, &b"done"[..])
    );
    // The privileged mtypes fell to the default guard; the ids of the
    // card's domain fell earlier, to the check that a peer's srcs lie in
    // the domains it serves (the guard would drop them too).
    let st = h.remote_stats().unwrap();
    assert_eq!(
        (st.guard_dropped, st.forged_dropped),
        (privileged.len() as u64, 2),
        "{st:?}"
    );

    // A peer whose certificate names the card's domain may not serve it.
    let dr2 = dom(0x67);
    let files2 = issue_host(&ca, "rogue2", &[dr2, k]).unwrap();
    let refused_before = h.remote_stats().unwrap().links_refused;
    let mut s2 = rogue_link(pa, &files2, dr2.owner(), vec![dr2, k]).await;
    let mut buf2 = Vec::new();
    match read_frame(&mut s2, &mut buf2).await {
        Some(LinkFrame::Close { reason }) => assert!(reason.contains("is local here"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.remote_stats().unwrap().links_refused, refused_before + 1);
    let routes = h.remote_routes();
    assert!(
        !routes.contains_key(&k) && !routes.contains_key(&dr2),
        "{routes:?}"
    );

    // Nothing changed: balances, exchanges, and no PIN try was spent.
    assert_eq!(w.balances().await.unwrap(), before);
    assert!(w.exchanges().await.unwrap().is_empty());
    let mut local = app(&h).await;
    assert_eq!(
        pin(
            &mut local,
            k.owner(),
            Mtype::VERIFY_PIN,
            verify_pin(b"0000")
        )
        .await,
        PinStatus {
            outcome: PinOutcome::Wrong,
            tries_left: 2
        },
        "the remote PIN messages spent no try"
    );
    drop((w, local));
    h.shutdown().await;
    let (pin_tries, puk_tries, v) = card_at_rest(&card);
    assert_eq!((pin_tries, puk_tries), (2, 10));
    assert_eq!(v.balances.of(&amount(k, "coffee", 0).class), 5);
    assert_eq!(v.acceptor, None);
    assert!(v.offers.is_empty() && v.exchanges.is_empty());
}

// ================================================================ (g) floods from a peer

/// A peer that never reads nor acknowledges floods a local app that never
/// reads with large messages and floods unknown destinations, so that the
/// host owes it a notice for almost every message. The table holds at most
/// the idle app's bound and twice the peer's (extra notices are dropped and
/// counted); another peer's messages and local traffic still get through,
/// and the idle app later reads, in order, every message that was accepted.
#[tokio::test]
async fn a_flooding_peer_stays_within_its_bounds_and_other_peers_get_through() {
    const PER: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (da, db, dr) = (dom(0xa1), dom(0xb2), dom(0x66));
    let mut ca_cfg = config(dir.path(), "a", da);
    with_tls(&mut ca_cfg, &ca, "a", &[da]);
    ca_cfg.dispatch.per_destination = Some(PER);
    ca_cfg.dispatch.total = Some(64);
    // A small window (what the flooder leaves unacknowledged) and no rate
    // limit to speak of: the table's bounds alone must hold.
    ca_cfg.remote.window = Some(4);
    ca_cfg.remote.rate = Some(1e6);
    ca_cfg.remote.burst = Some(1e6);
    let ha = tenet_voucher_app::start(&ca_cfg).await.unwrap();
    let pa = ha.remote_addr().unwrap();
    let mut cb = config(dir.path(), "b", db);
    with_tls(&mut cb, &ca, "b", &[db]);
    dial(&mut cb, pa);
    let hb = tenet_voucher_app::start(&cb).await.unwrap();
    let mut probe = app(&ha).await;
    let mut idle = app(&ha).await;
    let mut on_b = app(&hb).await;
    echo_eventually(&mut on_b, da.owner()).await;

    let files = issue_host(&ca, "rogue", &[dr]).unwrap();
    let mut s = rogue_link(pa, &files, dr.owner(), vec![dr]).await;
    let r = EntityId::new(dr, Port::new(1));
    const BIG: u32 = 100;
    const NOWHERE: u32 = 300;
    let mut messages: Vec<Message> = (0..BIG)
        .map(|i| {
            let mut p = vec![0; 60_000];
            p[..4].copy_from_slice(&i.to_be_bytes());
            Message::new(r, idle.id(), Mtype(0x8001), p)
        })
        .collect();
    let nowhere = EntityId::new(da, Port::new(999_999));
    messages.extend((0..NOWHERE).map(|_| Message::new(r, nowhere, Mtype(0x8002), vec![])));
    // The link is processed in order: when this arrives, the flood is in.
    messages.push(Message::new(r, probe.id(), Mtype(0x8003), b"last".to_vec()));
    send_frames(&mut s, &data(1, messages)).await;
    let m = recv(&mut probe).await;
    assert_eq!((m.src(), m.param.as_slice()), (r, &b"last"[..]));

    let st = ha.stats();
    let queued = ha.queued();
    assert!(
        queued <= PER + 2 * PER,
        "the idle app's queue and the flooder's notices only: {queued} queued, {st:?}"
    );
    assert!(st.notices_dropped > 0, "{st:?}");
    // Another peer and local apps get through.
    for i in 0..20u8 {
        on_b.send(probe.id(), Mtype(0x8004), vec![i]).await.unwrap();
    }
    for i in 0..20u8 {
        let m = recv(&mut probe).await;
        assert_eq!((m.src(), m.param.as_slice()), (on_b.id(), &[i][..]));
    }
    probe
        .send(on_b.id(), Mtype(0x8005), b"back".to_vec())
        .await
        .unwrap();
    assert_eq!(recv(&mut on_b).await.param, b"back");
    probe.echo(da.owner(), b"", WAIT).await.unwrap();
    // The idle app reads every message that was accepted for it, in order:
    // the rest were refused (queue full), not lost on the way.
    let refused_for_idle = st.refused_full - st.notices_dropped;
    let accepted = BIG as u64 - refused_for_idle;
    assert!(accepted >= PER as u64, "{st:?}");
    let mut last = None;
    for _ in 0..accepted {
        let m = recv(&mut idle).await;
        let i = u32::from_be_bytes(m.param[..4].try_into().unwrap());
        assert!(last.is_none_or(|l| i > l), "in order");
        last = Some(i);
    }
    nothing_more(&mut idle).await;
    ha.shutdown().await;
    hb.shutdown().await;
}

/// A peer with a valid certificate reconnects again and again under new
/// host ids, each hello refused (its domain is already served by its first
/// link, or not named by its certificate). Refused hellos leave no peer
/// state behind, and the peer's first host id is still welcome.
#[tokio::test]
async fn refused_hellos_leave_no_peer_state_behind() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (da, dr) = (dom(0xa1), dom(0x66));
    let mut cfg = config(dir.path(), "a", da);
    with_tls(&mut cfg, &ca, "a", &[da]);
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    let pa = h.remote_addr().unwrap();
    let files = issue_host(&ca, "rogue", &[dr]).unwrap();
    let mut buf = Vec::new();
    let mut s = rogue_link(pa, &files, dr.owner(), vec![dr]).await;
    assert!(matches!(
        read_frame(&mut s, &mut buf).await,
        Some(LinkFrame::Hello { .. })
    ));
    drop(s);
    assert_eq!(h.remote_peers(), 1);
    for i in 1..=20u32 {
        let (host, domains) = if i % 4 == 0 {
            (dom(0x99).owner(), vec![dom(0x99)])
        } else {
            (EntityId::new(dr, Port::new(i)), vec![dr])
        };
        let mut s = rogue_link(pa, &files, host, domains).await;
        let mut buf = Vec::new();
        match read_frame(&mut s, &mut buf).await {
            Some(LinkFrame::Close { reason }) => assert!(
                reason.contains("already served") || reason.contains("not authorized"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(h.remote_stats().unwrap().links_refused, 20);
    assert_eq!(h.remote_peers(), 1, "no state for refused hellos");
    let mut s = rogue_link(pa, &files, dr.owner(), vec![dr]).await;
    let mut buf = Vec::new();
    assert!(matches!(
        read_frame(&mut s, &mut buf).await,
        Some(LinkFrame::Hello { .. })
    ));
    assert_eq!(h.remote_peers(), 1);
    h.shutdown().await;
}

/// A peer floods the TTP with recovery requests that cost a signature check
/// each. Requests beyond the TTP's queue (`dispatch.per_destination`) are
/// refused as "busy" instead of piling up in memory; the TTP host's entity
/// keeps answering another peer.
#[tokio::test]
async fn a_flood_of_recovery_requests_finds_the_ttps_queue_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (dt, db, dr) = (dom(0x77), dom(0xb2), dom(0x66));
    let mut ct = config(dir.path(), "t", dt);
    with_tls(&mut ct, &ca, "t", &[dt]);
    ct.dispatch.per_destination = Some(64);
    ct.remote.rate = Some(1e6);
    ct.remote.burst = Some(1e6);
    let tf = issue_entity_key(&ca, "ttp", dt.owner()).unwrap();
    ct.ttp = Some(TtpSection {
        key: tf.key,
        cert: tf.cert,
        ca: tf.ca,
        database: None,
        postgres: None,
    });
    let ht = tenet_voucher_app::start(&ct).await.unwrap();
    let pt = ht.remote_addr().unwrap();
    let mut cb = config(dir.path(), "b", db);
    with_tls(&mut cb, &ca, "b", &[db]);
    dial(&mut cb, pt);
    let hb = tenet_voucher_app::start(&cb).await.unwrap();
    let mut on_b = app(&hb).await;
    echo_eventually(&mut on_b, dt.owner()).await;

    // Requests in the rogue's own name, with its real certificate and
    // signatures that do not verify.
    let files = issue_host(&ca, "rogue", &[dr]).unwrap();
    let rcard = issue_entity_key(&ca, "rogue-card", dr.owner()).unwrap();
    let cert = CertificateDer::from_pem_file(&rcard.cert).unwrap().to_vec();
    let requests: Vec<Message> = (0..2000u32)
        .map(|i| {
            let mut n1 = [0; 16];
            n1[..4].copy_from_slice(&i.to_be_bytes());
            let offer = Offer {
                knows: None,
                redeem: None,
                initiator: dr.owner(),
                responder: dr.owner(),
                give: amount(dr, "ticket", 1),
                want: Some(amount(dr, "coffee", 1)),
                n1,
                expires: None,
            };
            let req = RecoveryRequest {
                kind: Kind::Resolve,
                agreement: Agreement {
                    knows: None,
                    delegation: None,
                    offer_digest: offer.digest(),
                    id: ExchangeId(offer.digest()),
                    signature: vec![0x30, 0x44, 2, 0x20, 1],
                    certificate: cert.clone(),
                },
                offer,
                signature: vec![0x30; 70],
                certificate: cert.clone(),
            };
            Message::new(
                dr.owner(),
                dt.owner(),
                msg::RECOVERY_REQUEST,
                req.to_bytes(),
            )
        })
        .collect();
    let mut s = rogue_link(pt, &files, dr.owner(), vec![dr]).await;
    send_frames(&mut s, &data(1, requests)).await;
    eventually("the TTP refuses requests beyond its queue", || {
        ht.service_busy() > 0
    })
    .await;
    on_b.echo(dt.owner(), b"still here", WAIT)
        .await
        .expect("the TTP host's entity answers another peer");
    ht.shutdown().await;
    hb.shutdown().await;
}

// ================================================================ (h) oversized messages

/// An oversized message on the app socket (inside a frame the socket
/// accepts) is refused and the connection stays usable; a frame above the
/// socket's maximum closes that connection. On a host link, a frame above
/// the maximum closes only that link; a message of exactly the maximum
/// passes. Other apps and peers are not disturbed, and nothing oversized is
/// stored.
#[tokio::test]
async fn oversized_messages_are_refused_on_the_app_socket_and_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (da, db, dr) = (dom(0xa1), dom(0xb2), dom(0x66));
    let mut ca_cfg = config(dir.path(), "a", da);
    with_tls(&mut ca_cfg, &ca, "a", &[da]);
    let ha = tenet_voucher_app::start(&ca_cfg).await.unwrap();
    let pa = ha.remote_addr().unwrap();
    let mut cb = config(dir.path(), "b", db);
    with_tls(&mut cb, &ca, "b", &[db]);
    dial(&mut cb, pa);
    let hb = tenet_voucher_app::start(&cb).await.unwrap();
    let mut target = app(&ha).await;
    let mut on_b = app(&hb).await;
    echo_eventually(&mut on_b, da.owner()).await;

    // The app socket.
    let mut raw = Raw::connect(ha.socket_path()).await;
    let id = raw.acquire().await;
    let mut body = vec![0x02];
    Message::new(
        id,
        target.id(),
        Mtype(0x8001),
        vec![7; MAX_MESSAGE_LEN - 33],
    )
    .encode(&mut body);
    assert!(body.len() <= MAX_APP_FRAME);
    raw.send_bytes(&body).await;
    let e = raw.read().await.unwrap();
    assert!(
        matches!(&e, DaemonFrame::Error { code, text } if *code == ErrorCode::MALFORMED && text.contains("65536")),
        "{e:?}"
    );
    let ok = Message::new(id, target.id(), Mtype(0x8001), b"fits".to_vec());
    assert_eq!(
        raw.request(&ClientFrame::Send(ok)).await,
        DaemonFrame::Ok(0)
    );
    raw.s
        .write_all(&(MAX_APP_FRAME as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    assert_eq!(error_code(raw.read().await.unwrap()), ErrorCode::TOO_LARGE);
    assert_eq!(raw.read().await, None, "connection closed");
    let m = recv(&mut target).await;
    assert_eq!((m.src(), m.param.as_slice()), (id, &b"fits"[..]));

    // A host link.
    let files = issue_host(&ca, "rogue", &[dr]).unwrap();
    let mut s = rogue_link(pa, &files, dr.owner(), vec![dr]).await;
    let mut buf = Vec::new();
    assert!(matches!(
        read_frame(&mut s, &mut buf).await,
        Some(LinkFrame::Hello { .. })
    ));
    let r = EntityId::new(dr, Port::new(1));
    let largest = Message::new(r, target.id(), Mtype(0x8001), vec![1; MAX_MESSAGE_LEN - 34]);
    send_frames(&mut s, &data(1, [largest])).await;
    let m = recv(&mut target).await;
    assert_eq!((m.src(), m.param.len()), (r, MAX_MESSAGE_LEN - 34));
    let mut frame = (MAX_LINK_FRAME as u32 + 1).to_be_bytes().to_vec();
    frame.push(0x02);
    frame.extend_from_slice(&2u64.to_be_bytes());
    frame.extend_from_slice(&0u64.to_be_bytes());
    Message::new(r, target.id(), Mtype(0x8001), vec![2; MAX_MESSAGE_LEN - 33]).encode(&mut frame);
    s.write_all(&frame).await.unwrap();
    s.flush().await.unwrap();
    loop {
        match read_frame(&mut s, &mut buf).await {
            None => break,
            Some(LinkFrame::Ack { .. }) => {}
            Some(other) => panic!("{other:?}"),
        }
    }
    assert!(ha.remote_stats().unwrap().links_broken >= 1);
    on_b.send(target.id(), Mtype(0x8001), b"from b".to_vec())
        .await
        .unwrap();
    let m = recv(&mut target).await;
    assert_eq!((m.src(), m.param.as_slice()), (on_b.id(), &b"from b"[..]));
    nothing_more(&mut target).await;
    ha.shutdown().await;
    hb.shutdown().await;
}

// ================================================================ (i) slow clients

/// An app that never reads: messages for it wait in the table up to its
/// bound, then its senders get "queue full". Meanwhile other apps talk and
/// the sender itself is served; when the slow app reads at last it gets
/// every accepted message, in order, and no more.
#[tokio::test]
async fn an_app_that_never_reads_holds_up_no_one_and_loses_nothing() {
    const PER: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "a", dom(0xa1));
    cfg.dispatch.per_destination = Some(PER);
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    let mut slow = app(&h).await;
    let mut sender = app(&h).await;
    let mut accepted = 0u32;
    loop {
        let mut p = vec![0; 60_000];
        p[..4].copy_from_slice(&accepted.to_be_bytes());
        match sender.send(slow.id(), Mtype(0x8001), p).await {
            Ok(()) => accepted += 1,
            Err(ClientError::QueueFull(_)) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 1000, "the queue never filled");
    }
    assert!(h.queued() <= PER, "{} queued", h.queued());
    let (mut a, mut b) = (app(&h).await, app(&h).await);
    for i in 0..50u8 {
        a.send(b.id(), Mtype(0x8002), vec![i]).await.unwrap();
        assert_eq!(recv(&mut b).await.param, [i]);
    }
    sender.echo(h.host_id(), b"", WAIT).await.unwrap();
    for i in 0..accepted {
        let m = recv(&mut slow).await;
        assert_eq!(u32::from_be_bytes(m.param[..4].try_into().unwrap()), i);
    }
    nothing_more(&mut slow).await;
    sender
        .send(slow.id(), Mtype(0x8001), vec![1])
        .await
        .expect("room again");
    h.shutdown().await;
}

/// An app that sends requests and never reads the replies: once about
/// 1 MiB of replies waits for it, the daemon stops reading its requests, so
/// its writes stall instead of growing the daemon's memory. Other apps are
/// served meanwhile; when the app reads, every request it sent has its
/// reply.
#[tokio::test]
async fn an_app_that_never_reads_its_replies_is_no_longer_read() {
    let dir = tempfile::tempdir().unwrap();
    let h = tenet_voucher_app::start(&config(dir.path(), "a", dom(0xa1)))
        .await
        .unwrap();
    let mut raw = Raw::connect(h.socket_path()).await;
    raw.acquire().await;
    // Each request is 9 bytes; each reply (an error naming the unknown
    // subscription) is several times that.
    let mut one = Vec::new();
    let at = begin_frame(&mut one);
    ClientFrame::Unsubscribe(tenet_proto::app::SubscriptionId(999)).encode(&mut one);
    finish_frame(&mut one, at);
    let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1024).collect();
    const LIMIT: usize = 8 << 20;
    let mut written = 0usize;
    let stalled = loop {
        assert!(
            written < LIMIT,
            "the daemon read {written} bytes of requests without their replies being read"
        );
        match tokio::time::timeout(Duration::from_secs(1), raw.s.writable()).await {
            Err(_) => break true,
            Ok(r) => r.unwrap(),
        }
        let off = written % chunk.len();
        match raw.s.try_write(&chunk[off..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert!(stalled);
    let mut other = app(&h).await;
    other
        .echo(h.host_id(), b"", WAIT)
        .await
        .expect("others are served");
    // Finish the last request, then read every reply.
    let rest = (one.len() - written % one.len()) % one.len();
    let sent = written.div_ceil(one.len());
    let s = raw.s;
    let (mut rd, mut wr) = s.into_split();
    let tail = one[one.len() - rest..].to_vec();
    let writer = tokio::spawn(async move { wr.write_all(&tail).await.map(|_| wr) });
    let mut buf = Vec::new();
    let mut replies = 0usize;
    while replies < sent {
        if let Some((used, body)) = split_frame(&buf, MAX_APP_FRAME).unwrap() {
            match DaemonFrame::decode(body).unwrap() {
                DaemonFrame::Error { code, .. } => assert_eq!(code, ErrorCode::NO_SUCH_ID),
                other => panic!("{other:?}"),
            }
            buf.drain(..used);
            replies += 1;
            continue;
        }
        let n = tokio::time::timeout(WAIT, rd.read_buf(&mut buf))
            .await
            .expect("replies keep coming")
            .unwrap();
        assert!(n > 0, "connection closed after {replies} of {sent} replies");
    }
    // One reply per request: replies come in the order of the requests, so
    // the next frame answers a request sent after them all (naming another
    // subscription).
    let mut wr = writer.await.unwrap().unwrap();
    let mut last = Vec::new();
    let at = begin_frame(&mut last);
    ClientFrame::Unsubscribe(tenet_proto::app::SubscriptionId(998)).encode(&mut last);
    finish_frame(&mut last, at);
    wr.write_all(&last).await.unwrap();
    let next = loop {
        if let Some((_, body)) = split_frame(&buf, MAX_APP_FRAME).unwrap() {
            break DaemonFrame::decode(body).unwrap();
        }
        let n = tokio::time::timeout(WAIT, rd.read_buf(&mut buf))
            .await
            .expect("the last request is answered")
            .unwrap();
        assert!(n > 0, "connection closed before the last reply");
    };
    match next {
        DaemonFrame::Error { code, text } => {
            assert_eq!(code, ErrorCode::NO_SUCH_ID);
            assert!(text.contains("998"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    h.shutdown().await;
}

/// Clients that connect and never acquire, or send half a frame and stall,
/// hold up no one; a stalled frame completed later is handled normally.
#[tokio::test]
async fn half_a_frame_holds_up_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let h = tenet_voucher_app::start(&config(dir.path(), "a", dom(0xa1)))
        .await
        .unwrap();
    let mut target = app(&h).await;
    let _silent: Vec<UnixStream> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(UnixStream::connect(h.socket_path()).await.unwrap());
        }
        v
    };
    let mut stalled = Vec::new();
    for i in 0..10u8 {
        let mut raw = Raw::connect(h.socket_path()).await;
        let id = raw.acquire().await;
        let mut frame = Vec::new();
        let at = begin_frame(&mut frame);
        ClientFrame::Send(Message::new(
            id,
            target.id(),
            Mtype(0x8001),
            vec![i; 40_000],
        ))
        .encode(&mut frame);
        finish_frame(&mut frame, at);
        let half = frame.len() / 2;
        raw.s.write_all(&frame[..half]).await.unwrap();
        stalled.push((raw, id, frame[half..].to_vec()));
    }
    let (mut a, mut b) = (app(&h).await, app(&h).await);
    for i in 0..50u8 {
        a.send(b.id(), Mtype(0x8002), vec![i]).await.unwrap();
        assert_eq!(recv(&mut b).await.param, [i]);
    }
    a.echo(h.host_id(), b"", WAIT).await.unwrap();
    nothing_more(&mut target).await;
    // The stalled senders finish their frames: each message arrives once.
    for (raw, _, rest) in &mut stalled {
        raw.s.write_all(rest).await.unwrap();
        assert_eq!(raw.read().await, Some(DaemonFrame::Ok(0)));
    }
    let mut from: Vec<EntityId> = Vec::new();
    for _ in 0..stalled.len() {
        let m = recv(&mut target).await;
        assert_eq!(m.param.len(), 40_000);
        from.push(m.src());
    }
    from.sort();
    let mut ids: Vec<EntityId> = stalled.iter().map(|(_, id, _)| *id).collect();
    ids.sort();
    assert_eq!(from, ids);
    nothing_more(&mut target).await;
    h.shutdown().await;
}

/// A tap whose app never reads: copies beyond `dispatch.tap_queue` are
/// skipped and counted, the traffic it observes is not slowed down or lost,
/// and the tapping app learns how many copies it missed.
#[tokio::test]
async fn a_tap_that_is_never_read_skips_copies_and_holds_up_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "a", dom(0xa1));
    cfg.dispatch.tap_queue = Some(8);
    let h = tenet_voucher_app::start(&cfg).await.unwrap();
    let mut watcher = app(&h).await;
    let (mut a, mut b) = (app(&h).await, app(&h).await);
    let tap = watcher
        .tap(Filter {
            src: Some(a.id()),
            ..Filter::ANY
        })
        .await
        .unwrap();
    const N: u64 = 100;
    for i in 0..N {
        let mut p = vec![0; 60_000];
        p[0] = i as u8;
        a.send(b.id(), Mtype(0x8001), p).await.unwrap();
        assert_eq!(recv(&mut b).await.param[0], i as u8);
    }
    assert!(h.stats().tap_skipped > 0, "{:?}", h.stats());
    let (mut copies, mut missed) = (0u64, 0u64);
    while copies + missed < N {
        match tokio::time::timeout(WAIT, watcher.next())
            .await
            .expect("tap items in time")
            .unwrap()
        {
            Incoming::Tapped {
                tap: t, message, ..
            } => {
                assert_eq!((t, message.src()), (tap, a.id()));
                copies += 1;
            }
            Incoming::Lagged { tap: t, missed: n } => {
                assert_eq!(t, tap);
                missed += n;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(copies + missed, N);
    assert!(missed > 0);
    h.shutdown().await;
}

// ================================================================ (j) TLS

/// A client presenting a certificate from another CA, or none at all, is
/// refused by the listening host (which verifies client certificates): no
/// hello comes back, the refusal is counted, no route is learned, and an
/// honest peer keeps its link.
#[tokio::test]
async fn tls_clients_without_a_certificate_from_the_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other-ca"));
    ensure_ca(&ca, "test CA").unwrap();
    ensure_ca(&other_ca, "another CA").unwrap();
    let (da, db, dr) = (dom(0xa1), dom(0xb2), dom(0x66));
    let mut ca_cfg = config(dir.path(), "a", da);
    with_tls(&mut ca_cfg, &ca, "a", &[da]);
    let ha = tenet_voucher_app::start(&ca_cfg).await.unwrap();
    let pa = ha.remote_addr().unwrap();
    let mut cb = config(dir.path(), "b", db);
    with_tls(&mut cb, &ca, "b", &[db]);
    dial(&mut cb, pa);
    let hb = tenet_voucher_app::start(&cb).await.unwrap();
    let mut on_b = app(&hb).await;
    echo_eventually(&mut on_b, da.owner()).await;
    let before = ha.remote_stats().unwrap();

    let foreign = issue_host(&other_ca, "rogue", &[dr]).unwrap();
    let trust_a = issue_host(&ca, "unused", &[dom(0x55)]).unwrap().ca;
    for me in [Some(&foreign), None] {
        // The rogue trusts A's CA, so its own side of the handshake passes.
        let Ok(mut s) = tls_connect(pa, tls_client(&trust_a, me)).await else {
            continue;
        };
        let hello = LinkFrame::Hello {
            host: dr.owner(),
            session: 1,
            your_session: 0,
            recv_upto: 0,
            domains: vec![dr],
        };
        let mut buf = Vec::new();
        let at = begin_frame(&mut buf);
        hello.encode(&mut buf);
        finish_frame(&mut buf, at);
        let _ = s.write_all(&buf).await;
        let _ = s.flush().await;
        buf.clear();
        assert_eq!(read_frame(&mut s, &mut buf).await, None, "no hello back");
    }
    eventually("both handshakes are counted as refused", || {
        ha.remote_stats().unwrap().links_refused >= before.links_refused + 2
    })
    .await;
    let after = ha.remote_stats().unwrap();
    assert_eq!(after.links_up, before.links_up, "{after:?}");
    assert!(!ha.remote_routes().contains_key(&dr));
    on_b.echo(da.owner(), b"", WAIT)
        .await
        .expect("the honest link is up");
    ha.shutdown().await;
    hb.shutdown().await;
}

/// The owner of a host with a card cannot swap the TTP the card was
/// personalized for: `[card] ttp` naming another TTP, or naming one for a
/// card personalized without a TTP, stops the daemon at startup with a
/// clear error. Naming the card's own TTP is a check that passes.
#[tokio::test]
async fn a_host_config_that_swaps_the_cards_ttp_fails_to_start() {
    let (ttp, rogue) = (dom(0x77).owner(), dom(0x66).owner());
    let refused = |cfg: Config| async move {
        match tenet_voucher_app::start(&cfg).await {
            Ok(h) => {
                h.shutdown().await;
                panic!("the daemon started with [card] ttp = {:?}", cfg.card.ttp)
            }
            Err(e) => e.to_string(),
        }
    };

    // Personalized for 0x77…:0; the host names 0x66…:0.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (mut cfg, card) = voucher_host(dir.path(), &ca, dom(0xa1), dom(0xca));
    cfg.card.ttp = Some(rogue.to_string());
    let err = refused(cfg.clone()).await;
    assert!(
        err.contains(&format!(
            "[card] ttp = \"{rogue}\": the card was personalized for TTP {ttp}; the host may not swap it for {rogue}"
        )) && err.contains(&card.display().to_string()),
        "{err}"
    );
    // Its own TTP: a check that passes.
    cfg.card.ttp = Some(ttp.to_string());
    tenet_voucher_app::start(&cfg)
        .await
        .unwrap()
        .shutdown()
        .await;

    // Personalized with the TTP's certificate pinned: the host must name
    // the TTP that certificate names.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let path = make_card(dir.path(), dom(0xcb), Some(&ca));
    let rogue_cert = issue_entity_key(&ca, "rogue", rogue).unwrap();
    let rogue_cert = tenet_pki::cv::from_pem(&std::fs::read(&rogue_cert.cert).unwrap()).unwrap();
    {
        let mut c = Card::open(
            FileStore::open(&path).unwrap(),
            Default::default(),
            Box::new(SystemEntropy),
        )
        .unwrap();
        c.provision(APPLET_ID, initial_data(ttp, Some(rogue_cert)))
            .unwrap();
    }
    let mut cfg = config(dir.path(), "p", dom(0xa2));
    cfg.card.virtual_store = Some(path);
    cfg.card.ttp = Some(ttp.to_string());
    let err = refused(cfg).await;
    assert!(
        err.contains(&format!(
            "the TTP certificate pinned on the card does not name {ttp}"
        )),
        "{err}"
    );

    // Personalized without a TTP: the host may not choose one.
    let dir = tempfile::tempdir().unwrap();
    let (_, mut cfg) = host_with_card(dir.path());
    cfg.card.ttp = Some(rogue.to_string());
    let err = refused(cfg).await;
    assert!(
        err.contains("the card has no TTP installed, so the host may not choose one")
            && err.contains("--ttp-cert"),
        "{err}"
    );
}
