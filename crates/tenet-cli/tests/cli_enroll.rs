//! Enrollment by certificate request from the command line: hosts make
//! their keys and requests where they run (`tenet host csr`, no CA key
//! there), the CA signs them (`tenet ca sign`), and the daemons link with
//! the certificates; renewal keeps the key; the CA refuses what it must not
//! sign and then writes nothing. Requests made by openssl(1) are checked the
//! same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use pki_types::CertificateDer;
use pki_types::pem::PemObject;

mod support;

const TENET: &str = env!("CARGO_BIN_EXE_tenet");
const DA: &str = "a1a1a1a1a1a1a1a1a1a1a1a1";
const DB: &str = "b2b2b2b2b2b2b2b2b2b2b2b2";
const TTP: &str = "777777777777777777777777:0";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tenet(args: &[&str]) -> Output {
    Command::new(TENET).args(args).output().unwrap()
}

fn run(args: &[&str]) -> String {
    let out = tenet(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args`, which must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = tenet(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

/// A CA in `dir/ca`, made on its own machine.
fn make_ca(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    run(&["ca", "init", "--dir", s(&ca), "--name", "Offline CA"]);
    ca
}

/// `name`'s machine: `tenet host csr` in its own directory, which never
/// holds the CA key; the CA signs; the certificate and the CA's certificate
/// are copied back. Returns the directory.
fn enroll(dir: &Path, ca: &Path, name: &str, domain: &str) -> PathBuf {
    let host = dir.join(name);
    let out = run(&[
        "host",
        "csr",
        "--dir",
        s(&host),
        "--name",
        name,
        "--domain",
        domain,
    ]);
    assert!(out.contains("made"), "{out}");
    let csr = host.join(format!("{name}.csr"));
    let signed = run(&[
        "ca",
        "sign",
        "--dir",
        s(ca),
        "--csr",
        s(&csr),
        "--role",
        "host",
    ]);
    assert!(signed.contains("role: host"), "{signed}");
    assert!(
        signed.contains(&format!("{domain}.domain.tenet")),
        "{signed}"
    );
    std::fs::copy(ca.join("ca.pem"), host.join("ca.pem")).unwrap();
    assert!(!host.join("ca.key").exists(), "the CA key never comes here");
    host
}

/// Starts `name`'s daemon with the files in `host`, listening on a port the
/// system picks and dialing `dial`.
fn daemon(
    host: &Path,
    name: &str,
    domain: &str,
    dial: Option<SocketAddr>,
) -> (Kill, PathBuf, SocketAddr) {
    let socket = host.join("app.sock");
    let peers = dial.map_or(String::new(), |p| {
        format!("[[remote.peers]]\naddress = \"{p}\"\n")
    });
    let config = host.join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {socket:?}\nstate_dir = {:?}\ndomain = \"{domain}\"\n\
             [remote]\nlisten = \"127.0.0.1:0\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n{peers}",
            host.join("state"),
            host.join("ca.pem"),
            host.join(format!("{name}.pem")),
            host.join(format!("{name}.key")),
        ),
    )
    .unwrap();
    let (child, remote) = support::host(&config);
    (Kill(child), socket, remote.expect("the host listens"))
}

/// Pings `dst` through the daemon at `socket` until it answers (15 s).
fn ping_until_answered(socket: &Path, dst: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = tenet(&["--socket", s(socket), "ping", dst, "-c", "1", "-W", "1"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dst} never answered: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn hosts_enrolled_by_request_link_up_and_renewal_keeps_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let alice = enroll(dir.path(), &ca, "alice", DA);
    let bob = enroll(dir.path(), &ca, "bob", DB);
    let (_b, sock_b, at_b) = daemon(&bob, "bob", DB, None);
    let (a, sock_a, _) = daemon(&alice, "alice", DA, Some(at_b));
    ping_until_answered(&sock_a, &format!("{DB}:0"));
    ping_until_answered(&sock_b, &format!("{DA}:0"));
    drop(a);

    // Renewal: a new request for the same key, signed again.
    let key = std::fs::read(alice.join("alice.key")).unwrap();
    let first = der(&alice.join("alice.pem"));
    let out = run(&[
        "host",
        "csr",
        "--dir",
        s(&alice),
        "--name",
        "alice",
        "--domain",
        DA,
    ]);
    assert!(out.contains("kept (renewal)"), "{out}");
    assert_eq!(std::fs::read(alice.join("alice.key")).unwrap(), key);
    let csr = alice.join("alice.csr");
    run(&[
        "ca",
        "sign",
        "--dir",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "host",
        "--days",
        "30",
    ]);
    let renewed = der(&alice.join("alice.pem"));
    assert_ne!(first, renewed, "a new certificate");
    assert!(tenet_pki::same_key(&first, &renewed), "for the same key");
    let (_a, sock_a, _) = daemon(&alice, "alice", DA, Some(at_b));
    ping_until_answered(&sock_a, &format!("{DB}:0"));
}

#[test]
fn the_ttp_entity_and_a_card_are_enrolled_by_request_for_signatures_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let ttp = dir.path().join("ttp");
    run(&[
        "host",
        "csr",
        "--dir",
        s(&ttp),
        "--name",
        "ttp",
        "--id",
        TTP,
    ]);
    let csr = ttp.join("ttp-entity.csr");
    let e = fails(&[
        "ca",
        "sign",
        "--dir",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "host",
    ]);
    assert!(e.contains("does not certify"), "{e}");
    let e = fails(&[
        "ca",
        "sign",
        "--dir",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "entity",
    ]);
    assert!(e.contains("--id"), "{e}");
    let other = "787878787878787878787878:0";
    let e = fails(&[
        "ca",
        "sign",
        "--dir",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "entity",
        "--id",
        other,
    ]);
    assert!(e.contains("not 787878787878787878787878:0"), "{e}");
    assert!(
        !ttp.join("ttp-entity.pem").exists(),
        "a refusal writes nothing"
    );
    let out = run(&[
        "ca",
        "sign",
        "--dir",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "entity",
        "--id",
        TTP,
    ]);
    assert!(out.contains("role: entity (signatures only"), "{out}");
    let cert = der(&ttp.join("ttp-entity.pem"));
    assert!(tenet_pki::names(&cert, TTP.parse().unwrap()));
    assert_eq!(tenet_pki::tls_key_purposes(&cert).unwrap(), None);

    // A card personalized away from the CA: its request, signed by the
    // card, the CA's signature, the certificate installed.
    let card_dir = dir.path().join("kiosk");
    std::fs::create_dir(&card_dir).unwrap();
    let store = card_dir.join("alice.card");
    let domain = "cacacacacacacacacacacaca";
    let ttp_cert = ttp.join("ttp-entity.pem");
    run(&[
        "card",
        "new",
        "--store",
        s(&store),
        "--domain",
        domain,
        "--pin",
        "1234",
        "--puk",
        "12345678",
        "--ttp",
        TTP,
        "--ttp-cert",
        s(&ttp_cert),
    ]);
    let before = run(&["card", "info", "--store", s(&store)]);
    assert!(before.contains("certificate none"), "{before}");
    let csr = card_dir.join("alice-card.csr");
    run(&["card", "csr", "--store", s(&store), "--out", s(&csr)]);
    let id = format!("{domain}:0");
    let e = fails(&[
        "ca",
        "sign",
        "--dir",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "host",
    ]);
    assert!(e.contains("does not certify"), "{e}");
    run(&[
        "ca",
        "sign",
        "--dir",
        s(&ca),
        "--csr",
        s(&csr),
        "--role",
        "card",
        "--id",
        &id,
    ]);
    let card_cert = card_dir.join("alice-card.pem");
    // A certificate for another key is refused by the card.
    let e = fails(&[
        "card",
        "install-cert",
        "--store",
        s(&store),
        "--cert",
        s(&ttp_cert),
        "--ca-cert",
        s(&ca.join("ca.pem")),
    ]);
    assert!(e.contains("not for this card"), "{e}");
    let out = run(&[
        "card",
        "install-cert",
        "--store",
        s(&store),
        "--cert",
        s(&card_cert),
        "--ca-cert",
        s(&ca.join("ca.pem")),
    ]);
    assert!(out.contains("new certificate valid"), "{out}");
    let after = run(&["card", "info", "--store", s(&store)]);
    assert!(
        after.contains("certificate ") && after.contains("(X.509 DER)"),
        "{after}"
    );
    assert_eq!(
        before.lines().find(|l| l.starts_with("public key")),
        after.lines().find(|l| l.starts_with("public key")),
        "the key never left the card"
    );
    // Another CA's certificate is refused now that the card trusts this one.
    let other_ca = make_ca(&dir.path().join("elsewhere"));
    let e = fails(&[
        "card",
        "install-cert",
        "--store",
        s(&store),
        "--cert",
        s(&card_cert),
        "--ca-cert",
        s(&other_ca.join("ca.pem")),
    ]);
    assert!(e.contains("trusts another CA"), "{e}");
}

#[test]
fn the_ca_refuses_a_tampered_oversized_or_non_pem_request_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let host = dir.path().join("alice");
    run(&[
        "host",
        "csr",
        "--dir",
        s(&host),
        "--name",
        "alice",
        "--domain",
        DA,
    ]);
    let pem = std::fs::read_to_string(host.join("alice.csr")).unwrap();
    let sign = |csr: &Path| {
        let e = fails(&[
            "ca",
            "sign",
            "--dir",
            s(&ca),
            "--csr",
            s(csr),
            "--role",
            "host",
        ]);
        assert!(
            !csr.with_extension("pem").exists(),
            "nothing written for {csr:?}"
        );
        e
    };
    // One digit of the domain asked for changed, a1a -> a1b (base64 YTFh ->
    // YTFi): still a well-formed request, but its signature no longer holds.
    assert!(pem.contains("YTFh"), "{pem}");
    let tampered = host.join("tampered.csr");
    std::fs::write(&tampered, pem.replacen("YTFh", "YTFi", 1)).unwrap();
    let e = sign(&tampered);
    assert!(e.contains("signature does not verify"), "{e}");
    let big = host.join("big.csr");
    std::fs::write(&big, pem.repeat(40)).unwrap();
    let e = sign(&big);
    assert!(e.contains("larger than 16384 bytes"), "{e}");
    let text = host.join("text.csr");
    std::fs::write(&text, "alice please sign me\n").unwrap();
    let e = sign(&text);
    assert!(e.contains("not a PEM certificate request"), "{e}");
    let e = fails(&[
        "ca",
        "sign",
        "--dir",
        s(&ca),
        "--csr",
        s(&host.join("alice.csr")),
        "--role",
        "admin",
    ]);
    assert!(e.contains("host, entity or card"), "{e}");
    let e = fails(&[
        "host",
        "csr",
        "--dir",
        s(&host),
        "--name",
        "alice",
        "--domain",
        "a1a1",
    ]);
    assert!(e.contains("a1a1"), "{e}");
}

/// A request made by openssl(1) with `extra` arguments of `openssl req`.
fn openssl_request(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let csr = dir.join(format!("{name}.csr"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(extra)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    csr
}

#[test]
fn requests_made_by_openssl_are_checked_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let san = format!("subjectAltName=DNS:host.tenet,DNS:{DA}.domain.tenet");
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-sha256",
    ];
    let sign = |csr: &Path| {
        tenet(&[
            "ca",
            "sign",
            "--dir",
            s(&ca),
            "--csr",
            s(csr),
            "--role",
            "host",
        ])
    };

    let good = openssl_request(
        dir.path(),
        "good",
        &[&p256[..], &["-addext", &san]].concat(),
    );
    let out = sign(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = CertificateDer::from(der(&good.with_extension("pem")));
    assert_eq!(
        tenet_pki::authorized_domains(&cert).unwrap(),
        vec![DA.parse().unwrap()]
    );

    let p384 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-addext",
        &san,
    ];
    let e = sign(&openssl_request(dir.path(), "p384", &p384));
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("not an ECDSA P-256 key"),
        "{e:?}"
    );

    let asks_ca = [
        &p256[..],
        &[
            "-addext",
            &san,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    ]
    .concat();
    let e = sign(&openssl_request(dir.path(), "ca", &asks_ca));
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("asks to be a CA"),
        "{e:?}"
    );
    assert!(!dir.path().join("ca.pem").exists(), "nothing written");

    let eku = [
        &p256[..],
        &["-addext", &san, "-addext", "extendedKeyUsage=codeSigning"],
    ]
    .concat();
    let e = sign(&openssl_request(dir.path(), "eku", &eku));
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("extendedKeyUsage"),
        "{e:?}"
    );

    let evil = [&p256[..], &["-addext", "subjectAltName=DNS:bank.example"]].concat();
    let e = sign(&openssl_request(dir.path(), "evil", &evil));
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("bank.example"),
        "{e:?}"
    );
}
