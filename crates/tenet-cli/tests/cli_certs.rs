//! Certificate lifetimes and renewal from the command line (`--days`,
//! `tenet host certs` and `tenet ca entity` renewing in place, `tenet card
//! recertify`), and a host that cannot swap its card's TTP (`[card] ttp`,
//! `tenet card serve --ttp`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TENET: &str = env!("CARGO_BIN_EXE_tenet");
const TTP: &str = "777777777777777777777777:0";
const ROGUE: &str = "666666666666666666666666:0";
const CARD_DOMAIN: &str = "cacacacacacacacacacacaca";

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

/// Runs `args`, which must fail within 20 s; returns its stderr.
fn fails(args: &[&str]) -> String {
    let child = Command::new(TENET)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, still running.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{args:?} kept running instead of failing");
        }
    };
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `valid FROM to TO` of a command's output: `(FROM, TO)` in UTC
/// (RFC 3339 strings order as the times do).
fn validity(text: &str, line_start: &str) -> (String, String) {
    let line = text
        .lines()
        .find(|l| l.starts_with(line_start) && l.contains("valid "))
        .unwrap_or_else(|| panic!("no {line_start:?} validity in:\n{text}"));
    let v = &line[line.find("valid ").unwrap() + 6..];
    let (from, to) = v.split_once(" to ").unwrap();
    (from.to_owned(), to.trim().to_owned())
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no {start:?} in:\n{text}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `tenet card new` for domain [`CARD_DOMAIN`], personalized for [`TTP`]
/// with its certificate pinned.
fn new_card(dir: &Path, ca: &Path, extra: &[&str]) -> (PathBuf, String) {
    let store = dir.join("card.store");
    let mut args = vec![
        "card",
        "new",
        "--store",
        s(&store),
        "--pin",
        "1234",
        "--puk",
        "12345678",
        "--domain",
        CARD_DOMAIN,
        "--ca",
        s(ca),
    ];
    let pinned = ca.join("ttp-entity.pem");
    args.extend_from_slice(&["--ttp", TTP, "--ttp-cert", s(&pinned)]);
    args.extend_from_slice(extra);
    let out = run(&args);
    (store, out)
}

fn ca_with_ttp(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    run(&["ca", "init", "--dir", s(&ca)]);
    run(&[
        "ca",
        "entity",
        "--dir",
        s(&ca),
        "--name",
        "ttp",
        "--id",
        TTP,
    ]);
    ca
}

#[test]
fn certificates_have_lifetimes_chosen_with_days_and_renew_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = run(&["ca", "init", "--dir", s(&ca), "--days", "100"]);
    let (ca_from, ca_to) = validity(&out, "valid");
    assert!(ca_from < ca_to, "{out}");
    let out = run(&["ca", "init", "--dir", s(&ca)]);
    assert!(out.contains("exists; kept"), "{out}");
    assert_eq!(validity(&out, "valid"), (ca_from.clone(), ca_to.clone()));

    // A host certificate, then its renewal in place: same key, later end.
    let host = |days: &str| {
        run(&[
            "host",
            "certs",
            "--dir",
            s(&ca),
            "--name",
            "h",
            "--domain",
            CARD_DOMAIN,
            "--days",
            days,
        ])
    };
    let first = host("10");
    assert!(first.contains("made "), "{first}");
    let key = std::fs::read(ca.join("h.key")).unwrap();
    let second = host("20");
    assert!(
        second.contains("renewed ") && second.contains("same key"),
        "{second}"
    );
    assert_eq!(std::fs::read(ca.join("h.key")).unwrap(), key);
    let (_, to1) = validity(&first, "valid");
    let (_, to2) = validity(&second, "valid");
    assert!(to1 < to2 && to2 < ca_to, "{to1} {to2} {ca_to}");
    // Never beyond the CA.
    let long = host("1000");
    assert_eq!(validity(&long, "valid").1, ca_to, "{long}");

    // The TTP entity, the same.
    let entity = |days: &str| {
        run(&[
            "ca",
            "entity",
            "--dir",
            s(&ca),
            "--name",
            "ttp",
            "--id",
            TTP,
            "--days",
            days,
        ])
    };
    let first = entity("5");
    assert!(first.starts_with("made "), "{first}");
    let key = std::fs::read(ca.join("ttp-entity.key")).unwrap();
    let second = entity("50");
    assert!(second.starts_with("renewed (same key)"), "{second}");
    assert_eq!(std::fs::read(ca.join("ttp-entity.key")).unwrap(), key);
    assert!(validity(&first, "valid").1 < validity(&second, "valid").1);

    let err = fails(&[
        "ca",
        "init",
        "--dir",
        s(&dir.path().join("x")),
        "--days",
        "0",
    ]);
    assert!(err.contains("--days"), "{err}");
}

