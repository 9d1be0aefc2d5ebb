//! docs/deploy.md, run literally: each machine of the walkthrough (alice,
//! bob, ttp, and the offline ca) is a network namespace of its own; alice,
//! bob and ttp are joined by a bridge in a fifth namespace, with the
//! guide's addresses, which exist only inside the namespaces. Each machine
//! has its own `/etc/tenet`, `/var/lib` and `/run` (directories of the test
//! bind-mounted there, in the mount namespace `ip netns exec` makes for each
//! command). The guide's command blocks run in order on their machine, with
//! the built `tenet` first on PATH; `install` and `service` blocks are
//! skipped (no package, no systemd: the daemons run in the foreground as the
//! guide's `daemon` blocks say), `copy` blocks are carried out. The exchange
//! must finish with the balances the guide shows, and the renewal must give
//! bob's key a new certificate. Needs root and iproute2 (`--features
//! netns`, which the test command enables).
#![cfg(feature = "netns")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pki_types::CertificateDer;
use pki_types::pem::PemObject;

const TENET: &str = env!("CARGO_BIN_EXE_tenet");
const GUIDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/deploy.md");
const MACHINES: [&str; 4] = ["alice", "bob", "ttp", "ca"];
/// The guide's addresses of the networked machines.
const ADDRESSES: [(&str, &str); 3] = [
    ("alice", "10.231.78.11"),
    ("bob", "10.231.78.12"),
    ("ttp", "10.231.78.13"),
];
/// How long a `wait` block may take to succeed, and a daemon to start.
const DEADLINE: Duration = Duration::from_secs(30);

/// One block of the guide.
#[derive(Debug)]
enum Block {
    /// `sh MACHINE [MODE]`: commands for a machine.
    Sh {
        machine: String,
        mode: Option<String>,
        text: String,
    },
    /// `copy`: `FROM:PATH TO:PATH` lines.
    Copy(String),
}

/// The guide's `sh` and `copy` blocks, in order.
fn blocks(guide: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut text = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        let words: Vec<&str> = info.split_whitespace().collect();
        match words.as_slice() {
            ["copy"] => out.push(Block::Copy(text)),
            ["sh", machine, rest @ ..] => {
                assert!(MACHINES.contains(machine), "unknown machine in ```{info}");
                assert!(rest.len() <= 1, "```{info}: one mode at most");
                out.push(Block::Sh {
                    machine: machine.to_string(),
                    mode: rest.first().map(|m| m.to_string()),
                    text,
                });
            }
            ["sh"] => panic!("a ```sh block of the guide names no machine"),
            _ => {}
        }
    }
    out
}

/// A running daemon of the guide.
struct Daemon {
    machine: String,
    command: String,
    child: Child,
}

