//! Model checking of the fair exchange with stateright, built from the same
//! sans-IO state machines that the cards and the TTP run: each card actor
//! calls [`VoucherCard::handle`] on its persisted encoding, the TTP actor
//! calls [`handle_request_keyed`]. The wallets are the users: `P_A` orders
//! the exchange, `P_B` accepts every offer it sees, and both order recovery
//! of every exchange they heard of whenever their timer fires, which may be
//! at any moment.
//!
//! The network loses, duplicates (so every message can be replayed at any
//! time) and reorders. Any one actor may crash and restart from what it
//! persisted. The "forgetful" cards may also forget their finished
//! exchanges and the offers they accepted at any time, as a card with
//! bounded memory eventually must.
//!
//! See `docs/model.md` for the properties, the state counts and the
//! counterexample of the variant keyed on `n1`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use stateright::actor::{
    Actor, ActorModel, ActorModelAction, ActorModelState, Id, LossyNetwork, Network, Out,
};
use stateright::{Checker, Expectation, Model};
use tenet_proto::tlv::{Fields, Tag};
use tenet_proto::{Codec, Domain, EntityId, Mtype, Port};
use tenet_voucher::card::{
    Ctx, MINT, PROGRESS, Phase, Role, VoucherCard, may_lose_step, reports_state,
};
use tenet_voucher::crypto::{Crypto as _, TestCrypto};
use tenet_voucher::model::{Amount, MAX_QUANTITY, VoucherClass};
use tenet_voucher::msg::{self, Admission, ExchangeId, RecoveryRequest, StartExchange};
use tenet_voucher::ttp::{DecisionKey, DecisionStore, StoreError, handle_request_keyed};

const S_A: usize = 0;
const S_B: usize = 1;
const T: usize = 2;
const P_A: usize = 3;
const P_B: usize = 4;
const NAMES: [&str; 5] = ["S_A", "S_B", "T", "P_A", "P_B"];

/// Most state-changing steps per card: bounds the runs a replayed offer
/// can start on a forgetful card.
const STEPS: u64 = 6;

fn entity(ix: usize) -> EntityId {
    let (d, p) = match ix {
        S_A => (0xa1, 0),
        S_B => (0xb2, 0),
        T => (0x77, 0),
        P_A => (0xa1, 1),
        P_B => (0xb2, 1),
        _ => unreachable!("five actors"),
    };
    EntityId::new(Domain::new([d; 12]), Port::new(p))
}

fn index(e: EntityId) -> Option<usize> {
    (0..5).find(|&i| entity(i) == e)
}

fn coffee(q: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer: entity(S_A).domain(),
            promise: "coffee".into(),
        },
        quantity: q,
    }
}

fn ticket(q: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer: entity(S_B).domain(),
            promise: "ticket".into(),
        },
        quantity: q,
    }
}

/// What one card starts with: `S_A` one coffee, `S_B` two tickets (so that
/// a replayed offer can make it give a second one). In the cap model, `S_B`
/// holds one coffee less than the cap, so that the exchange brings it
/// exactly to the cap, and the cap of tickets, so that a refund of its
/// ticket needs the room the exchange took from it.
fn initial_card(ix: usize, cfg: &Cfg) -> VoucherCard {
    let mut c = VoucherCard::default();
    let held = match (ix, cfg.cap) {
        // The redemption model: S_A also holds the ticket it redeems; in
        // the mixed models, a coffee more for the exchange.
        (S_A, _) if cfg.mixed && cfg.redeem => vec![coffee(1), ticket(1)],
        (S_A, _) if cfg.mixed => vec![coffee(2)],
        (S_A, _) if cfg.redeem => vec![coffee(1), ticket(1)],
        (S_A, Cap::Overreach) => vec![coffee(3)],
        (S_A, _) => vec![coffee(1)],
        (_, Cap::Off) => vec![ticket(2)],
        (_, _) => vec![coffee(MAX_QUANTITY - 1), ticket(MAX_QUANTITY)],
    };
    for a in held {
        c.balances.credit(&a).unwrap();
    }
    c
}

/// What the network between hosts may do besides reordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    /// Every message may be delivered any number of times, at any later
    /// moment, or never: duplication, replay, and (as an unbounded delay,
    /// which no property can tell apart) loss.
    Duplicating,
    /// Every message is delivered at most once, or explicitly dropped.
    Lossy,
}

/// A card lost its unsynced start to a crash ([`State::Card`]'s `lost`).
const LOST_START: u8 = 1;
/// A card lost its unsynced commitment to a crash.
const LOST_COMMITMENT: u8 = 2;

/// The model's parameters.
#[derive(Clone, Copy, Debug)]
struct Cfg {
    net: Net,
    key: DecisionKey,
    forgetful: bool,
    /// The cap models: `S_B` at the cap ([`initial_card`]), and either
    /// a `P_B` that mints or a malicious `P_A` ([`Cap`]).
    cap: Cap,
    /// `P_A` orders a gift (a transfer: the exchange with nothing wanted
    /// back) instead of an exchange.
    gift: bool,
    /// `P_A` orders a redemption of a ticket at its issuer `S_B` instead.
    redeem: bool,
    /// `P_A` orders an exchange of 1 coffee for 1 ticket too, before the
    /// gift or the redemption: the two runs interleave.
    mixed: bool,
    /// A negative control: the initiator's `m2` step (after which it sends
    /// `m3`) is also written unsynced, which crash safety does not allow.
    lose_m2: bool,
}

