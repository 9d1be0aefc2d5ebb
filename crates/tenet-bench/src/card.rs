//! `tenet bench card`: the card links side by side.

#[cfg(not(feature = "pcsc"))]
pub async fn run(
    _rounds: u32,
    _vpcd: &str,
    _reader: &str,
) -> anyhow::Result<crate::report::Section> {
    anyhow::bail!("`tenet bench card` compares against PC/SC: rebuild with `--features pcsc`")
}

#[cfg(feature = "pcsc")]
pub use with_pcsc::run;

#[cfg(feature = "pcsc")]
mod with_pcsc {
    use std::net::{Shutdown, TcpStream};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use tenet_card::{Card, CardLimits, FileStore, SystemEntropy};
    use tenet_client::Capability;
    use tenet_host::link::{CardSession, InProcessLink, PcscLink};
    use tenet_proto::{EntityId, Message, Mtype, Port};

    use crate::report::{Plot, Section, progress};
    use crate::stats::{rtt_table, summarize, us};

    fn open(path: &Path) -> Result<Card<FileStore>> {
        Ok(Card::open(
            FileStore::open(path)?,
            CardLimits::default(),
            Box::new(SystemEntropy),
        )?)
    }

    /// The card plugged into vpcd on a thread.
    struct Plugged {
        stream: TcpStream,
        thread: std::thread::JoinHandle<()>,
    }

    fn plug(store: PathBuf, vpcd: &str, quickack: bool) -> Result<Plugged> {
        let stream = TcpStream::connect(vpcd)
            .with_context(|| format!("vpcd at {vpcd}; is pcscd running with the vpcd driver?"))?;
        let theirs = stream.try_clone()?;
        let mut card = open(&store)?;
        let thread = std::thread::spawn(move || {
            let _ = tenet_card::vpcd::serve_connection_tuned(&mut card, theirs, quickack);
        });
        Ok(Plugged { stream, thread })
    }

    impl Plugged {
        fn unplug(self) {
            let _ = self.stream.shutdown(Shutdown::Both);
            let _ = self.thread.join();
        }
    }

    fn pcsc_session(reader: &str) -> Result<CardSession> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = PcscLink::connect(reader, true)
                .map_err(anyhow::Error::from)
                .and_then(|l| {
                    let mut s = CardSession::new(Box::new(l), false);
                    s.select()?;
                    Ok(s)
                });
            match attempt {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("card in reader {reader:?}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn wait_reader_empty(reader: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while PcscLink::card_present(reader).unwrap_or(false) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn time_apdus(s: &mut CardSession, card: EntityId, n: u32) -> Result<Vec<Duration>> {
        let m = Message::new(
            EntityId::new(card.domain(), Port::new(1)),
            card,
            Mtype::ECHO_REQUEST,
            vec![0; 8],
        );
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t = Instant::now();
            let r = s.deliver(&m)?;
            out.push(t.elapsed());
            if r.len() != 1 {
                bail!("expected one echo reply, got {}", r.len());
            }
        }
        Ok(out)
    }

    async fn host(
        dir: &Path,
        card: tenet_host::config::CardSection,
    ) -> Result<tenet_host::HostHandle> {
        let mut cfg = tenet_host::Config::default();
        cfg.host.socket = Some(dir.join("host.sock"));
        cfg.host.state_dir = Some(dir.join("state"));
        cfg.card = card;
        Ok(tenet_voucher_app::start(&cfg).await?)
    }

