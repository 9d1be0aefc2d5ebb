//! The PC/SC card link against real pcscd and vsmartcard's vpcd: the
//! virtual card connects to vpcd over TCP, and the daemon reaches it through
//! pcscd like any card in a reader.
//!
//! Needs pcscd running with the vpcd driver (`scripts/test.sh` starts it).
//! `TENET_VPCD_ADDR` (default `127.0.0.1:35963`) and `TENET_PCSC_READER`
//! (default `Virtual PCD 00 00`) name vpcd's first slot.
#![cfg(feature = "pcsc")]

use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tenet_card::{Card, CardLimits, FileStore, Personalization, SeededEntropy, SystemEntropy};
use tenet_client::{Capability, ClientError};
use tenet_host::{Config, HostHandle};
use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, VerifyPin};
use tenet_proto::{Codec, Domain, Mtype};

mod support;
use support::{WAIT, recv};

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
    let path = dir.join("card.store");
    let p = Personalization {
        domain: DOMAIN,
        pin: b"1357".to_vec(),
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

/// A virtual card inserted into vpcd's slot.
struct Inserted {
    stream: TcpStream,
    thread: std::thread::JoinHandle<()>,
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
    Inserted { stream, thread }
}

impl Inserted {
    /// Pulls the card and waits until pcscd sees the reader empty (a person
    /// cannot re-insert a card within vpcd's 400 ms presence poll either).
    fn remove(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.thread.join().unwrap();
        wait_for_reader(false);
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

async fn host(dir: &Path, short: bool) -> HostHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TENET_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.join("host.sock"));
    cfg.host.state_dir = Some(dir.join("state"));
    cfg.card.reader = Some(reader());
    cfg.card.short_apdus = Some(short);
    tenet_host::start(&cfg)
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
    // 1042 bytes in 5 chained commands; the 1042-byte answer in 5 pieces.
    assert_eq!(h.card_link_stats().unwrap().0 - before, 5 + 4);
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
