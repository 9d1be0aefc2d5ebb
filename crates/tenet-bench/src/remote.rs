//! `tenet bench remote`: host-to-host links side by side with their raw
//! baselines.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tenet_client::Capability;
use tenet_host::config::NatsSection;
use tenet_proto::Domain;
use tenet_proto::frame::write_frame;
use tenet_testkit::{Ca, HostSpec, NatsServer, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::core::echo_frames;
use crate::report::{Plot, Section, progress};
use crate::stats::{rtt_table, summarize, us};

async fn raw_tcp_echo(n: u32, body: usize) -> Result<Vec<Duration>> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await?;
        s.set_nodelay(true)?;
        echo_frames(s).await
    });
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.set_nodelay(true)?;
    let out = round_trips(&mut c, n, body).await?;
    drop(c);
    server.await??;
    Ok(out)
}

/// Frames written over a Unix socket to a relay and read back, `n` times:
/// the client side of the same-hop baselines.
async fn unix_client(path: &Path, n: u32, body: usize) -> Result<Vec<Duration>> {
    let mut c = tokio::net::UnixStream::connect(path).await?;
    round_trips(&mut c, n, body).await
}

/// `n` frames of `body` bytes written on `c` and read back, each timed.
async fn round_trips<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    c: &mut S,
    n: u32,
    body: usize,
) -> Result<Vec<Duration>> {
    let mut frame = Vec::new();
    write_frame(&mut frame, &bytes_of(body));
    let mut rbuf = vec![0u8; frame.len()];
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&frame).await?;
        c.read_exact(&mut rbuf).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// The TLS path's hops without TLS or a daemon: the client's Unix socket
/// to a relay, the relay's TCP connection (nodelay) to an echo server, and
/// back (as an app's echo to a peer host's entity crosses its Unix socket
/// and the TCP link both ways). The relay forwards bytes as they come.
async fn unix_tcp_echo(n: u32, body: usize) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await?;
        s.set_nodelay(true)?;
        echo_frames(s).await
    });
    let path = dir.path().join("relay.sock");
    let ul = tokio::net::UnixListener::bind(&path)?;
    let relay = tokio::spawn(async move {
        let (mut a, _) = ul.accept().await?;
        let mut b = tokio::net::TcpStream::connect(addr).await?;
        b.set_nodelay(true)?;
        tokio::io::copy_bidirectional(&mut a, &mut b)
            .await
            .map(|_| ())
    });
    let out = unix_client(&path, n, body).await?;
    relay.await??;
    server.await??;
    Ok(out)
}

/// The NATS path's hops without a daemon: the client's Unix socket to a
/// relay that sends each frame as a plain NATS request (to a responder
/// that answers with the payload) and writes the reply back.
async fn unix_nats_echo(client: &async_nats::Client, n: u32, body: usize) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("relay.sock");
    let ul = tokio::net::UnixListener::bind(&path)?;
    let nc = client.clone();
    let relay = tokio::spawn(async move {
        let (mut a, _) = ul.accept().await?;
        let mut buf = Vec::with_capacity(4096);
        loop {
            if a.read_buf(&mut buf).await? == 0 {
                return anyhow::Ok(());
            }
            let mut start = 0;
            while let Ok(Some((used, b))) = tenet_proto::frame::split_frame(&buf[start..], 1 << 16)
            {
                let reply = nc.request("bench.echo", b.to_vec().into()).await?;
                let mut out = Vec::new();
                write_frame(&mut out, &reply.payload);
                a.write_all(&out).await?;
                start += used;
            }
            buf.drain(..start);
        }
    });
    let out = unix_client(&path, n, body).await?;
    relay.await??;
    Ok(out)
}

async fn daemon_echo(
    app: &mut Capability,
    dst: tenet_proto::EntityId,
    n: u32,
) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        out.push(app.echo(dst, &[], Duration::from_secs(5)).await?);
    }
    Ok(out)
}

