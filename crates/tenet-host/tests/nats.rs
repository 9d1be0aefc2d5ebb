//! Hosts linked through a real nats-server started on a private loopback
//! port: routing with no routing table, an unknown domain, a forged src,
//! and the server restarted under traffic.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tenet_client::{Capability, ClientError};
use tenet_host::config::NatsSection;
use tenet_host::{Config, HostHandle};
use tenet_proto::notice::UndeliverableReason;
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};

mod support;
use support::{WAIT, echo_eventually, free_port};

struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    fn start(port: u16) -> Self {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--user",
                "tenet",
                "--pass",
                "s3cret",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn host(dir: &Path, name: &str, domain: Domain, port: u16) -> HostHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TENET_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let mut c = Config::default();
    c.host.socket = Some(dir.join(format!("{name}.sock")));
    c.host.state_dir = Some(dir.join(format!("{name}-state")));
    c.host.domain = Some(domain.to_string());
    c.remote.nats = Some(NatsSection {
        url: format!("nats://127.0.0.1:{port}"),
        user: Some("tenet".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    });
    tenet_host::start(&c).await.unwrap()
}

#[tokio::test]
async fn hosts_route_through_nats_and_survive_a_server_restart() {
    let port = free_port();
    let mut server = NatsServer::start(port);
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
    server.stop();
    let _server = NatsServer::start(server.port);
    echo_eventually(&mut on_a, db.owner()).await;
    for h in [a, b, c] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_message_claiming_the_receivers_own_domain_is_refused() {
    let port = free_port();
    let _server = NatsServer::start(port);
    let dir = tempfile::tempdir().unwrap();
    let da = Domain::new([0xa1; 12]);
    let a = host(dir.path(), "a", da, port).await;
    let mut watcher = Capability::acquire(a.socket_path()).await.unwrap();
    watcher
        .tap(tenet_proto::Filter::to(da.owner()))
        .await
        .unwrap();
    let rogue = async_nats::ConnectOptions::new()
        .user_and_password("tenet".into(), "s3cret".into())
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let forged = Message::new(
        EntityId::new(da, Port::new(3)),
        da.owner(),
        Mtype::ECHO_REQUEST,
        vec![],
    );
    let answer = rogue
        .request(format!("tenet.d.{da}"), forged.to_bytes().into())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer.payload);
    assert!(text.contains("claims a domain of this host"), "{text}");
    let junk = rogue
        .request(format!("tenet.d.{da}"), vec![1, 2, 3].into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&junk.payload).contains("malformed"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watcher.next())
            .await
            .is_err(),
        "nothing was stored"
    );
    a.shutdown().await;
}

/// A payload one byte above the largest message is refused by the receiving
/// host as malformed and nothing is stored; a message of ordinary size from
/// the same sender is stored and delivered right after.
#[tokio::test]
async fn an_oversized_message_through_nats_is_refused() {
    let port = free_port();
    let _server = NatsServer::start(port);
    let dir = tempfile::tempdir().unwrap();
    let da = Domain::new([0xa1; 12]);
    let a = host(dir.path(), "a", da, port).await;
    let mut target = Capability::acquire(a.socket_path()).await.unwrap();
    let peer = async_nats::ConnectOptions::new()
        .user_and_password("tenet".into(), "s3cret".into())
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let src = EntityId::new(Domain::new([0x66; 12]), Port::new(1));
    let big = Message::new(
        src,
        target.id(),
        Mtype(0x8001),
        vec![0; tenet_proto::MAX_MESSAGE_LEN - 33],
    );
    let answer = peer
        .request(format!("tenet.d.{da}"), big.to_bytes().into())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer.payload);
    assert!(
        text.contains("malformed") && text.contains("65536"),
        "{text}"
    );
    let ok = Message::new(src, target.id(), Mtype(0x8001), b"fits".to_vec());
    let answer = peer
        .request(format!("tenet.d.{da}"), ok.to_bytes().into())
        .await
        .unwrap();
    assert!(answer.payload.is_empty(), "stored");
    let m = tokio::time::timeout(WAIT, target.receive())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.src(), m.param.as_slice()), (src, &b"fits"[..]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), target.receive())
            .await
            .is_err(),
        "only that one"
    );
    a.shutdown().await;
}