/// The namespaces, the machines' directories and the daemons; torn down on
/// drop.
struct Lab {
    id: u32,
    root: tempfile::TempDir,
    daemons: Vec<Daemon>,
    made_etc_tenet: bool,
    /// Files a copy replaced: (destination, old contents, new contents).
    replaced: Vec<(PathBuf, Vec<u8>, Vec<u8>)>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 is installed");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn ns(&self, machine: &str) -> String {
        format!("tdep-{machine}-{}", self.id)
    }

    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let made_etc_tenet = !Path::new("/etc/tenet").exists();
        if made_etc_tenet {
            // A mount point only: each machine mounts its own over it.
            std::fs::create_dir("/etc/tenet").unwrap();
        }
        let lab = Lab {
            id,
            root: tempfile::tempdir().unwrap(),
            daemons: Vec::new(),
            made_etc_tenet,
            replaced: Vec::new(),
        };
        let switch = lab.ns("switch");
        for m in MACHINES.iter().copied().chain(["switch"]) {
            let ns = lab.ns(m);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            for d in ["etc", "var-lib", "run"] {
                std::fs::create_dir_all(lab.root.path().join(m).join(d)).unwrap();
            }
        }
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (m, addr) in ADDRESSES {
            let (inner, outer) = (format!("td{id}{}", &m[..1]), format!("ts{id}{}", &m[..1]));
            let ns = lab.ns(m);
            ip(&[
                "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer,
                "netns", &switch,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &switch, "link", "set", &outer, "master", "br0"]);
            ip(&["-n", &switch, "link", "set", &outer, "up"]);
        }
        lab
    }

    /// The machine's directory that stands for its `path`.
    fn path(&self, machine: &str, path: &str) -> PathBuf {
        let base = self.root.path().join(machine);
        for (prefix, dir) in [
            ("/etc/tenet", "etc"),
            ("/var/lib", "var-lib"),
            ("/run", "run"),
        ] {
            if let Some(rest) = path.strip_prefix(prefix) {
                return base.join(dir).join(rest.trim_start_matches('/'));
            }
        }
        panic!("{machine}:{path} is outside /etc/tenet, /var/lib and /run");
    }

    /// `sh -e -c SCRIPT` on `machine`: in its namespace, with its
    /// directories mounted, the built tenet on PATH and no TENET_* or
    /// XDG_RUNTIME_DIR from the test's environment.
    fn command(&self, machine: &str, script: &str) -> Command {
        let bin = Path::new(TENET).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let base = self.root.path().join(machine);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(machine), "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc/tenet && mount --bind \"$2\" /var/lib && \
                 mount --bind \"$3\" /run && cd / && exec sh -e -c \"$4\"",
            )
            .arg("sh")
            .args([base.join("etc"), base.join("var-lib"), base.join("run")])
            .arg(script)
            .env("PATH", path)
            .env_remove("XDG_RUNTIME_DIR");
        for (k, _) in std::env::vars() {
            if k.starts_with("TENET_") {
                c.env_remove(k);
            }
        }
        c
    }

    fn run(&self, machine: &str, script: &str) -> Output {
        self.command(machine, script).output().unwrap()
    }

    fn run_ok(&self, machine: &str, script: &str) -> String {
        let out = self.run(machine, script);
        assert!(
            out.status.success(),
            "on {machine}:\n{script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `script` until it succeeds, for at most [`DEADLINE`].
    fn wait(&self, machine: &str, script: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = self.run(machine, script);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "on {machine}, still failing after {DEADLINE:?}:\n{script}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Polling: the next try is itself the check.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts the one command of a `daemon` block on `machine`, stopping
    /// first the same daemon if it runs, and waits for its first line.
    fn daemon(&mut self, machine: &str, text: &str) {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "a daemon block holds one command: {text}");
        let command = lines[0].trim().to_owned();
        if let Some(i) = self
            .daemons
            .iter()
            .position(|d| d.machine == machine && d.command == command)
        {
            let mut old = self.daemons.remove(i);
            stop(&mut old.child);
        }
        let mut child = self
            .command(machine, &format!("exec {command}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        match rx.recv_timeout(DEADLINE) {
            Ok(line) => eprintln!("{machine}: {command}: {line}"),
            Err(e) => {
                let _ = child.kill();
                panic!("on {machine}, {command} said nothing ({e})");
            }
        }
        // The rest of its output is read and dropped by the threads.
        std::thread::spawn(move || for _ in rx {});
        self.daemons.push(Daemon {
            machine: machine.to_owned(),
            command,
            child,
        });
    }

    /// Carries out a `copy` block.
    fn copy(&mut self, text: &str) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (from, to) = line.split_once(' ').expect("copy lines are FROM TO");
            let (fm, fp) = from.split_once(':').unwrap();
            let (tm, tp) = to.trim().split_once(':').unwrap();
            assert!(!fp.ends_with(".key"), "a private key travels: {line}");
            let src = self.path(fm, fp);
            let mut dst = self.path(tm, tp);
            if tp.ends_with('/') {
                dst = dst.join(src.file_name().unwrap());
            }
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            let new = std::fs::read(&src).unwrap_or_else(|e| panic!("{line}: {e}"));
            if let Ok(old) = std::fs::read(&dst)
                && old != new
            {
                self.replaced.push((dst.clone(), old, new.clone()));
            }
            std::fs::write(&dst, new).unwrap();
        }
    }
}

