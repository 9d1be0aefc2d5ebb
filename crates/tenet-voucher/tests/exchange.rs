//! The exchange and its recovery among two cards and the TTP, stepped by a
//! deterministic harness with message loss, duplication and reordering.

use std::collections::VecDeque;

use proptest::prelude::*;
use tenet_proto::codec::Codec;
use tenet_proto::{Domain, EntityId, Mtype, Port};
use tenet_voucher::card::{Ctx, MINT, Out, Phase, VoucherCard};
use tenet_voucher::crypto::TestCrypto;
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{self, ExchangeId, RecoveryRequest, StartExchange};
use tenet_voucher::ttp::{MemoryDecisions, handle_request};

fn card_id(b: u8) -> EntityId {
    Domain::new([b; 12]).owner()
}

const A: u8 = 0xaa;
const B: u8 = 0xbb;
const T: u8 = 0x77;

fn wallet(b: u8) -> EntityId {
    EntityId::new(Domain::new([b; 12]), Port::new(1))
}

fn coffee(q: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer: Domain::new([A; 12]),
            promise: "coffee".into(),
        },
        quantity: q,
    }
}

fn ticket(q: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer: Domain::new([B; 12]),
            promise: "ticket".into(),
        },
        quantity: q,
    }
}

#[derive(Clone, Debug)]
struct Wire {
    src: EntityId,
    dst: EntityId,
    mtype: Mtype,
    param: Vec<u8>,
}

#[derive(Clone)]
struct World {
    a: VoucherCard,
    b: VoucherCard,
    ca: TestCrypto,
    cb: TestCrypto,
    ct: TestCrypto,
    ttp: MemoryDecisions,
    net: VecDeque<Wire>,
    /// Messages delivered to wallets (offers, progress).
    to_wallets: Vec<Wire>,
    refusals: Vec<String>,
    /// Both cards' time.
    now: u64,
}

impl World {
    fn new() -> Self {
        let mut w = Self {
            a: VoucherCard::default(),
            b: VoucherCard::default(),
            ca: TestCrypto::new(card_id(A), 1),
            cb: TestCrypto::new(card_id(B), 2),
            ct: TestCrypto::new(card_id(T), 3),
            ttp: MemoryDecisions::default(),
            net: VecDeque::new(),
            to_wallets: Vec::new(),
            refusals: Vec::new(),
            now: 1_000_000,
        };
        w.input(A, wallet(A), MINT, coffee(5).to_bytes());
        w.input(B, wallet(B), MINT, ticket(3).to_bytes());
        w
    }

    /// Card `who` and its context.
    fn card(&mut self, who: u8) -> (&mut VoucherCard, Ctx<'_>) {
        let (card, crypto) = if who == A {
            (&mut self.a, &mut self.ca)
        } else {
            (&mut self.b, &mut self.cb)
        };
        let cx = Ctx {
            me: card_id(who),
            ttp: card_id(T),
            wallet: Some(wallet(who)),
            crypto,
            now: self.now,
        };
        (card, cx)
    }

    /// Delivers one message to card `who` and queues what it sends.
    fn input(&mut self, who: u8, src: EntityId, mtype: Mtype, param: Vec<u8>) {
        let (card, mut cx) = self.card(who);
        match card.handle(&mut cx, src, mtype, &param) {
            Ok(outs) => self.emit(card_id(who), outs),
            Err(r) => self.refusals.push(r.0),
        }
    }

    fn emit(&mut self, src: EntityId, outs: Vec<Out>) {
        for o in outs {
            let w = Wire {
                src,
                dst: o.dst,
                mtype: o.mtype,
                param: o.param,
            };
            if o.dst == wallet(A) || o.dst == wallet(B) {
                self.to_wallets.push(w);
            } else {
                self.net.push_back(w);
            }
        }
    }

    fn deliver(&mut self, w: Wire) {
        if w.dst == card_id(A) {
            self.input(A, w.src, w.mtype, w.param);
        } else if w.dst == card_id(B) {
            self.input(B, w.src, w.mtype, w.param);
        } else if w.dst == card_id(T) {
            let req = RecoveryRequest::decode(&w.param).unwrap();
            match handle_request(&mut self.ct, &mut self.ttp, w.src, &req) {
                Ok(adm) => self.net.push_back(Wire {
                    src: card_id(T),
                    dst: w.src,
                    mtype: msg::ADMISSION,
                    param: adm.to_bytes(),
                }),
                Err(e) => self.refusals.push(e.to_string()),
            }
        }
    }

    fn run(&mut self) {
        while let Some(w) = self.net.pop_front() {
            self.deliver(w);
        }
    }

    /// Wallet A starts; wallet B accepts every offer it gets.
    fn start(&mut self) {
        let s = StartExchange {
            redeem: false,
            responder: card_id(B),
            peer_wallet: wallet(B),
            give: coffee(2),
            want: Some(ticket(1)),
            expires_in: Some(300),
        };
        self.input(A, wallet(A), msg::START_EXCHANGE, s.to_bytes());
    }

    fn accept_offers(&mut self) {
        let offers: Vec<Wire> = self
            .to_wallets
            .iter()
            .filter(|w| w.mtype == msg::OFFER)
            .cloned()
            .collect();
        self.to_wallets.retain(|w| w.mtype != msg::OFFER);
        for o in offers {
            self.input(B, wallet(B), msg::ACCEPT, o.param);
        }
    }

    /// Delivers what is in flight, and what that causes, losing the first
    /// message of `mtype` (there must be one).
    fn run_losing(&mut self, mtype: Mtype) {
        let mut dropped = false;
        while let Some(m) = self.net.pop_front() {
            if !dropped && m.mtype == mtype {
                dropped = true;
                continue;
            }
            self.deliver(m);
        }
        assert!(dropped, "no {mtype} was sent");
    }

    /// Both wallets recover everything pending.
    fn recover_all(&mut self) {
        for who in [A, B] {
            let card = if who == A { &self.a } else { &self.b };
            let ids: Vec<ExchangeId> = card.pending().map(|(id, _)| *id).collect();
            for id in ids {
                self.input(who, wallet(who), msg::RECOVER, id.to_bytes());
            }
        }
        self.run();
    }

    /// Both cards' clocks tick at card time `now`; what they send is
    /// delivered.
    fn tick(&mut self, now: u64) {
        self.now = now;
        for who in [A, B] {
            let (card, mut cx) = self.card(who);
            let outs = card.tick(&mut cx, now);
            self.emit(card_id(who), outs);
        }
        self.run();
    }

    fn holdings(&self) -> [u64; 4] {
        [
            self.a.balances.of(&coffee(0).class),
            self.a.balances.of(&ticket(0).class),
            self.b.balances.of(&coffee(0).class),
            self.b.balances.of(&ticket(0).class),
        ]
    }
}

const BEFORE: [u64; 4] = [5, 0, 0, 3];
const SWAPPED: [u64; 4] = [3, 1, 2, 2];

#[test]
fn commit_without_the_ttp() {
    let mut w = World::new();
    w.start();
    w.accept_offers();
    w.run();
    assert_eq!(w.holdings(), SWAPPED);
    assert!(w.ttp.decided.is_empty(), "the TTP was not involved");
    assert!(w.a.pending().next().is_none() && w.b.pending().next().is_none());
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
}

/// Runs the exchange, dropping the first message of `mtype`.
fn with_lost(mtype: Mtype) -> World {
    let mut w = World::new();
    w.start();
    w.accept_offers();
    w.run_losing(mtype);
    w
}

#[test]
fn lost_agreement_is_aborted_and_nothing_moves() {
    let mut w = with_lost(msg::AGREEMENT);
    w.recover_all();
    assert_eq!(w.holdings(), BEFORE);
}

#[test]
fn lost_confirmation_ends_fair_whoever_asks_the_ttp_first() {
    // The responder aborts first: neither swaps.
    let mut w = with_lost(msg::CONFIRMATION);
    let id = *w.b.pending().next().unwrap().0;
    w.input(B, wallet(B), msg::RECOVER, id.to_bytes());
    w.run();
    w.recover_all();
    assert_eq!(w.holdings(), BEFORE);
    // The initiator resolves first: both swap.
    let mut w = with_lost(msg::CONFIRMATION);
    let id = *w.a.pending().next().unwrap().0;
    w.input(A, wallet(A), msg::RECOVER, id.to_bytes());
    w.run();
    w.recover_all();
    assert_eq!(w.holdings(), SWAPPED);
}

#[test]
fn lost_commitment_is_resolved() {
    let mut w = with_lost(msg::COMMITMENT);
    assert_eq!(w.b.pending().count(), 0, "the responder committed");
    w.recover_all();
    assert_eq!(w.holdings(), SWAPPED);
    let (_, e) = w.a.exchanges.iter().next().unwrap();
    assert_eq!(e.phase, Phase::Resolved);
}

#[test]
fn replays_change_nothing() {
    let mut w = World::new();
    w.start();
    let offer = w
        .to_wallets
        .iter()
        .find(|m| m.mtype == msg::OFFER)
        .unwrap()
        .clone();
    w.accept_offers();
    let mut log = Vec::new();
    while let Some(m) = w.net.pop_front() {
        log.push(m.clone());
        w.deliver(m);
    }
    assert_eq!(w.holdings(), SWAPPED);
    // Replay the accept and every protocol message.
    w.input(B, wallet(B), msg::ACCEPT, offer.param);
    for m in log {
        w.deliver(m);
    }
    w.run();
    assert_eq!(
        w.holdings(),
        SWAPPED,
        "no value created or destroyed by replays"
    );
}

