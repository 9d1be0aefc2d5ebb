//! `tenet bench scale`: the daemon with thousands of connected apps and a
//! deep queue, the daemon's memory under a flood of large messages to apps
//! that never read, the dispatch table with thousands of endpoints, and an
//! app-to-card round trip next to a D-Bus method call through dbus-daemon.
//!
//! The daemon under load runs as a child process (`tenet host --config`),
//! so its memory (VmRSS in `/proc/PID/status`) is its own; the apps are
//! connections from this process, each a [`Capability`] on the app socket.
//! The card and D-Bus round trips are measured in the same run, interleaved
//! in rounds, so both see the same machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tenet_client::Capability;
use tenet_dispatch::{DispatchTable, Ingress, Limits};
use tenet_proto::{Domain, EntityId, Message, Mtype, Port};

use crate::report::{Plot, Section, progress, ratio};
use crate::stats::{Summary, summarize, us};

/// The app-to-app messages' mtype (an application mtype).
const MTYPE: Mtype = Mtype(0x8001);
/// Bytes of each app-to-app message's param.
const PARAM: usize = 16;
/// How long one app waits for one message before the run is called stuck.
const STUCK: Duration = Duration::from_secs(60);
/// File descriptors kept free besides one per app.
const SPARE_FDS: u64 = 256;

/// `tenet bench scale`'s counts.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Connected-app counts, measured in turn on one daemon
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub apps: Vec<u32>,
    /// Messages routed app to app at each count: each app sends an equal
    /// share to the next app and reads what the previous one sent.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Messages queued for one app that does not read, then drained.
    #[arg(long, default_value_t = 100_000)]
    pub queued: u64,
    /// Messages through the in-process dispatch table.
    #[arg(long, default_value_t = 2_000_000)]
    pub dispatch: u64,
    /// Bound endpoints in that table; messages go to them in turn.
    #[arg(long, default_value_t = 10_000)]
    pub endpoints: u32,
    /// Round trips per contender: app to card through the daemon, app to
    /// app, and a D-Bus method call through dbus-daemon.
    #[arg(long, default_value_t = 5_000)]
    pub rounds: u32,
    /// Apps that acquire an id and never read, flooded by one other app
    /// (the daemon keeps its `[dispatch]` defaults).
    #[arg(long, default_value_t = 64)]
    pub flood_apps: u32,
    /// Messages the flooder offers each of them.
    #[arg(long, default_value_t = 1024)]
    pub flood_messages: u32,
    /// Bytes of each flood message's param.
    #[arg(long, default_value_t = 60_000)]
    pub flood_param: usize,
}

/// Runs the scenario.
pub async fn run(a: &Args) -> Result<Section> {
    let mut levels: Vec<u32> = a.apps.iter().copied().filter(|&n| n > 0).collect();
    levels.sort_unstable();
    levels.dedup();
    if levels.is_empty() {
        bail!("--apps needs at least one count above 0");
    }
    let endpoints = a.endpoints.max(1);
    let dispatch_n = a.dispatch;
    let dispatch = tokio::task::spawn_blocking(move || dispatch_many(dispatch_n, endpoints))
        .await
        .context("the dispatch measurement")?;

    let dir = tempfile::tempdir()?;
    let want = u64::from(*levels.last().expect("not empty")) + SPARE_FDS;
    let nofile = raise_nofile(want);
    let limits = limits_toml(a.messages.max(a.queued));

    let apps = app_levels(dir.path(), &limits, &levels, a.messages, nofile).await?;
    let queued = queue(dir.path(), &limits, a.queued).await?;
    let flooded = flood(dir.path(), a).await?;
    let rtt = card_vs_dbus(dir.path(), a.rounds.max(1)).await?;

    Ok(section(
        a, &dispatch, nofile, &apps, &queued, &flooded, &rtt,
    ))
}

// ---------------------------------------------------------------- dispatch

struct Dispatched {
    endpoints: u32,
    messages: u64,
    per_s: f64,
}

