//! Hostile input into a real card with the voucher applet installed: the
//! card's APDU front end under sessions of hostile APDUs, and the voucher
//! applet reading hostile state from the card's store.
//!
//! These need the voucher application (its applet, provisioned on a card
//! certified by a test CA, with peers and a TTP whose signatures the applet
//! checks), so they live here. Every decoder's own properties live next to
//! it, in tests/hostile.rs of tenet-proto, tenet-pki, tenet-card,
//! tenet-voucher and tenet-host (`docs/hostile-input.md` lists them); the
//! harness is the tenet-hostile crate.
//!
//! The card's APDU front end gets sequences of hostile APDUs and must answer
//! each with a well-formed response, and leave its persistent state as it
//! was whenever it rejects an APDU or refuses the message it carried.
//!
//! Cases per property: `TENET_HOSTILE_CASES` (default 2000; the stored
//! state property runs a quarter). A failure prints the shrunk input;
//! `PROPTEST_RNG_SEED=N` fixes a run's random seed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use tenet_card::state::CardState;
use tenet_card::{Card, CardLimits, MemStore, Personalization, SeededEntropy, Storage};
use tenet_hostile::{
    COVERAGE_MIN_CASES, TLV_TOKENS, bytes, cases, check, check_with, hostile, mutate, mutation,
};
use tenet_pki::{ensure_ca, issue_entity, issue_entity_key};
use tenet_proto::apdu::{Command, Response, StatusWord, tenet};
use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, UnblockPin, VerifyPin};
use tenet_proto::notice::{Undeliverable, UndeliverableReason};
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};
use tenet_voucher::card::{self as vcard};
use tenet_voucher::crypto::{Crypto, KeyCrypto};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{
    self, Admission, Agreement, Commitment, Confirmation, ExchangeId, Kind, Offer, StartExchange,
};
use tenet_voucher_app::applet::{APPLET_ID, VoucherApplet, initial_data};

// ---------------------------------------------------------------------------
// Valid voucher states
// ---------------------------------------------------------------------------

#[path = "../../tenet-voucher/tests/strategies/mod.rs"]
mod strategies;
use strategies::*;

// ---------------------------------------------------------------------------
// A voucher card: the APDU front end and the applet's stored state
// ---------------------------------------------------------------------------

const PIN: &[u8] = b"1234";
const PUK: &[u8] = b"12345678";

/// A CA, a TTP and a peer with keys and certificates, and a personalized
/// voucher card that holds 1000 coffee vouchers and has one open offer.
struct Fixture {
    _dir: tempfile::TempDir,
    /// The card's store, as personalization and setup left it.
    card_store: MemStore,
    card: EntityId,
    /// The card's wallet app (authenticated in every case).
    wallet: EntityId,
    /// Valid messages to the card, one or more per service and voucher step.
    to_card: Vec<Message>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(Fixture::new)
}

fn select_apdu() -> Vec<u8> {
    Command::new(0, tenet::INS_SELECT, 4, 0)
        .with_data(tenet::AID.to_vec())
        .to_bytes()
}

fn deliver_apdu(m: &Message, le: Option<usize>) -> Vec<u8> {
    let mut c = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0).with_data(m.to_bytes());
    c.le = le;
    c.to_bytes()
}

/// Delivers `m` and collects every message the card answers with.
fn deliver(card: &mut Card<MemStore>, m: &Message) -> Vec<Message> {
    let mut r = Response::decode(&card.process_apdu(&deliver_apdu(m, Some(65_536)))).unwrap();
    let mut out = Vec::new();
    loop {
        assert!(r.sw.is_success(), "{}", r.sw);
        if !r.data.is_empty() {
            out.push(Message::decode(&r.data).unwrap());
        }
        if r.sw.waiting() == Some(0) {
            return out;
        }
        let poll = Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(65_536);
        r = Response::decode(&card.process_apdu(&poll.to_bytes())).unwrap();
    }
}

fn coffee(issuer: Domain, quantity: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer,
            promise: "1 coffee".into(),
        },
        quantity,
    }
}

