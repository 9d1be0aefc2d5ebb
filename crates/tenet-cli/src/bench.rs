//! `tenet bench`: benchmarks that run ours and the baseline side by side in
//! one process, at the same moment, and print ratios. Absolute times on a
//! shared machine are noise; the ratios are the result.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bench_report::{Plot, Section, emit, progress, ratio, write_report};
use clap::Subcommand;
use tenet_client::Capability;
use tenet_dispatch::{DispatchTable, Ingress, Limits};
use tenet_proto::frame::{split_frame, write_frame};
use tenet_proto::{Domain, EntityId, Message, Mtype, Port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which benchmark.
#[derive(Subcommand)]
pub enum Which {
    /// Dispatch throughput in-process; app-to-app echo through the daemon next to a raw Unix-socket echo.
    ///
    /// The dispatch table alone, then two apps echoing through a real daemon on
    /// its Unix socket, against the same echo over a bare Unix socket: the
    /// price of the daemon per message.
    ///
    /// Example: tenet bench core --messages 200000 --echoes 2000
    Core {
        /// Messages through the dispatch table.
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
        /// Echo round trips per contender.
        #[arg(long, default_value_t = 20_000)]
        echoes: u32,
    },
    /// A remote echo through two daemons over TLS and over NATS.
    ///
    /// Next to a raw TCP loopback echo and a plain NATS request/reply; it
    /// starts its own nats-server if the binary is installed, and skips NATS
    /// otherwise.
    ///
    /// Example: tenet bench remote --echoes 1000 --json
    Remote {
        /// Round trips per contender.
        #[arg(long, default_value_t = 5_000)]
        echoes: u32,
    },
    /// The voucher exchange between two hosts over TLS.
    ///
    /// Latency, throughput with several card pairs at once, and the
    /// cryptographic floor (the signatures and verifications alone), with the
    /// cards' stores on disk and on tmpfs.
    ///
    /// Example: tenet bench exchange --exchanges 100 --pairs 1,8 --stores tmpfs
    Exchange {
        /// Exchanges for the latency figures (throughput runs 4x as many,
        /// shared among the pairs).
        #[arg(long, default_value_t = 500)]
        exchanges: u32,
        /// Card pairs trading at once, one throughput run each.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        pairs: Vec<usize>,
        /// Where the cards' stores live in the throughput runs: one set of
        /// runs per kind.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "disk,tmpfs")]
        stores: Vec<crate::bench_exchange::Stores>,
    },
    /// The voucher exchange the ISO 7816-4 way next to TENeT.
    ///
    /// ISO 7816-4: wallets shuttle every message through their cards and over
    /// TCP; TENeT: two daemons over TLS, the cards send their messages
    /// themselves. It compares APDUs and bytes on the card links, card-link
    /// time, wall time and lines of wallet code.
    ///
    /// Example: tenet bench baseline --exchanges 50
    Baseline {
        /// Exchanges per side.
        #[arg(long, default_value_t = 200)]
        exchanges: u32,
    },
    /// The paper's Table 2 reproduced on a simulated card.
    ///
    /// The real exchange through metered virtual cards, its counted operations
    /// and APDU sizes turned into CPU and I/O time by a model of the paper's
    /// card and reader (docs/benchmarks-model.md), next to Table 2; and the
    /// ISO 7816-4 baseline under the same model.
    ///
    /// Example: tenet bench table2 --exchanges 20
    Table2 {
        /// Exchanges to average over.
        #[arg(long, default_value_t = 20)]
        exchanges: u32,
    },
    /// Every scenario, one after the other, with a markdown report.
    ///
    /// With --report, the report with its SVG plots, as docs/benchmarks.md;
    /// --quick runs smaller counts for a quick look.
    ///
    /// Example: tenet bench all --report docs/benchmarks.md
    All {
        /// Write the report here (with its SVG plots in a `benchmarks`
        /// folder beside it), e.g. docs/benchmarks.md.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
        /// Smaller counts: a quick look rather than a measurement.
        #[arg(long)]
        quick: bool,
    },
    /// One APDU through pcscd + vpcd next to the in-process card link.
    ///
    /// And `ping CARD-ID` through the daemon over both links. Needs
    /// `--features pcsc` and pcscd running with the vpcd driver.
    ///
    /// Example: tenet bench card --rounds 1000 --vpcd 127.0.0.1:35963 --reader 'Virtual PCD 00 00'
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
    /// Daemon memory and throughput with thousands of apps and a deep queue.
    ///
    /// Also the dispatch table with thousands of endpoints, a flood of apps
    /// that never read, and an app-to-card echo next to a D-Bus method call
    /// through dbus-daemon (the D-Bus side needs `--features dbus` and
    /// dbus-daemon).
    ///
    /// Example: tenet bench scale --apps 1000 --json
    Scale(crate::bench_scale::Args),
}

pub async fn run(which: Which, json: bool) -> Result<ExitCode> {
    match which {
        Which::Core { messages, echoes } => {
            emit(&[core(messages, echoes).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Exchange {
            exchanges,
            pairs,
            stores,
        } => {
            emit(
                &[crate::bench_exchange::run(exchanges, &pairs, &stores).await?],
                json,
            );
            Ok(ExitCode::SUCCESS)
        }
        Which::All { report, quick } => {
            let sections = all(quick).await?;
            emit(&sections, json);
            if let Some(path) = report {
                write_report(&path, &sections)?;
                eprintln!("report written to {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Which::Baseline { exchanges } => {
            emit(&[crate::bench_baseline::run(exchanges).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Table2 { exchanges } => {
            emit(&[crate::bench_table2::run(exchanges).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Remote { echoes } => {
            emit(&[crate::bench_remote::run(echoes).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Card {
            rounds,
            vpcd,
            reader,
        } => {
            emit(
                &[crate::bench_card::run(rounds, &vpcd, &reader).await?],
                json,
            );
            Ok(ExitCode::SUCCESS)
        }
        Which::Scale(args) => {
            emit(&[crate::bench_scale::run(&args).await?], json);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A personalized virtual card without applets in `path` (PIN 1234), in a
/// random domain whose last four bytes are `seed`.
pub(crate) fn blank_card(path: &std::path::Path, seed: u8) -> Result<Domain> {
    let mut b = [seed; 12];
    getrandom::fill(&mut b[..8]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let domain = Domain::new(b);
    let p = tenet_card::Personalization {
        domain,
        pin: b"1234".to_vec(),
        puk: b"12345678".to_vec(),
    };
    tenet_card::Card::personalize(
        tenet_card::FileStore::create(path, 16 * 1024)?,
        &p,
        tenet_card::CardLimits::default(),
        Box::new(tenet_card::SystemEntropy),
    )?;
    Ok(domain)
}

/// Runs every scenario this build has, in a fixed order.
async fn all(quick: bool) -> Result<Vec<Section>> {
    let scale = |full: u64, small: u64| if quick { small } else { full };
    let mut sections = vec![core(scale(2_000_000, 200_000), scale(20_000, 2_000) as u32).await?];
    sections.push(crate::bench_remote::run(scale(5_000, 1_000) as u32).await?);
    sections.push(
        crate::bench_exchange::run(
            scale(500, 50) as u32,
            &[1, 8, 64],
            &[
                crate::bench_exchange::Stores::Disk,
                crate::bench_exchange::Stores::Tmpfs,
            ],
        )
        .await?,
    );
    sections.push(crate::bench_baseline::run(scale(200, 20) as u32).await?);
    sections.push(crate::bench_table2::run(scale(20, 3) as u32).await?);
    sections.push(
        crate::bench_scale::run(&crate::bench_scale::Args {
            apps: vec![1_000, scale(10_000, 2_000) as u32],
            messages: scale(100_000, 20_000),
            queued: scale(100_000, 20_000),
            dispatch: scale(2_000_000, 200_000),
            endpoints: 10_000,
            rounds: scale(5_000, 1_000) as u32,
            flood_apps: 64,
            flood_messages: scale(1024, 128) as u32,
            flood_param: 60_000,
        })
        .await?,
    );
    if cfg!(feature = "pcsc") {
        sections.push(
            crate::bench_card::run(
                scale(5_000, 500) as u32,
                "127.0.0.1:35963",
                "Virtual PCD 00 00",
            )
            .await
            .context("the card scenario needs pcscd running with the vpcd driver")?,
        );
    } else {
        eprintln!("card: not in this build (rebuild with --features pcsc)");
    }
    Ok(sections)
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

/// A markdown table of round trips, each p50 also as a multiple of the
/// first row's (the baseline), with the same figures as JSON.
pub(crate) fn rtt_table(rows: &[(&str, &Summary)]) -> (String, serde_json::Value) {
    let base = rows[0].1.p50.as_secs_f64();
    let mut md = String::from(
        "| round trip | mean us | p50 us | p99 us | p50 ratio |\n|---|---:|---:|---:|---:|\n",
    );
    let mut json = Vec::new();
    for (name, s) in rows {
        md.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.2}x |\n",
            us(s.mean),
            us(s.p50),
            us(s.p99),
            s.p50.as_secs_f64() / base
        ));
        json.push(serde_json::json!({
            "name": name,
            "mean_us": us(s.mean),
            "p50_us": us(s.p50),
            "p99_us": us(s.p99),
            "p50_ratio": s.p50.as_secs_f64() / base,
        }));
    }
    (md, serde_json::Value::Array(json))
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

pub(crate) async fn core(messages: u64, echoes: u32) -> Result<Section> {
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
    let rounds = 5u32;
    let per = (echoes / rounds).max(1);
    let (mut raw, mut app, mut hosted) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw.extend(raw_echo(per, warmup / rounds, body).await?);
        app.extend(daemon_echo(&socket, true, per, warmup / rounds).await?);
        hosted.extend(daemon_echo(&socket, false, per, warmup / rounds).await?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    host.shutdown().await;
    let (raw, app, hosted) = (summarize(raw), summarize(app), summarize(hosted));
    let rows = [
        ("raw Unix-socket echo (baseline)", &raw),
        ("app -> daemon -> host entity -> app", &hosted),
        ("app -> daemon -> app -> daemon -> app", &app),
    ];
    let (table, json_rows) = rtt_table(&rows);
    let app_ratio = app.p50.as_secs_f64() / raw.p50.as_secs_f64();
    let markdown = format!(
        "Dispatch table on one thread: **{dispatch:.0} messages/s** (store + take, {messages} messages; aim 1,000,000: {dispatch_aim}).\n\n\
         Echo round trips, {echoes} per contender, interleaved in {rounds} rounds:\n\n{table}\n\
         App-to-app echo through the daemon is {app_x} the raw Unix-socket echo (aim: within 2x: {app_aim}).\n",
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
