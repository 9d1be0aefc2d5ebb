//! Running `tenet host` as a child process and learning, from its log,
//! where it accepts TLS links: its config says `listen = "127.0.0.1:0"`,
//! the system picks a port, and no port is guessed beforehand.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TENET: &str = env!("CARGO_BIN_EXE_tenet");

/// A child process killed (and reaped) when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long a daemon may take to start.
const START: Duration = Duration::from_secs(10);

/// Starts `tenet host --config CONFIG` and waits until it serves apps on
/// its socket (it says `tenet host ID listening on SOCKET`). Returns the
/// child and the address it accepts TLS links on, if it listens: the
/// remote proxy logs it (`accepting host links ... address=ADDR`, at info)
/// before the daemon serves, with the port the system chose. The rest of
/// its log is read (and dropped) while it runs, so it never blocks on a
/// full pipe.
pub fn host(config: &Path) -> (Child, Option<SocketAddr>) {
    daemon("host", config)
}

/// [`host`] for a daemon started by another command with `--config`
/// (`tenet ttp`), which logs its start in the same words.
pub fn daemon(command: &str, config: &Path) -> (Child, Option<SocketAddr>) {
    let mut child = Command::new(TENET)
        .args([command, "--config"])
        .arg(config)
        .env("TENET_LOG", "warn,tenet_host::remote=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START;
    let (mut remote, mut seen) = (None, Vec::new());
    loop {
        let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tenet host did not start ({e}); it said {seen:#?}");
            }
        };
        if line.contains("accepting host links") {
            remote = Some(field(&line, "address").parse().unwrap());
        }
        if line.starts_with("tenet host ") && line.contains(" listening on ") {
            return (child, remote);
        }
        seen.push(line);
    }
}

/// The value of `name=VALUE` in a log line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"));
    line[at + name.len() + 2..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
}
