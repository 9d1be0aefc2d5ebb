//! The daemon with an in-process virtual card: ids from the card, echo,
//! PIN and privileged messages through the dispatch table.

use std::path::{Path, PathBuf};

use tenet_card::{Card, CardLimits, FileStore, Personalization, SeededEntropy};
use tenet_client::Capability;
use tenet_host::{Config, HostHandle};
use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, VerifyPin};
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, Domain, EntityId, Mtype};

mod support;
use support::{WAIT, recv};

const DOMAIN: Domain = Domain::new([0xca; 12]);

fn make_card(dir: &Path) -> PathBuf {
    let path = dir.join("card.store");
    let store = FileStore::create(&path, 16 * 1024).unwrap();
    let p = Personalization {
        domain: DOMAIN,
        pin: b"2468".to_vec(),
        puk: b"13572468".to_vec(),
    };
    drop(
        Card::personalize(
            store,
            &p,
            CardLimits::default(),
            Box::new(SeededEntropy::new(5)),
        )
        .unwrap(),
    );
    path
}

/// A host in `dir` with the virtual card stored at `card`.
fn config(dir: &Path, card: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.join("host.sock"));
    cfg.host.state_dir = Some(dir.join("state"));
    cfg.card.virtual_store = Some(card.to_owned());
    cfg
}

async fn host(dir: &Path, card: &Path) -> HostHandle {
    tenet_host::start(&config(dir, card)).await.unwrap()
}

async fn verify(c: &mut Capability, pin: &[u8]) -> PinStatus {
    c.send(
        DOMAIN.owner(),
        Mtype::VERIFY_PIN,
        VerifyPin { pin: pin.to_vec() }.to_bytes(),
    )
    .await
    .unwrap();
    let m = recv(c).await;
    assert_eq!((m.src(), m.mtype()), (DOMAIN.owner(), Mtype::PIN_STATUS));
    PinStatus::decode(&m.param).unwrap()
}

#[tokio::test]
async fn apps_get_ids_from_the_card_and_the_card_answers_echo() {
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path());
    let h = host(dir.path(), &card).await;
    assert_eq!(h.card_id(), Some(DOMAIN.owner()));
    let mut a = Capability::acquire(h.socket_path()).await.unwrap();
    let b = Capability::acquire(h.socket_path()).await.unwrap();
    assert_eq!(a.id().domain(), DOMAIN, "ids come from the card's domain");
    assert_ne!(a.id(), b.id());
    let (apdus_before, _, _) = h.card_link_stats().unwrap();
    a.echo(DOMAIN.owner(), b"hello card", WAIT)
        .await
        .expect("the card answers echo");
    let (apdus_after, out, inn) = h.card_link_stats().unwrap();
    assert_eq!(
        apdus_after - apdus_before,
        1,
        "one APDU per message to the card"
    );
    assert!(out > 0 && inn > 0);
    // The host's own entity still answers too.
    a.echo(h.host_id(), b"", WAIT).await.unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn pin_and_privilege_are_per_entity_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path());
    let h = host(dir.path(), &card).await;
    let mut alice = Capability::acquire(h.socket_path()).await.unwrap();
    let mut mallory = Capability::acquire(h.socket_path()).await.unwrap();
    let change = ChangePin {
        new_pin: b"0000".to_vec(),
    }
    .to_bytes();

    mallory
        .send(DOMAIN.owner(), Mtype::CHANGE_PIN, change.clone())
        .await
        .unwrap();
    let r = recv(&mut mallory).await;
    assert_eq!(r.mtype(), Mtype::REFUSED);
    assert!(
        Refused::decode(&r.param)
            .unwrap()
            .text
            .contains("not authenticated")
    );

    assert_eq!(verify(&mut alice, b"1111").await.outcome, PinOutcome::Wrong);
    assert_eq!(
        verify(&mut alice, b"2468").await,
        PinStatus {
            outcome: PinOutcome::Verified,
            tries_left: 3
        }
    );
    // Alice is privileged now; Mallory still is not.
    mallory
        .send(DOMAIN.owner(), Mtype::CHANGE_PIN, change.clone())
        .await
        .unwrap();
    assert_eq!(recv(&mut mallory).await.mtype(), Mtype::REFUSED);
    alice
        .send(DOMAIN.owner(), Mtype::CHANGE_PIN, change)
        .await
        .unwrap();
    let m = recv(&mut alice).await;
    assert_eq!(
        PinStatus::decode(&m.param).unwrap().outcome,
        PinOutcome::Changed
    );
    h.shutdown().await;
}

