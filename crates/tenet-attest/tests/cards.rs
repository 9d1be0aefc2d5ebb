//! The attestation between virtual cards through their APDU front ends,
//! with keys made on the cards and X.509 certificates from a CA. No host:
//! the test routes the messages itself, so it can also replay, forge,
//! tamper with and lose them, and send as any entity (a host would stamp
//! the real sender; here a message can claim to come from the session's
//! peer, which is what a replay by a rogue host would look like).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use pki_types::CertificateDer;
use pki_types::pem::PemObject;
use tenet_attest::AttestApplet;
use tenet_attest::msg::{
    self, AttestResult, Done, Finish, Outcome, Peers, Record, Reply, Start, sha256,
};
use tenet_card::{Card, CardLimits, MemStore, Personalization, SeededEntropy};
use tenet_proto::apdu::{Command, Response, StatusWord, tenet};
use tenet_proto::card::{PinOutcome, PinStatus, SetTime, VerifyPin};
use tenet_proto::codec::Codec;
use tenet_proto::notice::Refused;
use tenet_proto::{Domain, EntityId, Message, Mtype, Port};

const A: u8 = 0xa1;
const B: u8 = 0xb2;
const C: u8 = 0xc3;

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

fn card_id(b: u8) -> EntityId {
    dom(b).owner()
}

/// The app of card `b`'s host that verified the PIN.
fn app(b: u8) -> EntityId {
    EntityId::new(dom(b), Port::new(1))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn apdu(c: &mut Card<MemStore>, cmd: Command) -> Response {
    Response::decode(&c.process_apdu(&cmd.to_bytes())).unwrap()
}

/// Delivers `m` to the card with one DELIVER and polls what it has to
/// say; the status word if the card could not take the message.
fn try_deliver(c: &mut Card<MemStore>, m: &Message) -> Result<Vec<Message>, StatusWord> {
    let mut r = apdu(
        c,
        Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
            .with_data(m.to_bytes())
            .with_le(65_536),
    );
    let mut out = Vec::new();
    loop {
        if !r.sw.is_success() {
            return Err(r.sw);
        }
        if !r.data.is_empty() {
            out.push(Message::decode(&r.data).unwrap());
        }
        if r.sw.waiting() == Some(0) {
            return Ok(out);
        }
        r = apdu(
            c,
            Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(65_536),
        );
    }
}

fn deliver(c: &mut Card<MemStore>, m: &Message) -> Vec<Message> {
    try_deliver(c, m).unwrap_or_else(|sw| panic!("the card did not take {}: {sw}", m.mtype()))
}

/// The CA certificate in `dir`, DER.
/// The anchor (`tenet_pki::cv`) of the CA in `dir`: what a card trusts.
fn ca_der(dir: &Path) -> Vec<u8> {
    let der = CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap();
    tenet_pki::cv::Anchor::from_x509(&der).unwrap().to_bytes()
}

/// A card of domain `b` with the attestation applet, whose certificate
/// the CA in `issuer` made and which trusts the CA in `trusted`; its host
/// gave it the time and its app verified the PIN.
fn card(b: u8, issuer: &Path, trusted: &Path) -> Card<MemStore> {
    let p = Personalization {
        domain: dom(b),
        pin: b"1234".to_vec(),
        puk: b"12345678".to_vec(),
    };
    let mut c = Card::personalize(
        MemStore::new(32 * 1024),
        &p,
        CardLimits::default(),
        Box::new(SeededEntropy::new(b.into())),
    )
    .unwrap();
    let key = c.state().public_key.clone();
    let cert = tenet_pki::issue_entity(issuer, c.id(), &key).unwrap().cv;
    c.install_certificates(cert, ca_der(trusted)).unwrap();
    c.install(Box::new(AttestApplet::new()));
    let select = Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID.to_vec());
    assert!(apdu(&mut c, select).sw.is_success());
    let id = c.id();
    let time = Message::new(
        id,
        id,
        Mtype::SET_TIME,
        SetTime {
            now: now(),
            elapsed: None,
        }
        .to_bytes(),
    );
    assert!(deliver(&mut c, &time).is_empty(), "the card takes the time");
    let verify = Message::new(
        app(b),
        id,
        Mtype::VERIFY_PIN,
        VerifyPin {
            pin: b"1234".to_vec(),
        }
        .to_bytes(),
    );
    let status = PinStatus::decode(&deliver(&mut c, &verify)[0].param).unwrap();
    assert_eq!(status.outcome, PinOutcome::Verified);
    c
}

