//! The voucher exchange across real daemons over TLS, interrupted by a
//! guard rule that drops the confirmation, and recovered through the TTP
//! service (a third host whose entity decides, with SQLite).

use std::path::Path;
use std::time::Duration;

use tenet_card::{Card, FileStore, Personalization, SystemEntropy};
use tenet_client::Capability;
use tenet_client::wallet::{Wallet, WalletError};
use tenet_host::config::{PeerSection, TtpSection};
use tenet_host::{Config, HostHandle};
use tenet_pki::{ensure_ca, issue_entity, issue_entity_key, issue_host};
use tenet_proto::{Domain, EntityId};
use tenet_voucher::card::{ExchangeSummary, Phase};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg;
use tenet_voucher_app::applet::{APPLET_ID, initial_data};

// The daemon tests' helpers, shared rather than copied.
#[path = "../../tenet-host/tests/support/mod.rs"]
mod support;
use support::WAIT;

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

/// Host `name` with software domain `sw`, linked over TLS with a certificate
/// for `domains`, listening on a port of the system's choosing: its peers
/// dial the address the started host reports.
fn base(dir: &Path, name: &str, sw: Domain, ca: &Path, domains: &[Domain]) -> Config {
    let files = issue_host(ca, name, domains).unwrap();
    let mut c = Config::default();
    c.host.socket = Some(dir.join(format!("{name}.sock")));
    c.host.state_dir = Some(dir.join(format!("{name}-state")));
    c.host.domain = Some(sw.to_string());
    c.remote.listen = Some("127.0.0.1:0".into());
    (c.remote.ca, c.remote.cert, c.remote.key) =
        (Some(files.ca), Some(files.cert), Some(files.key));
    c
}

/// A peer entry dialing the started host `h`.
fn peer(h: &HostHandle) -> PeerSection {
    PeerSection {
        address: h.remote_addr().expect("the host listens").to_string(),
        domains: vec![],
    }
}

fn card(dir: &Path, ca: &Path, d: Domain) -> std::path::PathBuf {
    let path = dir.join(format!("{d}.card"));
    let p = Personalization {
        domain: d,
        pin: b"1234".to_vec(),
        puk: b"12345678".to_vec(),
    };
    let mut c = Card::personalize(
        FileStore::create(&path, 32 * 1024).unwrap(),
        &p,
        Default::default(),
        Box::new(SystemEntropy),
    )
    .unwrap();
    let (cert, ca_der) = issue_entity(ca, c.id(), &c.state().public_key.clone())
        .unwrap()
        .card_forms()
        .unwrap();
    c.install_certificates(cert, ca_der).unwrap();
    // Personalized for the TTP 0x77…:0, which the hosts' `[card] ttp` names.
    c.provision(APPLET_ID, initial_data(dom(0x77).owner(), None))
        .unwrap();
    path
}

async fn wallet(h: &HostHandle, card: EntityId) -> Wallet {
    let cap = Capability::acquire(h.socket_path()).await.unwrap();
    Wallet::open(cap, card, b"1234").await.unwrap()
}

fn held(b: Vec<Amount>) -> Vec<(String, u64)> {
    b.into_iter()
        .map(|a| (a.class.promise, a.quantity))
        .collect()
}