#[tokio::test]
async fn card_ports_are_never_reused_across_daemon_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path());
    let mut seen: Vec<EntityId> = Vec::new();
    for _ in 0..3 {
        let h = host(dir.path(), &card).await;
        for _ in 0..2 {
            let id = Capability::acquire(h.socket_path()).await.unwrap().id();
            assert!(!seen.contains(&id), "{id} assigned twice");
            seen.push(id);
        }
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_card_store_serves_one_daemon_only() {
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path());
    let h = host(dir.path(), &card).await;
    let other = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.host.socket = Some(other.path().join("host.sock"));
    cfg.host.state_dir = Some(other.path().join("state"));
    cfg.card.virtual_store = Some(card.clone());
    let err = tenet_host::start(&cfg).await.err().expect("refused");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_blank_or_missing_card_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.path().join("host.sock"));
    cfg.host.state_dir = Some(dir.path().join("state"));
    cfg.card.virtual_store = Some(dir.path().join("missing.store"));
    let err = tenet_host::start(&cfg).await.err().expect("refused");
    assert!(err.to_string().contains("missing.store"), "{err}");
    let blank = dir.path().join("blank.store");
    drop(FileStore::create(&blank, 4096).unwrap());
    cfg.card.virtual_store = Some(blank);
    let err = tenet_host::start(&cfg).await.err().expect("refused");
    assert!(err.to_string().contains("blank"), "{err}");
    assert!(
        !dir.path().join("host.sock").exists(),
        "nothing left behind"
    );
}

#[tokio::test]
async fn a_message_above_the_cards_limit_is_refused_with_its_status_word() {
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path());
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.path().join("host.sock"));
    cfg.host.state_dir = Some(dir.path().join("state"));
    cfg.card.virtual_store = Some(card);
    cfg.card.max_message = Some(100);
    let h = tenet_host::start(&cfg).await.unwrap();
    let mut a = Capability::acquire(h.socket_path()).await.unwrap();
    a.send(DOMAIN.owner(), Mtype::ECHO_REQUEST, vec![0; 200])
        .await
        .unwrap();
    let m = recv(&mut a).await;
    assert_eq!((m.src(), m.mtype()), (DOMAIN.owner(), Mtype::REFUSED));
    let r = Refused::decode(&m.param).unwrap();
    assert!(r.text.contains("6a84"), "{}", r.text);
    a.echo(DOMAIN.owner(), &[0; 50], WAIT)
        .await
        .expect("small ones pass");
    h.shutdown().await;
}

#[tokio::test]
async fn a_card_in_the_hosts_own_domain_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path());
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.path().join("host.sock"));
    cfg.host.state_dir = Some(dir.path().join("state"));
    cfg.host.domain = Some(DOMAIN.to_string());
    cfg.card.virtual_store = Some(card);
    let err = tenet_host::start(&cfg).await.err().expect("refused");
    assert!(
        err.to_string().contains("also the host's software domain"),
        "{err}"
    );
}

/// The smartcard proxy gives the card the host's time when it attaches
/// it, before anything else: a card whose clock bound is three days old
/// moves it forward by one day (the most one host time may move it).
#[tokio::test]
async fn the_proxy_gives_the_card_the_hosts_time_at_attach() {
    // Observed through the card's refusal: its bound is put three days
    // ahead of the host's clock, so the time the proxy gives at attach is
    // refused and logged, and the bound stays where it is.
    use tenet_card::Storage;
    use tenet_card::state::CardState;
    const DAY: u64 = 86_400;
    support::logs();
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path());
    let ahead = {
        let mut store = FileStore::open(&card).unwrap();
        let mut state = CardState::decode(&store.load().unwrap().unwrap()).unwrap();
        state.clock_bound += 3 * DAY;
        store.commit(&state.to_bytes()).unwrap();
        state.clock_bound
    };
    let seen = support::warnings_so_far();
    let h = host(dir.path(), &card).await;
    let w = support::warning(seen, &["the card refused the host's time"]).await;
    assert!(
        w.contains("more than a day before the card's clock bound"),
        "{w}"
    );
    let mut a = Capability::acquire(h.socket_path()).await.unwrap();
    a.echo(DOMAIN.owner(), b"", WAIT)
        .await
        .expect("the card answers echo");
    h.shutdown().await;
    let c = Card::open(
        FileStore::open(&card).unwrap(),
        CardLimits::default(),
        Box::new(SeededEntropy::new(1)),
    )
    .unwrap();
    assert_eq!(c.state().clock_bound, ahead, "a refused time moves nothing");
}