/// Cards, and everything they sent.
struct World {
    cards: Vec<Card<MemStore>>,
    /// Every message between cards, in order.
    wire: Vec<Message>,
    /// Every message to an app (not a card), in order.
    to_apps: Vec<Message>,
    /// The CA that certified the cards, and another one.
    ca: PathBuf,
    rogue_ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    /// Cards A and B certified by the same CA.
    fn new() -> Self {
        let mut w = Self::empty();
        w.add(A, None);
        w.add(B, None);
        w
    }

    fn empty() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let rogue_ca = dir.path().join("rogue-ca");
        tenet_pki::ensure_ca(&ca, "test CA").unwrap();
        tenet_pki::ensure_ca(&rogue_ca, "another CA").unwrap();
        Self {
            cards: Vec::new(),
            wire: Vec::new(),
            to_apps: Vec::new(),
            ca,
            rogue_ca,
            _dir: dir,
        }
    }

    /// Adds card `b`, trusting the test CA; its certificate is from the
    /// test CA, or from `issuer`.
    fn add(&mut self, b: u8, issuer: Option<&Path>) {
        let issuer = issuer.unwrap_or(&self.ca).to_owned();
        let c = card(b, &issuer, &self.ca);
        self.cards.push(c);
    }

    fn card(&mut self, b: u8) -> &mut Card<MemStore> {
        self.cards
            .iter_mut()
            .find(|c| c.id() == card_id(b))
            .expect("a card of that domain")
    }

    /// Delivers `m` to its card and returns what the card sent.
    fn deliver(&mut self, m: &Message) -> Vec<Message> {
        let c = self
            .cards
            .iter_mut()
            .find(|c| c.id() == m.dst())
            .expect("a card");
        deliver(c, m)
    }

    /// Routes from `first` until nothing is left for a card; messages
    /// between cards pass `filter`, which may change or drop them.
    fn run_with(&mut self, first: Message, mut filter: impl FnMut(Message) -> Option<Message>) {
        let mut net = VecDeque::from([first]);
        while let Some(m) = net.pop_front() {
            if !m.dst().is_owner() {
                self.to_apps.push(m);
                continue;
            }
            let from_card = m.src().is_owner();
            let Some(m) = (if from_card { filter(m) } else { Some(m) }) else {
                continue;
            };
            if from_card {
                self.wire.push(m.clone());
            }
            net.extend(self.deliver(&m));
        }
    }

    fn run(&mut self, first: Message) {
        self.run_with(first, Some);
    }

    /// App `from` orders its card to attest with card `to`, and the cards
    /// run the protocol.
    fn attest(&mut self, from: u8, to: u8) {
        self.run(start(from, to));
    }

    /// What card `b` answers its app's query.
    fn records(&mut self, b: u8) -> Vec<Record> {
        let q = Message::new(app(b), card_id(b), msg::QUERY, vec![]);
        let out = self.deliver(&q);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].dst(), out[0].mtype()),
            (app(b), msg::PEERS),
            "{out:?}"
        );
        Peers::decode(&out[0].param).unwrap().0
    }

    /// The results card `b` sent its app.
    fn results(&self, b: u8) -> Vec<AttestResult> {
        self.to_apps
            .iter()
            .filter(|m| m.dst() == app(b) && m.mtype() == msg::RESULT)
            .map(|m| AttestResult::decode(&m.param).unwrap())
            .collect()
    }

    /// The last message of `mtype` between cards.
    fn last(&self, mtype: Mtype) -> Message {
        self.wire
            .iter()
            .rev()
            .find(|m| m.mtype() == mtype)
            .unwrap_or_else(|| panic!("no {mtype} on the wire"))
            .clone()
    }

    /// Every mtype between cards, in order.
    fn flow(&self) -> Vec<Mtype> {
        self.wire.iter().map(Message::mtype).collect()
    }

    /// The certificate installed on card `b`.
    fn certificate(&mut self, b: u8) -> Vec<u8> {
        self.card(b).state().certificate.clone().unwrap()
    }

    /// The applet's stored data on card `b`.
    fn stored(&mut self, b: u8) -> Vec<u8> {
        self.card(b)
            .state()
            .applets
            .get(&tenet_attest::APPLET_ID)
            .cloned()
            .unwrap_or_default()
    }
}

fn start(from: u8, to: u8) -> Message {
    Message::new(
        app(from),
        card_id(from),
        msg::START,
        Start { peer: card_id(to) }.to_bytes(),
    )
}

/// The text of the refusal in `out`, which must be just that one.
fn refusal(out: &[Message]) -> String {
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].mtype(), Mtype::REFUSED, "{out:?}");
    Refused::decode(&out[0].param).unwrap().text
}

