//! Codec micro-benchmarks: the eTP message, an APDU command, a BER-TLV
//! field list. Run with `cargo bench -p tenet-proto`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tenet_proto::apdu::{Command, tenet};
use tenet_proto::tlv::{self, Fields, Tag};
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};

fn message(param: usize) -> Message {
    let d = Domain::new([0x11; 12]);
    Message::new(
        EntityId::new(d, Port::new(1)),
        EntityId::new(d, Port::new(2)),
        Mtype(0x8001),
        vec![7; param],
    )
}

fn etp(c: &mut Criterion) {
    let mut g = c.benchmark_group("etp message");
    for param in [16usize, 1024] {
        let m = message(param);
        let bytes = m.to_bytes();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("encode, {param}-byte param"), |b| {
            let mut out = Vec::with_capacity(bytes.len());
            b.iter(|| {
                out.clear();
                black_box(&m).encode(&mut out);
                black_box(&out);
            })
        });
        g.bench_function(format!("decode, {param}-byte param"), |b| {
            b.iter(|| Message::decode(black_box(&bytes)).expect("valid"))
        });
    }
    g.finish();
}

fn apdu(c: &mut Criterion) {
    // DELIVER with a 16-byte-param message and an extended Le, as the host
    // sends it to a card.
    let cmd = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
        .with_data(message(16).to_bytes())
        .with_le(65_536)
        .to_bytes();
    c.bench_function("apdu command decode (DELIVER, extended)", |b| {
        b.iter(|| Command::decode(black_box(&cmd)).expect("valid"))
    });
}

fn fields(c: &mut Criterion) {
    // Five objects, the shape of a voucher offer: two ids, two amounts, a
    // nonce.
    let mut param = Vec::new();
    tlv::write(&mut param, Tag(0x80), &[1; 16]);
    tlv::write(&mut param, Tag(0x81), &[2; 16]);
    tlv::write(&mut param, Tag(0xa2), &[3; 40]);
    tlv::write(&mut param, Tag(0xa3), &[4; 40]);
    tlv::write(&mut param, Tag(0x84), &[5; 16]);
    c.bench_function("BER-TLV Fields::parse (5 objects)", |b| {
        b.iter(|| {
            let f = Fields::parse(black_box(&param)).expect("valid");
            black_box(f.get(Tag(0x84)));
        })
    });
}

criterion_group!(benches, etp, apdu, fields);
criterion_main!(benches);
