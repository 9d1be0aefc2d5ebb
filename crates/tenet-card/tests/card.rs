//! The card through its APDU front end, without I/O.

use tenet_card::{
    ATR, Applet, AppletCx, Card, CardLimits, FileStore, MemStore, Personalization, Refusal,
    SeededEntropy, Storage,
};
use tenet_proto::apdu::{Command, Response, StatusWord, tenet};
use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, SetTime, UnblockPin, VerifyPin};
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};

const DOMAIN: Domain = Domain::new([0xc0; 12]);
const CARD: EntityId = DOMAIN.owner();

fn perso() -> Personalization {
    Personalization {
        domain: DOMAIN,
        pin: b"1234".to_vec(),
        puk: b"87654321".to_vec(),
    }
}

fn card_with<S: Storage>(store: S, limits: CardLimits) -> Card<S> {
    Card::personalize(store, &perso(), limits, Box::new(SeededEntropy::new(7))).unwrap()
}

/// A card personalized once per test binary (personalizing hashes the PIN
/// and PUK with Argon2id, on purpose slow) and opened afresh from a copy of
/// its store each time.
fn card() -> Card<MemStore> {
    static PERSONALIZED: std::sync::OnceLock<MemStore> = std::sync::OnceLock::new();
    let store = PERSONALIZED.get_or_init(|| {
        let mut c = card_with(MemStore::new(32 * 1024), CardLimits::default());
        c.install(Box::new(Vault));
        c.store().clone()
    });
    let mut c = Card::open(
        store.clone(),
        CardLimits::default(),
        Box::new(SeededEntropy::new(7)),
    )
    .unwrap();
    c.install(Box::new(Vault));
    select(&mut c);
    c
}

fn app(port: u32) -> EntityId {
    EntityId::new(DOMAIN, Port::new(port))
}

fn apdu<S: Storage>(c: &mut Card<S>, cmd: Command) -> Response {
    Response::decode(&c.process_apdu(&cmd.to_bytes())).unwrap()
}

fn select<S: Storage>(c: &mut Card<S>) {
    let r = apdu(
        c,
        Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID.to_vec()),
    );
    assert_eq!(r.sw, StatusWord::OK);
}

fn deliver_cmd(m: &Message) -> Command {
    Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
        .with_data(m.to_bytes())
        .with_le(65_536)
}

/// Delivers `m` and returns every message the card answers with (DELIVER,
/// then POLL while messages wait).
fn deliver<S: Storage>(c: &mut Card<S>, m: Message) -> (StatusWord, Vec<Message>) {
    let mut r = apdu(c, deliver_cmd(&m));
    let first_sw = r.sw;
    let mut out = Vec::new();
    loop {
        if !r.data.is_empty() {
            out.push(Message::decode(&r.data).unwrap());
        }
        match r.sw.waiting() {
            Some(n) if n > 0 => {
                r = apdu(
                    c,
                    Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(65_536),
                )
            }
            _ => return (first_sw, out),
        }
    }
}

fn one<S: Storage>(c: &mut Card<S>, m: Message) -> Message {
    let (sw, mut out) = deliver(c, m);
    assert!(sw.is_success(), "{sw}");
    assert_eq!(out.len(), 1, "{out:?}");
    out.remove(0)
}

fn pin_status(m: &Message) -> PinStatus {
    assert_eq!(m.mtype(), Mtype::PIN_STATUS, "{m:?}");
    PinStatus::decode(&m.param).unwrap()
}

fn verify<S: Storage>(c: &mut Card<S>, from: EntityId, pin: &[u8]) -> PinStatus {
    let m = Message::new(
        from,
        CARD,
        Mtype::VERIFY_PIN,
        VerifyPin { pin: pin.to_vec() }.to_bytes(),
    );
    pin_status(&one(c, m))
}

/// A test applet: stores what it is given (privileged `0x8101`), answers
/// `0x8102` with what it holds, and emits two messages on `0x8103`.
struct Vault;

const VAULT_PUT: Mtype = Mtype(0x8101);
const VAULT_GET: Mtype = Mtype(0x8102);
const VAULT_TWO: Mtype = Mtype(0x8103);

impl Applet for Vault {
    fn id(&self) -> u16 {
        0x81
    }
    fn name(&self) -> &'static str {
        "vault"
    }
    fn handles(&self, m: Mtype) -> bool {
        [VAULT_PUT, VAULT_GET, VAULT_TWO].contains(&m)
    }
    fn privileged(&self) -> &[Mtype] {
        &[VAULT_PUT]
    }
    fn handle(&mut self, cx: &mut AppletCx<'_>, m: &Message) -> Result<(), Refusal> {
        match m.mtype() {
            VAULT_PUT if m.param.is_empty() => Err(Refusal("nothing to store".into())),
            VAULT_PUT => {
                *cx.data = m.param.clone();
                cx.send(m.src(), VAULT_GET, vec![]);
                Ok(())
            }
            VAULT_GET => {
                let d = cx.data.clone();
                cx.send(m.src(), VAULT_GET, d);
                Ok(())
            }
            _ => {
                cx.send(m.src(), Mtype(1), vec![1]);
                cx.send(m.src(), Mtype(1), vec![2]);
                Ok(())
            }
        }
    }
}

