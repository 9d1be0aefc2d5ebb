//! Helpers shared by the daemon's integration tests.
// Each test file uses a different subset.
#![allow(dead_code)]

use std::time::Duration;

use tenet_client::Capability;
use tenet_proto::{EntityId, Message};

/// How long a test waits for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The next message for `c`, within [`WAIT`].
pub async fn recv(c: &mut Capability) -> Message {
    tokio::time::timeout(WAIT, c.receive())
        .await
        .expect("message in time")
        .unwrap()
}

/// Echoes `dst` until it answers (links come up in the background).
pub async fn echo_eventually(c: &mut Capability, dst: EntityId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match c.echo(dst, b"", Duration::from_secs(1)).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{dst} never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
