//! The exchange between two virtual cards through their APDU front ends,
//! with real ECDSA P-256 keys generated on the cards, X.509 certificates
//! from a CA, and the TTP's signed decisions.

use std::collections::VecDeque;

use tenet_card::{Card, CardLimits, MemStore, Personalization, SeededEntropy};
use tenet_proto::apdu::{Command, Response, tenet};
use tenet_proto::card::{SetTime, VerifyPin};
use tenet_proto::codec::Codec;
use tenet_proto::notice::Refused;
use tenet_proto::{Domain, EntityId, Message, Mtype, Port};
use tenet_voucher::card::{MINT, WITHDRAW};
use tenet_voucher::crypto::KeyCrypto;
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{self, RecoveryRequest, StartExchange};
use tenet_voucher::ttp::{MemoryDecisions, handle_request};
use tenet_voucher_app::applet::VoucherApplet;

const A: u8 = 0xaa;
const B: u8 = 0xbb;

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

fn wallet(b: u8) -> EntityId {
    EntityId::new(dom(b), Port::new(1))
}

fn coffee(q: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer: dom(A),
            promise: "coffee".into(),
        },
        quantity: q,
    }
}

fn ticket(q: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer: dom(B),
            promise: "ticket".into(),
        },
        quantity: q,
    }
}

struct World {
    a: Card<MemStore>,
    b: Card<MemStore>,
    ttp_id: EntityId,
    ttp: KeyCrypto,
    decisions: MemoryDecisions,
    net: VecDeque<Message>,
    to_wallets: Vec<Message>,
    /// Every `refused` sent, to cards and wallets.
    refused: Vec<Message>,
    /// The CA's directory.
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn apdu(c: &mut Card<MemStore>, cmd: Command) -> Response {
    Response::decode(&c.process_apdu(&cmd.to_bytes())).unwrap()
}

fn deliver_to(c: &mut Card<MemStore>, m: &Message) -> Vec<Message> {
    let mut r = apdu(
        c,
        Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
            .with_data(m.to_bytes())
            .with_le(65_536),
    );
    let mut out = Vec::new();
    loop {
        assert!(r.sw.is_success(), "{}", r.sw);
        if !r.data.is_empty() {
            out.push(Message::decode(&r.data).unwrap());
        }
        if r.sw.waiting() == Some(0) {
            return out;
        }
        r = apdu(
            c,
            Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(65_536),
        );
    }
}

/// Selects the applet, and the wallet app of card `b` verifies its PIN
/// (per entity) before privileged orders.
fn select_and_log_in(c: &mut Card<MemStore>, b: u8) {
    assert!(
        apdu(
            c,
            Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID.to_vec())
        )
        .sw
        .is_success()
    );
    let v = Message::new(
        wallet(b),
        c.id(),
        Mtype::VERIFY_PIN,
        VerifyPin {
            pin: b"1234".to_vec(),
        }
        .to_bytes(),
    );
    deliver_to(c, &v);
}

impl World {
    fn new() -> Self {
        Self::with_lifetimes(None, None)
    }

    /// Two cards whose certificates have the given lifetimes (default:
    /// what `tenet card new` gives).
    fn with_lifetimes(
        a_life: Option<tenet_pki::Lifetime>,
        b_life: Option<tenet_pki::Lifetime>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        tenet_pki::ensure_ca(&ca, "test CA").unwrap();
        let ttp_id = dom(0x77).owner();
        let files = tenet_pki::issue_entity_key(&ca, "ttp", ttp_id).unwrap();
        let read = |p: &std::path::Path| std::fs::read(p).unwrap();
        let ttp =
            KeyCrypto::from_pem(&read(&files.key), &read(&files.cert), &read(&files.ca)).unwrap();
        let ttp_cert = {
            use tenet_voucher::crypto::Crypto;
            ttp.certificate()
        };
        let card = |b: u8, life: Option<tenet_pki::Lifetime>| {
            let p = Personalization {
                domain: dom(b),
                pin: b"1234".to_vec(),
                puk: b"12345678".to_vec(),
            };
            let mut c = Card::personalize(
                MemStore::new(64 * 1024),
                &p,
                CardLimits::default(),
                Box::new(SeededEntropy::new(b.into())),
            )
            .unwrap();
            let key = c.state().public_key.clone();
            let (cert, ca_der) = match life {
                None => tenet_pki::issue_entity(&ca, c.id(), &key),
                Some(l) => tenet_pki::issue_entity_with(&ca, c.id(), &key, l),
            }
            .unwrap()
            .card_forms()
            .unwrap();
            c.install_certificates(cert, ca_der).unwrap();
            c.provision(
                tenet_voucher_app::applet::APPLET_ID,
                tenet_voucher_app::applet::initial_data(ttp_id, Some(ttp_cert.clone())),
            )
            .unwrap();
            c.install(Box::new(VoucherApplet::default()));
            select_and_log_in(&mut c, b);
            c
        };
        let a = card(A, a_life);
        let b = card(B, b_life);
        let mut w = Self {
            a,
            b,
            ttp_id,
            ttp,
            decisions: MemoryDecisions::default(),
            net: VecDeque::new(),
            to_wallets: Vec::new(),
            refused: Vec::new(),
            ca,
            _dir: dir,
        };
        w.send(Message::new(
            wallet(A),
            dom(A).owner(),
            MINT,
            coffee(5).to_bytes(),
        ));
        w.send(Message::new(
            wallet(B),
            dom(B).owner(),
            MINT,
            ticket(3).to_bytes(),
        ));
        w.run();
        w
    }

