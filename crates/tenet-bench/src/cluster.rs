//! `tenet bench cluster`: how far one TTP replica and one host go over
//! NATS, and how both grow with replicas and hosts, side by side in one
//! run.
//!
//! - Decisions per second: TTP replicas (the TTP host of the voucher app,
//!   in this process) in one NATS queue group, sharing one decision store
//!   (one SQLite file, or PostgreSQL with `--postgres`), answer a stream of
//!   distinct, valid resolve requests from a load client on the same
//!   nats-server: requesters' signatures made beforehand, at most
//!   `WINDOW` requests in flight. Timed from the first request to the last
//!   admission.
//! - Exchanges per second: pairs of hosts, a card each, on the same
//!   nats-server, each pair trading one exchange after the other
//!   ([`crate::exchange`]'s `Trader`); all pairs at once, timed from when
//!   every wallet is open and its vouchers minted.
//!
//! Each round measures every replica count and every pair count, one after
//! the other; the figures are ratios to the first count of the same round,
//! reported as the median of the rounds with their range, next to the
//! median rates. The replicas and the hosts share this machine's cores
//! with the load client and the server, so the ratios say what one machine
//! gains, not what separate machines would.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use tenet_host::HostHandle;
use tenet_host::config::{NatsSection, TtpSection};
use tenet_proto::{Codec, Domain, EntityId, Message};
use tenet_testkit::{NatsServer, host_config};
use tenet_voucher::crypto::{Crypto, KeyCrypto};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{self, Agreement, ExchangeId, Kind, Offer, RecoveryRequest};

use crate::exchange::{Pair, Setup, Trader, domain, run_all};
use crate::report::{Plot, Section, progress};

/// Requests in flight from the load client at once.
const WINDOW: usize = 64;
/// Requesting entities (each its own domain, so the TTP's per-domain
/// queues share the load).
const REQUESTERS: usize = 8;
/// The subject prefix (the default).
const PREFIX: &str = "tenet";
/// How long a run may take before it is reported as stalled.
const STALL: Duration = Duration::from_secs(120);

/// What `tenet bench cluster` measures.
pub(crate) struct Args<'a> {
    /// Resolve requests per decision run.
    pub(crate) requests: u32,
    /// Exchanges per pair per run.
    pub(crate) exchanges: u32,
    /// Replica counts, the first the base of the ratios.
    pub(crate) replicas: &'a [usize],
    /// Pair counts, the first the base of the ratios.
    pub(crate) pairs: &'a [usize],
    /// Rounds.
    pub(crate) rounds: u32,
    /// A PostgreSQL connection string for the decisions, instead of one
    /// SQLite file.
    pub(crate) postgres: Option<&'a str>,
}

/// The requesters' keys and the responder's, from the bench CA.
struct Requesters {
    keys: Vec<KeyCrypto>,
    responder: KeyCrypto,
    responder_id: EntityId,
    /// Distinct exchange ids over the whole run.
    next: u64,
}

impl Requesters {
    fn new(ca: &Path) -> Result<Self> {
        let key = |name: &str, id: EntityId| -> Result<KeyCrypto> {
            let f = tenet_pki::issue_card_key(ca, name, id)?;
            let read = |p: &Path| std::fs::read(p).with_context(|| p.display().to_string());
            Ok(KeyCrypto::from_pem(
                &read(&f.key)?,
                &read(&f.cert)?,
                &read(&f.ca)?,
            )?)
        };
        let keys = (0..REQUESTERS)
            .map(|i| key(&format!("requester{i}"), domain(0xd0, i).owner()))
            .collect::<Result<_>>()?;
        let responder_id = domain(0xd1, 0).owner();
        Ok(Self {
            keys,
            responder: key("responder", responder_id)?,
            responder_id,
            next: 0,
        })
    }

    /// `n` resolve requests for exchanges never asked before, as the
    /// messages their requesters send to `ttp`.
    fn requests(&mut self, n: u32, ttp: EntityId) -> Vec<Message> {
        (0..n)
            .map(|_| {
                self.next += 1;
                let i = (self.next % REQUESTERS as u64) as usize;
                let initiator = domain(0xd0, i).owner();
                let mut n1 = [0u8; 16];
                n1[..8].copy_from_slice(&self.next.to_be_bytes());
                let amount = |issuer: Domain, promise: &str| Amount {
                    class: VoucherClass {
                        issuer,
                        promise: promise.into(),
                    },
                    quantity: 1,
                };
                let offer = Offer {
                    knows: None,
                    redeem: None,
                    initiator,
                    responder: self.responder_id,
                    give: amount(initiator.domain(), "coffee"),
                    want: Some(amount(self.responder_id.domain(), "ticket")),
                    n1,
                    expires: None,
                };
                let id = ExchangeId::of_n2(&n1);
                let agreement = Agreement {
                    knows: None,
                    delegation: None,
                    offer_digest: offer.digest(),
                    id,
                    signature: self
                        .responder
                        .sign(&Agreement::signed_bytes(&offer.digest(), &id)),
                    certificate: self.responder.certificate(),
                };
                let request = RecoveryRequest {
                    kind: Kind::Resolve,
                    offer,
                    agreement,
                    signature: self.keys[i].sign(&Kind::Resolve.request_bytes(&id)),
                    certificate: self.keys[i].certificate(),
                };
                Message::new(initiator, ttp, msg::RECOVERY_REQUEST, request.to_bytes())
            })
            .collect()
    }
}

