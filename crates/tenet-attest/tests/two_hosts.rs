//! Two host daemons in this process, linked over TLS on loopback, each
//! with an in-process virtual card whose key the card made and whose
//! certificate a CA issued; the attestation applet is plugged in with
//! [`tenet_attest::plug`], the only way the hosts know of it. An app on
//! host A orders card A to attest with card B; the cards do the rest.
//!
//! One test plugs the voucher application in beside it, on the same card.
//!
//! Host B listens on `127.0.0.1:0` and the tests read the bound address
//! from its "accepting host links" event; they wait for the link with the
//! "link up" events of both hosts. Every wait is for an event (a log
//! event, a message) with a deadline; nothing sleeps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pki_types::CertificateDer;
use pki_types::pem::PemObject;
use tenet_attest::msg::{self, AttestResult, Outcome, Peers, Record, Start, sha256};
use tenet_card::{Card, CardLimits, FileStore, Personalization, SystemEntropy};
use tenet_client::card_pin::CardPin;
use tenet_client::wallet::Wallet;
use tenet_client::{Capability, Incoming};
use tenet_host::config::PeerSection;
use tenet_host::plugin::HostBuilder;
use tenet_host::{Config, HostHandle};
use tenet_proto::card::PinOutcome;
use tenet_proto::codec::Codec;
use tenet_proto::notice::Refused;
use tenet_proto::{Domain, EntityId, Filter, Message, Mtype};
use tenet_voucher::model::{Amount, VoucherClass};

/// How long a test waits for anything that should happen.
const WAIT: Duration = Duration::from_secs(10);

const PIN: &[u8] = b"1234";

// ---------------------------------------------------------------- log events

#[path = "../../tenet-host/tests/support/logs.rs"]
mod logs;
use logs::{Logged, capture_logs, logged_where};

/// Waits for the event `message` whose field `field` is `value`.
async fn logged(message: &str, field: &str, value: &str) -> Logged {
    logged_where(&format!("{message:?} with {field} = {value}"), |l| {
        l.message == message && l.field(field) == value
    })
    .await
}

// ---------------------------------------------------------------- hosts

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

/// The CA the hosts and cards are certified by, and another one.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    rogue: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let rogue = dir.path().join("rogue-ca");
        tenet_pki::ensure_ca(&ca, "test CA").unwrap();
        tenet_pki::ensure_ca(&rogue, "another CA").unwrap();
        Self { dir, ca, rogue }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// A running host with a card.
struct Host {
    handle: HostHandle,
    /// The card's id.
    card: EntityId,
    /// The card's certificate (DER).
    certificate: Vec<u8>,
    /// Where it accepts links from other hosts.
    address: String,
}

/// What a test host runs and how its card is certified.
#[derive(Clone, Copy)]
struct Setup<'a> {
    /// The CA that certifies the card.
    issuer: &'a Path,
    /// Whether the voucher application runs too, on the same card.
    vouchers: bool,
}

/// The TTP the cards of a host with vouchers are personalized for (no
/// test here needs it to run).
fn ttp() -> EntityId {
    dom(0x77).owner()
}

/// Personalizes a virtual card of domain `card` in a store file: its key
/// made on the card, its certificate from the CA `setup.issuer`, the test
/// CA as the CA it trusts, and the voucher applet's data if it runs too.
/// Returns the store and the certificate.
fn make_card(pki: &Pki, name: &str, card: Domain, setup: Setup<'_>) -> (PathBuf, Vec<u8>) {
    let store = pki.root().join(format!("{name}.card"));
    let p = Personalization {
        domain: card,
        pin: PIN.to_vec(),
        puk: b"12345678".to_vec(),
    };
    let mut c = Card::personalize(
        FileStore::create(&store, 32 * 1024).unwrap(),
        &p,
        CardLimits::default(),
        Box::new(SystemEntropy),
    )
    .unwrap();
    let key = c.state().public_key.clone();
    let cert = tenet_pki::issue_entity(setup.issuer, c.id(), &key)
        .unwrap()
        .cv;
    let ca = CertificateDer::from_pem_file(pki.ca.join("ca.pem")).unwrap();
    let ca = tenet_pki::cv::Anchor::from_x509(&ca).unwrap().to_bytes();
    c.install_certificates(cert.clone(), ca).unwrap();
    if setup.vouchers {
        c.provision(
            tenet_voucher_app::applet::APPLET_ID,
            tenet_voucher_app::applet::initial_data(ttp(), None),
        )
        .unwrap();
    }
    (store, cert)
}