#[test]
fn select_gates_the_proprietary_commands() {
    let mut c = card_with(MemStore::new(4096), CardLimits::default());
    let echo = Message::new(app(1), CARD, Mtype::ECHO_REQUEST, vec![]);
    assert_eq!(
        apdu(&mut c, deliver_cmd(&echo)).sw,
        StatusWord::CONDITIONS_NOT_SATISFIED
    );
    let wrong = apdu(
        &mut c,
        Command::new(0, tenet::INS_SELECT, 4, 0).with_data(vec![0xa0, 0, 0, 0, 1]),
    );
    assert_eq!(wrong.sw, StatusWord::NOT_FOUND);
    select(&mut c);
    assert!(apdu(&mut c, deliver_cmd(&echo)).sw.is_success());
}

#[test]
fn echo_is_answered_in_the_same_apdu() {
    let mut c = card();
    let r = apdu(
        &mut c,
        deliver_cmd(&Message::new(
            app(9),
            CARD,
            Mtype::ECHO_REQUEST,
            b"ping".to_vec(),
        )),
    );
    assert_eq!(r.sw, StatusWord::OK, "no further message waits");
    assert_eq!(
        Message::decode(&r.data).unwrap(),
        Message::new(CARD, app(9), Mtype::ECHO_REPLY, b"ping".to_vec())
    );
}

#[test]
fn several_outputs_are_signalled_and_polled() {
    let mut c = card();
    let r = apdu(
        &mut c,
        deliver_cmd(&Message::new(app(1), CARD, VAULT_TWO, vec![])),
    );
    assert_eq!(r.sw, StatusWord(0x9101), "one more waits");
    assert_eq!(Message::decode(&r.data).unwrap().param, vec![1]);
    let p = apdu(
        &mut c,
        Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(256),
    );
    assert_eq!(
        (p.sw, Message::decode(&p.data).unwrap().param),
        (StatusWord::OK, vec![2])
    );
    let empty = apdu(
        &mut c,
        Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(256),
    );
    assert_eq!((empty.sw, empty.data.len()), (StatusWord::OK, 0));
}

#[test]
fn ports_are_assigned_once_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card");
    let mut seen = Vec::new();
    for round in 0..3 {
        let store = if round == 0 {
            FileStore::create(&path, 4096).unwrap()
        } else {
            FileStore::open(&path).unwrap()
        };
        let mut c = if round == 0 {
            card_with(store, CardLimits::default())
        } else {
            Card::open(
                store,
                CardLimits::default(),
                Box::new(SeededEntropy::new(1)),
            )
            .unwrap()
        };
        select(&mut c);
        for _ in 0..3 {
            let r = apdu(
                &mut c,
                Command::new(tenet::CLA, tenet::INS_ASSIGN_PORT, 0, 0).with_le(4),
            );
            assert_eq!(r.sw, StatusWord::OK);
            let port = u32::from_be_bytes(r.data.try_into().unwrap());
            assert_ne!(port, 0, "port 0 is the card itself");
            assert!(!seen.contains(&port), "port {port} assigned twice");
            seen.push(port);
        }
        // Dropped without shutdown, as in a power cut.
    }
}

#[test]
fn pin_blocks_after_three_wrong_tries_and_puk_unblocks() {
    let mut c = card();
    let a = app(1);
    assert_eq!(
        verify(&mut c, a, b"0000"),
        PinStatus {
            outcome: PinOutcome::Wrong,
            tries_left: 2
        }
    );
    assert_eq!(
        verify(&mut c, a, b"1111"),
        PinStatus {
            outcome: PinOutcome::Wrong,
            tries_left: 1
        }
    );
    assert_eq!(
        verify(&mut c, a, b"2222"),
        PinStatus {
            outcome: PinOutcome::Blocked,
            tries_left: 0
        }
    );
    assert_eq!(
        verify(&mut c, a, b"1234").outcome,
        PinOutcome::Blocked,
        "even the right PIN"
    );
    assert_eq!(c.authenticated().count(), 0);
    let wrong_puk = UnblockPin {
        puk: b"00000000".to_vec(),
        new_pin: b"5555".to_vec(),
    };
    let m = one(
        &mut c,
        Message::new(a, CARD, Mtype::UNBLOCK_PIN, wrong_puk.to_bytes()),
    );
    assert_eq!(pin_status(&m).outcome, PinOutcome::WrongPuk);
    let unblock = UnblockPin {
        puk: b"87654321".to_vec(),
        new_pin: b"5555".to_vec(),
    };
    let m = one(
        &mut c,
        Message::new(a, CARD, Mtype::UNBLOCK_PIN, unblock.to_bytes()),
    );
    assert_eq!(
        pin_status(&m),
        PinStatus {
            outcome: PinOutcome::Changed,
            tries_left: 3
        }
    );
    assert_eq!(
        verify(&mut c, a, b"1234").outcome,
        PinOutcome::Wrong,
        "the old PIN is gone"
    );
    assert_eq!(
        verify(&mut c, a, b"5555"),
        PinStatus {
            outcome: PinOutcome::Verified,
            tries_left: 3
        }
    );
}

