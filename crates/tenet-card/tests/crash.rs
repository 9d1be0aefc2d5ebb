//! Power cuts during writes: a separate process commits records to a card
//! store and is killed (SIGKILL) at random moments, many times; after each
//! kill the store must hold one whole record, the last one reported
//! committed or the one being written, never a mix.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tenet_card::{FileStore, Storage};

const TORTURE: &str = env!("CARGO_BIN_EXE_tenet-store-torture");

fn record_len(n: u64) -> usize {
    8 * (64 + (n as usize * 37) % 700)
}

#[test]
fn store_survives_kills_in_the_middle_of_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.store");
    drop(FileStore::create(&path, 8 * 800).unwrap());
    let mut last_seen = 0u64;
    let mut kills_mid_run = 0;
    for round in 0..60u64 {
        let mut child = Command::new(TORTURE)
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                last = line
                    .strip_prefix("committed ")
                    .and_then(|n| n.parse::<u64>().ok())
                    .or(last);
            }
            last
        });
        // Varying delays put the kill at different points of a write.
        std::thread::sleep(Duration::from_micros(3_000 + (round * 7_919) % 25_000));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.code().is_none() {
            kills_mid_run += 1;
        }
        let reported = reader.join().unwrap().unwrap_or(last_seen);

        let mut store = FileStore::open(&path).expect("store opens after a kill");
        let rec = store.load().unwrap();
        let Some(rec) = rec else {
            assert_eq!(
                reported, 0,
                "round {round}: records were committed but none is found"
            );
            continue;
        };
        let n = u64::from_be_bytes(rec[..8].try_into().unwrap());
        assert_eq!(
            rec.len(),
            record_len(n),
            "round {round}: record {n} has the wrong length"
        );
        assert!(
            rec.chunks(8).all(|c| c == n.to_be_bytes()),
            "round {round}: record {n} is a mix"
        );
        assert!(
            n == reported || n == reported + 1,
            "round {round}: store holds {n}, last reported committed was {reported}"
        );
        assert!(
            n >= last_seen,
            "round {round}: went back from {last_seen} to {n}"
        );
        last_seen = n;
    }
    assert!(
        last_seen > 60,
        "the writer made progress: {last_seen} commits"
    );
    assert_eq!(kills_mid_run, 60, "every round was a SIGKILL");
}
