//! `tenet card pin change|unblock|lock` as a user runs them: a real
//! `tenet host` daemon holding a virtual card, the commands in their own
//! processes, and (for `lock`) another app with its own session.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tenet_client::Capability;
use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, VerifyPin};
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, EntityId, Message, Mtype};

const TENET: &str = env!("CARGO_BIN_EXE_tenet");
const HOST_DOMAIN: &str = "5151515151515151515151aa";
const CARD_DOMAIN: &str = "c4c4c4c4c4c4c4c4c4c4c4c4";
const CARD: &str = "c4c4c4c4c4c4c4c4c4c4c4c4:0";
const BLOCKED: &str = "PIN blocked: unblock it with the PUK: tenet card pin unblock";

/// A `tenet host` process with a virtual card; stopped when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts the daemon and returns once it listens (it says so on
    /// stderr; the rest of its stderr is drained so it never blocks).
    fn start(config: &Path) -> Self {
        let mut child = Command::new(TENET)
            .args(["host", "--config"])
            .arg(config)
            .env("TENET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = err.read_line(&mut line).unwrap();
            assert!(n > 0, "the daemon stopped before listening: {seen}");
            seen.push_str(&line);
            if line.contains("listening on") {
                break;
            }
        }
        std::thread::spawn(move || {
            let _ = err.read_to_end(&mut Vec::new());
        });
        Self { child }
    }

    /// SIGTERM, and wait until it is gone (its store lock with it).
    fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A card personalized with PIN 1234 and PUK 12345678, and the config of
/// a daemon that holds it.
struct Setup {
    dir: tempfile::TempDir,
    store: PathBuf,
    socket: PathBuf,
    config: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("card.store");
    let socket = dir.path().join("host.sock");
    let config = dir.path().join("host.toml");
    let out = cli(&[
        "card",
        "new",
        "--store",
        store.to_str().unwrap(),
        "--pin",
        "1234",
        "--puk",
        "12345678",
        "--domain",
        CARD_DOMAIN,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {socket:?}\nstate_dir = {:?}\ndomain = \"{HOST_DOMAIN}\"\n\
             [card]\nvirtual = {store:?}\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    Setup {
        dir,
        store,
        socket,
        config,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `tenet ARGS` with no PIN from the environment and no terminal.
fn cli(args: &[&str]) -> Output {
    Command::new(TENET)
        .args(args)
        .env_remove("TENET_PIN")
        .env_remove("TENET_PIN_FILE")
        .env_remove("TENET_PUK")
        .env_remove("TENET_PUK_FILE")
        .env_remove("TENET_NEW_PIN")
        .env_remove("TENET_NEW_PIN_FILE")
        .env_remove("TENET_CARD")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `tenet --socket S card pin ARGS --card CARD`.
fn pin(socket: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--socket", socket.to_str().unwrap(), "card", "pin"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--card", CARD]);
    cli(&all)
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[track_caller]
fn fails(out: &Output, says: &str) {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "succeeded: {}{err}",
        text(&out.stdout)
    );
    assert!(err.contains(says), "expected {says:?} in: {err}");
}

#[test]
fn a_changed_pin_replaces_the_old_one() {
    let s = setup();
    let _d = Daemon::start(&s.config);
    let out = ok(&pin(
        &s.socket,
        &["change", "--pin", "1234", "--new-pin", "5678"],
    ));
    assert!(
        out.contains(&format!("PIN of card {CARD} changed")),
        "{out}"
    );
    fails(
        &pin(&s.socket, &["lock", "--pin", "1234"]),
        "wrong PIN: 2 tries left",
    );
    ok(&pin(&s.socket, &["lock", "--pin", "5678"]));
    // The right PIN restored the tries: two more wrong ones do not block.
    fails(
        &pin(&s.socket, &["change", "--pin", "1234", "--new-pin", "1111"]),
        "wrong PIN: 2 tries left",
    );
    fails(
        &pin(&s.socket, &["change", "--pin", "1234", "--new-pin", "1111"]),
        "wrong PIN: 1 try left",
    );
    ok(&pin(&s.socket, &["lock", "--pin", "5678"]));
    // A malformed new PIN is refused before the card is asked.
    fails(
        &pin(&s.socket, &["change", "--pin", "5678", "--new-pin", "12ab"]),
        "new PIN",
    );
}

#[test]
fn three_wrong_pins_block_it_and_the_puk_unblocks_it_through_the_daemon() {
    let s = setup();
    let _d = Daemon::start(&s.config);
    fails(
        &pin(&s.socket, &["change", "--pin", "0000", "--new-pin", "5678"]),
        "wrong PIN: 2 tries left",
    );
    fails(
        &pin(&s.socket, &["lock", "--pin", "0000"]),
        "wrong PIN: 1 try left",
    );
    fails(
        &pin(&s.socket, &["change", "--pin", "0000", "--new-pin", "5678"]),
        BLOCKED,
    );
    // Blocked: even the right PIN is refused, with the same advice.
    fails(&pin(&s.socket, &["lock", "--pin", "1234"]), BLOCKED);

    fails(
        &pin(
            &s.socket,
            &["unblock", "--puk", "00000000", "--new-pin", "4321"],
        ),
        "wrong PUK",
    );
    fails(&pin(&s.socket, &["lock", "--pin", "1234"]), BLOCKED);
    let out = ok(&pin(
        &s.socket,
        &["unblock", "--puk", "12345678", "--new-pin", "4321"],
    ));
    assert!(out.contains("unblocked"), "{out}");
    fails(
        &pin(&s.socket, &["lock", "--pin", "1234"]),
        "wrong PIN: 2 tries left",
    );
    ok(&pin(&s.socket, &["lock", "--pin", "4321"]));
}

#[test]
fn unblock_works_on_the_store_once_no_daemon_holds_it() {
    let s = setup();
    let d = Daemon::start(&s.config);
    for _ in 0..3 {
        assert!(!pin(&s.socket, &["lock", "--pin", "0000"]).status.success());
    }
    fails(&pin(&s.socket, &["lock", "--pin", "1234"]), BLOCKED);
    let offline = |puk: &str, new_pin: &str| {
        cli(&[
            "card",
            "pin",
            "unblock",
            "--store",
            s.store.to_str().unwrap(),
            "--puk",
            puk,
            "--new-pin",
            new_pin,
        ])
    };
    // The daemon holds the store: refused, saying what to do instead.
    fails(&offline("12345678", "2468"), "held by a running daemon");
    d.stop();

    fails(&offline("00000000", "2468"), "9 PUK tries left");
    let out = ok(&offline("12345678", "2468"));
    assert!(
        out.contains(&format!("PIN of card {CARD} unblocked")),
        "{out}"
    );

    let _d = Daemon::start(&s.config);
    fails(
        &pin(&s.socket, &["lock", "--pin", "1234"]),
        "wrong PIN: 2 tries left",
    );
    ok(&pin(&s.socket, &["lock", "--pin", "2468"]));
    drop(s.dir);
}

/// Another app's answer from the card (skipping nothing else: it sends
/// only to the card).
async fn answer(app: &mut Capability, mtype: Mtype, param: Vec<u8>) -> Message {
    let card: EntityId = CARD.parse().unwrap();
    app.send(card, mtype, param).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), app.receive())
        .await
        .expect("the card answers")
        .unwrap();
    assert_eq!(m.src(), card, "{m:?}");
    m
}

