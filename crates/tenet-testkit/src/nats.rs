//! Private nats-servers on loopback ports they choose themselves: one
//! server ([`NatsServer`]), or a cluster of nodes ([`NatsCluster`]) whose
//! users have the permissions of `docs/nats-server.example.conf`
//! ([`NatsUser`]).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tenet_proto::Domain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", "-1"]);
        let (child, ports) = spawn(cmd, dir, false).await?;
        Ok(Self {
            child,
            url: ports.client,
        })
    }

    /// The URL clients connect to, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A user of a [`NatsCluster`] with the permissions
/// `docs/nats-server.example.conf` gives a host (prefix `tenet`): it may
/// publish only as its own domains (`tenet.d.*.s.D`) and answer requests,
/// subscribe only to its own domains' subjects (`tenet.d.D.>`, in the
/// queue group if it has one, as TTP replicas do) and to its inboxes
/// (`tenet.i.HOST.>`, `HOST` its first domain).
#[derive(Debug, Clone)]
pub struct NatsUser {
    /// The user name.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The domains its host serves, the software domain first.
    pub domains: Vec<Domain>,
    /// The queue group its data subscriptions must be in, if any.
    pub queue: Option<String>,
}

impl NatsUser {
    /// A host's user: password `NAME-secret`, no queue group.
    pub fn host(user: &str, domains: &[Domain]) -> Self {
        Self {
            user: user.to_owned(),
            password: format!("{user}-secret"),
            domains: domains.to_vec(),
            queue: None,
        }
    }

    /// A replica's user: it may subscribe to its domains only in `queue`.
    pub fn replica(user: &str, domains: &[Domain], queue: &str) -> Self {
        Self {
            queue: Some(queue.to_owned()),
            ..Self::host(user, domains)
        }
    }

    /// The user's entry in nats-server's `authorization { users: [...] }`.
    fn entry(&self) -> String {
        let quoted = |v: Vec<String>| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let publish = self
            .domains
            .iter()
            .map(|d| format!("tenet.d.*.s.{d}"))
            .collect();
        let queue = self
            .queue
            .as_ref()
            .map_or(String::new(), |q| format!(" {q}"));
        let mut subscribe: Vec<String> = self
            .domains
            .iter()
            .map(|d| format!("tenet.d.{d}.>{queue}"))
            .collect();
        if let Some(host) = self.domains.first() {
            subscribe.push(format!("tenet.i.{host}.>"));
        }
        format!(
            "    {{ user: {:?}, password: {:?}, permissions: {{\n      \
             publish: {{ allow: [{}] }}\n      \
             subscribe: {{ allow: [{}] }}\n      \
             allow_responses: true\n    }} }}\n",
            self.user,
            self.password,
            quoted(publish),
            quoted(subscribe),
        )
    }
}

/// A cluster of `nats-server` nodes on `127.0.0.1`, each killed when the
/// cluster is dropped.
///
/// Every node picks its client, cluster and monitoring ports itself
/// (`-1`) and reports them in its ports file; a node starts with routes to
/// the cluster ports of the nodes before it, and [`NatsCluster::start`]
/// returns once each node's monitoring endpoint counts a route to every
/// other. No port is guessed. The nodes share one config: one message at
/// most 64 KiB (as in the example), and the [`NatsUser`]s given.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

struct Node {
    /// `None` once killed.
    child: Option<Child>,
    ports: Ports,
}