/// SIGTERM, then SIGKILL if it has not stopped within 10 s.
fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            stop(&mut d.child);
        }
        for m in MACHINES.iter().copied().chain(["switch"]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(m)])
                .output();
        }
        if self.made_etc_tenet {
            let _ = std::fs::remove_dir("/etc/tenet");
        }
    }
}

/// The balances `tenet wallet balance` prints: promise -> (quantity, issuer).
fn balances(text: &str) -> HashMap<String, (u64, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [q, issuer, promise] => {
                    Some((promise.to_string(), (q.parse().ok()?, issuer.to_string())))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn the_deployment_guide_runs_on_three_machines_and_an_offline_ca() {
    let guide = std::fs::read_to_string(GUIDE).unwrap();
    let blocks = blocks(&guide);
    let mut lab = Lab::new();
    let (mut ran, mut skipped, mut copies) = (0, 0, 0);
    for b in &blocks {
        match b {
            Block::Copy(text) => {
                lab.copy(text);
                copies += 1;
            }
            Block::Sh {
                machine,
                mode,
                text,
            } => match mode.as_deref() {
                None => {
                    lab.run_ok(machine, text);
                    ran += 1;
                }
                Some("install" | "service") => skipped += 1,
                Some("daemon") => lab.daemon(machine, text),
                Some("wait") => {
                    lab.wait(machine, text);
                    ran += 1;
                }
                Some(other) => panic!("unknown block mode {other:?} on {machine}"),
            },
        }
    }
    assert!(
        ran >= 20 && copies >= 8 && skipped >= 4,
        "{ran} {copies} {skipped}"
    );
    let daemons: Vec<&str> = lab.daemons.iter().map(|d| d.machine.as_str()).collect();
    assert!(
        ["alice", "bob", "ttp"].iter().all(|m| daemons.contains(m)),
        "{daemons:?}"
    );

    // The exchange finished: 2 coffees for 1 ticket.
    let (a, b) = ("aca1aca1aca1aca1aca1aca1", "acb2acb2acb2acb2acb2acb2");
    let alice = balances(&lab.run_ok(
        "alice",
        &format!("tenet wallet balance --card {a}:0 --pin-file /etc/tenet/card.pin"),
    ));
    let bob = balances(&lab.run_ok(
        "bob",
        &format!("tenet wallet balance --card {b}:0 --pin-file /etc/tenet/card.pin"),
    ));
    assert_eq!(alice["coffee"], (3, a.to_owned()), "{alice:?}");
    assert_eq!(alice["ticket"], (1, b.to_owned()), "{alice:?}");
    assert_eq!(bob["coffee"], (2, a.to_owned()), "{bob:?}");
    assert_eq!(bob["ticket"], (2, b.to_owned()), "{bob:?}");

    // The renewal gave bob's key a new certificate, which the link uses.
    let renewed = lab
        .replaced
        .iter()
        .find(|(p, ..)| p.ends_with("bob/etc/bob.pem"))
        .expect("the renewal replaced bob.pem");
    let der = |pem: &[u8]| CertificateDer::from_pem_slice(pem).unwrap().to_vec();
    let (old, new) = (der(&renewed.1), der(&renewed.2));
    assert_ne!(old, new);
    assert!(
        tenet_pki::x509_same_key(&old, &new),
        "the renewal keeps the key"
    );

    // No key left the machine that made it: the CA's key is on the CA
    // only, and the CA holds no other key.
    for m in ["alice", "bob", "ttp"] {
        assert!(!lab.path(m, "/etc/tenet/ca.key").exists(), "{m}");
    }
    let ca_keys: Vec<_> = walk(&lab.path("ca", "/var/lib"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert_eq!(ca_keys, vec![lab.path("ca", "/var/lib/tenet-ca/ca.key")]);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
