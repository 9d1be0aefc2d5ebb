//! The TTP cannot be crowded out by one peer: while one host floods it with
//! recovery requests that do not hold (in someone else's name, or with
//! signatures that do not verify), an honest resolve from another host is
//! decided after at most a few of them, not after the whole flood.
//!
//! What the TTP did, and in which order, is read from a tap on its host:
//! every request it receives and every answer it sends passes the dispatch
//! table there, in order. No timing is asserted.

use std::net::SocketAddr;
use std::path::Path;

use tenet_client::{Capability, Incoming};
use tenet_host::Config;
use tenet_host::config::{PeerSection, TtpSection};
use tenet_pki::{ensure_ca, issue_entity_key, issue_host};
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, Domain, EntityId, Filter, Message, Mtype};
use tenet_voucher::crypto::{Crypto, KeyCrypto};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{self, Admission, Agreement, ExchangeId, Kind, Offer, RecoveryRequest};

// The daemon tests' helpers, shared rather than copied.
#[path = "../../tenet-host/tests/support/mod.rs"]
mod support;
use support::{WAIT, echo_eventually, recv};

/// Bogus requests in the flood.
const FLOOD: usize = 4000;

/// Bogus requests waiting at the TTP when the honest one is sent: with one
/// queue for all, the honest request waits for at least these.
const BACKLOG: usize = 300;

/// Bounds on every host, above the flood, so that the whole flood waits in
/// the TTP's queue (with one queue for all, in front of the honest request)
/// and nothing is refused as busy.
const ROOM: usize = 8192;

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

/// A host named `name` with software domain `d`, linked over TLS: it
/// listens on a port of the system's choosing (the started host reports it)
/// and dials `peers`.
fn host(dir: &Path, ca: &Path, name: &str, d: Domain, peers: &[SocketAddr]) -> Config {
    let f = issue_host(ca, name, &[d]).unwrap();
    let mut c = Config::default();
    c.host.socket = Some(dir.join(format!("{name}.sock")));
    c.host.state_dir = Some(dir.join(format!("{name}-state")));
    c.host.domain = Some(d.to_string());
    c.remote.listen = Some("127.0.0.1:0".into());
    (c.remote.ca, c.remote.cert, c.remote.key) = (Some(f.ca), Some(f.cert), Some(f.key));
    c.remote.peers = peers
        .iter()
        .map(|p| PeerSection {
            address: p.to_string(),
            domains: Vec::new(),
        })
        .collect();
    c.dispatch.per_destination = Some(ROOM);
    c.dispatch.tap_queue = Some(2 * ROOM);
    c
}

/// Keys and a card's certificate from the CA in `ca` for the card `id`.
fn keys(ca: &Path, name: &str, id: EntityId) -> KeyCrypto {
    let f = tenet_pki::issue_card_key(ca, name, id).unwrap();
    let read = |p: &Path| std::fs::read(p).unwrap();
    KeyCrypto::from_pem(&read(&f.key), &read(&f.cert), &read(&f.ca)).unwrap()
}

/// A recovery request of `kind` for an exchange of `offer` agreed by the
/// responder `r`, signed over `signed` by `requester`.
fn request(
    kind: Kind,
    offer: Offer,
    n2: u8,
    r: &mut KeyCrypto,
    requester: &mut KeyCrypto,
    signed: &[u8],
) -> Vec<u8> {
    let id = ExchangeId::of_n2(&[n2; 16]);
    let agreement = Agreement {
        knows: None,
        delegation: None,
        offer_digest: offer.digest(),
        id,
        signature: r.sign(&Agreement::signed_bytes(&offer.digest(), &id)),
        certificate: r.certificate(),
    };
    RecoveryRequest {
        kind,
        offer,
        agreement,
        signature: requester.sign(signed),
        certificate: requester.certificate(),
    }
    .to_bytes()
}