impl Cfg {
    /// The exchange on a duplicating network, decisions keyed on `h(n2)`,
    /// nothing else: each model names what it changes.
    const BASE: Cfg = Cfg {
        net: Net::Duplicating,
        key: DecisionKey::ExchangeHash,
        forgetful: false,
        cap: Cap::Off,
        gift: false,
        redeem: false,
        mixed: false,
        lose_m2: false,
    };

    /// Whether actors crash (the interleaving models leave crashes to the
    /// single-run ones).
    fn crashes(&self) -> bool {
        !self.mixed
    }

    /// Whether a card's step on `mtype` is written unsynced: a crash may
    /// lose it.
    fn may_lose(&self, mtype: Mtype) -> bool {
        may_lose_step(mtype) || (self.lose_m2 && mtype == msg::AGREEMENT)
    }
}

/// The cap models, each small enough to explore in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cap {
    /// The models without the cap.
    Off,
    /// `P_B` orders its card, once, at any moment, to mint a ticket:
    /// racing the refund of a pending abort.
    MintRace,
    /// A malicious initiator: `S_A` holds 3 coffee and `P_A` orders two
    /// offers, one coffee for a ticket (which brings `S_B` to the cap) and
    /// two coffee for a ticket (which would cross it: the overflow attack
    /// of the security issue, where `S_B`, had it accepted, could apply
    /// neither the commitment nor a resolve).
    Overreach,
}

/// An eTP message between actors: mtype and param; src and dst are the
/// network's. `order` numbers a wallet's orders to its own card, which
/// travel over the host's app socket and the dispatch table: exactly once
/// and in order, whatever the network between hosts does. It is 0 on
/// messages between hosts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Msg {
    mtype: Mtype,
    param: Vec<u8>,
    order: u32,
}

impl Msg {
    fn new(mtype: Mtype, param: Vec<u8>) -> Self {
        Self {
            mtype,
            param,
            order: 0,
        }
    }
}

/// An actor's state. All of it is persistent, so it is also what an actor
/// restarts from after a crash: a card commits its applet state and its
/// outgoing messages atomically in its store, the TTP keeps its decisions
/// in its database, and a wallet lists its card's exchanges again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum State {
    /// A card: its applet state as the store holds it, the number of its
    /// wallet's orders it has taken, and how many state-changing steps it
    /// took (which also seeds its randomness).
    Card {
        persisted: Vec<u8>,
        /// The applet state the store holds durably when `persisted` has
        /// steps a power cut may lose (`may_lose_step`), with those steps
        /// ([`LOST_START`], [`LOST_COMMITMENT`]): what a crash restarts
        /// from. `None`: `persisted` is durable.
        durable: Option<(Vec<u8>, u8)>,
        /// The unsynced steps this card lost to crashes so far: what shows
        /// that the checker explored the states after such a loss.
        lost: u8,
        orders: u32,
        steps: u64,
        minted: u64,
    },
    /// The TTP: its decisions (encoded admissions by key), and every
    /// admission it sent, as (exchange id, resolved?).
    Ttp {
        decided: BTreeMap<[u8; 32], Vec<u8>>,
        sent: BTreeSet<([u8; 32], bool)>,
    },
    /// A wallet: the exchanges it heard of from its card and the offers it
    /// accepted, each with whether it already ordered recovery (or the
    /// replay), and how many orders it sent.
    Wallet {
        known: BTreeMap<[u8; 32], bool>,
        offers: BTreeMap<Vec<u8>, bool>,
        orders: u32,
        minted: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Timer {
    /// A wallet's timeout: it orders recovery of what it knows.
    Recover,
    /// A forgetful card drops its history.
    Forget,
}

#[derive(Clone)]
struct Node {
    ix: usize,
    cfg: Cfg,
}

/// A decision store over the TTP actor's map.
struct MapStore<'a>(&'a mut BTreeMap<[u8; 32], Vec<u8>>);

impl DecisionStore for MapStore<'_> {
    fn decide(
        &mut self,
        id: &ExchangeId,
        make: &mut dyn FnMut() -> Admission,
    ) -> Result<Admission, StoreError> {
        let bytes = self.0.entry(id.0).or_insert_with(|| make().to_bytes());
        Admission::decode(bytes).map_err(StoreError::Unreadable)
    }
}

fn wallet_of(card: usize) -> usize {
    if card == S_A { P_A } else { P_B }
}

fn card_of(wallet: usize) -> usize {
    if wallet == P_A { S_A } else { S_B }
}

