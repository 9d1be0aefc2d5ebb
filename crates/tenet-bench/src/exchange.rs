//! `tenet bench exchange`: the voucher exchange between cards on two hosts
//! linked by TLS, with in-process virtual cards: the latency of one
//! exchange (p50, p99), throughput with 1, 8 and 64 card pairs trading at
//! once, and, in the same run, the cryptographic floor of one exchange: its
//! two signatures and two verifications, timed alone, with the certificates
//! checked against the CA (first contact) and already checked (a repeat
//! between the same cards, which remember the certificates they checked).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tenet_client::Capability;
use tenet_client::wallet::Wallet;
use tenet_host::HostHandle;
use tenet_pki::Signer;
use tenet_proto::{Domain, EntityId};
use tenet_voucher::crypto::Crypto;
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg;
use tenet_voucher_app::applet::verify_known;

use tenet_testkit::{CardSpec, HostSpec, PIN, Running, Topology, WAIT};

use crate::affinity::OneCore;
use crate::baseline::Pki;
use crate::report::{Plot, Section, progress, ratio};
use crate::stats::{Summary, summarize, us};

/// Two hosts, a card each, B dialing A (or both on a NATS server).
pub(crate) struct Pair {
    /// Hosts `a{i}` and `b{i}`.
    pub(crate) hosts: Running,
    i: usize,
    card_a: EntityId,
    card_b: EntityId,
}

impl Pair {
    fn ha(&self) -> &HostHandle {
        self.hosts.host(&format!("a{}", self.i))
    }

    fn hb(&self) -> &HostHandle {
        self.hosts.host(&format!("b{}", self.i))
    }
}

pub(crate) fn domain(tag: u8, i: usize) -> Domain {
    let mut b = [tag; 12];
    b[10] = (i >> 8) as u8;
    b[11] = i as u8;
    Domain::new(b)
}

fn class(issuer: Domain, promise: &str) -> VoucherClass {
    VoucherClass {
        issuer,
        promise: promise.into(),
    }
}

pub(crate) struct Setup {
    pub(crate) pki: Pki,
    stores: PathBuf,
}

impl Setup {
    pub(crate) fn new(stores: &Path) -> Result<Self> {
        Ok(Self {
            pki: Pki::new()?,
            stores: stores.to_owned(),
        })
    }

    async fn pair(&self, i: usize) -> Result<Pair> {
        self.pair_over(i, None).await
    }

    /// Pair `i`, linked over TLS, or with `nats` (a server's URL) through
    /// that NATS server only.
    pub(crate) async fn pair_over(&self, i: usize, nats: Option<&str>) -> Result<Pair> {
        let (da, dca, db, dcb) = (
            domain(0xa1, i),
            domain(0xca, i),
            domain(0xb2, i),
            domain(0xcb, i),
        );
        // One host with its card, its store in `self.stores`; the files of
        // pair i are named after it.
        let host = |name: &str, d: Domain, card: Domain| {
            HostSpec::new(&format!("{name}{i}"), d).card(
                CardSpec::new(card)
                    .ttp(&self.pki.ttp)
                    .store_dir(&self.stores),
            )
        };
        let topology = Topology::new(self.pki.path(), self.pki.ca.clone());
        let hosts = match nats {
            None => {
                topology
                    .host(host("a", da, dca))
                    .host(host("b", db, dcb).peer(&format!("a{i}")))
                    .start()
                    .await?
            }
            Some(url) => {
                let over = |url: &str| {
                    let url = url.to_owned();
                    move |c: &mut tenet_host::Config| {
                        c.remote.listen = None;
                        c.remote.nats = Some(tenet_host::config::NatsSection {
                            url,
                            ..Default::default()
                        });
                    }
                };
                let hosts = topology
                    .host(host("a", da, dca).config(over(url)))
                    .host(host("b", db, dcb).config(over(url)))
                    .start()
                    .await?;
                let (ha, hb) = (hosts.host(&format!("a{i}")), hosts.host(&format!("b{i}")));
                tenet_testkit::wait_links(ha, &[dcb.owner()]).await?;
                tenet_testkit::wait_links(hb, &[dca.owner()]).await?;
                hosts
            }
        };
        Ok(Pair {
            hosts,
            i,
            card_a: dca.owner(),
            card_b: dcb.owner(),
        })
    }
}

