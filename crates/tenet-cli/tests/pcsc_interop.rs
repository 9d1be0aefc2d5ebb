//! A client nobody here wrote: Debian's opensc-tool drives the virtual card
//! through pcscd and vpcd with hand-written APDUs. And `tenet ping` reaches
//! a card through both card links.
//!
//! Needs pcscd with the vpcd driver and opensc-tool (`scripts/test.sh`
//! installs and starts them). `TENET_VPCD_ADDR` and `TENET_PCSC_READER`
//! name vpcd's slot (defaults `127.0.0.1:35963`, `Virtual PCD 00 00`).
#![cfg(feature = "pcsc")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TENET: &str = env!("CARGO_BIN_EXE_tenet");
const DOMAIN: &str = "0a0b0c0d0e0f101112131415";

fn vpcd_addr() -> String {
    std::env::var("TENET_VPCD_ADDR").unwrap_or_else(|_| "127.0.0.1:35963".into())
}

fn reader() -> String {
    std::env::var("TENET_PCSC_READER").unwrap_or_else(|_| "Virtual PCD 00 00".into())
}

/// One reader slot: tests take turns.
static READER: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn new_card(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("card.store");
    run(Command::new(TENET)
        .args([
            "card", "new", "--pin", "1234", "--puk", "12345678", "--domain", DOMAIN, "--store",
        ])
        .arg(&store));
    store
}

fn card_in_reader() -> bool {
    let out = Command::new("opensc-tool")
        .arg("-l")
        .output()
        .expect("opensc-tool is installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(&reader()) && l.contains("Yes"))
}

/// A served card; dropping it pulls the card and waits for an empty reader.
struct Served(Kill);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.0.kill();
        let _ = self.0.0.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while card_in_reader() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `tenet card serve` plugged into vpcd; waits until opensc-tool sees it.
fn serve(store: &Path) -> Served {
    let child = Command::new(TENET)
        .args(["card", "serve", "--vpcd", &vpcd_addr(), "--store"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let k = Served(Kill(child));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !card_in_reader() {
        assert!(
            Instant::now() < deadline,
            "the card never showed up in {}",
            reader()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    k
}

fn spaced(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn opensc_tool_selects_the_applet_and_gets_an_echo_reply() {
    let _slot = READER.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let _card = serve(&new_card(dir.path()));
    // An echo request from app DOMAIN:7 to the card DOMAIN:0 with param "hi".
    let msg = format!("{DOMAIN}00000007{DOMAIN}0000000000016869");
    let deliver = format!("80 10 00 00 24 {} 00", spaced(&msg));
    let out = run(Command::new("opensc-tool").args([
        "-c",
        "default",
        "-r",
        &reader(),
        "-s",
        "00 A4 04 00 07 F0 54 45 4E 45 54 01",
        "-s",
        &deliver,
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    let received: Vec<&str> = text.lines().filter(|l| l.starts_with("Received")).collect();
    assert_eq!(received.len(), 2, "{text}");
    assert!(
        received.iter().all(|l| l.contains("SW1=0x90, SW2=0x00")),
        "{text}"
    );
    // The reply: src card, dst app 7, mtype echo-reply, param "hi".
    let bytes: String = text
        .lines()
        .skip_while(|l| !l.starts_with("Received (SW1=0x90, SW2=0x00):"))
        .skip(1)
        .map(|l| l.get(..48).unwrap_or(l).trim().to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let expected = spaced(&format!("{DOMAIN}00000000{DOMAIN}0000000700026869")).to_uppercase();
    assert_eq!(bytes, expected, "{text}");
}

fn host(dir: &Path, card_line: &str) -> (Kill, std::path::PathBuf) {
    let socket = dir.join("host.sock");
    let config = dir.join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {socket:?}\nstate_dir = {:?}\n[card]\n{card_line}\n",
            dir.join("state")
        ),
    )
    .unwrap();
    let child = Command::new(TENET)
        .args(["host", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let k = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (k, socket)
}

fn ping_card(socket: &Path) {
    let out = run(Command::new(TENET).arg("--socket").arg(socket).args([
        "ping",
        &format!("{DOMAIN}:0"),
        "-c",
        "3",
        "-i",
        "0",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 requests sent, 3 replies received, 0.0% loss"),
        "{text}"
    );
}

#[test]
fn tenet_ping_reaches_the_card_through_both_links() {
    let _slot = READER.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = new_card(dir.path());
    {
        let (_daemon, socket) = host(dir.path(), &format!("virtual = {store:?}"));
        ping_card(&socket);
    }
    let _card = serve(&store);
    let dir2 = tempfile::tempdir().unwrap();
    let (_daemon, socket) = host(dir2.path(), &format!("reader = {:?}", reader()));
    ping_card(&socket);
}