/// Starts host `name` with software domain `[sw; 12]` and a card of
/// domain `[card; 12]`, accepting links on `127.0.0.1:0` and dialing
/// `peers`, with the attestation applet (and the voucher application, if
/// `setup` says so).
async fn start_host(
    pki: &Pki,
    name: &str,
    (sw, card): (u8, u8),
    setup: Setup<'_>,
    peers: &[&Host],
) -> Host {
    capture_logs();
    let (sw, card) = (dom(sw), dom(card));
    let (store, certificate) = make_card(pki, name, card, setup);
    let files = tenet_pki::issue_host(&pki.ca, name, &[sw, card]).unwrap();
    let mut cfg = Config::default();
    cfg.host.socket = Some(pki.root().join(format!("{name}.sock")));
    cfg.host.state_dir = Some(pki.root().join(format!("{name}-state")));
    cfg.host.domain = Some(sw.to_string());
    cfg.card.virtual_store = Some(store);
    cfg.remote.listen = Some("127.0.0.1:0".into());
    (cfg.remote.ca, cfg.remote.cert, cfg.remote.key) =
        (Some(files.ca), Some(files.cert), Some(files.key));
    cfg.remote.peers = peers
        .iter()
        .map(|p| PeerSection {
            address: p.address.clone(),
            domains: Vec::new(),
        })
        .collect();
    let mut builder = HostBuilder::new(&cfg);
    if setup.vouchers {
        builder = tenet_voucher_app::plug(builder, &cfg, None).unwrap();
    }
    let handle = tenet_attest::plug(builder).start().await.unwrap();
    let host = handle.host_id().to_string();
    let address = logged("accepting host links", "host", &host)
        .await
        .field("address")
        .to_owned();
    Host {
        handle,
        card: card.owner(),
        certificate,
        address,
    }
}

/// Hosts A and B, A dialing B, with the link up both ways. `setup_b` sets up
/// B; A's card is certified by the test CA.
async fn linked(pki: &Pki, (a, b): (u8, u8), setup_b: Setup<'_>) -> (Host, Host) {
    let hb = start_host(pki, "b", (b, b + 1), setup_b, &[]).await;
    let setup_a = Setup {
        issuer: &pki.ca,
        ..setup_b
    };
    let ha = start_host(pki, "a", (a, a + 1), setup_a, &[&hb]).await;
    let (ida, idb) = (ha.handle.host_id(), hb.handle.host_id());
    logged("link up", "host", &idb.to_string()).await;
    logged("link up", "host", &ida.to_string()).await;
    (ha, hb)
}

// ---------------------------------------------------------------- apps

/// An app of `h` that verified its card's PIN.
async fn app(h: &Host) -> Capability {
    let cap = Capability::acquire(h.handle.socket_path()).await.unwrap();
    let mut pin = CardPin::new(cap, h.card);
    assert_eq!(pin.verify(PIN).await.unwrap().outcome, PinOutcome::Verified);
    pin.into_capability()
}

/// The next message for `cap` from `src`, within [`WAIT`].
async fn next_from(cap: &mut Capability, src: EntityId) -> Message {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, cap.receive())
            .await
            .unwrap_or_else(|_| panic!("no message from {src} in time"))
            .unwrap();
        if m.src() == src {
            return m;
        }
    }
}

/// Orders `card` to attest with `peer`; the result the card sends back.
async fn attest(cap: &mut Capability, card: EntityId, peer: EntityId) -> AttestResult {
    cap.send(card, msg::START, Start { peer }.to_bytes())
        .await
        .unwrap();
    let m = next_from(cap, card).await;
    assert_eq!(m.mtype(), msg::RESULT, "{m:?}");
    AttestResult::decode(&m.param).unwrap()
}

/// Who has attested with `card`, as it tells `cap`.
async fn peers(cap: &mut Capability, card: EntityId) -> Vec<Record> {
    cap.send(card, msg::QUERY, Vec::new()).await.unwrap();
    let m = next_from(cap, card).await;
    assert_eq!(m.mtype(), msg::PEERS, "{m:?}");
    Peers::decode(&m.param).unwrap().0
}