    pub async fn run(rounds: u32, vpcd: &str, reader: &str) -> Result<Section> {
        let dir = tempfile::tempdir()?;
        let (store_a, store_b) = (dir.path().join("a.store"), dir.path().join("b.store"));
        let card_a = tenet_testkit::blank_card(&store_a, 0xaa)?.owner();
        let card_b = tenet_testkit::blank_card(&store_b, 0xbb)?.owner();
        let bar = progress(2, "card");

        // APDU level: one DELIVER (echo, 42-byte message) per round trip.
        let (sa, vpcd2, reader2, sb) = (
            store_a.clone(),
            vpcd.to_owned(),
            reader.to_owned(),
            store_b.clone(),
        );
        let (inproc, pcsc, no_quickack) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut a = CardSession::new(Box::new(InProcessLink::new(open(&sa)?)), false);
            a.select()?;
            let plugged = plug(sb.clone(), &vpcd2, true)?;
            let mut b = pcsc_session(&reader2)?;
            let per = (rounds / 5).max(1);
            let (mut x, mut y) = (Vec::new(), Vec::new());
            time_apdus(&mut b, card_b, 50)?;
            for _ in 0..5 {
                x.extend(time_apdus(&mut a, card_a, per)?);
                y.extend(time_apdus(&mut b, card_b, per)?);
            }
            drop(b);
            plugged.unplug();
            wait_reader_empty(&reader2);
            // The same without re-arming TCP_QUICKACK on the card's socket.
            let plugged = plug(sb, &vpcd2, false)?;
            let mut b = pcsc_session(&reader2)?;
            let z = time_apdus(&mut b, card_b, 20)?;
            drop(b);
            plugged.unplug();
            wait_reader_empty(&reader2);
            Ok((summarize(x), summarize(y), summarize(z)))
        })
        .await??;
        bar.inc(1);

        // Through the daemon: `ping CARD-ID` from an app, over both links.
        let plugged = plug(store_b.clone(), vpcd, true)?;
        let (da, db) = (dir.path().join("ha"), dir.path().join("hb"));
        std::fs::create_dir_all(&da)?;
        std::fs::create_dir_all(&db)?;
        let ha = host(
            &da,
            tenet_host::config::CardSection {
                virtual_store: Some(store_a.clone()),
                ..Default::default()
            },
        )
        .await?;
        let hb = host(
            &db,
            tenet_host::config::CardSection {
                reader: Some(reader.to_owned()),
                ..Default::default()
            },
        )
        .await?;
        let mut app_a = Capability::acquire(ha.socket_path()).await?;
        let mut app_b = Capability::acquire(hb.socket_path()).await?;
        let per = (rounds / 5).max(1);
        let (mut pa, mut pb) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            for _ in 0..per {
                pa.push(app_a.echo(card_a, &[], Duration::from_secs(5)).await?);
            }
            for _ in 0..per {
                pb.push(app_b.echo(card_b, &[], Duration::from_secs(5)).await?);
            }
        }
        drop((app_a, app_b));
        ha.shutdown().await;
        hb.shutdown().await;
        tokio::task::spawn_blocking(move || plugged.unplug()).await?;
        let (pa, pb) = (summarize(pa), summarize(pb));

        bar.finish_and_clear();
        let rows = [
            ("APDU, in-process card link (baseline)", &inproc),
            ("APDU, pcscd + vpcd, TCP_QUICKACK re-armed", &pcsc),
            (
                "APDU, pcscd + vpcd, no TCP_QUICKACK (20 only)",
                &no_quickack,
            ),
            ("ping CARD-ID via daemon, in-process card", &pa),
            ("ping CARD-ID via daemon, pcscd + vpcd", &pb),
        ];
        let (table, json_rows) = rtt_table(&rows);
        let quickack = no_quickack.p50.as_secs_f64() / pcsc.p50.as_secs_f64();
        let markdown = format!(
            "Card round trips, {rounds} per contender, interleaved in 5 rounds:\n\n{table}\n\
             One APDU through pcscd + vpcd: p50 {:.1} us (aim at most 150 us on this machine class: {}). \
             Re-arming TCP_QUICKACK on the card's socket saves {quickack:.0}x.\n",
            us(pcsc.p50),
            if us(pcsc.p50) <= 150.0 {
                "met"
            } else {
                "NOT met"
            },
        );
        let plot = Plot {
            file: "card-round-trip".into(),
            title: "Card round trip, p50 (without the no-QUICKACK row)".into(),
            unit: "us".into(),
            bars: rows
                .iter()
                .filter(|(n, _)| !n.contains("no TCP_QUICKACK"))
                .map(|(n, s)| (n.to_string(), us(s.p50)))
                .collect(),
        };
        Ok(Section {
            name: "card",
            title: "Card: APDUs through pcscd + vpcd and the in-process link".into(),
            command: format!("tenet bench card --rounds {rounds}"),
            markdown,
            json: serde_json::json!({ "round_trips": json_rows, "quickack_saves": quickack }),
            plots: vec![plot],
        })
    }
}
