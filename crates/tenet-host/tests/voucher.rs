//! The voucher exchange across real daemons over TLS, interrupted by a
//! guard rule that drops the confirmation, and recovered through the TTP
//! service (a third host whose entity decides, with SQLite).

use std::path::Path;
use std::time::Duration;

use tenet_card::{Card, FileStore, Personalization, SystemEntropy};
use tenet_client::Capability;
use tenet_host::certs::{ensure_ca, issue_entity, issue_entity_key, issue_host};
use tenet_host::config::{PeerSection, TtpSection};
use tenet_host::{Config, HostHandle};
use tenet_proto::card::VerifyPin;
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype};
use tenet_voucher::card::{
    BALANCE_REQUEST, BALANCES, EXCHANGES, EXCHANGES_REQUEST, ExchangeSummary, MINT, Phase,
    decode_balances, decode_exchanges,
};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{self, StartExchange};

const WAIT: Duration = Duration::from_secs(10);

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn base(dir: &Path, name: &str, sw: Domain, ca: &Path, domains: &[Domain], listen: u16) -> Config {
    let files = issue_host(ca, name, domains).unwrap();
    let mut c = Config::default();
    c.host.socket = Some(dir.join(format!("{name}.sock")));
    c.host.state_dir = Some(dir.join(format!("{name}-state")));
    c.host.domain = Some(sw.to_string());
    c.remote.listen = Some(format!("127.0.0.1:{listen}"));
    (c.remote.ca, c.remote.cert, c.remote.key) =
        (Some(files.ca), Some(files.cert), Some(files.key));
    c
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
    let (cert, ca_der) = issue_entity(ca, c.id(), &c.state().public_key.clone()).unwrap();
    c.install_certificates(cert, ca_der).unwrap();
    path
}

async fn answer(w: &mut Capability, mtype: Mtype) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, w.receive())
            .await
            .expect("answer in time")
            .unwrap();
        if m.mtype() == mtype {
            return m;
        }
        assert_ne!(
            m.mtype(),
            Mtype::REFUSED,
            "refused: {:?}",
            tenet_proto::notice::Refused::decode(&m.param)
        );
    }
}

async fn wallet(h: &HostHandle, card: EntityId) -> Capability {
    let mut w = Capability::acquire(h.socket_path()).await.unwrap();
    w.send(
        card,
        Mtype::VERIFY_PIN,
        VerifyPin {
            pin: b"1234".to_vec(),
        }
        .to_bytes(),
    )
    .await
    .unwrap();
    answer(&mut w, Mtype::PIN_STATUS).await;
    w
}

async fn exchanges(w: &mut Capability, card: EntityId) -> Vec<ExchangeSummary> {
    w.send(card, EXCHANGES_REQUEST, vec![]).await.unwrap();
    decode_exchanges(&answer(w, EXCHANGES).await.param).unwrap()
}

async fn balance(w: &mut Capability, card: EntityId) -> Vec<(String, u64)> {
    w.send(card, BALANCE_REQUEST, vec![]).await.unwrap();
    decode_balances(&answer(w, BALANCES).await.param)
        .unwrap()
        .into_iter()
        .map(|a| (a.class.promise, a.quantity))
        .collect()
}