/// Runs `n` exchanges one after the other on `pair` (A offers one coffee
/// for one ticket, B's wallet accepts every offer) and returns the time of
/// each: from A's wallet ordering the exchange to A's card having stored
/// the ticket (m4 arrived, then an echo that the card answers after
/// it). Checks that every voucher was swapped and none lost.
pub(crate) async fn trade(pair: &Pair, n: u32) -> Result<Vec<Duration>> {
    let (traders, times) = run_all(vec![Trader::ready(pair, n).await?]).await?;
    for trader in traders {
        trader.check().await?;
    }
    Ok(times)
}

/// Runs each trader's exchanges, all at once, each trader on a task of its
/// own: a wallet is an app of its own, and polled together on the caller's
/// task (the thread that blocks on the runtime, outside its workers) the
/// wallets would wait for one another. Returns the traders and the time of
/// every exchange.
pub(crate) async fn run_all(traders: Vec<Trader>) -> Result<(Vec<Trader>, Vec<Duration>)> {
    let runs = traders.into_iter().map(|mut t| {
        tokio::spawn(async move {
            let times = t.run().await?;
            Ok::<_, anyhow::Error>((t, times))
        })
    });
    let mut back = Vec::new();
    let mut all = Vec::new();
    for r in futures_util::future::join_all(runs).await {
        let (t, times) = r.context("a wallet's task panicked")??;
        back.push(t);
        all.extend(times);
    }
    Ok((back, all))
}

/// A pair made ready for `n` exchanges: both wallets open (each PIN checked
/// by its card), the vouchers minted, B's wallet accepting. Throughput runs
/// time [`Trader::run`] alone, so that neither the PIN checks nor the
/// minting count as exchanges.
pub(crate) struct Trader {
    wa: Wallet,
    card_b: EntityId,
    wb_id: EntityId,
    acceptor: tokio::task::JoinHandle<Result<Wallet>>,
    coffee: VoucherClass,
    ticket: VoucherClass,
    /// The balances of A and B before.
    before: (Vec<Amount>, Vec<Amount>),
    n: u32,
}

impl Trader {
    pub(crate) async fn ready(pair: &Pair, n: u32) -> Result<Self> {
        let mut wa = Wallet::open(
            Capability::acquire(pair.ha().socket_path()).await?,
            pair.card_a,
            PIN,
        )
        .await?;
        let mut wb = Wallet::open(
            Capability::acquire(pair.hb().socket_path()).await?,
            pair.card_b,
            PIN,
        )
        .await?;
        let (coffee, ticket) = (
            class(pair.card_a.domain(), "coffee"),
            class(pair.card_b.domain(), "ticket"),
        );
        wa.mint(Amount {
            class: coffee.clone(),
            quantity: u64::from(n),
        })
        .await?;
        wb.mint(Amount {
            class: ticket.clone(),
            quantity: u64::from(n),
        })
        .await?;
        let before = (wa.balances().await?, wb.balances().await?);
        let wb_id = wb.id();
        let acceptor = tokio::spawn(async move {
            for _ in 0..n {
                let Some(o) = wb.next_offer(WAIT).await? else {
                    bail!("B's wallet got no offer");
                };
                wb.accept(&o).await?;
            }
            Ok::<_, anyhow::Error>(wb)
        });
        wa.follow_ends().await?;
        Ok(Self {
            wa,
            card_b: pair.card_b,
            wb_id,
            acceptor,
            coffee,
            ticket,
            before,
            n,
        })
    }