#[test]
fn a_wrong_try_is_persisted_before_the_comparison() {
    let mut c = card();
    c.store_mut().fail_commits = true;
    let m = Message::new(
        app(1),
        CARD,
        Mtype::VERIFY_PIN,
        VerifyPin {
            pin: b"1234".to_vec(),
        }
        .to_bytes(),
    );
    let r = apdu(&mut c, deliver_cmd(&m));
    assert_eq!(
        r.sw,
        StatusWord::MEMORY_FAILURE,
        "no try without recording it"
    );
    assert_eq!(c.authenticated().count(), 0);
    assert_eq!(c.state().pin_tries, 3);
}

#[test]
fn privileged_mtypes_need_the_senders_own_authentication() {
    let mut c = card();
    let (alice, mallory) = (app(1), app(2));
    let put = |from| {
        Message::new(
            from,
            EntityId::new(DOMAIN, Port::OWNER),
            VAULT_PUT,
            b"secret".to_vec(),
        )
    };
    let refused = one(&mut c, put(alice));
    assert_eq!(refused.mtype(), Mtype::REFUSED);
    let r = Refused::decode(&refused.param).unwrap();
    assert_eq!(r.mtype, VAULT_PUT);
    assert!(r.text.contains("not authenticated"), "{}", r.text);
    assert_eq!(c.state().applets.get(&0x81), None, "nothing stored");

    assert_eq!(verify(&mut c, alice, b"1234").outcome, PinOutcome::Verified);
    assert_eq!(
        one(&mut c, put(alice)).mtype(),
        VAULT_GET,
        "accepted once authenticated"
    );
    assert_eq!(
        c.state().applets.get(&0x81).map(Vec::as_slice),
        Some(&b"secret"[..])
    );
    // Per entity: alice's authentication does nothing for mallory.
    assert_eq!(one(&mut c, put(mallory)).mtype(), Mtype::REFUSED);
    // Change-pin is privileged too.
    let change = |from| {
        Message::new(
            from,
            EntityId::new(DOMAIN, Port::OWNER),
            Mtype::CHANGE_PIN,
            ChangePin {
                new_pin: b"9999".to_vec(),
            }
            .to_bytes(),
        )
    };
    assert_eq!(one(&mut c, change(mallory)).mtype(), Mtype::REFUSED);
    assert_eq!(
        pin_status(&one(&mut c, change(alice))).outcome,
        PinOutcome::Changed
    );
}

#[test]
fn remote_entities_cannot_join_the_authenticated_set() {
    let mut c = card();
    let remote = EntityId::new(Domain::new([0x0d; 12]), Port::new(1));
    assert_eq!(
        verify(&mut c, remote, b"1234").outcome,
        PinOutcome::NotAllowed
    );
    assert_eq!(
        verify(&mut c, CARD, b"1234").outcome,
        PinOutcome::NotAllowed,
        "nor the card's own id"
    );
    assert_eq!(c.authenticated().count(), 0);
    assert_eq!(c.state().pin_tries, 3, "no try was spent");
}

#[test]
fn reset_and_power_off_clear_the_authenticated_set() {
    let mut c = card();
    verify(&mut c, app(1), b"1234");
    assert_eq!(c.authenticated().count(), 1);
    c.reset();
    assert_eq!(c.authenticated().count(), 0);
    select(&mut c);
    verify(&mut c, app(1), b"1234");
    c.power_off();
    assert_eq!(c.authenticated().count(), 0);
    let m = Message::new(app(1), CARD, Mtype::ECHO_REQUEST, vec![]);
    assert_eq!(
        apdu(&mut c, deliver_cmd(&m)).sw,
        StatusWord::CONDITIONS_NOT_SATISFIED,
        "not selected after power-up"
    );
}

#[test]
fn logout_leaves_the_set() {
    let mut c = card();
    verify(&mut c, app(1), b"1234");
    let m = one(&mut c, Message::new(app(1), CARD, Mtype::LOGOUT, vec![]));
    assert_eq!(pin_status(&m).outcome, PinOutcome::LoggedOut);
    assert_eq!(c.authenticated().count(), 0);
}

#[test]
fn card_info_names_domain_key_and_privileged_mtypes() {
    let mut c = card();
    let m = one(
        &mut c,
        Message::new(app(1), CARD, Mtype::CARD_INFO_REQUEST, vec![]),
    );
    let info = tenet_proto::card::CardInfo::decode(&m.param).unwrap();
    assert_eq!(info.domain, DOMAIN);
    assert_eq!(info.public_key.len(), 65);
    assert_eq!(info.public_key[0], 4, "uncompressed SEC1 point");
    assert!(info.privileged.contains(&VAULT_PUT) && info.privileged.contains(&Mtype::CHANGE_PIN));
    let r = apdu(
        &mut c,
        Command::new(tenet::CLA, tenet::INS_GET_INFO, 0, 0).with_le(65_536),
    );
    assert_eq!(tenet_proto::card::CardInfo::decode(&r.data).unwrap(), info);
}

