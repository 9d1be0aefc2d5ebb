//! `tenet bench core`: the dispatch table alone, then app echo through a
//! real daemon on its Unix socket next to the same echo over a bare Unix
//! socket: the price of the daemon per message.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tenet_client::Capability;
use tenet_dispatch::{DispatchTable, Ingress, Limits};
use tenet_proto::frame::{split_frame, write_frame};
use tenet_proto::{Domain, EntityId, Message, Mtype, Port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{Plot, Section, progress, ratio};
use crate::stats::{rtt_table, summarize, us};

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
    raw_echo_via(n, warmup, body, false).await
}

/// The raw echo, through a relay with `relayed`: the client's Unix socket
/// to a relay process, the relay's own Unix socket to the echo server and
/// back, as many socket crossings as an app-to-app echo through the
/// daemon (four). The relay forwards bytes as they come.
async fn raw_echo_via(n: u32, warmup: u32, body: usize, relayed: bool) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raw.sock");
    let listener = tokio::net::UnixListener::bind(&path)?;
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await?;
        echo_frames(s).await
    });
    let mut connect_to = path.clone();
    let relay = if relayed {
        let relay_path = dir.path().join("relay.sock");
        let relay_listener = tokio::net::UnixListener::bind(&relay_path)?;
        let target = path.clone();
        connect_to = relay_path;
        Some(tokio::spawn(async move {
            let (mut a, _) = relay_listener.accept().await?;
            let mut b = tokio::net::UnixStream::connect(&target).await?;
            tokio::io::copy_bidirectional(&mut a, &mut b)
                .await
                .map(|_| ())
        }))
    } else {
        None
    };
    let mut c = tokio::net::UnixStream::connect(&connect_to).await?;
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
    if let Some(r) = relay {
        r.await??;
    }
    server.await??;
    Ok(out)
}

/// Rounds of the echo benchmarks (`core`, `remote`), interleaved: round
/// trips of tens of microseconds on two shared cores fall into two modes
/// by where the scheduler puts each side's threads, for a whole round, so
/// the median of many short rounds is steadier than that of a few long
/// ones.
pub(crate) const ROUNDS: u32 = 15;

/// The median of per-round ratios `a[r] / b[r]` of p50s, with their
/// range: (median, min, max).
pub(crate) fn round_ratios(a: &[Vec<Duration>], b: &[Vec<Duration>]) -> (f64, f64, f64) {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            summarize(x.clone()).p50.as_secs_f64() / summarize(y.clone()).p50.as_secs_f64()
        })
        .collect();
    r.sort_by(f64::total_cmp);
    (r[r.len() / 2], r[0], r[r.len() - 1])
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

/// Runs the scenario: `messages` through the dispatch table, `echoes`
/// round trips per contender.
pub(crate) async fn run(messages: u64, echoes: u32) -> Result<Section> {
    let pb = progress(6, "core");
    let dispatch = tokio::task::spawn_blocking(move || dispatch_throughput(messages)).await?;
    pb.inc(1);

    let dir = tempfile::tempdir()?;
    let mut cfg = tenet_host::Config::default();
    cfg.host.socket = Some(dir.path().join("host.sock"));
    cfg.host.state_dir = Some(dir.path().join("state"));
    let host = tenet_voucher_app::start(&cfg)
        .await
        .context("starting the daemon")?;
    let socket = host.socket_path().to_owned();
    let warmup = (echoes / 10).max(100);
    // The echo param is an 8-byte sequence number: the raw echo carries a
    // frame body of the same size as the eTP message (34 + 8 bytes).
    let body = tenet_proto::HEADER_LEN + 8;

    // Interleave rounds so both contenders see the same machine state.
    let rounds = ROUNDS;
    let per = (echoes / rounds).max(1);
    let mut per_round: [Vec<Vec<Duration>>; 4] = Default::default();
    for _ in 0..rounds {
        let w = warmup / rounds;
        per_round[0].push(raw_echo(per, w, body).await?);
        per_round[1].push(raw_echo_via(per, w, body, true).await?);
        per_round[2].push(daemon_echo(&socket, true, per, w).await?);
        per_round[3].push(daemon_echo(&socket, false, per, w).await?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    host.shutdown().await;
    let all = |i: usize| summarize(per_round[i].concat());
    let (raw, relay, app, hosted) = (all(0), all(1), all(2), all(3));
    let rows = [
        ("raw Unix-socket echo (baseline, 2 socket crossings)", &raw),
        (
            "raw Unix relay echo (same 4 crossings as app to app)",
            &relay,
        ),
        ("app -> daemon -> host entity -> app", &hosted),
        ("app -> daemon -> app -> daemon -> app", &app),
    ];
    let (table, json_rows) = rtt_table(&rows);
    let app_ratio = app.p50.as_secs_f64() / raw.p50.as_secs_f64();
    // Same hops, per round: the median of the rounds with their range.
    let hosted_x = round_ratios(&per_round[3], &per_round[0]);
    let app_relay_x = round_ratios(&per_round[2], &per_round[1]);
    let met = |x: f64| if x <= 1.3 { "met" } else { "NOT met" };
    let markdown = format!(
        "Dispatch table on one thread: **{dispatch:.0} messages/s** (store + take, {messages} messages; aim 1,000,000: {dispatch_aim}).\n\n\
         Echo round trips, {echoes} per contender, interleaved in {rounds} rounds:\n\n{table}\n\
         App-to-app echo through the daemon is {app_x} the raw Unix-socket echo (aim: within 2x: {app_aim}).\n\n\
         Same hops, median of the {rounds} rounds' p50 ratios (range):\n\
         - app to host entity and back: **{:.2}x** the raw Unix echo ({:.2}-{:.2}; aim 1.3x: {});\n\
         - app to app: **{:.2}x** the raw Unix relay echo ({:.2}-{:.2}; aim 1.3x: {}).\n",
        hosted_x.0,
        hosted_x.1,
        hosted_x.2,
        met(hosted_x.0),
        app_relay_x.0,
        app_relay_x.1,
        app_relay_x.2,
        met(app_relay_x.0),
        app_x = ratio(app.p50.as_secs_f64(), raw.p50.as_secs_f64()),
        dispatch_aim = if dispatch >= 1e6 { "met" } else { "NOT met" },
        app_aim = if app_ratio <= 2.0 { "met" } else { "NOT met" },
    );
    Ok(Section {
        name: "core",
        title: "Core: dispatch table and app echo".into(),
        command: format!("tenet bench core --messages {messages} --echoes {echoes}"),
        markdown,
        json: serde_json::json!({
            "dispatch_messages_per_s": dispatch,
            "round_trips": json_rows,
            "app_to_app_p50_ratio": app_ratio,
            "hosted_vs_raw_echo": {"median": hosted_x.0, "min": hosted_x.1, "max": hosted_x.2},
            "app_to_app_vs_raw_relay": {"median": app_relay_x.0, "min": app_relay_x.1, "max": app_relay_x.2},
        }),
        plots: vec![Plot {
            file: "core-echo".into(),
            title: "Echo round trip, p50".into(),
            unit: "us".into(),
            bars: rows
                .iter()
                .map(|(n, s)| (n.to_string(), us(s.p50)))
                .collect(),
        }],
    })
}
