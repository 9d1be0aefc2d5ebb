//! `tenet`: the command line over the TENeT crates.
//!
//! - `tenet host [--config FILE]`: run the host daemon.
//! - `tenet ping DST [-c N] [-i SECS] [-W SECS] [-s BYTES]`: echo like ping(8).
//! - `tenet tap [--src ID] [--dst ID] [--src-domain D] [--dst-domain D] [--mtype M] [-c N]`:
//!   print one line per observed message.
//! - `tenet card new|info|recertify|serve`: personalize, inspect, renew the
//!   certificate of, and plug a virtual card into pcscd via vpcd.
//! - `tenet bench core`: side-by-side benchmarks of the messaging core.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tenet_client::{Capability, ClientError, Incoming};
use tenet_proto::{Domain, EntityId, Filter, Mtype};

mod bench;
mod bench_baseline;
mod bench_card;
mod bench_exchange;
mod bench_remote;
mod bench_report;
mod bench_scale;
mod bench_table2;
mod card;
mod demo;
mod pin;
mod pin_cmd;
mod wallet;

#[derive(Parser)]
#[command(
    name = "tenet",
    version,
    about = "TENeT: distributed inter-smartcard communication"
)]
struct Cli {
    /// App socket of the host daemon (default: $TENET_SOCKET, else the
    /// documented per-user default).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum CaCmd {
    /// Make a CA (ca.pem, ca.key) in DIR unless one is there.
    Init {
        /// The CA's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "tenet CA")]
        name: String,
        /// Days the CA is valid; no certificate it issues outlives it.
        #[arg(long, value_name = "N", default_value_t = tenet_host::certs::CA_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Make a key and certificate for a software entity (the TTP's host
    /// entity DOMAIN:0): DIR/NAME-entity.pem and .key. An entity
    /// certificate is for signatures only: no extended key usage, refused
    /// for TLS links. If the files exist, the certificate is renewed for
    /// the same key (cards that pinned the old one accept it).
    Entity {
        /// The CA's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// File name stem.
        #[arg(long)]
        name: String,
        /// The entity, DOMAIN:PORT.
        #[arg(long)]
        id: EntityId,
        /// Days the certificate is valid.
        #[arg(long, value_name = "N", default_value_t = tenet_host::certs::ENTITY_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
}

#[derive(Subcommand)]
enum HostAction {
    /// Make a development CA (once) and a host certificate for TLS links
    /// (extended key usage: TLS server and client authentication), naming
    /// the domains the host may serve; peers accept no other domain from it.
    /// If the host's files exist, the certificate is renewed for the same
    /// key (restart the daemon to use it).
    Certs {
        /// Directory of the CA (`ca.pem`, `ca.key`) and the host files
        /// (`NAME.pem`, `NAME.key`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The host's name (file names and certificate subject).
        #[arg(long)]
        name: String,
        /// A domain the host may serve (its software domain, its card's
        /// domain); repeat for several.
        #[arg(long = "domain", value_name = "HEX", required = true)]
        domains: Vec<Domain>,
        /// Days the host certificate is valid.
        #[arg(long, value_name = "N", default_value_t = tenet_host::certs::HOST_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the host daemon (or `tenet host certs ...`).
    #[command(args_conflicts_with_subcommands = true)]
    Host {
        /// TOML configuration (see docs/host.example.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<HostAction>,
    },
    /// Send echo requests to an entity and report round-trip times.
    Ping {
        /// Destination id, DOMAIN:PORT.
        dst: EntityId,
        /// Number of requests.
        #[arg(short = 'c', long, default_value_t = 4)]
        count: u32,
        /// Seconds between requests.
        #[arg(short = 'i', long, default_value_t = 1.0)]
        interval: f64,
        /// Seconds to wait for each reply.
        #[arg(short = 'W', long, default_value_t = 2.0)]
        timeout: f64,
        /// Payload bytes per request (besides the 8-byte sequence number).
        #[arg(short = 's', long, default_value_t = 0)]
        size: usize,
    },
    /// Print one line per message matching the filter.
    Tap {
        /// Only messages from this id.
        #[arg(long)]
        src: Option<EntityId>,
        /// Only messages to this id.
        #[arg(long)]
        dst: Option<EntityId>,
        /// Only messages from this domain (24 hex digits).
        #[arg(long)]
        src_domain: Option<Domain>,
        /// Only messages to this domain (24 hex digits).
        #[arg(long)]
        dst_domain: Option<Domain>,
        /// Only this mtype (name or hex).
        #[arg(long)]
        mtype: Option<Mtype>,
        /// Stop after this many messages.
        #[arg(short = 'c', long)]
        count: Option<u64>,
    },
    /// The voucher exchange demo: three hosts over TLS on loopback (Alice
    /// and Bob with a virtual card each, the TTP with SQLite).
    Demo {
        /// Lose the message after this step and show the recovery.
        #[arg(long, value_enum, value_name = "STEP")]
        interrupt_after: Option<demo::Step>,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a host daemon whose own entity is the trusted third party (the
    /// config must have a [ttp] section).
    Ttp {
        /// TOML configuration with [ttp] (see docs/vouchers.md).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// A wallet app: balances, offers, exchanges, recovery.
    Wallet {
        #[command(flatten)]
        login: wallet::Login,
        #[command(subcommand)]
        cmd: wallet::WalletCmd,
    },
    /// Make a certificate authority for cards, hosts and the TTP.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Make, inspect and serve virtual cards.
    Card {
        #[command(subcommand)]
        cmd: card::CardCmd,
    },
    /// Run benchmarks side by side and print ratios.
    Bench {
        /// Print the results as JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        which: bench::Which,
    },
}

/// Whether `cmd` prints and ends, as opposed to serving (a daemon, the
/// vpcd connector, the demo's and benchmarks' daemons).
fn prints_and_ends(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Ping { .. } | Cmd::Tap { .. } | Cmd::Wallet { .. } | Cmd::Ca { .. } => true,
        Cmd::Host { action, .. } => action.is_some(),
        Cmd::Card { cmd } => !matches!(cmd, card::CardCmd::Serve { .. }),
        _ => false,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if prints_and_ends(&cli.cmd) {
        // Like other Unix tools, a command whose output pipe closes (`tenet
        // wallet balance | head -1`) ends quietly, instead of panicking in
        // println!. Daemons keep ignoring SIGPIPE, Rust's default, so a
        // client that goes away never kills them.
        // SAFETY: restoring the default disposition of one signal, before
        // any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TENET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tenet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let socket = cli.socket.unwrap_or_else(tenet_client::default_socket_path);
    match cli.cmd {
        Cmd::Host {
            action:
                Some(HostAction::Certs {
                    dir,
                    name,
                    domains,
                    days,
                }),
            ..
        } => {
            if tenet_host::certs::ensure_ca(&dir, "tenet development CA")? {
                println!("made CA {}", dir.join("ca.pem").display());
            }
            let renews = tenet_host::certs::host_renews(&dir, &name);
            let files = tenet_host::certs::issue_host_with(
                &dir,
                &name,
                &domains,
                tenet_host::certs::Lifetime::days(days),
            )?;
            if renews {
                println!(
                    "renewed {} (same key {})",
                    files.cert.display(),
                    files.key.display()
                );
            } else {
                println!("made {} and {}", files.cert.display(), files.key.display());
            }
            println!("{}", valid_until(&files.cert)?);
            let list: Vec<String> = domains.iter().map(ToString::to_string).collect();
            println!("role: host (TLS links); may serve only {}", list.join(", "));
            println!(
                "config: [remote] ca = {:?}, cert = {:?}, key = {:?}",
                files.ca, files.cert, files.key
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Host {
            config,
            action: None,
        } => host(config, socket).await,
        Cmd::Ping {
            dst,
            count,
            interval,
            timeout,
            size,
        } => ping(socket, dst, count, interval, timeout, size).await,
        Cmd::Tap {
            src,
            dst,
            src_domain,
            dst_domain,
            mtype,
            count,
        } => {
            let f = Filter {
                src,
                dst,
                src_domain,
                dst_domain,
                mtype,
            };
            tap(socket, f, count).await
        }
        Cmd::Demo {
            interrupt_after,
            json,
        } => demo::run(interrupt_after, json).await,
        Cmd::Wallet { login, cmd } => wallet::run(&socket, login, cmd).await,
        Cmd::Ttp { config } => {
            let cfg = tenet_host::Config::load(&config)?;
            anyhow::ensure!(
                cfg.ttp.is_some(),
                "{} has no [ttp] section",
                config.display()
            );
            host(Some(config), socket).await
        }
        Cmd::Ca {
            cmd:
                CaCmd::Entity {
                    dir,
                    name,
                    id,
                    days,
                },
        } => {
            let renews = tenet_host::certs::entity_renews(&dir, &name);
            let files = tenet_host::certs::issue_entity_key_with(
                &dir,
                &name,
                id,
                tenet_host::certs::Lifetime::days(days),
            )?;
            println!(
                "{} {} and {} for {id}",
                if renews { "renewed (same key)" } else { "made" },
                files.cert.display(),
                files.key.display()
            );
            println!("{}", valid_until(&files.cert)?);
            println!("role: entity (signatures only; refused for TLS links)");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ca {
            cmd: CaCmd::Init { dir, name, days },
        } => {
            let lifetime = tenet_host::certs::Lifetime::days(days);
            if tenet_host::certs::ensure_ca_with(&dir, &name, lifetime)? {
                println!("made CA {}", dir.join("ca.pem").display());
            } else {
                println!("CA {} exists; kept", dir.join("ca.pem").display());
            }
            println!("{}", valid_until(&dir.join("ca.pem"))?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Card {
            cmd: card::CardCmd::Pin { cmd },
        } => pin_cmd::run(&socket, cmd).await,
        Cmd::Card { cmd } => tokio::task::spawn_blocking(move || card::run(cmd)).await?,
        Cmd::Bench { which, json } => bench::run(which, json).await,
    }
}

/// "valid from .. to .." of the certificate in the PEM file `path`.
fn valid_until(path: &std::path::Path) -> Result<String> {
    use pki_types::pem::PemObject;
    let der = pki_types::CertificateDer::from_pem_file(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let v = tenet_host::certs::validity(&der)?;
    Ok(format!(
        "valid {} to {}",
        tenet_card::clock::Utc(v.not_before),
        tenet_card::clock::Utc(v.not_after)
    ))
}

async fn host(config: Option<PathBuf>, socket: PathBuf) -> Result<ExitCode> {
    let mut cfg = match &config {
        Some(p) => tenet_host::Config::load(p)?,
        None => tenet_host::Config::default(),
    };
    if cfg.host.socket.is_none() {
        cfg.host.socket = Some(socket);
    }
    let handle = tenet_host::start(&cfg).await?;
    eprintln!(
        "tenet host {} listening on {}",
        handle.host_id(),
        handle.socket_path().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn secs(name: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("{name} must be a non-negative number of seconds, got {v}"))
}

async fn ping(
    socket: PathBuf,
    dst: EntityId,
    count: u32,
    interval: f64,
    timeout: f64,
    size: usize,
) -> Result<ExitCode> {
    let interval = secs("interval", interval)?;
    let timeout = secs("timeout", timeout)?;
    let max = tenet_proto::MAX_PARAM_LEN - 8;
    anyhow::ensure!(
        size <= max,
        "size {size} exceeds the maximum payload of {max} bytes"
    );
    let mut cap = Capability::acquire(&socket).await?;
    let payload = vec![0xa5u8; size];
    println!("PING {dst} from {}: {} bytes of param", cap.id(), size + 8);
    let mut rtts = Vec::new();
    for seq in 1..=count {
        match cap.echo(dst, &payload, timeout).await {
            Ok(rtt) => {
                println!(
                    "reply from {dst}: seq={seq} time={:.3} ms",
                    rtt.as_secs_f64() * 1e3
                );
                rtts.push(rtt);
            }
            Err(e @ (ClientError::Undeliverable { .. } | ClientError::Timeout { .. })) => {
                println!("seq={seq}: {e}");
            }
            Err(e) => return Err(e.into()),
        }
        if seq < count && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    let lost = count as usize - rtts.len();
    println!("--- {dst} ping statistics ---");
    println!(
        "{count} requests sent, {} replies received, {:.1}% loss",
        rtts.len(),
        if count == 0 {
            0.0
        } else {
            100.0 * lost as f64 / f64::from(count)
        }
    );
    if !rtts.is_empty() {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let min = rtts.iter().min().copied().unwrap_or_default();
        let max = rtts.iter().max().copied().unwrap_or_default();
        let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
        println!(
            "rtt min/avg/max = {:.3}/{:.3}/{:.3} ms",
            ms(min),
            ms(avg),
            ms(max)
        );
    }
    Ok(if lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn time_of_day(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    )
}

async fn tap(socket: PathBuf, filter: Filter, count: Option<u64>) -> Result<ExitCode> {
    let mut cap = Capability::acquire(&socket).await?;
    let me = cap.id();
    cap.tap(filter).await?;
    eprintln!("tapping as {me}; times are UTC");
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        match cap.next().await? {
            Incoming::Tapped { at, message, .. } => {
                seen += 1;
                println!(
                    "{} {} -> {} {} len={}",
                    time_of_day(at),
                    message.src(),
                    message.dst(),
                    message.mtype(),
                    message.param.len()
                );
            }
            Incoming::Lagged { missed, .. } => {
                println!("(tap lagged: {missed} messages not shown)")
            }
            Incoming::Message { .. } => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}
