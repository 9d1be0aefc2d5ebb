//! Helpers shared by the daemon's integration tests (tenet-host's, and
//! tenet-voucher-app's, which include this file by path).
// Each test file uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use tenet_client::Capability;
use tenet_proto::Codec;
use tenet_proto::app::{ClientFrame, DaemonFrame, ErrorCode, MAX_APP_FRAME};
use tenet_proto::frame::{begin_frame, finish_frame, split_frame};
use tenet_proto::{EntityId, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long a test waits for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// The next message for `c`, within [`WAIT`].
pub async fn recv(c: &mut Capability) -> Message {
    tokio::time::timeout(WAIT, c.receive())
        .await
        .expect("message in time")
        .unwrap()
}

/// Echoes `dst` until it answers (links come up in the background).
pub async fn echo_eventually(c: &mut Capability, dst: EntityId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match c.echo(dst, b"", Duration::from_secs(1)).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{dst} never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// An app speaking the socket protocol by hand, for what the library won't do.
pub struct Raw {
    /// The socket, for writing bytes no frame would hold.
    pub s: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(path: &Path) -> Self {
        Self {
            s: UnixStream::connect(path).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send_bytes(&mut self, body: &[u8]) {
        let mut out = Vec::new();
        let at = begin_frame(&mut out);
        out.extend_from_slice(body);
        finish_frame(&mut out, at);
        self.s.write_all(&out).await.unwrap();
    }

    pub async fn request(&mut self, f: &ClientFrame) -> DaemonFrame {
        self.send_bytes(&f.to_bytes()).await;
        self.read().await.expect("daemon answered")
    }

    /// The next frame, or None at end of stream.
    pub async fn read(&mut self) -> Option<DaemonFrame> {
        loop {
            if let Some((used, body)) = split_frame(&self.buf, MAX_APP_FRAME).unwrap() {
                let f = DaemonFrame::decode(body).unwrap();
                self.buf.drain(..used);
                return Some(f);
            }
            let n = tokio::time::timeout(WAIT, self.s.read_buf(&mut self.buf))
                .await
                .expect("daemon answers in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn acquire(&mut self) -> EntityId {
        match self.request(&ClientFrame::Acquire).await {
            DaemonFrame::Acquired(id) => id,
            other => panic!("expected Acquired, got {other:?}"),
        }
    }
}

/// The code of an error frame; panics on anything else.
pub fn error_code(f: DaemonFrame) -> ErrorCode {
    match f {
        DaemonFrame::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Warnings and errors logged in this test binary, in order, each as
/// `message field=value ...`; a watch counts them so that tests can wait
/// for one.
static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static LOGGED: std::sync::LazyLock<tokio::sync::watch::Sender<usize>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(0).0);

struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0.insert_str(0, &format!("{v:?}"));
                } else {
                    self.0.push_str(&format!(" {}={v:?}", f.name()));
                }
            }
        }
        let mut t = Text(String::new());
        event.record(&mut t);
        let n = {
            let mut w = WARNINGS.lock().unwrap_or_else(|p| p.into_inner());
            w.push(t.0);
            w.len()
        };
        LOGGED.send_replace(n);
    }
}

/// Logs to the test output (`TENET_LOG`, default `warn`) and captures
/// warnings for [`warning`].
pub fn logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("TENET_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(filter),
        )
        .with(Capture.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
        .try_init();
}

/// How many warnings were logged so far.
pub fn warnings_so_far() -> usize {
    WARNINGS.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// Waits (up to [`WAIT`]) for a warning after the first `after` that
/// contains every one of `parts`.
pub async fn warning(after: usize, parts: &[&str]) -> String {
    let mut seen = LOGGED.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(w) = WARNINGS.lock().unwrap_or_else(|p| p.into_inner())[after..]
            .iter()
            .find(|w| parts.iter().all(|p| w.contains(p)))
        {
            return w.clone();
        }
        tokio::time::timeout_at(deadline, seen.changed())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no warning with {parts:?} within {WAIT:?}; logged: {:#?}",
                    &WARNINGS.lock().unwrap()[after..]
                )
            })
            .expect("the watch lives as long as the test binary");
    }
}