#[test]
fn a_bystander_with_a_sniffed_agreement_cannot_decide() {
    let mut w = with_lost(msg::CONFIRMATION);
    let (id, e) =
        w.a.exchanges
            .iter()
            .next()
            .map(|(i, e)| (*i, e.clone()))
            .unwrap();
    let c = card_id(0xcc);
    let mut cc = TestCrypto::new(c, 9);
    use tenet_voucher::crypto::Crypto;
    for kind in [msg::Kind::Resolve, msg::Kind::Abort] {
        let req = RecoveryRequest {
            kind,
            offer: e.offer.clone(),
            agreement: e.agreement.clone(),
            signature: cc.sign(&kind.request_bytes(&id)),
            certificate: cc.certificate(),
        };
        assert!(handle_request(&mut w.ct, &mut w.ttp, c, &req).is_err());
    }
    assert!(w.ttp.decided.is_empty());
    w.recover_all();
    let h = w.holdings();
    assert!(h == BEFORE || h == SWAPPED, "{h:?}");
}

#[test]
fn the_ttp_decides_once_and_repeats_its_answer() {
    let mut w = with_lost(msg::CONFIRMATION);
    w.recover_all();
    let first = w.ttp.decided.clone();
    w.recover_all();
    assert_eq!(w.ttp.decided.len(), 1);
    assert_eq!(first, w.ttp.decided);
}

#[test]
fn card_state_survives_encoding_at_every_step() {
    let mut w = with_lost(msg::COMMITMENT);
    for card in [&w.a, &w.b] {
        assert_eq!(&VoucherCard::decode(&card.to_bytes()).unwrap(), card);
    }
    w.recover_all();
    assert_eq!(VoucherCard::decode(&w.a.to_bytes()).unwrap(), w.a);
}

#[derive(Debug, Clone)]
enum Step {
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    Recover(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..8).prop_map(Step::Deliver),
        1 => (0usize..8).prop_map(Step::Drop),
        1 => (0usize..8).prop_map(Step::Duplicate),
        1 => any::<bool>().prop_map(Step::Recover),
    ]
}

proptest! {
    /// Any loss, duplication, reordering and recovery timing: once both
    /// sides have recovered, vouchers are conserved and the outcome is fair.
    #[test]
    fn always_conserved_and_fair(steps in proptest::collection::vec(step(), 0..40)) {
        let mut w = World::new();
        w.start();
        w.accept_offers();
        for s in steps {
            let n = w.net.len();
            match s {
                Step::Deliver(i) if n > 0 => { let m = w.net.remove(i % n).unwrap(); w.deliver(m); }
                Step::Drop(i) if n > 0 => { w.net.remove(i % n); }
                Step::Duplicate(i) if n > 0 => { let m = w.net[i % n].clone(); w.net.push_back(m); }
                Step::Recover(a_side) => {
                    let who = if a_side { A } else { B };
                    let card = if a_side { &w.a } else { &w.b };
                    let ids: Vec<ExchangeId> = card.pending().map(|(id, _)| *id).collect();
                    for id in ids { w.input(who, wallet(who), msg::RECOVER, id.to_bytes()); }
                }
                _ => {}
            }
            // From any state, even if every message in flight is lost now,
            // recovery by both sides ends conserved and fair.
            let mut crash = w.clone();
            crash.net.clear();
            for _ in 0..3 { crash.recover_all(); }
            let h = crash.holdings();
            prop_assert!(h == BEFORE || h == SWAPPED, "after losing the network: {:?}", h);
            // Every state a card reaches reads back the same from its
            // record (which leaves out what it derives).
            for card in [&w.a, &w.b, &crash.a, &crash.b] {
                prop_assert_eq!(&VoucherCard::decode(&card.to_bytes()).unwrap(), card);
            }
        }
        // Finish: deliver what is left, then recover until nothing is pending.
        w.run();
        for _ in 0..3 { w.recover_all(); }
        prop_assert!(w.a.pending().next().is_none() && w.b.pending().next().is_none());
        let h = w.holdings();
        prop_assert!(h == BEFORE || h == SWAPPED, "unfair or not conserved: {:?}", h);
    }
}

#[test]
fn option_2a_offer_to_the_card_reaches_the_registered_acceptor() {
    use tenet_voucher::card::SET_ACCEPTOR;
    let mut w = World::new();
    // No acceptor yet: an offer to the card is refused.
    let s = StartExchange {
        redeem: false,
        responder: card_id(B),
        peer_wallet: card_id(B),
        give: coffee(2),
        want: Some(ticket(1)),
        expires_in: None,
    };
    w.input(A, wallet(A), msg::START_EXCHANGE, s.to_bytes());
    w.run();
    assert!(
        w.refusals.iter().any(|r| r.contains("no acceptor")),
        "{:?}",
        w.refusals
    );
    // An acceptor outside the card's domain is refused.
    w.input(B, wallet(B), SET_ACCEPTOR, card_id(A).to_bytes());
    assert!(
        w.refusals
            .last()
            .unwrap()
            .contains("acceptor must be an app")
    );
    // Register B's wallet, offer again: it reaches the wallet, which accepts.
    w.input(B, wallet(B), SET_ACCEPTOR, wallet(B).to_bytes());
    w.input(A, wallet(A), msg::START_EXCHANGE, s.to_bytes());
    w.run();
    assert!(
        w.to_wallets
            .iter()
            .any(|m| m.mtype == msg::OFFER && m.src == card_id(B) && m.dst == wallet(B))
    );
    w.accept_offers();
    w.run();
    assert_eq!(w.holdings(), SWAPPED);
}

/// The appendix's attack: S_B's user, after S_B committed (m4 lost on its
/// way to S_A), replays m1 and then asks to abort, to get v2 back while
/// keeping v1. The card refuses both; S_A's resolve completes the swap.
#[test]
fn the_appendix_attack_fails() {
    let mut w = World::new();
    w.start();
    let offer = w
        .to_wallets
        .iter()
        .find(|m| m.mtype == msg::OFFER)
        .unwrap()
        .param
        .clone();
    w.accept_offers();
    // Deliver everything but the commitment.
    while let Some(m) = w.net.pop_front() {
        if m.mtype != msg::COMMITMENT {
            w.deliver(m);
        }
    }
    let (id, e) =
        w.b.exchanges
            .iter()
            .next()
            .map(|(i, e)| (*i, e.clone()))
            .unwrap();
    assert_eq!(e.phase, Phase::Committed, "S_B has stored v1");
    let before = w.refusals.len();
    w.input(B, wallet(B), msg::ACCEPT, offer);
    w.input(B, wallet(B), msg::RECOVER, id.to_bytes());
    assert_eq!(w.refusals.len(), before + 2, "{:?}", w.refusals);
    assert!(w.refusals[before].contains("replay"));
    assert!(w.refusals[before + 1].contains("nothing to recover"));
    w.run();
    w.recover_all();
    assert_eq!(w.holdings(), SWAPPED);
}

#[test]
fn forged_confirmation_and_commitment_change_nothing() {
    use tenet_voucher::crypto::Crypto;
    use tenet_voucher::msg::{Commitment, Confirmation};
    let mut w = World::new();
    w.start();
    w.accept_offers();
    // Let the agreement reach A; hold A's confirmation back.
    let m2 = w.net.pop_front().unwrap();
    assert_eq!(m2.mtype, msg::AGREEMENT);
    w.deliver(m2);
    let m3 = w.net.pop_front().unwrap();
    assert_eq!(m3.mtype, msg::CONFIRMATION);
    let id = Confirmation::decode(&m3.param).unwrap().id;
    // A third card signs a confirmation for this exchange: wrong signer.
    let mut cc = TestCrypto::new(card_id(0xcc), 5);
    let forged = Confirmation {
        id,
        signature: cc.sign(&Confirmation::signed_bytes(&id)),
        certificate: cc.certificate(),
    };
    w.input(B, card_id(A), msg::CONFIRMATION, forged.to_bytes());
    // A's real signature, altered.
    let mut altered = Confirmation::decode(&m3.param).unwrap();
    altered.signature[0] ^= 1;
    w.input(B, card_id(A), msg::CONFIRMATION, altered.to_bytes());
    // A commitment with a guessed n2.
    w.input(
        A,
        card_id(B),
        msg::COMMITMENT,
        Commitment { n2: [7; 16] }.to_bytes(),
    );
    assert_eq!(w.refusals.len(), 3, "{:?}", w.refusals);
    assert_eq!(
        w.b.exchanges[&id].phase,
        Phase::AwaitingConfirmation,
        "v1 not stored on a forgery"
    );
    assert_eq!(
        w.a.exchanges[&id].phase,
        Phase::AwaitingCommitment,
        "v2 not stored on a forgery"
    );
    // The real m3 still completes the exchange.
    w.deliver(m3);
    w.run();
    assert_eq!(w.holdings(), SWAPPED);
}

#[test]
fn an_agreement_with_an_altered_hash_is_refused() {
    let mut w = World::new();
    w.start();
    w.accept_offers();
    let m2 = w.net.pop_front().unwrap();
    let mut a = msg::Agreement::decode(&m2.param).unwrap();
    a.offer_digest[0] ^= 1;
    w.input(A, m2.src, msg::AGREEMENT, a.to_bytes());
    assert!(
        w.refusals.last().unwrap().contains("no open offer"),
        "{:?}",
        w.refusals
    );
    assert_eq!(w.holdings()[0], 5, "v1 not deleted");
    w.deliver(m2);
    w.run();
    assert_eq!(w.holdings(), SWAPPED);
}