async fn nats_request(client: &async_nats::Client, n: u32, body: usize) -> Result<Vec<Duration>> {
    let payload = bytes_of(body);
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        client.request("bench.echo", payload.clone().into()).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

fn bytes_of(n: usize) -> Vec<u8> {
    vec![7u8; n]
}

async fn ready(app: &mut Capability, dst: tenet_proto::EntityId) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match app.echo(dst, &[], Duration::from_secs(1)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e).context("the link never came up"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn config(dir: &Path, name: &str, domain: Domain) -> tenet_host::Config {
    let mut c = tenet_host::Config::default();
    c.host.socket = Some(dir.join(format!("{name}.sock")));
    c.host.state_dir = Some(dir.join(format!("{name}-state")));
    c.host.domain = Some(domain.to_string());
    c
}

pub async fn run(echoes: u32) -> Result<Section> {
    let dir = tempfile::tempdir()?;
    let (da, db) = (Domain::new([0xa1; 12]), Domain::new([0xb2; 12]));
    let body = tenet_proto::HEADER_LEN + 8;
    let mut notes = String::new();

    // TLS: A dials B; an app on A echoes B's host entity.
    let ca = Ca::create(dir.path().join("ca"), "bench CA")?;
    let tls_hosts = Topology::new(dir.path(), ca)
        .host(HostSpec::new("b", db))
        .host(HostSpec::new("a", da).peer("b"))
        .start()
        .await?;
    let mut tls_app = Capability::acquire(tls_hosts.host("a").socket_path()).await?;

    // NATS: a private nats-server, two daemons, and a plain request/reply.
    let nats = match NatsServer::start(dir.path()).await {
        Ok(n) => Some(n),
        Err(tenet_testkit::Error::NatsSpawn(e)) => {
            notes.push_str(&format!(
                "nats-server not available ({e}): NATS rows skipped.\n\n"
            ));
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut nats_parts = None;
    if let Some(server) = &nats {
        let url = server.url().to_owned();
        let section = NatsSection {
            url: url.clone(),
            ..Default::default()
        };
        let (nda, ndb) = (Domain::new([0xa3; 12]), Domain::new([0xb4; 12]));
        let mut na = config(dir.path(), "nats-a", nda);
        na.remote.nats = Some(section.clone());
        let mut nb = config(dir.path(), "nats-b", ndb);
        nb.remote.nats = Some(section);
        let hna = tenet_voucher_app::start(&na).await?;
        let hnb = tenet_voucher_app::start(&nb).await?;
        let mut app = Capability::acquire(hna.socket_path()).await?;
        ready(&mut app, ndb.owner()).await?;
        let client = async_nats::connect(url.as_str()).await?;
        let mut sub = client.subscribe("bench.echo").await?;
        let responder_client = client.clone();
        let responder = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(r) = m.reply {
                    let _ = responder_client.publish(r, m.payload).await;
                }
            }
        });
        client.flush().await?;
        nats_parts = Some((hna, hnb, app, ndb.owner(), client, responder));
    }

    let per = (echoes / crate::core::ROUNDS).max(1);
    // Per round: raw TCP, Unix-TCP relay, TLS path, NATS request,
    // Unix-NATS relay, NATS path.
    let mut r: [Vec<Vec<Duration>>; 6] = Default::default();
    raw_tcp_echo(200, body).await?;
    daemon_echo(&mut tls_app, db.owner(), 200).await?;
    let bar = progress(u64::from(crate::core::ROUNDS), "remote");
    for _ in 0..crate::core::ROUNDS {
        r[0].push(raw_tcp_echo(per, body).await?);
        r[1].push(unix_tcp_echo(per, body).await?);
        r[2].push(daemon_echo(&mut tls_app, db.owner(), per).await?);
        if let Some((_, _, app, dst, client, _)) = nats_parts.as_mut() {
            r[3].push(nats_request(client, per, body).await?);
            r[4].push(unix_nats_echo(client, per, body).await?);
            r[5].push(daemon_echo(app, *dst, per).await?);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let all = |i: usize| (!r[i].is_empty()).then(|| summarize(r[i].concat()));
    let (raw, relay, tls) = (
        all(0).expect("measured"),
        all(1).expect("measured"),
        all(2).expect("measured"),
    );
    let (nreq, nrelay, ndae) = (all(3), all(4), all(5));
    let mut rows = vec![
        ("raw TCP loopback echo, nodelay (baseline)", &raw),
        (
            "raw relay: Unix -> TCP echo -> Unix (the TLS path's hops)",
            &relay,
        ),
        ("app -> daemon =TLS=> daemon -> host entity, back", &tls),
    ];
    if let (Some(q), Some(l), Some(d)) = (&nreq, &nrelay, &ndae) {
        rows.push(("plain NATS request/reply through nats-server", q));
        rows.push((
            "raw relay: Unix -> NATS request/reply -> Unix (the NATS path's hops)",
            l,
        ));
        rows.push(("app -> daemon =NATS=> daemon -> host entity, back", d));
    }
    let (table, json_rows) = rtt_table(&rows);
    let tls_ratio = tls.p50.as_secs_f64() / raw.p50.as_secs_f64();
    let tls_hops = crate::core::round_ratios(&r[2], &r[1]);
    let nats_hops = (!r[5].is_empty()).then(|| crate::core::round_ratios(&r[5], &r[4]));
    let met = |x: f64| if x <= 1.3 { "met" } else { "NOT met" };
    let mut markdown = format!(
        "{notes}Remote echo round trips, {echoes} per contender, interleaved in {} rounds:\n\n{table}\n\
         The TLS path is {tls_ratio:.2}x the raw TCP echo (aim: within 2x: {}).\n\n\
         Same hops, median of the {} rounds' p50 ratios (range):\n\
         - the TLS path: **{:.2}x** the Unix-TCP relay ({:.2}-{:.2}; aim 1.3x: {});\n",
        crate::core::ROUNDS,
        if tls_ratio <= 2.0 { "met" } else { "NOT met" },
        crate::core::ROUNDS,
        tls_hops.0,
        tls_hops.1,
        tls_hops.2,
        met(tls_hops.0),
    );
    if let Some(x) = nats_hops {
        markdown.push_str(&format!(
            "- the NATS path: **{:.2}x** the Unix-NATS relay ({:.2}-{:.2}; aim 1.3x: {}).\n",
            x.0,
            x.1,
            x.2,
            met(x.0)
        ));
    }
    let range = |x: (f64, f64, f64)| serde_json::json!({"median": x.0, "min": x.1, "max": x.2});
    let plot = Plot {
        file: "remote-echo".into(),
        title: "Remote echo round trip, p50".into(),
        unit: "us".into(),
        bars: rows
            .iter()
            .map(|(n, s)| (n.to_string(), us(s.p50)))
            .collect(),
    };
    if let Some((hna, hnb, app, _, _, responder)) = nats_parts {
        responder.abort();
        drop(app);
        hna.shutdown().await;
        hnb.shutdown().await;
    }
    drop(tls_app);
    tls_hosts.shutdown().await;
    drop(nats);
    Ok(Section {
        name: "remote",
        title: "Remote: echo between hosts over TLS and NATS".into(),
        command: format!("tenet bench remote --echoes {echoes}"),
        markdown,
        json: serde_json::json!({
            "round_trips": json_rows,
            "tls_p50_ratio": tls_ratio,
            "tls_vs_same_hops": range(tls_hops),
            "nats_vs_same_hops": nats_hops.map(range),
        }),
        plots: vec![plot],
    })
}
