//! Two `tenet host` processes linked over TLS: `tenet ping` and `tenet tap`
//! work across hosts exactly as on one.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::Kill;

const TENET: &str = env!("CARGO_BIN_EXE_tenet");

fn certs(dir: &Path, name: &str, domain: &str) {
    let out = Command::new(TENET)
        .args(["host", "certs", "--dir"])
        .arg(dir)
        .args(["--name", name, "--domain", domain])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tenet host` `name` listening for TLS links on a port the system picks,
/// dialing `dial` (a host started first); returns it, its socket and where
/// it listens.
fn daemon(
    dir: &Path,
    ca: &Path,
    name: &str,
    domain: &str,
    dial: Option<SocketAddr>,
) -> (Kill, PathBuf, SocketAddr) {
    let socket = dir.join(format!("{name}.sock"));
    let peers = dial.map_or(String::new(), |p| {
        format!("[[remote.peers]]\naddress = \"{p}\"\n")
    });
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {socket:?}\nstate_dir = {:?}\ndomain = \"{domain}\"\n\
             [remote]\nlisten = \"127.0.0.1:0\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n{peers}",
            dir.join(format!("{name}-state")),
            ca.join("ca.pem"),
            ca.join(format!("{name}.pem")),
            ca.join(format!("{name}.key")),
        ),
    )
    .unwrap();
    let (child, remote) = support::host(&config);
    (Kill(child), socket, remote.expect("the host listens"))
}

#[test]
fn ping_and_tap_across_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let (da, db) = ("a1a1a1a1a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2b2b2b2b2");
    certs(&ca, "a", da);
    certs(&ca, "b", db);
    let (_b, sock_b, at_b) = daemon(dir.path(), &ca, "b", db, None);
    let (_a, sock_a, _) = daemon(dir.path(), &ca, "a", da, Some(at_b));

    let mut tap = Command::new(TENET)
        .arg("--socket")
        .arg(&sock_a)
        .args(["tap", "--mtype", "echo-reply", "-c", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(tap.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();

    // The link comes up in the background; ping until it answers.
    let deadline = Instant::now() + Duration::from_secs(15);
    let remote = format!("{db}:0");
    loop {
        let out = Command::new(TENET)
            .arg("--socket")
            .arg(&sock_a)
            .args(["ping", &remote, "-c", "2", "-i", "0", "-W", "1"])
            .output()
            .unwrap();
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("reply from {remote}")), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let tapped = tap.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&tapped.stdout);
    assert!(
        text.contains(&format!("{remote} -> {da}:")) && text.contains("echo-reply"),
        "{text}"
    );
    let _ = sock_b;
}
