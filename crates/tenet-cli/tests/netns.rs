//! Two hosts in network namespaces of their own, joined by a veth pair: the
//! TLS link survives the veth being cut and restored mid-stream, with no
//! message lost or duplicated. Needs root and iproute2 (`--features netns`,
//! which the test command enables).
#![cfg(feature = "netns")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenet_client::{Capability, ClientError};
use tenet_proto::{EntityId, Mtype};

const TENET: &str = env!("CARGO_BIN_EXE_tenet");

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("iproute2 is installed");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces, the veth pair and the daemons; torn down on drop.
struct Net {
    ns: [String; 2],
    veth: [String; 2],
    daemons: Vec<Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

const ADDR: [&str; 2] = ["10.231.77.1", "10.231.77.2"];

fn net() -> Net {
    let id = std::process::id() % 100_000;
    let ns = [format!("tenet-a-{id}"), format!("tenet-b-{id}")];
    let veth = [format!("tva{id}"), format!("tvb{id}")];
    let n = Net {
        ns: ns.clone(),
        veth: veth.clone(),
        daemons: Vec::new(),
    };
    for x in &ns {
        sh(&["ip", "netns", "add", x]);
        sh(&["ip", "-n", x, "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip", "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
    ]);
    for i in 0..2 {
        sh(&["ip", "link", "set", &veth[i], "netns", &ns[i]]);
        sh(&[
            "ip",
            "-n",
            &ns[i],
            "addr",
            "add",
            &format!("{}/24", ADDR[i]),
            "dev",
            &veth[i],
        ]);
        sh(&["ip", "-n", &ns[i], "link", "set", &veth[i], "up"]);
    }
    n
}

fn start(
    n: &mut Net,
    i: usize,
    dir: &Path,
    ca: &Path,
    name: &str,
    domain: &str,
    dial: Option<&str>,
) -> PathBuf {
    let socket = dir.join(format!("{name}.sock"));
    let peers = dial.map_or(String::new(), |a| {
        format!("[[remote.peers]]\naddress = \"{a}\"\n")
    });
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {socket:?}\nstate_dir = {:?}\ndomain = \"{domain}\"\n\
             [remote]\nlisten = \"{}:7100\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n{peers}",
            dir.join(format!("{name}-state")),
            ADDR[i],
            ca.join("ca.pem"),
            ca.join(format!("{name}.pem")),
            ca.join(format!("{name}.key")),
        ),
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &n.ns[i], TENET, "host", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    n.daemons.push(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "daemon {name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    socket
}

/// Sends until the daemon stores the message: while the link is down,
/// messages wait in the table, and at its bound the sender is told "queue
/// full" and tries again a little later.
async fn send_until_stored(sender: &mut Capability, dst: EntityId, mtype: Mtype, param: Vec<u8>) {
    loop {
        match sender.send(dst, mtype, param.clone()).await {
            Ok(()) => return,
            Err(ClientError::QueueFull(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn link_between_namespaces_survives_a_cut_veth() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let (da, db) = ("a1a1a1a1a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2b2b2b2b2");
    for (name, d) in [("a", da), ("b", db)] {
        let out = Command::new(TENET)
            .args(["host", "certs", "--dir"])
            .arg(&ca)
            .args(["--name", name, "--domain", d])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let mut n = net();
    let sock_b = start(&mut n, 1, dir.path(), &ca, "b", db, None);
    let sock_a = start(
        &mut n,
        0,
        dir.path(),
        &ca,
        "a",
        da,
        Some("10.231.77.2:7100"),
    );
    let mut sender = Capability::acquire(&sock_a).await.unwrap();
    let mut receiver = Capability::acquire(&sock_b).await.unwrap();
    let host_b = format!("{db}:0").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while sender
        .echo(host_b, b"", Duration::from_secs(1))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the link never came up across the veth"
        );
    }
    const N: u32 = 300;
    /// Sent after the N: what comes before it is all that arrives of them.
    const END: Mtype = Mtype(0x8002);
    let dst = receiver.id();
    let collect = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), receiver.receive())
                .await
                .expect("all arrive")
                .unwrap();
            if m.mtype() == END {
                break;
            }
            got.push(u32::from_be_bytes(m.param[..4].try_into().unwrap()));
        }
        got
    });
    for i in 0..N {
        if i == N / 3 {
            sh(&["ip", "-n", &n.ns[0], "link", "set", &n.veth[0], "down"]);
        }
        if i == 2 * N / 3 {
            // The outage: messages wait at A for two seconds.
            tokio::time::sleep(Duration::from_secs(2)).await;
            sh(&["ip", "-n", &n.ns[0], "link", "set", &n.veth[0], "up"]);
        }
        send_until_stored(&mut sender, dst, Mtype(0x8001), i.to_be_bytes().to_vec()).await;
    }
    // One sender's messages keep their order across the link, resent ones
    // included: a duplicate would arrive before this.
    send_until_stored(&mut sender, dst, END, Vec::new()).await;
    let got = collect.await.unwrap();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "each message once, in order, across the cut"
    );
}