/// Runs one input through a card's state machine. On refusal nothing
/// changes, as on the card.
fn card_step(
    ix: usize,
    persisted: &[u8],
    steps: u64,
    src: EntityId,
    m: &Msg,
) -> Option<(Vec<u8>, Vec<tenet_voucher::card::Out>)> {
    let mut card = VoucherCard::decode(persisted).expect("a card's persisted state decodes");
    let mut crypto = TestCrypto::new(entity(ix), steps + 1);
    let mut cx = Ctx {
        me: entity(ix),
        ttp: entity(T),
        wallet: Some(entity(wallet_of(ix))),
        crypto: &mut crypto,
        // The model has no clock: its offers do not expire.
        now: 0,
    };
    let outs = card.handle(&mut cx, src, m.mtype, &m.param).ok()?;
    Some((card.to_bytes(), outs))
}

impl Node {
    fn arm(&self, o: &mut Out<Self>) {
        match self.ix {
            S_A | S_B if self.cfg.forgetful => {
                o.set_timer(Timer::Forget, stateright::actor::model_timeout())
            }
            P_A | P_B => o.set_timer(Timer::Recover, stateright::actor::model_timeout()),
            _ => {}
        }
    }

    /// Sets a card's state and persists what its store holds durably: the
    /// applet state without the steps a power cut may lose, and the
    /// counters, which model the world rather than the card (the app
    /// socket delivers an order once; randomness never repeats).
    fn commit_card(state: &mut Cow<State>, next: State, o: &mut Out<Self>) {
        if *state.as_ref() == next {
            return;
        }
        if let State::Card {
            persisted,
            durable,
            lost,
            orders,
            steps,
            minted,
        } = &next
        {
            let (kept, unsynced) = match durable {
                Some((bytes, steps)) => (bytes, *steps),
                None => (persisted, 0),
            };
            o.save(State::Card {
                persisted: kept.clone(),
                durable: None,
                lost: lost | unsynced,
                orders: *orders,
                steps: *steps,
                minted: *minted,
            });
        }
        *state.to_mut() = next;
    }

    /// Sets the state and persists it.
    fn commit(state: &mut Cow<State>, next: State, o: &mut Out<Self>) {
        if *state.as_ref() != next {
            o.save(next.clone());
            *state.to_mut() = next;
        }
    }
}

impl Actor for Node {
    type Msg = Msg;
    type State = State;
    type Timer = Timer;
    type Storage = State;
    type Random = ();

    fn name(&self) -> String {
        NAMES[self.ix].into()
    }