    /// The card's host gives it the time `now`, as the smartcard proxy
    /// does (`set-time` from the card's own id); returns the card's
    /// answers (none unless it refused the time).
    fn tell_time(&mut self, which: u8, now: u64) -> Vec<Message> {
        let c = if which == A { &mut self.a } else { &mut self.b };
        let id = c.id();
        deliver_to(
            c,
            &Message::new(
                id,
                id,
                Mtype::SET_TIME,
                SetTime { now, elapsed: None }.to_bytes(),
            ),
        )
    }

    /// Every refusal sent (to cards and wallets), as text.
    fn refusals(&self) -> Vec<String> {
        self.refused
            .iter()
            .map(|m| Refused::decode(&m.param).unwrap().text)
            .collect()
    }

    fn send(&mut self, m: Message) {
        self.net.push_back(m);
    }

    fn step(&mut self, m: Message) {
        if m.mtype() == Mtype::REFUSED {
            self.refused.push(m.clone());
        }
        let out = if m.dst() == self.a.id() {
            deliver_to(&mut self.a, &m)
        } else if m.dst() == self.b.id() {
            deliver_to(&mut self.b, &m)
        } else if m.dst() == self.ttp_id {
            let req = RecoveryRequest::decode(&m.param).unwrap();
            let adm = handle_request(&mut self.ttp, &mut self.decisions, m.src(), &req)
                .expect("the TTP admits");
            vec![Message::new(
                self.ttp_id,
                m.src(),
                msg::ADMISSION,
                adm.to_bytes(),
            )]
        } else {
            self.to_wallets.push(m);
            vec![]
        };
        self.net.extend(out);
    }

    fn run(&mut self) {
        while let Some(m) = self.net.pop_front() {
            self.step(m);
        }
    }

    /// P_A orders S_A to offer two coffees for one ticket; returns the
    /// offer that reached P_B (the latest one).
    fn order_offer(&mut self) -> Message {
        let s = StartExchange {
            redeem: false,
            responder: dom(B).owner(),
            peer_wallet: wallet(B),
            give: coffee(2),
            want: Some(ticket(1)),
            expires_in: None,
        };
        self.send(Message::new(
            wallet(A),
            dom(A).owner(),
            msg::START_EXCHANGE,
            s.to_bytes(),
        ));
        self.run();
        let offer = self
            .to_wallets
            .iter()
            .rev()
            .find(|m| m.mtype() == msg::OFFER)
            .expect("the offer reached P_B")
            .clone();
        assert_eq!(offer.src(), dom(A).owner());
        offer
    }

    /// Delivers `agreement`, as if from S_B, straight to S_A; returns what
    /// S_A answered.
    fn agreement_to_a(&mut self, agreement: &msg::Agreement) -> Vec<Message> {
        deliver_to(
            &mut self.a,
            &Message::new(
                dom(B).owner(),
                dom(A).owner(),
                msg::AGREEMENT,
                agreement.to_bytes(),
            ),
        )
    }

    fn start_and_accept(&mut self) {
        let offer = self.order_offer();
        self.send(Message::new(
            wallet(B),
            dom(B).owner(),
            msg::ACCEPT,
            offer.param,
        ));
    }

    /// Delivers until the confirmation is on the wire, then loses it.
    fn lose_confirmation(&mut self) {
        while let Some(m) = self.net.pop_front() {
            if m.mtype() == msg::CONFIRMATION {
                break;
            }
            self.step(m);
        }
    }

    /// Wallet `who` orders its card to recover exchange `id`; the network
    /// runs.
    fn recover(&mut self, who: u8, id: msg::ExchangeId) {
        self.send(Message::new(
            wallet(who),
            dom(who).owner(),
            msg::RECOVER,
            id.to_bytes(),
        ));
        self.run();
    }

    fn balances(&self) -> [u64; 4] {
        let (a, b) = (vouchers(&self.a), vouchers(&self.b));
        [
            a.balances.of(&coffee(0).class),
            a.balances.of(&ticket(0).class),
            b.balances.of(&coffee(0).class),
            b.balances.of(&ticket(0).class),
        ]
    }
}

#[test]
fn two_cards_exchange_with_real_signatures() {
    let mut w = World::new();
    assert_eq!(w.balances(), [5, 0, 0, 3]);
    w.start_and_accept();
    w.run();
    assert_eq!(w.balances(), [3, 1, 2, 2]);
    assert!(w.decisions.decided.is_empty());
    assert!(
        !w.to_wallets.iter().any(|m| m.mtype() == Mtype::REFUSED),
        "{:?}",
        w.to_wallets
    );
}

