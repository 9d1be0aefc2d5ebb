//! One app floods the host's card with large echo requests; another app's
//! echo to the card is still answered, promptly (Security II, item 1).
//!
//! The flooder pipelines its requests (it writes them without waiting for
//! each acknowledgement, and reads whatever comes back on another task), so
//! the card's queue in the dispatch table stays as full as the daemon lets
//! it be. Two bounds keep the card for everyone: the flooder holds at most
//! its share of the card's queue (half, by default), so the honest app's
//! request is stored; and the card's queue serves its senders in turn, so
//! that request waits behind at most one flood request besides the one the
//! card is busy with, not behind all of them.
//!
//! The card link uses short APDUs, as many readers do: a large message then
//! costs hundreds of APDUs and the flood outpaces the card, as it would a
//! real one (over extended APDUs the in-process card answers faster than
//! one app can flood it). Time is never measured: a third app taps what the
//! card sends and what the honest app sends, so the order in which the
//! daemon stored them says how many flood requests the card answered
//! between the honest request and its answer. Waits are for events, with
//! deadlines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tenet_card::{Card, CardLimits, FileStore, Personalization, SeededEntropy};
use tenet_client::{Capability, Incoming};
use tenet_host::{Config, HostHandle};
use tenet_proto::app::{ClientFrame, DaemonFrame, ErrorCode, MAX_APP_FRAME};
use tenet_proto::frame::{begin_frame, finish_frame, split_frame};
use tenet_proto::{Codec, Domain, EntityId, Filter, Message, Mtype};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;

mod support;
use support::WAIT;

const DOMAIN: Domain = Domain::new([0xcf; 12]);
/// Bytes of each flood request's param: a large echo request.
const FLOOD_PARAM: usize = 60_000;
/// Honest echoes measured while the flood goes on.
const ROUNDS: usize = 20;
/// The most flood requests the card may answer between storing the honest
/// request and answering it: the one it was busy with, and one whose turn
/// came first. The flooder keeps about 68 requests waiting (its half of
/// the card's 8 MiB); before senders were bounded and served in turn, 1024.
const MOST_WAIT: u64 = 2;

fn make_card(dir: &Path) -> PathBuf {
    let path = dir.join("card.store");
    let store = FileStore::create(&path, 16 * 1024).unwrap();
    let p = Personalization {
        domain: DOMAIN,
        pin: b"2468".to_vec(),
        puk: b"13572468".to_vec(),
    };
    drop(
        Card::personalize(
            store,
            &p,
            CardLimits::default(),
            Box::new(SeededEntropy::new(9)),
        )
        .unwrap(),
    );
    path
}

async fn host(dir: &Path) -> HostHandle {
    let card = make_card(dir);
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.join("host.sock"));
    cfg.host.state_dir = Some(dir.join("state"));
    cfg.card.virtual_store = Some(card);
    cfg.card.short_apdus = Some(true);
    tenet_host::start(&cfg).await.unwrap()
}

fn frame(f: &ClientFrame) -> Vec<u8> {
    let mut out = Vec::new();
    let at = begin_frame(&mut out);
    f.encode(&mut out);
    finish_frame(&mut out, at);
    out
}

/// What the flooder's reader saw.
#[derive(Default)]
struct Seen {
    /// Requests refused with "queue full".
    refused: AtomicU64,
    /// Echo replies from the card.
    answered: AtomicU64,
    /// Signalled at every refusal.
    refusal: Notify,
}

/// An app that writes echo requests to the card as fast as the daemon reads
/// them and discards whatever comes back.
struct Flooder {
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
    seen: Arc<Seen>,
}

