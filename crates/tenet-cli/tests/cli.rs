//! The `tenet` binary as a user runs it: a daemon process, then ping and tap.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TENET: &str = env!("CARGO_BIN_EXE_tenet");

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon(extra_config: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("host.sock");
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {:?}\nstate_dir = {:?}\ndomain = \"00112233445566778899aabb\"\n{extra_config}",
            socket,
            dir.path().join("state")
        ),
    )
    .unwrap();
    let child = Command::new(TENET)
        .args(["host", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon {
        child,
        socket,
        _dir: dir,
    }
}

fn tenet(socket: &Path, args: &[&str]) -> Output {
    Command::new(TENET)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

const HOST_ID: &str = "00112233445566778899aabb:0";

#[test]
fn ping_the_host_entity_prints_replies_and_summary() {
    let d = daemon("");
    let out = tenet(&d.socket, &["ping", HOST_ID, "-c", "3", "-i", "0"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout
            .matches("reply from 00112233445566778899aabb:0: seq=")
            .count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("3 requests sent, 3 replies received, 0.0% loss"),
        "{stdout}"
    );
    assert!(stdout.contains("rtt min/avg/max = "), "{stdout}");
}

#[test]
fn ping_an_unknown_id_fails_with_loss() {
    let d = daemon("");
    let out = tenet(
        &d.socket,
        &[
            "ping",
            "00112233445566778899aabb:4242",
            "-c",
            "2",
            "-i",
            "0",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("undeliverable") && stdout.contains("unknown destination"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 requests sent, 0 replies received, 100.0% loss"),
        "{stdout}"
    );
}

#[test]
fn bad_cli_input_is_a_clear_error() {
    let d = daemon("");
    let out = tenet(&d.socket, &["ping", "not-an-id"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DOMAIN:PORT"));
    let out = tenet(&d.socket, &["tap", "--mtype", "no-such-type"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mtype"));
    let out = tenet(Path::new("/nonexistent/tenet.sock"), &["ping", HOST_ID]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running at /nonexistent/tenet.sock")
    );
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[dispatch]\nttl_secs = \"soon\"\n").unwrap();
    let out = Command::new(TENET)
        .args(["host", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config") && err.contains("ttl_secs"),
        "{err}"
    );
}

/// `tenet status --json`: the value of the figure `name` whose labels
/// include `labels`.
fn status_figure(socket: &Path, name: &str, labels: &[(&str, &str)]) -> u64 {
    let out = tenet(socket, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let figures = j["figures"].as_array().unwrap();
    let f = figures
        .iter()
        .find(|f| f["name"] == name && labels.iter().all(|(k, v)| f["labels"][k] == *v))
        .unwrap_or_else(|| panic!("no {name} {labels:?} in {j}"));
    f["value"].as_u64().unwrap()
}

#[test]
fn status_prints_figures_that_move_with_traffic() {
    let d = daemon("");
    let routed =
        |ingress| status_figure(&d.socket, "messages_routed_total", &[("ingress", ingress)]);
    let (app, internal) = (routed("app"), routed("internal"));
    let out = tenet(&d.socket, &["ping", HOST_ID, "-c", "3", "-i", "0"]);
    assert!(out.status.success());
    assert_eq!(routed("app"), app + 3, "3 echo requests from the ping app");
    assert_eq!(
        routed("internal"),
        internal + 3,
        "3 echo replies of the host"
    );
    let nobody = "00112233445566778899aabb:4242";
    let out = tenet(&d.socket, &["ping", nobody, "-c", "1", "-W", "5"]);
    assert!(!out.status.success());
    let reason = [("reason", "unknown_destination")];
    assert_eq!(
        status_figure(&d.socket, "messages_undeliverable_total", &reason),
        1
    );
    // For a person: a heading per section, then aligned "name  value" lines.
    let out = tenet(&d.socket, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("messages\n"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("  routed_total{ingress=app} "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        line.split_whitespace().last(),
        Some("3"),
        "the one to nobody was not routed: {line}"
    );
    let column = |l: &str| l.len() - l.trim_end_matches(char::is_numeric).len();
    let values: Vec<usize> = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.len() - column(l))
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "one value column:\n{text}"
    );
    assert!(text.contains("\nqueue\n  messages "), "{text}");
}

#[test]
fn tap_prints_one_line_per_observed_message() {
    let d = daemon("");
    let mut tap = Command::new(TENET)
        .arg("--socket")
        .arg(&d.socket)
        .args(["tap", "--mtype", "echo-reply", "-c", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the tap is registered (it says so on stderr).
    let mut err = BufReader::new(tap.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("tapping as"), "{line}");
    let out = tenet(
        &d.socket,
        &["ping", HOST_ID, "-c", "2", "-i", "0", "-s", "5"],
    );
    assert!(out.status.success());
    let tapped = tap.wait_with_output().unwrap();
    assert!(tapped.status.success());
    let stdout = String::from_utf8_lossy(&tapped.stdout);
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        // time, src, ->, dst, mtype, length
        let f: Vec<_> = l.split_whitespace().collect();
        assert_eq!(f.len(), 6, "{l}");
        assert_eq!(f[1], HOST_ID);
        assert_eq!(f[4], "echo-reply");
        assert_eq!(f[5], "len=13");
    }
}

#[test]
fn a_card_personalized_with_a_ca_holds_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let store = dir.path().join("card.store");
    let run = |args: &[&str]| {
        let out = Command::new(TENET).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["ca", "init", "--dir", ca.to_str().unwrap()]);
    run(&[
        "card",
        "new",
        "--store",
        store.to_str().unwrap(),
        "--pin",
        "1234",
        "--ca",
        ca.to_str().unwrap(),
    ]);
    let der = dir.path().join("card.cvc");
    let info = run(&[
        "card",
        "info",
        "--store",
        store.to_str().unwrap(),
        "--cert-out",
        der.to_str().unwrap(),
    ]);
    assert!(info.contains("(CV): holder"), "{info}");
    let bytes = std::fs::read(&der).unwrap();
    let cv = tenet_pki::cv::CvCertificate::decode(&bytes).unwrap();
    assert_eq!(cv.role, tenet_pki::cv::CvRole::Card);
    assert!(info.contains(&cv.holder.to_string()), "{info}");
    // A CA directory that does not exist: refused, and no store left behind.
    let other = dir.path().join("other.store");
    let out = Command::new(TENET)
        .args([
            "card",
            "new",
            "--store",
            other.to_str().unwrap(),
            "--pin",
            "1234",
            "--ca",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!other.exists());
}

#[test]
fn the_demo_trades_vouchers_and_recovers_interrupted_runs() {
    let demo = |args: &[&str]| {
        let out = Command::new(TENET)
            .arg("demo")
            .args(args)
            .env("TENET_LOG", "error")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = demo(&[]);
    assert!(text.contains("after: alice holds 3 coffee at Alice's, 1 cinema ticket from Bob; bob holds 2 coffee at Alice's, 2 cinema ticket from Bob"), "{text}");
    assert!(text.contains("outcome: swapped"), "{text}");
    // The paper's flow, in order.
    let order: Vec<usize> = [
        "start-exchange",
        "offer",
        "accept",
        "agreement",
        "confirmation",
        "commitment",
    ]
    .iter()
    .map(|m| {
        text.find(&format!(" {m} "))
            .unwrap_or_else(|| panic!("{m} missing:\n{text}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order:\n{text}"
    );
    // Lost agreement: nothing moves for good; lost confirmation or
    // commitment: the TTP completes the swap.
    assert!(demo(&["--interrupt-after", "accept"]).contains("outcome: restored"));
    let t = demo(&["--interrupt-after", "agreement"]);
    assert!(
        t.contains("outcome: swapped") && t.contains("recovery-request") && t.contains("admission"),
        "{t}"
    );
    assert!(demo(&["--interrupt-after", "confirmation"]).contains("outcome: swapped"));
    let j = demo(&["--json"]);
    assert!(
        j.trim_start().starts_with('{')
            && j.contains("\"outcome\":\"swapped\"")
            && j.contains("\"mtype\":\"commitment\""),
        "{j}"
    );
}

/// Runs `tenet host` with its socket in `folder` and returns its failure.
fn host_refuses(folder: &Path, extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {:?}\nstate_dir = {:?}\n{extra}",
            folder.join("host.sock"),
            dir.path().join("state")
        ),
    )
    .unwrap();
    let out = Command::new(TENET)
        .args(["host", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the daemon started");
    assert!(!folder.join("host.sock").exists(), "a socket was made");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A socket folder that another local user could control (made writable by
/// all, or owned by another uid, as one pre-created in /tmp would be) is
/// refused by the daemon and by the client, which then sends nothing.
#[test]
fn a_socket_folder_another_user_controls_is_refused_by_daemon_and_client() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = host_refuses(&open, "");
    assert!(
        e.contains("unsafe app socket folder") && e.contains("writable by others"),
        "{e}"
    );

    let theirs = base.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(12345), None)
        .expect("the test command runs as root, which may give a folder away");
    let e = host_refuses(&theirs, "");
    assert!(e.contains("owned by uid 12345"), "{e}");

    // A client finds the daemon's folder opened up after it started.
    let d = daemon("");
    assert!(
        tenet(
            &d.socket,
            &["ping", "-c", "1", "00112233445566778899aabb:0"]
        )
        .status
        .success()
    );
    let folder = d.socket.parent().unwrap();
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = tenet(
        &d.socket,
        &["ping", "-c", "1", "00112233445566778899aabb:0"],
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("unsafe app socket folder") && e.contains("writable by others"),
        "{e}"
    );
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Starts `tenet host` under umask 000 with its socket at `socket` and
/// permission bits `socket_mode`; waits for the socket.
fn host_at(socket: &Path, socket_mode: &str) -> (Child, tempfile::TempDir) {
    host_with(TENET, socket, &format!("socket_mode = \"{socket_mode}\"\n"))
}

/// Starts the binary `exe` as `tenet host` under umask 000, with its socket
/// at `socket`, the domain `00112233445566778899aabb` and the `[host]` keys
/// `extra`; waits for the socket.
fn host_with(exe: &str, socket: &Path, extra: &str) -> (Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {socket:?}\nstate_dir = {:?}\n\
             domain = \"00112233445566778899aabb\"\n{extra}",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {exe} host --config {}",
            config.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no socket at {socket:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, dir)
}

/// The daemon makes a missing socket folder with exactly what its socket
/// needs, whatever the umask: 0700 for a private socket, 0750 for one
/// shared with a group. A group-writable folder is accepted only for a
/// socket shared with that group (the group-shared setup of
/// docs/host.example.toml), by the daemon and by its clients.
#[test]
fn the_daemon_makes_its_socket_folder_owner_only_or_for_its_group() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    for (socket_mode, folder_mode) in [("0600", 0o700), ("0660", 0o750)] {
        let folder = base.path().join(format!("run-{socket_mode}"));
        let socket = folder.join("host.sock");
        let (mut child, _state) = host_at(&socket, socket_mode);
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, folder_mode, "socket_mode {socket_mode}");
        let ping = tenet(&socket, &["ping", "-c", "1", "00112233445566778899aabb:0"]);
        assert!(
            ping.status.success(),
            "{}",
            String::from_utf8_lossy(&ping.stderr)
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    // A folder shared with a group (set-group-id, group-writable).
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, None, Some(54321))
        .expect("the test command runs as root, which may give a folder to a group");
    // Sticky, so that no member of the group can replace the socket.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o3770)).unwrap();
    // A private socket in it is refused: the group could replace it.
    let e = host_refuses(&shared, "socket_mode = \"0600\"\n");
    assert!(e.contains("writable by its group 54321"), "{e}");
    let socket = shared.join("host.sock");
    let (mut child, _state) = host_at(&socket, "0660");
    let ping = tenet(&socket, &["ping", "-c", "1", "00112233445566778899aabb:0"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Acquiring an id writes the card's store or the state directory, so each
/// local user (the uid the app socket reports) gets so many, over all its
/// connections; another user is not held up.
#[test]
fn id_acquisitions_are_limited_per_local_user_not_per_connection() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    // Another user must reach the socket and the binary.
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = base.path().join("tenet");
    std::fs::copy(TENET, &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = base.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, None, Some(54321))
        .expect("the test command runs as root, which may give a folder to a group");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o2750)).unwrap();
    let socket = run.join("host.sock");
    let (mut child, _state) = host_with(
        exe.to_str().unwrap(),
        &socket,
        "socket_mode = \"0660\"\nacquire_burst = 2\nacquire_rate = 0.001\n",
    );
    let ping = |user: Option<&str>| {
        let mut c = match user {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([&format!("--reuid={uid}"), "--regid=54321", "--clear-groups"])
                    .arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        c.arg("--socket")
            .arg(&socket)
            .args(["ping", "-c", "1", "00112233445566778899aabb:0"])
            .output()
            .unwrap()
    };
    // Two connections of this user, one id each, then no more.
    for _ in 0..2 {
        let out = ping(None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = ping(None);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("acquires ids too fast") && e.contains("host.acquire_rate"),
        "{e}"
    );
    // Another user still gets its ids.
    let out = ping(Some("12345"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Secrets at rest: a card store made under umask 022 is owner-only, and
/// the daemon refuses one that group or others can read, saying how to fix
/// it; the host's state files and the TTP's database are owner-only too.
#[test]
fn card_stores_state_and_the_ttp_database_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let store = dir.path().join("a.card");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 022; exec {TENET} card new --store {} --pin 1234 --puk 12345678",
            store.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&store), 0o600);

    // The host: its state (domain, port counters) and a TTP database.
    let state = dir.path().join("state");
    let socket = dir.path().join("run/host.sock");
    let config = dir.path().join("host.toml");
    let write_config = |card: &str| {
        std::fs::write(
            &config,
            format!(
                "[host]\nsocket = {socket:?}\nstate_dir = {state:?}\n\
                 domain = \"777777777777777777777777\"\n{card}\
                 [ttp]\nkey = {:?}\ncert = {:?}\nca = {:?}\n",
                dir.path().join("ca/ttp-entity.key"),
                dir.path().join("ca/ttp-entity.pem"),
                dir.path().join("ca/ca.pem"),
            ),
        )
        .unwrap();
    };
    let ca = dir.path().join("ca");
    let run = |args: &[&str]| {
        let out = Command::new(TENET).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["ca", "init", "--dir", ca.to_str().unwrap()]);
    run(&[
        "ca",
        "entity",
        "--dir",
        ca.to_str().unwrap(),
        "--name",
        "ttp",
        "--id",
        "777777777777777777777777:0",
    ]);
    write_config("");
    let mut host = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {TENET} ttp --config {}",
            config.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // The database is opened after the socket is bound: wait for both (its
    // write-ahead log shows it open).
    while !(socket.exists() && state.join("ttp.sqlite-wal").exists()) {
        if let Ok(Some(status)) = host.try_wait() {
            let mut e = String::new();
            use std::io::Read;
            host.stderr.take().unwrap().read_to_string(&mut e).unwrap();
            panic!("the TTP host exited ({status}): {e}");
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(mode(&state), 0o700);
    let files: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert!(files.iter().any(|p| p.ends_with("ttp.sqlite")), "{files:?}");
    for f in &files {
        assert_eq!(mode(f) & 0o077, 0, "{f:?} is open to group or others");
    }

    // A store others can read is refused at startup, with the fix.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {socket:?}\nstate_dir = {state:?}\n[card]\nvirtual = {store:?}\n"
        ),
    )
    .unwrap();
    let out = Command::new(TENET)
        .args(["host", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the daemon opened an exposed store");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(&format!("chmod 600 {}", store.display())), "{e}");
}

/// A command whose output pipe closes early ends quietly, like other Unix
/// tools, instead of panicking in println!.
#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    let d = daemon("");
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{TENET} --socket {} ping -c 20 -i 0.01 00112233445566778899aabb:0 2>{} | head -c 1",
            d.socket.display(),
            err.display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), 1);
    let e = std::fs::read_to_string(&err).unwrap();
    assert!(!e.contains("panicked"), "{e}");
}

/// The demo, whose daemons keep SIGPIPE ignored, also ends quietly and
/// successfully when its reader is gone before it prints (`| true` exits
/// at once; the demo runs for a second before it writes).
#[test]
fn the_demo_ends_quietly_when_its_reader_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{TENET} demo 2>{} | true; exit ${{PIPESTATUS[0]}}",
            err.display()
        ))
        .output()
        .unwrap();
    let e = std::fs::read_to_string(&err).unwrap();
    assert!(!e.contains("panicked"), "{e}");
    assert!(out.status.success(), "{e}");
}

/// `tenet card new` need not take the PIN and PUK in argv: files, or the
/// terminal; without either and without a terminal, a clear error and no
/// card.
#[test]
fn card_new_takes_the_pin_and_puk_from_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let (pin, puk) = (secret("pin", "1234"), secret("puk", "12345678"));
    let store = dir.path().join("a.card");
    let out = Command::new(TENET)
        .args(["card", "new", "--store"])
        .arg(&store)
        .arg("--pin-file")
        .arg(&pin)
        .arg("--puk-file")
        .arg(&puk)
        .env_remove("TENET_PIN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("PUK "),
        "a given PUK is not printed"
    );
    let other = dir.path().join("b.card");
    let out = Command::new("setsid")
        .args(["-w", TENET, "card", "new", "--store"])
        .arg(&other)
        .env_remove("TENET_PIN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("no PIN given") && e.contains("--pin-file"),
        "{e}"
    );
    assert!(!other.exists(), "no card was made");
}