    /// The `n` exchanges, one after the other: the time of each.
    async fn run(&mut self) -> Result<Vec<Duration>> {
        let one = |c: &VoucherClass| Amount {
            class: c.clone(),
            quantity: 1,
        };
        let card_a = self.wa.card();
        let mut times = Vec::with_capacity(self.n as usize);
        for _ in 0..self.n {
            let t0 = Instant::now();
            self.wa
                .offer(
                    self.card_b,
                    self.wb_id,
                    one(&self.coffee),
                    one(&self.ticket),
                )
                .await?;
            loop {
                let m = self
                    .wa
                    .next_progress(WAIT)
                    .await?
                    .context("the exchange stalled: no commitment reached A's card")?;
                if m.mtype() == msg::COMMITMENT && m.dst() == card_a {
                    break;
                }
            }
            self.wa.sync().await?;
            times.push(t0.elapsed());
        }
        Ok(times)
    }

    /// Checks that every voucher was swapped one for one and none lost.
    pub(crate) async fn check(mut self) -> Result<()> {
        let mut wb = self.acceptor.await??;
        let (ba, bb) = (self.wa.balances().await?, wb.balances().await?);
        let (ba0, bb0) = &self.before;
        let held = |b: &[Amount], c: &VoucherClass| {
            b.iter().find(|a| a.class == *c).map_or(0, |a| a.quantity)
        };
        let (coffee, ticket, n) = (&self.coffee, &self.ticket, u64::from(self.n));
        ensure!(
            held(&ba, coffee) + n == held(ba0, coffee)
                && held(&ba, ticket) == held(ba0, ticket) + n
                && held(&bb, coffee) == held(bb0, coffee) + n
                && held(&bb, ticket) + n == held(bb0, ticket),
            "vouchers not swapped one for one: A {ba0:?} -> {ba:?}, B {bb0:?} -> {bb:?}"
        );
        Ok(())
    }
}

/// The cryptographic floor of one exchange, timed alone with the cards'
/// library: first contact and repeat.
#[derive(Debug, Clone, Copy, Default)]
struct Floor {
    /// Two signatures and two verifications, each certificate checked
    /// against the CA (m2 signed by B, checked by A; m3 signed by A,
    /// checked by B).
    first: Duration,
    /// The same between cards that checked each other's certificates
    /// before: two signatures and two verifications.
    repeat: Duration,
}

fn crypto_floor(ca: &Path, rounds: u32) -> Result<Floor> {
    let (ia, ib) = (domain(0xfa, 0).owner(), domain(0xfb, 0).owner());
    let key = |name: &str, id: EntityId| -> Result<tenet_voucher::crypto::KeyCrypto> {
        let f = tenet_pki::issue_card_key(ca, name, id)?;
        Ok(tenet_voucher::crypto::KeyCrypto::from_pem(
            &std::fs::read(&f.key)?,
            &std::fs::read(&f.cert)?,
            &std::fs::read(&f.ca)?,
        )?)
    };
    let (mut a, mut b) = (key("floor-a", ia)?, key("floor-b", ib)?);
    let (ca_cert, cb_cert) = (a.certificate(), b.certificate());
    let (m2, m3) = ([2u8; 64], [3u8; 32]);
    let (mut first, mut repeat) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t0 = Instant::now();
        let s2 = b.sign(&m2);
        a.verify(ib, &cb_cert, &m2, &s2)?;
        let s3 = a.sign(&m3);
        b.verify(ia, &ca_cert, &m3, &s3)?;
        first.push(t0.elapsed());
        let t0 = Instant::now();
        let s2 = b.sign(&m2);
        verify_known(Signer::card(ib), &cb_cert, &m2, &s2)?;
        let s3 = a.sign(&m3);
        verify_known(Signer::card(ia), &ca_cert, &m3, &s3)?;
        repeat.push(t0.elapsed());
    }
    Ok(Floor {
        first: summarize(first).p50,
        repeat: summarize(repeat).p50,
    })
}

/// CPU time (user and system) of this process so far: every thread, so
/// the daemons, the cards and the wallets of a run together.
fn process_cpu_time() -> Result<Duration> {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    Ok(t(u.ru_utime) + t(u.ru_stime))
}

/// Throughput rounds per configuration; the median is reported.
const ROUNDS: usize = 3;

