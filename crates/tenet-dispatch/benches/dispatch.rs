//! Dispatch-table micro-benchmarks: one message stored and taken, plain,
//! through a subscription, and with a tap copying it. Run with
//! `cargo bench -p tenet-dispatch`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use tenet_dispatch::{DispatchTable, EndpointId, Ingress, Limits};
use tenet_proto::{Domain, EntityId, Filter, Message, Mtype, Port};

const D: Domain = Domain::new([1; 12]);
const MTYPE: Mtype = Mtype(0x8001);

/// A table with two apps bound to ports 1 and 2.
fn table() -> (DispatchTable, EndpointId, EntityId, EntityId) {
    let mut t = DispatchTable::new(D.owner(), Limits::default());
    let (a, b) = (t.add_endpoint(), t.add_endpoint());
    let (ia, ib) = (
        EntityId::new(D, Port::new(1)),
        EntityId::new(D, Port::new(2)),
    );
    t.bind(a, ia).expect("fresh id");
    t.bind(b, ib).expect("fresh id");
    (t, b, ia, ib)
}

/// Stores `m`, takes it from `ep` and clears the events.
fn round(t: &mut DispatchTable, ep: EndpointId, m: &Message, now: Instant) {
    t.store(Ingress::App, m.clone(), now).expect("stored");
    black_box(t.take(ep).expect("delivered"));
    while t.poll_event().is_some() {}
}

fn dispatch(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("dispatch table");

    let (mut t, b, ia, ib) = table();
    let m = Message::new(ia, ib, MTYPE, vec![0; 16]);
    g.bench_function("store + take", |bench| {
        bench.iter(|| round(&mut t, b, &m, now))
    });

    // A message to an id nobody binds, claimed by b's subscription.
    let (mut t, b, ia, _) = table();
    let unbound = EntityId::new(D, Port::new(99));
    t.subscribe(
        b,
        Filter {
            mtype: Some(MTYPE),
            ..Filter::ANY
        },
    )
    .expect("within bounds");
    let m = Message::new(ia, unbound, MTYPE, vec![0; 16]);
    g.bench_function("store + take, via a subscription", |bench| {
        bench.iter(|| round(&mut t, b, &m, now))
    });

    // A third app taps everything; its copy is taken too.
    let (mut t, b, ia, ib) = table();
    let c3 = t.add_endpoint();
    t.tap(c3, Filter::ANY).expect("within bounds");
    let m = Message::new(ia, ib, MTYPE, vec![0; 16]);
    g.bench_function("store + take, with a tap", |bench| {
        bench.iter(|| {
            round(&mut t, b, &m, now);
            black_box(t.take_tap(c3).expect("a copy"));
        })
    });
    g.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