#[test]
fn unknown_mtypes_are_refused_and_notices_ignored() {
    let mut c = card();
    let r = one(&mut c, Message::new(app(1), CARD, Mtype(0x9999), vec![]));
    assert!(
        Refused::decode(&r.param)
            .unwrap()
            .text
            .contains("no applet")
    );
    let (sw, out) = deliver(
        &mut c,
        Message::new(app(1), CARD, Mtype::UNDELIVERABLE, vec![]),
    );
    assert_eq!((sw, out.len()), (StatusWord::OK, 0));
}

#[test]
fn malformed_and_misaddressed_deliveries_get_status_words() {
    let mut c = card();
    let bad = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0).with_data(vec![1, 2, 3]);
    assert_eq!(apdu(&mut c, bad).sw, StatusWord::INCORRECT_DATA);
    let elsewhere = Message::new(app(1), app(2), Mtype::ECHO_REQUEST, vec![]);
    assert_eq!(
        apdu(&mut c, deliver_cmd(&elsewhere)).sw,
        StatusWord::DATA_NOT_FOUND
    );
    assert_eq!(
        apdu(&mut c, Command::new(tenet::CLA, 0x77, 0, 0)).sw,
        StatusWord::INS_NOT_SUPPORTED
    );
    assert_eq!(
        apdu(&mut c, Command::new(0x40, 0x10, 0, 0)).sw,
        StatusWord::CLA_NOT_SUPPORTED
    );
    assert_eq!(
        apdu(&mut c, Command::new(0x81, 0x10, 0, 0)).sw,
        StatusWord::CLA_NOT_SUPPORTED,
        "logical channel 1"
    );
    assert_eq!(
        Response::decode(&c.process_apdu(&[0x80])).unwrap().sw,
        StatusWord::WRONG_LENGTH
    );
}

#[test]
fn message_limit_and_storage_budget_give_clear_status() {
    let mut c = card_with(MemStore::new(1024), CardLimits { max_message: 200 });
    c.install(Box::new(Vault));
    select(&mut c);
    let big = Message::new(app(1), CARD, Mtype::ECHO_REQUEST, vec![0; 300]);
    assert_eq!(
        apdu(&mut c, deliver_cmd(&big)).sw,
        StatusWord::NOT_ENOUGH_MEMORY
    );
    let mut c2 = card_with(MemStore::new(700), CardLimits::default());
    c2.install(Box::new(Vault));
    select(&mut c2);
    verify(&mut c2, app(1), b"1234");
    let before = c2.state().clone();
    let m = Message::new(app(1), CARD, VAULT_PUT, vec![7; 600]);
    assert_eq!(
        apdu(&mut c2, deliver_cmd(&m)).sw,
        StatusWord::NOT_ENOUGH_MEMORY
    );
    assert_eq!(c2.state(), &before, "nothing changed");
    assert_eq!(c2.waiting(), 0, "and nothing was emitted");
}

#[test]
fn store_failure_means_no_effect_and_no_output() {
    let mut c = card();
    verify(&mut c, app(1), b"1234");
    c.store_mut().fail_commits = true;
    let m = Message::new(app(1), CARD, VAULT_PUT, b"x".to_vec());
    let r = apdu(&mut c, deliver_cmd(&m));
    assert_eq!((r.sw, r.data.len()), (StatusWord::MEMORY_FAILURE, 0));
    assert_eq!(c.state().applets.get(&0x81), None);
    c.store_mut().fail_commits = false;
    assert_eq!(one(&mut c, m).mtype(), VAULT_GET);
    // A failed update of data that exists keeps the old data.
    let before = c.state().clone();
    c.store_mut().fail_commits = true;
    let m = Message::new(app(1), CARD, VAULT_PUT, b"yy".to_vec());
    assert_eq!(apdu(&mut c, deliver_cmd(&m)).sw, StatusWord::MEMORY_FAILURE);
    assert_eq!(c.state(), &before);
}

#[test]
fn applet_refusal_names_the_applet_and_changes_nothing() {
    let mut c = card();
    verify(&mut c, app(1), b"1234");
    let commits = c.store().commits;
    let r = one(&mut c, Message::new(app(1), CARD, VAULT_PUT, vec![]));
    assert_eq!(
        Refused::decode(&r.param).unwrap().text,
        "vault: nothing to store"
    );
    assert_eq!(c.store().commits, commits);
}