#[test]
fn an_admission_with_another_certificate_than_the_pinned_one_is_refused() {
    use tenet_voucher::crypto::Crypto;
    let mut w = with_lost(msg::COMMITMENT);
    // A pins a TTP certificate that is not the one the TTP presents.
    w.a.ttp_certificate = Some(vec![1, 2, 3]);
    w.recover_all();
    assert!(
        w.refusals
            .iter()
            .any(|r| r.contains("not the TTP certificate installed")),
        "{:?}",
        w.refusals
    );
    assert_eq!(
        w.a.exchanges.values().next().unwrap().phase,
        Phase::Resolving,
        "nothing stored"
    );
    // Pinned to the TTP's real certificate, the repeated request completes.
    w.a.ttp_certificate = Some(w.ct.certificate());
    w.recover_all();
    assert_eq!(w.holdings(), SWAPPED);
}

/// One step of a scripted run.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Wallet A starts an exchange; wallet B accepts the offer it gets.
    Start,
    /// The first message in flight arrives.
    Deliver,
    /// The first message in flight is lost.
    Drop,
    /// The wallet of card A or B orders recovery of all that is pending.
    Recover(u8),
}

/// Replays, on a copy of `w`, every message seen so far: each offer as its
/// wallet's accept again and as an offer to the responder card itself,
/// every message delivered from the network (`m2`, `m3`, `m4`, recovery
/// requests, admissions) to its destination again. Returns the copy.
fn replay_all(w: &World, offers: &[Vec<u8>], seen: &[Wire]) -> World {
    let mut r = w.clone();
    for o in offers {
        r.input(B, wallet(B), msg::ACCEPT, o.clone());
        r.input(B, card_id(A), msg::OFFER, o.clone());
    }
    for m in seen {
        r.deliver(m.clone());
    }
    r
}

fn act(w: &mut World, a: Act, offers: &mut Vec<Vec<u8>>, seen: &mut Vec<Wire>) {
    match a {
        Act::Start => {
            w.start();
            offers.extend(
                w.to_wallets
                    .iter()
                    .filter(|m| m.mtype == msg::OFFER)
                    .map(|m| m.param.clone()),
            );
            w.accept_offers();
        }
        Act::Deliver => {
            let m = w.net.pop_front().expect("a message in flight");
            seen.push(m.clone());
            w.deliver(m);
        }
        Act::Drop => {
            w.net.pop_front().expect("a message in flight");
        }
        Act::Recover(who) => {
            let card = if who == A { &w.a } else { &w.b };
            let ids: Vec<ExchangeId> = card.pending().map(|(id, _)| *id).collect();
            for id in ids {
                w.input(who, wallet(who), msg::RECOVER, id.to_bytes());
            }
        }
    }
}

/// Replays of every protocol message, at every step of a run that commits,
/// of runs recovered by abort and by resolve, and of a second exchange after
/// a first: a replay changes neither card's state nor the TTP's decisions,
/// and the run still ends as it would have without it.
#[test]
fn each_message_replayed_after_each_step_changes_nothing() {
    use Act::*;
    const TWICE: [u64; 4] = [1, 2, 4, 1];
    let runs: Vec<(&str, Vec<Act>, [u64; 4])> = vec![
        ("commit", vec![Start, Deliver, Deliver, Deliver], SWAPPED),
        (
            "m2 lost, B aborts",
            vec![Start, Drop, Recover(B), Deliver, Deliver, Recover(A)],
            BEFORE,
        ),
        (
            "m3 lost, B aborts first",
            vec![
                Start,
                Deliver,
                Drop,
                Recover(B),
                Deliver,
                Deliver,
                Recover(A),
                Deliver,
                Deliver,
            ],
            BEFORE,
        ),
        (
            "m3 lost, A resolves first",
            vec![
                Start,
                Deliver,
                Drop,
                Recover(A),
                Deliver,
                Deliver,
                Recover(B),
                Deliver,
                Deliver,
            ],
            SWAPPED,
        ),
        (
            "m4 lost, A resolves",
            vec![Start, Deliver, Deliver, Drop, Recover(A), Deliver, Deliver],
            SWAPPED,
        ),
        (
            "a second exchange after a first",
            vec![
                Start, Deliver, Deliver, Deliver, Start, Deliver, Deliver, Deliver,
            ],
            TWICE,
        ),
    ];
    for (name, acts, end) in runs {
        let mut w = World::new();
        let (mut offers, mut seen) = (Vec::new(), Vec::new());
        for (i, a) in acts.iter().enumerate() {
            act(&mut w, *a, &mut offers, &mut seen);
            let mut r = replay_all(&w, &offers, &seen);
            assert_eq!(r.a, w.a, "{name}, after {a:?} (step {i}): card A changed");
            assert_eq!(r.b, w.b, "{name}, after {a:?} (step {i}): card B changed");
            assert_eq!(
                r.ttp.decided, w.ttp.decided,
                "{name}, after {a:?} (step {i}): the TTP decided anew"
            );
            // The rest of the run, with the replays' answers still in flight.
            let (mut o2, mut s2) = (offers.clone(), seen.clone());
            for a in &acts[i + 1..] {
                act(&mut r, *a, &mut o2, &mut s2);
            }
            r.run();
            assert_eq!(r.holdings(), end, "{name}, replayed after step {i}");
            assert!(r.a.pending().next().is_none() && r.b.pending().next().is_none());
        }
        w.run();
        assert_eq!(w.holdings(), end, "{name} without replays");
    }
}

/// A card's stored state stays bounded however many exchanges it runs:
/// finished exchanges are compacted and at most `HISTORY` kept, accepted
/// offers at most `ACCEPTED_MEMORY`. (A card's store is a few tens of KiB.)
#[test]
fn a_cards_state_stays_bounded_over_many_exchanges() {
    use tenet_voucher::card::{ACCEPTED_MEMORY, HISTORY};
    let mut w = World::new();
    let rounds = 2 * (HISTORY + ACCEPTED_MEMORY);
    w.input(A, wallet(A), MINT, coffee(2 * rounds as u64).to_bytes());
    w.input(B, wallet(B), MINT, ticket(rounds as u64).to_bytes());
    let mut sizes = Vec::new();
    for _ in 0..rounds {
        w.start();
        w.accept_offers();
        w.run();
        sizes.push((w.a.to_bytes().len(), w.b.to_bytes().len()));
        // The exchange that just finished is the newest in both histories:
        // the oldest are forgotten, never the latest.
        let latest = *w.a.finished.back().unwrap();
        assert_eq!(w.b.finished.back(), Some(&latest));
        assert_eq!(w.a.exchanges[&latest].phase, Phase::Committed);
        assert_eq!(w.b.exchanges[&latest].phase, Phase::Committed);
    }
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
    assert_eq!(w.b.accepted.len(), ACCEPTED_MEMORY);
    assert_eq!(w.a.exchanges.len(), HISTORY);
    assert_eq!(w.b.exchanges.len(), HISTORY);
    assert!(
        w.a.exchanges
            .values()
            .all(|e| e.phase == Phase::Committed && e.agreement.certificate.is_empty())
    );
    // Once both memories are full, the size no longer grows.
    let steady = HISTORY + ACCEPTED_MEMORY;
    assert_eq!(sizes[steady], *sizes.last().unwrap(), "{sizes:?}");
    assert!(sizes.last().unwrap().1 < 24 * 1024, "{sizes:?}");
}

