//! The PC/SC card link against real pcscd and vsmartcard's vpcd: the
//! virtual card connects to vpcd over TCP, and the daemon reaches it through
//! pcscd like any card in a reader.
//!
//! The card is the daemon's alone: while the daemon holds it no other
//! PC/SC client (opensc-tool here) can talk to it, a card with the same
//! domain but another key is refused on re-insertion and gets nothing, and
//! a reader another client holds is a clear startup error.
//!
//! Needs pcscd running with the vpcd driver (`scripts/test.sh` starts it)
//! and opensc-tool. `TENET_VPCD_ADDR` (default `127.0.0.1:35963`) and
//! `TENET_PCSC_READER` (default `Virtual PCD 00 00`) name vpcd's first slot.
#![cfg(feature = "pcsc")]

use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tenet_card::{Card, CardLimits, FileStore, Personalization, SeededEntropy, SystemEntropy};
use tenet_client::{Capability, ClientError};
use tenet_host::{Config, HostHandle};
use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, VerifyPin};
use tenet_proto::{Codec, Domain, Mtype};

mod support;
use support::{WAIT, logs, recv, warning, warnings_so_far};

const DOMAIN: Domain = Domain::new([0x5c; 12]);

/// One reader slot: tests take turns.
static READER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn vpcd_addr() -> String {
    std::env::var("TENET_VPCD_ADDR").unwrap_or_else(|_| "127.0.0.1:35963".into())
}

fn reader() -> String {
    std::env::var("TENET_PCSC_READER").unwrap_or_else(|_| "Virtual PCD 00 00".into())
}

fn make_card(dir: &Path) -> PathBuf {
    make_card_named(dir, "card.store", b"1357")
}

/// A card of [`DOMAIN`] with its own key pair (every card makes one).
fn make_card_named(dir: &Path, name: &str, pin: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let p = Personalization {
        domain: DOMAIN,
        pin: pin.to_vec(),
        puk: b"24682468".to_vec(),
    };
    let store = FileStore::create(&path, 16 * 1024).unwrap();
    drop(
        Card::personalize(
            store,
            &p,
            CardLimits::default(),
            Box::new(SeededEntropy::new(9)),
        )
        .unwrap(),
    );
    path
}