/// Messages per second stored into and taken from a dispatch table with
/// `endpoints` bound endpoints, on one thread: stores go to the endpoints in
/// turn, 64 at a time, then each of those 64 is read.
fn dispatch_many(n: u64, endpoints: u32) -> Dispatched {
    let d = Domain::new([2; 12]);
    let mut t = DispatchTable::new(d.owner(), Limits::default());
    let eps: Vec<_> = (0..endpoints)
        .map(|i| {
            let ep = t.add_endpoint();
            let id = EntityId::new(d, Port::new(i + 1));
            t.bind(ep, id).expect("fresh id");
            (ep, id)
        })
        .collect();
    let src = eps[0].1;
    let msgs: Vec<Message> = eps
        .iter()
        .map(|&(_, id)| Message::new(src, id, MTYPE, vec![0; PARAM]))
        .collect();
    let now = Instant::now();
    let start = Instant::now();
    let (mut taken, mut next) = (0u64, 0usize);
    let mut sent = 0u64;
    while sent < n {
        let batch = (n - sent).min(64) as usize;
        let first = next;
        for _ in 0..batch {
            t.store(Ingress::App, msgs[next].clone(), now)
                .expect("bounds not reached");
            next = (next + 1) % msgs.len();
        }
        for k in 0..batch {
            let ep = eps[(first + k) % eps.len()].0;
            while let Some(d) = t.take(ep) {
                std::hint::black_box(&d);
                taken += 1;
            }
        }
        while t.poll_event().is_some() {}
        sent += batch as u64;
    }
    assert_eq!(taken, n, "every message read once");
    Dispatched {
        endpoints,
        messages: n,
        per_s: n as f64 / start.elapsed().as_secs_f64(),
    }
}

// ------------------------------------------------------------- the daemon

/// `[dispatch]` bounds that let `n` messages wait for one app, all from one
/// sender (no per-sender share).
fn limits_toml(n: u64) -> String {
    let per = n + 1024;
    format!(
        "[dispatch]\nper_destination = {per}\ntotal = {}\nper_sender_share = 1.0\n\
         ttl_secs = 3600\n",
        (2 * per).max(65_536)
    )
}

