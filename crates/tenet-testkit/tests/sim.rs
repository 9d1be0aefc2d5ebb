//! The voucher exchange across three simulated hosts (Alice's and Bob's,
//! each with a real virtual card, and the TTP's) on a network that loses,
//! duplicates and reorders: whatever the network does, once the wallets
//! have recovered what stayed pending, both cards are final and either
//! both got what they wanted or both kept what they had, and no voucher
//! was made or lost. A seed replays a run exactly.

use std::time::Duration;

use tenet_proto::{Domain, Mtype};
use tenet_testkit::sim::{Faults, Sim, TraceEvent, Wallet, WalletError};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg;

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

fn count(b: &[Amount], class: &VoucherClass) -> u64 {
    b.iter()
        .find(|a| a.class == *class)
        .map_or(0, |a| a.quantity)
}

/// How one run ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Swapped,
    Restored,
}

struct Run {
    outcome: Outcome,
    trace: Vec<TraceEvent>,
    recovered: bool,
}

/// One exchange of 2 coffee for 1 ticket under `faults`, recovered by both
/// wallets until both cards are final.
fn run(seed: u64, faults: Faults) -> Run {
    let mut sim = Sim::new(seed, faults).unwrap();
    sim.add_ttp(dom(0x77)).unwrap();
    let (ha, card_a) = sim.add_card_host(dom(0xa1), dom(0xca), 11).unwrap();
    let (hb, card_b) = sim.add_card_host(dom(0xb2), dom(0xcb), 12).unwrap();
    let alice = Wallet::open(&mut sim, ha, card_a).unwrap();
    let bob = Wallet::open(&mut sim, hb, card_b).unwrap();
    let coffee = VoucherClass {
        issuer: dom(0xca),
        promise: "coffee".into(),
    };
    let ticket = VoucherClass {
        issuer: dom(0xcb),
        promise: "ticket".into(),
    };
    let amount = |class: &VoucherClass, quantity| Amount {
        class: class.clone(),
        quantity,
    };
    alice.mint(&mut sim, amount(&coffee, 5)).unwrap();
    bob.mint(&mut sim, amount(&ticket, 3)).unwrap();
    alice
        .offer(
            &mut sim,
            card_b,
            bob.id,
            amount(&coffee, 2),
            amount(&ticket, 1),
        )
        .unwrap();
    sim.run_for(Duration::from_millis(100));
    for offer in bob.offers(&mut sim) {
        // A duplicated offer is accepted once; the card refuses the rest.
        match bob.accept(&mut sim, offer) {
            Ok(()) | Err(WalletError::Refused(_)) => {}
            Err(e) => panic!("seed {seed}: accept: {e}"),
        }
    }
    sim.run_for(Duration::from_millis(200));
    // Both wallets recover what stays pending, asking again each round:
    // a request or an admission may be lost too.
    let mut rounds = 0;
    loop {
        let mut pending = Vec::new();
        for w in [&alice, &bob] {
            for e in w.exchanges(&mut sim).unwrap() {
                if !e.phase.is_final() {
                    pending.push((w, e.id));
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        rounds += 1;
        assert!(
            rounds <= 50,
            "seed {seed}: still pending after 50 rounds: {pending:?}",
            pending = pending.iter().map(|(_, id)| id).collect::<Vec<_>>()
        );
        for (w, id) in pending {
            match w.recover(&mut sim, id) {
                Ok(()) | Err(WalletError::Refused(_)) => {}
                Err(e) => panic!("seed {seed}: recover: {e}"),
            }
        }
        sim.run_for(Duration::from_millis(200));
    }
    let (a, b) = (
        alice.balances(&mut sim).unwrap(),
        bob.balances(&mut sim).unwrap(),
    );
    assert_eq!(
        count(&a, &coffee) + count(&b, &coffee),
        5,
        "seed {seed}: coffee conserved"
    );
    assert_eq!(
        count(&a, &ticket) + count(&b, &ticket),
        3,
        "seed {seed}: tickets conserved"
    );
    let outcome = match (count(&a, &ticket), count(&b, &coffee)) {
        (1, 2) => Outcome::Swapped,
        (0, 0) => Outcome::Restored,
        other => panic!(
            "seed {seed}: unfair: alice got {} tickets, bob {} coffee",
            other.0, other.1
        ),
    };
    let recovered = sim
        .trace()
        .iter()
        .any(|e| e.mtype == msg::RECOVERY_REQUEST && e.what == "delivered");
    // Nothing failed outside the network: no card error, no message the
    // table could not take, none without a host to go to.
    let odd: Vec<&TraceEvent> = sim
        .trace()
        .iter()
        .filter(|e| matches!(e.what, "card-error" | "not-stored" | "no-host"))
        .collect();
    assert!(odd.is_empty(), "seed {seed}: {odd:?}");
    Run {
        outcome,
        trace: sim.trace().to_vec(),
        recovered,
    }
}

const FAULTY: Faults = Faults {
    loss: 0.25,
    duplicate: 0.2,
    max_delay: Duration::from_millis(40),
};

#[test]
fn a_perfect_network_swaps_without_the_ttp() {
    let r = run(1, Faults::NONE);
    assert_eq!(r.outcome, Outcome::Swapped);
    assert!(!r.recovered);
    let hops: Vec<Mtype> = r
        .trace
        .iter()
        .filter(|e| e.what == "delivered")
        .map(|e| e.mtype)
        .collect();
    assert_eq!(
        hops,
        [
            msg::OFFER,
            msg::AGREEMENT,
            msg::CONFIRMATION,
            msg::COMMITMENT
        ]
    );
}

#[test]
fn every_run_on_a_lossy_duplicating_reordering_network_ends_fair() {
    let runs: Vec<Run> = (0..24).map(|seed| run(seed, FAULTY)).collect();
    let faults = |what| {
        runs.iter()
            .flat_map(|r| &r.trace)
            .filter(|e| e.what == what)
            .count()
    };
    // The network did what it says, and the TTP had work.
    assert!(faults("lost") > 0 && faults("duplicated") > 0);
    assert!(runs.iter().any(|r| r.recovered), "no run needed the TTP");
    assert!(runs.iter().any(|r| r.outcome == Outcome::Swapped));
    assert!(runs.iter().any(|r| r.outcome == Outcome::Restored));
    // Messages overtook each other somewhere: the first deliveries came in
    // another order than the sends.
    assert!(runs.iter().any(overtaken), "no message overtook another");
}

#[test]
fn a_seed_replays_the_same_run() {
    let (a, b) = (run(7, FAULTY), run(7, FAULTY));
    assert_eq!(a.outcome, b.outcome);
    assert_eq!(a.trace, b.trace);
    let c = run(8, FAULTY);
    assert_ne!(a.trace, c.trace, "another seed, another run");
}

/// Whether, in `r`, the first deliveries of the messages came in another
/// order than their sends.
fn overtaken(r: &Run) -> bool {
    let key = |e: &TraceEvent| (e.src, e.dst, e.mtype);
    let mut firsts = Vec::new();
    for e in r.trace.iter().filter(|e| e.what == "delivered") {
        if !firsts.contains(&key(e)) {
            firsts.push(key(e));
        }
    }
    let mut sends = Vec::new();
    for e in r
        .trace
        .iter()
        .filter(|e| matches!(e.what, "sent" | "duplicated"))
    {
        if firsts.contains(&key(e)) && !sends.contains(&key(e)) {
            sends.push(key(e));
        }
    }
    firsts != sends
}