#[test]
fn lost_confirmation_resolved_with_the_ttps_signed_admission() {
    let mut w = World::new();
    w.start_and_accept();
    w.lose_confirmation();
    let st = vouchers(&w.a);
    let id = *st.pending().next().unwrap().0;
    w.recover(A, id);
    let stb = vouchers(&w.b);
    let idb = *stb.pending().next().unwrap().0;
    w.recover(B, idb);
    assert_eq!(w.balances(), [3, 1, 2, 2], "resolved: both swapped");
    assert_eq!(w.decisions.decided.len(), 1);
}

#[test]
fn unauthenticated_orders_and_foreign_mints_are_refused() {
    let mut w = World::new();
    let stranger = EntityId::new(dom(A), Port::new(9));
    w.send(Message::new(
        stranger,
        dom(A).owner(),
        MINT,
        coffee(100).to_bytes(),
    ));
    w.send(Message::new(
        wallet(A),
        dom(A).owner(),
        MINT,
        ticket(100).to_bytes(),
    ));
    w.run();
    let refusals: Vec<String> = w
        .to_wallets
        .iter()
        .filter(|m| m.mtype() == Mtype::REFUSED)
        .map(|m| Refused::decode(&m.param).unwrap().text)
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals[0].contains("not authenticated"), "{refusals:?}");
    assert!(refusals[1].contains("own domain"), "{refusals:?}");
    assert_eq!(w.balances(), [5, 0, 0, 3]);
}

#[test]
fn a_forged_agreement_is_refused() {
    let mut w = World::new();
    let offer = msg::Offer::decode(&w.order_offer().param).unwrap();
    // An agreement for the open offer, signed by nobody's real key.
    let fake = msg::Agreement {
        knows: None,
        delegation: None,
        offer_digest: offer.digest(),
        id: msg::ExchangeId([9; 32]),
        signature: vec![0x30, 0x06, 2, 1, 1, 2, 1, 1],
        certificate: w.a.state().certificate.clone().unwrap(),
    };
    let out = w.agreement_to_a(&fake);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].dst(), out[0].mtype()),
        (dom(B).owner(), Mtype::REFUSED)
    );
    let text = Refused::decode(&out[0].param).unwrap().text;
    assert!(text.contains("agreement"), "{text}");
    assert_eq!(w.balances(), [5, 0, 0, 3], "v1 not deleted");
}

/// An agreement to `offer` for exchange `id`, signed with the key in
/// `files` and carrying its certificate.
fn agreement_signed_with(
    files: &tenet_pki::HostFiles,
    offer: &msg::Offer,
    id: msg::ExchangeId,
) -> msg::Agreement {
    use tenet_voucher::crypto::Crypto;
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let mut key =
        KeyCrypto::from_pem(&read(&files.key), &read(&files.cert), &read(&files.ca)).unwrap();
    let digest = offer.digest();
    msg::Agreement {
        knows: None,
        delegation: None,
        offer_digest: digest,
        id,
        signature: key.sign(&msg::Agreement::signed_bytes(&digest, &id)),
        certificate: key.certificate(),
    }
}

#[test]
fn an_agreement_certified_by_another_ca_is_refused() {
    let mut w = World::new();
    let offer = msg::Offer::decode(&w.order_offer().param).unwrap();
    // A rogue CA certifies a key for B's card id and signs a proper agreement.
    let dir = tempfile::tempdir().unwrap();
    let rogue_ca = dir.path().join("rogue");
    tenet_pki::ensure_ca(&rogue_ca, "rogue CA").unwrap();
    let files = tenet_pki::issue_card_key(&rogue_ca, "fake-b", dom(B).owner()).unwrap();
    let agreement = agreement_signed_with(&files, &offer, msg::ExchangeId([3; 32]));
    let out = w.agreement_to_a(&agreement);
    let text = Refused::decode(&out[0].param).unwrap().text;
    assert!(text.contains("certificate chain"), "{text}");
    assert_eq!(w.balances(), [5, 0, 0, 3], "v1 not deleted");
}

/// The TTP's entity id may have a card's shape (`DOMAIN:0`), and its key
/// sits on a host's disk: an entity certificate from the card's own CA,
/// naming B's card id, must not sign for B's card.
#[test]
fn an_agreement_signed_under_an_entity_certificate_is_refused() {
    let mut w = World::new();
    let offer = msg::Offer::decode(&w.order_offer().param).unwrap();
    let files = tenet_pki::issue_entity_key(&w.ca, "entity-b", dom(B).owner()).unwrap();
    let agreement = agreement_signed_with(&files, &offer, msg::ExchangeId([4; 32]));
    let out = w.agreement_to_a(&agreement);
    let text = Refused::decode(&out[0].param).unwrap().text;
    assert!(text.contains("certifies a software entity"), "{text}");
    assert_eq!(w.balances(), [5, 0, 0, 3], "v1 not deleted");
}