/// One decision run: `replicas` TTP hosts in the queue group, a fresh
/// store, `requests` answered. Returns decisions per second.
async fn decisions(
    setup: &Setup,
    url: &str,
    replicas: usize,
    run: usize,
    load: &mut Requesters,
    requests: u32,
    postgres: Option<&str>,
) -> Result<f64> {
    let pki = &setup.pki;
    let ttp = pki.ttp.id;
    let database = pki.path().join(format!("decisions-{run}.sqlite"));
    let mut hosts: Vec<HostHandle> = Vec::new();
    for r in 0..replicas {
        let name = format!("ttp{run}-{r}");
        let mut cfg = host_config(pki.path(), &pki.ca, &name, ttp.domain(), &[])?;
        cfg.remote.listen = None;
        cfg.remote.nats = Some(NatsSection {
            url: url.to_owned(),
            queue: Some("ttp".into()),
            ..Default::default()
        });
        cfg.ttp = Some(TtpSection {
            key: pki.ttp.files.key.clone(),
            cert: pki.ttp.files.cert.clone(),
            ca: pki.ttp.files.ca.clone(),
            database: postgres.is_none().then(|| database.clone()),
            postgres: postgres.map(str::to_owned),
        });
        hosts.push(
            tenet_voucher_app::start(&cfg)
                .await
                .with_context(|| format!("TTP replica {name}"))?,
        );
    }
    let result = drive(url, ttp, load.requests(requests, ttp)).await;
    for h in hosts {
        h.shutdown().await;
    }
    result
}

/// Sends `requests` from a load client and counts the admissions the
/// replicas send back; decisions per second.
async fn drive(url: &str, ttp: EntityId, requests: Vec<Message>) -> Result<f64> {
    let client = async_nats::ConnectOptions::new()
        .custom_inbox_prefix(format!("{PREFIX}.i.bench"))
        .connect(url)
        .await?;
    // The admissions, to the requesters' domains.
    let mut admissions = client
        .subscribe(format!("{PREFIX}.d.*.s.{}", ttp.domain()))
        .await?;
    client.flush().await?;
    let n = requests.len();
    let answers = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut admitted = 0usize;
            while admitted < n {
                let Some(m) = admissions.next().await else {
                    bail!("the subscription ended");
                };
                let message = Message::decode(&m.payload)?;
                if let Some(reply) = m.reply {
                    client.publish(reply, Vec::new().into()).await?;
                }
                ensure!(
                    message.mtype() == msg::ADMISSION,
                    "the TTP answered {} instead of an admission: {:?}",
                    message.mtype(),
                    String::from_utf8_lossy(&message.param)
                );
                admitted += 1;
            }
            Ok(Instant::now())
        })
    };
    let t0 = Instant::now();
    let sent = futures_util::stream::iter(requests)
        .map(|m| {
            let client = client.clone();
            async move {
                let subject = format!("{PREFIX}.d.{}.s.{}", ttp.domain(), m.src().domain());
                let answer = client.request(subject, m.to_bytes().into()).await?;
                ensure!(
                    answer.payload.is_empty(),
                    "the TTP's host refused a request: {}",
                    String::from_utf8_lossy(&answer.payload)
                );
                Ok(())
            }
        })
        .buffer_unordered(WINDOW)
        .collect::<Vec<Result<()>>>();
    let sent = tokio::time::timeout(STALL, sent)
        .await
        .context("requests stalled")?;
    sent.into_iter().collect::<Result<Vec<()>>>()?;
    let done = tokio::time::timeout(STALL, answers)
        .await
        .context("admissions stalled")???;
    Ok(n as f64 / done.duration_since(t0).as_secs_f64())
}

/// One exchange run: the first `n` pairs trading `exchanges` each at once;
/// exchanges per second in all.
async fn exchanges(pairs: &[Pair], n: usize, exchanges: u32) -> Result<f64> {
    // Wallets opened and vouchers minted first: only the exchanges are timed.
    let ready = pairs[..n].iter().map(|p| Trader::ready(p, exchanges));
    let traders = futures_util::future::join_all(ready)
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let (traders, _) = run_all(traders).await?;
    let elapsed = t0.elapsed();
    for t in traders {
        t.check().await?;
    }
    Ok((n as u64 * u64::from(exchanges)) as f64 / elapsed.as_secs_f64())
}