#[test]
fn stored_id_lists_of_a_wrong_length_are_refused_by_name() {
    use tenet_proto::tlv::{self, Tag};
    let state = |tag: u32, list: &[u8]| {
        let mut b = VoucherCard::default().to_bytes();
        // The accepted-offers list is always written (newest first, 8d):
        // replace it.
        let empty = [0x8d, 0x00];
        let at = b.windows(2).position(|w| w == empty).unwrap();
        b.drain(at..at + 2);
        if tag != 0x83 && tag != 0x8d {
            b.extend_from_slice(&empty);
        }
        tlv::write(&mut b, Tag(tag), list);
        b
    };
    for (tag, what) in [
        (0x83, "accepted offers"),
        (0x8d, "accepted offers"),
        (0x87, "finished exchanges"),
    ] {
        assert!(VoucherCard::decode(&state(tag, &[7; 64])).is_ok(), "{what}");
        let e = VoucherCard::decode(&state(tag, &[7; 33]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(what) && e.contains("multiple of 32"), "{e}");
    }
}

// The cap (docs/vouchers.md): a card never enters an exchange whose outcome
// it could not apply, whichever way the TTP decides.

use tenet_voucher::model::MAX_QUANTITY;

/// The overflow attack of the security issue: S_B holds close to the cap of
/// S_A's coffee; S_A offers enough coffee to cross it. S_B refuses to accept
/// before deleting anything, and nothing moves.
#[test]
fn an_offer_that_would_cross_the_cap_is_refused_before_anything_is_deleted() {
    let mut w = World::new();
    w.b.balances.credit(&coffee(MAX_QUANTITY - 1)).unwrap();
    let before = (w.a.clone(), w.b.clone());
    w.start(); // 2 coffee for 1 ticket: S_B would hold MAX_QUANTITY + 1
    w.accept_offers();
    w.run();
    assert_eq!(
        w.b, before.1,
        "S_B changed nothing: its ticket is not deleted"
    );
    assert!(w.b.exchanges.is_empty() && w.a.exchanges.is_empty());
    assert!(
        w.refusals
            .iter()
            .any(|r| r.contains("offer refused") && r.contains("cap")),
        "{:?}",
        w.refusals
    );
    // Exactly at the cap is fine.
    let mut w = World::new();
    w.b.balances.credit(&coffee(MAX_QUANTITY - 2)).unwrap();
    w.start();
    w.accept_offers();
    w.run();
    assert_eq!(w.b.balances.of(&coffee(0).class), MAX_QUANTITY);
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
}

/// A malicious initiator sends an offer naming a quantity it does not hold
/// (u64::MAX): the responder refuses it, and its wallet hears why.
#[test]
fn a_forged_offer_of_an_absurd_quantity_is_refused() {
    let mut w = World::new();
    let offer = msg::Offer {
        knows: None,
        redeem: None,
        initiator: card_id(A),
        responder: card_id(B),
        give: coffee(u64::MAX),
        want: Some(ticket(1)),
        n1: [9; 16],
        expires: None,
    };
    let before = w.b.clone();
    w.input(B, wallet(B), msg::ACCEPT, offer.to_bytes());
    assert_eq!(w.b, before);
    assert!(w.refusals[0].contains("cap"), "{:?}", w.refusals);
}

/// A responder with a refund pending cannot be pushed to the cap meanwhile:
/// the mint that would leave no room for the refund is refused, so the
/// abort always applies.
#[test]
fn a_pending_refund_keeps_its_headroom() {
    let mut w = World::new();
    // S_B holds MAX_QUANTITY - 1 tickets in all.
    w.b.balances.credit(&ticket(MAX_QUANTITY - 4)).unwrap();
    w.start();
    w.accept_offers(); // S_B deletes 1 ticket; the agreement is lost
    w.net.clear();
    assert_eq!(w.b.balances.of(&ticket(0).class), MAX_QUANTITY - 2);
    w.input(B, wallet(B), MINT, ticket(2).to_bytes());
    assert!(
        w.refusals.iter().any(|r| r.contains("mint refused")),
        "{:?}",
        w.refusals
    );
    w.input(B, wallet(B), MINT, ticket(1).to_bytes());
    assert_eq!(w.refusals.len(), 1, "{:?}", w.refusals);
    w.recover_all();
    assert_eq!(w.b.balances.of(&ticket(0).class), MAX_QUANTITY);
    assert!(w.b.pending().next().is_none(), "the abort applied");
    assert_eq!(w.refusals.len(), 1, "{:?}", w.refusals);
}

/// The initiator reserves at start what the exchange may bring: an offer
/// whose `v2` could cross the cap is refused, and so is a mint that would
/// leave no room for an open offer's `v2`.
#[test]
fn the_initiator_reserves_at_start() {
    let mut w = World::new();
    w.a.balances.credit(&ticket(MAX_QUANTITY)).unwrap();
    w.start();
    assert!(w.a.offers.is_empty());
    assert!(w.refusals[0].contains("offer refused"), "{:?}", w.refusals);

    let mut w = World::new();
    w.a.balances.credit(&ticket(MAX_QUANTITY - 1)).unwrap();
    w.start(); // may bring 1 ticket: exactly the cap
    assert_eq!(w.a.offers.len(), 1);
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
    w.start(); // a second open offer could bring one more
    assert_eq!(w.a.offers.len(), 1);
    assert!(w.refusals[0].contains("offer refused"), "{:?}", w.refusals);
}

/// Requests to the TTP on the network now.
fn to_ttp(w: &World) -> usize {
    w.net.iter().filter(|m| m.dst == card_id(T)).count()
}

/// A card recovers a stuck exchange by itself once it has been pending
/// for its timeout, timed from the first tick that sees it; nobody orders
/// it. The lost confirmation leaves both pending: whichever card's timeout
/// passes first decides, and the outcome is fair either way.
#[test]
fn a_stuck_exchange_is_recovered_by_the_cards_own_timeout() {
    for (after_a, after_b, outcome) in [(30, 60, SWAPPED), (60, 30, BEFORE)] {
        let mut w = with_lost(msg::CONFIRMATION);
        w.a.recover_after = after_a;
        w.b.recover_after = after_b;
        let t0 = 1_000_000;
        w.tick(t0);
        assert_eq!(w.a.pending().count() + w.b.pending().count(), 2);
        // Just before the first timeout, nothing is asked.
        w.tick(t0 + 29);
        assert!(w.ttp.decided.is_empty());
        assert_eq!(w.a.pending().count() + w.b.pending().count(), 2);
        // At the first timeout that card asks; the TTP's admission
        // finishes it, and the other card's own request later finishes it.
        w.tick(t0 + 30);
        assert_eq!(w.ttp.decided.len(), 1);
        w.tick(t0 + 60);
        assert!(w.a.pending().next().is_none() && w.b.pending().next().is_none());
        assert_eq!(w.holdings(), outcome);
        assert!(w.refusals.is_empty(), "{:?}", w.refusals);
    }
}

/// A card whose requests get no answer asks again, waiting twice as long
/// each time (up to an hour), and its timer survives encoding (a card
/// restarted in between resumes where it was).
#[test]
fn an_unanswered_card_asks_again_with_backoff() {
    let mut w = with_lost(msg::COMMITMENT);
    w.a.recover_after = 10;
    let id = *w.a.pending().next().unwrap().0;
    let cx = |w: &mut World, now| {
        let mut cx = Ctx {
            me: card_id(A),
            ttp: card_id(T),
            wallet: None,
            crypto: &mut w.ca,
            now,
        };
        let outs = w.a.tick(&mut cx, now);
        // The TTP never answers: its requests are lost.
        outs.iter().filter(|o| o.dst == card_id(T)).count()
    };
    let t0 = 5_000;
    let mut asked_at = Vec::new();
    for now in t0..t0 + 400 {
        if cx(&mut w, now) > 0 {
            asked_at.push(now - t0);
        }
        // Stored and read back after every tick: a restart loses nothing.
        w.a = VoucherCard::decode(&w.a.to_bytes()).unwrap();
    }
    assert_eq!(asked_at, [10, 30, 70, 150, 310]);
    assert_eq!(w.a.exchanges[&id].phase, Phase::Resolving);
    assert_eq!(w.a.exchanges[&id].asks, 5);
    assert_eq!(to_ttp(&w), 0);
    assert_eq!(tenet_voucher::card::backoff(10, 40), 3600);
    assert_eq!(tenet_voucher::card::backoff(7200, 3), 7200);
}

/// A card with timeout 0 never asks by itself, and a finished exchange
/// is never asked about.
#[test]
fn no_timeout_or_nothing_pending_asks_nothing() {
    let mut w = with_lost(msg::CONFIRMATION);
    w.tick(1);
    w.tick(1_000_000);
    assert!(w.ttp.decided.is_empty());
    assert_eq!(w.a.pending().count() + w.b.pending().count(), 2);
    let mut w = World::new();
    w.a.recover_after = 1;
    w.b.recover_after = 1;
    w.start();
    w.accept_offers();
    w.run();
    w.tick(1);
    w.tick(100);
    assert!(w.ttp.decided.is_empty());
    assert_eq!(w.holdings(), SWAPPED);
}

/// Takes the offers that reached B's wallet.
fn offers_to_b(w: &mut World) -> Vec<Vec<u8>> {
    let offers = w
        .to_wallets
        .iter()
        .filter(|m| m.mtype == msg::OFFER)
        .map(|m| m.param.clone())
        .collect();
    w.to_wallets.retain(|m| m.mtype != msg::OFFER);
    offers
}

/// An offer carries its expiry, signed with it (part of the offer's
/// digest); the responder's card refuses it once its clock is past it,
/// and nothing is deleted anywhere.
#[test]
fn an_expired_offer_is_refused_by_the_responder() {
    let mut w = World::new();
    w.start();
    let offer = offers_to_b(&mut w).remove(0);
    let expires = msg::Offer::decode(&offer).unwrap().expires;
    assert_eq!(expires, Some(w.now + 300));
    w.now += 300;
    w.input(B, wallet(B), msg::ACCEPT, offer);
    w.run();
    assert_eq!(w.refusals.len(), 1);
    assert!(
        w.refusals[0].contains("the offer expired at"),
        "{:?}",
        w.refusals
    );
    assert_eq!(w.holdings(), BEFORE);
    assert!(w.b.exchanges.is_empty() && w.a.exchanges.is_empty());
}

/// The responder's clock lags and it accepts an offer the initiator's
/// card holds expired: the initiator refuses the agreement (deleting
/// nothing), the responder, which deleted its side, aborts with the TTP
/// by itself, and the initiator's next tick forgets the offer, releasing
/// the headroom it reserved. Nobody gains or loses.
#[test]
fn an_offer_expired_on_the_initiator_ends_aborted_and_releases_its_headroom() {
    let mut w = World::new();
    w.b.recover_after = 10;
    w.start();
    let offer = offers_to_b(&mut w).remove(0);
    let reserved = w.a.committed(&ticket(0).class);
    assert_eq!(
        reserved, 1,
        "the open offer reserves the ticket it may bring"
    );
    // B accepts at 299 s by its clock; A reads the agreement at 300 s.
    w.now += 299;
    w.input(B, wallet(B), msg::ACCEPT, offer);
    w.now += 1;
    w.run();
    assert_eq!(w.refusals.len(), 1, "{:?}", w.refusals);
    assert!(w.refusals[0].contains("has expired"), "{:?}", w.refusals);
    assert_eq!(w.b.pending().count(), 1, "B deleted its ticket");
    let t = w.now;
    w.tick(t);
    w.tick(t + 10);
    assert_eq!(w.holdings(), BEFORE);
    assert!(w.b.pending().next().is_none());
    assert!(w.a.offers.is_empty(), "the tick forgot the expired offer");
    assert_eq!(w.a.committed(&ticket(0).class), 0);
}

/// The initiator's wallet withdraws an open offer (RFC 4154's cancel):
/// the card forgets it, so an agreement to it is refused and the
/// responder aborts; withdrawing what is not open is refused; an offer to
/// another card stays.
#[test]
fn a_withdrawn_offer_cannot_be_agreed_to() {
    use tenet_voucher::card::WITHDRAW;
    let mut w = World::new();
    w.b.recover_after = 10;
    w.start();
    let offer = offers_to_b(&mut w).remove(0);
    // Withdrawing offers to another card withdraws nothing, and says so.
    w.input(A, wallet(A), WITHDRAW, card_id(T).to_bytes());
    assert_eq!(w.refusals.len(), 1);
    assert!(
        w.refusals[0].contains("no open offer to"),
        "{:?}",
        w.refusals
    );
    assert_eq!(w.a.offers.len(), 1);
    w.input(A, wallet(A), WITHDRAW, card_id(B).to_bytes());
    assert!(w.a.offers.is_empty());
    w.input(A, wallet(A), WITHDRAW, Vec::new());
    assert_eq!(w.refusals.len(), 2, "nothing left to withdraw");
    // B did not hear of it and accepts: A refuses, B aborts by itself.
    w.input(B, wallet(B), msg::ACCEPT, offer);
    w.run();
    assert_eq!(w.refusals.len(), 3);
    assert!(w.refusals[2].contains("withdrawn"), "{:?}", w.refusals);
    let t = w.now;
    w.tick(t);
    w.tick(t + 10);
    assert_eq!(w.holdings(), BEFORE);
    assert!(w.b.pending().next().is_none());
}

/// An offer an agreement has reached is no longer open: withdrawing it is
/// refused, and the exchange goes on to commit.
#[test]
fn an_agreed_offer_cannot_be_withdrawn() {
    use tenet_voucher::card::WITHDRAW;
    let mut w = World::new();
    w.start();
    w.accept_offers();
    // Deliver m2 only.
    let m2 = w.net.pop_front().unwrap();
    assert_eq!(m2.mtype, msg::AGREEMENT);
    w.deliver(m2);
    w.input(A, wallet(A), WITHDRAW, Vec::new());
    assert_eq!(w.refusals.len(), 1, "{:?}", w.refusals);
    w.run();
    assert_eq!(w.holdings(), SWAPPED);
}

/// Presenting (RFC 4154's present): B's card signs that it holds at least
/// a ticket for the verifier's challenge; the verifier accepts it once.
/// A replay, a statement for another verifier or challenge, one showing
/// less than asked, a forged sender or an altered statement is refused;
/// a card that holds less refuses to sign; nothing moves.
#[test]
fn a_card_presents_what_it_holds_and_a_replay_is_refused() {
    use tenet_voucher::crypto::Crypto;
    use tenet_voucher::present::{
        Challenges, PRESENT, PRESENTATION, PresentError, PresentOrder, Presentation,
    };
    let mut w = World::new();
    let verifier = wallet(T);
    let mut challenges = Challenges::default();
    let c = [5u8; 16];
    challenges.issue(c);
    let order = |amount, challenge| PresentOrder {
        verifier,
        challenge,
        amount,
    };
    w.input(B, wallet(B), PRESENT, order(ticket(2), c).to_bytes());
    let sent = w.net.pop_front().expect("the statement");
    assert_eq!((sent.dst, sent.mtype), (verifier, PRESENTATION));
    let p = Presentation::decode(&sent.param).unwrap();
    assert_eq!(
        (p.holder, p.time, &p.amount),
        (card_id(B), w.now, &ticket(2))
    );
    let ct = TestCrypto::new(card_id(T), 9);
    let check = |s, c: &[u8], m: &[u8], g: &[u8]| ct.verify(s, c, m, g);
    // Asking for more than it shows, or from another sender: refused,
    // and the challenge stays open.
    assert!(matches!(
        challenges.verify(check, verifier, card_id(B), &p, &ticket(3)),
        Err(PresentError::NotEnough { .. })
    ));
    assert!(matches!(
        challenges.verify(check, verifier, card_id(A), &p, &ticket(1)),
        Err(PresentError::NotFromHolder { .. })
    ));
    assert!(matches!(
        challenges.verify(check, wallet(A), card_id(B), &p, &ticket(1)),
        Err(PresentError::OtherVerifier(_))
    ));
    let mut altered = p.clone();
    altered.amount = ticket(3);
    assert!(matches!(
        challenges.verify(check, verifier, card_id(B), &altered, &ticket(3)),
        Err(PresentError::Signature(_))
    ));
    // Verified once; the same statement again is a replay.
    assert_eq!(
        challenges.verify(check, verifier, card_id(B), &p, &ticket(1)),
        Ok(())
    );
    assert_eq!(
        challenges.verify(check, verifier, card_id(B), &p, &ticket(1)),
        Err(PresentError::UnknownChallenge)
    );
    // A card holding less refuses to sign.
    w.input(B, wallet(B), PRESENT, order(ticket(4), [6; 16]).to_bytes());
    assert!(w.net.is_empty());
    assert!(w.refusals[0].contains("holds 3"), "{:?}", w.refusals);
    assert_eq!(w.holdings(), BEFORE);
}

/// A timer set while the host's clock was a year ahead does not wait for
/// that year once the clock is corrected: it is brought back to what a
/// timer set now would wait.
#[test]
fn a_timer_set_on_a_clock_that_was_ahead_is_brought_back() {
    let mut w = with_lost(msg::CONFIRMATION);
    w.a.recover_after = 30;
    let real = 1_000_000;
    let ahead = real + 365 * 86_400;
    w.tick(ahead);
    w.tick(real);
    w.tick(real + 29);
    assert!(w.ttp.decided.is_empty());
    w.tick(real + 30);
    assert_eq!(w.ttp.decided.len(), 1, "A asked 30 s after the correction");
}

/// A card's state stored before cards recovered by themselves has no
/// recovery timeout and no timers: it still loads, with the default
/// timeout, and its pending exchanges are timed from the next tick.
#[test]
fn a_state_stored_before_recovery_timers_loads_with_the_default() {
    use tenet_voucher::card::DEFAULT_RECOVER_AFTER;
    let w = with_lost(msg::CONFIRMATION);
    // The state without its timeout (tag 88).
    let stored = w.a.to_bytes();
    let fields = tenet_proto::tlv::parse_all(&stored).unwrap();
    assert!(fields.iter().any(|f| f.tag == tenet_proto::tlv::Tag(0x88)));
    let mut bytes = Vec::new();
    for f in fields
        .iter()
        .filter(|f| f.tag != tenet_proto::tlv::Tag(0x88))
    {
        tenet_proto::tlv::write(&mut bytes, f.tag, f.value);
    }
    let old = VoucherCard::decode(&bytes).unwrap();
    assert_eq!(old.recover_after, DEFAULT_RECOVER_AFTER);
    assert_eq!(old.pending().count(), 1);
    assert!(old.pending().all(|(_, e)| e.due.is_none() && e.asks == 0));
    assert_eq!(old.balances, w.a.balances);
}

/// Wallet A gives B two coffees: the exchange with nothing wanted back.
fn start_gift(w: &mut World) {
    let s = StartExchange {
        redeem: false,
        responder: card_id(B),
        peer_wallet: wallet(B),
        give: coffee(2),
        want: None,
        expires_in: Some(300),
    };
    w.input(A, wallet(A), msg::START_EXCHANGE, s.to_bytes());
}

/// A gift (transfer): B accepts deleting nothing, A deletes its coffees
/// at the agreement, B stores them at the confirmation. Nothing comes
/// back, and the gift's id is derived apart from any exchange's.
#[test]
fn a_gift_moves_the_vouchers_one_way() {
    let mut w = World::new();
    start_gift(&mut w);
    let offer = offers_to_b(&mut w).remove(0);
    assert!(msg::Offer::decode(&offer).unwrap().is_gift());
    w.input(B, wallet(B), msg::ACCEPT, offer);
    w.run();
    assert_eq!(w.holdings(), [3, 0, 2, 3]);
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
    let (id, e) = w.b.exchanges.iter().next().unwrap();
    assert!(e.offer.is_gift() && e.phase == Phase::Committed);
    let n2 = e.n2.unwrap();
    assert_eq!(*id, ExchangeId::of_gift_n2(&n2));
    assert_ne!(*id, ExchangeId::of_n2(&n2));
    assert!(w.ttp.decided.is_empty());
}

/// A gift whose confirmation is lost ends delivered (the payer resolves
/// first) or refunded (the payee aborts first), never both and never
/// neither; the TTP keeps its decision under the gift's id, n2 hashed
/// under the gifts' own label, never an id an exchange could have.
#[test]
fn a_broken_gift_ends_delivered_or_refunded() {
    for payer_first in [true, false] {
        let mut w = World::new();
        start_gift(&mut w);
        w.accept_offers();
        w.run_losing(msg::CONFIRMATION);
        assert_eq!(w.holdings(), [3, 0, 0, 3], "the coffees are in flight");
        let first = if payer_first { A } else { B };
        let card = if payer_first { &w.a } else { &w.b };
        let id = *card.pending().next().unwrap().0;
        w.input(first, wallet(first), msg::RECOVER, id.to_bytes());
        w.run();
        w.recover_all();
        let expected = if payer_first {
            [3, 0, 2, 3]
        } else {
            [5, 0, 0, 3]
        };
        assert_eq!(w.holdings(), expected, "payer first: {payer_first}");
        assert!(w.a.pending().next().is_none() && w.b.pending().next().is_none());
        assert_eq!(w.ttp.decided.len(), 1);
        let n2 = w.b.exchanges[&id].n2.unwrap();
        assert!(w.ttp.decided.contains_key(&ExchangeId::of_gift_n2(&n2)));
        assert_ne!(id, ExchangeId::of_n2(&n2), "the gifts' own key space");
    }
}

/// An exchange policy never takes a gift: unsolicited transfers need
/// their own consent.
#[test]
fn an_exchange_policy_never_takes_a_gift() {
    let p: tenet_voucher::policy::Policy = format!(
        "GIVE>=1:{}:coffee,WANT<=5:{}:ticket",
        coffee(1).class.issuer,
        ticket(1).class.issuer
    )
    .parse()
    .unwrap();
    let mut w = World::new();
    start_gift(&mut w);
    let gift = msg::Offer::decode(&offers_to_b(&mut w).remove(0)).unwrap();
    assert!(!p.allows(&gift));
    w.start();
    let offer = msg::Offer::decode(&offers_to_b(&mut w).remove(0)).unwrap();
    assert!(p.allows(&offer));
}

/// Wallet A orders its card to redeem `what` at card B.
fn start_redeem(w: &mut World, what: Amount) {
    let s = StartExchange {
        redeem: true,
        responder: card_id(B),
        peer_wallet: wallet(B),
        give: what,
        want: None,
        expires_in: Some(300),
    };
    w.input(A, wallet(A), msg::START_EXCHANGE, s.to_bytes());
}

/// Checks receipts with the test stand-in for the CA.
fn check_receipt(w: &World, r: &tenet_voucher::redeem::Receipt) -> Result<(), RedeemError> {
    let ct = w.ct.clone();
    r.verify(&move |s: tenet_pki::Signer, c, m, g| ct.verify(s.id, c, m, g))
}

use tenet_voucher::crypto::Crypto as _;
use tenet_voucher::redeem::{Proof, RedeemError};

/// The holder's receipts, from its card's log.
fn receipts(w: &World) -> Vec<tenet_voucher::redeem::Receipt> {
    w.a.exchanges.values().filter_map(|e| e.receipt()).collect()
}

/// A redemption at the issuer's card: the holder's tickets are destroyed
/// (the issuer's card credits nothing), and the holder gets a receipt that
/// verifies; its id is n2 hashed under the redemptions' own label.
#[test]
fn a_redemption_destroys_the_vouchers_for_a_receipt() {
    let mut w = World::new();
    w.a.balances.credit(&ticket(2)).unwrap();
    start_redeem(&mut w, ticket(1));
    let offer = offers_to_b(&mut w).remove(0);
    let o = msg::Offer::decode(&offer).unwrap();
    assert!(o.is_redemption() && !o.is_gift());
    assert_eq!(o.redeem, Some(card_id(T)), "the offer names the TTP");
    w.input(B, wallet(B), msg::ACCEPT, offer);
    w.run();
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
    assert_eq!(w.holdings(), [5, 1, 0, 3], "one ticket destroyed");
    let r = receipts(&w);
    assert_eq!(r.len(), 1);
    check_receipt(&w, &r[0]).unwrap();
    let Proof::Commitment(n2) = r[0].proof else {
        panic!("completed by m4")
    };
    assert_eq!(r[0].id(), ExchangeId::of_redeem_n2(&n2));
    assert_ne!(r[0].id(), ExchangeId::of_gift_n2(&n2));
    assert_ne!(r[0].id(), ExchangeId::of_n2(&n2));
    // The redeemer's log has the run and no receipt.
    let b = w.b.log(0);
    assert_eq!(b.entries.len(), 1);
    assert!(b.entries[0].receipt.is_none());
    // Changed in any part, the receipt is refused.
    let mut more = r[0].clone();
    more.offer.give.quantity = 2;
    assert_eq!(check_receipt(&w, &more), Err(RedeemError::WrongOffer));
    let mut other_n2 = r[0].clone();
    other_n2.proof = Proof::Commitment([0; 16]);
    assert_eq!(
        check_receipt(&w, &other_n2),
        Err(RedeemError::WrongCommitment)
    );
    let mut as_gift = r[0].clone();
    as_gift.offer.redeem = None;
    assert_eq!(
        check_receipt(&w, &as_gift),
        Err(RedeemError::NotARedemption)
    );
    // Encoded and decoded, it is the same receipt.
    let bytes = r[0].to_bytes();
    assert_eq!(
        tenet_voucher::redeem::Receipt::decode(&bytes).unwrap(),
        r[0]
    );
}

/// A redemption broken after the agreement: resolved (the holder asks
/// first), the tickets are gone and the receipt's proof is the TTP's
/// resolve; aborted (the redeemer asks first), the holder has its tickets
/// back and no receipt. Never both, never neither.
#[test]
fn a_broken_redemption_ends_with_a_receipt_or_the_vouchers_back() {
    for holder_first in [true, false] {
        let mut w = World::new();
        w.a.balances.credit(&ticket(2)).unwrap();
        start_redeem(&mut w, ticket(2));
        w.accept_offers();
        w.run_losing(msg::CONFIRMATION);
        assert_eq!(w.holdings(), [5, 0, 0, 3], "the tickets are in flight");
        let first = if holder_first { A } else { B };
        let card = if holder_first { &w.a } else { &w.b };
        let id = *card.pending().next().unwrap().0;
        w.input(first, wallet(first), msg::RECOVER, id.to_bytes());
        w.run();
        w.recover_all();
        assert!(w.a.pending().next().is_none() && w.b.pending().next().is_none());
        let r = receipts(&w);
        if holder_first {
            assert_eq!(w.holdings(), [5, 0, 0, 3], "destroyed, not credited");
            assert_eq!(r.len(), 1);
            assert!(matches!(r[0].proof, Proof::Admission(_)));
            check_receipt(&w, &r[0]).unwrap();
            // An abort admission is no proof.
            let mut aborted = r[0].clone();
            if let Proof::Admission(a) = &mut aborted.proof {
                a.kind = msg::Kind::Abort;
            }
            assert_eq!(
                check_receipt(&w, &aborted),
                Err(RedeemError::WrongAdmission)
            );
        } else {
            assert_eq!(w.holdings(), [5, 2, 0, 3], "the tickets came back");
            assert!(r.is_empty(), "no receipt for vouchers kept");
        }
        assert_eq!(w.ttp.decided.len(), 1);
        let n2 = w.b.exchanges[&id].n2.unwrap();
        assert!(w.ttp.decided.contains_key(&ExchangeId::of_redeem_n2(&n2)));
    }
}

/// Only the issuer's card, or a card it delegated, redeems a class: B is
/// not the coffee's issuer and refuses; with A's delegation installed it
/// redeems, and the holder's card checks the delegation it sends.
#[test]
fn a_redemption_needs_the_issuer_or_its_delegation() {
    use tenet_voucher::redeem::{DELEGATE, DELEGATION, DelegateOrder, INSTALL_DELEGATION};
    let mut w = World::new();
    w.a.balances.credit(&ticket(1)).unwrap();
    w.input(B, wallet(B), MINT, ticket(0).to_bytes());
    w.refusals.clear();
    // B takes coffee (issuer A) for redemption: refused, nothing moves.
    start_redeem(&mut w, coffee(2));
    let offer = offers_to_b(&mut w).remove(0);
    w.input(B, wallet(B), msg::ACCEPT, offer.clone());
    assert!(
        w.refusals.iter().any(|r| r.contains("redeems only")),
        "{:?}",
        w.refusals
    );
    assert_eq!(w.holdings(), [5, 1, 0, 3]);
    // A forged agreement from B without a delegation: A's card refuses.
    let o = msg::Offer::decode(&offer).unwrap();
    let id = ExchangeId::of_redeem_n2(&[3; 16]);
    let forged = msg::Agreement {
        knows: None,
        offer_digest: o.digest(),
        id,
        signature: w
            .cb
            .clone()
            .sign(&msg::Agreement::signed_bytes(&o.digest(), &id)),
        certificate: w.cb.certificate(),
        delegation: None,
    };
    w.refusals.clear();
    w.input(A, card_id(B), msg::AGREEMENT, forged.to_bytes());
    assert!(
        w.refusals.iter().any(|r| r.contains("shows no delegation")),
        "{:?}",
        w.refusals
    );
    assert_eq!(w.holdings(), [5, 1, 0, 3]);
    // A's card (the coffee's issuer) delegates to B; B installs it.
    let order = DelegateOrder {
        redeemer: card_id(B),
        class: coffee(0).class,
        until: w.now + 3600,
    };
    w.input(A, wallet(A), DELEGATE, order.to_bytes());
    let d = w.to_wallets.pop().unwrap();
    assert_eq!(d.mtype, DELEGATION);
    // A delegation for a class of another issuer is refused.
    let mut alien = order.clone();
    alien.class = ticket(0).class;
    w.input(A, wallet(A), DELEGATE, alien.to_bytes());
    assert!(w.refusals.last().unwrap().contains("own domain"));
    // Installed on another card than the one it names: refused.
    w.refusals.clear();
    w.input(A, wallet(A), INSTALL_DELEGATION, d.param.clone());
    assert!(!w.refusals.is_empty(), "A is not the redeemer");
    w.refusals.clear();
    w.input(B, wallet(B), INSTALL_DELEGATION, d.param);
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
    w.input(B, wallet(B), msg::ACCEPT, offer);
    w.run();
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
    assert_eq!(w.holdings(), [3, 1, 0, 3], "two coffees destroyed");
    let r = receipts(&w);
    assert_eq!(r.len(), 1);
    assert!(r[0].agreement.delegation.is_some());
    check_receipt(&w, &r[0]).unwrap();
    let mut stripped = r[0].clone();
    stripped.agreement.delegation = None;
    assert!(matches!(
        check_receipt(&w, &stripped),
        Err(RedeemError::NotEntitled { .. })
    ));
    // Past its end, B's card no longer redeems the class.
    w.now += 3600;
    start_redeem(&mut w, coffee(1));
    let offer = offers_to_b(&mut w).remove(0);
    w.input(B, wallet(B), msg::ACCEPT, offer);
    assert!(w.refusals.last().unwrap().contains("expired"));
}

/// The card numbers its finished runs; a wallet asks for those after the
/// last it saw, and learns from `first` when the card forgot some before
/// it asked.
#[test]
fn the_cards_log_numbers_finished_runs_and_shows_when_it_wrapped() {
    let mut w = World::new();
    w.a.balances.credit(&coffee(100)).unwrap();
    for _ in 0..3 {
        start_gift(&mut w);
        w.accept_offers();
        w.run();
    }
    let log = w.a.log(0);
    assert_eq!((log.first, log.next), (0, 3));
    let seqs: Vec<u64> = log.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert_eq!(w.a.log(2).entries.len(), 1);
    assert!(w.a.log(3).entries.is_empty());
    // Sixteen more runs: the card still holds run 3 on.
    let more = |w: &mut World, n| {
        for _ in 0..n {
            start_gift(w);
            w.accept_offers();
            w.run();
        }
    };
    more(&mut w, tenet_voucher::card::HISTORY);
    assert_eq!(w.a.log(3).first, 3, "nothing missed yet");
    more(&mut w, 1);
    let log = w.a.log(3);
    assert_eq!(log.next, 4 + tenet_voucher::card::HISTORY as u64);
    assert_eq!(
        log.first, 4,
        "the card forgot run 3 before the wallet saw it"
    );
    let bytes = log.to_bytes();
    assert_eq!(tenet_voucher::card::Log::decode(&bytes).unwrap(), log);
    // The numbering survives the card's store.
    let again = VoucherCard::decode(&w.a.to_bytes()).unwrap();
    assert_eq!(again.log(0), w.a.log(0));
}

/// A relay that adds a delegation to an agreement that needs none (an
/// exchange, or a redemption at the issuer's card itself) is refused: the
/// delegation is not under the agreement's signature, and would only grow
/// the holder's records.
#[test]
fn an_agreement_with_a_needless_delegation_is_refused() {
    for redeem in [false, true] {
        let mut w = World::new();
        w.a.balances.credit(&ticket(2)).unwrap();
        if redeem {
            start_redeem(&mut w, ticket(1));
        } else {
            w.start();
        }
        w.accept_offers();
        let m2 = w.net.pop_front().unwrap();
        assert_eq!(m2.mtype, msg::AGREEMENT);
        let mut a = msg::Agreement::decode(&m2.param).unwrap();
        a.delegation = Some(tenet_voucher::redeem::Delegation {
            issuer: card_id(B),
            redeemer: card_id(B),
            class: ticket(0).class,
            until: u64::MAX,
            signature: vec![1; 64],
            certificate: vec![2; 300],
        });
        let before = w.a.clone();
        w.input(A, m2.src, msg::AGREEMENT, a.to_bytes());
        assert!(
            w.refusals
                .last()
                .is_some_and(|r| r.contains("delegation comes only")),
            "{:?}",
            w.refusals
        );
        assert_eq!(w.a, before, "nothing changed");
    }
    // A padded delegation does not even decode.
    let d = tenet_voucher::redeem::Delegation {
        issuer: card_id(A),
        redeemer: card_id(B),
        class: coffee(0).class,
        until: 1,
        signature: vec![1; 64],
        certificate: vec![2; 5000],
    };
    assert!(tenet_voucher::redeem::Delegation::decode(&d.to_bytes()).is_err());
}

/// Strangers' gifts cannot fill the payee's store: beyond 16 accepted
/// gifts and redemptions still pending the card takes no more until they
/// end, and beyond 4 from one initiating card none more from it; an
/// exchange, which the payee pays with its own vouchers, is not counted.
#[test]
fn a_card_bounds_the_pending_runs_it_accepted_in_all_and_per_peer() {
    use tenet_voucher::card::{MAX_PENDING_ACCEPTED, MAX_PENDING_PER_PEER};
    let gift_from = |who: u8, n: u8| msg::Offer {
        knows: None,
        initiator: card_id(who),
        responder: card_id(B),
        give: coffee(1),
        want: None,
        n1: [n; 16],
        expires: None,
        redeem: None,
    };
    // One peer: four pending, the fifth refused.
    let mut w = World::new();
    for n in 0..=MAX_PENDING_PER_PEER as u8 {
        w.input(B, wallet(B), msg::ACCEPT, gift_from(0x10, n).to_bytes());
    }
    assert_eq!(w.b.pending().count(), MAX_PENDING_PER_PEER);
    assert!(
        w.refusals
            .last()
            .is_some_and(|r| r.contains("takes no more from it")),
        "{:?}",
        w.refusals
    );
    // An exchange, paid with B's own ticket, is not counted.
    let exchange = msg::Offer {
        want: Some(ticket(1)),
        ..gift_from(0x10, 99)
    };
    w.refusals.clear();
    w.input(B, wallet(B), msg::ACCEPT, exchange.to_bytes());
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
    assert_eq!(w.b.pending().count(), MAX_PENDING_PER_PEER + 1);
    // Many peers: sixteen pending, the seventeenth refused.
    let mut w = World::new();
    for who in 0..=MAX_PENDING_ACCEPTED as u8 {
        w.input(
            B,
            wallet(B),
            msg::ACCEPT,
            gift_from(0x20 + who, 0).to_bytes(),
        );
    }
    assert_eq!(w.b.pending().count(), MAX_PENDING_ACCEPTED);
    assert!(
        w.refusals
            .last()
            .is_some_and(|r| r.contains("it takes no more until")),
        "{:?}",
        w.refusals
    );
}

/// A receipt stays on the holder's card until a wallet's journal has
/// read it, however many runs finish meanwhile; and the card starts no
/// redemption beyond 16 receipts no wallet has read. The log answers a
/// page at a time.
#[test]
fn a_receipt_stays_until_a_wallet_has_read_it() {
    use tenet_voucher::card::{LOG_REQUEST, LogRequest, MAX_UNREAD_RECEIPTS};
    let mut w = World::new();
    w.a.balances.credit(&ticket(100)).unwrap();
    w.a.balances.credit(&coffee(100)).unwrap();
    start_redeem(&mut w, ticket(1));
    w.accept_offers();
    w.run();
    assert_eq!(receipts(&w).len(), 1);
    // Twenty gifts later, the receipt is still there.
    for _ in 0..20 {
        start_gift(&mut w);
        w.accept_offers();
        w.run();
    }
    assert_eq!(receipts(&w).len(), 1, "kept until read");
    // A wallet reads the log from 0, then asks from beyond: read.
    w.input(
        A,
        wallet(A),
        LOG_REQUEST,
        LogRequest { since: 0 }.to_bytes(),
    );
    let page = w.to_wallets.pop().unwrap();
    assert_eq!(page.mtype, tenet_voucher::card::LOG);
    let next = w.a.next_seq;
    w.input(
        A,
        wallet(A),
        LOG_REQUEST,
        LogRequest { since: next }.to_bytes(),
    );
    start_gift(&mut w);
    w.accept_offers();
    w.run();
    assert!(receipts(&w).is_empty(), "read, so it may go");
    // Unread receipts: at most 16, then no more redemptions start.
    for _ in 0..MAX_UNREAD_RECEIPTS {
        start_redeem(&mut w, ticket(1));
        w.accept_offers();
        w.run();
    }
    assert_eq!(receipts(&w).len(), MAX_UNREAD_RECEIPTS);
    // The log answers in pages of at most LOG_PAGE_BYTES; asking from the
    // next number after each page reads every run.
    let (mut since, mut read) = (0, 0);
    loop {
        let log = w.a.log(since);
        let bytes: usize = log
            .entries
            .iter()
            .map(|e| {
                e.summary.to_bytes().len() + e.receipt.as_ref().map_or(0, |r| r.to_bytes().len())
            })
            .sum();
        assert!(bytes <= tenet_voucher::card::LOG_PAGE_BYTES, "{bytes}");
        assert!(log.entries.len() < w.a.exchanges.len(), "a page, not all");
        read += log.entries.len();
        match log.entries.last() {
            Some(e) if e.seq + 1 < log.next => since = e.seq + 1,
            _ => break,
        }
    }
    assert_eq!(read, w.a.exchanges.len(), "every run read, page by page");
    w.refusals.clear();
    start_redeem(&mut w, ticket(1));
    assert!(
        w.refusals
            .last()
            .is_some_and(|r| r.contains("await a wallet")),
        "{:?}",
        w.refusals
    );
    // A journal of another card (a number beyond this card's) acknowledges
    // nothing.
    w.input(
        A,
        wallet(A),
        LOG_REQUEST,
        LogRequest { since: u64::MAX }.to_bytes(),
    );
    assert_eq!(w.a.acked, next);
}

/// `card`'s record without its table of certificates (tag ae).
fn without_certificate_table(card: &VoucherCard) -> Vec<u8> {
    use tenet_proto::tlv::{Tag, parse_all, write};
    let stored = card.to_bytes();
    let mut out = Vec::new();
    for f in parse_all(&stored).unwrap() {
        if f.tag != Tag(0xae) {
            write(&mut out, f.tag, f.value);
        }
    }
    out
}

/// A card keeps the certificate its exchanges' agreements carry once, in
/// its record's table: after the run that brought it ends (its record
/// compacted), and while the next run with the same peer is pending, whose
/// record names it there by reference. Both cards, reloaded from their
/// records, still recover that run with it.
#[test]
fn a_card_keeps_a_peers_certificate_once_and_recovers_with_it_after_a_reload() {
    let mut w = World::new();
    w.input(A, wallet(A), MINT, coffee(5).to_bytes());
    w.input(B, wallet(B), MINT, ticket(5).to_bytes());
    w.start();
    w.accept_offers();
    w.run();
    let cert_b = w.cb.certificate();
    for card in [&w.a, &w.b] {
        assert_eq!(card.pending().count(), 0);
        let reloaded = VoucherCard::decode(&card.to_bytes()).unwrap();
        let kept: Vec<&[u8]> = reloaded
            .certificates
            .iter()
            .map(|k| k.certificate())
            .collect();
        assert_eq!(kept, [cert_b.as_slice()], "kept after the run");
    }
    // The next run loses m3: both cards stay pending.
    w.start();
    w.accept_offers();
    w.run_losing(msg::CONFIRMATION);
    for card in [&w.a, &w.b] {
        let (_, e) = card.pending().next().expect("pending");
        assert_eq!(e.agreement.certificate, cert_b);
        assert_eq!(card.certificates.len(), 1);
        // The pending run's record names the certificate: without the
        // table, the record does not load.
        let e = VoucherCard::decode(&without_certificate_table(card))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("names a certificate the record does not hold"),
            "{e}"
        );
    }
    w.a = VoucherCard::decode(&w.a.to_bytes()).unwrap();
    w.b = VoucherCard::decode(&w.b.to_bytes()).unwrap();
    for card in [&w.a, &w.b] {
        let (_, e) = card.pending().next().expect("pending after the reload");
        assert_eq!(e.agreement.certificate, cert_b);
    }
    w.recover_all();
    assert!(w.a.pending().next().is_none() && w.b.pending().next().is_none());
    assert_eq!(w.holdings(), [6, 2, 4, 6], "two runs swapped");
    assert!(w.refusals.is_empty(), "{:?}", w.refusals);
}

