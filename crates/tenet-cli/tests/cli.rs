//! The `tenet` binary as a user runs it: a daemon process, then ping and tap.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TENET: &str = env!("CARGO_BIN_EXE_tenet");

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon(extra_config: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("host.sock");
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {:?}\nstate_dir = {:?}\ndomain = \"00112233445566778899aabb\"\n{extra_config}",
            socket,
            dir.path().join("state")
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
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon {
        child,
        socket,
        _dir: dir,
    }
}

fn tenet(socket: &Path, args: &[&str]) -> Output {
    Command::new(TENET)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

const HOST_ID: &str = "00112233445566778899aabb:0";

#[test]
fn ping_the_host_entity_prints_replies_and_summary() {
    let d = daemon("");
    let out = tenet(&d.socket, &["ping", HOST_ID, "-c", "3", "-i", "0"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout
            .matches("reply from 00112233445566778899aabb:0: seq=")
            .count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("3 requests sent, 3 replies received, 0.0% loss"),
        "{stdout}"
    );
    assert!(stdout.contains("rtt min/avg/max = "), "{stdout}");
}

#[test]
fn ping_an_unknown_id_fails_with_loss() {
    let d = daemon("");
    let out = tenet(
        &d.socket,
        &[
            "ping",
            "00112233445566778899aabb:4242",
            "-c",
            "2",
            "-i",
            "0",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("undeliverable") && stdout.contains("unknown destination"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 requests sent, 0 replies received, 100.0% loss"),
        "{stdout}"
    );
}

#[test]
fn bad_cli_input_is_a_clear_error() {
    let d = daemon("");
    let out = tenet(&d.socket, &["ping", "not-an-id"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DOMAIN:PORT"));
    let out = tenet(&d.socket, &["tap", "--mtype", "no-such-type"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mtype"));
    let out = tenet(Path::new("/nonexistent/tenet.sock"), &["ping", HOST_ID]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running at /nonexistent/tenet.sock")
    );
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[dispatch]\nttl_secs = \"soon\"\n").unwrap();
    let out = Command::new(TENET)
        .args(["host", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config") && err.contains("ttl_secs"),
        "{err}"
    );
}

#[test]
fn tap_prints_one_line_per_observed_message() {
    let d = daemon("");
    let mut tap = Command::new(TENET)
        .arg("--socket")
        .arg(&d.socket)
        .args(["tap", "--mtype", "echo-reply", "-c", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the tap is registered (it says so on stderr).
    let mut err = BufReader::new(tap.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("tapping as"), "{line}");
    let out = tenet(
        &d.socket,
        &["ping", HOST_ID, "-c", "2", "-i", "0", "-s", "5"],
    );
    assert!(out.status.success());
    let tapped = tap.wait_with_output().unwrap();
    assert!(tapped.status.success());
    let stdout = String::from_utf8_lossy(&tapped.stdout);
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        // time, src, ->, dst, mtype, length
        let f: Vec<_> = l.split_whitespace().collect();
        assert_eq!(f.len(), 6, "{l}");
        assert_eq!(f[1], HOST_ID);
        assert_eq!(f[4], "echo-reply");
        assert_eq!(f[5], "len=13");
    }
}

#[test]
fn a_card_personalized_with_a_ca_holds_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let store = dir.path().join("card.store");
    let run = |args: &[&str]| {
        let out = Command::new(TENET).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["ca", "init", "--dir", ca.to_str().unwrap()]);
    run(&[
        "card",
        "new",
        "--store",
        store.to_str().unwrap(),
        "--pin",
        "1234",
        "--ca",
        ca.to_str().unwrap(),
    ]);
    let der = dir.path().join("card.der");
    let info = run(&[
        "card",
        "info",
        "--store",
        store.to_str().unwrap(),
        "--cert-out",
        der.to_str().unwrap(),
    ]);
    assert!(info.contains("(X.509 DER)"), "{info}");
    let bytes = std::fs::read(&der).unwrap();
    assert_eq!(bytes[0], 0x30, "a DER SEQUENCE");
    // A CA directory that does not exist: refused, and no store left behind.
    let other = dir.path().join("other.store");
    let out = Command::new(TENET)
        .args([
            "card",
            "new",
            "--store",
            other.to_str().unwrap(),
            "--pin",
            "1234",
            "--ca",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!other.exists());
}

#[test]
fn the_demo_trades_vouchers_and_recovers_interrupted_runs() {
    let demo = |args: &[&str]| {
        let out = Command::new(TENET)
            .arg("demo")
            .args(args)
            .env("TENET_LOG", "error")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = demo(&[]);
    assert!(text.contains("after: alice holds 3 coffee at Alice's, 1 cinema ticket from Bob; bob holds 2 coffee at Alice's, 2 cinema ticket from Bob"), "{text}");
    assert!(text.contains("outcome: swapped"), "{text}");
    // The paper's flow, in order.
    let order: Vec<usize> = [
        "start-exchange",
        "offer",
        "accept",
        "agreement",
        "confirmation",
        "commitment",
    ]
    .iter()
    .map(|m| {
        text.find(&format!(" {m} "))
            .unwrap_or_else(|| panic!("{m} missing:\n{text}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order:\n{text}"
    );
    // Lost agreement: nothing moves for good; lost confirmation or
    // commitment: the TTP completes the swap.
    assert!(demo(&["--interrupt-after", "accept"]).contains("outcome: restored"));
    let t = demo(&["--interrupt-after", "agreement"]);
    assert!(
        t.contains("outcome: swapped") && t.contains("recovery-request") && t.contains("admission"),
        "{t}"
    );
    assert!(demo(&["--interrupt-after", "confirmation"]).contains("outcome: swapped"));
    let j = demo(&["--json"]);
    assert!(
        j.trim_start().starts_with('{')
            && j.contains("\"outcome\":\"swapped\"")
            && j.contains("\"mtype\":\"commitment\""),
        "{j}"
    );
}