    fn on_start(&self, _id: Id, storage: &Option<State>, o: &mut Out<Self>) -> State {
        self.arm(o);
        if let Some(s) = storage {
            return s.clone(); // a restart
        }
        let s = match self.ix {
            S_A | S_B => State::Card {
                persisted: initial_card(self.ix, &self.cfg).to_bytes(),
                durable: None,
                lost: 0,
                orders: 0,
                steps: 0,
                minted: 0,
            },
            T => State::Ttp {
                decided: BTreeMap::new(),
                sent: BTreeSet::new(),
            },
            w => {
                let mut orders = 0;
                if w == P_A {
                    // The user of S_A orders the exchange (two in the
                    // overreach model).
                    let gives: &[u64] = match self.cfg.cap {
                        Cap::Overreach => &[1, 2],
                        _ if self.cfg.mixed => &[0, 1],
                        _ => &[1],
                    };
                    for q in gives {
                        // In the mixed models, order 0 is the exchange.
                        let (redeem, gift) = match *q {
                            0 => (false, false),
                            _ => (self.cfg.redeem, self.cfg.gift),
                        };
                        let q = &(*q).max(1);
                        let s = StartExchange {
                            redeem,
                            responder: entity(S_B),
                            peer_wallet: entity(P_B),
                            give: if redeem { ticket(1) } else { coffee(*q) },
                            want: (!gift && !redeem).then(|| ticket(1)),
                            expires_in: None,
                        };
                        orders += 1;
                        o.send(
                            Id::from(S_A),
                            Msg {
                                order: orders,
                                ..Msg::new(msg::START_EXCHANGE, s.to_bytes())
                            },
                        );
                    }
                }
                State::Wallet {
                    known: BTreeMap::new(),
                    offers: BTreeMap::new(),
                    orders,
                    minted: false,
                }
            }
        };
        o.save(s.clone());
        s
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<State>, src: Id, m: Msg, o: &mut Out<Self>) {
        let from = usize::from(src);
        match state.as_ref() {
            State::Card {
                persisted,
                durable,
                lost,
                orders,
                steps,
                minted,
            } => {
                let lost = *lost;
                let mut orders = *orders;
                if from == wallet_of(self.ix) {
                    // The app socket delivers each order once, in order.
                    if m.order != orders + 1 {
                        return;
                    }
                    orders += 1;
                }
                let (next, outs) = card_step(self.ix, persisted, *steps, entity(from), &m)
                    .unwrap_or_else(|| (persisted.clone(), Vec::new()));
                let changed = next != *persisted;
                let steps = steps + u64::from(changed);
                let minted = minted
                    + match Amount::decode(&m.param) {
                        Ok(a) if changed && m.mtype == MINT => a.quantity,
                        _ => 0,
                    };
                // A step the card may lose leaves the durable state as it
                // was; any other change, or an answer reporting state,
                // makes everything durable (`Durability` in tenet-card).
                let durable = if !self.cfg.crashes() {
                    // Without crashes what is durable makes no difference.
                    None
                } else if changed && self.cfg.may_lose(m.mtype) {
                    let step = match m.mtype {
                        msg::START_EXCHANGE => LOST_START,
                        msg::COMMITMENT => LOST_COMMITMENT,
                        _ => 0,
                    };
                    Some(match durable {
                        Some((bytes, steps)) => (bytes.clone(), steps | step),
                        None => (persisted.clone(), step),
                    })
                } else if changed || reports_state(m.mtype) {
                    None
                } else {
                    durable.clone()
                };
                Self::commit_card(
                    state,
                    State::Card {
                        persisted: next,
                        durable,
                        lost,
                        orders,
                        steps,
                        minted,
                    },
                    o,
                );
                for out in outs {
                    if let Some(dst) = index(out.dst) {
                        o.send(Id::from(dst), Msg::new(out.mtype, out.param));
                    }
                }
            }
            State::Ttp { decided, sent } => {
                if m.mtype != msg::RECOVERY_REQUEST {
                    return;
                }
                let Ok(req) = RecoveryRequest::decode(&m.param) else {
                    return;
                };
                let (mut decided, mut sent) = (decided.clone(), sent.clone());
                let mut crypto = TestCrypto::new(entity(T), 0);
                let Ok(adm) = handle_request_keyed(
                    &mut crypto,
                    &mut MapStore(&mut decided),
                    entity(from),
                    &req,
                    self.cfg.key,
                ) else {
                    return;
                };
                sent.insert((adm.id.0, adm.kind == msg::Kind::Resolve));
                o.send(src, Msg::new(msg::ADMISSION, adm.to_bytes()));
                Self::commit(state, State::Ttp { decided, sent }, o);
            }
            State::Wallet {
                known,
                offers,
                orders,
                minted,
            } => {
                let (mut known, mut offers, mut orders) = (known.clone(), offers.clone(), *orders);
                let minted = *minted;
                match m.mtype {
                    msg::OFFER if self.ix == P_B && !offers.contains_key(&m.param) => {
                        // The user of S_B accepts what it is offered.
                        orders += 1;
                        o.send(
                            Id::from(S_B),
                            Msg {
                                order: orders,
                                ..Msg::new(msg::ACCEPT, m.param.clone())
                            },
                        );
                        offers.insert(m.param, false);
                    }
                    PROGRESS => {
                        if let Ok(id) =
                            Fields::parse(&m.param).and_then(|f| f.require_array(Tag(0x80), "id"))
                        {
                            known.entry(id).or_insert(false);
                        }
                    }
                    _ => {}
                }
                Self::commit(
                    state,
                    State::Wallet {
                        known,
                        offers,
                        orders,
                        minted,
                    },
                    o,
                );
            }
        }
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<State>, timer: &Timer, o: &mut Out<Self>) {
        self.arm(o);
        match (state.as_ref(), timer) {
            (
                State::Wallet {
                    known,
                    offers,
                    orders,
                    minted,
                },
                Timer::Recover,
            ) => {
                // The user orders recovery of each exchange it knows, once
                // (a card asked again only repeats its request). The user
                // of S_B also orders acceptance of each offer once more: a
                // replay of m1 to its own card.
                let mut orders = *orders;
                let mut order = |mtype, param| {
                    orders += 1;
                    o.send(
                        Id::from(card_of(self.ix)),
                        Msg {
                            order: orders,
                            ..Msg::new(mtype, param)
                        },
                    );
                };
                for (id, _) in known.iter().filter(|(_, done)| !**done) {
                    order(msg::RECOVER, ExchangeId(*id).to_bytes());
                }
                // (Replays are the single-run models' part; the mixed
                // models check interleavings, and stay small without.)
                for (offer, _) in offers.iter().filter(|(_, done)| !**done && !self.cfg.mixed) {
                    order(msg::ACCEPT, offer.clone());
                }
                // In the cap model the user of S_B mints a ticket once.
                let mint = self.cfg.cap == Cap::MintRace && self.ix == P_B && !minted;
                if mint {
                    order(MINT, ticket(1).to_bytes());
                }
                let next = State::Wallet {
                    known: known.keys().map(|id| (*id, true)).collect(),
                    offers: offers.keys().map(|f| (f.clone(), true)).collect(),
                    orders,
                    minted: *minted || mint,
                };
                Self::commit(state, next, o);
            }
            (
                State::Card {
                    persisted,
                    lost,
                    orders,
                    steps,
                    minted,
                    ..
                },
                Timer::Forget,
            ) => {
                let mut c = VoucherCard::decode(persisted).expect("decodes");
                c.accepted.clear();
                c.exchanges.retain(|_, e| !e.phase.is_final());
                c.finished.clear();
                let next = State::Card {
                    persisted: c.to_bytes(),
                    durable: None,
                    lost: *lost,
                    orders: *orders,
                    steps: *steps,
                    minted: *minted,
                };
                Self::commit_card(state, next, o);
            }
            _ => {}
        }
    }
}