/// A virtual card inserted into vpcd's slot. Dropped (a test failed), it
/// is pulled without waiting, so that the slot is free for the next test.
struct Inserted {
    stream: TcpStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn insert(store: &Path) -> Inserted {
    let addr = vpcd_addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "vpcd does not listen at {addr} ({e}); is pcscd running with the vpcd driver? scripts/test.sh starts it"
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let theirs = stream.try_clone().unwrap();
    let store = store.to_owned();
    let thread = std::thread::spawn(move || {
        let s = FileStore::open(&store).unwrap();
        let mut card = Card::open(s, CardLimits::default(), Box::new(SystemEntropy)).unwrap();
        let _ = tenet_card::vpcd::serve_connection(&mut card, theirs);
    });
    Inserted {
        stream,
        thread: Some(thread),
    }
}

impl Inserted {
    /// Pulls the card and waits until pcscd sees the reader empty (a person
    /// cannot re-insert a card within vpcd's 400 ms presence poll either).
    fn remove(mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        wait_for_reader(false);
    }
}

impl Drop for Inserted {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Waits until pcscd reports a card in the reader (`present`) or none.
fn wait_for_reader(present: bool) {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("pcscd answers");
    let name = std::ffi::CString::new(reader()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut states = [pcsc::ReaderState::new(name.clone(), pcsc::State::UNAWARE)];
        ctx.get_status_change(Duration::from_millis(100), &mut states)
            .expect("reader known to pcscd");
        if states[0].event_state().contains(pcsc::State::PRESENT) == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reader never became {}",
            if present { "occupied" } else { "empty" }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(dir: &Path, short: bool) -> Config {
    logs();
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.join("host.sock"));
    cfg.host.state_dir = Some(dir.join("state"));
    cfg.card.reader = Some(reader());
    cfg.card.short_apdus = Some(short);
    cfg
}

async fn host(dir: &Path, short: bool) -> HostHandle {
    tenet_host::start(&config(dir, short))
        .await
        .expect("daemon attaches the card in the PC/SC reader")
}

#[tokio::test]
async fn ping_the_card_through_pcscd_with_extended_apdus() {
    let _slot = READER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let card = insert(&make_card(dir.path()));
    let h = host(dir.path(), false).await;
    assert_eq!(h.card_id(), Some(DOMAIN.owner()));
    let mut a = Capability::acquire(h.socket_path()).await.unwrap();
    assert_eq!(
        a.id().domain(),
        DOMAIN,
        "the id comes from the card in the reader"
    );
    let before = h.card_link_stats().unwrap().0;
    for size in [0usize, 300, 4000] {
        a.echo(DOMAIN.owner(), &vec![0x5a; size], WAIT)
            .await
            .unwrap();
    }
    assert_eq!(
        h.card_link_stats().unwrap().0 - before,
        3,
        "one extended APDU per message"
    );
    h.shutdown().await;
    card.remove();
}

#[tokio::test]
async fn short_apdu_mode_chains_through_pcscd() {
    let _slot = READER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let card = insert(&make_card(dir.path()));
    let h = host(dir.path(), true).await;
    let mut a = Capability::acquire(h.socket_path()).await.unwrap();
    let before = h.card_link_stats().unwrap().0;
    a.echo(DOMAIN.owner(), &vec![0xa5; 1000], WAIT)
        .await
        .unwrap();
    // In the compact form (applet version 2), 1007 bytes in 4 chained
    // commands; the 1007-byte answer in 4 pieces (3 GET RESPONSEs).
    assert_eq!(h.card_link_stats().unwrap().0 - before, 4 + 3);
    h.shutdown().await;
    card.remove();
}

#[tokio::test]
async fn card_removal_and_reinsertion() {
    let _slot = READER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = make_card(dir.path());
    let card = insert(&store);
    let h = host(dir.path(), false).await;
    let mut alice = Capability::acquire(h.socket_path()).await.unwrap();
    alice
        .send(
            DOMAIN.owner(),
            Mtype::VERIFY_PIN,
            VerifyPin {
                pin: b"1357".to_vec(),
            }
            .to_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        PinStatus::decode(&recv(&mut alice).await.param)
            .unwrap()
            .outcome,
        PinOutcome::Verified
    );

    card.remove();
    // The message in flight when the card is found missing comes back as
    // undeliverable; nobody can acquire an id while the card is out.
    let err = alice.echo(DOMAIN.owner(), b"", WAIT).await.unwrap_err();
    assert!(matches!(err, ClientError::Undeliverable { .. }), "{err}");
    let err = Capability::acquire(h.socket_path()).await.unwrap_err();
    assert!(err.to_string().contains("card"), "{err}");

    let card = insert(&store);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match alice
            .echo(DOMAIN.owner(), b"", Duration::from_secs(1))
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => panic!("card not back: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // Re-inserted means reset: alice must authenticate again.
    let change = ChangePin {
        new_pin: b"0000".to_vec(),
    }
    .to_bytes();
    alice
        .send(DOMAIN.owner(), Mtype::CHANGE_PIN, change)
        .await
        .unwrap();
    assert_eq!(recv(&mut alice).await.mtype(), Mtype::REFUSED);
    h.shutdown().await;
    card.remove();
}

/// opensc-tool, another PC/SC client, sends SELECT to the card in the
/// reader: whether it got an answer, and what it printed.
fn opensc_select() -> (bool, String) {
    let out = Command::new("opensc-tool")
        .args([
            "-c",
            "default",
            "-r",
            &reader(),
            "-s",
            "00 A4 04 00 07 F0 54 45 4E 45 54 01",
        ])
        .output()
        .expect("opensc-tool is installed (Debian package opensc)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("Received"), text)
}

/// Connects to the reader as another PC/SC client would (shared mode).
fn other_client(ctx: &pcsc::Context) -> Result<pcsc::Card, pcsc::Error> {
    let name = std::ffi::CString::new(reader()).unwrap();
    ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
}

/// Asserts that neither opensc-tool nor another PC/SC connection reaches
/// the card, and that the daemon still does.
async fn assert_held(alice: &mut Capability, when: &str) {
    let (answered, text) = opensc_select();
    assert!(
        !answered && text.contains("in use by another application"),
        "{when}: opensc-tool talked to the card behind the daemon:\n{text}"
    );
    let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("pcscd answers");
    match other_client(&ctx) {
        Err(pcsc::Error::SharingViolation) => {}
        Err(e) => {
            panic!("{when}: another client failed otherwise than by a sharing violation: {e}")
        }
        Ok(_) => panic!("{when}: another PC/SC client connected to the reader"),
    }
    alice.echo(DOMAIN.owner(), b"", WAIT).await.unwrap();
}

/// No other PC/SC client can reach the card while the daemon holds it,
/// also after the card was pulled and put back.
#[tokio::test]
async fn another_pcsc_client_cannot_talk_to_the_card_the_daemon_holds() {
    let _slot = READER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = make_card(dir.path());
    let card = insert(&store);
    wait_for_reader(true);
    let (answered, text) = opensc_select();
    assert!(
        answered,
        "without a daemon, opensc-tool reaches the card: {text}"
    );

    let h = host(dir.path(), false).await;
    let mut alice = Capability::acquire(h.socket_path()).await.unwrap();
    assert_held(&mut alice, "attached at startup").await;

    card.remove();
    let err = alice.echo(DOMAIN.owner(), b"", WAIT).await.unwrap_err();
    assert!(matches!(err, ClientError::Undeliverable { .. }), "{err}");
    let card = insert(&store);
    // Waits in the table until the proxy has the card back.
    alice.echo(DOMAIN.owner(), b"", WAIT).await.unwrap();
    assert_held(&mut alice, "re-inserted").await;

    h.shutdown().await;
    let (answered, text) = opensc_select();
    assert!(answered, "the daemon gone, the reader is free: {text}");
    card.remove();
}

/// A card of the same domain with another key, put in the reader while
/// the daemon's card is out, is refused and gets nothing: not the
/// `verify-pin` (with the PIN) waiting for the card. The daemon's card,
/// put back, gets it.
#[tokio::test]
async fn a_card_with_the_same_domain_but_another_key_gets_nothing() {
    let _slot = READER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ours = make_card(dir.path());
    let theirs = make_card_named(dir.path(), "other.store", b"2468");
    let card = insert(&ours);
    let h = host(dir.path(), false).await;
    let mut alice = Capability::acquire(h.socket_path()).await.unwrap();
    alice.echo(DOMAIN.owner(), b"", WAIT).await.unwrap();

    card.remove();
    let err = alice.echo(DOMAIN.owner(), b"", WAIT).await.unwrap_err();
    assert!(matches!(err, ClientError::Undeliverable { .. }), "{err}");
    // Alice's PIN waits in the table for the card.
    let before = warnings_so_far();
    alice
        .send(
            DOMAIN.owner(),
            Mtype::VERIFY_PIN,
            VerifyPin {
                pin: b"1357".to_vec(),
            }
            .to_bytes(),
        )
        .await
        .unwrap();
    let other = insert(&theirs);
    let refusal = tokio::select! {
        w = warning(before, &["card refused", "another public key"]) => w,
        m = alice.receive() => panic!(
            "the waiting verify-pin went to the other card, which answered {:?}",
            m.map(|m| PinStatus::decode(&m.param))
        ),
    };
    assert!(refusal.contains(&DOMAIN.to_string()), "{refusal}");
    other.remove();
    let other = Card::open(
        FileStore::open(&theirs).unwrap(),
        CardLimits::default(),
        Box::new(SystemEntropy),
    )
    .unwrap();
    assert_eq!(
        other.state().pin_tries,
        3,
        "the other card saw the PIN (it counted a wrong one)"
    );
    drop(other);

    let card = insert(&ours);
    let status = PinStatus::decode(&recv(&mut alice).await.param).unwrap();
    assert_eq!(
        status.outcome,
        PinOutcome::Verified,
        "the verify-pin waited for the daemon's card"
    );
    h.shutdown().await;
    card.remove();
}

/// A reader another PC/SC client is connected to cannot be held
/// exclusively: the daemon does not start, and says why.
#[tokio::test]
async fn a_reader_another_client_holds_is_a_clear_startup_error() {
    let _slot = READER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let card = insert(&make_card(dir.path()));
    wait_for_reader(true);
    let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("pcscd answers");
    let held = other_client(&ctx).expect("a free reader takes a shared connection");
    let mut cfg = config(dir.path(), false);
    cfg.card.wait_secs = Some(0.5);
    let err = match tenet_host::start(&cfg).await {
        Ok(h) => {
            h.shutdown().await;
            panic!("the daemon started on a reader another client holds")
        }
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err,
        format!(
            "card: reader {:?}: in use by another PC/SC client (SCARD_E_SHARING_VIOLATION); close it or choose another reader",
            reader()
        )
    );
    drop(held);
    let h = tenet_host::start(&cfg)
        .await
        .expect("the reader let go, the daemon starts");
    h.shutdown().await;
    card.remove();
}