#[test]
fn two_cards_attest_each_other_and_record_the_same_transcript() {
    let mut w = World::new();
    w.attest(A, B);
    assert_eq!(
        w.flow(),
        [msg::HELLO, msg::REPLY, msg::FINISH, msg::DONE],
        "the cards ran the protocol by themselves"
    );
    let (cert_a, cert_b) = (w.certificate(A), w.certificate(B));
    let [result] = &w.results(A)[..] else {
        panic!("one result for the app: {:?}", w.to_apps)
    };
    let Outcome::Attested {
        transcript,
        certificate,
    } = result.outcome
    else {
        panic!("{result:?}")
    };
    assert_eq!(result.peer, card_id(B));
    assert_eq!(certificate, sha256(&cert_b));
    let (on_a, on_b) = (w.records(A), w.records(B));
    assert_eq!(on_a.len(), 1);
    assert_eq!(on_b.len(), 1);
    assert_eq!(
        (on_a[0].peer, on_a[0].certificate, on_a[0].transcript),
        (card_id(B), sha256(&cert_b), transcript)
    );
    assert_eq!(
        (on_b[0].peer, on_b[0].certificate, on_b[0].transcript),
        (card_id(A), sha256(&cert_a), transcript),
        "both cards recorded the same transcript"
    );
    for r in [on_a[0], on_b[0]] {
        assert!(r.at.abs_diff(now()) < 60, "recorded at the card's time");
    }
    // Nothing is left in progress on either card.
    let state = |d: Vec<u8>| tenet_attest::state::AttestState::decode(&d).unwrap();
    let (sa, sb) = (state(w.stored(A)), state(w.stored(B)));
    assert!(sa.started.is_empty() && sa.answered.is_empty());
    assert!(sb.started.is_empty() && sb.answered.is_empty());
}

#[test]
fn a_responder_certified_by_another_ca_is_refused_and_nothing_is_recorded() {
    let mut w = World::empty();
    w.add(A, None);
    let rogue = w.rogue_ca.clone();
    w.add(B, Some(&rogue));
    w.attest(A, B);
    assert_eq!(w.flow(), [msg::HELLO, msg::REPLY, msg::ABORT]);
    let [result] = &w.results(A)[..] else {
        panic!("{:?}", w.to_apps)
    };
    let Outcome::Refused { reason } = &result.outcome else {
        panic!("{result:?}")
    };
    assert!(reason.contains("certificate chain"), "{reason}");
    assert!(w.records(A).is_empty());
    assert!(w.records(B).is_empty());
    assert!(
        w.stored(B).is_empty(),
        "B's answered session ended with the abort"
    );
}

#[test]
fn an_initiator_certified_by_another_ca_is_refused_at_its_finish() {
    // A card that holds the right CA certificate but whose own certificate
    // another CA made: it checks its peer fine, and is refused itself.
    let mut w = World::empty();
    let rogue = w.rogue_ca.clone();
    w.add(A, Some(&rogue));
    w.add(B, None);
    w.attest(A, B);
    assert_eq!(
        w.flow(),
        [msg::HELLO, msg::REPLY, msg::FINISH, msg::ABORT],
        "B checks A's chain with A's signature"
    );
    let [result] = &w.results(A)[..] else {
        panic!("{:?}", w.to_apps)
    };
    let Outcome::Aborted { reason } = &result.outcome else {
        panic!("{result:?}")
    };
    assert!(reason.contains("certificate chain"), "{reason}");
    assert!(w.records(A).is_empty());
    assert!(w.records(B).is_empty());
    assert!(w.stored(A).is_empty() && w.stored(B).is_empty());
}

#[test]
fn a_bad_signature_is_refused() {
    let mut w = World::new();
    w.run_with(start(A, B), |m| {
        if m.mtype() != msg::REPLY {
            return Some(m);
        }
        let mut r = Reply::decode(&m.param).unwrap();
        let last = r.signature.len() - 1;
        r.signature[last] ^= 1;
        Some(Message::new(m.src(), m.dst(), m.mtype(), r.to_bytes()))
    });
    assert_eq!(w.flow(), [msg::HELLO, msg::REPLY, msg::ABORT]);
    let reason = match &w.results(A)[..] {
        [
            AttestResult {
                outcome: Outcome::Refused { reason },
                ..
            },
        ] => reason.clone(),
        other => panic!("{other:?}"),
    };
    assert!(reason.contains("signature"), "{reason}");
    assert!(w.records(A).is_empty() && w.records(B).is_empty());
}

