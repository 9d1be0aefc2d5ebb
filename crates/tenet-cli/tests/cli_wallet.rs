//! `tenet wallet` across two `tenet host` processes over TLS, each with a
//! voucher card: mint, offer, accept, balances, exchanges.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::Kill;

const TENET: &str = env!("CARGO_BIN_EXE_tenet");
const TTP: &str = "777777777777777777777777:0";

fn run(args: &[&str]) -> String {
    let out = Command::new(TENET).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tenet host` `name` with the virtual card `card`, listening for TLS
/// links on a port the system picks, dialing `dial` (a host started first);
/// returns it, its socket and where it listens.
fn host(
    dir: &Path,
    name: &str,
    sw: &str,
    card: &Path,
    dial: Option<SocketAddr>,
) -> (Kill, PathBuf, SocketAddr) {
    let ca = dir.join("ca");
    let socket = dir.join(format!("{name}.sock"));
    let peers = dial.map_or(String::new(), |p| {
        format!("[[remote.peers]]\naddress = \"{p}\"\n")
    });
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[host]\nsocket = {socket:?}\nstate_dir = {:?}\ndomain = \"{sw}\"\n[card]\nvirtual = {card:?}\n\
             [remote]\nlisten = \"127.0.0.1:0\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n{peers}",
            dir.join(format!("{name}-state")),
            ca.join("ca.pem"),
            ca.join(format!("{name}.pem")),
            ca.join(format!("{name}.key")),
        ),
    )
    .unwrap();
    let (child, remote) = support::host(&config);
    (Kill(child), socket, remote.expect("the host listens"))
}

fn wallet(socket: &Path, card: &str, args: &[&str]) -> String {
    let mut all = vec![
        "--socket",
        socket.to_str().unwrap(),
        "wallet",
        "--card",
        card,
        "--pin",
        "1234",
    ];
    all.extend_from_slice(args);
    run(&all)
}

/// Two hosts over TLS, each with a voucher card whose wallet PIN is 1234,
/// and a TTP entity certificate pinned on both cards.
struct Pair {
    _hosts: (Kill, Kill),
    sock_a: PathBuf,
    sock_b: PathBuf,
    card_a: String,
    card_b: String,
    ca_dom: &'static str,
    cb_dom: &'static str,
    _dir: tempfile::TempDir,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let (sa, ca_dom, sb, cb_dom) = (
        "a1a1a1a1a1a1a1a1a1a1a1a1",
        "cacacacacacacacacacacaca",
        "b2b2b2b2b2b2b2b2b2b2b2b2",
        "cbcbcbcbcbcbcbcbcbcbcbcb",
    );
    run(&["ca", "init", "--dir", ca.to_str().unwrap()]);
    run(&[
        "ca",
        "entity",
        "--dir",
        ca.to_str().unwrap(),
        "--name",
        "ttp",
        "--id",
        TTP,
    ]);
    let mut stores = Vec::new();
    for (name, sw, cd) in [("a", sa, ca_dom), ("b", sb, cb_dom)] {
        let store = dir.path().join(format!("{name}.card"));
        run(&[
            "card",
            "new",
            "--store",
            store.to_str().unwrap(),
            "--pin",
            "1234",
            "--puk",
            "12345678",
            "--domain",
            cd,
            "--ca",
            ca.to_str().unwrap(),
            "--ttp",
            TTP,
            "--ttp-cert",
            ca.join("ttp-entity.pem").to_str().unwrap(),
        ]);
        run(&[
            "host",
            "certs",
            "--dir",
            ca.to_str().unwrap(),
            "--name",
            name,
            "--domain",
            sw,
            "--domain",
            cd,
        ]);
        stores.push(store);
    }
    let (_a, sock_a, at_a) = host(dir.path(), "a", sa, &stores[0], None);
    let (_b, sock_b, _) = host(dir.path(), "b", sb, &stores[1], Some(at_a));
    let (card_a, card_b) = (format!("{ca_dom}:0"), format!("{cb_dom}:0"));
    Pair {
        _hosts: (_a, _b),
        sock_a,
        sock_b,
        card_a,
        card_b,
        ca_dom,
        cb_dom,
        _dir: dir,
    }
}

#[test]
fn wallets_trade_vouchers_from_the_command_line() {
    let Pair {
        sock_a,
        sock_b,
        card_a,
        card_b,
        ca_dom,
        cb_dom,
        _hosts,
        _dir,
    } = pair();

    assert!(
        wallet(&sock_a, &card_a, &["mint", "5:coffee"])
            .contains("5  cacacacacacacacacacacaca  coffee")
    );
    wallet(&sock_b, &card_b, &["mint", "3:ticket"]);
    let out = Command::new(TENET)
        .args([
            "--socket",
            sock_a.to_str().unwrap(),
            "wallet",
            "--card",
            &card_a,
            "--pin",
            "1234",
            "mint",
            "1:x",
        ])
        .env("TENET_PIN", "0000")
        .output()
        .unwrap();
    assert!(out.status.success(), "the --pin flag wins over TENET_PIN");
    let bad = Command::new(TENET)
        .args([
            "--socket",
            sock_a.to_str().unwrap(),
            "wallet",
            "--card",
            &card_a,
            "--pin",
            "9999",
            "balance",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("PIN not accepted"));

    // B's wallet waits for one offer and accepts it.
    let mut offers = Command::new(TENET)
        .args([
            "--socket",
            sock_b.to_str().unwrap(),
            "wallet",
            "--card",
            &card_b,
            "--pin",
            "1234",
            "offers",
            "--accept",
            "-c",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(offers.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let b_wallet = first.split_whitespace().nth(1).unwrap().to_owned();

    // The link from B to A comes up in the background; offer until it goes through.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new(TENET)
            .args([
                "--socket",
                sock_a.to_str().unwrap(),
                "wallet",
                "--card",
                &card_a,
                "--pin",
                "1234",
                "offer",
                "--to",
                &card_b,
                "--wallet",
                &b_wallet,
            ])
            .args([
                "--give",
                &format!("2:{ca_dom}:coffee"),
                "--want",
                &format!("1:{cb_dom}:ticket"),
            ])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(offers.wait().unwrap().success());
    assert!(rest.iter().any(|l| l.contains("accepted")), "{rest:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = wallet(&sock_a, &card_a, &["balance"]);
        let b = wallet(&sock_b, &card_b, &["balance"]);
        if a.contains("ticket") && b.contains("coffee") {
            assert!(a.contains("3  cacacacacacacacacacacaca  coffee"), "{a}");
            assert!(b.contains("2  cbcbcbcbcbcbcbcbcbcbcbcb  ticket"), "{b}");
            break;
        }
        assert!(Instant::now() < deadline, "not swapped: {a} / {b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Option 2a: bob, a merchant, publishes only his card id and runs a
    // standing policy: at least 2 coffee for at most 1 ticket.
    let policy = format!("GIVE>=2:{ca_dom}:coffee,WANT<=1:{cb_dom}:ticket");
    let mut merchant = Command::new(TENET)
        .args([
            "--socket",
            sock_b.to_str().unwrap(),
            "wallet",
            "--card",
            &card_b,
            "--pin",
            "1234",
            "offers",
            "--accept-if",
            &policy,
            "-c",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut mlines = BufReader::new(merchant.stdout.take().unwrap()).lines();
    assert!(
        mlines
            .next()
            .unwrap()
            .unwrap()
            .contains("waiting for offers")
    );
    for give in ["1", "2"] {
        wallet(
            &sock_a,
            &card_a,
            &[
                "offer",
                "--to",
                &card_b,
                "--wallet",
                &card_b,
                "--give",
                &format!("{give}:{ca_dom}:coffee"),
                "--want",
                &format!("1:{cb_dom}:ticket"),
            ],
        );
    }
    let out: Vec<String> = mlines.map(|l| l.unwrap()).collect();
    assert!(merchant.wait().unwrap().success());
    assert_eq!(
        out.iter()
            .filter(|l| l.contains("declined: outside the policy"))
            .count(),
        1,
        "{out:?}"
    );
    assert_eq!(
        out.iter()
            .filter(|l| l.contains("accepted (policy)"))
            .count(),
        1,
        "{out:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wallet(&sock_b, &card_b, &["balance"]).contains("4  cacacacacacacacacacacaca  coffee") {
        assert!(
            Instant::now() < deadline,
            "the policy exchange did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let ex = wallet(&sock_a, &card_a, &["exchanges"]);
    assert!(ex.contains("Initiator  Committed"), "{ex}");
    // Resolving a committed exchange, or aborting as the initiator, is refused.
    let id = ex.split_whitespace().next().unwrap();
    let out = Command::new(TENET)
        .args([
            "--socket",
            sock_a.to_str().unwrap(),
            "wallet",
            "--card",
            &card_a,
            "--pin",
            "1234",
            "abort",
            id,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Initiator"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Has A's wallet offer `give` for `want` to B's wallet `b_wallet`, retrying
/// while the link from B to A comes up.
/// Bob's `tenet wallet offers ARGS`, its output lines and the wallet id
/// it prints first.
fn bob_takes_offers(
    p: &Pair,
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
    String,
) {
    let mut offers = Command::new(TENET)
        .args(["--socket", p.sock_b.to_str().unwrap(), "wallet", "--card"])
        .args([&p.card_b, "--pin", "1234", "offers"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(offers.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let b_wallet = first.split_whitespace().nth(1).unwrap().to_owned();
    (offers, lines, b_wallet)
}

fn offer_until_sent(p: &Pair, b_wallet: &str, give: &str, want: &str) {
    let args = [
        "offer", "--to", &p.card_b, "--wallet", b_wallet, "--give", give, "--want", want,
    ];
    alice_until_sent(p, &args);
}

/// Alice's `tenet wallet ARGS`, again until it succeeds (Bob's wallet may
/// not be registered yet), for at most 15 s.
fn alice_until_sent(p: &Pair, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new(TENET)
            .args(["--socket", p.sock_a.to_str().unwrap(), "wallet", "--card"])
            .args([&p.card_a, "--pin", "1234"])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The overflow attack of the security issue, at the cap (2^53 - 1): Bob
/// holds one less than the cap of Alice's coffee; Alice offers 2 more for a
/// ticket and Bob's wallet accepts. Bob's card refuses before deleting his
/// ticket, the wallet says why, and nothing moves: no ticket is lost.
#[test]
fn an_offer_that_would_cross_the_cap_moves_nothing() {
    const NEAR_CAP: &str = "9007199254740990"; // 2^53 - 2
    let p = pair();
    let (ca_dom, cb_dom) = (p.ca_dom, p.cb_dom);
    wallet(
        &p.sock_a,
        &p.card_a,
        &["mint", &format!("{NEAR_CAP}:coffee")],
    );
    wallet(&p.sock_b, &p.card_b, &["mint", "3:ticket"]);
    // Beyond the cap, a mint is refused with the cap named.
    let out = Command::new(TENET)
        .args(["--socket", p.sock_a.to_str().unwrap(), "wallet", "--card"])
        .args([
            &p.card_a,
            "--pin",
            "1234",
            "mint",
            "9007199254740993:coffee",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cap"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (mut offers, lines, b_wallet) = bob_takes_offers(&p, &["--accept", "-c", "2"]);

    // An honest trade brings Bob to 2^53 - 2 coffee.
    offer_until_sent(
        &p,
        &b_wallet,
        &format!("{NEAR_CAP}:{ca_dom}:coffee"),
        &format!("1:{cb_dom}:ticket"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wallet(&p.sock_b, &p.card_b, &["balance"])
        .contains(&format!("{NEAR_CAP}  {ca_dom}  coffee"))
    {
        assert!(Instant::now() < deadline, "the first trade did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Alice mints 2 more and offers them: Bob would hold 2^53.
    wallet(&p.sock_a, &p.card_a, &["mint", "2:coffee"]);
    offer_until_sent(
        &p,
        &b_wallet,
        &format!("2:{ca_dom}:coffee"),
        &format!("1:{cb_dom}:ticket"),
    );
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(offers.wait().unwrap().success(), "{rest:?}");
    let refused: Vec<&String> = rest
        .iter()
        .filter(|l| l.contains("refused by the card") && l.contains("cap"))
        .collect();
    assert_eq!(refused.len(), 1, "{rest:?}");

    // Nothing moved: Bob keeps his 2 tickets and has nothing pending.
    let b = wallet(&p.sock_b, &p.card_b, &["balance"]);
    assert!(b.contains(&format!("{NEAR_CAP}  {ca_dom}  coffee")), "{b}");
    assert!(b.contains(&format!("2  {cb_dom}  ticket")), "{b}");
    let a = wallet(&p.sock_a, &p.card_a, &["balance"]);
    assert!(a.contains(&format!("2  {ca_dom}  coffee")), "{a}");
    let ex = wallet(&p.sock_b, &p.card_b, &["exchanges"]);
    assert_eq!(
        ex.lines().filter(|l| l.contains("Responder")).count(),
        1,
        "{ex}"
    );
    assert!(ex.contains("Responder  Committed"), "{ex}");
}

/// The PIN need not be in argv: `--pin-file` (owner-only), or a prompt on
/// the terminal; without either and without a terminal, a clear error.
#[test]
fn the_pin_comes_from_a_file_or_the_terminal_not_only_argv() {
    use std::os::unix::fs::PermissionsExt;
    let p = pair();
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, "1234\n").unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let base = |c: &mut Command| {
        c.args(["--socket", p.sock_a.to_str().unwrap(), "wallet", "--card"])
            .arg(&p.card_a)
            .env_remove("TENET_PIN")
            .stdin(Stdio::null());
    };
    let mut c = Command::new(TENET);
    base(&mut c);
    let out = c
        .arg("--pin-file")
        .arg(&pin_file)
        .arg("balance")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A PIN file given while TENET_PIN is set (here to a wrong PIN) wins:
    // it is the channel that stays out of the process list.
    let mut c = Command::new(TENET);
    base(&mut c);
    let out = c
        .env("TENET_PIN", "9999")
        .arg("--pin-file")
        .arg(&pin_file)
        .arg("balance")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A PIN file others can read is refused, saying how to fix it.
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = Command::new(TENET);
    base(&mut c);
    let out = c
        .arg("--pin-file")
        .arg(&pin_file)
        .arg("balance")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("chmod 600"), "{e}");

    // No PIN and no terminal (setsid: no controlling terminal).
    let out = Command::new("setsid")
        .args([
            "-w",
            TENET,
            "--socket",
            p.sock_a.to_str().unwrap(),
            "wallet",
            "--card",
        ])
        .args([&p.card_a, "balance"])
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

    // On a terminal (script(1) makes one), the wallet asks.
    let cmd = format!(
        "{TENET} --socket {} wallet --card {} balance",
        p.sock_a.display(),
        p.card_a
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("TENET_PIN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The prompt is written to the terminal; answer once it shows.
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("PIN of card") {
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"1234\n").unwrap();
    }
    let mut rest = String::new();
    {
        use std::io::Read;
        stdout.read_to_string(&mut rest).unwrap();
    }
    assert!(child.wait().unwrap().success(), "{rest}");
    assert!(!rest.contains("PIN not accepted"), "{rest}");
}

/// `tenet tap --pcap` on Alice's host during an exchange, read back by
/// tshark with contrib/wireshark/tenet.lua: the four messages of the
/// exchange with their sender, destination and mtype, and the offer's
/// BER-TLV fields by name down to the amounts inside it.
#[test]
fn a_tapped_exchange_is_dissected_by_tshark_with_the_lua_dissector() {
    let p = pair();
    wallet(&p.sock_a, &p.card_a, &["mint", "5:coffee"]);
    wallet(&p.sock_b, &p.card_b, &["mint", "3:ticket"]);
    let capture = p._dir.path().join("exchange.pcap");
    let mut tap = Command::new(TENET)
        .args(["--socket", p.sock_a.to_str().unwrap(), "tap", "--pcap"])
        .arg(&capture)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(tap.stderr.take().unwrap()).lines();
    let first = said.next().unwrap().unwrap();
    assert!(first.starts_with("tapping as"), "{first}");
    let tap = Kill(tap);

    let mut offers = Command::new(TENET)
        .args(["--socket", p.sock_b.to_str().unwrap(), "wallet", "--card"])
        .args([&p.card_b, "--pin", "1234", "offers", "--accept", "-c", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(offers.stdout.take().unwrap()).lines();
    let b_wallet = lines.next().unwrap().unwrap();
    let b_wallet = b_wallet.split_whitespace().nth(1).unwrap().to_owned();
    let (give, want) = (
        format!("2:{}:coffee", p.ca_dom),
        format!("1:{}:ticket", p.cb_dom),
    );
    offer_until_sent(&p, &b_wallet, &give, &want);
    let _: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(offers.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wallet(&p.sock_a, &p.card_a, &["balance"]).contains("ticket") {
        assert!(Instant::now() < deadline, "not swapped");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(tap);

    let lua = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/wireshark/tenet.lua");
    let out = Command::new("tshark")
        .arg("-X")
        .arg(format!("lua_script:{}", lua.display()))
        .arg("-r")
        .arg(&capture)
        .args(["-T", "fields", "-E", "separator=|", "-E", "aggregator=,"])
        .args(["-e", "tenet.src", "-e", "tenet.dst", "-e", "tenet.mtype"])
        .args(["-e", "tenet.tlv.name"])
        .output()
        .expect("tshark runs (Debian: tshark)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    let find = |mtype: &str, src: &str, dst: &str| {
        rows.iter()
            .find(|r| r.len() == 4 && r[2] == mtype && r[0] == src && r[1] == dst)
            .unwrap_or_else(|| panic!("no {mtype} from {src} to {dst} in\n{text}"))
    };
    let offer = find("0x0202", &p.card_a, &b_wallet);
    for name in [
        "initiator",
        "responder",
        "give",
        "want",
        "n1",
        "issuer",
        "promise",
        "quantity",
    ] {
        assert!(
            offer[3].split(',').any(|n| n == name),
            "offer lacks {name}: {offer:?}"
        );
    }
    let agreement = find("0x0204", &p.card_b, &p.card_a);
    for name in [
        "offer digest",
        "exchange id h(n2)",
        "signature",
        "certificate",
    ] {
        assert!(agreement[3].split(',').any(|n| n == name), "{agreement:?}");
    }
    find("0x0205", &p.card_a, &p.card_b);
    find("0x0206", &p.card_b, &p.card_a);
}

/// The dissector's mtype names are the proto registry's.
#[test]
fn the_dissector_names_every_registered_mtype() {
    let lua = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/wireshark/tenet.lua"),
    )
    .unwrap();
    let table: Vec<(u16, String)> = lua
        .lines()
        .skip_while(|l| !l.starts_with("local mtype_names = {"))
        .skip(1)
        .take_while(|l| !l.starts_with('}'))
        .filter_map(|l| l.trim().strip_prefix("[0x"))
        .filter_map(|l| {
            let (hex, rest) = l.split_once("] = \"")?;
            let name = rest.strip_suffix("\",")?;
            Some((u16::from_str_radix(hex, 16).ok()?, name.to_owned()))
        })
        .collect();
    let registry: Vec<(u16, String)> = tenet_proto::Mtype::registry()
        .map(|(m, n)| (m.0, n.to_owned()))
        .collect();
    assert_eq!(table, registry);
}

/// RFC 4154's cancel from the command line: `tenet wallet withdraw` takes
/// back an open offer, and an agreement that comes later is refused by
/// Alice's card, which deleted nothing; Bob's card, which did delete its
/// ticket, aborts and gets it back. The offer says when it expires.
#[test]
fn a_withdrawn_offer_moves_nothing() {
    let p = pair();
    let (ca_dom, cb_dom) = (p.ca_dom, p.cb_dom);
    wallet(&p.sock_a, &p.card_a, &["mint", "5:coffee"]);
    wallet(&p.sock_b, &p.card_b, &["mint", "3:ticket"]);
    // Nothing open: refused, and says so.
    let out = Command::new(TENET)
        .args(["--socket", p.sock_a.to_str().unwrap(), "wallet", "--card"])
        .args([&p.card_a, "--pin", "1234", "withdraw"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no open offer to withdraw"), "{err}");

    let (mut offers, mut lines, b_wallet) = bob_takes_offers(&p, &["-c", "1"]);
    offer_until_sent(
        &p,
        &b_wallet,
        &format!("2:{ca_dom}:coffee"),
        &format!("1:{cb_dom}:ticket"),
    );
    let seen = lines.next().unwrap().unwrap();
    assert!(seen.contains(", expires 20"), "{seen}");
    let hex = lines.next().unwrap().unwrap().trim().to_owned();
    assert!(offers.wait().unwrap().success());

    let out = wallet(&p.sock_a, &p.card_a, &["withdraw", "--to", &p.card_b]);
    assert!(out.contains("withdrew the open offers to"), "{out}");
    // Bob accepts what he saw: his card deletes the ticket and agrees.
    wallet(&p.sock_b, &p.card_b, &["accept", &hex]);
    // The agreement goes before this echo on the same link, and Alice's
    // card answers in order: once the echo is back, it has handled (and
    // refused) the agreement.
    let sb = p.sock_b.to_str().unwrap();
    run(&["--socket", sb, "ping", &p.card_a, "-c", "1", "-i", "0"]);
    let ex = wallet(&p.sock_a, &p.card_a, &["exchanges"]);
    assert!(ex.contains("(no exchanges)"), "{ex}");
    let a = wallet(&p.sock_a, &p.card_a, &["balance"]);
    assert!(a.contains(&format!("5  {ca_dom}  coffee")), "{a}");
    assert!(!a.contains("ticket"), "{a}");
    // Bob's ticket is pending: his card aborts with the TTP (this pair has
    // none; the reliability harness and tenet-voucher's tests cover it).
    let ex = wallet(&p.sock_b, &p.card_b, &["exchanges"]);
    assert!(ex.contains("Responder  AwaitingConfirmation"), "{ex}");
    let b = wallet(&p.sock_b, &p.card_b, &["balance"]);
    assert!(b.contains(&format!("2  {cb_dom}  ticket")), "{b}");
}

/// `tenet verify` on Alice's host and `tenet wallet present` on Bob's:
/// Bob's card shows it holds at least 2 tickets for the verifier's
/// challenge, nothing moves; the same challenge answered again is refused
/// as a replay, and the verifier's next challenge is verified.
#[test]
fn a_card_presents_to_a_remote_verifier_and_a_replay_is_refused() {
    let p = pair();
    let cb_dom = p.cb_dom;
    wallet(&p.sock_b, &p.card_b, &["mint", "3:ticket"]);
    let ca = p._dir.path().join("ca").join("ca.pem");
    // Killed on drop, should an assertion fail first.
    let mut verifier = Kill(
        Command::new(TENET)
            .args(["--socket", p.sock_a.to_str().unwrap(), "verify", "--ca"])
            .arg(&ca)
            .args(["--amount", &format!("2:{cb_dom}:ticket"), "-c", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(verifier.0.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    let first = next();
    let f: Vec<&str> = first.split_whitespace().collect();
    let (id, challenge) = (f[1].to_owned(), f[3].to_owned());
    let present = |c: &str| {
        wallet(
            &p.sock_b,
            &p.card_b,
            &[
                "present",
                "--to",
                &id,
                "--challenge",
                c,
                "--amount",
                &format!("2:{cb_dom}:ticket"),
            ],
        )
    };
    present(&challenge);
    let got = next();
    assert!(got.starts_with(&format!("verified: {}", p.card_b)), "{got}");
    assert!(got.contains("holds at least 2"), "{got}");
    let second = next();
    let challenge2 = second.split_whitespace().nth(3).unwrap().to_owned();
    assert_ne!(challenge, challenge2);
    // The answered challenge again: a replay.
    present(&challenge);
    let got = next();
    assert!(
        got.contains("refused from") && got.contains("replayed"),
        "{got}"
    );
    present(&challenge2);
    assert!(next().starts_with("verified:"));
    assert!(verifier.0.wait().unwrap().success());
    // Bob still holds his 3 tickets; a card holding less refuses to sign.
    let b = wallet(&p.sock_b, &p.card_b, &["balance"]);
    assert!(b.contains(&format!("3  {cb_dom}  ticket")), "{b}");
    let out = Command::new(TENET)
        .args(["--socket", p.sock_b.to_str().unwrap(), "wallet", "--card"])
        .args([&p.card_b, "--pin", "1234", "present", "--to", &id])
        .args([
            "--challenge",
            &challenge2,
            "--amount",
            &format!("4:{cb_dom}:ticket"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds 3"), "{err}");
}

/// `tenet wallet transfer`: a gift of two coffees from Alice to Bob. A
/// wallet that accepts exchange offers (`--accept`) does not take a gift;
/// one run with `--accept-transfers` does, and the coffees move one way.
#[test]
fn a_gift_from_the_command_line_moves_vouchers_one_way() {
    let p = pair();
    let ca_dom = p.ca_dom;
    wallet(&p.sock_a, &p.card_a, &["mint", "5:coffee"]);
    let amount = format!("2:{ca_dom}:coffee");
    let give = |b_wallet: &str| {
        let args = [
            "transfer", "--to", &p.card_b, "--wallet", b_wallet, "--amount", &amount,
        ];
        alice_until_sent(&p, &args);
    };
    let (mut offers, lines, b_wallet) = bob_takes_offers(&p, &["--accept", "-c", "1"]);
    give(&b_wallet);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(offers.wait().unwrap().success());
    assert!(
        rest[0].starts_with("gift from") && rest[0].contains("coffee"),
        "{rest:?}"
    );
    assert_eq!(rest.len(), 3, "seen, not accepted: {rest:?}");
    assert_eq!(
        rest[2],
        "  not taken: a gift (--accept-transfers takes gifts)"
    );
    let (mut offers, lines, b_wallet) = bob_takes_offers(&p, &["--accept-transfers", "-c", "1"]);
    give(&b_wallet);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(offers.wait().unwrap().success());
    assert_eq!(
        rest.last().map(String::as_str),
        Some("  accepted (gift)"),
        "{rest:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = wallet(&p.sock_b, &p.card_b, &["balance"]);
        let a = wallet(&p.sock_a, &p.card_a, &["balance"]);
        if b.contains(&format!("2  {ca_dom}  coffee"))
            && a.contains(&format!("3  {ca_dom}  coffee"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gift did not arrive: {a} / {b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ex = wallet(&p.sock_b, &p.card_b, &["exchanges"]);
    assert!(
        ex.contains("Responder  Committed  gives nothing, gets 2"),
        "{ex}"
    );
}

/// `tenet wallet redeem`: Bob redeems Alice's coffee at Alice's card (the
/// issuer's), which takes redemptions by its wallet's standing policy
/// (`--redeem-if`): one above the policy is declined, one inside it
/// destroys the coffee. Bob's receipt verifies offline with the CA and is
/// refused once altered; both journals list the runs.
#[test]
fn a_coffee_redeemed_at_its_issuer_leaves_a_receipt_that_verifies_offline() {
    let p = pair();
    let ca_dom = p.ca_dom;
    let dir = p._dir.path();
    let state = dir.join("bob-state");
    let state = state.to_str().unwrap();
    wallet(&p.sock_a, &p.card_a, &["mint", "5:coffee"]);
    let amount = format!("2:{ca_dom}:coffee");
    let (mut offers, rest, b_wallet) = bob_takes_offers(&p, &["--accept-transfers", "-c", "1"]);
    let args = [
        "transfer", "--to", &p.card_b, "--wallet", &b_wallet, "--amount", &amount,
    ];
    alice_until_sent(&p, &args);
    let rest: Vec<String> = rest.map(|l| l.unwrap()).collect();
    assert!(offers.wait().unwrap().success(), "{rest:?}");
    // Alice's wallet redeems at most one coffee at a time.
    let policy = format!("REDEEM<=1:{ca_dom}:coffee");
    let mut alice = Kill(
        Command::new(TENET)
            .args(["--socket", p.sock_a.to_str().unwrap(), "wallet", "--card"])
            .args([&p.card_a, "--pin", "1234", "offers", "--redeem-if", &policy])
            .args(["-c", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(alice.0.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap();
    let bob = |args: &[&str]| {
        let mut all = vec!["--state", state];
        all.extend_from_slice(args);
        wallet(&p.sock_b, &p.card_b, &all)
    };
    // Bob's card must have the coffee before it offers it: wait for the gift.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bob(&["balance"]).contains(&format!("2  {ca_dom}  coffee")) {
        assert!(Instant::now() < deadline, "the gift did not arrive");
        std::thread::sleep(Duration::from_millis(100));
    }
    for q in [2, 1] {
        let what = format!("{q}:{ca_dom}:coffee");
        bob(&["redeem", "--at", &p.card_a, "--amount", &what]);
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(alice.0.wait().unwrap().success());
    assert!(rest[0].starts_with("redemption by"), "{rest:?}");
    assert_eq!(
        rest[2], "  declined: outside the redemption policy",
        "{rest:?}"
    );
    assert_eq!(rest[5], "  accepted (redemption)", "{rest:?}");
    // One coffee destroyed: Bob holds one, Alice's card credited nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let receipts = dir.join("receipts");
    let listed = loop {
        let r = bob(&["receipts", "--out", receipts.to_str().unwrap()]);
        if r.contains("redeemed 1 x") {
            break r;
        }
        assert!(Instant::now() < deadline, "no receipt: {r}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listed.contains(&format!("at {}", p.card_a)), "{listed}");
    assert!(bob(&["balance"]).contains(&format!("1  {ca_dom}  coffee")));
    let a = wallet(&p.sock_a, &p.card_a, &["balance"]);
    assert!(a.contains(&format!("3  {ca_dom}  coffee")), "{a}");
    let file = std::fs::read_dir(&receipts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let ca = dir.join("ca").join("ca.pem");
    let ok = run(&[
        "verify",
        "receipt",
        "--ca",
        ca.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(ok.starts_with("valid:") && ok.contains(&p.card_b), "{ok}");
    // Altered by one byte (the quantity, last in the amount), refused.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(9)
        .position(|w| w == [0x82, 8, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    bytes[at + 9] = 7;
    let forged = dir.join("forged.receipt");
    std::fs::write(&forged, &bytes).unwrap();
    let out = Command::new(TENET)
        .args([
            "verify",
            "receipt",
            "--ca",
            ca.to_str().unwrap(),
            forged.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused"), "{err}");
    // Bob's journal: the gift and the redemption, with its receipt.
    let h = bob(&["history", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&h).unwrap();
    let kinds: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"gift") && kinds.contains(&"redemption"),
        "{kinds:?}"
    );
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "redemption" && e["receipt"] == true)
    );
}