/// The median and range of `v` (not empty).
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Runs the scenario.
pub(crate) async fn run(args: &Args<'_>) -> Result<Section> {
    // Checked before anything starts.
    for (flag, n) in [
        ("--requests", args.requests),
        ("--exchanges", args.exchanges),
        ("--rounds", args.rounds),
    ] {
        ensure!(n > 0, "{flag} must be at least 1");
    }
    for (flag, counts) in [("--replicas", args.replicas), ("--pairs", args.pairs)] {
        ensure!(
            !counts.is_empty() && counts.iter().all(|&n| n > 0),
            "{flag}: every count must be at least 1"
        );
    }
    let stores = tempfile::tempdir()?;
    let setup = Setup::new(stores.path())?;
    let server = NatsServer::start(setup.pki.path())
        .await
        .context("the cluster scenario needs nats-server")?;
    let url = server.url().to_owned();
    let mut load = Requesters::new(setup.pki.ca.dir())?;
    let most = args.pairs.iter().copied().max().unwrap_or(1);
    let mut pairs = Vec::new();
    for i in 0..most {
        pairs.push(setup.pair_over(i, Some(&url)).await?);
    }
    let steps = u64::from(args.rounds) * (args.replicas.len() + args.pairs.len()) as u64;
    let pb = progress(steps, "cluster");
    // [round][count] rates.
    let mut dps: Vec<Vec<f64>> = Vec::new();
    let mut eps: Vec<Vec<f64>> = Vec::new();
    let mut run = 0;
    for _ in 0..args.rounds {
        let mut d = Vec::new();
        for &r in args.replicas {
            run += 1;
            d.push(
                decisions(
                    &setup,
                    &url,
                    r,
                    run,
                    &mut load,
                    args.requests,
                    args.postgres,
                )
                .await?,
            );
            pb.inc(1);
        }
        let mut e = Vec::new();
        for &n in args.pairs {
            e.push(exchanges(&pairs, n, args.exchanges).await?);
            pb.inc(1);
        }
        dps.push(d);
        eps.push(e);
    }
    pb.finish_and_clear();
    for p in pairs {
        p.hosts.shutdown().await;
    }

    let store = if args.postgres.is_some() {
        "PostgreSQL"
    } else {
        "one SQLite file"
    };
    let mut md = format!(
        "TTP replicas in one NATS queue group on one nats-server, sharing {store}; \
         {} distinct resolve requests per run from a load client, {WINDOW} in flight. \
         Pairs of hosts with a card each on the same server, {} exchanges per pair, all \
         pairs at once. {} rounds; each ratio is to the first count of its round, the \
         median of the rounds with their range. Everything shares this machine's cores.\n\n",
        args.requests, args.exchanges, args.rounds
    );
    let mut json = serde_json::Map::new();
    let mut plots = Vec::new();
    for (what, unit, counts, rates, file) in [
        (
            "TTP replicas",
            "decisions/s",
            args.replicas,
            &dps,
            "cluster-decisions",
        ),
        (
            "host pairs",
            "exchanges/s",
            args.pairs,
            &eps,
            "cluster-exchanges",
        ),
    ] {
        md.push_str(&format!(
            "| {what} | {unit} (median) | range | ratio to {} (median) | ratio range |\n\
             |---:|---:|---:|---:|---:|\n",
            counts[0]
        ));
        let mut rows = Vec::new();
        let mut bars = Vec::new();
        for (k, &count) in counts.iter().enumerate() {
            let rate = spread(rates.iter().map(|r| r[k]).collect());
            let ratio = spread(rates.iter().map(|r| r[k] / r[0]).collect());
            md.push_str(&format!(
                "| {count} | {:.0} | {:.0} to {:.0} | {:.2}x | {:.2}x to {:.2}x |\n",
                rate.0, rate.1, rate.2, ratio.0, ratio.1, ratio.2
            ));
            rows.push(serde_json::json!({
                "count": count,
                "rate_median": rate.0,
                "rate_min": rate.1,
                "rate_max": rate.2,
                "ratio_median": ratio.0,
                "ratio_min": ratio.1,
                "ratio_max": ratio.2,
            }));
            bars.push((format!("{count} {what}"), rate.0));
        }
        md.push('\n');
        json.insert(file.to_owned(), serde_json::Value::Array(rows));
        plots.push(Plot {
            file: file.to_owned(),
            title: format!("{unit} by {what}"),
            unit: unit.to_owned(),
            bars,
        });
    }
    drop(server);
    Ok(Section {
        name: "cluster",
        title: "Scale-out: TTP replicas and hosts over NATS".into(),
        command: format!(
            "tenet bench cluster --requests {} --exchanges {} --replicas {} --pairs {} --rounds {}{}",
            args.requests,
            args.exchanges,
            join(args.replicas),
            join(args.pairs),
            args.rounds,
            if args.postgres.is_some() {
                " --postgres CONN"
            } else {
                ""
            }
        ),
        markdown: md,
        json: serde_json::Value::Object(json),
        plots,
    })
}

fn join(v: &[usize]) -> String {
    v.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}