fn verifies(c: &Card<MemStore>) -> u64 {
    c.meter().expect("metered").ops().verifies
}

#[test]
fn a_second_exchange_checks_the_peers_certificate_against_the_ca_no_more() {
    let mut w = World::new();
    let model = tenet_card::timing::TimingModel::paper_card();
    w.a.set_meter(Some(model.meter()));
    w.b.set_meter(Some(model.meter()));
    w.start_and_accept();
    w.run();
    assert_eq!(w.balances(), [3, 1, 2, 2]);
    // First contact: each card checks the other's certificate against the
    // CA and the signature under it.
    assert_eq!((verifies(&w.a), verifies(&w.b)), (2, 2));
    w.start_and_accept();
    w.run();
    assert_eq!(w.balances(), [1, 2, 4, 1], "the second exchange completed");
    assert_eq!(
        (verifies(&w.a), verifies(&w.b)),
        (3, 3),
        "only the signatures were verified again"
    );
}

/// What crossed the network in [`run_watching`].
#[derive(Default)]
struct Watched {
    agreements: Vec<msg::Agreement>,
    confirmations: Vec<msg::Confirmation>,
    /// At each confirmation on the wire (both cards have stored the
    /// exchange, neither has finished it), the agreement's certificate in
    /// A's record and in B's.
    recorded: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Runs the network, watching the agreements and confirmations.
fn run_watching(w: &mut World) -> Watched {
    let record = |c: &Card<MemStore>, id: &msg::ExchangeId| {
        vouchers(c).exchanges[id].agreement.certificate.clone()
    };
    let mut seen = Watched::default();
    while let Some(m) = w.net.pop_front() {
        if m.mtype() == msg::AGREEMENT {
            seen.agreements
                .push(msg::Agreement::decode(&m.param).unwrap());
        }
        if m.mtype() == msg::CONFIRMATION {
            let c = msg::Confirmation::decode(&m.param).unwrap();
            seen.recorded
                .push((record(&w.a, &c.id), record(&w.b, &c.id)));
            seen.confirmations.push(c);
        }
        w.step(m);
    }
    seen
}

/// Cards that have met leave their certificates out of m2 and m3 (each
/// named the other's as one it holds), and the initiator's record still
/// keeps the responder's certificate whole, for recovery.
#[test]
fn cards_that_have_met_leave_their_certificates_out_of_m2_and_m3() {
    let mut w = World::new();
    let a_cert = w.a.state().certificate.clone().unwrap();
    let b_cert = w.b.state().certificate.clone().unwrap();
    w.start_and_accept();
    let first = run_watching(&mut w);
    assert_eq!(w.balances(), [3, 1, 2, 2]);
    assert_eq!(
        first.agreements[0].certificate, b_cert,
        "first contact: m2 carries it"
    );
    assert_eq!(
        first.confirmations[0].certificate, a_cert,
        "first contact: m3 carries it"
    );
    w.start_and_accept();
    let second = run_watching(&mut w);
    assert_eq!(w.balances(), [1, 2, 4, 1], "the second exchange completed");
    assert!(
        second.agreements[0].certificate.is_empty(),
        "m2 left B's certificate out"
    );
    assert!(
        second.confirmations[0].certificate.is_empty(),
        "m3 left A's certificate out"
    );
    assert_eq!(
        second.recorded,
        [(b_cert.clone(), b_cert)],
        "both records keep B's certificate whole"
    );
    // The m3 without a certificate again, after B committed: m4 again.
    let again = deliver_to(
        &mut w.b,
        &Message::new(
            dom(A).owner(),
            dom(B).owner(),
            msg::CONFIRMATION,
            second.confirmations[0].to_bytes(),
        ),
    );
    assert_eq!(
        again
            .iter()
            .map(|m| (m.dst(), m.mtype()))
            .collect::<Vec<_>>(),
        [(dom(A).owner(), msg::COMMITMENT)]
    );
}

/// An agreement that leaves the certificate out although the offer named
/// none the initiator holds (a relay's forgery, or a card that forgot) is
/// refused before anything is deleted.
#[test]
fn an_agreement_leaving_out_a_certificate_the_card_does_not_hold_is_refused() {
    let mut w = World::new();
    let offer = msg::Offer::decode(&w.order_offer().param).unwrap();
    assert_eq!(
        offer.knows, None,
        "first contact: A holds no certificate of B"
    );
    let agreement = msg::Agreement {
        knows: None,
        delegation: None,
        offer_digest: offer.digest(),
        id: msg::ExchangeId([5; 32]),
        signature: vec![0; 64],
        certificate: Vec::new(),
    };
    let out = w.agreement_to_a(&agreement);
    let text = Refused::decode(&out[0].param).unwrap().text;
    assert!(text.contains("left out"), "{text}");
    assert_eq!(w.balances(), [5, 0, 0, 3], "v1 not deleted");
}

#[test]
fn a_remembered_certificate_does_not_vouch_for_a_forged_signature() {
    let mut w = World::new();
    w.start_and_accept();
    w.run();
    assert_eq!(w.balances(), [3, 1, 2, 2]);
    // A now remembers B's certificate. An agreement with it and a bad
    // signature is still refused.
    let offer = msg::Offer::decode(&w.order_offer().param).unwrap();
    let fake = msg::Agreement {
        knows: None,
        delegation: None,
        offer_digest: offer.digest(),
        id: msg::ExchangeId([9; 32]),
        signature: vec![0x30, 0x06, 2, 1, 1, 2, 1, 1],
        certificate: w.b.state().certificate.clone().unwrap(),
    };
    let out = w.agreement_to_a(&fake);
    let text = Refused::decode(&out[0].param).unwrap().text;
    assert!(text.contains("signature"), "{text}");
    assert_eq!(w.balances(), [3, 1, 2, 2], "v1 not deleted");
}

fn commits(c: &Card<MemStore>) -> u64 {
    c.meter().expect("metered").ops().commits
}

#[test]
fn queries_answer_from_the_state_and_store_nothing() {
    use tenet_voucher::card::{
        BALANCE_REQUEST, BALANCES, EXCHANGES, EXCHANGES_REQUEST, decode_balances,
    };
    let mut w = World::new();
    w.start_and_accept();
    w.run();
    let model = tenet_card::timing::TimingModel::paper_card();
    w.a.set_meter(Some(model.meter()));
    let stored = w.a.state().applets[&tenet_voucher_app::applet::APPLET_ID].clone();
    let ask = |w: &mut World, mtype: Mtype, param: Vec<u8>| {
        let m = Message::new(wallet(A), dom(A).owner(), mtype, param);
        deliver_to(&mut w.a, &m)
    };
    let out = ask(&mut w, BALANCE_REQUEST, Vec::new());
    assert_eq!(out[0].mtype(), BALANCES);
    let held = decode_balances(&out[0].param).unwrap();
    assert!(
        held.contains(&coffee(3)) && held.contains(&ticket(1)),
        "{held:?}"
    );
    let out = ask(&mut w, EXCHANGES_REQUEST, Vec::new());
    assert_eq!(out[0].mtype(), EXCHANGES);
    assert!(!out[0].param.is_empty(), "the finished exchange is listed");
    // An offer addressed to the card with no acceptor registered: refused,
    // and nothing stored either.
    let to_a = msg::Offer {
        knows: None,
        redeem: None,
        initiator: dom(B).owner(),
        responder: dom(A).owner(),
        give: ticket(1),
        want: Some(coffee(1)),
        n1: [5; 16],
        expires: None,
    };
    let m = Message::new(dom(B).owner(), dom(A).owner(), msg::OFFER, to_a.to_bytes());
    let out = deliver_to(&mut w.a, &m);
    assert_eq!(out[0].mtype(), Mtype::REFUSED);
    assert_eq!(commits(&w.a), 0, "no query wrote the store");
    assert_eq!(
        w.a.state().applets[&tenet_voucher_app::applet::APPLET_ID],
        stored,
        "the stored data is unchanged"
    );
    // The card's state in RAM stays what is stored: the next exchange runs.
    w.net.clear();
    w.start_and_accept();
    w.run();
    assert_eq!(w.balances(), [1, 2, 4, 1], "the second exchange completed");
    assert!(commits(&w.a) > 0);
}

// ------------------------------------------------------- certificate lifetimes

const DAY: u64 = 86_400;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A lifetime from `from` to `to` seconds relative to now.
fn life(from: i64, to: i64) -> tenet_pki::Lifetime {
    let at = |d: i64| {
        let t = std::time::SystemTime::now();
        if d < 0 {
            t - std::time::Duration::from_secs(d.unsigned_abs())
        } else {
            t + std::time::Duration::from_secs(d as u64)
        }
    };
    tenet_pki::Lifetime::between(at(from), at(to))
}

/// The agreement m2 is refused when the responder's certificate has expired
/// at the initiator's time, and nothing is deleted on the initiator.
#[test]
fn an_expired_certificate_in_the_agreement_is_refused() {
    // B's certificate ends in an hour. B's host says it is now; A's host
    // says it is tomorrow.
    let mut w = World::with_lifetimes(None, Some(life(-(DAY as i64), 3600)));
    assert!(w.tell_time(A, now() + DAY).is_empty());
    assert!(w.tell_time(B, now()).is_empty());
    w.start_and_accept();
    w.run();
    let refusals = w.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("agreement")
            && refusals[0].contains(&format!("certificate for {} expired at", dom(B).owner())),
        "{refusals:?}"
    );
    // A refused m2 and deleted nothing; B's v2 is held until its recovery.
    assert_eq!(w.balances()[..2], [5, 0]);
}