#[test]
fn short_apdu_readers_use_chaining_and_get_response() {
    let mut c = card();
    let payload: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
    let m = Message::new(app(1), CARD, Mtype::ECHO_REQUEST, payload.clone());
    let parts = deliver_cmd(&m).chain(255);
    assert_eq!(parts.len(), 3);
    let mut r = None;
    for p in &parts {
        assert!(!p.needs_extended());
        r = Some(apdu(&mut c, p.clone()));
    }
    let mut r = r.unwrap();
    let mut data = Vec::new();
    while r.sw.sw1() == 0x61 {
        assert!(r.data.len() <= 256);
        data.extend_from_slice(&r.data);
        r = apdu(
            &mut c,
            Command::new(0, tenet::INS_GET_RESPONSE, 0, 0).with_le(256),
        );
    }
    data.extend_from_slice(&r.data);
    assert_eq!(r.sw, StatusWord::OK);
    assert_eq!(Message::decode(&data).unwrap().param, payload);
}

#[test]
fn abandoned_get_response_loses_no_message() {
    let mut c = card();
    let m = Message::new(app(1), CARD, Mtype::ECHO_REQUEST, vec![5; 400]);
    let r = apdu(&mut c, deliver_cmd(&m).with_le(256));
    assert_eq!(r.sw.sw1(), 0x61);
    // Instead of GET RESPONSE, the reader polls: the whole reply comes again.
    let p = apdu(
        &mut c,
        Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(65_536),
    );
    assert_eq!(Message::decode(&p.data).unwrap().param, vec![5; 400]);
}

#[test]
fn a_broken_chain_is_refused() {
    let mut c = card();
    let first = Command::new(tenet::CLA | 0x10, tenet::INS_DELIVER, 0, 0).with_data(vec![0; 10]);
    assert_eq!(apdu(&mut c, first).sw, StatusWord::OK);
    let other = Command::new(tenet::CLA, tenet::INS_POLL, 0, 0);
    assert_eq!(apdu(&mut c, other).sw, StatusWord::CHAIN_EXPECTED);
}

#[test]
fn personalization_refuses_bad_secrets_and_used_stores() {
    let bad = Personalization {
        pin: b"12".to_vec(),
        ..perso()
    };
    assert!(
        Card::personalize(
            MemStore::new(4096),
            &bad,
            CardLimits::default(),
            Box::new(SeededEntropy::new(1))
        )
        .is_err()
    );
    let c = card_with(MemStore::new(4096), CardLimits::default());
    let store = c.store().clone();
    assert!(matches!(
        Card::personalize(
            store,
            &perso(),
            CardLimits::default(),
            Box::new(SeededEntropy::new(1))
        ),
        Err(tenet_card::CardError::AlreadyPersonalized)
    ));
    assert!(matches!(
        Card::open(
            MemStore::new(4096),
            CardLimits::default(),
            Box::new(SeededEntropy::new(1))
        ),
        Err(tenet_card::CardError::Blank)
    ));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_apdus_never_panic_and_always_answer(
            cmds in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..20),
        ) {
            let mut c = card();
            for raw in cmds {
                let r = c.process_apdu(&raw);
                prop_assert!(r.len() >= 2, "a response always has a status word");
            }
        }

        #[test]
        fn arbitrary_messages_never_panic(mt in any::<u16>(), param in proptest::collection::vec(any::<u8>(), 0..120), port in 0u32..4) {
            let mut c = card();
            let m = Message::new(app(port), CARD, Mtype(mt), param);
            let r = c.process_apdu(&deliver_cmd(&m).to_bytes());
            prop_assert!(r.len() >= 2);
        }
    }
}

// ---------------------------------------------------------------- the clock

/// A test applet that answers `0x8104` with the card's time: the seconds
/// (8 bytes) and whether they came from the host (1 byte).
struct Watch;

const WATCH_TIME: Mtype = Mtype(0x8104);

impl Applet for Watch {
    fn id(&self) -> u16 {
        0x82
    }
    fn name(&self) -> &'static str {
        "watch"
    }
    fn handles(&self, m: Mtype) -> bool {
        m == WATCH_TIME
    }
    fn privileged(&self) -> &[Mtype] {
        &[]
    }
    fn handle(&mut self, cx: &mut AppletCx<'_>, m: &Message) -> Result<(), Refusal> {
        let mut t = cx.time.now.to_be_bytes().to_vec();
        t.push(u8::from(cx.time.from_host));
        cx.send(m.src(), WATCH_TIME, t);
        Ok(())
    }
}

/// What the card's applets see as the time: `(seconds, from the host)`.
fn applet_time<S: Storage>(c: &mut Card<S>) -> (u64, bool) {
    let m = one(c, Message::new(app(1), CARD, WATCH_TIME, vec![]));
    (
        u64::from_be_bytes(m.param[..8].try_into().unwrap()),
        m.param[8] == 1,
    )
}

/// The smartcard proxy's `set-time`, as the card's own id: the card's
/// answers (none unless refused).
fn set_time<S: Storage>(c: &mut Card<S>, now: u64) -> Vec<Message> {
    set_time_after(c, now, None)
}

/// [`set_time`] `elapsed` seconds of real time after the previous one.
fn set_time_after<S: Storage>(c: &mut Card<S>, now: u64, elapsed: Option<u64>) -> Vec<Message> {
    let m = Message::new(
        CARD,
        CARD,
        Mtype::SET_TIME,
        SetTime { now, elapsed }.to_bytes(),
    );
    let (sw, out) = deliver(c, m);
    assert!(sw.is_success(), "{sw}");
    out
}

