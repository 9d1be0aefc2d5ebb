//! A plugged-in service speaks only as the host entity: a message it hands
//! the host with another sender is dropped, so a service cannot pose as an
//! app or a card.

use std::sync::mpsc::Receiver;

use tenet_client::Capability;
use tenet_host::plugin::{EntityService, HostSender};
use tenet_host::{Config, HostBuilder};
use tenet_proto::{Domain, EntityId, Message, Mtype, Port};

mod support;
use support::recv;

const ASK: Mtype = Mtype(0x8a79);
const ANSWER: Mtype = Mtype(0x8a7a);

/// Answers each request twice: first as another entity (forged), then as
/// the host entity.
struct Forger {
    claimed: EntityId,
}

impl EntityService for Forger {
    fn name(&self) -> &str {
        "Forger"
    }

    fn mtypes(&self) -> Vec<Mtype> {
        vec![ASK]
    }

    fn run(self: Box<Self>, inbox: Receiver<Message>, host: HostSender) {
        while let Ok(m) = inbox.recv() {
            host.send([
                Message::new(self.claimed, m.src(), ANSWER, b"forged".to_vec()),
                Message::new(host.id(), m.src(), ANSWER, b"genuine".to_vec()),
            ]);
        }
    }
}

#[tokio::test]
async fn a_service_cannot_send_as_another_entity() {
    let dir = tempfile::tempdir().unwrap();
    let d = Domain::new([0x5e; 12]);
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.path().join("host.sock"));
    cfg.host.state_dir = Some(dir.path().join("state"));
    cfg.host.domain = Some(d.to_string());
    let claimed = EntityId::new(d, Port::new(77));
    let h = HostBuilder::new(&cfg)
        .service(Box::new(Forger { claimed }))
        .start()
        .await
        .unwrap();
    let mut app = Capability::acquire(h.socket_path()).await.unwrap();
    app.send(d.owner(), ASK, Vec::new()).await.unwrap();
    let first = recv(&mut app).await;
    assert_eq!(
        (first.src(), first.param.as_slice()),
        (d.owner(), &b"genuine"[..])
    );
    h.shutdown().await;
}