fn outcome(m: &Message) -> PinOutcome {
    assert_eq!(m.mtype(), Mtype::PIN_STATUS, "{m:?}");
    PinStatus::decode(&m.param).unwrap().outcome
}

#[test]
fn lock_ends_another_apps_session() {
    let s = setup();
    let _d = Daemon::start(&s.config);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verify = VerifyPin {
        pin: b"1234".to_vec(),
    }
    .to_bytes();
    let change = ChangePin {
        new_pin: b"1234".to_vec(),
    }
    .to_bytes();
    let mut app = rt.block_on(Capability::acquire(&s.socket)).unwrap();
    rt.block_on(async {
        let m = answer(&mut app, Mtype::VERIFY_PIN, verify.clone()).await;
        assert_eq!(outcome(&m), PinOutcome::Verified);
        // A privileged order passes while its session lasts.
        let m = answer(&mut app, Mtype::CHANGE_PIN, change.clone()).await;
        assert_eq!(outcome(&m), PinOutcome::Changed);
    });

    let out = ok(&pin(&s.socket, &["lock", "--pin", "1234"]));
    assert!(out.contains("locked"), "{out}");

    rt.block_on(async {
        let m = answer(&mut app, Mtype::CHANGE_PIN, change.clone()).await;
        assert_eq!(m.mtype(), Mtype::REFUSED, "{m:?}");
        let r = Refused::decode(&m.param).unwrap();
        assert_eq!(r.mtype, Mtype::CHANGE_PIN);
        assert!(r.text.contains("not authenticated"), "{}", r.text);
        // Verifying again opens a new session.
        let m = answer(&mut app, Mtype::VERIFY_PIN, verify).await;
        assert_eq!(outcome(&m), PinOutcome::Verified);
        let m = answer(&mut app, Mtype::CHANGE_PIN, change).await;
        assert_eq!(outcome(&m), PinOutcome::Changed);
    });
}

/// Each command's `--help` says what it does and shows an example.
#[test]
fn each_pin_command_has_a_description_and_an_example() {
    for (cmd, says) in [
        ("change", "Change the card's PIN"),
        ("unblock", "Unblock the PIN with the PUK"),
        ("lock", "end every app's authenticated session"),
    ] {
        let out = ok(&cli(&["card", "pin", cmd, "--help"]));
        assert!(out.contains(says), "{out}");
        assert!(
            out.contains(&format!("Example: tenet card pin {cmd} --card")),
            "{out}"
        );
    }
}