fn offer(initiator: EntityId, responder: EntityId, n1: u8) -> Offer {
    let amount = |issuer: Domain, promise: &str| Amount {
        class: VoucherClass {
            issuer,
            promise: promise.into(),
        },
        quantity: 1,
    };
    Offer {
        knows: None,
        redeem: None,
        initiator,
        responder,
        give: amount(initiator.domain(), "coffee"),
        want: Some(amount(responder.domain(), "ticket")),
        n1: [n1; 16],
        expires: None,
    }
}

/// The next tap copy on `tap` (panics on anything else, on skipped copies,
/// and after [`WAIT`]).
async fn tapped(tap: &mut Capability) -> Message {
    match tokio::time::timeout(WAIT, tap.next())
        .await
        .expect("the TTP's host keeps passing messages")
        .unwrap()
    {
        Incoming::Tapped { message, .. } => message,
        other => panic!("expected a tap copy, got {other:?}"),
    }
}

/// Regression: the TTP decided requests in one queue, in arrival order, and
/// verified signatures before it looked at who asked. A peer that sent
/// thousands of requests it was not entitled to, or whose signatures did
/// not verify, had an honest resolve from another host wait behind all of
/// them. Now each domain has its own queue, served in turn, and requests in
/// someone else's name cost no verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_resolve_overtakes_a_flood_of_bogus_requests() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (dt, dm, da) = (dom(0x77), dom(0x66), dom(0xa1));
    let ttp = dt.owner();
    let database = dir.path().join("ttp.sqlite");

    let mut ct = host(dir.path(), &ca, "t", dt, &[]);
    let tf = issue_entity_key(&ca, "ttp", ttp).unwrap();
    ct.ttp = Some(TtpSection {
        key: tf.key,
        cert: tf.cert,
        ca: tf.ca,
        database: Some(database.clone()),
        postgres: None,
    });
    let ht = tenet_voucher_app::start(&ct).await.unwrap();
    let pt = ht.remote_addr().unwrap();
    let hm = tenet_voucher_app::start(&host(dir.path(), &ca, "m", dm, &[pt]))
        .await
        .unwrap();
    let ha = tenet_voucher_app::start(&host(dir.path(), &ca, "a", da, &[pt]))
        .await
        .unwrap();
    let mut flooder = Capability::acquire(hm.socket_path()).await.unwrap();
    let mut honest = Capability::acquire(ha.socket_path()).await.unwrap();
    echo_eventually(&mut flooder, ttp).await;
    echo_eventually(&mut honest, ttp).await;
    let mut tap = Capability::acquire(ht.socket_path()).await.unwrap();
    tap.tap(Filter::ANY).await.unwrap();

    // Everyone holds a certificate from the CA: the flooder, the honest
    // requester, and the card that agreed to both their exchanges.
    let (f, a, r) = (flooder.id(), honest.id(), dom(0xb2).owner());
    let mut fk = keys(&ca, "flooder", f);
    let mut ak = keys(&ca, "honest", a);
    let mut rk = keys(&ca, "responder", r);

    // The flood, with valid structure and a real agreement: every other
    // request resolves the honest party's exchange in the flooder's name
    // (not entitled), the others resolve the flooder's own exchange with a
    // signature over the wrong bytes.
    let in_others_name = request(
        Kind::Resolve,
        offer(a, r, 1),
        1,
        &mut rk,
        &mut fk,
        b"not a request",
    );
    let bad_signature = request(
        Kind::Resolve,
        offer(f, r, 2),
        2,
        &mut rk,
        &mut fk,
        b"not a request",
    );
    let flood = tokio::spawn(async move {
        for i in 0..FLOOD {
            let bogus = if i % 2 == 0 {
                &in_others_name
            } else {
                &bad_signature
            };
            flooder
                .send(ttp, msg::RECOVERY_REQUEST, bogus.clone())
                .await
                .unwrap();
        }
        flooder
    });

    // Once the TTP has BACKLOG of the flood waiting (received, not yet
    // answered), the honest request goes out; the flood goes on.
    let (mut arrived, mut answered) = (0, 0);
    let count = |m: &Message, arrived: &mut usize, answered: &mut usize| {
        if (m.src(), m.dst(), m.mtype()) == (f, ttp, msg::RECOVERY_REQUEST) {
            *arrived += 1;
        } else if (m.src(), m.dst()) == (ttp, f) {
            assert_eq!(m.mtype(), Mtype::REFUSED, "{m:?}");
            let text = Refused::decode(&m.param).unwrap().text;
            // The TTP's refusals say which check failed.
            assert!(
                text.contains("may be asked only by") || text.contains("request: "),
                "{text}"
            );
            *answered += 1;
        }
    };
    while arrived - answered < BACKLOG {
        assert!(
            arrived < FLOOD,
            "the TTP kept up with the flood ({answered} of {arrived} answered): \
             a bigger flood is needed to show anything"
        );
        let m = tapped(&mut tap).await;
        count(&m, &mut arrived, &mut answered);
    }

    let exchange = ExchangeId::of_n2(&[3; 16]);
    let honest_request = request(
        Kind::Resolve,
        offer(a, r, 3),
        3,
        &mut rk,
        &mut ak,
        &Kind::Resolve.request_bytes(&exchange),
    );
    honest
        .send(ttp, msg::RECOVERY_REQUEST, honest_request)
        .await
        .unwrap();

    // Follow the TTP until it admits the honest request; count the bogus
    // requests it answered after the honest one arrived.
    let mut at_arrival = None;
    loop {
        let m = tapped(&mut tap).await;
        count(&m, &mut arrived, &mut answered);
        if (m.src(), m.dst(), m.mtype()) == (a, ttp, msg::RECOVERY_REQUEST) {
            at_arrival = Some((arrived, answered));
        }
        if (m.src(), m.dst()) == (ttp, a) {
            assert_eq!(m.mtype(), msg::ADMISSION, "{m:?}");
            break;
        }
    }
    let (arrived_before, answered_before) =
        at_arrival.expect("the honest request passed the TTP's host");
    let overtaken_by = answered - answered_before;
    // The bogus request being decided when the honest one arrived, and the
    // flooder's next one if its turn came first; with one queue for all,
    // the whole backlog.
    assert!(
        overtaken_by <= 2,
        "the honest resolve waited for {overtaken_by} bogus requests \
         ({} were waiting when it arrived)",
        arrived_before - answered_before
    );

    let m = recv(&mut honest).await;
    assert_eq!((m.src(), m.mtype()), (ttp, msg::ADMISSION));
    let admission = Admission::decode(&m.param).unwrap();
    assert_eq!((admission.kind, admission.id), (Kind::Resolve, exchange));

    // The rest of the flood is answered too, each request refused for its
    // own fault, none decided.
    let _flooder = flood.await.unwrap();
    while answered < FLOOD {
        let m = tapped(&mut tap).await;
        count(&m, &mut arrived, &mut answered);
    }
    assert_eq!(ht.service_busy(), 0);
    let decided = tenet_voucher_app::ttp::SqliteDecisions::open(&database)
        .unwrap()
        .count()
        .unwrap();
    assert_eq!(decided, 1, "only the honest exchange is decided");
    // The TTP's own counts (tenet status, /metrics) say the same.
    let figures = ht.figures();
    let event = |event: &str| {
        figures
            .iter()
            .find(|f| f.name == "service_events_total" && f.label("event") == Some(event))
            .map(|f| f.value)
    };
    use tenet_proto::status::Value::Count;
    assert_eq!(event("admission_resolve"), Some(Count(1)));
    assert_eq!(event("refused"), Some(Count(FLOOD as u64)));
    assert_eq!(event("admission_abort"), None, "never counted, never shown");
    for h in [ha, hm, ht] {
        h.shutdown().await;
    }
}