type Sys = ActorModelState<Node>;
type M = ActorModel<Node, Cfg>;

fn card(s: &Sys, ix: usize) -> VoucherCard {
    match s.actor_states[ix].as_ref() {
        State::Card { persisted, .. } => VoucherCard::decode(persisted).unwrap(),
        other => panic!("actor {ix} is not a card: {other:?}"),
    }
}

/// The unsynced steps card `ix` lost to crashes.
fn lost(s: &Sys, ix: usize) -> u8 {
    match s.actor_states[ix].as_ref() {
        State::Card { lost, .. } => *lost,
        other => panic!("actor {ix} is not a card: {other:?}"),
    }
}

/// The TTP's decisions by key, and the admissions it sent.
type TtpView<'a> = (
    &'a BTreeMap<[u8; 32], Vec<u8>>,
    &'a BTreeSet<([u8; 32], bool)>,
);

fn ttp(s: &Sys) -> TtpView<'_> {
    match s.actor_states[T].as_ref() {
        State::Ttp { decided, sent } => (decided, sent),
        other => panic!("T is not the TTP: {other:?}"),
    }
}

fn swapped(p: Phase) -> bool {
    matches!(p, Phase::Committed | Phase::Resolved)
}

/// What both cards must hold in all, (coffee, ticket): what they started
/// with and what they minted since.
fn expected_totals(model: &M, s: &Sys) -> (u64, u64) {
    let start = [initial_card(S_A, &model.cfg), initial_card(S_B, &model.cfg)];
    let minted_tickets = match s.actor_states[S_B].as_ref() {
        State::Card { minted, .. } => *minted,
        _ => 0,
    };
    let (c, t) = totals(&start);
    (c, t + minted_tickets)
}

/// Holdings of both cards: (coffee, ticket).
fn totals(cards: &[VoucherCard; 2]) -> (u64, u64) {
    let c = coffee(0).class;
    let t = ticket(0).class;
    (
        cards.iter().map(|k| k.balances.of(&c)).sum(),
        cards.iter().map(|k| k.balances.of(&t)).sum(),
    )
}

/// Both cards' exchanges that both know of and both finished agree: swapped
/// on both sides or on neither.
fn fair(cards: &[VoucherCard; 2]) -> bool {
    cards[0]
        .exchanges
        .iter()
        .all(|(id, a)| match cards[1].exchanges.get(id) {
            Some(b) if a.phase.is_final() && b.phase.is_final() => {
                swapped(a.phase) == swapped(b.phase)
            }
            _ => true,
        })
}

/// Suppose every message in flight is lost now and both cards recover
/// every pending exchange with the TTP, `first` first: the outcome, with
/// the real state machines.
fn settle(model: &M, s: &Sys, first: usize) -> Result<[VoucherCard; 2], String> {
    let mut cards = [card(s, S_A), card(s, S_B)];
    let mut decided = ttp(s).0.clone();
    for ix in [first, 1 - first] {
        let pending: Vec<ExchangeId> = cards[ix].pending().map(|(id, _)| *id).collect();
        for id in pending {
            let me = entity(ix);
            let mut crypto = TestCrypto::new(me, 1 << 20);
            let mut cx = Ctx {
                me,
                ttp: entity(T),
                wallet: None,
                crypto: &mut crypto,
                now: 0,
            };
            let outs = cards[ix]
                .handle(&mut cx, entity(wallet_of(ix)), msg::RECOVER, &id.to_bytes())
                .map_err(|r| format!("{} cannot recover {id}: {r}", NAMES[ix]))?;
            let req = outs
                .iter()
                .find(|o| o.mtype == msg::RECOVERY_REQUEST)
                .ok_or("no recovery request")?;
            let req = RecoveryRequest::decode(&req.param).map_err(|e| e.to_string())?;
            let mut t = TestCrypto::new(entity(T), 0);
            let adm =
                handle_request_keyed(&mut t, &mut MapStore(&mut decided), me, &req, model.cfg.key)
                    .map_err(|e| format!("T refuses {}: {e}", NAMES[ix]))?;
            let mut cx = Ctx {
                me,
                ttp: entity(T),
                wallet: None,
                crypto: &mut crypto,
                now: 0,
            };
            cards[ix]
                .handle(&mut cx, entity(T), msg::ADMISSION, &adm.to_bytes())
                .map_err(|r| format!("{} refuses the admission: {r}", NAMES[ix]))?;
        }
    }
    Ok(cards)
}

/// The receipts `card` holds as a redemption's holder, each checked.
fn receipts(card: &VoucherCard) -> u64 {
    let t = TestCrypto::new(entity(T), 0);
    let check = |s: tenet_pki::Signer, c: &[u8], m: &[u8], g: &[u8]| t.verify(s.id, c, m, g);
    card.exchanges
        .values()
        .filter_map(|e| e.receipt())
        .filter(|r| r.verify(&check).is_ok())
        .count() as u64
}