/// Polls until the wallet's card reports one exchange in `phase`.
async fn wait_phase(w: &mut Wallet, phase: Phase) -> ExchangeSummary {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ex = w.exchanges().await.unwrap();
        if let Some(e) = ex.iter().find(|e| e.phase == phase) {
            return e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never reached {phase:?}: {ex:?}",
            w.card()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn an_interrupted_exchange_is_recovered_through_the_ttp() {
    interrupted_exchange(None).await;
}

/// The same with the TTP's decisions in PostgreSQL (`TENET_TEST_POSTGRES`).
#[cfg(feature = "postgres")]
#[tokio::test]
async fn an_interrupted_exchange_is_recovered_through_a_postgres_ttp() {
    let conn = std::env::var("TENET_TEST_POSTGRES")
        .expect("TENET_TEST_POSTGRES names the test PostgreSQL (scripts/test.sh starts one)");
    interrupted_exchange(Some(conn)).await;
}

async fn interrupted_exchange(postgres: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (da, ca_dom, db, cb_dom, dt) = (dom(0xa1), dom(0xca), dom(0xb2), dom(0xcb), dom(0x77));
    let ttp = dt.owner();

    // Each host starts after those it dials: the TTP's, B's, then A's, which
    // dials the other two, so that it links to both again when it restarts.
    // The TTP's host: its own entity decides, with its entity certificate.
    let mut ct = base(dir.path(), "t", dt, &ca, &[dt]);
    let tf = issue_entity_key(&ca, "ttp", ttp).unwrap();
    let database = postgres.is_none().then(|| dir.path().join("ttp.sqlite"));
    ct.ttp = Some(TtpSection {
        key: tf.key,
        cert: tf.cert,
        ca: tf.ca,
        database,
        postgres: postgres.clone(),
    });
    let ht = tenet_voucher_app::start(&ct).await.unwrap();

    let mut cb_cfg = base(dir.path(), "b", db, &ca, &[db, cb_dom]);
    cb_cfg.card.virtual_store = Some(card(dir.path(), &ca, cb_dom));
    cb_cfg.card.ttp = Some(ttp.to_string());
    cb_cfg.remote.peers = vec![peer(&ht)];
    // The interruption: B's host drops the confirmation m3 arriving from A.
    cb_cfg.guard.rules = vec![
        toml::from_str(
            "name = \"lose-m3\"\ningress = \"remote\"\nmtype = \"confirmation\"\naction = \"drop\"",
        )
        .unwrap(),
    ];
    let hb = tenet_voucher_app::start(&cb_cfg).await.unwrap();

    let mut ca_cfg = base(dir.path(), "a", da, &ca, &[da, ca_dom]);
    ca_cfg.card.virtual_store = Some(card(dir.path(), &ca, ca_dom));
    ca_cfg.card.ttp = Some(ttp.to_string());
    ca_cfg.remote.peers = vec![peer(&ht), peer(&hb)];
    let ha = tenet_voucher_app::start(&ca_cfg).await.unwrap();

    let (card_a, card_b) = (ca_dom.owner(), cb_dom.owner());
    // Wait for the links: B reaches A's card and the TTP.
    let mut probe = Capability::acquire(hb.socket_path()).await.unwrap();
    for dst in [card_a, ttp] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while probe.echo(dst, b"", Duration::from_secs(1)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "no route to {dst}");
        }
    }
    let mut wa = wallet(&ha, card_a).await;
    let mut wb = wallet(&hb, card_b).await;
    let coffee = VoucherClass {
        issuer: ca_dom,
        promise: "coffee".into(),
    };
    let ticket = VoucherClass {
        issuer: cb_dom,
        promise: "ticket".into(),
    };
    assert_eq!(
        held(
            wa.mint(Amount {
                class: coffee.clone(),
                quantity: 5
            })
            .await
            .unwrap()
        ),
        vec![("coffee".into(), 5)]
    );
    wb.mint(Amount {
        class: ticket.clone(),
        quantity: 3,
    })
    .await
    .unwrap();
    // A wallet cannot mint another issuer's class: the card's refusal is the error.
    let err = wa
        .mint(Amount {
            class: ticket.clone(),
            quantity: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, WalletError::Refused { .. }), "{err}");

    wa.follow().await.unwrap();
    wa.offer(
        card_b,
        wb.id(),
        Amount {
            class: coffee,
            quantity: 2,
        },
        Amount {
            class: ticket,
            quantity: 1,
        },
    )
    .await
    .unwrap();
    let offer = wb
        .next_offer(WAIT)
        .await
        .unwrap()
        .expect("the offer reached B's wallet");
    assert_eq!(offer.offer.initiator, card_a);
    wb.accept(&offer).await.unwrap();

    // A's wallet follows its card's progress: its order, the offer, the
    // agreement that came back, the confirmation it sent.
    let mut progress = Vec::new();
    while progress.len() < 4 {
        let m = wa.next_progress(WAIT).await.unwrap().expect("progress");
        progress.push(m.mtype().to_string());
    }
    assert_eq!(
        progress,
        ["start-exchange", "offer", "agreement", "confirmation"]
    );

    // Both cards have deleted their voucher; the confirmation never arrives.
    let eb = wait_phase(&mut wb, Phase::AwaitingConfirmation).await;
    let ea = wait_phase(&mut wa, Phase::AwaitingCommitment).await;
    assert_eq!(ea.id, eb.id, "both sides name the exchange by h(n2)");
    assert_eq!(
        held(wa.balances().await.unwrap()),
        vec![("coffee".into(), 3)]
    );
    assert_eq!(
        held(wb.balances().await.unwrap()),
        vec![("ticket".into(), 2)]
    );

    // B asks the TTP to abort first (on demand); then A's wallet recovers
    // automatically after its timeout, asks to resolve, and is told abort.
    wb.recover(eb.id).await.unwrap();
    assert_eq!(wb.wait_final(eb.id, WAIT).await.unwrap(), Phase::Aborted);
    // A's host restarts in the middle of the run: the pending exchange is in
    // the card's store, listed by a new wallet, and recovered.
    drop(wa);
    ha.shutdown().await;
    let ha = tenet_voucher_app::start(&ca_cfg).await.unwrap();
    let mut wa = wallet(&ha, card_a).await;
    let pending: Vec<_> = wa
        .exchanges()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.phase.is_final())
        .collect();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].id, ea.id);
    let deadline = tokio::time::Instant::now() + WAIT;
    while probe.echo(ttp, b"", Duration::from_secs(1)).await.is_err()
        || Capability::acquire(ha.socket_path())
            .await
            .unwrap()
            .echo(ttp, b"", Duration::from_secs(1))
            .await
            .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A's link to the TTP did not come back"
        );
    }
    let done = wa.auto_recover(Duration::from_millis(200)).await.unwrap();
    assert_eq!(done, vec![(ea.id, Phase::Aborted)]);
    assert_eq!(
        held(wa.balances().await.unwrap()),
        vec![("coffee".into(), 5)],
        "A has v1 back"
    );
    assert_eq!(
        held(wb.balances().await.unwrap()),
        vec![("ticket".into(), 3)],
        "B has v2 back"
    );
    if postgres.is_none() {
        let decided = tenet_voucher_app::ttp::SqliteDecisions::open(&dir.path().join("ttp.sqlite"))
            .unwrap()
            .count()
            .unwrap();
        assert_eq!(decided, 1, "one decision for the exchange");
    }

    for h in [ha, hb, ht] {
        h.shutdown().await;
    }
}

