//! The wallet believes only its card. Any app on the host (and any peer)
//! may send the wallet's id a message of any mtype; a rogue one that
//! answers in the card's place could make `wallet recover` find nothing
//! pending while `v2` is deleted, or show balances the card does not hold.
//! The wallet takes answers only from its card's id and notices only about
//! what it is waiting on.

use std::path::{Path, PathBuf};

use tenet_card::{Card, FileStore, Personalization, SystemEntropy};
use tenet_client::Capability;
use tenet_client::wallet::{Wallet, WalletError};
use tenet_host::{Config, HostHandle};
use tenet_pki::{ensure_ca, issue_entity};
use tenet_proto::notice::{Refused, Undeliverable, UndeliverableReason};
use tenet_proto::{Codec, Domain, Mtype};
use tenet_voucher::card::{
    BALANCE_REQUEST, BALANCES, EXCHANGES, EXCHANGES_REQUEST, Phase, encode_balances,
};
use tenet_voucher::model::{Amount, Balances, VoucherClass};
use tenet_voucher::msg::{self, Offer};
use tenet_voucher_app::applet::{APPLET_ID, initial_data};

// The daemon tests' helpers, shared rather than copied.
#[path = "../../tenet-host/tests/support/mod.rs"]
mod support;

const PIN: &[u8] = b"1234";

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
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

/// A voucher card of domain `d`, certified by the CA in `ca`.
fn make_card(dir: &Path, ca: &Path, d: Domain) -> PathBuf {
    let path = dir.join(format!("{d}.card"));
    let p = Personalization {
        domain: d,
        pin: PIN.to_vec(),
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
    // Personalized for the TTP 0x77…:0, which the host's `[card] ttp` names.
    c.provision(APPLET_ID, initial_data(dom(0x77).owner(), None))
        .unwrap();
    path
}

/// A host of software domain `0xa1…` with the in-process voucher card `k`.
async fn host_with_voucher_card(dir: &Path, k: Domain) -> HostHandle {
    let ca = dir.join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let mut c = Config::default();
    c.host.socket = Some(dir.join("a.sock"));
    c.host.state_dir = Some(dir.join("a-state"));
    c.host.domain = Some(dom(0xa1).to_string());
    c.card.virtual_store = Some(make_card(dir, &ca, k));
    c.card.ttp = Some(dom(0x77).owner().to_string());
    tenet_voucher_app::start(&c).await.unwrap()
}

/// A rogue app stores fake answers and notices for the wallet before the
/// wallet asks its card, so the wallet reads them first: an empty exchange
/// list while `v2` is deleted, a fortune in coffee, refusals and an
/// undeliverable notice of the very requests the wallet sent. The wallet
/// skips them all and reports what the card says; the card's own refusal
/// still comes back as an error.
#[tokio::test]
async fn a_rogue_app_cannot_answer_for_the_wallets_card() {
    let dir = tempfile::tempdir().unwrap();
    let k = dom(0xca);
    let h = host_with_voucher_card(dir.path(), k).await;
    let cap = Capability::acquire(h.socket_path()).await.unwrap();
    let mut w = Wallet::open(cap, k.owner(), PIN).await.unwrap();
    w.set_wait(support::WAIT);
    w.mint(amount(k, "coffee", 5)).await.unwrap();
    // An offer from a card that never answers: accepting it deletes `v2`
    // (2 coffee), and the exchange waits for a confirmation.
    let offer = Offer {
        knows: None,
        redeem: None,
        initiator: dom(0xbb).owner(),
        responder: k.owner(),
        give: amount(dom(0xbb), "ticket", 1),
        want: Some(amount(k, "coffee", 2)),
        n1: [1; 16],
        expires: None,
    };
    w.accept_offer(&offer).await.unwrap();
    let exchanges = w.exchanges().await.unwrap();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}");
    assert_eq!(exchanges[0].phase, Phase::AwaitingConfirmation);
    let balances = w.balances().await.unwrap();
    assert_eq!(balances, vec![amount(k, "coffee", 3)]);

    let mut rogue = Capability::acquire(h.socket_path()).await.unwrap();
    assert_ne!(rogue.id(), k.owner());
    let refused = |mtype| {
        Refused {
            mtype,
            text: "forged".into(),
        }
        .to_bytes()
    };
    let undeliverable = |mtype| {
        Undeliverable {
            reason: UndeliverableReason::DESTINATION_GONE,
            dst: k.owner(),
            mtype,
        }
        .to_bytes()
    };
    // `send` returns once the host stored the message in the wallet's
    // queue: these are all ahead of the card's answer.
    for (mtype, param) in [
        (EXCHANGES, Vec::new()),
        (Mtype::REFUSED, refused(EXCHANGES_REQUEST)),
        (Mtype::UNDELIVERABLE, undeliverable(EXCHANGES_REQUEST)),
    ] {
        rogue.send(w.id(), mtype, param).await.unwrap();
    }
    assert_eq!(w.exchanges().await.unwrap(), exchanges);

    let mut fortune = Balances::default();
    fortune.credit(&amount(k, "coffee", 1000)).unwrap();
    for (mtype, param) in [
        (BALANCES, encode_balances(&fortune)),
        (Mtype::REFUSED, refused(BALANCE_REQUEST)),
        (Mtype::UNDELIVERABLE, undeliverable(BALANCE_REQUEST)),
    ] {
        rogue.send(w.id(), mtype, param).await.unwrap();
    }
    assert_eq!(w.balances().await.unwrap(), balances);

    // The card's own refusal still reaches the wallet: the same offer again
    // is a replay. A forged refusal of something else does not stand in
    // for it.
    rogue
        .send(w.id(), Mtype::REFUSED, refused(msg::START_EXCHANGE))
        .await
        .unwrap();
    let err = w.accept_offer(&offer).await.unwrap_err();
    match &err {
        WalletError::Refused { mtype, text } => {
            assert_eq!(*mtype, msg::ACCEPT, "{err}");
            assert!(text.contains("replay"), "{err}");
        }
        other => panic!("expected the card's refusal, got {other}"),
    }
    assert_eq!(w.exchanges().await.unwrap(), exchanges);
    assert_eq!(w.balances().await.unwrap(), balances);
    drop((w, rogue));
    h.shutdown().await;
}

/// A refused order does not leave its barrier's answer behind: the next
/// order reads the balances after itself, not those of the refused order
/// (here, before a mint that followed it).
#[tokio::test]
async fn after_a_refused_order_the_balances_are_current() {
    let dir = tempfile::tempdir().unwrap();
    let k = dom(0xca);
    let h = host_with_voucher_card(dir.path(), k).await;
    let cap = Capability::acquire(h.socket_path()).await.unwrap();
    let mut w = Wallet::open(cap, k.owner(), PIN).await.unwrap();
    w.set_wait(support::WAIT);
    w.mint(amount(k, "coffee", 5)).await.unwrap();
    // No such exchange: the card refuses the recovery order.
    let refused = w.recover(tenet_voucher::msg::ExchangeId([9; 32])).await;
    assert!(
        matches!(refused, Err(WalletError::Refused { .. })),
        "{refused:?}"
    );
    // The mint's own barrier: the balances after it, not the refused
    // order's.
    let after = w.mint(amount(k, "coffee", 2)).await.unwrap();
    assert_eq!(after, vec![amount(k, "coffee", 7)]);
    assert_eq!(w.balances().await.unwrap(), vec![amount(k, "coffee", 7)]);
}