fn toml_str(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// A `tenet host` child process; killed when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `tenet host --config` (this very binary) and waits until it
    /// hands out ids.
    async fn spawn(dir: &Path, name: &str, extra: &str) -> Result<Self> {
        let socket = dir.join(format!("{name}.sock"));
        let config = dir.join(format!("{name}.toml"));
        let log = dir.join(format!("{name}.log"));
        std::fs::write(
            &config,
            format!(
                "[host]\nsocket = {}\nstate_dir = {}\n\
                 # thousands of apps of one user, connected as fast as they can\n\
                 acquire_burst = 1000000\nacquire_rate = 1000000\n{extra}",
                toml_str(&socket),
                toml_str(&dir.join(format!("{name}-state")))
            ),
        )?;
        let exe = std::env::current_exe().context("locating the tenet binary")?;
        let child = Command::new(exe)
            .args(["host", "--config"])
            .arg(&config)
            .env("TENET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting `tenet host`")?;
        let mut d = Daemon { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = d.child.try_wait()? {
                bail!("`tenet host` exited ({status}): {}", d.log_tail());
            }
            if d.socket.exists() && Capability::acquire(&d.socket).await.is_ok() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("`tenet host` did not answer in time: {}", d.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// The daemon's resident set, KiB.
    fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// The daemon's largest resident set so far, KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the daemon's /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .with_context(|| format!("no {field} in the daemon's /proc status"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises RLIMIT_NOFILE's soft limit (and the hard one, where allowed) to
/// at least `want`; returns the soft limit in force. Child processes
/// inherit it.
fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur >= want {
        return r.rlim_cur;
    }
    let set = |cur: u64, max: u64| {
        let l = libc::rlimit {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 }
    };
    if set(want, r.rlim_max.max(want)) {
        return want;
    }
    if set(r.rlim_max, r.rlim_max) {
        return r.rlim_max;
    }
    r.rlim_cur
}

// ------------------------------------------------------------------- apps

struct Level {
    requested: u32,
    connected: usize,
    stopped: Option<String>,
    rss_connected: u64,
    rss_after: u64,
    sent: u64,
    delivered: u64,
    per_s: f64,
    echo: Summary,
}

struct Apps {
    rss_idle: u64,
    levels: Vec<Level>,
}

async fn app_levels(
    dir: &Path,
    limits: &str,
    levels: &[u32],
    messages: u64,
    nofile: u64,
) -> Result<Apps> {
    let d = Daemon::spawn(dir, "apps", limits).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = d.rss_kib()?;
    let mut apps: Vec<Capability> = Vec::new();
    let mut out = Vec::new();
    for &n in levels {
        let pb = progress(u64::from(n), &format!("connecting {n} apps"));
        pb.set_position(apps.len() as u64);
        let mut stopped = None;
        while apps.len() < n as usize {
            if apps.len() as u64 + SPARE_FDS / 2 >= nofile {
                stopped = Some(format!(
                    "stopped at {} apps by the open-files limit (RLIMIT_NOFILE {nofile})",
                    apps.len()
                ));
                break;
            }
            match Capability::acquire(&d.socket).await {
                Ok(c) => apps.push(c),
                Err(e) => {
                    stopped = Some(format!("stopped at {} apps: {e}", apps.len()));
                    break;
                }
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        let connected = apps.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss_connected = d.rss_kib()?;

        // Latency with every other app connected and idle.
        let echo = {
            let a = &mut apps[0];
            let host = a.id().domain().owner();
            let mut v = Vec::new();
            for i in 0..250 {
                let rtt = a.echo(host, &[], Duration::from_secs(10)).await?;
                if i >= 50 {
                    v.push(rtt);
                }
            }
            summarize(v)
        };

        let per_app = (messages / connected as u64).max(1);
        let (back, secs, delivered) = route(std::mem::take(&mut apps), per_app).await?;
        apps = back;
        let sent = per_app * connected as u64;
        let rss_after = d.rss_kib()?;
        out.push(Level {
            requested: n,
            connected,
            stopped: stopped.clone(),
            rss_connected,
            rss_after,
            sent,
            delivered,
            per_s: delivered as f64 / secs,
            echo,
        });
        if stopped.is_some() {
            break;
        }
    }
    drop(apps);
    drop(d);
    Ok(Apps {
        rss_idle,
        levels: out,
    })
}

/// Every app sends `per_app` messages to the next app (in a ring), then
/// reads the `per_app` the previous one sent; all apps at once. Returns the
/// apps in their order, the seconds taken and the messages delivered.
async fn route(apps: Vec<Capability>, per_app: u64) -> Result<(Vec<Capability>, f64, u64)> {
    let n = apps.len();
    let ids: Vec<EntityId> = apps.iter().map(Capability::id).collect();
    let pb = progress(n as u64, &format!("routing among {n} apps"));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, mut a) in apps.into_iter().enumerate() {
        let dst = ids[(i + 1) % n];
        set.spawn(async move {
            let mut param = vec![0u8; PARAM];
            for k in 0..per_app {
                param[..8].copy_from_slice(&k.to_be_bytes());
                a.send(dst, MTYPE, param.clone()).await?;
            }
            let mut got = 0u64;
            while got < per_app {
                let m = tokio::time::timeout(STUCK, a.receive())
                    .await
                    .context("an app waited a minute for a message")??;
                if m.mtype() == MTYPE {
                    got += 1;
                }
            }
            anyhow::Ok((i, a, got))
        });
    }
    let mut back: Vec<Option<Capability>> = (0..n).map(|_| None).collect();
    let mut delivered = 0;
    while let Some(r) = set.join_next().await {
        let (i, a, got) = r??;
        back[i] = Some(a);
        delivered += got;
        pb.inc(1);
    }
    let secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok((back.into_iter().flatten().collect(), secs, delivered))
}

// ----------------------------------------------------------------- queued

struct Queued {
    messages: u64,
    delivered: u64,
    rss_idle: u64,
    rss_full: u64,
    rss_drained: u64,
    fill_per_s: f64,
    drain_per_s: f64,
}

/// One app sends `n` messages to another that does not read; then that
/// one reads them all.
async fn queue(dir: &Path, limits: &str, n: u64) -> Result<Queued> {
    let d = Daemon::spawn(dir, "queue", limits).await?;
    let mut rx = Capability::acquire(&d.socket).await?;
    let mut tx = Capability::acquire(&d.socket).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = d.rss_kib()?;
    let pb = progress(n, &format!("queueing {n} messages"));
    let mut param = vec![0u8; PARAM];
    let start = Instant::now();
    for k in 0..n {
        param[..8].copy_from_slice(&k.to_be_bytes());
        tx.send(rx.id(), MTYPE, param.clone())
            .await
            .with_context(|| format!("queueing message {k} of {n}"))?;
        if k % 1024 == 0 {
            pb.set_position(k);
        }
    }
    let fill = start.elapsed();
    pb.finish_and_clear();
    let rss_full = d.rss_kib()?;
    let start = Instant::now();
    let mut delivered = 0u64;
    while delivered < n {
        let m = tokio::time::timeout(STUCK, rx.receive())
            .await
            .context("the reader waited a minute for a queued message")??;
        if m.mtype() == MTYPE {
            delivered += 1;
        }
    }
    let drain = start.elapsed();
    let rss_drained = d.rss_kib()?;
    Ok(Queued {
        messages: n,
        delivered,
        rss_idle,
        rss_full,
        rss_drained,
        fill_per_s: n as f64 / fill.as_secs_f64(),
        drain_per_s: n as f64 / drain.as_secs_f64(),
    })
}

// ------------------------------------------------------------------ flood

struct Flooded {
    apps: u32,
    per_app: u32,
    param: usize,
    offered_bytes: u64,
    accepted: u64,
    refused: u64,
    budget_bytes: u64,
    rss_idle: u64,
    rss_flooded: u64,
    rss_peak: u64,
    secs: f64,
}

/// Security II, item 1: `flood_apps` apps acquire an id and never read; one
/// other app offers each of them `flood_messages` messages of `flood_param`
/// bytes, in turn, on the daemon's `[dispatch]` defaults. Beyond the byte
/// budgets the flooder gets "queue full" and the daemon stores nothing.
async fn flood(dir: &Path, a: &Args) -> Result<Flooded> {
    let d = Daemon::spawn(dir, "flood", "").await?;
    let mut idle = Vec::new();
    for _ in 0..a.flood_apps.max(1) {
        idle.push(Capability::acquire(&d.socket).await?);
    }
    let ids: Vec<EntityId> = idle.iter().map(Capability::id).collect();
    let mut flooder = Capability::acquire(&d.socket).await?;
    flooder
        .echo(flooder.id().domain().owner(), &[], Duration::from_secs(10))
        .await?;
    let rss_idle = d.rss_kib()?;
    let total = u64::from(a.flood_messages) * ids.len() as u64;
    let pb = progress(
        total,
        &format!("flooding {} apps that never read", ids.len()),
    );
    let param = vec![0x5a; a.flood_param.min(tenet_proto::MAX_PARAM_LEN)];
    let (mut accepted, mut refused) = (0u64, 0u64);
    let start = Instant::now();
    for _ in 0..a.flood_messages {
        for dst in &ids {
            match flooder.send(*dst, MTYPE, param.clone()).await {
                Ok(()) => accepted += 1,
                Err(tenet_client::ClientError::QueueFull(_)) => refused += 1,
                Err(e) => return Err(e).context("flooding"),
            }
        }
        pb.inc(ids.len() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let rss_flooded = d.rss_kib()?;
    let rss_peak = d.peak_rss_kib()?;
    drop(idle);
    Ok(Flooded {
        apps: ids.len() as u32,
        per_app: a.flood_messages,
        param: param.len(),
        offered_bytes: total * (param.len() + tenet_proto::HEADER_LEN) as u64,
        accepted,
        refused,
        budget_bytes: tenet_dispatch::Limits::default().total_bytes as u64,
        rss_idle,
        rss_flooded,
        rss_peak,
        secs,
    })
}

// ---------------------------------------------------------- card vs D-Bus

struct Rtt {
    rounds: u32,
    card: Summary,
    app: Summary,
    /// The D-Bus method call, or why there is none.
    dbus: std::result::Result<Summary, NoDbus>,
}

/// Why a run has no D-Bus baseline.
#[derive(Debug, thiserror::Error)]
pub enum NoDbus {
    /// This build has no D-Bus client.
    #[cfg(not(feature = "dbus"))]
    #[error("not in this build (rebuild with `--features dbus`)")]
    NotBuilt,
    /// dbus-daemon is missing.
    #[cfg(feature = "dbus")]
    #[error(
        "dbus-daemon is not installed (Debian package `dbus-daemon`); no D-Bus baseline in this run"
    )]
    NotInstalled,
    /// dbus-daemon or the client did not start.
    #[cfg(feature = "dbus")]
    #[error("dbus-daemon did not start: {0:#}")]
    DidNotStart(anyhow::Error),
    /// A method call failed during the run.
    #[error("the D-Bus method call failed: {0:#}")]
    CallFailed(anyhow::Error),
}

/// Echo from an app to the daemon's in-process virtual card (`CARD:0`) and
/// to another app, next to a D-Bus method call through a private
/// dbus-daemon, interleaved in rounds.
async fn card_vs_dbus(dir: &Path, n: u32) -> Result<Rtt> {
    let store = dir.join("card.store");
    tenet_testkit::blank_card(&store, 0xcd)?;
    let mut cfg = tenet_host::Config::default();
    cfg.host.socket = Some(dir.join("card.sock"));
    cfg.host.state_dir = Some(dir.join("card-state"));
    cfg.card.virtual_store = Some(store);
    let host = tenet_voucher_app::start(&cfg)
        .await
        .context("starting the daemon with the virtual card")?;
    let card = host.card_id().context("the daemon has no card")?;
    let socket = host.socket_path().to_owned();
    let mut a = Capability::acquire(&socket).await?;
    let mut b = Capability::acquire(&socket).await?;
    let peer = b.id();
    // Answers echo automatically while reading.
    let responder = tokio::spawn(async move { while b.next().await.is_ok() {} });

    let mut bus = dbus::Bench::start(dir).await;
    let rounds = 5u32;
    let per = n.div_ceil(rounds);
    let warmup = (per / 10).max(10);
    let (mut c, mut p, mut d) = (Vec::new(), Vec::new(), Vec::new());
    let pb = progress(u64::from(rounds), "card and D-Bus round trips");
    for _ in 0..rounds {
        for i in 0..warmup + per {
            let rtt = a.echo(card, &[], Duration::from_secs(10)).await?;
            if i >= warmup {
                c.push(rtt);
            }
        }
        for i in 0..warmup + per {
            let rtt = a.echo(peer, &[], Duration::from_secs(10)).await?;
            if i >= warmup {
                p.push(rtt);
            }
        }
        if let Ok(bench) = &mut bus {
            match bench.calls(warmup, per).await {
                Ok(v) => d.extend(v),
                Err(e) => bus = Err(NoDbus::CallFailed(e)),
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    responder.abort();
    host.shutdown().await;
    Ok(Rtt {
        rounds,
        card: summarize(c),
        app: summarize(p),
        dbus: bus.map(|_| summarize(d)),
    })
}

#[cfg(not(feature = "dbus"))]
mod dbus {
    use std::path::Path;
    use std::time::Duration;

    /// Stands in for the D-Bus client in a build without it.
    pub enum Bench {}

    impl Bench {
        pub async fn start(_dir: &Path) -> Result<Self, super::NoDbus> {
            Err(super::NoDbus::NotBuilt)
        }

        pub async fn calls(&mut self, _warmup: u32, _n: u32) -> anyhow::Result<Vec<Duration>> {
            match *self {}
        }
    }
}

#[cfg(feature = "dbus")]
mod dbus {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use futures_util::StreamExt;
    use zbus::message::Type;

    const NAME: &str = "org.tenet.Bench";
    const PATH: &str = "/org/tenet/Bench";
    /// How long connecting or one call may take before the baseline is
    /// given up.
    const CONNECT: Duration = Duration::from_secs(10);

    /// A private dbus-daemon, a service on it answering `Echo(ay) -> ay`
    /// with its argument, and a client connection.
    pub struct Bench {
        bus: Child,
        client: zbus::Connection,
        service: tokio::task::JoinHandle<()>,
        seq: u64,
    }

    impl Drop for Bench {
        fn drop(&mut self) {
            self.service.abort();
            let _ = self.bus.kill();
            let _ = self.bus.wait();
        }
    }

    fn find(program: &str) -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .chain(["/usr/bin".into(), "/bin".into()])
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    }

    impl Bench {
        /// Starts dbus-daemon on a socket in `dir`, or says why not.
        pub async fn start(dir: &Path) -> Result<Self, super::NoDbus> {
            let Some(exe) = find("dbus-daemon") else {
                return Err(super::NoDbus::NotInstalled);
            };
            Self::start_with(&exe, dir)
                .await
                .map_err(super::NoDbus::DidNotStart)
        }

        async fn start_with(exe: &Path, dir: &Path) -> Result<Self> {
            let socket = dir.join("dbus.sock");
            let config = dir.join("dbus.conf");
            std::fs::write(
                &config,
                format!(
                    r#"<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                    socket.display()
                ),
            )?;
            let log = dir.join("dbus.log");
            let mut bus = Command::new(exe)
                .arg(format!("--config-file={}", config.display()))
                .args(["--nofork", "--nopidfile"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .context("spawning dbus-daemon")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !socket.exists() {
                if let Some(status) = bus.try_wait()? {
                    bail!(
                        "dbus-daemon exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default().trim()
                    );
                }
                if Instant::now() > deadline {
                    let _ = bus.kill();
                    let _ = bus.wait();
                    bail!("no socket after 10 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let address = format!("unix:path={}", socket.display());
            let connected = tokio::time::timeout(CONNECT, async {
                let server = zbus::connection::Builder::address(address.as_str())
                    .name(NAME)
                    .build()
                    .await?;
                let client = zbus::connection::Builder::address(address.as_str())
                    .build()
                    .await?;
                anyhow::Ok((server, client))
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {CONNECT:?}")));
            let (server, client) = match connected {
                Ok(c) => c,
                Err(e) => {
                    let _ = bus.kill();
                    let _ = bus.wait();
                    return Err(e.context("connecting to dbus-daemon"));
                }
            };
            let service = tokio::spawn(async move {
                let mut stream = zbus::MessageStream::from(&server);
                while let Some(Ok(m)) = stream.next().await {
                    let h = m.header();
                    if h.message_type() != Type::MethodCall
                        || h.member().map(|n| n.as_str()) != Some("Echo")
                    {
                        continue;
                    }
                    let Ok(body) = m.body().deserialize::<Vec<u8>>() else {
                        continue;
                    };
                    if server.reply(&h, &body).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Self {
                bus,
                client,
                service,
                seq: 0,
            })
        }

        /// `warmup + n` calls of `Echo` with an 8-byte sequence number (the
        /// size of our echo's param); the last `n` round trips.
        pub async fn calls(&mut self, warmup: u32, n: u32) -> Result<Vec<Duration>> {
            let mut out = Vec::with_capacity(n as usize);
            for i in 0..warmup + n {
                self.seq += 1;
                let arg = self.seq.to_be_bytes().to_vec();
                let t = Instant::now();
                let call = self
                    .client
                    .call_method(Some(NAME), PATH, Some(NAME), "Echo", &arg);
                let reply = tokio::time::timeout(CONNECT, call)
                    .await
                    .context("no reply from the D-Bus service")??;
                let rtt = t.elapsed();
                let back: Vec<u8> = reply.body().deserialize()?;
                if back != arg {
                    bail!("the service answered another sequence number");
                }
                if i >= warmup {
                    out.push(rtt);
                }
            }
            Ok(out)
        }
    }
}

// ----------------------------------------------------------------- report

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn per_app_kib(l: &Level, idle: u64) -> f64 {
    l.rss_connected.saturating_sub(idle) as f64 / l.connected.max(1) as f64
}

fn row(name: &str, s: &Summary) -> Value {
    json!({
        "name": name,
        "mean_us": us(s.mean),
        "p50_us": us(s.p50),
        "p99_us": us(s.p99),
    })
}

fn section(
    a: &Args,
    dispatch: &Dispatched,
    nofile: u64,
    apps: &Apps,
    q: &Queued,
    f: &Flooded,
    rtt: &Rtt,
) -> Section {
    let mut md = String::new();

    // Apps.
    let _ = writeln!(
        md,
        "Daemon (`tenet host`, a child process) with N apps connected over the \
         app socket; RSS is the daemon's VmRSS. Idle daemon: {:.1} MiB. Each \
         app sends an equal share of the messages to the next app in a ring, \
         all apps at once; echo is one app to the host entity while the others \
         stay connected. Open-files limit: {nofile}.\n",
        mib(apps.rss_idle)
    );
    md.push_str(
        "| apps | RSS connected MiB | per app KiB | RSS after traffic MiB | messages | \
         delivered | messages/s | echo p50 us |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut levels_json = Vec::new();
    for l in &apps.levels {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.0} | {:.1} |",
            l.connected,
            mib(l.rss_connected),
            per_app_kib(l, apps.rss_idle),
            mib(l.rss_after),
            l.sent,
            l.delivered,
            l.per_s,
            us(l.echo.p50)
        );
        levels_json.push(json!({
            "apps_requested": l.requested,
            "apps_connected": l.connected,
            "stopped": l.stopped,
            "rss_connected_kib": l.rss_connected,
            "rss_after_traffic_kib": l.rss_after,
            "kib_per_app": per_app_kib(l, apps.rss_idle),
            "messages_sent": l.sent,
            "messages_delivered": l.delivered,
            "messages_per_s": l.per_s,
            "echo": row("app -> daemon -> host entity -> app", &l.echo),
        }));
    }
    for l in &apps.levels {
        if let Some(s) = &l.stopped {
            let _ = writeln!(md, "\n**{} apps requested: {s}.**", l.requested);
        }
    }
    if let (Some(first), Some(last)) = (apps.levels.first(), apps.levels.last())
        && apps.levels.len() > 1
    {
        let _ = writeln!(
            md,
            "\nWith {} apps the daemon routes {} the messages per second it \
             routes with {}, and answers echo in {} the time.",
            last.connected,
            ratio(last.per_s, first.per_s),
            first.connected,
            ratio(us(last.echo.p50), us(first.echo.p50)),
        );
    }

    // Queued.
    let per_msg = q.rss_full.saturating_sub(q.rss_idle) as f64 * 1024.0 / q.messages.max(1) as f64;
    let _ = writeln!(
        md,
        "\n{} messages of {PARAM}-byte param queued for one app that does not \
         read (`[dispatch] per_destination` raised to allow it), on a fresh \
         daemon: RSS {:.1} MiB idle, **{:.1} MiB queued** ({per_msg:.0} bytes \
         per message over all of them, though some wait in the kernel's socket \
         buffer rather than in the daemon), {:.1} MiB after draining. Queued at {:.0} messages/s (one sender, each send \
         acknowledged); {} of {} delivered to the reader at {:.0} messages/s.",
        q.messages,
        mib(q.rss_idle),
        mib(q.rss_full),
        mib(q.rss_drained),
        q.fill_per_s,
        q.delivered,
        q.messages,
        q.drain_per_s,
    );

    // Flood.
    let _ = writeln!(
        md,
        "\nFlood (Security II, item 1): {} apps acquire an id and never read; one \
         other app offers each {} messages of {} bytes, in turn ({:.0} MiB in all), \
         on the `[dispatch]` defaults (`total_bytes` {:.0} MiB, `per_destination_bytes` \
         {:.0} MiB, `per_sender_share` {}). {} accepted, {} refused with \"queue full\" \
         ({:.1} s). Daemon RSS: {:.1} MiB idle, **{:.1} MiB flooded**, {:.1} MiB at \
         its peak, against a budget of {:.0} MiB for the table (before byte budgets \
         this flood made a daemon hold 3.8 GB).",
        f.apps,
        f.per_app,
        f.param,
        f.offered_bytes as f64 / f64::from(1 << 20),
        f.budget_bytes as f64 / f64::from(1 << 20),
        tenet_dispatch::Limits::default().per_destination_bytes as f64 / f64::from(1 << 20),
        tenet_dispatch::Limits::default().per_sender_share,
        f.accepted,
        f.refused,
        f.secs,
        mib(f.rss_idle),
        mib(f.rss_flooded),
        mib(f.rss_peak),
        f.budget_bytes as f64 / f64::from(1 << 20),
    );

    // Dispatch.
    let _ = writeln!(
        md,
        "\nDispatch table in-process, one thread, {} bound endpoints, messages to \
         each in turn: **{:.0} messages/s** (store + take, {} messages).",
        dispatch.endpoints, dispatch.per_s, dispatch.messages
    );

    // Round trips.
    let _ = writeln!(
        md,
        "\nRound trips, {} per contender, interleaved in {} rounds (8-byte \
         payload each):\n",
        a.rounds, rtt.rounds
    );
    let mut rows: Vec<(&str, &Summary)> = Vec::new();
    if let Ok(d) = &rtt.dbus {
        rows.push(("D-Bus method call via dbus-daemon (baseline)", d));
    }
    rows.push(("app -> daemon -> virtual card -> daemon -> app", &rtt.card));
    rows.push(("app -> daemon -> app -> daemon -> app", &rtt.app));
    let base = rows[0].1.p50.as_secs_f64();
    md.push_str(
        "| round trip | mean us | p50 us | p99 us | p50 ratio |\n|---|---:|---:|---:|---:|\n",
    );
    for (name, s) in &rows {
        let _ = writeln!(
            md,
            "| {name} | {:.1} | {:.1} | {:.1} | {} |",
            us(s.mean),
            us(s.p50),
            us(s.p99),
            ratio(s.p50.as_secs_f64(), base)
        );
    }
    let dbus_json = match &rtt.dbus {
        Ok(d) => {
            let _ = writeln!(
                md,
                "\nAn app-to-card echo through the daemon takes {} the time of a \
                 D-Bus method call through dbus-daemon; app to app, {}.",
                ratio(rtt.card.p50.as_secs_f64(), d.p50.as_secs_f64()),
                ratio(rtt.app.p50.as_secs_f64(), d.p50.as_secs_f64()),
            );
            json!({
                "available": true,
                "reason": null,
                "round_trip": row("D-Bus method call via dbus-daemon", d),
                "card_vs_dbus_p50_ratio": rtt.card.p50.as_secs_f64() / d.p50.as_secs_f64(),
                "app_vs_dbus_p50_ratio": rtt.app.p50.as_secs_f64() / d.p50.as_secs_f64(),
            })
        }
        Err(why) => {
            let _ = writeln!(md, "\n**No D-Bus baseline: {why}.**");
            json!({"available": false, "reason": why.to_string()})
        }
    };

    let mut mem_bars = vec![("idle daemon".to_string(), mib(apps.rss_idle))];
    for l in &apps.levels {
        mem_bars.push((
            format!("{} apps connected", l.connected),
            mib(l.rss_connected),
        ));
    }
    mem_bars.push((format!("{} messages queued", q.messages), mib(q.rss_full)));
    mem_bars.push((format!("{} apps flooded (peak)", f.apps), mib(f.rss_peak)));

    Section {
        name: "scale",
        title: "Scale: many apps, deep queues, card vs D-Bus".into(),
        command: format!(
            "tenet bench scale --apps {} --messages {} --queued {} --dispatch {} \
             --endpoints {} --rounds {} --flood-apps {} --flood-messages {} \
             --flood-param {}",
            a.apps
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            a.messages,
            a.queued,
            a.dispatch,
            a.endpoints,
            a.rounds,
            a.flood_apps,
            a.flood_messages,
            a.flood_param
        ),
        markdown: md,
        json: json!({
            "nofile_limit": nofile,
            "rss_idle_kib": apps.rss_idle,
            "levels": levels_json,
            "queued": {
                "messages": q.messages,
                "delivered": q.delivered,
                "rss_idle_kib": q.rss_idle,
                "rss_queued_kib": q.rss_full,
                "rss_drained_kib": q.rss_drained,
                "bytes_per_message": per_msg,
                "fill_messages_per_s": q.fill_per_s,
                "drain_messages_per_s": q.drain_per_s,
            },
            "flood": {
                "apps": f.apps,
                "messages_per_app": f.per_app,
                "param_bytes": f.param,
                "offered_bytes": f.offered_bytes,
                "accepted": f.accepted,
                "refused": f.refused,
                "seconds": f.secs,
                "table_budget_bytes": f.budget_bytes,
                "rss_idle_kib": f.rss_idle,
                "rss_flooded_kib": f.rss_flooded,
                "rss_peak_kib": f.rss_peak,
            },
            "dispatch": {
                "endpoints": dispatch.endpoints,
                "messages": dispatch.messages,
                "messages_per_s": dispatch.per_s,
            },
            "round_trips": {
                "rounds": rtt.rounds,
                "card": row("app -> daemon -> virtual card -> daemon -> app", &rtt.card),
                "app": row("app -> daemon -> app -> daemon -> app", &rtt.app),
            },
            "dbus": dbus_json,
        }),
        plots: vec![
            Plot {
                file: "scale-memory".into(),
                title: "Daemon resident memory".into(),
                unit: "MiB".into(),
                bars: mem_bars,
            },
            Plot {
                file: "scale-rtt".into(),
                title: "Round trip, p50".into(),
                unit: "us".into(),
                bars: rows
                    .iter()
                    .map(|(n, s)| (n.to_string(), us(s.p50)))
                    .collect(),
            },
        ],
    }
}