/// Option 2a: a merchant publishes only its card id. B's daemon holds offers
/// addressed to the card in its offer guard: one outside the merchant's
/// `[guard.offers] policy` is dropped, one inside goes to the acceptor app
/// that registered with the card; the card spends no APDU on either. The
/// acceptor accepts and the cards trade.
#[tokio::test]
async fn offers_to_a_merchant_card_are_held_by_its_hosts_guard() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (da, ca_dom, db, cb_dom) = (dom(0xa1), dom(0xca), dom(0xb2), dom(0xcb));
    let ttp = dom(0x77).owner();
    let mut ca_cfg = base(dir.path(), "a", da, &ca, &[da, ca_dom]);
    ca_cfg.card.virtual_store = Some(card(dir.path(), &ca, ca_dom));
    ca_cfg.card.ttp = Some(ttp.to_string());
    let ha = tenet_voucher_app::start(&ca_cfg).await.unwrap();
    let mut cb_cfg = base(dir.path(), "b", db, &ca, &[db, cb_dom]);
    cb_cfg.card.virtual_store = Some(card(dir.path(), &ca, cb_dom));
    cb_cfg.card.ttp = Some(ttp.to_string());
    cb_cfg.remote.peers = vec![peer(&ha)];
    cb_cfg.guard.offers.policy = Some(format!("GIVE>=2:{ca_dom}:coffee,WANT<=1:{cb_dom}:ticket"));
    let hb = tenet_voucher_app::start(&cb_cfg).await.unwrap();
    let (card_a, card_b) = (ca_dom.owner(), cb_dom.owner());
    let mut probe = Capability::acquire(hb.socket_path()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while probe
        .echo(card_a, b"", Duration::from_secs(1))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "no route to A");
    }

    let mut wa = wallet(&ha, card_a).await;
    let mut wb = wallet(&hb, card_b).await;
    let amount = |issuer, promise: &str, quantity| Amount {
        class: VoucherClass {
            issuer,
            promise: promise.into(),
        },
        quantity,
    };
    wa.mint(amount(ca_dom, "coffee", 5)).await.unwrap();
    wb.mint(amount(cb_dom, "ticket", 3)).await.unwrap();
    wb.register_acceptor().await.unwrap();

    let (apdus_before, ..) = hb.card_link_stats().unwrap();
    let dropped_before = hb.stats().guard_dropped;
    // Outside the policy (one coffee), then inside it (two), both addressed
    // to the card itself.
    for give in [1, 2] {
        wa.offer(
            card_b,
            card_b,
            amount(ca_dom, "coffee", give),
            amount(cb_dom, "ticket", 1),
        )
        .await
        .unwrap();
    }
    let offer = wb
        .next_offer(WAIT)
        .await
        .unwrap()
        .expect("the offer inside the policy reached the acceptor");
    assert_eq!(offer.offer.give.quantity, 2, "the first offer was dropped");
    assert_eq!(offer.offer.initiator, card_a);
    assert_eq!(hb.stats().guard_dropped, dropped_before + 1);
    assert_eq!(
        hb.card_link_stats().unwrap().0,
        apdus_before,
        "the guard held both offers: no APDU reached B's card"
    );
    assert!(
        wb.next_offer(Duration::from_millis(200))
            .await
            .unwrap()
            .is_none()
    );

    // A's wallet follows only the end of its exchange: the commitment, then
    // an echo through the card, after which the card has stored it.
    wa.follow_ends().await.unwrap();
    wb.accept(&offer).await.unwrap();
    let end = wa.next_progress(WAIT).await.unwrap().expect("the end");
    assert_eq!((end.mtype(), end.dst()), (msg::COMMITMENT, card_a));
    wa.sync().await.unwrap();
    let ea = wa.exchanges().await.unwrap();
    assert_eq!(ea.len(), 1);
    assert_eq!(ea[0].phase, Phase::Committed);
    assert!(
        wa.next_progress(Duration::from_millis(100))
            .await
            .unwrap()
            .is_none(),
        "nothing but the end was followed"
    );
    wait_phase(&mut wb, Phase::Committed).await;
    assert_eq!(
        held(wa.balances().await.unwrap()),
        vec![("coffee".into(), 3), ("ticket".into(), 1)]
    );
    assert_eq!(
        held(wb.balances().await.unwrap()),
        vec![("coffee".into(), 2), ("ticket".into(), 2)]
    );
    for h in [ha, hb] {
        h.shutdown().await;
    }
}