#[test]
fn a_signature_over_another_transcript_is_refused() {
    // The responder signed T with its n_b; the initiator is shown another
    // n_b: its T differs, and the signature does not verify over it.
    let mut w = World::new();
    w.run_with(start(A, B), |m| {
        if m.mtype() != msg::REPLY {
            return Some(m);
        }
        let mut r = Reply::decode(&m.param).unwrap();
        r.n_b[0] ^= 1;
        Some(Message::new(m.src(), m.dst(), m.mtype(), r.to_bytes()))
    });
    assert_eq!(w.flow(), [msg::HELLO, msg::REPLY, msg::ABORT]);
    assert!(matches!(
        &w.results(A)[..],
        [AttestResult {
            outcome: Outcome::Refused { .. },
            ..
        }]
    ));
    assert!(w.records(A).is_empty() && w.records(B).is_empty());

    // A done confirming another transcript: the initiator records nothing
    // (the responder did record: it verified the initiator).
    let mut w = World::new();
    w.run_with(start(A, B), |m| {
        if m.mtype() != msg::DONE {
            return Some(m);
        }
        let mut d = Done::decode(&m.param).unwrap();
        d.transcript[0] ^= 1;
        Some(Message::new(m.src(), m.dst(), m.mtype(), d.to_bytes()))
    });
    let reason = match &w.results(A)[..] {
        [
            AttestResult {
                outcome: Outcome::Refused { reason },
                ..
            },
        ] => reason.clone(),
        other => panic!("{other:?}"),
    };
    assert!(reason.contains("another transcript"), "{reason}");
    assert!(w.records(A).is_empty());
    assert_eq!(w.records(B).len(), 1);
}

#[test]
fn messages_from_anyone_but_the_sessions_peer_are_refused() {
    let mut w = World::new();
    w.add(C, None);
    // A's hello to B is held back; C, which saw it, answers in B's place
    // with a valid reply of its own (its certificate, its signature).
    let hello = w.deliver(&start(A, B)).pop().unwrap();
    assert_eq!(hello.mtype(), msg::HELLO);
    let as_if_to_c = Message::new(card_id(A), card_id(C), msg::HELLO, hello.param.clone());
    let c_reply = w.deliver(&as_if_to_c).pop().unwrap();
    assert_eq!(c_reply.mtype(), msg::REPLY);
    let to_a = Message::new(card_id(C), card_id(A), msg::REPLY, c_reply.param.clone());
    let before = w.card(A).store().commits;
    let text = refusal(&w.deliver(&to_a));
    assert!(
        text.contains("belongs to no attestation in progress"),
        "{text}"
    );
    assert_eq!(
        w.card(A).store().commits,
        before,
        "a refusal writes nothing"
    );
    // An app of B's host may not speak for card B either.
    let from_app = Message::new(app(B), card_id(A), msg::REPLY, c_reply.param);
    refusal(&w.deliver(&from_app));
    // The session with B is untouched: B's real reply completes it.
    w.run(hello);
    assert!(matches!(
        &w.results(A)[..],
        [AttestResult {
            outcome: Outcome::Attested { .. },
            ..
        }]
    ));
    assert_eq!(w.records(A)[0].peer, card_id(B));
    // C's hello from A left an answered session on C, and nothing else.
    assert!(w.records(C).is_empty());
}

#[test]
fn replayed_messages_are_refused_and_nothing_is_recorded_twice() {
    let mut w = World::new();
    w.attest(A, B);
    let (on_a, on_b) = (w.records(A), w.records(B));
    let (hello, reply, finish, done) = (
        w.last(msg::HELLO),
        w.last(msg::REPLY),
        w.last(msg::FINISH),
        w.last(msg::DONE),
    );
    let commits = (w.card(A).store().commits, w.card(B).store().commits);
    // Each message of the finished session, again, from its real sender.
    for m in [&reply, &done] {
        let text = refusal(&w.deliver(m));
        assert!(text.contains("no attestation in progress"), "{text}");
    }
    let text = refusal(&w.deliver(&finish));
    assert!(text.contains("no attestation in progress"), "{text}");
    assert_eq!(
        (w.card(A).store().commits, w.card(B).store().commits),
        commits,
        "the refused replays wrote nothing"
    );
    // The hello again: B answers a new session with a fresh n_b, which A,
    // having no session under that n_a any more, refuses...
    let fresh = w.deliver(&hello).pop().unwrap();
    assert_eq!(fresh.mtype(), msg::REPLY);
    let (old, new) = (
        Reply::decode(&reply.param).unwrap(),
        Reply::decode(&fresh.param).unwrap(),
    );
    assert_ne!(old.n_b, new.n_b, "a fresh nonce for every session");
    refusal(&w.deliver(&fresh));
    // ... and the old finish does not complete the new session: its n_b
    // is the old one.
    refusal(&w.deliver(&finish));
    let f = Finish::decode(&finish.param).unwrap();
    let spliced = Finish { n_b: new.n_b, ..f };
    let spliced = Message::new(finish.src(), finish.dst(), msg::FINISH, spliced.to_bytes());
    let out = w.deliver(&spliced);
    assert_eq!(
        out.iter().map(Message::mtype).collect::<Vec<_>>(),
        [msg::ABORT],
        "the old signature does not verify over the new transcript"
    );
    assert_eq!(w.records(A), on_a);
    assert_eq!(w.records(B), on_b, "still the one record, unchanged");
}

