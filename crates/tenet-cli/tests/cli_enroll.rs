//! Enrollment by certificate request from the command line: hosts make
//! their keys and requests where they run (`tenet host csr`, no CA key
//! there), the CA signs them (`tenet ca sign`), and the daemons link with
//! the certificates; renewal keeps the key; the CA refuses what it must not
//! sign and then writes nothing. Requests made by openssl(1) are checked the
//! same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pki_types::CertificateDer;
use pki_types::pem::PemObject;

mod support;

use support::Kill;

const TENET: &str = env!("CARGO_BIN_EXE_tenet");
const DA: &str = "a1a1a1a1a1a1a1a1a1a1a1a1";
const DB: &str = "b2b2b2b2b2b2b2b2b2b2b2b2";
const TTP: &str = "777777777777777777777777:0";

fn tenet(args: &[&str]) -> Output {
    Command::new(TENET).args(args).output().unwrap()
}

/// The stdout of `out`, which must have succeeded.
fn run(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of `out`, which must have failed.
fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tenet host csr` in `dir` for `name`, asking for `what`.
fn csr(dir: &Path, name: &str, what: &[&str]) -> Output {
    tenet(&[&["host", "csr", "--dir", s(dir), "--name", name][..], what].concat())
}

/// `tenet ca sign` of `csr` by the CA in `ca` for `role`, with `extra`.
fn sign(ca: &Path, csr: &Path, role: &str, extra: &[&str]) -> Output {
    let args = [
        "ca",
        "sign",
        "--dir",
        s(ca),
        "--csr",
        s(csr),
        "--role",
        role,
    ];
    tenet(&[&args[..], extra].concat())
}

/// `tenet card install-cert` of `cert` and `ca_cert` on the card `store`.
fn install(store: &Path, cert: &Path, ca_cert: &Path) -> Output {
    tenet(&[
        "card",
        "install-cert",
        "--store",
        s(store),
        "--cert",
        s(cert),
        "--ca-cert",
        s(ca_cert),
    ])
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
    run(tenet(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--name",
        "Offline CA",
    ]));
    ca
}

/// `name`'s machine: `tenet host csr` in its own directory, which never
/// holds the CA key; the CA signs; the certificate and the CA's certificate
/// are copied back. Returns the directory.
fn enroll(dir: &Path, ca: &Path, name: &str, domain: &str) -> PathBuf {
    let host = dir.join(name);
    let out = run(csr(&host, name, &["--domain", domain]));
    assert!(out.contains("made"), "{out}");
    let csr = host.join(format!("{name}.csr"));
    let signed = run(sign(ca, &csr, "host", &[]));
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
    let out = run(csr(&alice, "alice", &["--domain", DA]));
    assert!(out.contains("kept (renewal)"), "{out}");
    assert_eq!(std::fs::read(alice.join("alice.key")).unwrap(), key);
    let csr = alice.join("alice.csr");
    run(sign(&ca, &csr, "host", &["--days", "30"]));
    let renewed = der(&alice.join("alice.pem"));
    assert_ne!(first, renewed, "a new certificate");
    assert!(
        tenet_pki::x509_same_key(&first, &renewed),
        "for the same key"
    );
    let (_a, sock_a, _) = daemon(&alice, "alice", DA, Some(at_b));
    ping_until_answered(&sock_a, &format!("{DB}:0"));
}

#[test]
fn the_ttp_entity_and_a_card_are_enrolled_by_request_for_signatures_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let ttp = dir.path().join("ttp");
    run(csr(&ttp, "ttp", &["--id", TTP]));
    let csr = ttp.join("ttp-entity.csr");
    let e = fails(sign(&ca, &csr, "host", &[]));
    assert!(e.contains("does not certify"), "{e}");
    let e = fails(sign(&ca, &csr, "entity", &[]));
    assert!(e.contains("--id"), "{e}");
    let other = "787878787878787878787878:0";
    let e = fails(sign(&ca, &csr, "entity", &["--id", other]));
    assert!(e.contains("not 787878787878787878787878:0"), "{e}");
    assert!(
        !ttp.join("ttp-entity.pem").exists(),
        "a refusal writes nothing"
    );
    let out = run(sign(&ca, &csr, "entity", &["--id", TTP]));
    assert!(out.contains("role: entity (signatures only"), "{out}");
    let cert = der(&ttp.join("ttp-entity.pem"));
    let cv = tenet_pki::cv::from_pem(&std::fs::read(ttp.join("ttp-entity.pem")).unwrap()).unwrap();
    assert!(tenet_pki::names(&cv, TTP.parse().unwrap()));
    assert_eq!(tenet_pki::tls_key_purposes(&cert).unwrap(), None);

    // A card personalized away from the CA: its request, signed by the
    // card, the CA's signature, the certificate installed.
    let card_dir = dir.path().join("kiosk");
    std::fs::create_dir(&card_dir).unwrap();
    let store = card_dir.join("alice.card");
    let domain = "cacacacacacacacacacacaca";
    let ttp_cert = ttp.join("ttp-entity.pem");
    run(tenet(&[
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
    ]));
    let before = run(tenet(&["card", "info", "--store", s(&store)]));
    assert!(before.contains("certificate none"), "{before}");
    let csr = card_dir.join("alice-card.csr");
    run(tenet(&[
        "card",
        "csr",
        "--store",
        s(&store),
        "--out",
        s(&csr),
    ]));
    let id = format!("{domain}:0");
    let e = fails(sign(&ca, &csr, "host", &[]));
    assert!(e.contains("does not certify"), "{e}");
    run(sign(&ca, &csr, "card", &["--id", &id]));
    let card_cert = card_dir.join("alice-card.pem");
    // A certificate for another key is refused by the card.
    let e = fails(install(&store, &ttp_cert, &ca.join("ca.pem")));
    assert!(e.contains("not for this card"), "{e}");
    let out = run(install(&store, &card_cert, &ca.join("ca.pem")));
    assert!(out.contains("new certificate valid"), "{out}");
    let after = run(tenet(&["card", "info", "--store", s(&store)]));
    assert!(
        after.contains("certificate ") && after.contains("(CV): holder"),
        "{after}"
    );
    assert_eq!(
        before.lines().find(|l| l.starts_with("public key")),
        after.lines().find(|l| l.starts_with("public key")),
        "the key never left the card"
    );
    // Another CA's certificate is refused now that the card trusts this one.
    let other_ca = make_ca(&dir.path().join("elsewhere"));
    let e = fails(install(&store, &card_cert, &other_ca.join("ca.pem")));
    assert!(e.contains("trusts another CA"), "{e}");
}

#[test]
fn the_ca_refuses_a_tampered_oversized_or_non_pem_request_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let host = dir.path().join("alice");
    run(csr(&host, "alice", &["--domain", DA]));
    let pem = std::fs::read_to_string(host.join("alice.csr")).unwrap();
    let refused = |csr: &Path| {
        let e = fails(sign(&ca, csr, "host", &[]));
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
    let e = refused(&tampered);
    assert!(e.contains("signature does not verify"), "{e}");
    let big = host.join("big.csr");
    std::fs::write(&big, pem.repeat(40)).unwrap();
    let e = refused(&big);
    assert!(e.contains("larger than 16384 bytes"), "{e}");
    let text = host.join("text.csr");
    std::fs::write(&text, "alice please sign me\n").unwrap();
    let e = refused(&text);
    assert!(e.contains("not a PEM certificate request"), "{e}");
    let e = fails(sign(&ca, &host.join("alice.csr"), "admin", &[]));
    assert!(e.contains("host, entity or card"), "{e}");
    let e = fails(csr(&host, "alice", &["--domain", "a1a1"]));
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
    let curve = |c| ["-newkey", "ec", "-pkeyopt", c, "-sha256"];
    let p256 = curve("ec_paramgen_curve:P-256");
    let good = openssl_request(
        dir.path(),
        "good",
        &[&p256[..], &["-addext", &san]].concat(),
    );
    run(sign(&ca, &good, "host", &[]));
    let cert = CertificateDer::from(der(&good.with_extension("pem")));
    let domains = tenet_pki::authorized_domains(&cert).unwrap();
    assert_eq!(domains, vec![DA.parse().unwrap()]);

    let refused: [(&str, Vec<&str>, &str); 4] = [
        (
            "p384",
            [&curve("ec_paramgen_curve:P-384")[..], &["-addext", &san]].concat(),
            "not an ECDSA P-256 key",
        ),
        (
            "ca",
            [
                &p256[..],
                &[
                    "-addext",
                    &san,
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                ],
            ]
            .concat(),
            "asks to be a CA",
        ),
        (
            "eku",
            [
                &p256[..],
                &["-addext", &san, "-addext", "extendedKeyUsage=codeSigning"],
            ]
            .concat(),
            "extendedKeyUsage",
        ),
        (
            "evil",
            [&p256[..], &["-addext", "subjectAltName=DNS:bank.example"]].concat(),
            "bank.example",
        ),
    ];
    for (name, args, why) in refused {
        let csr = openssl_request(dir.path(), name, &args);
        let e = fails(sign(&ca, &csr, "host", &[]));
        assert!(e.contains(why), "{name}: {e}");
        assert!(
            !csr.with_extension("pem").exists(),
            "{name}: nothing written"
        );
    }
}
