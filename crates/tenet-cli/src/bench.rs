//! `tenet bench`: benchmarks that run ours and the baseline side by side in
//! one process, at the same moment, and print ratios. Absolute times on a
//! shared machine are noise; the ratios are the result.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use tenet_client::Capability;
use tenet_dispatch::{DispatchTable, Ingress, Limits};
use tenet_proto::frame::{split_frame, write_frame};
use tenet_proto::{Domain, EntityId, Message, Mtype, Port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which benchmark.
#[derive(Subcommand)]
pub enum Which {
    /// Dispatch throughput in-process; app-to-app echo through the daemon
    /// next to a raw Unix-socket echo.
    Core {
        /// Messages through the dispatch table.
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
        /// Echo round trips per contender.
        #[arg(long, default_value_t = 20_000)]
        echoes: u32,
    },
    /// A remote echo through two daemons over TLS and over NATS, next to a
    /// raw TCP loopback echo and a plain NATS request/reply (starts its own
    /// nats-server if the binary is installed).
    Remote {
        /// Round trips per contender.
        #[arg(long, default_value_t = 5_000)]
        echoes: u32,
    },
    /// One APDU through pcscd + vpcd next to the in-process card link, and
    /// `ping CARD-ID` through the daemon over both (needs `--features pcsc`
    /// and pcscd running with the vpcd driver).
    Card {
        /// Round trips per contender.
        #[arg(long, default_value_t = 5_000)]
        rounds: u32,
        /// vpcd's address.
        #[arg(long, default_value = "127.0.0.1:35963")]
        vpcd: String,
        /// The PC/SC reader of that vpcd slot.
        #[arg(long, default_value = "Virtual PCD 00 00")]
        reader: String,
    },
}

pub async fn run(which: Which) -> Result<ExitCode> {
    match which {
        Which::Core { messages, echoes } => core(messages, echoes).await,
        Which::Remote { echoes } => crate::bench_remote::run(echoes).await,
        Which::Card {
            rounds,
            vpcd,
            reader,
        } => crate::bench_card::run(rounds, &vpcd, &reader).await,
    }
}

pub(crate) struct Summary {
    pub(crate) mean: Duration,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

pub(crate) fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort();
    let n = v.len().max(1);
    Summary {
        mean: v.iter().sum::<Duration>() / n as u32,
        p50: v[v.len() / 2],
        p99: v[(v.len() * 99 / 100).min(v.len() - 1)],
    }
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The raw baseline's server: sends every length-prefixed frame back until
/// the peer closes.
pub(crate) async fn echo_frames<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut start = 0;
        let mut out = Vec::new();
        while let Ok(Some((used, b))) = split_frame(&buf[start..], 1 << 16) {
            write_frame(&mut out, b);
            start += used;
        }
        buf.drain(..start);
        s.write_all(&out).await?;
    }
}

/// Prints the header of a round-trip table.
pub(crate) fn print_header() {
    println!(
        "\n{:<52} {:>10} {:>10} {:>10} {:>10}",
        "round trip", "mean us", "p50 us", "p99 us", "p50 ratio"
    );
}

/// Prints one row of a round-trip table, its p50 as a ratio to `base`'s.
pub(crate) fn print_row(name: &str, s: &Summary, base: &Summary) {
    println!(
        "{:<52} {:>10.1} {:>10.1} {:>10.1} {:>9.2}x",
        name,
        us(s.mean),
        us(s.p50),
        us(s.p99),
        s.p50.as_secs_f64() / base.p50.as_secs_f64()
    );
}

/// Messages per second stored into and taken from a dispatch table on one
/// thread: two endpoints, one bound id each, one tap-less path.
fn dispatch_throughput(n: u64) -> f64 {
    let d = Domain::new([1; 12]);
    let mut t = DispatchTable::new(d.owner(), Limits::default());
    let (a, b) = (t.add_endpoint(), t.add_endpoint());
    let (ia, ib) = (
        EntityId::new(d, Port::new(1)),
        EntityId::new(d, Port::new(2)),
    );
    t.bind(a, ia).expect("fresh id");
    t.bind(b, ib).expect("fresh id");
    let template = Message::new(ia, ib, Mtype(0x8001), vec![0; 16]);
    let now = Instant::now();
    let start = Instant::now();
    let mut taken = 0u64;
    for i in 0..n {
        t.store(Ingress::App, template.clone(), now)
            .expect("bounds not reached");
        if i % 64 == 63 {
            while let Some(d) = t.take(b) {
                std::hint::black_box(&d);
                taken += 1;
            }
            while t.poll_event().is_some() {}
        }
    }
    while t.take(b).is_some() {
        taken += 1;
    }
    assert_eq!(taken, n, "every message read once");
    n as f64 / start.elapsed().as_secs_f64()
}