impl NatsCluster {
    /// Starts `size` nodes (at least 1) with their config and ports files
    /// in `dir`, and waits until they form a full mesh.
    pub async fn start(dir: &Path, size: usize, users: &[NatsUser]) -> Result<Self, Error> {
        let users: String = users.iter().map(NatsUser::entry).collect();
        let mut cluster = Self { nodes: Vec::new() };
        for i in 0..size.max(1) {
            let routes: Vec<String> = cluster
                .nodes
                .iter()
                .map(|n| format!("{:?}", n.ports.cluster))
                .collect();
            let conf = format!(
                "listen: \"127.0.0.1:-1\"\nhttp: \"127.0.0.1:-1\"\nmax_payload: 65536\n\
                 server_name: \"node{i}\"\n\
                 cluster {{\n  name: \"tenet-test\"\n  listen: \"127.0.0.1:-1\"\n  \
                 routes: [{}]\n}}\n\
                 authorization {{\n  users: [\n{users}  ]\n}}\n",
                routes.join(", ")
            );
            let path = dir.join(format!("nats-node{i}.conf"));
            std::fs::write(&path, conf).map_err(Error::NatsSpawn)?;
            let mut cmd = Command::new("nats-server");
            cmd.arg("-c").arg(&path);
            let (child, ports) = spawn(cmd, dir, true).await?;
            cluster.nodes.push(Node {
                child: Some(child),
                ports,
            });
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        for node in &cluster.nodes {
            loop {
                let routes = monitor(&node.ports.monitoring, "/routez")
                    .await
                    .ok()
                    .and_then(|v| v.get("num_routes")?.as_u64());
                if routes == Some(size.max(1) as u64 - 1) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::NatsStart(format!(
                        "node {} has {routes:?} routes, not {} after {WAIT:?}",
                        node.ports.client,
                        size - 1
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated: `[remote.nats] url`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.ports.client.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> &str {
        &self.nodes[i].ports.client
    }

    /// The nodes the clients logged in as `user` are connected to, by
    /// index, from each running node's monitoring endpoint (`/connz`).
    pub async fn nodes_of(&self, user: &str) -> Result<Vec<usize>, Error> {
        let mut found = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                continue;
            }
            let v = monitor(&n.ports.monitoring, "/connz?auth=1").await?;
            let here = v
                .get("connections")
                .and_then(|c| c.as_array())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.get("authorized_user").and_then(|u| u.as_str()) == Some(user))
                });
            if here {
                found.push(i);
            }
        }
        Ok(found)
    }

    /// Waits until a client logged in as `user` is connected to a running
    /// node, for at most [`WAIT`]; returns the node (the first, if there
    /// are several).
    pub async fn wait_for(&self, user: &str) -> Result<usize, Error> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(&i) = self.nodes_of(user).await?.first() {
                return Ok(i);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::NatsStart(format!(
                    "no client of user {user:?} connected after {WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills node `i` at once (SIGKILL): its clients lose their connection
    /// with whatever was in flight through it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            stop(&mut child);
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// What a nats-server's ports file says.
struct Ports {
    /// `nats://127.0.0.1:PORT`.
    client: String,
    /// `127.0.0.1:PORT` of the monitoring endpoint (cluster nodes only).
    monitoring: String,
    /// `nats://127.0.0.1:PORT` of the route listener (cluster nodes only).
    cluster: String,
}

/// Spawns `cmd` with its ports file in `dir`, and waits until the file
/// names its ports (also the monitoring and cluster ports if `cluster`)
/// and its client port accepts connections.
async fn spawn(mut cmd: Command, dir: &Path, cluster: bool) -> Result<(Child, Ports), Error> {
    let mut child = cmd
        .arg("--ports_file_dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(Error::NatsSpawn)?;
    let file = dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = tokio::time::Instant::now() + WAIT;
    let fail = |child: &mut Child, why: String| {
        stop(child);
        Err(Error::NatsStart(why))
    };
    let ports = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return fail(&mut child, format!("it exited ({status})"));
        }
        if let Some(p) = read_ports(&file, cluster) {
            break p;
        }
        if tokio::time::Instant::now() > deadline {
            let why = format!("no ports in {} after {WAIT:?}", file.display());
            return fail(&mut child, why);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let addr = ports.client.trim_start_matches("nats://").to_owned();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            return fail(&mut child, format!("nothing accepts on {addr}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((child, ports))
}

/// The ports in a nats-server ports file (`{"nats":
/// ["nats://127.0.0.1:PORT"], "monitoring": [...], "cluster": [...]}`),
/// once the file is complete.
fn read_ports(file: &Path, cluster: bool) -> Option<Ports> {
    let text = std::fs::read_to_string(file).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let first = |k: &str| v.get(k)?.get(0)?.as_str().map(str::to_owned);
    let client = first("nats")?;
    if !cluster {
        return Some(Ports {
            client,
            monitoring: String::new(),
            cluster: String::new(),
        });
    }
    Some(Ports {
        client,
        monitoring: first("monitoring")?
            .trim_start_matches("http://")
            .to_owned(),
        cluster: first("cluster")?,
    })
}

/// A GET of `path` on a monitoring endpoint, its JSON body.
async fn monitor(addr: &str, path: &str) -> Result<serde_json::Value, Error> {
    let bad = |why: String| Error::NatsStart(format!("monitoring {addr}{path}: {why}"));
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let reply = tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| bad("no answer".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&reply);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no HTTP body".into()))?;
    serde_json::from_str(body).map_err(|e| bad(e.to_string()))
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