/// The confirmation m3 is refused when the initiator's certificate has
/// expired at the responder's time; the responder stores nothing.
#[test]
fn an_expired_certificate_in_the_confirmation_is_refused() {
    let mut w = World::with_lifetimes(Some(life(-(DAY as i64), 3600)), None);
    assert!(w.tell_time(A, now()).is_empty());
    assert!(w.tell_time(B, now() + DAY).is_empty());
    w.start_and_accept();
    w.run();
    let refusals = w.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("confirmation")
            && refusals[0].contains(&format!("certificate for {} expired at", dom(A).owner())),
        "{refusals:?}"
    );
    assert_eq!(w.balances()[2], 0, "B stored no v1");
}

/// A certificate that is not valid yet at the card's time (from its host)
/// is refused; a card without a host time yet does not refuse it, as its
/// clock is only a lower bound of the real time.
#[test]
fn a_card_with_its_clock_set_refuses_a_not_yet_valid_certificate() {
    // B's certificate is valid from tomorrow.
    let mut w = World::with_lifetimes(None, Some(life(DAY as i64, 400 * DAY as i64)));
    assert!(w.tell_time(A, now()).is_empty());
    w.start_and_accept();
    w.run();
    let refusals = w.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains(&format!(
            "certificate for {} is not valid before",
            dom(B).owner()
        )),
        "{refusals:?}"
    );
    assert_eq!(w.balances()[..2], [5, 0], "A deleted nothing");

    let mut w = World::with_lifetimes(None, Some(life(DAY as i64, 400 * DAY as i64)));
    w.start_and_accept();
    w.run();
    assert_eq!(
        w.balances(),
        [3, 1, 2, 2],
        "no host time: only expiry is checked"
    );
}

