//! A private nats-server on a loopback port it chooses itself.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Error, WAIT};

/// A `nats-server` child process on `127.0.0.1`, killed when dropped.
///
/// It listens on a port of its own choosing (`-p -1`) and writes it to a
/// ports file (`--ports_file_dir`), which is where [`NatsServer::url`]
/// comes from: no port is guessed.
pub struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    /// Starts `nats-server` (found on `PATH`), its ports file in `dir`,
    /// and waits until it accepts connections. [`Error::NatsSpawn`] if it
    /// could not run at all (not installed).
    pub async fn start(dir: &Path) -> Result<Self, Error> {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::NatsSpawn)?;
        let mut server = Self {
            child,
            url: String::new(),
        };
        let ports = dir.join(format!("nats-server_{}.ports", server.child.id()));
        let deadline = tokio::time::Instant::now() + WAIT;
        server.url = loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Error::NatsStart(format!("it exited ({status})")));
            }
            if let Some(url) = client_url(&ports) {
                break url;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::NatsStart(format!(
                    "no client port in {} after {WAIT:?}",
                    ports.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let addr = server.url.trim_start_matches("nats://").to_owned();
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::NatsStart(format!("nothing accepts on {addr}")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(server)
    }

    /// The URL clients connect to, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The first client URL in a nats-server ports file (`{"nats":
/// ["nats://127.0.0.1:PORT"], ...}`), once the file is complete.
fn client_url(ports: &Path) -> Option<String> {
    let text = std::fs::read_to_string(ports).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("nats")?.get(0)?.as_str().map(str::to_owned)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