fn refusal_text(m: &Message) -> String {
    assert_eq!(m.mtype(), Mtype::REFUSED, "{m:?}");
    Refused::decode(&m.param).unwrap().text
}

fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn reopen(path: &std::path::Path) -> Card<FileStore> {
    let mut c = Card::open(
        FileStore::open(path).unwrap(),
        CardLimits::default(),
        Box::new(SeededEntropy::new(1)),
    )
    .unwrap();
    c.install(Box::new(Watch));
    select(&mut c);
    c
}

#[test]
fn before_its_host_tells_the_time_a_card_uses_its_bound_the_personalization_time() {
    let before = system_now();
    // Personalized here, not the copy `card()` shares.
    let mut c = card_with(MemStore::new(32 * 1024), CardLimits::default());
    c.install(Box::new(Watch));
    select(&mut c);
    let after = system_now();
    let (now, from_host) = applet_time(&mut c);
    assert!(
        (before..=after).contains(&now),
        "{now} not in {before}..={after}"
    );
    assert!(!from_host);
    assert_eq!(c.state().clock_bound, now);
    assert!(set_time(&mut c, now + 600).is_empty(), "no answer");
    assert_eq!(applet_time(&mut c), (now + 600, true));
    // A power cycle forgets the host's time, never the bound.
    c.power_off();
    select(&mut c);
    assert_eq!(applet_time(&mut c), (now, false));
}

#[test]
fn a_wrong_host_time_far_in_the_past_is_refused_and_does_not_lower_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card");
    drop(card_with(
        FileStore::create(&path, 4096).unwrap(),
        CardLimits::default(),
    ));
    let mut c = reopen(&path);
    let bound = c.state().clock_bound;
    let now = bound + 3600;
    assert!(set_time(&mut c, now).is_empty());
    assert_eq!(applet_time(&mut c), (now, true));
    // A host whose clock fell back to 1970, or by a week: refused, logged
    // by the proxy; the card keeps its time.
    for wrong in [0, bound - 7 * 86_400] {
        let out = set_time(&mut c, wrong);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].dst(), CARD);
        let text = refusal_text(&out[0]);
        assert!(
            text.contains("more than a day before the card's clock bound"),
            "{text}"
        );
        assert_eq!(applet_time(&mut c), (now, true));
        assert_eq!(c.state().clock_bound, bound);
    }
    // Not after a restart either: the bound is in the store.
    drop(c);
    let mut c = reopen(&path);
    assert_eq!(c.state().clock_bound, bound);
    assert_eq!(set_time(&mut c, 0).len(), 1, "refused");
    assert_eq!(applet_time(&mut c), (bound, false));
    // A few hours back is clock trouble, not an attack: accepted, and the
    // card's time stays at its bound.
    assert!(set_time(&mut c, bound - 3 * 3600).is_empty());
    assert_eq!(applet_time(&mut c), (bound, true));
}

#[test]
fn a_wrong_host_time_far_in_the_future_moves_the_bound_a_day_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card");
    drop(card_with(
        FileStore::create(&path, 4096).unwrap(),
        CardLimits::default(),
    ));
    let mut c = reopen(&path);
    let bound = c.state().clock_bound;
    let year_3000 = 32_503_680_000;
    assert!(set_time(&mut c, year_3000).is_empty());
    assert_eq!(applet_time(&mut c), (year_3000, true));
    assert_eq!(c.state().clock_bound, bound, "not at power-up");
    // Ticks at one host time, however many, do not move it.
    for _ in 0..100 {
        set_time_after(&mut c, year_3000, Some(3600));
    }
    assert_eq!(c.state().clock_bound, bound, "no host time passed");
    // A host clock racing ahead an hour per 10 s of real time: 2 h of it
    // credits 2 h, and the bound stays.
    for i in 1..=720 {
        set_time_after(&mut c, year_3000 + i * 3600, Some(10));
    }
    assert_eq!(
        c.state().clock_bound,
        bound,
        "racing ticks credit real time only"
    );
    // Hourly ticks: a day of them (with the 2 h before) moves it a day.
    let from = year_3000 + 720 * 3600;
    for h in 1..=22 {
        set_time_after(&mut c, from + h * 3600, Some(3600));
    }
    assert_eq!(c.state().clock_bound, bound + 86_400, "one day, no more");
    for h in 23..23 + 23 {
        set_time_after(&mut c, from + h * 3600, Some(3600));
    }
    assert_eq!(c.state().clock_bound, bound + 86_400);
    // The host's clock is corrected: its time is taken again at once.
    assert!(set_time(&mut c, bound + 60).is_empty());
    assert_eq!(applet_time(&mut c), (bound + 86_400, true));
    drop(c);
    let mut c = reopen(&path);
    assert!(set_time(&mut c, bound + 2 * 86_400).is_empty());
    assert_eq!(applet_time(&mut c), (bound + 2 * 86_400, true));
    // Beyond the year 9999 is no time at all.
    let text = refusal_text(&set_time(&mut c, u64::MAX)[0]);
    assert!(text.contains("after the year 9999"), "{text}");
}