/// The redemptions `card` completed as redeemer (their vouchers destroyed).
fn redeemed(card: &VoucherCard) -> u64 {
    card.exchanges
        .values()
        .filter(|e| e.offer.is_redemption() && e.role == Role::Responder && swapped(e.phase))
        .count() as u64
}

/// Conservation: whatever the state, if every message in flight is lost
/// now and both sides recover (in either order), each voucher is held by
/// exactly one card and the outcome is fair.
fn conserved(model: &M, s: &Sys) -> bool {
    [S_A, S_B]
        .into_iter()
        .all(|first| match settle(model, s, first) {
            Ok(cards) => {
                let (c, t) = expected_totals(model, s);
                let receipts = receipts(&cards[0]);
                totals(&cards) == (c, t - receipts)
                    && receipts == redeemed(&cards[1])
                    && fair(&cards)
                    && cards.iter().all(|c| c.pending().next().is_none())
            }
            Err(_) => false,
        })
}

fn model(cfg: Cfg) -> M {
    let actors = (0..5).map(|ix| Node { ix, cfg });
    ActorModel::new(cfg, ())
        .actors(actors)
        .init_network(match cfg.net {
            Net::Duplicating => Network::new_unordered_duplicating([]),
            Net::Lossy => Network::new_unordered_nonduplicating([]),
        })
        .lossy_network(match cfg.net {
            Net::Duplicating => LossyNetwork::No,
            Net::Lossy => LossyNetwork::Yes,
        })
        .max_crashes(usize::from(cfg.crashes()))
        .within_boundary(|_, s| {
            s.actor_states.iter().all(|a| match a.as_ref() {
                State::Card { steps, .. } => *steps <= STEPS,
                _ => true,
            })
        })
        .property(Expectation::Always, "conservation", conserved)
        .property(
            Expectation::Always,
            "the TTP decides once per exchange",
            |_, s| {
                let sent = ttp(s).1;
                sent.iter()
                    .all(|(id, resolved)| !sent.contains(&(*id, !resolved)))
            },
        )
        .property(
            Expectation::Always,
            "fair once both sides finished",
            |_, s| fair(&[card(s, S_A), card(s, S_B)]),
        )
        .property(
            Expectation::Sometimes,
            "committed without the TTP",
            |_, s| {
                let (a, b) = (card(s, S_A), card(s, S_B));
                ttp(s).0.is_empty()
                    && a.exchanges.iter().any(|(id, e)| {
                        e.phase == Phase::Committed
                            && b.exchanges
                                .get(id)
                                .is_some_and(|f| f.phase == Phase::Committed)
                    })
            },
        )
        .property(
            Expectation::Sometimes,
            "S_A lost its unsynced start to a crash (models with crashes)",
            |m, s| !m.cfg.crashes() || lost(s, S_A) & LOST_START != 0,
        )
        .property(
            Expectation::Sometimes,
            "S_A lost its unsynced commitment to a crash (models with crashes)",
            |m, s| !m.cfg.crashes() || lost(s, S_A) & LOST_COMMITMENT != 0,
        )
        .property(Expectation::Sometimes, "resolved", |_, s| {
            [S_A, S_B].iter().any(|&c| {
                card(s, c)
                    .exchanges
                    .values()
                    .any(|e| e.phase == Phase::Resolved)
            })
        })
        .property(
            Expectation::Sometimes,
            "the responder reaches the cap (cap model)",
            |m, s| {
                m.cfg.cap == Cap::Off || card(s, S_B).balances.of(&coffee(0).class) == MAX_QUANTITY
            },
        )
        .property(
            Expectation::Sometimes,
            "a gift delivered: S_B got the coffee and kept its tickets (gift model)",
            |m, s| {
                let b = card(s, S_B);
                !m.cfg.gift
                    || (b.balances.of(&coffee(0).class) == 1
                        && b.balances.of(&ticket(0).class) == 2)
            },
        )
        .property(
            Expectation::Sometimes,
            "a redemption completed: S_A holds a receipt (redemption model)",
            |m, s| !m.cfg.redeem || receipts(&card(s, S_A)) == 1,
        )
        .property(
            Expectation::Sometimes,
            "both runs swapped on both cards (mixed models)",
            |m, s| {
                let done = |c: &VoucherCard| {
                    c.exchanges.values().filter(|e| swapped(e.phase)).count() == 2
                };
                !m.cfg.mixed || (done(&card(s, S_A)) && done(&card(s, S_B)))
            },
        )
        .property(Expectation::Sometimes, "aborted", |_, s| {
            [S_A, S_B].iter().any(|&c| {
                card(s, c)
                    .exchanges
                    .values()
                    .any(|e| e.phase == Phase::Aborted)
            })
        })
}

fn short(id: &[u8]) -> String {
    id[..3].iter().map(|b| format!("{b:02x}")).collect()
}