/// A card does not start an exchange with its own certificate expired (its
/// peer would refuse m2 or m3): the wallet is told to renew it.
#[test]
fn a_card_whose_own_certificate_expired_starts_no_exchange() {
    let mut w = World::with_lifetimes(Some(life(-(DAY as i64), 3600)), None);
    assert!(w.tell_time(A, now() + DAY).is_empty());
    w.send(Message::new(
        wallet(A),
        dom(A).owner(),
        msg::START_EXCHANGE,
        StartExchange {
            redeem: false,
            responder: dom(B).owner(),
            peer_wallet: wallet(B),
            give: coffee(2),
            want: Some(ticket(1)),
            expires_in: None,
        }
        .to_bytes(),
    ));
    w.run();
    let refusals = w.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("certificate of this card expired")
            && refusals[0].contains("tenet card recertify"),
        "{refusals:?}"
    );
}

/// A remembered certificate is checked at the card's time too: after one
/// exchange, B's certificate expires on A's clock and the next m2 is
/// refused although A no longer checks it against the CA.
#[test]
fn a_remembered_certificate_expires_too() {
    let mut w = World::with_lifetimes(None, Some(life(-(DAY as i64), 3600)));
    assert!(w.tell_time(A, now()).is_empty());
    w.start_and_accept();
    w.run();
    assert_eq!(w.balances(), [3, 1, 2, 2]);
    assert!(w.tell_time(A, now() + DAY).is_empty());
    w.start_and_accept();
    w.run();
    let refusals = w.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].contains("expired at"), "{refusals:?}");
    assert_eq!(w.balances()[..2], [3, 1], "A deleted nothing");
}

/// Renewal: a card whose certificate expired gets a new one for the same
/// key from the CA (what `tenet card recertify` does) and exchanges again;
/// its peer checks the new certificate.
#[test]
fn a_renewed_certificate_for_the_same_key_lets_the_card_exchange_again() {
    let mut w = World::with_lifetimes(Some(life(-(DAY as i64), 3600)), None);
    assert!(w.tell_time(A, now() + DAY).is_empty());
    assert!(w.tell_time(B, now() + DAY).is_empty());
    w.send(Message::new(
        wallet(A),
        dom(A).owner(),
        msg::START_EXCHANGE,
        StartExchange {
            redeem: false,
            responder: dom(B).owner(),
            peer_wallet: wallet(B),
            give: coffee(2),
            want: Some(ticket(1)),
            expires_in: None,
        }
        .to_bytes(),
    ));
    w.run();
    assert!(w.refusals()[0].contains("renew it"), "{:?}", w.refusals());

    let key = w.a.state().public_key.clone();
    let old = w.a.state().certificate.clone().unwrap();
    let (cert, ca) = tenet_pki::issue_entity(&w.ca, w.a.id(), &key)
        .unwrap()
        .card_forms()
        .unwrap();
    w.a.install_certificates(cert.clone(), ca).unwrap();
    assert_eq!(w.a.state().public_key, key, "the same key");
    let v = |c: &[u8]| tenet_pki::validity(c).unwrap().not_after;
    assert!(v(&old) < v(&cert));

    w.refused.clear();
    w.start_and_accept();
    w.run();
    assert_eq!(w.balances(), [3, 1, 2, 2], "{:?}", w.refusals());
    assert!(w.refusals().is_empty(), "{:?}", w.refusals());
}

