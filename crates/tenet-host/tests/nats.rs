//! Hosts linked through a real nats-server started on a private loopback
//! port: routing with no routing table, an unknown domain, a forged src,
//! and the server restarted under traffic. Then the server as
//! `docs/nats-server.example.conf` configures it (TLS, one user per host,
//! permissions binding origin to the subject): no host can send as, or
//! read for, another; a src that is not the subject's sender is dropped
//! and counted; hosts with TLS and their own credentials exchange as
//! before, and TTP replicas share their subjects in a queue group.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use futures_util::FutureExt;
use tenet_client::{Capability, ClientError};
use tenet_host::config::NatsSection;
use tenet_host::nats::NatsCounters;
use tenet_host::{Config, ConfigError, HostError, HostHandle};
use tenet_pki::{ensure_ca, issue_host};
use tenet_proto::notice::UndeliverableReason;
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};
use tokio::sync::mpsc;

mod support;
use support::{WAIT, echo_eventually, recv};

/// A nats-server with one user and no permissions, on a loopback port it
/// picked itself (`-p -1`), read back from its log: no port is guessed.
struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    fn start() -> Self {
        Self::on_port("-1")
    }

    fn on_port(port: &str) -> Self {
        let mut cmd = Command::new("nats-server");
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            port,
            "--user",
            "tenet",
            "--pass",
            "s3cret",
        ]);
        let (child, port) = ready(cmd);
        Self { child, port }
    }

    /// Stops the server and starts another on the same port: the hosts'
    /// configs name it, and they are to reconnect on their own. Nothing
    /// holds the port in between (nats-server cannot take a bound socket),
    /// so another process could take it first; the new server then fails
    /// to listen and [`ready`] says so, rather than the hosts waiting on a
    /// stranger.
    fn restart(&mut self) {
        self.stop();
        *self = Self::on_port(&self.port.to_string());
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` (a nats-server listening on 127.0.0.1) with its log piped,
/// and waits until the log says it is ready; returns it with the client
/// port its log named.
fn ready(mut cmd: Command) -> (Child, u16) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server is installed (scripts/test.sh installs it)");
    // The log says which port it got, then that it is ready. It is read to
    // the end, so the server never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    let log = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    let (mut port, mut seen) = (None, Vec::new());
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("nats-server not ready ({e}): {seen:#?}"));
        if let Some((_, p)) = line.split_once("Listening for client connections on 127.0.0.1:") {
            port = Some(p.trim().parse().unwrap());
        }
        if line.contains("Server is ready") {
            break;
        }
        seen.push(line);
    }
    (child, port.expect("the port in the log"))
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TENET_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A daemon in `dir` with software domain `domain`, linked through `nats`,
/// with a virtual card if `card` is given.
async fn host_with(
    dir: &Path,
    name: &str,
    domain: Domain,
    nats: NatsSection,
    card: Option<PathBuf>,
) -> HostHandle {
    init_log();
    let mut c = Config::default();
    c.host.socket = Some(dir.join(format!("{name}.sock")));
    c.host.state_dir = Some(dir.join(format!("{name}-state")));
    c.host.domain = Some(domain.to_string());
    c.card.virtual_store = card;
    c.remote.nats = Some(nats);
    tenet_host::start(&c).await.unwrap()
}

/// A daemon on the plain test server (one user, no permissions).
async fn host(dir: &Path, name: &str, domain: Domain, port: u16) -> HostHandle {
    let nats = NatsSection {
        url: format!("nats://127.0.0.1:{port}"),
        user: Some("tenet".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    host_with(dir, name, domain, nats, None).await
}

/// A raw client of the plain test server whose inboxes are where hosts
/// answer (`tenet.i.`).
async fn plain_client(port: u16) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .user_and_password("tenet".into(), "s3cret".into())
        .custom_inbox_prefix("tenet.i.test")
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn hosts_route_through_nats_and_survive_a_server_restart() {
    let mut server = NatsServer::start();
    let port = server.port;
    let dir = tempfile::tempdir().unwrap();
    let (da, db, dc) = (
        Domain::new([0xa1; 12]),
        Domain::new([0xb2; 12]),
        Domain::new([0xc3; 12]),
    );
    let a = host(dir.path(), "a", da, port).await;
    let b = host(dir.path(), "b", db, port).await;
    let c = host(dir.path(), "c", dc, port).await;
    let mut on_a = Capability::acquire(a.socket_path()).await.unwrap();
    let mut on_b = Capability::acquire(b.socket_path()).await.unwrap();
    echo_eventually(&mut on_a, db.owner()).await;
    echo_eventually(&mut on_a, dc.owner()).await;
    echo_eventually(&mut on_b, dc.owner()).await;
    on_b.send(on_a.id(), Mtype(0x8001), b"via nats".to_vec())
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, on_a.receive())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.src(), m.param.as_slice()), (on_b.id(), &b"via nats"[..]));

    // Nobody serves this domain: no responder, so undeliverable.
    let nobody = Domain::new([0x99; 12]).owner();
    let err = on_a.echo(nobody, b"", WAIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Undeliverable {
                reason: UndeliverableReason::NO_ROUTE,
                ..
            }
        ),
        "{err}"
    );

    // The server goes away and comes back; the clients reconnect.
    server.restart();
    echo_eventually(&mut on_a, db.owner()).await;
    for h in [a, b, c] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_message_claiming_the_receivers_own_domain_is_refused() {
    let server = NatsServer::start();
    let port = server.port;
    let dir = tempfile::tempdir().unwrap();
    let da = Domain::new([0xa1; 12]);
    let a = host(dir.path(), "a", da, port).await;
    let mut watcher = Capability::acquire(a.socket_path()).await.unwrap();
    watcher
        .tap(tenet_proto::Filter::to(da.owner()))
        .await
        .unwrap();
    let rogue = plain_client(port).await;
    let forged = Message::new(
        EntityId::new(da, Port::new(3)),
        da.owner(),
        Mtype::ECHO_REQUEST,
        vec![],
    );
    // On the subject of A's own domain as sender (the server's permissions
    // would not let another host publish there; this one has none).
    let subject = format!("tenet.d.{da}.s.{da}");
    let answer = rogue
        .request(subject.clone(), forged.to_bytes().into())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer.payload);
    assert!(text.contains("claims a domain of this host"), "{text}");
    let junk = rogue.request(subject, vec![1, 2, 3].into()).await.unwrap();
    assert!(String::from_utf8_lossy(&junk.payload).contains("malformed"));
    // Counted as NATS's, and no TLS link counted anything.
    let st = a.nats_stats().unwrap();
    assert_eq!((st.forged_dropped, st.malformed, st.received), (1, 1, 0));
    assert_eq!(a.remote_stats(), None);
    // Nothing was stored: the host answered each request after deciding on
    // it, so a copy of either would be on the tap before the copy of an
    // honest message sent now.
    let other = Domain::new([0x66; 12]);
    let honest = Message::new(
        EntityId::new(other, Port::new(1)),
        da.owner(),
        Mtype(0x8001),
        b"honest".to_vec(),
    );
    let answer = rogue
        .request(format!("tenet.d.{da}.s.{other}"), honest.to_bytes().into())
        .await
        .unwrap();
    assert!(answer.payload.is_empty(), "stored");
    match tokio::time::timeout(WAIT, watcher.next())
        .await
        .unwrap()
        .unwrap()
    {
        tenet_client::Incoming::Tapped { message, .. } => assert_eq!(message, honest),
        other => panic!("{other:?}"),
    }
    a.shutdown().await;
}

/// A payload one byte above the largest message is refused by the receiving
/// host as malformed and nothing is stored; a message of ordinary size from
/// the same sender is stored and delivered right after.
#[tokio::test]
async fn an_oversized_message_through_nats_is_refused() {
    let server = NatsServer::start();
    let port = server.port;
    let dir = tempfile::tempdir().unwrap();
    let da = Domain::new([0xa1; 12]);
    let a = host(dir.path(), "a", da, port).await;
    let mut target = Capability::acquire(a.socket_path()).await.unwrap();
    let peer = plain_client(port).await;
    let src = EntityId::new(Domain::new([0x66; 12]), Port::new(1));
    let subject = format!("tenet.d.{da}.s.{}", src.domain());
    let big = Message::new(
        src,
        target.id(),
        Mtype(0x8001),
        vec![0; tenet_proto::MAX_MESSAGE_LEN - 33],
    );
    let answer = peer
        .request(subject.clone(), big.to_bytes().into())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer.payload);
    assert!(
        text.contains("malformed") && text.contains("65536"),
        "{text}"
    );
    for param in [&b"fits"[..], b"after"] {
        let ok = Message::new(src, target.id(), Mtype(0x8001), param.to_vec());
        let answer = peer
            .request(subject.clone(), ok.to_bytes().into())
            .await
            .unwrap();
        assert!(answer.payload.is_empty(), "stored");
    }
    // Only that one: one sender's messages keep their order, so anything
    // else stored from it would come between these two.
    for param in [&b"fits"[..], b"after"] {
        let m = recv(&mut target).await;
        assert_eq!((m.src(), m.param.as_slice()), (src, param));
    }
    a.shutdown().await;
}

// ------------------------------------------------ the example server config

const ALICE: Domain = Domain::new([0xa1; 12]);
const ALICE_CARD: Domain = Domain::new([0x4a; 12]);
const BOB: Domain = Domain::new([0xb2; 12]);
const TTP: Domain = Domain::new([0xc3; 12]);
/// Bob's public NKey in the example; the test puts a fresh one in its place.
const EXAMPLE_BOB_NKEY: &str = "UCQKSPUQ7IG7UENCAPPF65Q3IGSOXTIUSPZK6NAWBXNOXHHMAX54WWUV";

/// nats-server running `docs/nats-server.example.conf` in a directory of its
/// own holding the certificates the config names, on a port it picked.
struct Secured {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// Bob's NKey seed file.
    bob_seed: PathBuf,
}

/// `text` with its one occurrence of `from` replaced.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the example has one {from:?}"
    );
    text.replacen(from, to, 1)
}

/// The server's certificate, signed by the CA in `certs`, for the name and
/// the address the hosts connect to.
fn server_certificate(certs: &Path) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(&read("ca.pem"), KeyPair::from_pem(&read("ca.key")).unwrap())
            .unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(certs.join("nats-server.pem"), cert.pem()).unwrap();
    std::fs::write(certs.join("nats-server.key"), key.serialize_pem()).unwrap();
}

impl Secured {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        ensure_ca(&certs, "test CA").unwrap();
        server_certificate(&certs);
        issue_host(&certs, "alice", &[ALICE, ALICE_CARD]).unwrap();
        issue_host(&certs, "bob", &[BOB]).unwrap();
        issue_host(&certs, "ttp", &[TTP]).unwrap();
        let bob = nkeys::KeyPair::new_user();
        let bob_seed = dir.path().join("bob.nk");
        std::fs::write(&bob_seed, bob.seed().unwrap()).unwrap();
        let example = include_str!("../../../docs/nats-server.example.conf");
        let conf = replace_once(example, "port: 4222", "port: -1");
        let conf = replace_once(&conf, EXAMPLE_BOB_NKEY, &bob.public_key());
        std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
        let mut cmd = Command::new("nats-server");
        cmd.args(["-c", "nats.conf"]).current_dir(dir.path());
        let (child, port) = ready(cmd);
        Self {
            child,
            port,
            dir,
            bob_seed,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn cert(&self, file: &str) -> PathBuf {
        self.dir.path().join("certs").join(file)
    }

    /// `[remote.nats]` with TLS and the host certificate `name`.
    fn tls(&self, name: &str) -> NatsSection {
        NatsSection {
            url: self.url(),
            tls_ca: Some(self.cert("ca.pem")),
            tls_cert: Some(self.cert(&format!("{name}.pem"))),
            tls_key: Some(self.cert(&format!("{name}.key"))),
            tls_required: Some(true),
            ..Default::default()
        }
    }

    /// Alice's host: user and password.
    fn alice(&self) -> NatsSection {
        NatsSection {
            user: Some("alice".into()),
            password: Some("alice-secret".into()),
            ..self.tls("alice")
        }
    }

    /// Bob's host: an NKey.
    fn bob(&self) -> NatsSection {
        NatsSection {
            nkey_seed_file: Some(self.bob_seed.clone()),
            ..self.tls("bob")
        }
    }

    /// A TTP replica, `ttp1` or `ttp2`, in the queue group.
    fn ttp(&self, user: &str) -> NatsSection {
        NatsSection {
            user: Some(user.into()),
            password: Some(format!("{user}-secret")),
            queue: Some("ttp".into()),
            ..self.tls("ttp")
        }
    }

    /// A client with Bob's credentials and certificate speaking NATS by hand;
    /// the server's errors to it come out of the receiver.
    async fn raw_bob(&self) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let seed = std::fs::read_to_string(&self.bob_seed).unwrap();
        self.raw(async_nats::ConnectOptions::with_nkey(seed), "bob", BOB)
            .await
    }

    /// A client logging in with `login`, presenting the host certificate
    /// `cert`, with its inboxes below those of the host of `domain`.
    async fn raw(
        &self,
        login: async_nats::ConnectOptions,
        cert: &str,
        domain: Domain,
    ) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = login
            .add_root_certificates(self.cert("ca.pem"))
            .add_client_certificate(
                self.cert(&format!("{cert}.pem")),
                self.cert(&format!("{cert}.key")),
            )
            .require_tls(true)
            .custom_inbox_prefix(format!("tenet.i.{domain}"))
            .event_callback(move |e| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = e {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(self.url())
            .await
            .unwrap();
        (client, rx)
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the server to report a permissions violation for `what`
/// ("publish" or "subscription") on `subject`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| panic!("no permissions violation for {what} to {subject}"))
            .expect("client alive");
        let lower = e.to_lowercase();
        if lower.contains(&format!("permissions violation for {what}"))
            && e.contains(&format!("\"{subject}\""))
        {
            return;
        }
    }
}

/// A card store in `dir` personalized for Alice's card domain.
fn alice_card(dir: &Path) -> PathBuf {
    let path = dir.join("alice-card.store");
    let store = tenet_card::FileStore::create(&path, 16 * 1024).unwrap();
    let p = tenet_card::Personalization {
        domain: ALICE_CARD,
        pin: b"1234".to_vec(),
        puk: b"12345678".to_vec(),
    };
    drop(
        tenet_card::Card::personalize(
            store,
            &p,
            Default::default(),
            Box::new(tenet_card::SeededEntropy::new(1)),
        )
        .unwrap(),
    );
    path
}

/// Bob, with his own credentials, publishes as the TTP, as Alice's host and
/// as Alice's card on their subjects: the server refuses each publish, and
/// Alice's host gets only what Bob sends as himself, sent after them.
#[tokio::test]
async fn a_host_cannot_publish_as_another_domain() {
    let s = Secured::start();
    let a = host_with(s.dir.path(), "a", ALICE, s.alice(), None).await;
    let mut target = Capability::acquire(a.socket_path()).await.unwrap();
    let (bob, mut errors) = s.raw_bob().await;
    for claimed in [TTP, ALICE, ALICE_CARD] {
        let subject = format!("tenet.d.{ALICE}.s.{claimed}");
        let forged = Message::new(
            EntityId::new(claimed, Port::new(0)),
            target.id(),
            Mtype(0x8001),
            b"forged".to_vec(),
        );
        bob.publish(subject.clone(), forged.to_bytes().into())
            .await
            .unwrap();
        violation(&mut errors, "publish", &subject).await;
    }
    // One connection's messages keep their order: had a forgery gone
    // through, it would arrive before this one.
    let honest = Message::new(
        EntityId::new(BOB, Port::new(1)),
        target.id(),
        Mtype(0x8001),
        b"honest".to_vec(),
    );
    bob.publish(format!("tenet.d.{ALICE}.s.{BOB}"), honest.to_bytes().into())
        .await
        .unwrap();
    let m = recv(&mut target).await;
    assert_eq!(
        (m.src(), m.param.as_slice()),
        (honest.src(), &b"honest"[..])
    );
    let st = a.nats_stats().unwrap();
    assert_eq!((st.received, st.forged_dropped), (1, 0), "{st:?}");
    a.shutdown().await;
}

/// Bob's credentials cannot subscribe to Alice's subjects, her inboxes, her
/// outgoing traffic or everything: the server refuses each subscription,
/// and none of them sees the traffic between the two hosts.
#[tokio::test]
async fn a_host_cannot_subscribe_to_another_hosts_subjects() {
    let s = Secured::start();
    let a = host_with(s.dir.path(), "a", ALICE, s.alice(), None).await;
    let b = host_with(s.dir.path(), "b", BOB, s.bob(), None).await;
    let (spy, mut errors) = s.raw_bob().await;
    let mut subs = Vec::new();
    for subject in [
        format!("tenet.d.{ALICE}.>"),
        format!("tenet.d.{ALICE}.s.{BOB}"),
        format!("tenet.i.{ALICE}.>"),
        format!("tenet.d.*.s.{ALICE}"),
        "tenet.>".to_owned(),
        ">".to_owned(),
    ] {
        subs.push(spy.subscribe(subject.clone()).await.unwrap());
        violation(&mut errors, "subscription", &subject).await;
    }
    // Traffic both ways. Each second echo starts only after the answer to
    // the first request was sent (a host answers requests in order), so
    // when the echoes are done every message on Alice's data subjects and
    // inboxes so far has passed the server.
    let mut on_a = Capability::acquire(a.socket_path()).await.unwrap();
    let mut on_b = Capability::acquire(b.socket_path()).await.unwrap();
    for _ in 0..2 {
        on_a.echo(BOB.owner(), b"a", WAIT).await.unwrap();
        on_b.echo(ALICE.owner(), b"b", WAIT).await.unwrap();
    }
    // The server sends a subscriber what it delivered before its answer to
    // this ping.
    spy.flush().await.unwrap();
    for (i, sub) in subs.iter_mut().enumerate() {
        assert!(
            futures_util::StreamExt::next(sub).now_or_never().is_none(),
            "subscription {i} got a message"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Bob may publish on his own sender subject; a message there whose src is
/// not in Bob's domain (the TTP's, Alice's own, Alice's card's), or whose
/// dst is not in the subject's destination domain, is refused by Alice's
/// host, counted in its NATS counters, and never delivered.
#[tokio::test]
async fn a_message_whose_src_is_not_the_subjects_sender_is_dropped_and_counted() {
    let s = Secured::start();
    let a = host_with(s.dir.path(), "a", ALICE, s.alice(), None).await;
    let mut target = Capability::acquire(a.socket_path()).await.unwrap();
    let (bob, _errors) = s.raw_bob().await;
    let subject = format!("tenet.d.{ALICE}.s.{BOB}");
    let ask = |m: Message| {
        let (bob, subject) = (bob.clone(), subject.clone());
        async move {
            let answer = tokio::time::timeout(WAIT, bob.request(subject, m.to_bytes().into()))
                .await
                .expect("answered in time")
                .unwrap();
            String::from_utf8_lossy(&answer.payload).into_owned()
        }
    };
    for src in [
        TTP.owner(),
        EntityId::new(ALICE, Port::new(1)),
        ALICE_CARD.owner(),
    ] {
        let forged = Message::new(src, target.id(), Mtype(0x8001), b"forged".to_vec());
        let text = ask(forged).await;
        assert!(
            text.contains("not in a domain of the sending host"),
            "{text}"
        );
    }
    let elsewhere = Message::new(
        EntityId::new(BOB, Port::new(1)),
        TTP.owner(),
        Mtype::ECHO_REQUEST,
        vec![],
    );
    let text = ask(elsewhere).await;
    assert!(text.contains("not in the subject's domain"), "{text}");
    assert_eq!(
        a.nats_stats().unwrap(),
        NatsCounters {
            forged_dropped: 3,
            malformed: 1,
            ..Default::default()
        }
    );
    let honest = Message::new(
        EntityId::new(BOB, Port::new(1)),
        target.id(),
        Mtype(0x8001),
        b"honest".to_vec(),
    );
    assert_eq!(ask(honest.clone()).await, "", "stored");
    let m = recv(&mut target).await;
    assert_eq!(
        (m.src(), m.param.as_slice()),
        (honest.src(), &b"honest"[..])
    );
    assert_eq!(a.nats_stats().unwrap().received, 1);
    a.shutdown().await;
}

/// Alice's host (password, a card as its second domain) and Bob's (NKey),
/// both over TLS with their host certificates, reach each other's host,
/// apps and card under the example's permissions.
#[tokio::test]
async fn hosts_exchange_through_nats_with_tls_and_per_user_credentials() {
    let s = Secured::start();
    let card = alice_card(s.dir.path());
    let a = host_with(s.dir.path(), "a", ALICE, s.alice(), Some(card)).await;
    let b = host_with(s.dir.path(), "b", BOB, s.bob(), None).await;
    let mut on_a = Capability::acquire(a.socket_path()).await.unwrap();
    let mut on_b = Capability::acquire(b.socket_path()).await.unwrap();
    on_a.echo(BOB.owner(), b"to bob", WAIT).await.unwrap();
    on_b.echo(ALICE.owner(), b"to alice", WAIT).await.unwrap();
    // The card answers from its own domain, on its own sender subject.
    on_b.echo(ALICE_CARD.owner(), b"to the card", WAIT)
        .await
        .unwrap();
    on_b.send(on_a.id(), Mtype(0x8001), b"from b".to_vec())
        .await
        .unwrap();
    let m = recv(&mut on_a).await;
    assert_eq!((m.src(), m.param.as_slice()), (on_b.id(), &b"from b"[..]));
    on_a.send(on_b.id(), Mtype(0x8001), b"from a".to_vec())
        .await
        .unwrap();
    let m = recv(&mut on_b).await;
    assert_eq!((m.src(), m.param.as_slice()), (on_a.id(), &b"from a"[..]));
    for h in [&a, &b] {
        let st = h.nats_stats().unwrap();
        assert!(st.received >= 2, "{st:?}");
        assert_eq!(
            (
                st.forged_dropped,
                st.guard_dropped,
                st.malformed,
                st.not_relayed
            ),
            (0, 0, 0, 0),
            "{st:?}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Two TTP replicas (one domain, users ttp1 and ttp2, queue group "ttp")
/// answer the TTP's host entity between them, each request once.
#[tokio::test]
async fn ttp_replicas_share_the_ttps_subjects_in_a_queue_group() {
    let s = Secured::start();
    let t1 = host_with(s.dir.path(), "ttp1", TTP, s.ttp("ttp1"), None).await;
    let t2 = host_with(s.dir.path(), "ttp2", TTP, s.ttp("ttp2"), None).await;
    let a = host_with(s.dir.path(), "a", ALICE, s.alice(), None).await;
    let mut on_a = Capability::acquire(a.socket_path()).await.unwrap();
    for _ in 0..20 {
        on_a.echo(TTP.owner(), b"", WAIT).await.unwrap();
    }
    let (r1, r2) = (
        t1.nats_stats().unwrap().received,
        t2.nats_stats().unwrap().received,
    );
    // Both serve (the server picks at random: one idle in 20 has odds of
    // 2 in a million).
    assert_eq!(r1 + r2, 20);
    assert!(r1 > 0 && r2 > 0, "{r1} {r2}");
    // A replica's user may subscribe to the TTP's subjects only in the
    // queue group, so none gets a copy of every request by mistake.
    let login =
        async_nats::ConnectOptions::with_user_and_password("ttp1".into(), "ttp1-secret".into());
    let (replica, mut errors) = s.raw(login, "ttp", TTP).await;
    let subject = format!("tenet.d.{TTP}.s.*");
    let _copy = replica.subscribe(subject.clone()).await.unwrap();
    violation(&mut errors, "subscription", &subject).await;
    for h in [t1, t2, a] {
        h.shutdown().await;
    }
}

/// A TLS or credential file that is missing or holds the wrong thing is a
/// config error naming its key and the file, before any connection.
#[tokio::test]
async fn missing_or_wrong_nats_files_are_config_errors() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let not_a_seed = dir.path().join("not-a-seed");
    std::fs::write(&not_a_seed, "SAAGNOTASEED\n").unwrap();
    let base = NatsSection {
        url: "nats://127.0.0.1:1".into(),
        ..Default::default()
    };
    let cases = [
        (
            NatsSection {
                tls_ca: Some(missing.clone()),
                ..base.clone()
            },
            "remote.nats.tls_ca",
        ),
        (
            NatsSection {
                tls_cert: Some(missing.clone()),
                tls_key: Some(missing.clone()),
                ..base.clone()
            },
            "remote.nats.tls_cert",
        ),
        (
            NatsSection {
                nkey_seed_file: Some(missing.clone()),
                ..base.clone()
            },
            "remote.nats.nkey_seed_file",
        ),
        (
            NatsSection {
                nkey_seed_file: Some(not_a_seed.clone()),
                ..base.clone()
            },
            "remote.nats.nkey_seed_file",
        ),
        (
            NatsSection {
                creds: Some(missing.clone()),
                ..base.clone()
            },
            "remote.nats.creds",
        ),
    ];
    for (i, (nats, key)) in cases.into_iter().enumerate() {
        let file = nats
            .tls_ca
            .clone()
            .or(nats.tls_cert.clone())
            .or(nats.nkey_seed_file.clone())
            .or(nats.creds.clone())
            .unwrap();
        let mut c = Config::default();
        c.host.socket = Some(dir.path().join(format!("{i}.sock")));
        c.host.state_dir = Some(dir.path().join(format!("{i}-state")));
        c.remote.nats = Some(nats);
        let err = tenet_host::start(&c).await.err().expect("refused");
        assert!(
            matches!(&err, HostError::Config(ConfigError::Value { key: k, .. }) if *k == key),
            "{key}: {err}"
        );
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
    }
}
