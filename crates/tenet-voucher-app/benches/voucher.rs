//! Voucher micro-benchmarks: decoding exchange messages, and a balance
//! request handled by the voucher applet on a virtual card through its APDU
//! front end. Run with `cargo bench -p tenet-voucher`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tenet_card::{Card, CardLimits, MemStore, Personalization, SeededEntropy};
use tenet_proto::apdu::{Command, Response, tenet};
use tenet_proto::card::VerifyPin;
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};
use tenet_voucher::card::{BALANCE_REQUEST, BALANCES, MINT};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{Agreement, ExchangeId, Offer};
use tenet_voucher_app::applet::{APPLET_ID, VoucherApplet, initial_data};

const A: Domain = Domain::new([0xaa; 12]);
const B: Domain = Domain::new([0xbb; 12]);

fn amount(issuer: Domain, promise: &str, quantity: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer,
            promise: promise.into(),
        },
        quantity,
    }
}

fn decode(c: &mut Criterion) {
    let offer = Offer {
        knows: None,
        redeem: None,
        initiator: A.owner(),
        responder: B.owner(),
        give: amount(A, "coffee", 5),
        want: Some(amount(B, "ticket", 1)),
        n1: [7; 16],
        expires: Some(1_800_000_000),
    }
    .to_bytes();
    // A P-256 signature and a certificate of typical sizes.
    let agreement = Agreement {
        knows: None,
        delegation: None,
        offer_digest: [1; 32],
        id: ExchangeId([2; 32]),
        signature: vec![3; 72],
        certificate: vec![4; 480],
    }
    .to_bytes();
    let mut g = c.benchmark_group("voucher decode");
    g.bench_function("offer (m1)", |b| {
        b.iter(|| Offer::decode(black_box(&offer)).expect("valid"))
    });
    g.bench_function("agreement (m2)", |b| {
        b.iter(|| Agreement::decode(black_box(&agreement)).expect("valid"))
    });
    g.finish();
}

fn apdu(card: &mut Card<MemStore>, cmd: Command) -> Response {
    Response::decode(&card.process_apdu(&cmd.to_bytes())).expect("a response")
}

fn deliver(m: &Message) -> Command {
    Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
        .with_data(m.to_bytes())
        .with_le(65_536)
}

/// A card with certificates, the voucher applet and a balance, selected,
/// with its wallet app authenticated.
fn card(dir: &std::path::Path, wallet: EntityId) -> Card<MemStore> {
    let ca = dir.join("ca");
    tenet_pki::ensure_ca(&ca, "bench CA").expect("a CA");
    let p = Personalization {
        domain: A,
        pin: b"1234".to_vec(),
        puk: b"12345678".to_vec(),
    };
    let mut c = Card::personalize(
        MemStore::new(64 * 1024),
        &p,
        CardLimits::default(),
        Box::new(SeededEntropy::new(1)),
    )
    .expect("personalized");
    let (cert, ca_der) = tenet_pki::issue_entity(&ca, c.id(), &c.state().public_key)
        .and_then(|c| c.card_forms())
        .expect("a certificate");
    c.install_certificates(cert, ca_der).expect("installed");
    c.provision(
        APPLET_ID,
        initial_data(Domain::new([0x77; 12]).owner(), None),
    )
    .expect("provisioned");
    c.install(Box::new(VoucherApplet::default()));
    let select = Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID.to_vec());
    assert!(apdu(&mut c, select).sw.is_success());
    let verify = Message::new(
        wallet,
        c.id(),
        Mtype::VERIFY_PIN,
        VerifyPin {
            pin: b"1234".to_vec(),
        }
        .to_bytes(),
    );
    assert!(apdu(&mut c, deliver(&verify)).sw.is_success());
    for (promise, q) in [("coffee", 5), ("tea", 3), ("cake", 1)] {
        let mint = Message::new(wallet, c.id(), MINT, amount(A, promise, q).to_bytes());
        assert!(apdu(&mut c, deliver(&mint)).sw.is_success());
    }
    c
}

fn balance(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let wallet = EntityId::new(A, Port::new(1));
    let mut card = card(dir.path(), wallet);
    let request = deliver(&Message::new(wallet, card.id(), BALANCE_REQUEST, vec![]));
    let r = apdu(&mut card, request.clone());
    assert!(r.sw.is_success(), "{}", r.sw);
    let reply = Message::decode(&r.data).expect("the balances in the response");
    assert_eq!(reply.mtype(), BALANCES);
    assert_eq!(r.sw.waiting(), Some(0), "nothing else waits");
    let request = request.to_bytes();
    c.bench_function("card: DELIVER voucher balance request (3 classes)", |b| {
        b.iter(|| black_box(card.process_apdu(black_box(&request))))
    });
}

criterion_group!(benches, decode, balance);
criterion_main!(benches);