#[test]
fn an_abort_from_anyone_but_the_peer_is_refused_and_never_answered_with_an_abort() {
    let mut w = World::new();
    w.add(C, None);
    let hello = w.deliver(&start(A, B)).pop().unwrap();
    let n_a = msg::Hello::decode(&hello.param).unwrap().n_a;
    let abort = msg::Abort {
        n_a,
        reason: "C says no".into(),
    };
    let from_c = Message::new(card_id(C), card_id(A), msg::ABORT, abort.to_bytes());
    refusal(&w.deliver(&from_c));
    // The session goes on.
    w.run(hello);
    assert_eq!(w.records(A).len(), 1);
    // An abort for a session that is over is refused, not answered.
    let late = Message::new(card_id(B), card_id(A), msg::ABORT, abort.to_bytes());
    refusal(&w.deliver(&late));
}

#[test]
fn a_failed_store_write_records_nothing_and_sends_nothing() {
    let mut w = World::new();
    let mut finish = None;
    w.run_with(start(A, B), |m| {
        if m.mtype() == msg::FINISH {
            finish = Some(m);
            return None;
        }
        Some(m)
    });
    let finish = finish.expect("A finished");
    w.card(B).store_mut().fail_commits = true;
    let sw = try_deliver(w.card(B), &finish).expect_err("the store failed");
    assert_eq!(sw, StatusWord::MEMORY_FAILURE);
    w.card(B).store_mut().fail_commits = false;
    assert!(w.records(B).is_empty(), "no record without the write");
    assert_eq!(w.card(B).waiting(), 0, "and no done either");
    // The session is as it was: the same finish, delivered again, goes
    // through.
    w.run(finish);
    assert_eq!(w.records(B).len(), 1);
    assert_eq!(w.records(A).len(), 1);
}

#[test]
fn only_authenticated_apps_of_the_cards_domain_may_start_or_ask() {
    let mut w = World::new();
    let stranger = EntityId::new(dom(A), Port::new(9));
    for mtype in [msg::START, msg::QUERY] {
        let param = if mtype == msg::START {
            Start { peer: card_id(B) }.to_bytes()
        } else {
            vec![]
        };
        let m = Message::new(stranger, card_id(A), mtype, param.clone());
        let text = refusal(&w.deliver(&m));
        assert!(text.contains("privileged"), "{text}");
        // An app of another domain cannot even authenticate.
        let m = Message::new(app(B), card_id(A), mtype, param);
        refusal(&w.deliver(&m));
    }
    assert!(w.wire.is_empty());
}

#[test]
fn a_card_does_not_attest_with_itself_or_without_a_certificate() {
    let mut w = World::new();
    let text = refusal(&w.deliver(&start(A, A)));
    assert!(text.contains("itself"), "{text}");
    let mut bare = Card::personalize(
        MemStore::new(16 * 1024),
        &Personalization {
            domain: dom(C),
            pin: b"1234".to_vec(),
            puk: b"12345678".to_vec(),
        },
        CardLimits::default(),
        Box::new(SeededEntropy::new(3)),
    )
    .unwrap();
    bare.install(Box::new(AttestApplet::new()));
    let select = Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID.to_vec());
    assert!(apdu(&mut bare, select).sw.is_success());
    let verify = Message::new(
        app(C),
        card_id(C),
        Mtype::VERIFY_PIN,
        VerifyPin {
            pin: b"1234".to_vec(),
        }
        .to_bytes(),
    );
    deliver(&mut bare, &verify);
    let text = refusal(&deliver(&mut bare, &start(C, A)));
    assert!(text.contains("no certificate"), "{text}");
}