/// One throughput round.
struct Run {
    stores: Stores,
    pairs: usize,
    exchanges: usize,
    wall: Duration,
    /// CPU time the whole process used during the run.
    cpu: Duration,
    times: Summary,
    /// The rates of all rounds of this configuration, lowest first (on the
    /// reported median round).
    rates: Vec<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.exchanges as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_exchange(&self) -> Duration {
        self.cpu / self.exchanges.max(1) as u32
    }
}

/// Where the cards' stores live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stores {
    /// A temporary folder on the usual file system: every store update is
    /// fsynced to disk, as in production.
    Disk,
    /// /dev/shm (tmpfs): fsync costs nothing; the framework alone.
    Tmpfs,
}

fn store_dir(s: Stores) -> Result<tempfile::TempDir> {
    Ok(match s {
        Stores::Disk => tempfile::tempdir()?,
        Stores::Tmpfs => tempfile::tempdir_in("/dev/shm")
            .context("/dev/shm (tmpfs) is needed for --stores tmpfs")?,
    })
}

/// The scenario: latency with one pair (stores on disk and on tmpfs, side
/// by side), then throughput with each of `pairs` on each of `stores`.
pub async fn run(exchanges: u32, pairs: &[usize], stores: &[Stores]) -> Result<Section> {
    ensure!(exchanges > 0, "--exchanges must be at least 1");
    ensure!(
        pairs.iter().all(|&n| n > 0),
        "--pairs: every count must be at least 1"
    );
    let mut latency = Vec::new();
    // Time the card links were busy per exchange (A, B), by store kind.
    let mut cards = Vec::new();
    let bar = progress(3 + (pairs.len() * stores.len()) as u64, "exchange");
    let mut floor = Floor::default();
    // Store commits and fdatasync calls per exchange, both cards, on disk.
    let (mut commits_per, mut syncs) = (0.0, 0.0);
    for kind in [Stores::Disk, Stores::Tmpfs] {
        let dir = store_dir(kind)?;
        let setup = Setup::new(dir.path())?;
        let pair = setup.pair(0).await?;
        trade(&pair, 20).await?; // warm-up
        let busy = |p: &Pair| {
            (
                p.ha().card_link_busy().unwrap_or_default(),
                p.hb().card_link_busy().unwrap_or_default(),
            )
        };
        let trader = Trader::ready(&pair, exchanges).await?;
        let (a0, b0) = busy(&pair);
        let counts = || {
            (
                tenet_card::store::file_commits(),
                tenet_card::store::file_syncs(),
            )
        };
        let (c0, s0) = counts();
        let (traders, t) = run_all(vec![trader]).await?;
        let (c1, s1) = counts();
        let (a1, b1) = busy(&pair);
        for trader in traders {
            trader.check().await?;
        }
        cards.push((kind, (a1 - a0) / exchanges, (b1 - b0) / exchanges));
        if kind == Stores::Disk {
            commits_per = (c1 - c0) as f64 / f64::from(exchanges);
            syncs = (s1 - s0) as f64 / f64::from(exchanges);
        }
        if kind == Stores::Tmpfs {
            floor = tokio::task::spawn_blocking({
                let ca = setup.pki.ca.dir().to_owned();
                move || crypto_floor(&ca, exchanges.max(200))
            })
            .await??;
        }
        pair.hosts.shutdown().await;
        latency.push((kind, summarize(t)));
        bar.inc(1);
    }
    // The same on tmpfs with every thread of the process on one CPU, the
    // two workers sharing it: no hand-off between tasks wakes the other
    // core. (The crypto floor, one thread's work, is measured unpinned.)
    let one_core = {
        let dir = store_dir(Stores::Tmpfs)?;
        let setup = Setup::new(dir.path())?;
        let pinned = OneCore::pin()?;
        let pair = setup.pair(0).await?;
        trade(&pair, 20).await?; // warm-up
        let t = trade(&pair, exchanges).await;
        pair.hosts.shutdown().await;
        pinned.restore()?;
        summarize(t?)
    };
    bar.inc(1);
    let mut throughput = Vec::new();
    for (&kind, &n) in stores
        .iter()
        .flat_map(|k| pairs.iter().map(move |n| (k, n)))
    {
        let dir = store_dir(kind)?;
        let setup = Setup::new(dir.path())?;
        let mut ps = Vec::with_capacity(n);
        for i in 0..n {
            ps.push(setup.pair(i).await?);
        }
        let per = (exchanges.saturating_mul(4) / u32::try_from(n).unwrap_or(u32::MAX)).max(10);
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            // Wallets opened and vouchers minted first: only the exchanges
            // are timed.
            let ready = futures_util::future::join_all(ps.iter().map(|p| Trader::ready(p, per)));
            let traders = ready.await.into_iter().collect::<Result<Vec<_>>>()?;
            let cpu0 = process_cpu_time()?;
            let t0 = Instant::now();
            let (traders, all) = run_all(traders).await?;
            let wall = t0.elapsed();
            let cpu = process_cpu_time()? - cpu0;
            for t in traders {
                t.check().await?;
            }
            rounds.push(Run {
                stores: kind,
                pairs: n,
                exchanges: all.len(),
                wall,
                cpu,
                times: summarize(all),
                rates: Vec::new(),
            });
        }
        rounds.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let rates = rounds.iter().map(Run::rate).collect();
        let mut median = rounds.swap_remove(ROUNDS / 2);
        median.rates = rates;
        throughput.push(median);
        for p in ps {
            p.hosts.shutdown().await;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(section(
        exchanges,
        pairs,
        stores,
        (&latency, &one_core),
        (&cards, commits_per, syncs),
        floor,
        &throughput,
    ))
}

fn section(
    exchanges: u32,
    pairs: &[usize],
    stores: &[Stores],
    (latency, one_core): (&[(Stores, Summary)], &Summary),
    (cards, commits, syncs): (&[(Stores, Duration, Duration)], f64, f64),
    floor: Floor,
    throughput: &[Run],
) -> Section {
    let name = |s: Stores| match s {
        Stores::Disk => "stores on disk (fsync)",
        Stores::Tmpfs => "stores on tmpfs",
    };
    let mut md = format!(
        "One exchange, two hosts over TLS, in-process virtual cards, each wallet a task of its own on the runtime's workers; {exchanges} exchanges one after the other:\n\n\
         | | p50 us | p99 us | p50 / crypto floor |\n|---|---:|---:|---:|\n\
         | cryptographic floor, first contact: 2 ECDSA P-256 signatures, 2 verifications, each certificate checked against the CA (ring) | {:.0} | | |\n\
         | cryptographic floor, repeat: 2 signatures, 2 verifications, certificates checked before (the cards remember them) | {:.0} | | 1.00x |\n",
        us(floor.first),
        us(floor.repeat)
    );
    for (s, l) in latency {
        md.push_str(&format!(
            "| exchange, {} | {:.0} | {:.0} | {} |\n",
            name(*s),
            us(l.p50),
            us(l.p99),
            ratio(l.p50.as_secs_f64(), floor.repeat.as_secs_f64())
        ));
    }
    md.push_str(&format!(
        "| exchange, stores on tmpfs, every thread on one CPU | {:.0} | {:.0} | {} |\n",
        us(one_core.p50),
        us(one_core.p99),
        ratio(one_core.p50.as_secs_f64(), floor.repeat.as_secs_f64())
    ));
    md.push_str(
        "\nThe same two cards trade again and again, so after the first exchange each \
         card verifies the other's signature but not the CA's signature over its \
         certificate (`tenet_voucher::checked`): the repeat floor is the one to compare.\n",
    );
    md.push_str(
        "\nTime the cards took per exchange (their card links busy: APDUs, the applet, the store \
         writes, the card's own crypto), including the wallets' orders and completion echoes:\n\n\
         | | card A us | card B us |\n|---|---:|---:|\n",
    );
    for (s, a, b) in cards {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} |\n",
            name(*s),
            us(*a),
            us(*b)
        ));
    }
    let p50_of = |kind: Stores| {
        latency
            .iter()
            .find(|(s, _)| *s == kind)
            .map_or(0.0, |(_, l)| us(l.p50))
    };
    let (tmpfs_p50, disk_p50) = (p50_of(Stores::Tmpfs), p50_of(Stores::Disk));
    let over_floor = tmpfs_p50 / us(floor.repeat).max(1e-9);
    let disk_over_tmpfs = disk_p50 / tmpfs_p50.max(1e-9);
    let one_core_over_floor = us(one_core.p50) / us(floor.repeat).max(1e-9);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    md.push_str(&format!(
        "\nStore commits per exchange, both cards: {commits:.2}; fdatasync calls: {syncs:.2}. \
         The protocol's five steps (start, accept, m2, m3, m4) each commit once before the \
         card answers, one after the other. Three are synced before the card answers, as what \
         it sends next binds it: the responder's accept (m2 gives its voucher away), the \
         initiator's m2 (m3 does) and the responder's m3 (m4 does). The initiator's start and \
         m4 are written unsynced: a power cut may lose them and the protocol recovers \
         (`tenet_voucher::card::may_lose_step`, docs/model.md). The wallet's balance query \
         after its order makes the start durable while m1 travels, mostly off the exchange's \
         path (answers that report state are synced first; when the query comes after m2 \
         reached the card, the m2 step's sync covers it, hence fewer than 4 fdatasync calls). \
         The exchange p50 on tmpfs is \
         **{over_floor:.2}x** the repeat crypto floor (aim 2.5x: {}); on disk \
         **{disk_over_tmpfs:.2}x** its p50 on tmpfs (aim 1.5x: {}). With every thread of the \
         process on one CPU (both runtime workers sharing it, so that no hand-off between the \
         exchange's tasks wakes the other core) the p50 on tmpfs is \
         **{one_core_over_floor:.2}x** the floor (docs/benchmarks-notes.md).\n",
        met(over_floor <= 2.5),
        met(disk_over_tmpfs <= 1.5),
    ));
    md.push_str(&format!(
        "\nAim: p50 under 1 ms: {} on tmpfs ({tmpfs_p50:.0} us).\n\n\
         Throughput, card pairs trading at once (two hosts per pair, as each host has one card), \
         each pair one exchange at a time; {ROUNDS} rounds on the same pairs, the median round \
         reported, with the range of all rounds. Each round opens the wallets (each card checks \
         its PIN) and mints the vouchers first; the clock and the CPU count start once every pair \
         is ready:\n\n\
         | stores | pairs | exchanges | wall s | exchanges/s | range | p50 us | p99 us | CPU us per exchange | 2 cores / CPU per exchange | of the crypto bound |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        if tmpfs_p50 < 1000.0 { "met" } else { "NOT met" },
    ));
    let bound = 2.0 / floor.repeat.as_secs_f64().max(1e-9);
    let mut best: f64 = 0.0;
    for r in throughput {
        best = best.max(r.rate());
        let cpu = r.cpu_per_exchange();
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0}-{:.0} | {:.0} | {:.0} | {:.0} | {:.0}/s | {:.0}% |\n",
            name(r.stores),
            r.pairs,
            r.exchanges,
            r.wall.as_secs_f64(),
            r.rate(),
            r.rates.first().copied().unwrap_or_default(),
            r.rates.last().copied().unwrap_or_default(),
            us(r.times.p50),
            us(r.times.p99),
            us(cpu),
            2.0 / cpu.as_secs_f64(),
            100.0 * r.rate() / bound,
        ));
    }
    md.push_str(&format!(
        "\nCPU is the whole process's (user and system, all threads: both daemons of every \
         pair, the cards, the wallets) during the run, divided by the exchanges; the next \
         column is what two fully busy cores would sustain at that cost. The crypto bound is \
         what two cores would sustain doing nothing but the exchange's signatures and \
         verifications (2 / the repeat floor above: {bound:.0}/s in this run); the share of it \
         moves less with the machine's speed, which varies from run to run on this shared \
         machine (the floor with it).\n",
    ));
    md.push_str(&format!(
        "\nAim: at least 3,000 exchanges/s on 2 cores: {} (best median {best:.0}/s).\n",
        if best >= 3000.0 { "met" } else { "NOT met" }
    ));
    // The aim on the share of the crypto bound: 8 and 64 pairs on tmpfs.
    let aimed: Vec<&Run> = throughput
        .iter()
        .filter(|r| r.stores == Stores::Tmpfs && (r.pairs == 8 || r.pairs == 64))
        .collect();
    if !aimed.is_empty() {
        let shares: Vec<String> = aimed
            .iter()
            .map(|r| format!("{:.0}% with {} pairs", 100.0 * r.rate() / bound, r.pairs))
            .collect();
        md.push_str(&format!(
            "\nAim: at least 50% of the crypto bound with 8 and 64 pairs on tmpfs: {} ({}).\n",
            if aimed.iter().all(|r| r.rate() / bound >= 0.5) {
                "met"
            } else {
                "NOT met"
            },
            shares.join(", ")
        ));
    }
    let json = serde_json::json!({
        "crypto_floor_first_contact_us": us(floor.first),
        "crypto_floor_us": us(floor.repeat),
        "store_commits_per_exchange": commits,
        "store_syncs_per_exchange": syncs,
        "p50_tmpfs_over_floor": over_floor,
        "p50_disk_over_tmpfs": disk_over_tmpfs,
        "p50_tmpfs_one_core_over_floor": one_core_over_floor,
        "one_core": serde_json::json!({
            "stores": "tmpfs",
            "p50_us": us(one_core.p50),
            "p99_us": us(one_core.p99),
        }),
        "card_busy_per_exchange": cards.iter().map(|(s, a, b)| serde_json::json!({
            "stores": format!("{s:?}").to_lowercase(),
            "card_a_us": us(*a),
            "card_b_us": us(*b),
        })).collect::<Vec<_>>(),
        "latency": latency.iter().map(|(s, l)| serde_json::json!({
            "stores": format!("{s:?}").to_lowercase(),
            "p50_us": us(l.p50),
            "p99_us": us(l.p99),
            "p50_over_floor": l.p50.as_secs_f64() / floor.repeat.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "throughput": throughput.iter().map(|r| serde_json::json!({
            "stores": format!("{:?}", r.stores).to_lowercase(),
            "pairs": r.pairs,
            "exchanges": r.exchanges,
            "wall_s": r.wall.as_secs_f64(),
            "exchanges_per_s": r.rate(),
            "rounds_exchanges_per_s": r.rates,
            "p50_us": us(r.times.p50),
            "p99_us": us(r.times.p99),
            "cpu_us_per_exchange": us(r.cpu_per_exchange()),
            "share_of_crypto_bound": r.rate() * floor.repeat.as_secs_f64() / 2.0,
        })).collect::<Vec<_>>(),
    });
    let mut plots = vec![Plot {
        file: "exchange-latency".into(),
        title: "One exchange, p50".into(),
        unit: "us".into(),
        bars: [
            ("crypto floor, first contact".to_string(), us(floor.first)),
            ("crypto floor, repeat".to_string(), us(floor.repeat)),
        ]
        .into_iter()
        .chain(
            latency
                .iter()
                .map(|(s, l)| (name(*s).to_string(), us(l.p50))),
        )
        .chain(std::iter::once((
            "stores on tmpfs, one CPU".to_string(),
            us(one_core.p50),
        )))
        .collect(),
    }];
    plots.push(Plot {
        file: "exchange-throughput".into(),
        title: "Throughput".into(),
        unit: "exchanges/s".into(),
        bars: throughput
            .iter()
            .map(|r| {
                (
                    format!(
                        "{} pairs, {}",
                        r.pairs,
                        format!("{:?}", r.stores).to_lowercase()
                    ),
                    r.rate(),
                )
            })
            .collect(),
    });
    let pairs_arg = pairs
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Section {
        name: "exchange",
        title: "Exchange: latency, throughput and the cryptographic floor".into(),
        command: format!(
            "tenet bench exchange --exchanges {exchanges} --pairs {pairs_arg} --stores {}",
            stores
                .iter()
                .map(|k| format!("{k:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(",")
        ),
        markdown: md,
        json,
        plots,
    }
}