/// A party whose certificate expired while its exchange was pending can
/// still have it finished by the TTP: otherwise its deleted voucher would
/// stay deleted for good (found in review). The TTP checks the chain, the
/// name and the signatures, not the expiry; a not-yet-valid certificate is
/// still refused.
#[test]
fn the_ttp_finishes_an_exchange_whose_party_certificate_expired_since() {
    use tenet_voucher::crypto::Crypto;
    use tenet_voucher::msg::{Agreement, ExchangeId, Kind, Offer};
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    tenet_pki::ensure_ca(&ca, "test CA").unwrap();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let keys = |name: &str, id: EntityId, lifetime| {
        let f = match name {
            "ttp" => tenet_pki::issue_entity_key_with(&ca, name, id, lifetime),
            _ => tenet_pki::issue_card_key_with(&ca, name, id, lifetime),
        };
        let f = f.unwrap();
        KeyCrypto::from_pem(&read(&f.key), &read(&f.cert), &read(&f.ca)).unwrap()
    };
    let ttp_id = dom(0x77).owner();
    let mut ttp = keys("ttp", ttp_id, life(-(DAY as i64), DAY as i64));
    let b_id = dom(B).owner();
    let offer = Offer {
        knows: None,
        redeem: None,
        initiator: dom(A).owner(),
        responder: b_id,
        give: coffee(1),
        want: Some(ticket(1)),
        n1: [1; 16],
        expires: None,
    };
    let request_from = |mut b: KeyCrypto| {
        let id = ExchangeId::of_n2(&[2; 16]);
        let digest = offer.digest();
        let agreement = Agreement {
            knows: None,
            delegation: None,
            offer_digest: digest,
            id,
            signature: b.sign(&Agreement::signed_bytes(&digest, &id)),
            certificate: b.certificate(),
        };
        RecoveryRequest {
            kind: Kind::Abort,
            offer: offer.clone(),
            agreement,
            signature: b.sign(&Kind::Abort.request_bytes(&id)),
            certificate: b.certificate(),
        }
    };
    // B's certificate ran from two days ago to yesterday.
    let expired = request_from(keys("b-old", b_id, life(-2 * DAY as i64, -(DAY as i64))));
    let mut decisions = MemoryDecisions::default();
    let adm = handle_request(&mut ttp, &mut decisions, b_id, &expired)
        .expect("an expired certificate does not stop recovery");
    assert_eq!(adm.kind, Kind::Abort);
    // One not valid before tomorrow is refused.
    let early = request_from(keys("b-new", b_id, life(DAY as i64, 2 * DAY as i64)));
    let e = handle_request(&mut ttp, &mut MemoryDecisions::default(), b_id, &early).unwrap_err();
    assert!(e.to_string().contains("not valid before"), "{e}");

    // The TTP's certificate is renewed (same key): the decision already
    // made is answered again, the same decision, under the current
    // certificate; a card would refuse the old one once it expired.
    let renewed = keys("ttp", ttp_id, life(-(DAY as i64), 30 * DAY as i64));
    let mut ttp2 = renewed;
    let again = handle_request(&mut ttp2, &mut decisions, b_id, &expired).unwrap();
    assert_eq!((again.kind, again.id), (adm.kind, adm.id));
    assert_ne!(
        again.certificate, adm.certificate,
        "the renewed certificate"
    );
    assert_eq!(again.certificate, ttp2.certificate());
    ttp2.verify_ttp(
        ttp_id,
        &again.certificate,
        &again.kind.admission_bytes(&again.id),
        &again.signature,
    )
    .expect("signed with the current key");
    assert_eq!(decisions.decided.len(), 1, "still one decision");
}

/// Through the real applet and the cards' clocks: an offer carries the
/// initiator card's time plus its lifetime, the responder's card refuses
/// it once its host told it a later time (deleting nothing), and the
/// initiator's card forgets it at its next tick: withdrawing it then finds
/// nothing open.
#[test]
fn an_offer_expires_on_the_cards_clocks() {
    let mut w = World::new();
    let t0 = now();
    assert!(w.tell_time(A, t0).is_empty());
    assert!(w.tell_time(B, t0).is_empty());
    let s = StartExchange {
        redeem: false,
        responder: dom(B).owner(),
        peer_wallet: wallet(B),
        give: coffee(2),
        want: Some(ticket(1)),
        expires_in: Some(30),
    };
    w.send(Message::new(
        wallet(A),
        dom(A).owner(),
        msg::START_EXCHANGE,
        s.to_bytes(),
    ));
    w.run();
    let offer = w.to_wallets.pop().expect("the offer reached P_B");
    assert_eq!(
        msg::Offer::decode(&offer.param).unwrap().expires,
        Some(t0 + 30)
    );
    assert!(w.tell_time(B, t0 + 30).is_empty());
    w.send(Message::new(
        wallet(B),
        dom(B).owner(),
        msg::ACCEPT,
        offer.param,
    ));
    w.run();
    assert!(
        w.refusals()
            .iter()
            .any(|r| r.contains("the offer expired at")),
        "{:?}",
        w.refusals()
    );
    assert_eq!(w.balances(), [5, 0, 0, 3]);
    assert!(w.tell_time(A, t0 + 30).is_empty());
    let withdraw = Message::new(wallet(A), dom(A).owner(), WITHDRAW, Vec::new());
    w.send(withdraw);
    w.run();
    assert!(
        w.refusals()
            .iter()
            .any(|r| r.contains("no open offer to withdraw")),
        "{:?}",
        w.refusals()
    );
}