fn ticket(issuer: Domain, quantity: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer,
            promise: "1 ticket".into(),
        },
        quantity,
    }
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ensure_ca(&ca, "hostile-input CA").unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();

        let ttp = Domain::new([0x77; 12]).owner();
        let files = issue_entity_key(&ca, "ttp", ttp).unwrap();
        let (ttp_key_pem, ttp_cert_pem, ca_pem) =
            (read(&files.key), read(&files.cert), read(&files.ca));
        let mut ttp_crypto = KeyCrypto::from_pem(&ttp_key_pem, &ttp_cert_pem, &ca_pem).unwrap();
        let ttp_cert_der = ttp_crypto.certificate();

        let peer = Domain::new([0x99; 12]).owner();
        let files = tenet_pki::issue_card_key(&ca, "peer", peer).unwrap();
        let mut peer_crypto =
            KeyCrypto::from_pem(&read(&files.key), &read(&files.cert), &ca_pem).unwrap();

        let domain = Domain::new([0xc0; 12]);
        let mut card = Card::personalize(
            MemStore::new(64 * 1024),
            &Personalization {
                domain,
                pin: PIN.to_vec(),
                puk: PUK.to_vec(),
            },
            CardLimits::default(),
            Box::new(SeededEntropy::new(1)),
        )
        .unwrap();
        let id = card.id();
        let card_public_key = card.state().public_key.clone();
        let (cert, ca_cert) = issue_entity(&ca, id, &card_public_key)
            .unwrap()
            .card_forms()
            .unwrap();
        card.install_certificates(cert, ca_cert).unwrap();
        card.provision(APPLET_ID, initial_data(ttp, Some(ttp_cert_der.clone())))
            .unwrap();
        card.install(Box::new(VoucherApplet::default()));
        let wallet = EntityId::new(domain, Port::new(5));
        assert_eq!(
            Response::decode(&card.process_apdu(&select_apdu()))
                .unwrap()
                .sw,
            StatusWord::OK
        );
        let verify = Message::new(
            wallet,
            id,
            Mtype::VERIFY_PIN,
            VerifyPin { pin: PIN.to_vec() }.to_bytes(),
        );
        let answer = deliver(&mut card, &verify);
        assert_eq!(
            PinStatus::decode(&answer[0].param).unwrap().outcome,
            PinOutcome::Verified
        );
        let mint = Message::new(wallet, id, vcard::MINT, coffee(domain, 1000).to_bytes());
        assert!(deliver(&mut card, &mint).is_empty(), "mint answered");
        let start = StartExchange {
            redeem: false,
            responder: peer,
            peer_wallet: EntityId::new(peer.domain(), Port::new(5)),
            give: coffee(domain, 10),
            want: Some(ticket(peer.domain(), 1)),
            expires_in: None,
        };
        let start = Message::new(wallet, id, msg::START_EXCHANGE, start.to_bytes());
        let sent = deliver(&mut card, &start);
        assert_eq!(sent[0].mtype(), msg::OFFER, "{sent:?}");
        let open_offer = Offer::decode(&sent[0].param).unwrap();

        // Valid next steps from the state above, each from its proper sender.
        let n2 = [0x42; 16];
        let xid = ExchangeId::of_n2(&n2);
        let agreement = Agreement {
            knows: None,
            delegation: None,
            offer_digest: open_offer.digest(),
            id: xid,
            signature: peer_crypto.sign(&Agreement::signed_bytes(&open_offer.digest(), &xid)),
            certificate: peer_crypto.certificate(),
        };
        let incoming = Offer {
            knows: None,
            redeem: None,
            initiator: peer,
            responder: id,
            give: ticket(peer.domain(), 1),
            want: Some(coffee(domain, 2)),
            n1: [0x24; 16],
            expires: None,
        };
        let mut admission = |kind: Kind| Admission {
            kind,
            id: xid,
            signature: ttp_crypto.sign(&kind.admission_bytes(&xid)),
            certificate: ttp_cert_der.clone(),
        };
        let confirmation = Confirmation {
            id: xid,
            signature: peer_crypto.sign(&Confirmation::signed_bytes(&xid)),
            certificate: peer_crypto.certificate(),
        };
        let stranger = EntityId::new(Domain::new([0x55; 12]), Port::new(9));
        let m = |src: EntityId, mtype: Mtype, param: Vec<u8>| Message::new(src, id, mtype, param);
        let to_card = vec![
            m(wallet, Mtype::ECHO_REQUEST, b"hi".to_vec()),
            m(
                wallet,
                Mtype::VERIFY_PIN,
                VerifyPin { pin: PIN.to_vec() }.to_bytes(),
            ),
            m(
                wallet,
                Mtype::VERIFY_PIN,
                VerifyPin {
                    pin: b"0000".to_vec(),
                }
                .to_bytes(),
            ),
            m(
                stranger,
                Mtype::VERIFY_PIN,
                VerifyPin { pin: PIN.to_vec() }.to_bytes(),
            ),
            m(
                wallet,
                Mtype::UNBLOCK_PIN,
                UnblockPin {
                    puk: PUK.to_vec(),
                    new_pin: PIN.to_vec(),
                }
                .to_bytes(),
            ),
            m(
                wallet,
                Mtype::CHANGE_PIN,
                ChangePin {
                    new_pin: PIN.to_vec(),
                }
                .to_bytes(),
            ),
            m(wallet, Mtype::LOGOUT, vec![]),
            m(wallet, Mtype::CARD_INFO_REQUEST, vec![]),
            m(wallet, vcard::MINT, coffee(domain, 5).to_bytes()),
            m(wallet, vcard::BALANCE_REQUEST, vec![]),
            m(wallet, vcard::EXCHANGES_REQUEST, vec![]),
            m(
                wallet,
                msg::START_EXCHANGE,
                StartExchange {
                    redeem: false,
                    responder: peer,
                    peer_wallet: peer,
                    give: coffee(domain, 1),
                    want: Some(ticket(peer.domain(), 3)),
                    expires_in: None,
                }
                .to_bytes(),
            ),
            m(wallet, vcard::SET_ACCEPTOR, wallet.to_bytes()),
            m(peer, msg::OFFER, incoming.to_bytes()),
            m(wallet, msg::ACCEPT, incoming.to_bytes()),
            m(peer, msg::AGREEMENT, agreement.to_bytes()),
            m(peer, msg::COMMITMENT, Commitment { n2 }.to_bytes()),
            m(peer, msg::CONFIRMATION, confirmation.to_bytes()),
            m(wallet, msg::RECOVER, xid.to_bytes()),
            m(ttp, msg::ADMISSION, admission(Kind::Resolve).to_bytes()),
            m(ttp, msg::ADMISSION, admission(Kind::Abort).to_bytes()),
            m(
                peer,
                Mtype::UNDELIVERABLE,
                Undeliverable {
                    reason: UndeliverableReason::NO_ROUTE,
                    dst: peer,
                    mtype: msg::OFFER,
                }
                .to_bytes(),
            ),
            m(peer, Mtype::ECHO_REPLY, vec![1]),
            m(wallet, Mtype(0x8001), vec![1, 2, 3]),
        ];
        Self {
            card_store: card.store().clone(),
            card: id,
            wallet,
            to_card,
            _dir: dir,
        }
    }

    /// The card as setup left it, powered up: applet selected, wallet
    /// authenticated.
    fn card(&self) -> Card<MemStore> {
        let mut card = Card::open(
            self.card_store.clone(),
            CardLimits::default(),
            Box::new(SeededEntropy::new(3)),
        )
        .unwrap();
        card.install(Box::new(VoucherApplet::default()));
        card.process_apdu(&select_apdu());
        let verify = Message::new(
            self.wallet,
            self.card,
            Mtype::VERIFY_PIN,
            VerifyPin { pin: PIN.to_vec() }.to_bytes(),
        );
        deliver(&mut card, &verify);
        card
    }
}

