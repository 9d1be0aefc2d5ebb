//! The card's message handling through its APDU front end: one echo
//! request delivered with DELIVER and answered in the response. Run with
//! `cargo bench -p tenet-card`. (A voucher balance request through the card
//! is in `tenet-voucher`'s benches, next to the voucher applet.)

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tenet_card::{Card, CardLimits, MemStore, Personalization, SeededEntropy};
use tenet_proto::apdu::{Command, Response, tenet};
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};

const DOMAIN: Domain = Domain::new([0xc0; 12]);

fn card() -> Card<MemStore> {
    let p = Personalization {
        domain: DOMAIN,
        pin: b"1234".to_vec(),
        puk: b"87654321".to_vec(),
    };
    let mut c = Card::personalize(
        MemStore::new(32 * 1024),
        &p,
        CardLimits::default(),
        Box::new(SeededEntropy::new(7)),
    )
    .expect("personalized");
    let select = Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID.to_vec());
    let r = Response::decode(&c.process_apdu(&select.to_bytes())).expect("a response");
    assert!(r.sw.is_success(), "SELECT: {}", r.sw);
    c
}

fn echo(c: &mut Criterion) {
    let mut card = card();
    let m = Message::new(
        EntityId::new(DOMAIN, Port::new(1)),
        DOMAIN.owner(),
        Mtype::ECHO_REQUEST,
        vec![0; 8],
    );
    let apdu = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
        .with_data(m.to_bytes())
        .with_le(65_536)
        .to_bytes();
    let r = Response::decode(&card.process_apdu(&apdu)).expect("a response");
    assert!(r.sw.is_success(), "DELIVER: {}", r.sw);
    let reply = Message::decode(&r.data).expect("the reply in the response");
    assert_eq!(reply.mtype(), Mtype::ECHO_REPLY);
    assert_eq!(r.sw.waiting(), Some(0), "nothing else waits");

    c.bench_function("card: DELIVER echo request, reply in the response", |b| {
        b.iter(|| black_box(card.process_apdu(black_box(&apdu))))
    });
}

criterion_group!(benches, echo);
criterion_main!(benches);