/// Records written before the in-place layout (whole amounts, whole
/// agreements, the accepted offers oldest first and the finished list
/// written out; `tests/data`, from the code before it) still load, and are
/// the same state once written again in the new layout.
#[test]
fn a_record_written_before_the_in_place_layout_loads_and_keeps_its_state() {
    use tenet_proto::tlv::{Tag, parse_all};
    let fixture = |name: &str| {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let hex = std::fs::read_to_string(path).unwrap();
        (0..hex.trim().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    let tags = |b: &[u8]| {
        parse_all(b)
            .unwrap()
            .iter()
            .map(|f| f.tag)
            .collect::<Vec<Tag>>()
    };
    for (name, holdings, offers, accepted) in [
        ("record-before-in-place-layout-a.hex", [4, 2], 1, 0),
        ("record-before-in-place-layout-b.hex", [4, 5], 0, 3),
    ] {
        let bytes = fixture(name);
        let old_tags = tags(&bytes);
        assert!(
            old_tags.contains(&Tag(0xa0)) && old_tags.contains(&Tag(0x87)),
            "{name}"
        );
        assert!(!old_tags.contains(&Tag(0x8c)), "{name}: the old layout");
        let card = VoucherCard::decode(&bytes).unwrap();
        let held = [
            card.balances.of(&coffee(0).class),
            card.balances.of(&ticket(0).class),
        ];
        assert_eq!(held, holdings, "{name}");
        assert_eq!(card.offers.len(), offers, "{name}");
        assert_eq!(card.accepted.len(), accepted, "{name}");
        assert_eq!(card.exchanges.len(), 3, "{name}");
        assert_eq!(card.pending().count(), 1, "{name}");
        assert_eq!(card.finished.len(), 2, "{name}");
        // In the order the old record wrote them: accepted offers oldest
        // first (83), finished runs in the order they finished (87).
        let raw = parse_all(&bytes).unwrap();
        let listed = |tag: u32| -> Vec<[u8; 32]> {
            let v = raw.iter().find(|f| f.tag == Tag(tag)).unwrap().value;
            v.chunks(32).map(|c| c.try_into().unwrap()).collect()
        };
        assert_eq!(Vec::from(card.accepted.clone()), listed(0x83), "{name}");
        let finished: Vec<[u8; 32]> = card.finished.iter().map(|id| id.0).collect();
        assert_eq!(finished, listed(0x87), "{name}");
        let seqs: Vec<u64> = card
            .finished
            .iter()
            .map(|id| card.exchanges[id].seq.unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}: {seqs:?}");
        for (id, e) in &card.exchanges {
            assert_eq!(e.agreement.id, *id);
            assert_eq!(e.agreement.offer_digest, e.offer.digest());
        }
        let (_, pending) = card.pending().next().unwrap();
        assert!(!pending.agreement.certificate.is_empty(), "{name}");
        // Written again: the new layout, the same state.
        let again = card.to_bytes();
        let new_tags = tags(&again);
        assert!(
            new_tags.contains(&Tag(0x8c)) && !new_tags.contains(&Tag(0xa0)),
            "{name}"
        );
        assert!(
            !new_tags.contains(&Tag(0x87)),
            "{name}: the finished list derived"
        );
        assert_eq!(VoucherCard::decode(&again).unwrap(), card, "{name}");
    }
}

/// A record is refused, by name, with a kept certificate longer than a
/// recovery request may carry (each exchange naming it gets a copy), or
/// with a field in both the older layout and the newer.
#[test]
fn records_with_an_oversized_kept_certificate_or_mixed_layouts_are_refused() {
    use tenet_proto::tlv::{Tag, write};
    let base = VoucherCard::default().to_bytes();
    let with = |tag: u8, value: &[u8]| {
        let mut b = base.clone();
        write(&mut b, Tag(u32::from(tag)), value);
        b
    };
    let mut certs = Vec::new();
    write(&mut certs, Tag(0x80), &[7; 2048]);
    assert!(VoucherCard::decode(&with(0xae, &certs)).is_ok());
    let mut certs = Vec::new();
    write(&mut certs, Tag(0x80), &[7; 2049]);
    let e = VoucherCard::decode(&with(0xae, &certs))
        .unwrap_err()
        .to_string();
    assert!(e.contains("kept certificates") && e.contains("2049"), "{e}");
    for (old, value) in [(0xa0, &[][..]), (0x83, &[][..])] {
        let e = VoucherCard::decode(&with(old, value))
            .unwrap_err()
            .to_string();
        assert!(e.contains("older layout"), "{e}");
    }
}

/// A record is refused, by name, where what it stores contradicts what it
/// derives or lists one thing twice: an agreement's stored exchange id or
/// offer digest that is not the one derived from the offer (a hostile
/// record would otherwise be written back with other values, and an
/// exchange could take another's place), two exchanges with one id, two
/// kept certificates with one reference, a class listed twice.
#[test]
fn records_that_contradict_what_they_derive_or_repeat_an_entry_are_refused() {
    use tenet_proto::tlv::{Tag, parse_all, write};
    let refused = |bytes: &[u8], what: &str| {
        let e = VoucherCard::decode(bytes).unwrap_err().to_string();
        assert!(e.contains(what), "{what}: {e}");
    };
    // B's record with its pending run, a responder's: both fields derived.
    let w = with_lost(msg::CONFIRMATION);
    let (id, e) = w.b.pending().next().unwrap();
    let n2 = e.n2.unwrap();
    let record = w.b.to_bytes();
    assert!(VoucherCard::decode(&record).is_ok());
    // `record` with `extra` added to the pending run's stored agreement.
    let with_stored = |extra: &[u8]| {
        let mut out = Vec::new();
        for f in parse_all(&record).unwrap() {
            if f.tag != Tag(0xa2) {
                write(&mut out, f.tag, f.value);
                continue;
            }
            let mut items = Vec::new();
            for item in parse_all(f.value).unwrap() {
                let fields = parse_all(item.value).unwrap();
                let pending = fields.iter().any(|g| g.tag == Tag(0x83) && g.value == n2);
                let mut inner = Vec::new();
                for g in fields {
                    match pending && g.tag == Tag(0xa2) {
                        true => write(&mut inner, g.tag, &[g.value, extra].concat()),
                        false => write(&mut inner, g.tag, g.value),
                    }
                }
                write(&mut items, item.tag, &inner);
            }
            write(&mut out, f.tag, &items);
        }
        out
    };
    for (tag, right, what) in [
        (0x81, id.0, "stored agreement's exchange id"),
        (0x80, e.offer.digest(), "stored agreement's offer digest"),
    ] {
        let mut field = Vec::new();
        write(&mut field, Tag(tag), &right);
        assert!(VoucherCard::decode(&with_stored(&field)).is_ok(), "{what}");
        let mut wrong = right;
        wrong[0] ^= 1;
        let mut field = Vec::new();
        write(&mut field, Tag(tag), &wrong);
        refused(&with_stored(&field), what);
    }
    // Two exchanges with one id: the runs' entries twice.
    let mut twice = Vec::new();
    for f in parse_all(&record).unwrap() {
        match f.tag == Tag(0xa2) {
            true => write(&mut twice, f.tag, &[f.value, f.value].concat()),
            false => write(&mut twice, f.tag, f.value),
        }
    }
    refused(&twice, "two with one id");
    // Two kept certificates with one reference.
    let mut certs = Vec::new();
    write(&mut certs, Tag(0x80), b"a certificate");
    write(&mut certs, Tag(0x80), b"a certificate");
    let mut b = VoucherCard::default().to_bytes();
    write(&mut b, Tag(0xae), &certs);
    refused(&b, "two with one reference");
    // A class listed twice, with its two quantities.
    let mut b = Vec::new();
    for f in parse_all(&record).unwrap() {
        match f.tag.0 {
            0x8c | 0xad => write(&mut b, f.tag, &[f.value, f.value].concat()),
            _ => write(&mut b, f.tag, f.value),
        }
    }
    refused(&b, "listed twice");
}