async fn raw_echo(n: u32, warmup: u32, body: usize) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raw.sock");
    let listener = tokio::net::UnixListener::bind(&path)?;
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await?;
        echo_frames(s).await
    });
    let mut c = tokio::net::UnixStream::connect(&path).await?;
    let mut frame = Vec::new();
    write_frame(&mut frame, &vec![7u8; body]);
    let mut rbuf = vec![0u8; frame.len()];
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..warmup + n {
        let t = Instant::now();
        c.write_all(&frame).await?;
        c.read_exact(&mut rbuf).await?;
        if i >= warmup {
            out.push(t.elapsed());
        }
    }
    drop(c);
    server.await??;
    Ok(out)
}

async fn daemon_echo(
    socket: &std::path::Path,
    to_app: bool,
    n: u32,
    warmup: u32,
) -> Result<Vec<Duration>> {
    let mut a = Capability::acquire(socket).await?;
    let (dst, responder) = if to_app {
        let mut b = Capability::acquire(socket).await?;
        let id = b.id();
        let task = tokio::spawn(async move {
            // Answers echo automatically while reading.
            loop {
                if b.next().await.is_err() {
                    break;
                }
            }
        });
        (id, Some(task))
    } else {
        (a.id().domain().owner(), None)
    };
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..warmup + n {
        let rtt = a.echo(dst, &[], Duration::from_secs(5)).await?;
        if i >= warmup {
            out.push(rtt);
        }
    }
    if let Some(t) = responder {
        t.abort();
    }
    Ok(out)
}

async fn core(messages: u64, echoes: u32) -> Result<ExitCode> {
    println!(
        "# tenet bench core ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dispatch = tokio::task::spawn_blocking(move || dispatch_throughput(messages)).await?;
    println!(
        "dispatch table, one thread: {:.0} messages/s (store + take, {messages} messages)",
        dispatch
    );

    let dir = tempfile::tempdir()?;
    let mut cfg = tenet_host::Config::default();
    cfg.host.socket = Some(dir.path().join("host.sock"));
    cfg.host.state_dir = Some(dir.path().join("state"));
    let host = tenet_host::start(&cfg)
        .await
        .context("starting the daemon")?;
    let socket = host.socket_path().to_owned();
    let warmup = (echoes / 10).max(100);
    // The echo param is an 8-byte sequence number: the raw echo carries a
    // frame body of the same size as the eTP message (34 + 8 bytes).
    let body = tenet_proto::HEADER_LEN + 8;

    // Interleave rounds so both contenders see the same machine state.
    let rounds = 5u32;
    let per = (echoes / rounds).max(1);
    let (mut raw, mut app, mut hosted) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw.extend(raw_echo(per, warmup / rounds, body).await?);
        app.extend(daemon_echo(&socket, true, per, warmup / rounds).await?);
        hosted.extend(daemon_echo(&socket, false, per, warmup / rounds).await?);
    }
    host.shutdown().await;
    let (raw, app, hosted) = (summarize(raw), summarize(app), summarize(hosted));
    print_header();
    print_row("raw Unix-socket echo (baseline)", &raw, &raw);
    print_row("app -> daemon -> host entity -> app", &hosted, &raw);
    print_row("app -> daemon -> app -> daemon -> app", &app, &raw);
    println!(
        "\naims: dispatch >= 1,000,000 messages/s: {}; app-to-app echo within 2x raw: {} ({:.2}x)",
        if dispatch >= 1e6 { "met" } else { "NOT met" },
        if app.p50.as_secs_f64() <= 2.0 * raw.p50.as_secs_f64() {
            "met"
        } else {
            "NOT met"
        },
        app.p50.as_secs_f64() / raw.p50.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