#[test]
fn set_time_is_taken_only_from_the_cards_own_id() {
    let mut c = card();
    c.install(Box::new(Watch));
    let bound = c.state().clock_bound;
    let app_time = Message::new(
        app(1),
        CARD,
        Mtype::SET_TIME,
        SetTime {
            now: bound + 3600,
            elapsed: None,
        }
        .to_bytes(),
    );
    let text = refusal_text(&one(&mut c, app_time));
    assert!(text.contains("only from the card's host"), "{text}");
    let remote = EntityId::new(Domain::new([0xee; 12]), Port::OWNER);
    let remote_time = Message::new(
        remote,
        CARD,
        Mtype::SET_TIME,
        SetTime {
            now: bound + 3600,
            elapsed: None,
        }
        .to_bytes(),
    );
    assert_eq!(one(&mut c, remote_time).mtype(), Mtype::REFUSED);
    assert_eq!(applet_time(&mut c), (bound, false));
    let bad = Message::new(CARD, CARD, Mtype::SET_TIME, vec![0x80, 1, 0]);
    assert!(refusal_text(&deliver(&mut c, bad).1[0]).contains("malformed set-time"));
}

#[test]
fn the_atr_offers_t1_only_with_a_correct_tck() {
    // TS, T0 (TD1 follows, no historical bytes), TD1 (T=1, nothing
    // follows), TCK.
    assert_eq!(ATR, [0x3b, 0x80, 0x01, 0x81]);
    assert_eq!(ATR[1] & 0xf0, 0x80, "only TD1 among TA1..TD1");
    assert_eq!(ATR[2], 0x01, "TD1: T=1, no TD2");
    assert_eq!(ATR[1..].iter().fold(0, |a, b| a ^ b), 0, "TCK");
}

#[test]
fn a_short_le_below_the_answer_gives_le_bytes_then_61xx() {
    let mut c = card();
    let m = Message::new(app(7), CARD, Mtype::ECHO_REQUEST, b"0123456789".to_vec());
    let reply = Message::new(CARD, app(7), Mtype::ECHO_REPLY, b"0123456789".to_vec()).to_bytes();
    assert_eq!(reply.len(), 44);
    let cmd = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
        .with_data(m.to_bytes())
        .with_le(5);
    assert_eq!(cmd.to_bytes().last(), Some(&5));
    let r = apdu(&mut c, cmd);
    assert_eq!((r.data.as_slice(), r.sw), (&reply[..5], StatusWord(0x6127)));
    let r = apdu(
        &mut c,
        Command::new(0, tenet::INS_GET_RESPONSE, 0, 0).with_le(0x27),
    );
    assert_eq!((r.data.as_slice(), r.sw), (&reply[5..], StatusWord::OK));
}

#[test]
fn p1_p2_other_than_00_00_are_refused_by_every_command() {
    let mut c = card();
    for ins in [
        tenet::INS_DELIVER,
        tenet::INS_POLL,
        tenet::INS_ASSIGN_PORT,
        tenet::INS_GET_INFO,
    ] {
        for (p1, p2) in [(1, 0), (0, 1)] {
            let r = apdu(&mut c, Command::new(tenet::CLA, ins, p1, p2).with_le(256));
            assert_eq!(r.sw, StatusWord::INCORRECT_P1P2, "INS {ins:02x}");
        }
    }
    let r = apdu(
        &mut c,
        Command::new(0, tenet::INS_GET_RESPONSE, 1, 0).with_le(256),
    );
    assert_eq!(r.sw, StatusWord::INCORRECT_P1P2);
    let r = apdu(
        &mut c,
        Command::new(tenet::CLA, tenet::INS_GET_INFO, 0, 0).with_le(256),
    );
    assert_eq!(r.sw, StatusWord::OK);
}

#[test]
fn a_chain_is_ended_by_any_other_command() {
    let mut c = card();
    let m = Message::new(app(7), CARD, Mtype::ECHO_REQUEST, b"hi".to_vec()).to_bytes();
    let piece =
        Command::new(tenet::CLA | 0x10, tenet::INS_DELIVER, 0, 0).with_data(m[..10].to_vec());
    assert_eq!(apdu(&mut c, piece).sw, StatusWord::OK);
    let sel = Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID.to_vec());
    assert_eq!(apdu(&mut c, sel).sw, StatusWord::CHAIN_EXPECTED);
    // The chain is gone; the applet is still selected.
    assert_eq!(
        apdu(&mut c, deliver_cmd(&Message::decode(&m).unwrap())).sw,
        StatusWord::OK
    );
    let chained_poll = Command::new(tenet::CLA | 0x10, tenet::INS_POLL, 0, 0);
    assert_eq!(
        apdu(&mut c, chained_poll).sw,
        StatusWord::CHAINING_NOT_SUPPORTED
    );
}

/// A test applet acting on the clock's ticks: each time the card takes,
/// it stores it (its data) and tells app 7; with data "off" it refuses.
struct Alarm;