/// One step of a card session: the APDUs of one command (several for a
/// chained DELIVER), then hostile changes to one of them.
fn apdu_step(fx: &'static Fixture) -> BoxedStrategy<Vec<Vec<u8>>> {
    let le = prop_oneof![
        Just(None),
        Just(Some(256)),
        Just(Some(65_536)),
        (1usize..=300).prop_map(Some),
    ];
    let message = (
        any::<Index>(),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(mutation(TLV_TOKENS), 1..4),
        ],
        any::<bool>(),
    )
        .prop_map(move |(i, ms, whole)| {
            let m = &fx.to_card[i.index(fx.to_card.len())];
            if whole {
                mutate(m.to_bytes(), &ms)
            } else {
                Message::new(m.src(), m.dst(), m.mtype(), mutate(m.param.clone(), &ms)).to_bytes()
            }
        });
    let deliver = (
        message,
        le.clone(),
        prop_oneof![3 => Just(None), 1 => (1usize..=255).prop_map(Some)],
    )
        .prop_map(|(mut data, le, chunk)| {
            data.truncate(65_535);
            let mut c = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0).with_data(data);
            c.le = le;
            match chunk {
                Some(n) => c.chain(n).iter().map(Command::to_bytes).collect(),
                None => vec![c.to_bytes()],
            }
        });
    let other = (
        select(vec![
            (tenet::CLA, tenet::INS_POLL),
            (tenet::CLA, tenet::INS_ASSIGN_PORT),
            (tenet::CLA, tenet::INS_GET_INFO),
            (0x00, tenet::INS_GET_RESPONSE),
            (0x00, tenet::INS_SELECT),
            (tenet::CLA, 0x99),
        ]),
        le,
        any::<bool>(),
    )
        .prop_map(|((cla, ins), le, other_aid)| {
            let mut c = Command::new(cla, ins, 0, 0);
            if ins == tenet::INS_SELECT {
                c.p1 = 4;
                c.data = if other_aid {
                    vec![0xa0, 0, 0, 0, 1]
                } else {
                    tenet::AID.to_vec()
                };
            }
            c.le = le;
            vec![c.to_bytes()]
        });
    let step = prop_oneof![
        5 => deliver,
        3 => other,
        1 => bytes(80).prop_map(|b| vec![b]),
    ];
    (
        step,
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec(mutation(TLV_TOKENS), 1..4),
        ],
        any::<Index>(),
    )
        .prop_map(|(mut apdus, ms, which)| {
            let i = which.index(apdus.len());
            apdus[i] = mutate(std::mem::take(&mut apdus[i]), &ms);
            apdus
        })
        .boxed()
}

