//! Log events captured in a test binary, to wait for what a daemon logs
//! (an address it bound, a link that came up, a message a guard dropped).
//! Shared by tenet-host's and tenet-attest's tests, which include this
//! file by path.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::watch;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long a wait for an event lasts.
pub const WAIT: Duration = Duration::from_secs(10);

/// One tracing event: its message and its fields, as text.
#[derive(Debug, Clone, Default)]
pub struct Logged {
    /// The event's message.
    pub message: String,
    /// Its other fields.
    pub fields: BTreeMap<String, String>,
}

impl Logged {
    /// The field `name`, or empty.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

impl tracing::field::Visit for Logged {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        let text = format!("{v:?}");
        if f.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(f.name().to_owned(), text);
        }
    }

    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        self.record_debug(f, &format_args!("{v}"));
    }
}

/// Every event at INFO or above of this test binary (tests run in
/// parallel: each looks for its own hosts' ids).
static EVENTS: LazyLock<watch::Sender<Vec<Logged>>> =
    LazyLock::new(|| watch::channel(Vec::new()).0);

struct Capture;

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut l = Logged::default();
        e.record(&mut l);
        EVENTS.send_modify(|v| v.push(l));
    }
}

/// Captures this binary's events at INFO and above (once); `TENET_LOG`
/// shows them too.
pub fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let shown = tracing_subscriber::EnvFilter::try_from_env("TENET_LOG")
            .unwrap_or_else(|_| "off".into());
        let _ = tracing_subscriber::registry()
            .with(Capture.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(shown),
            )
            .try_init();
    });
}

/// Waits (up to [`WAIT`]) for the first event `matches` takes.
pub async fn logged_where(what: &str, matches: impl Fn(&Logged) -> bool) -> Logged {
    let mut rx = EVENTS.subscribe();
    let found = tokio::time::timeout(WAIT, rx.wait_for(|v| v.iter().any(&matches))).await;
    match found {
        Ok(Ok(v)) => v.iter().find(|l| matches(l)).cloned().expect("found"),
        _ => panic!("no event {what} in time"),
    }
}
