//! Test helper: commits numbered records to a card store as fast as it can
//! and prints `committed N` after each commit returns. The crash test kills
//! it at random moments and checks that the store holds a whole record.
//!
//! Record N is N (u64 BE) repeated `record_len(N) / 8` times.

use std::io::Write;

use tenet_card::{FileStore, Storage};

/// Length of record `n`: varies so torn writes of different sizes occur.
fn record_len(n: u64) -> usize {
    8 * (64 + (n as usize * 37) % 700)
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: tenet-store-torture STORE");
    let mut store = FileStore::open(std::path::Path::new(&path)).expect("store opens");
    let start = match store.load().expect("store loads") {
        Some(r) => u64::from_be_bytes(r[..8].try_into().expect("8 bytes")),
        None => 0,
    };
    let mut out = std::io::stdout().lock();
    for n in start + 1.. {
        let rec: Vec<u8> = std::iter::repeat_n(n.to_be_bytes(), record_len(n) / 8)
            .flatten()
            .collect();
        store.commit(&rec).expect("commit");
        writeln!(out, "committed {n}").expect("stdout");
        out.flush().expect("stdout");
    }
}