/// What a rejected APDU must not change.
#[derive(Debug, PartialEq)]
struct Persistent {
    state: CardState,
    record: Option<Vec<u8>>,
    commits: u64,
}

impl Persistent {
    fn of(card: &Card<MemStore>) -> Self {
        Self {
            state: card.state().clone(),
            record: card.store().clone().load().unwrap(),
            commits: card.store().commits,
        }
    }
}

/// What a malformed APDU must not change either.
#[derive(Debug, PartialEq)]
struct Volatile {
    waiting: usize,
    authenticated: Vec<EntityId>,
}

impl Volatile {
    fn of(card: &Card<MemStore>) -> Self {
        Self {
            waiting: card.waiting(),
            authenticated: card.authenticated().copied().collect(),
        }
    }
}

/// Outcomes the card sessions must reach over a full-size run, so the
/// sequences are known to get past the front end into the services and the
/// voucher applet.
#[derive(Default, Debug)]
struct SessionTally {
    apdus: u64,
    malformed: u64,
    rejected: u64,
    refusals_checked: u64,
    answers: BTreeMap<u16, u64>,
}

/// Sequences of hostile APDUs into a real card holding vouchers, an open
/// offer and an authenticated wallet. After every APDU:
///
/// - the response is a well-formed response APDU;
/// - the store holds exactly the state the card works with;
/// - an APDU that fits no ISO 7816-4 case is answered `6700` and changes
///   nothing, volatile state included;
/// - an APDU answered with an error status (not `9000`, `91xx`, `61xx`)
///   leaves the persistent state and the store untouched (docs/apdu.md:
///   "nothing changed", "the message had no effect");
/// - a DELIVER whose message the card refuses (it answers with a `refused`
///   notice) leaves the persistent state untouched (an applet's refusal
///   commits nothing; the card services refuse before they change anything).
#[test]
fn card_front_end_apdu_sessions() {
    let fx = fixture();
    let tally = RefCell::new(SessionTally::default());
    let sessions = proptest::collection::vec(apdu_step(fx), 1..10);
    check(sessions, |steps| {
        let mut card = fx.card();
        let mut t = tally.borrow_mut();
        // A GET RESPONSE sequence is open after a 61xx answer until a
        // command gets past the APDU decoding and class check.
        let mut pending = false;
        for apdu in steps.iter().flatten() {
            t.apdus += 1;
            let (p0, v0) = (Persistent::of(&card), Volatile::of(&card));
            let cmd = Command::decode(apdu);
            let raw = card.process_apdu(apdu);
            let resp = Response::decode(&raw)
                .map_err(|e| TestCaseError::fail(format!("malformed response {raw:02x?}: {e}")))?;
            let (p1, v1) = (Persistent::of(&card), Volatile::of(&card));
            let stored = CardState::decode(p1.record.as_deref().unwrap_or_default())
                .map_err(|e| TestCaseError::fail(format!("stored state unreadable: {e}")))?;
            prop_assert_eq!(&stored, &p1.state, "store and card disagree");
            let early = match &cmd {
                Err(_) => {
                    t.malformed += 1;
                    prop_assert_eq!(resp.sw, StatusWord::WRONG_LENGTH);
                    prop_assert!(resp.data.is_empty());
                    prop_assert_eq!(&p1, &p0, "a malformed APDU changed the card");
                    prop_assert_eq!(&v1, &v0, "a malformed APDU changed the card");
                    true
                }
                Ok(c) => c.cla & 0x03 != 0,
            };
            let sw = resp.sw;
            let ok = sw.is_success() || sw.sw1() == 0x61;
            if !ok {
                t.rejected += 1;
                prop_assert!(resp.data.is_empty(), "data with an error status");
                prop_assert_eq!(&p1, &p0, "rejected APDU ({}) changed the card", sw);
            }
            if let Ok(c) = &cmd {
                let delivered = c.cla == tenet::CLA && c.ins == tenet::INS_DELIVER;
                let polled = c.cla == tenet::CLA && c.ins == tenet::INS_POLL;
                if (delivered || polled)
                    && sw.is_success()
                    && !resp.data.is_empty()
                    && let Ok(answer) = Message::decode(&resp.data)
                {
                    *t.answers.entry(answer.mtype().0).or_default() += 1;
                    // A refusal of this very message (its notice names the
                    // refused mtype): an answer left from an earlier
                    // message, which a garbled command may serve again,
                    // says nothing of this one.
                    let this = Message::decode(&c.data).map(|m| m.mtype()).ok();
                    let refused = (answer.mtype() == Mtype::REFUSED)
                        .then(|| tenet_proto::notice::Refused::decode(&answer.param).ok())
                        .flatten()
                        .map(|r| r.mtype);
                    if delivered
                        && !pending
                        && v0.waiting == 0
                        && refused.is_some()
                        && refused == this
                    {
                        t.refusals_checked += 1;
                        prop_assert_eq!(&p1, &p0, "a refused message changed the card");
                    }
                }
            }
            if !early {
                pending = sw.sw1() == 0x61;
            }
        }
        Ok(())
    });
    let t = tally.into_inner();
    eprintln!("card sessions: {t:?}");
    if cases() >= COVERAGE_MIN_CASES {
        assert!(
            t.malformed > 0 && t.rejected > 0 && t.refusals_checked > 0,
            "{t:?}"
        );
        for (mtype, what) in [
            (Mtype::ECHO_REPLY, "echo"),
            (Mtype::PIN_STATUS, "PIN services"),
            (Mtype::CARD_INFO, "card info"),
            (Mtype::REFUSED, "refusals"),
            (vcard::BALANCES, "balances"),
            (msg::AGREEMENT, "accepting an offer"),
            (msg::CONFIRMATION, "an agreement to the open offer"),
        ] {
            assert!(
                t.answers.contains_key(&mtype.0),
                "no session reached {what} ({mtype}): {t:?}"
            );
        }
    }
}