/// Through the real applet: a lost confirmation leaves both cards
/// pending, and nobody orders recovery; the clock's ticks do it. Each
/// card's timer (60 s, the default at personalization) starts when its
/// side becomes pending, and the first tick after it makes the card ask
/// the TTP.
#[test]
fn a_lost_confirmation_is_recovered_by_the_cards_ticks() {
    let mut w = World::new();
    let t0 = now();
    for card in [A, B] {
        assert!(w.tell_time(card, t0).is_empty());
    }
    w.start_and_accept();
    w.lose_confirmation();
    for card in [A, B] {
        assert!(w.tell_time(card, t0 + 59).is_empty(), "not yet");
    }
    assert!(w.decisions.decided.is_empty());
    // B's timeout passes first: it aborts; A's own request then gets the
    // same decision.
    let out = w.tell_time(B, t0 + 60);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].mtype(), msg::RECOVERY_REQUEST);
    w.net.extend(out);
    w.run();
    let out = w.tell_time(A, t0 + 60);
    w.net.extend(out);
    w.run();
    assert_eq!(w.balances(), [5, 0, 0, 3], "aborted: nothing moved");
    assert_eq!(w.decisions.decided.len(), 1);
    assert!(
        w.tell_time(A, t0 + 1000).is_empty(),
        "nothing pending any more"
    );
}

/// The voucher state in `state`, a card's.
fn vouchers_in(state: &tenet_card::state::CardState) -> tenet_voucher::card::VoucherCard {
    tenet_voucher::card::VoucherCard::decode(&state.applets[&tenet_voucher_app::applet::APPLET_ID])
        .unwrap()
}

/// Card `c`'s voucher state.
fn vouchers(c: &Card<MemStore>) -> tenet_voucher::card::VoucherCard {
    vouchers_in(c.state())
}

/// The voucher state a card's store keeps after a power cut: its last
/// synced record.
fn after_power_cut(c: &Card<MemStore>) -> tenet_voucher::card::VoucherCard {
    let mut store = c.store().clone();
    store.power_cut();
    let record = tenet_card::Storage::load(&mut store).unwrap().unwrap();
    vouchers_in(&tenet_card::state::CardState::decode(&record).unwrap())
}

/// Only the initiator's start and commitment are written unsynced
/// (`may_lose_step`): a power cut after the start loses the offer until an
/// answer reporting state (the wallet's balance query) makes it durable.
#[test]
fn the_initiators_offer_is_unsynced_until_a_balance_query() {
    let mut w = World::new();
    w.order_offer();
    let now = vouchers(&w.a);
    assert_eq!(now.offers.len(), 1, "the card holds its offer");
    assert!(
        after_power_cut(&w.a).offers.is_empty(),
        "a power cut loses the unsynced offer"
    );
    w.send(Message::new(
        wallet(A),
        dom(A).owner(),
        tenet_voucher::card::BALANCE_REQUEST,
        Vec::new(),
    ));
    w.run();
    assert_eq!(
        after_power_cut(&w.a).offers.len(),
        1,
        "the balance query made it durable"
    );
}

/// A power cut right after `m4` reached the initiator undoes its commitment
/// (unsynced) and nothing else: the responder's steps were synced, and the
/// initiator's card, opened again from what its store kept, gets the
/// ticket through the TTP. No voucher is lost or made twice.
#[test]
fn a_power_cut_after_m4_is_settled_by_the_ttp() {
    let mut w = World::new();
    w.start_and_accept();
    w.run();
    assert_eq!(w.balances(), [3, 1, 2, 2]);
    let (a, b) = (after_power_cut(&w.a), after_power_cut(&w.b));
    assert_eq!(b.pending().count(), 0, "the responder's m3 step was synced");
    let (id, e) = a.pending().next().expect("the commitment was unsynced");
    assert_eq!(e.phase, tenet_voucher::card::Phase::AwaitingCommitment);
    let id = *id;
    // The power cut: card A opens again from its store.
    let mut store = w.a.store().clone();
    store.power_cut();
    let mut c = Card::open(
        store,
        CardLimits::default(),
        Box::new(SeededEntropy::new(99)),
    )
    .unwrap();
    c.install(Box::new(VoucherApplet::default()));
    select_and_log_in(&mut c, A);
    w.a = c;
    assert_eq!(w.balances(), [3, 0, 2, 2], "A's ticket is pending again");
    w.recover(A, id);
    assert_eq!(w.balances(), [3, 1, 2, 2], "resolved: both swapped");
    assert_eq!(w.decisions.decided.len(), 1);
}