/// A message with the exchange it belongs to: `x` followed by the first
/// bytes of h(n2), or `n1` and the first bytes of the offer's nonce.
fn describe(m: &Msg) -> String {
    let detail = match m.mtype {
        msg::OFFER | msg::ACCEPT => {
            msg::Offer::decode(&m.param).map(|o| format!("n1 {}", short(&o.n1)))
        }
        msg::AGREEMENT => msg::Agreement::decode(&m.param).map(|a| format!("x{}", short(&a.id.0))),
        msg::CONFIRMATION => {
            msg::Confirmation::decode(&m.param).map(|c| format!("x{}", short(&c.id.0)))
        }
        msg::COMMITMENT => msg::Commitment::decode(&m.param)
            .map(|c| format!("x{}", short(&ExchangeId::of_n2(&c.n2).0))),
        msg::RECOVER => ExchangeId::decode(&m.param).map(|id| format!("x{}", short(&id.0))),
        msg::RECOVERY_REQUEST => RecoveryRequest::decode(&m.param)
            .map(|r| format!("{:?} x{}", r.kind, short(&r.agreement.id.0))),
        msg::ADMISSION => {
            Admission::decode(&m.param).map(|a| format!("{:?} x{}", a.kind, short(&a.id.0)))
        }
        PROGRESS => Fields::parse(&m.param)
            .and_then(|f| f.require_array::<32>(Tag(0x80), "id"))
            .map(|id| format!("x{}", short(&id))),
        _ => return m.mtype.to_string(),
    };
    match detail {
        Ok(d) => format!("{} ({d})", m.mtype),
        Err(_) => m.mtype.to_string(),
    }
}

/// Renders a counterexample: the steps that lead to it, then where each
/// card ends.
fn render(path: stateright::Path<Sys, ActorModelAction<Msg, Timer, ()>>) -> String {
    let mut out = String::new();
    let last = path.last_state().clone();
    for (i, a) in path.into_actions().iter().enumerate() {
        let line = match a {
            ActorModelAction::Deliver { src, dst, msg } => format!(
                "{} -> {}: {}",
                NAMES[usize::from(*src)],
                NAMES[usize::from(*dst)],
                describe(msg)
            ),
            ActorModelAction::Drop(e) => format!(
                "lost: {} -> {}: {}",
                NAMES[usize::from(e.src)],
                NAMES[usize::from(e.dst)],
                describe(&e.msg)
            ),
            ActorModelAction::Timeout(id, t) => format!("{} timer {t:?}", NAMES[usize::from(*id)]),
            ActorModelAction::Crash(id) => format!("{} crashes", NAMES[usize::from(*id)]),
            ActorModelAction::Recover(id) => format!("{} restarts", NAMES[usize::from(*id)]),
            other => format!("{other:?}"),
        };
        writeln!(out, "{:>2}. {line}", i + 1).unwrap();
    }
    for ix in [S_A, S_B] {
        let c = card(&last, ix);
        let ex: Vec<String> = c
            .exchanges
            .iter()
            .map(|(id, e)| format!("x{} {:?}", short(&id.0), e.phase))
            .collect();
        let held: Vec<String> = c
            .balances
            .iter()
            .map(|(class, q)| format!("{q} {}", class.promise))
            .collect();
        writeln!(
            out,
            "{} holds [{}], exchanges [{}]",
            NAMES[ix],
            held.join(", "),
            ex.join(", ")
        )
        .unwrap();
    }
    out
}

/// Explores every state and checks every property; returns the number of
/// distinct states.
fn check(cfg: Cfg) -> usize {
    let t = std::time::Instant::now();
    let c = model(cfg).checker().threads(2).spawn_bfs().join();
    c.assert_properties();
    eprintln!(
        "{cfg:?}: {} states ({} distinct), depth {}, {:?}",
        c.state_count(),
        c.unique_state_count(),
        c.max_depth(),
        t.elapsed()
    );
    c.unique_state_count()
}

// The state counts are asserted exactly, so that a change that shrinks the
// model (or the protocol's reachable states) cannot go unnoticed.

#[test]
fn keyed_on_h_n2_the_exchange_is_safe_with_duplication_and_crashes() {
    let n = check(Cfg::BASE);
    assert_eq!(n, 18_798);
}

#[test]
fn keyed_on_h_n2_the_exchange_is_safe_with_loss_and_crashes() {
    let n = check(Cfg {
        net: Net::Lossy,
        ..Cfg::BASE
    });
    assert_eq!(n, 57_444);
}

/// Cards that forget their history (and the offers they accepted) stay
/// safe too: exchanges keyed on h(n2) need no memory of old offers. Checked
/// on the duplicating network, where loss is an unbounded delay.
#[test]
fn keyed_on_h_n2_even_forgetful_cards_stay_safe() {
    let n = check(Cfg {
        forgetful: true,
        ..Cfg::BASE
    });
    assert_eq!(n, 1_007_268);
}