/// The voucher applet reads its state from the card's store on every
/// message: hostile stored state makes it refuse, never panic.
#[test]
fn voucher_applet_reads_hostile_stored_state() {
    let fx = fixture();
    let real = fx.card().state().applets[&APPLET_ID].clone();
    let seeds = prop_oneof![Just(real), encoded(voucher_card())].boxed();
    let refused = Cell::new(0u64);
    let answered = Cell::new(0u64);
    let requests = [
        vcard::BALANCE_REQUEST,
        vcard::EXCHANGES_REQUEST,
        msg::RECOVER,
    ];
    check_with(
        cases().div_ceil(4),
        (hostile(seeds, TLV_TOKENS), select(requests.to_vec())),
        |(input, mtype)| {
            let mut card = fx.card();
            card.provision(APPLET_ID, input.bytes.clone()).unwrap();
            let param = if mtype == msg::RECOVER {
                ExchangeId([1; 32]).to_bytes()
            } else {
                vec![]
            };
            let before = Persistent::of(&card);
            let out = deliver(&mut card, &Message::new(fx.wallet, fx.card, mtype, param));
            prop_assert_eq!(out.len(), 1);
            if out[0].mtype() == Mtype::REFUSED {
                refused.set(refused.get() + 1);
                prop_assert_eq!(
                    &Persistent::of(&card),
                    &before,
                    "a refusal changed the card"
                );
            } else {
                answered.set(answered.get() + 1);
            }
            Ok(())
        },
    );
    eprintln!(
        "voucher applet on hostile state: {} answered, {} refused",
        answered.get(),
        refused.get()
    );
    if cases() >= COVERAGE_MIN_CASES {
        assert!(answered.get() > 0 && refused.get() > 0);
    }
}