const ALARM: Mtype = Mtype(0x8105);

impl Applet for Alarm {
    fn id(&self) -> u16 {
        0x83
    }
    fn name(&self) -> &'static str {
        "alarm"
    }
    fn handles(&self, m: Mtype) -> bool {
        m == ALARM
    }
    fn privileged(&self) -> &[Mtype] {
        &[]
    }
    fn handle(&mut self, cx: &mut AppletCx<'_>, _: &Message) -> Result<(), Refusal> {
        *cx.data = b"off".to_vec();
        Ok(())
    }
    fn on_time(&mut self, cx: &mut AppletCx<'_>) -> Result<(), Refusal> {
        if cx.data.as_slice() == b"off" {
            *cx.data = b"changed before refusing".to_vec();
            cx.send(app(7), ALARM, b"should not leave".to_vec());
            return Err(Refusal("switched off".into()));
        }
        *cx.data = cx.time.now.to_be_bytes().to_vec();
        cx.send(app(7), ALARM, cx.time.now.to_be_bytes().to_vec());
        Ok(())
    }
}

/// Every time the card takes from its host is a tick for its applets
/// (`Applet::on_time`): what they store and send is committed together,
/// a time the card refuses is no tick, and an applet that refuses a tick
/// changes nothing and sends nothing (no `refused` either).
#[test]
fn an_accepted_host_time_is_a_tick_for_the_applets() {
    let mut c = card_with(MemStore::new(32 * 1024), CardLimits::default());
    c.install(Box::new(Alarm));
    select(&mut c);
    let now = system_now();
    let out = set_time(&mut c, now);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].dst(), out[0].mtype()), (app(7), ALARM));
    assert_eq!(out[0].param, now.to_be_bytes());
    assert_eq!(c.state().applets[&0x83], now.to_be_bytes());
    // Refused time: no tick.
    let out = set_time(&mut c, 0);
    assert_eq!(out.len(), 1);
    refusal_text(&out[0]);
    assert_eq!(c.state().applets[&0x83], now.to_be_bytes());
    // The applet refuses the tick: nothing stored, nothing sent.
    one_or_none(&mut c, Message::new(app(1), CARD, ALARM, vec![]));
    assert_eq!(c.state().applets[&0x83], b"off");
    assert!(set_time(&mut c, now + 10).is_empty());
    assert_eq!(c.state().applets[&0x83], b"off");
}

fn one_or_none<S: Storage>(c: &mut Card<S>, m: Message) {
    let (sw, out) = deliver(c, m);
    assert!(sw.is_success(), "{sw}");
    assert!(out.is_empty(), "{out:?}");
}

/// Applet version 2 (the compact form, `tenet_proto::apdu::compact`):
/// the card's own id is implied both ways. A compact message the card
/// cannot read changes nothing; a SELECT of version 1 brings whole
/// messages back, and a message waiting through a GET RESPONSE sequence
/// keeps its form.
#[test]
fn the_compact_form_by_applet_version() {
    use tenet_proto::apdu::compact;
    let mut c = card();
    let id = c.id();
    let r = apdu(
        &mut c,
        Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID_COMPACT.to_vec()),
    );
    assert_eq!(r.sw, StatusWord::OK);
    let peer = Domain::new([0xee; 12]).owner();
    let echo = Message::new(peer, id, Mtype::ECHO_REQUEST, vec![5; 3]);
    let data = compact::to_card(&echo);
    assert_eq!(data.len(), 15 + 3, "form, mtype, the peer's domain, param");
    let cmd = |data: Vec<u8>| {
        Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
            .with_data(data)
            .with_le(65_536)
    };
    let r = apdu(&mut c, cmd(data.clone()));
    assert_eq!(r.sw, StatusWord::OK);
    let reply = Message::new(id, peer, Mtype::ECHO_REPLY, vec![5; 3]);
    assert_eq!(r.data, compact::from_card(&reply));
    // Unknown form bits, a truncated header: refused, nothing changed.
    let before = (c.state().clone(), c.waiting());
    for bad in [vec![0x04, 0, 1], vec![0x00, 0, 1, 0xee]] {
        assert_eq!(apdu(&mut c, cmd(bad)).sw, StatusWord::INCORRECT_DATA);
    }
    assert_eq!((c.state().clone(), c.waiting()), before);
    // A long answer in pieces, then version 1 selected in between: the
    // message goes back to the queue and comes whole.
    let long = Message::new(peer, id, Mtype::ECHO_REQUEST, vec![6; 600]);
    let r = apdu(
        &mut c,
        Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
            .with_data(compact::to_card(&long))
            .with_le(256),
    );
    assert_eq!(r.sw.sw1(), 0x61, "{}", r.sw);
    select(&mut c);
    let (_, out) = deliver(
        &mut c,
        Message::new(app(1), id, Mtype::ECHO_REQUEST, vec![]),
    );
    assert_eq!(out[0].param, vec![6; 600], "{out:?}");
    assert_eq!(out[0].dst(), peer);
}