/// The counterexample, as `docs/model.md` shows it.
#[test]
fn keyed_on_n1_the_model_checker_finds_the_appendix_attack() {
    let c = model(Cfg {
        key: DecisionKey::OfferNonce,
        forgetful: true,
        ..Cfg::BASE
    })
    .checker()
    .threads(2)
    .spawn_bfs()
    .join();
    let path = c
        .discovery("conservation")
        .expect("keyed on n1, a voucher is duplicated");
    let steps = render(path);
    eprintln!("counterexample to conservation (keyed on n1):\n{steps}");
    let unfair = render(
        c.discovery("fair once both sides finished")
            .expect("keyed on n1, an exchange ends unfair"),
    );
    eprintln!("counterexample to fairness (keyed on n1):\n{unfair}");
    // The attack: S_B takes the offer a second time, after forgetting it,
    // and has that second run aborted, which aborts the first.
    assert!(steps.matches("-> S_B: accept").count() >= 2, "{steps}");
    assert!(steps.contains("S_B -> T: recovery-request"), "{steps}");
    assert!(steps.contains("S_B timer Forget"), "{steps}");
}

/// The negative control of the unsynced steps (`may_lose_step`): were the
/// initiator's `m2` step, which sends `m3` and so gives its coffee away,
/// written unsynced too, a crash right after would give `S_A` its coffee
/// back while `S_B` takes it with `m3`. The model checker finds that
/// voucher duplicated, so its crashes do lose unsynced steps.
#[test]
fn an_unsynced_m2_step_would_duplicate_a_voucher_and_the_model_checker_finds_it() {
    let c = model(Cfg {
        lose_m2: true,
        ..Cfg::BASE
    })
    .checker()
    .threads(2)
    .spawn_bfs()
    .join();
    let steps = render(
        c.discovery("conservation")
            .expect("an unsynced m2 step duplicates a voucher"),
    );
    eprintln!("counterexample to conservation (m2 unsynced):\n{steps}");
    assert!(steps.contains("S_A crashes"), "{steps}");
    assert!(steps.contains("-> S_B: confirmation"), "{steps}");
}

/// The cap models (docs/vouchers.md, "The cap"): `S_B` holds one coffee
/// below the cap and the cap of tickets, so that the exchange brings it to
/// the cap of coffee and its ticket's refund needs the room it took. In each
/// every state settles: every decision of the TTP applies on both cards,
/// and the outcome is conserved and fair.
///
/// Here `P_B` mints a ticket at any moment, racing the refund of a pending
/// abort: the mint must be refused while the refund is pending.
#[test]
fn at_the_cap_a_mint_cannot_take_the_room_of_a_pending_refund() {
    let n = check(Cfg {
        cap: Cap::MintRace,
        ..Cfg::BASE
    });
    assert_eq!(n, 49_980);
}

/// Here a malicious initiator offers, besides one coffee, two coffee that
/// would take `S_B` beyond the cap: `S_B` refuses that offer before deleting
/// anything, whichever comes first, and nothing is stuck.
#[test]
fn at_the_cap_an_initiator_cannot_overreach_the_responder() {
    let n = check(Cfg {
        cap: Cap::Overreach,
        ..Cfg::BASE
    });
    assert_eq!(n, 473_490);
}

/// Gifts (transfers, the exchange with nothing wanted back) with loss,
/// duplication, reordering and crashes: the coffee is conserved, the TTP
/// decides once, and every finished gift ended delivered on both cards or
/// refunded on both, never both and never neither.
#[test]
fn gifts_are_safe_with_duplication_and_crashes() {
    let n = check(Cfg {
        gift: true,
        ..Cfg::BASE
    });
    assert_eq!(n, 18_798);
}

#[test]
fn gifts_are_safe_with_loss_and_crashes() {
    let n = check(Cfg {
        net: Net::Lossy,
        gift: true,
        ..Cfg::BASE
    });
    assert_eq!(n, 57_444);
}

/// Redemptions (a ticket redeemed at its issuer's card, destroyed for a
/// receipt) with loss, duplication, reordering and crashes: after any
/// state settles, the holder has lost exactly the tickets it holds
/// checked receipts for, the issuer destroyed exactly those, and the TTP
/// decided once.
#[test]
fn redemptions_are_safe_with_duplication_and_crashes() {
    const REDEEM_STATES: usize = 18_798;
    let n = check(Cfg {
        redeem: true,
        ..Cfg::BASE
    });
    assert_eq!(n, REDEEM_STATES);
}

#[test]
fn redemptions_are_safe_with_loss_and_crashes() {
    const REDEEM_STATES: usize = 57_444;
    let n = check(Cfg {
        net: Net::Lossy,
        redeem: true,
        ..Cfg::BASE
    });
    assert_eq!(n, REDEEM_STATES);
}

/// An exchange and a gift ordered together, interleaving on both cards
/// (duplication and reordering; crashes and replays are the single-run
/// models' part, which keeps this one to a minute): the coffee and the
/// tickets are conserved, and each run ends the same way on both cards.
#[test]
fn an_exchange_and_a_gift_interleave_safely() {
    let n = check(Cfg {
        gift: true,
        mixed: true,
        ..Cfg::BASE
    });
    assert_eq!(n, 468_663);
}

/// An exchange and a redemption ordered together: every ticket held, or
/// destroyed for a checked receipt on the holder, is accounted for.
#[test]
fn an_exchange_and_a_redemption_interleave_safely() {
    let n = check(Cfg {
        redeem: true,
        mixed: true,
        ..Cfg::BASE
    });
    assert_eq!(n, 468_960);
}