/// Tasks that store messages for the in-process card deliver them
/// themselves when the card is free and leave them to the proxy thread
/// when it is not: with many apps sending at once, on several workers, and
/// PIN checks (always the thread's) among them, every message reaches the
/// card once, each is answered once, each app's answers come in its order,
/// and both ways of delivering were taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_sending_to_the_card_at_once_each_get_every_answer_in_order() {
    const APPS: usize = 8;
    const EACH: u32 = 60;
    const PINS: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path());
    let mut cfg = config(dir.path(), &card);
    // No set-time during the test: every APDU below is one message.
    cfg.card.clock_secs = Some(3600);
    let h = tenet_host::start(&cfg).await.unwrap();
    let mut caps = Vec::new();
    for _ in 0..APPS {
        caps.push(Capability::acquire(h.socket_path()).await.unwrap());
    }
    let (apdus0, _, _) = h.card_link_stats().unwrap();
    let inline0 = h.card_link_inline().unwrap();
    let mut apps = Vec::new();
    for (a, mut c) in caps.into_iter().enumerate() {
        apps.push(tokio::spawn(async move {
            for k in 0..EACH {
                if a == 0 && k % (EACH / PINS) == 0 {
                    c.send(
                        DOMAIN.owner(),
                        Mtype::VERIFY_PIN,
                        VerifyPin {
                            pin: b"2468".to_vec(),
                        }
                        .to_bytes(),
                    )
                    .await
                    .unwrap();
                }
                c.send(
                    DOMAIN.owner(),
                    Mtype::ECHO_REQUEST,
                    k.to_be_bytes().to_vec(),
                )
                .await
                .unwrap();
            }
            let (mut next, mut pins) = (0u32, 0u32);
            while next < EACH || (a == 0 && pins < PINS) {
                let m = recv(&mut c).await;
                assert_eq!(m.src(), DOMAIN.owner());
                if m.mtype() == Mtype::PIN_STATUS {
                    assert_eq!(
                        PinStatus::decode(&m.param).unwrap().outcome,
                        PinOutcome::Verified
                    );
                    pins += 1;
                    continue;
                }
                assert_eq!(m.mtype(), Mtype::ECHO_REPLY);
                assert_eq!(m.param, next.to_be_bytes(), "app {a}: answers in order");
                next += 1;
            }
            // The card answers in order: an answer that came twice would
            // come before the answer to this last request.
            c.send(DOMAIN.owner(), Mtype::ECHO_REQUEST, b"last".to_vec())
                .await
                .unwrap();
            let m = recv(&mut c).await;
            assert_eq!((m.mtype(), &m.param[..]), (Mtype::ECHO_REPLY, &b"last"[..]));
            assert_eq!(pins, if a == 0 { PINS } else { 0 });
        }));
    }
    for a in apps {
        a.await.unwrap();
    }
    let (apdus, _, _) = h.card_link_stats().unwrap();
    let messages = APPS as u64 * u64::from(EACH + 1) + u64::from(PINS);
    assert_eq!(
        apdus - apdus0,
        messages,
        "every message went to the card once"
    );
    let inline = h.card_link_inline().unwrap() - inline0;
    assert!(
        inline > 0 && inline <= messages - u64::from(PINS),
        "tasks delivered {inline} of {messages} messages themselves, never a PIN check"
    );
    h.shutdown().await;
}

/// A guard that panics on mtype 0x8077, as a bug in a plug-in's guard
/// would: it runs in the task that stores the sender's message.
struct PanicsOn8077;

impl tenet_dispatch::Guard for PanicsOn8077 {
    fn name(&self) -> &str {
        "panics-on-0x8077"
    }

    fn check(
        &mut self,
        _: &tenet_dispatch::GuardContext,
        _: tenet_dispatch::Ingress,
        h: &tenet_proto::Header,
        _: std::time::Instant,
    ) -> tenet_dispatch::Verdict {
        assert_ne!(h.mtype, Mtype(0x8077), "a guard's bug");
        tenet_dispatch::Verdict::Pass
    }
}

/// A panic in an app's connection task (a plug-in guard's bug) closes that
/// app's socket and takes its endpoint out of the table: the app sees the
/// end instead of waiting, messages to its id are undeliverable instead of
/// queued for no one, and the host serves the others.
#[tokio::test]
async fn a_panic_while_storing_an_apps_message_unregisters_that_app() {
    let dir = tempfile::tempdir().unwrap();
    let card = make_card(dir.path());
    let cfg = config(dir.path(), &card);
    let h = tenet_host::HostBuilder::new(&cfg)
        .card_guard(Box::new(PanicsOn8077))
        .start()
        .await
        .unwrap();
    let mut a = Capability::acquire(h.socket_path()).await.unwrap();
    let mut b = Capability::acquire(h.socket_path()).await.unwrap();
    let a_id = a.id();
    let apps = |s: &tenet_proto::status::Status| s.count("apps_connected", &[]);
    assert_eq!(apps(&b.status().await.unwrap()), 2);
    let sent = tokio::time::timeout(WAIT, a.send(b.id(), Mtype(0x8077), vec![]))
        .await
        .expect("the app sees its connection end, not silence");
    assert!(sent.is_err(), "{sent:?}");
    let err = b
        .echo(a_id, b"are you there", WAIT)
        .await
        .expect_err("the app's id is gone");
    assert!(
        matches!(err, tenet_client::ClientError::Undeliverable { dst, .. } if dst == a_id),
        "{err}"
    );
    assert_eq!(apps(&b.status().await.unwrap()), 1);
    // The host goes on: a new app is served, and so is the other one.
    let mut c = Capability::acquire(h.socket_path()).await.unwrap();
    c.echo(DOMAIN.owner(), b"still here", WAIT).await.unwrap();
    b.echo(DOMAIN.owner(), b"still here", WAIT).await.unwrap();
    h.shutdown().await;
}