/// Sends `mtype` with `param` to `dst`; the refusal that comes back.
async fn refused(cap: &mut Capability, dst: EntityId, mtype: Mtype, param: Vec<u8>) -> String {
    cap.send(dst, mtype, param).await.unwrap();
    let m = next_from(cap, dst).await;
    assert_eq!(m.mtype(), Mtype::REFUSED, "{m:?}");
    let r = Refused::decode(&m.param).unwrap();
    assert_eq!(r.mtype, mtype);
    r.text
}

/// A host with the attestation only, its card certified by `issuer`.
fn plain(issuer: &Path) -> Setup<'_> {
    Setup {
        issuer,
        vouchers: false,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn an_app_starts_it_and_both_cards_record_each_other() {
    let pki = Pki::new();
    let (ha, hb) = linked(&pki, (0x11, 0x21), plain(&pki.ca)).await;
    let mut on_a = app(&ha).await;
    let result = attest(&mut on_a, ha.card, hb.card).await;
    assert_eq!(result.peer, hb.card);
    let Outcome::Attested {
        transcript,
        certificate,
    } = result.outcome
    else {
        panic!("{result:?}")
    };
    assert_eq!(certificate, sha256(&hb.certificate));

    let on_card_a = peers(&mut on_a, ha.card).await;
    let mut on_b = app(&hb).await;
    let on_card_b = peers(&mut on_b, hb.card).await;
    assert_eq!(on_card_a.len(), 1, "{on_card_a:?}");
    assert_eq!(on_card_b.len(), 1, "{on_card_b:?}");
    let (ra, rb) = (on_card_a[0], on_card_b[0]);
    assert_eq!(
        (ra.peer, ra.certificate),
        (hb.card, sha256(&hb.certificate))
    );
    assert_eq!(
        (rb.peer, rb.certificate),
        (ha.card, sha256(&ha.certificate))
    );
    assert_eq!(ra.transcript, transcript);
    assert_eq!(
        rb.transcript, transcript,
        "both recorded the same transcript"
    );
    for r in [ra, rb] {
        assert!(r.at.abs_diff(now()) < 60, "the card's time, from its host");
    }
    ha.handle.shutdown().await;
    hb.handle.shutdown().await;
}

#[tokio::test]
async fn a_card_certified_by_another_ca_is_refused_and_nothing_is_recorded_on_either_side() {
    let pki = Pki::new();
    // Card B holds the right CA certificate, but another CA made its own.
    let (ha, hb) = linked(&pki, (0x12, 0x22), plain(&pki.rogue)).await;
    let mut on_a = app(&ha).await;
    let mut on_b = app(&hb).await;

    // A starts: A refuses B's certificate at B's reply.
    let result = attest(&mut on_a, ha.card, hb.card).await;
    let Outcome::Refused { reason } = &result.outcome else {
        panic!("{result:?}")
    };
    assert!(
        reason.contains(&format!("{} not attested", hb.card)),
        "{reason}"
    );
    assert!(reason.contains("certificate chain"), "{reason}");

    // B starts: B checks A fine, and A refuses B's certificate at B's
    // finish and aborts.
    let result = attest(&mut on_b, hb.card, ha.card).await;
    let Outcome::Aborted { reason } = &result.outcome else {
        panic!("{result:?}")
    };
    assert!(reason.contains("certificate chain"), "{reason}");

    assert!(peers(&mut on_a, ha.card).await.is_empty());
    assert!(peers(&mut on_b, hb.card).await.is_empty());
    ha.handle.shutdown().await;
    hb.handle.shutdown().await;
}

#[tokio::test]
async fn forged_and_replayed_messages_are_refused() {
    let pki = Pki::new();
    let (ha, hb) = linked(&pki, (0x13, 0x23), plain(&pki.ca)).await;
    // A tap on host B sees the protocol's messages go by.
    let mut tap = Capability::acquire(hb.handle.socket_path()).await.unwrap();
    tap.tap(Filter::ANY).await.unwrap();
    let mut on_a = app(&ha).await;
    let result = attest(&mut on_a, ha.card, hb.card).await;
    let Outcome::Attested { transcript, .. } = result.outcome else {
        panic!("{result:?}")
    };
    let mut seen: BTreeMap<Mtype, Message> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while ![msg::REPLY, msg::FINISH, msg::DONE]
        .iter()
        .all(|m| seen.contains_key(m))
    {
        let item = tokio::time::timeout_at(deadline, tap.next())
            .await
            .expect("the tap saw the protocol in time")
            .unwrap();
        if let Incoming::Tapped { message, .. } = item {
            seen.insert(message.mtype(), message);
        }
    }

    // Mallory, an app on host B that has not verified the PIN, replays
    // what it saw, to card B and across the link to card A.
    let mut mallory = Capability::acquire(hb.handle.socket_path()).await.unwrap();
    let replays = [
        (hb.card, msg::FINISH),
        (ha.card, msg::REPLY),
        (ha.card, msg::DONE),
    ];
    for (dst, mtype) in replays {
        let param = seen[&mtype].param.clone();
        let text = refused(&mut mallory, dst, mtype, param).await;
        assert!(
            text.contains(&format!("from {} belongs to no attestation", mallory.id())),
            "{text}"
        );
    }
    // A hello from Mallory with card A's certificate: card B refuses to
    // take A's certificate for Mallory's.
    let hello = msg::Hello {
        n_a: [7; 32],
        certificate: ha.certificate.clone(),
    };
    mallory
        .send(hb.card, msg::HELLO, hello.to_bytes())
        .await
        .unwrap();
    let m = next_from(&mut mallory, hb.card).await;
    assert_eq!(m.mtype(), msg::ABORT);
    let abort = msg::Abort::decode(&m.param).unwrap();
    assert!(abort.reason.contains("does not name"), "{}", abort.reason);

    // Starting and asking are privileged: refused to Mallory on her own
    // host, and dropped by host A's remote-ingress guard on the way to a
    // card of another host.
    let start = Start { peer: ha.card }.to_bytes();
    let text = refused(&mut mallory, hb.card, msg::START, start).await;
    assert!(text.contains("privileged"), "{text}");
    let text = refused(&mut mallory, hb.card, msg::QUERY, Vec::new()).await;
    assert!(text.contains("privileged"), "{text}");
    mallory.send(ha.card, msg::QUERY, Vec::new()).await.unwrap();
    let src = mallory.id().to_string();
    let dropped = logged_where("the query dropped by host A", |l| {
        l.field("src") == src && l.field("mtype") == msg::QUERY.to_string()
    })
    .await;
    assert!(dropped.message.contains("privileged mtype"), "{dropped:?}");

    // Still one record on each card, as the session left it.
    let on_card_a = peers(&mut on_a, ha.card).await;
    let mut on_b = app(&hb).await;
    let on_card_b = peers(&mut on_b, hb.card).await;
    assert_eq!(on_card_a.len(), 1);
    assert_eq!(on_card_b.len(), 1);
    assert_eq!(on_card_a[0].transcript, transcript);
    assert_eq!(on_card_b[0].transcript, transcript);
    ha.handle.shutdown().await;
    hb.handle.shutdown().await;
}

#[tokio::test]
async fn the_voucher_application_runs_beside_it_on_the_same_card() {
    let pki = Pki::new();
    let setup = Setup {
        issuer: &pki.ca,
        vouchers: true,
    };
    let (ha, hb) = linked(&pki, (0x14, 0x24), setup).await;
    let mut wallet = Wallet::open(
        Capability::acquire(ha.handle.socket_path()).await.unwrap(),
        ha.card,
        PIN,
    )
    .await
    .unwrap();
    let coffee = Amount {
        class: VoucherClass {
            issuer: ha.card.domain(),
            promise: "coffee".into(),
        },
        quantity: 5,
    };
    let minted = wallet.mint(coffee.clone()).await.unwrap();
    assert_eq!(minted, std::slice::from_ref(&coffee));

    let mut on_a = app(&ha).await;
    let result = attest(&mut on_a, ha.card, hb.card).await;
    let Outcome::Attested { transcript, .. } = result.outcome else {
        panic!("{result:?}")
    };
    let mut on_b = app(&hb).await;
    let on_card_b = peers(&mut on_b, hb.card).await;
    assert_eq!(on_card_b.len(), 1);
    assert_eq!(
        (on_card_b[0].peer, on_card_b[0].transcript),
        (ha.card, transcript)
    );
    // Each applet kept its own data on the card.
    assert_eq!(wallet.balances().await.unwrap(), [coffee]);
    ha.handle.shutdown().await;
    hb.handle.shutdown().await;
}