/// Polls until `card` reports one exchange in `phase`.
async fn wait_phase(w: &mut Capability, card: EntityId, phase: Phase) -> ExchangeSummary {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ex = exchanges(w, card).await;
        if let Some(e) = ex.iter().find(|e| e.phase == phase) {
            return e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{card} never reached {phase:?}: {ex:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn an_interrupted_exchange_is_recovered_through_the_ttp() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (da, ca_dom, db, cb_dom, dt) = (dom(0xa1), dom(0xca), dom(0xb2), dom(0xcb), dom(0x77));
    let ttp = dt.owner();
    let (pa, pb, pt) = (port(), port(), port());

    // The TTP's host: its own entity decides, with its entity certificate.
    let mut ct = base(dir.path(), "t", dt, &ca, &[dt], pt);
    let tf = issue_entity_key(&ca, "ttp", ttp).unwrap();
    ct.ttp = Some(TtpSection {
        key: tf.key,
        cert: tf.cert,
        ca: tf.ca,
        database: Some(dir.path().join("ttp.sqlite")),
    });
    let ht = tenet_host::start(&ct).await.unwrap();

    let mut ca_cfg = base(dir.path(), "a", da, &ca, &[da, ca_dom], pa);
    ca_cfg.card.virtual_store = Some(card(dir.path(), &ca, ca_dom));
    ca_cfg.card.ttp = Some(ttp.to_string());
    ca_cfg.remote.peers = vec![PeerSection {
        address: format!("127.0.0.1:{pt}"),
        domains: vec![],
    }];
    let ha = tenet_host::start(&ca_cfg).await.unwrap();

    let mut cb_cfg = base(dir.path(), "b", db, &ca, &[db, cb_dom], pb);
    cb_cfg.card.virtual_store = Some(card(dir.path(), &ca, cb_dom));
    cb_cfg.card.ttp = Some(ttp.to_string());
    cb_cfg.remote.peers = vec![
        PeerSection {
            address: format!("127.0.0.1:{pt}"),
            domains: vec![],
        },
        PeerSection {
            address: format!("127.0.0.1:{pa}"),
            domains: vec![],
        },
    ];
    // The interruption: B's host drops the confirmation m3 arriving from A.
    cb_cfg.guard.rules = vec![
        toml::from_str(
            "name = \"lose-m3\"\ningress = \"remote\"\nmtype = \"confirmation\"\naction = \"drop\"",
        )
        .unwrap(),
    ];
    let hb = tenet_host::start(&cb_cfg).await.unwrap();

    let (card_a, card_b) = (ca_dom.owner(), cb_dom.owner());
    let mut wa = wallet(&ha, card_a).await;
    let mut wb = wallet(&hb, card_b).await;
    // Wait for the links: B reaches A's card and the TTP.
    for dst in [card_a, ttp] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while wb.echo(dst, b"", Duration::from_secs(1)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "no route to {dst}");
        }
    }
    let coffee = VoucherClass {
        issuer: ca_dom,
        promise: "coffee".into(),
    };
    let ticket = VoucherClass {
        issuer: cb_dom,
        promise: "ticket".into(),
    };
    wa.send(
        card_a,
        MINT,
        Amount {
            class: coffee.clone(),
            quantity: 5,
        }
        .to_bytes(),
    )
    .await
    .unwrap();
    wb.send(
        card_b,
        MINT,
        Amount {
            class: ticket.clone(),
            quantity: 3,
        }
        .to_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(balance(&mut wa, card_a).await, vec![("coffee".into(), 5)]);

    let start = StartExchange {
        responder: card_b,
        peer_wallet: wb.id(),
        give: Amount {
            class: coffee,
            quantity: 2,
        },
        want: Amount {
            class: ticket,
            quantity: 1,
        },
    };
    wa.send(card_a, msg::START_EXCHANGE, start.to_bytes())
        .await
        .unwrap();
    let offer = answer(&mut wb, msg::OFFER).await;
    wb.send(card_b, msg::ACCEPT, offer.param).await.unwrap();

    // Both cards have deleted their voucher; the confirmation never arrives.
    let eb = wait_phase(&mut wb, card_b, Phase::AwaitingConfirmation).await;
    let ea = wait_phase(&mut wa, card_a, Phase::AwaitingCommitment).await;
    assert_eq!(ea.id, eb.id, "both sides name the exchange by h(n2)");
    assert_eq!(balance(&mut wa, card_a).await, vec![("coffee".into(), 3)]);
    assert_eq!(balance(&mut wb, card_b).await, vec![("ticket".into(), 2)]);

    // B asks the TTP to abort first; then A asks to resolve and is told abort.
    wb.send(card_b, msg::RECOVER, eb.id.to_bytes())
        .await
        .unwrap();
    wait_phase(&mut wb, card_b, Phase::Aborted).await;
    wa.send(card_a, msg::RECOVER, ea.id.to_bytes())
        .await
        .unwrap();
    wait_phase(&mut wa, card_a, Phase::Aborted).await;
    assert_eq!(
        balance(&mut wa, card_a).await,
        vec![("coffee".into(), 5)],
        "A has v1 back"
    );
    assert_eq!(
        balance(&mut wb, card_b).await,
        vec![("ticket".into(), 3)],
        "B has v2 back"
    );
    let decided = tenet_host::ttp::SqliteDecisions::open(&dir.path().join("ttp.sqlite"))
        .unwrap()
        .count()
        .unwrap();
    assert_eq!(decided, 1, "one decision for the exchange");

    for h in [ha, hb, ht] {
        h.shutdown().await;
    }
}
