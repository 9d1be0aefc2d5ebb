//! The ISO 7816-4 conformance suite through pcscd and vpcd, with a client
//! the project did not write: `tests/conformance/iso7816.py` (pyscard, run
//! by Debian's `/usr/bin/python3`) drives a fresh virtual card, connected
//! to vpcd here as `tenet card serve` connects it. The script's cases and
//! expected status words are those of `docs/apdu.md`.
//!
//! Needs pcscd running with the vpcd driver (`scripts/test.sh` starts it)
//! and `python3-pyscard`. `TENET_VPCD_ADDR` (default `127.0.0.1:35963`)
//! and `TENET_PCSC_READER` (default `Virtual PCD 00 00`) name vpcd's first
//! slot. The machine has one pcscd: this binary holds one test, and cargo
//! runs test binaries one after another, so no other PC/SC test (those of
//! `tenet-host` and `tenet-cli`) runs at the same time.
#![cfg(feature = "pcsc")]

use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tenet_card::{Card, CardLimits, FileStore, Personalization, SeededEntropy, SystemEntropy};
use tenet_proto::Domain;

const DOMAIN: [u8; 12] = [
    0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
];

/// Debian's interpreter, which has python3-pyscard (the first `python3` on
/// PATH may be another one).
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn iso7816_4_conformance_through_pcscd_with_pyscard() {
    let addr = std::env::var("TENET_VPCD_ADDR").unwrap_or_else(|_| "127.0.0.1:35963".into());
    let reader = std::env::var("TENET_PCSC_READER").unwrap_or_else(|_| "Virtual PCD 00 00".into());
    let pyscard = Command::new(PYTHON)
        .args(["-c", "import smartcard"])
        .status()
        .expect("run /usr/bin/python3");
    assert!(
        pyscard.success(),
        "pyscard is missing: apt-get install python3-pyscard (scripts/test.sh does)"
    );

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("card.store");
    let p = Personalization {
        domain: Domain::new(DOMAIN),
        pin: b"1234".to_vec(),
        puk: b"12345678".to_vec(),
    };
    drop(
        Card::personalize(
            FileStore::create(&store, 16 * 1024).unwrap(),
            &p,
            CardLimits::default(),
            Box::new(SeededEntropy::new(20)),
        )
        .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!(
                "vpcd does not listen at {addr} ({e}); is pcscd running with the vpcd driver? scripts/test.sh starts it"
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let theirs = stream.try_clone().unwrap();
    let thread = std::thread::spawn(move || {
        let mut card = Card::open(
            FileStore::open(&store).unwrap(),
            CardLimits::default(),
            Box::new(SystemEntropy),
        )
        .unwrap();
        let _ = tenet_card::vpcd::serve_connection(&mut card, theirs);
    });

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("tests/conformance/iso7816.py");
    let domain: String = DOMAIN.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new(PYTHON)
        .arg(&script)
        .arg(&reader)
        .arg(&domain)
        .arg(root.join("docs/apdu.md"))
        .output()
        .expect("run the conformance script");

    // Pull the card, and give pcscd (vpcd polls every 400 ms) time to see
    // the reader empty before the next PC/SC test inserts its card.
    let _ = stream.shutdown(Shutdown::Both);
    thread.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the conformance suite failed: {}",
        out.status
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("conformance: ") && summary.ends_with(", 0 failed"),
        "unexpected summary: {summary}"
    );
    assert!(!stdout.contains("FAIL"));
}