impl Flooder {
    async fn start(socket: &Path, card: EntityId) -> Self {
        let mut s = UnixStream::connect(socket).await.unwrap();
        s.write_all(&frame(&ClientFrame::Acquire)).await.unwrap();
        let mut buf = Vec::new();
        let id = loop {
            if let Some((used, body)) = split_frame(&buf, MAX_APP_FRAME).unwrap() {
                let DaemonFrame::Acquired(id) = DaemonFrame::decode(body).unwrap() else {
                    panic!("expected Acquired");
                };
                buf.drain(..used);
                break id;
            }
            assert!(s.read_buf(&mut buf).await.unwrap() > 0, "daemon closed");
        };
        let (mut rd, mut wr) = s.into_split();
        let seen = Arc::new(Seen::default());
        let writer = tokio::spawn(async move {
            for k in 0u64.. {
                let mut param = k.to_be_bytes().to_vec();
                param.resize(8 + FLOOD_PARAM, 0x5a);
                let m = Message::new(id, card, Mtype::ECHO_REQUEST, param);
                if wr.write_all(&frame(&ClientFrame::Send(m))).await.is_err() {
                    return;
                }
            }
        });
        let seen2 = seen.clone();
        let reader = tokio::spawn(async move {
            loop {
                while let Some((used, body)) = split_frame(&buf, MAX_APP_FRAME).unwrap() {
                    match DaemonFrame::decode(body).unwrap() {
                        DaemonFrame::Error { code, .. } if code == ErrorCode::QUEUE_FULL => {
                            seen2.refused.fetch_add(1, Ordering::Relaxed);
                            seen2.refusal.notify_waiters();
                        }
                        DaemonFrame::Deliver { message, .. }
                            if message.mtype() == Mtype::ECHO_REPLY =>
                        {
                            seen2.answered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    buf.drain(..used);
                }
                buf.reserve(256 * 1024);
                match rd.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
            }
        });
        Self {
            writer,
            reader,
            seen,
        }
    }

    /// Waits until the daemon refuses one of its requests: the card's queue
    /// holds all of the flooder it will take.
    async fn refused(&self) {
        let before = self.seen.refused.load(Ordering::Relaxed);
        tokio::time::timeout(WAIT, async {
            loop {
                let refusal = self.seen.refusal.notified();
                if self.seen.refused.load(Ordering::Relaxed) > before {
                    return;
                }
                refusal.await;
            }
        })
        .await
        .expect("the flood fills the flooder's share of the card's queue");
    }

    fn stop(self) {
        self.writer.abort();
        self.reader.abort();
    }
}

/// What the watching app's taps saw, in the order the daemon stored it.
#[derive(Debug)]
enum Seen2 {
    /// The honest app sent this param (its echo request).
    HonestRequest(Vec<u8>),
    /// The card answered the honest app with this param.
    HonestAnswer(Vec<u8>),
    /// The card answered the flooder.
    FloodAnswer,
    /// Copies of what the card sent skipped (counted as flood answers).
    Missed(u64),
    /// Copies of what the honest app sent skipped.
    HonestMissed,
}

/// An app tapping everything the card sends and everything the honest app
/// sends: the daemon stores, and copies, in one order.
struct Watcher {
    task: tokio::task::JoinHandle<()>,
    rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Seen2>>,
}

impl Watcher {
    async fn start(socket: &Path, card: EntityId, honest: EntityId) -> Self {
        // Its id comes from the card, whose queue the flood keeps full: the
        // smartcard proxy still takes the request within a few messages.
        let mut c = tokio::time::timeout(WAIT, Capability::acquire(socket))
            .await
            .expect("an app acquires an id from the card during the flood")
            .unwrap();
        let from_card = c
            .tap(Filter {
                src: Some(card),
                ..Filter::ANY
            })
            .await
            .unwrap();
        c.tap(Filter {
            src: Some(honest),
            ..Filter::ANY
        })
        .await
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(item) = c.next().await {
                let seen = match item {
                    Incoming::Tapped { message: m, .. } if m.src() == honest => {
                        Seen2::HonestRequest(m.param)
                    }
                    Incoming::Tapped { message: m, .. } if m.dst() == honest => {
                        Seen2::HonestAnswer(m.param)
                    }
                    Incoming::Tapped { .. } => Seen2::FloodAnswer,
                    Incoming::Lagged { tap, missed } if tap == from_card => Seen2::Missed(missed),
                    Incoming::Lagged { .. } => Seen2::HonestMissed,
                    _ => continue,
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        Self {
            task,
            rx: tokio::sync::Mutex::new(rx),
        }
    }

    /// How many flood requests the card answered between storing the
    /// honest request ending in `tag` and answering it.
    async fn flood_answers_while_waiting(&self, tag: &[u8]) -> u64 {
        let mut rx = self.rx.lock().await;
        let mut between: Option<u64> = None;
        let counting = async {
            loop {
                let seen = rx.recv().await.expect("the watcher runs");
                match (seen, between.as_mut()) {
                    (Seen2::HonestRequest(p), None) if p.ends_with(tag) => between = Some(0),
                    (Seen2::HonestAnswer(p), Some(n)) if p.ends_with(tag) => return *n,
                    (Seen2::FloodAnswer, Some(n)) => *n += 1,
                    (Seen2::Missed(k), Some(n)) => *n += k,
                    (Seen2::HonestMissed, _) => panic!("the watcher missed the honest exchange"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(WAIT, counting)
            .await
            .unwrap_or_else(|_| panic!("the watcher did not see the honest exchange in time"))
    }

    fn stop(self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_answers_an_honest_app_while_another_floods_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path()).await;
    let card = h.card_id().unwrap();
    let mut honest = Capability::acquire(h.socket_path()).await.unwrap();
    honest
        .echo(card, b"before", WAIT)
        .await
        .expect("the card answers");

    let flood = Flooder::start(h.socket_path(), card).await;
    flood.refused().await;
    let watch = Watcher::start(h.socket_path(), card, honest.id()).await;
    let mut waited = Vec::new();
    for i in 0..ROUNDS {
        // Each round starts with the card's queue full of the flood.
        flood.refused().await;
        let tag = format!("honest {i}");
        honest
            .echo(card, tag.as_bytes(), WAIT)
            .await
            .unwrap_or_else(|e| panic!("round {i}: the honest echo failed: {e}"));
        waited.push(watch.flood_answers_while_waiting(tag.as_bytes()).await);
    }
    let answered = flood.seen.answered.load(Ordering::Relaxed);
    let refused = flood.seen.refused.load(Ordering::Relaxed);
    flood.stop();
    watch.stop();
    eprintln!(
        "flood requests the card answered while the honest one waited: {waited:?}; \
         flood: {answered} answered, {refused} refused; table: {:?}",
        h.stats()
    );
    assert!(
        waited.iter().all(|&n| n <= MOST_WAIT),
        "the honest echo waited behind the flood: {waited:?} flood requests (at most \
         {MOST_WAIT})"
    );
    h.shutdown().await;
}