#[test]
fn tenet_card_recertify_gives_the_same_key_a_later_certificate_and_the_card_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_ttp(dir.path());
    let (store, made) = new_card(dir.path(), &ca, &["--days", "1"]);
    let info = |store: &Path| run(&["card", "info", "--store", s(store)]);
    let before = info(&store);
    assert_eq!(
        validity(&made, "certificate"),
        validity(&before, "certificate")
    );
    assert!(
        before.contains(&format!("TTP {TTP} (certificate pinned)")),
        "{before}"
    );

    let out = run(&[
        "card",
        "recertify",
        "--store",
        s(&store),
        "--ca",
        s(&ca),
        "--days",
        "30",
    ]);
    assert!(out.contains("(unchanged)"), "{out}");
    let after = info(&store);
    assert_eq!(line(&before, "public key"), line(&after, "public key"));
    let (_, old_end) = validity(&before, "certificate");
    let (_, new_end) = validity(&after, "certificate");
    assert!(old_end < new_end, "{old_end} !< {new_end}");
    assert_eq!(validity(&out, "new certificate").1, new_end);
    assert!(
        line(&before, "clock bound") <= line(&after, "clock bound"),
        "{before}\n{after}"
    );

    // Another CA's certificate would change whom the card trusts: refused.
    let other = dir.path().join("other");
    run(&["ca", "init", "--dir", s(&other)]);
    let err = fails(&["card", "recertify", "--store", s(&store), "--ca", s(&other)]);
    assert!(err.contains("trusts another CA"), "{err}");
    assert_eq!(validity(&info(&store), "certificate").1, new_end);

    // The card keeps working: a daemon opens it (naming its TTP: a check
    // that passes) and its voucher applet mints.
    let (mut host, socket) = host(dir.path(), &store, Some(TTP));
    let card = format!("{CARD_DOMAIN}:0");
    let minted = run(&[
        "--socket",
        s(&socket),
        "wallet",
        "--card",
        &card,
        "--pin",
        "1234",
        "mint",
        "5:coffee",
    ]);
    assert!(
        minted.contains(&format!("5  {CARD_DOMAIN}  coffee")),
        "{minted}"
    );
    let _ = host.kill();
    let _ = host.wait();
}

/// Starts `tenet host` with the virtual card `store` and `[card] ttp`;
/// returns it once its socket is there.
fn host(dir: &Path, store: &Path, ttp: Option<&str>) -> (Child, PathBuf) {
    let socket = dir.join("host.sock");
    let config = write_config(dir, store, ttp);
    let child = Command::new(TENET)
        .args(["host", "--config", s(&config)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, socket)
}

fn write_config(dir: &Path, store: &Path, ttp: Option<&str>) -> PathBuf {
    let config = dir.join("host.toml");
    let ttp = ttp.map_or(String::new(), |t| format!("ttp = \"{t}\"\n"));
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {:?}\nstate_dir = {:?}\ndomain = \"a1a1a1a1a1a1a1a1a1a1a1a1\"\n\
             [card]\nvirtual = {store:?}\n{ttp}",
            dir.join("host.sock"),
            dir.join("state"),
        ),
    )
    .unwrap();
    config
}

#[test]
fn a_host_owner_cannot_swap_the_ttp_the_card_was_personalized_with() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_ttp(dir.path());
    let (store, _) = new_card(dir.path(), &ca, &[]);
    let swap =
        format!("the card was personalized for TTP {TTP}; the host may not swap it for {ROGUE}");

    // The daemon, with `[card] ttp` naming another TTP.
    let config = write_config(dir.path(), &store, Some(ROGUE));
    let err = fails(&["host", "--config", s(&config)]);
    assert!(err.contains(&swap) && err.contains("[card] ttp"), "{err}");
    assert!(!dir.path().join("host.sock").exists());

    // The vpcd card, with `--ttp` naming another TTP: refused before it
    // connects to vpcd (port 1: nothing listens there).
    let err = fails(&[
        "card",
        "serve",
        "--store",
        s(&store),
        "--vpcd",
        "127.0.0.1:1",
        "--ttp",
        ROGUE,
    ]);
    assert!(err.contains(&swap), "{err}");

    // A pinned certificate must name the TTP given at personalization.
    let err = fails(&[
        "card",
        "new",
        "--store",
        s(&dir.path().join("other.store")),
        "--pin",
        "1234",
        "--ca",
        s(&ca),
        "--ttp",
        ROGUE,
        "--ttp-cert",
        s(&ca.join("ttp-entity.pem")),
    ]);
    assert!(
        err.contains(&format!("the TTP certificate does not name {ROGUE}")),
        "{err}"
    );
    assert!(!dir.path().join("other.store").exists());
}
