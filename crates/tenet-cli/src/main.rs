//! `tenet`: the command line over the TENeT crates.
//!
//! - `tenet host [--config FILE]`: run the host daemon.
//! - `tenet ping DST [-c N] [-i SECS] [-W SECS] [-s BYTES]`: echo like ping(8).
//! - `tenet tap [--src ID] [--dst ID] [--src-domain D] [--dst-domain D] [--mtype M] [-c N]`:
//!   print one line per observed message.
//! - `tenet status [--json]`: the daemon's figures (as its `/metrics`).
//! - `tenet card new|info|recertify|csr|install-cert|serve`: personalize,
//!   inspect, renew the certificate of, and plug a virtual card into pcscd.
//! - `tenet ca init|entity|sign`, `tenet host certs|csr`: certificates.
//! - `tenet bench core|remote|exchange|...`: side-by-side benchmarks.
//! - `tenet man DIR`, `tenet completions SHELL`: man pages and shell
//!   completions, from the same definitions as `--help`.
//!
//! Quiet by default: stderr gets warnings and errors only (`-v`, `-vv`,
//! `-vvv` or `TENET_LOG` for more). `--socket` goes before the command or
//! after the name of a command that uses a daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::io::{self, stdout};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use tenet_proto::{Domain, EntityId, Filter, Mtype};

mod card;
mod demo;
mod pcap;
mod pin;
mod pin_cmd;
mod wallet;

#[derive(Parser)]
#[command(
    name = "tenet",
    version,
    about = "TENeT: distributed inter-smartcard communication",
    long_about = "TENeT: distributed inter-smartcard communication.\n\n\
        Smartcards as peers: a card sends a message to a card on another \
        host, to a server or to an app, and the host daemons route it. \
        This command runs the daemons (host, ttp), the apps (wallet, ping, \
        tap), makes cards and certificates (card, ca, host certs) and runs \
        the demo and the benchmarks. Quiet by default: -v for more.\n\n\
        Example: tenet demo"
)]
struct Cli {
    /// App socket of the host daemon, for the commands that use one (host,
    /// ttp, ping, tap, status, wallet, card pin), which also take it after
    /// their name (default: $TENET_SOCKET, else the documented per-user
    /// default).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log more on stderr: -v info, -vv debug, -vvv trace (default:
    /// warnings and errors, or $TENET_LOG, an env-filter directive).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--socket` after the name of a command that talks to a host daemon
/// (and its subcommands: `tenet wallet balance --socket PATH`).
#[derive(clap::Args)]
pub struct SocketArg {
    /// App socket of the host daemon (default: --socket before the command,
    /// $TENET_SOCKET, else the documented per-user default).
    #[arg(long = "socket", value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
}

/// `tenet verify ...`: what else it verifies.
#[derive(Subcommand)]
enum VerifyCmd {
    /// Verify a redemption receipt offline.
    ///
    /// The redeemer card's signature from the CA, its right to redeem the class, and the proof that the redemption completed.
    ///
    /// Example: tenet verify receipt --ca ca/ca.pem receipts/0123.receipt
    Receipt {
        /// The receipt file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Make a CA (ca.pem, ca.key) in DIR unless one is there.
    ///
    /// The CA signs the certificates of cards (`tenet card new --ca DIR`), of
    /// hosts for TLS links (`tenet host certs`) and of the TTP's entity (`tenet
    /// ca entity`). An existing CA is kept, never overwritten; keep ca.key
    /// owner-only and offline when you can.
    ///
    /// Example: tenet ca init --dir ca --name "Example CA" --days 3650
    Init {
        /// The CA's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "tenet CA")]
        name: String,
        /// Days the CA is valid; no certificate it issues outlives it.
        #[arg(long, value_name = "N", default_value_t = tenet_pki::CA_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Make a key and certificate for a software entity.
    ///
    /// For the TTP's host entity DOMAIN:0: DIR/NAME-entity.pem and .key. An
    /// entity certificate is for signatures only: no extended key usage,
    /// refused for TLS links. If the files exist, the certificate is renewed
    /// for the same key (cards that pinned the old one accept it).
    ///
    /// Example: tenet ca entity --dir ca --name ttp --id 777777777777777777777777:0
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
        #[arg(long, value_name = "N", default_value_t = tenet_pki::ENTITY_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Check a certificate request and sign it for one role.
    ///
    /// The production path: the key stays where it was made (`tenet host
    /// csr`, `tenet card csr`); only the request comes to the CA. It checks
    /// the request's self-signature, its P-256 key and that it asks for
    /// nothing but well-formed TENeT names, builds the certificate from those
    /// alone with the role's extensions, and prints what it signed. Roles:
    /// host (TLS links, the request's domains), entity (the TTP's signing
    /// key) and card (DOMAIN:0), the last two only for the --id named.
    ///
    /// Example: tenet ca sign --dir ca --csr alice.csr --role host
    Sign(SignArgs),
}

/// `tenet ca sign`.
#[derive(clap::Args)]
struct SignArgs {
    /// The CA's directory (`ca.pem`, `ca.key`).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The request (PEM, from `tenet host csr` or `tenet card csr`).
    #[arg(long, value_name = "FILE")]
    csr: PathBuf,
    /// host, entity or card.
    #[arg(long)]
    role: tenet_pki::Role,
    /// The entity approved, DOMAIN:PORT (entity and card roles).
    #[arg(long, value_name = "DOMAIN:PORT")]
    id: Option<EntityId>,
    /// Days the certificate is valid (default: host and entity 365,
    /// card 1095).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    days: Option<u32>,
    /// Where to write the certificate (default: the request's path with
    /// .pem).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum HostAction {
    /// Make a development CA (once) and a host certificate for TLS links.
    ///
    /// The certificate (extended key usage: TLS server and client
    /// authentication) names the domains the host may serve; peers accept no
    /// other domain from it. If the host's files exist, the certificate is
    /// renewed for the same key (restart the daemon to use it). It prints the
    /// [remote] lines of the host's configuration.
    ///
    /// Example: tenet host certs --dir ca --name alice --domain a1a1a1a1a1a1a1a1a1a1a1a1 --domain 0a0b0c0d0e0f101112131415
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
        #[arg(long, value_name = "N", default_value_t = tenet_pki::HOST_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Make a key (kept if it exists: renewal) and a certificate request.
    ///
    /// Production enrollment without moving keys: NAME.key stays on this
    /// machine (owner-only); NAME.csr goes to the CA (`tenet ca sign`), which
    /// returns the certificate. With --domain, a host request for TLS links
    /// naming the domains the host may serve; with --id, NAME-entity.key and
    /// .csr for the host's entity (the TTP's signing key).
    ///
    /// Example: tenet host csr --dir /etc/tenet --name alice --domain a1a1a1a1a1a1a1a1a1a1a1a1
    Csr(CsrArgs),
}

/// `tenet host csr`.
#[derive(clap::Args)]
struct CsrArgs {
    /// Directory of the key and request (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The host's name (file names and the request's subject).
    #[arg(long)]
    name: String,
    /// A domain the host may serve; repeat for several.
    #[arg(long = "domain", value_name = "HEX", required_unless_present = "id")]
    domains: Vec<Domain>,
    /// An entity, DOMAIN:PORT, instead of domains.
    #[arg(long, value_name = "DOMAIN:PORT", conflicts_with = "domains")]
    id: Option<EntityId>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the host daemon (or `tenet host certs|csr ...`).
    ///
    /// Apps connect to its Unix socket, acquire an id in the host's software
    /// domain and exchange eTP messages through its dispatch table; with [card]
    /// it runs a virtual card or uses one in a PC/SC reader, with [remote] it
    /// links to other hosts over TLS or NATS. It says where it listens on
    /// stderr and runs until SIGINT or SIGTERM. Configuration:
    /// docs/host.example.toml.
    ///
    /// Example: tenet host --config /etc/tenet/host.toml
    #[command(args_conflicts_with_subcommands = true)]
    Host {
        /// TOML configuration (see docs/host.example.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// App socket to listen on, unless the config has one (default:
        /// --socket before the command, $TENET_SOCKET, else the documented
        /// per-user default).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<HostAction>,
    },
    /// Send echo requests to an entity and report round-trip times.
    ///
    /// Like ping(8): any entity answers, an app, a host (DOMAIN:0), a card, on
    /// this host or another. It exits with failure if a reply was lost.
    ///
    /// Example: tenet ping 0a0b0c0d0e0f101112131415:0 -c 3 -i 0.2
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
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Print one line per message matching the filter.
    ///
    /// The daemon copies every message it routes that matches the filter to
    /// this tap: time (UTC), source, destination, mtype and parameter length.
    /// Filters combine (all must match); without any, everything is shown.
    ///
    /// Example: tenet tap --mtype echo-request --dst-domain 0a0b0c0d0e0f101112131415 -c 10
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
        /// Also write each message to this pcap file (link type USER0, 147;
        /// dissect with contrib/wireshark/tenet.lua).
        #[arg(long, value_name = "FILE")]
        pcap: Option<PathBuf>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Verify what cards present (an app; it needs no card).
    ///
    /// It prints its id and a challenge for the holder (tenet wallet present),
    /// checks each statement against the CA, this verifier, the challenge and
    /// --amount, and refuses a replay; a new challenge follows each verified one.
    ///
    /// Example: tenet verify --ca ca/ca.pem --amount 1:b2b2b2b2b2b2b2b2b2b2b2b2:ticket -c 1
    #[command(subcommand_negates_reqs = true)]
    Verify {
        /// Verify a receipt file offline instead (tenet wallet receipts --out).
        #[command(subcommand)]
        what: Option<VerifyCmd>,
        /// The CA certificate (PEM) the cards' certificates must chain to.
        #[arg(long, value_name = "FILE", global = true)]
        ca: Option<PathBuf>,
        /// At least this much: QTY:ISSUERHEX:PROMISE.
        #[arg(long, required = true)]
        amount: Option<tenet_voucher::model::Amount>,
        /// Stop after this many verified presentations.
        #[arg(short = 'c', long)]
        count: Option<u32>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Print the host daemon's figures: traffic, queues, card, links, TTP.
    ///
    /// It asks the daemon on its app socket, without acquiring an id: messages
    /// routed by ingress, dropped by guard, undeliverable by reason, what the
    /// dispatch table holds, the card link's APDUs and time, each peer's link,
    /// the TTP's busy refusals and decisions. The same figures as the daemon's
    /// /metrics ([metrics] listen); docs/host.md says what each means.
    ///
    /// Example: tenet status --json
    Status {
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The voucher exchange demo: three hosts over TLS on loopback.
    ///
    /// Alice and Bob have a virtual card each, the TTP keeps its decisions in
    /// SQLite. Alice's card offers 2 coffee vouchers for 1 cinema ticket, Bob's
    /// accepts, and the cards run the exchange across the hosts. It prints the
    /// message flow (step, source, destination, mtype, bytes, time), the
    /// balances before and after and the outcome; with --interrupt-after it
    /// loses a message and shows the recovery through the TTP. --story tells the
    /// vouchers' whole life across four hosts: mint, exchange, a gift to Carol,
    /// a coffee redeemed at its issuer for a receipt, a ticket shown at a gate.
    ///
    /// Example: tenet demo --interrupt-after agreement
    Demo {
        /// Lose the message after this step and show the recovery.
        #[arg(long, value_enum, value_name = "STEP", conflicts_with = "story")]
        interrupt_after: Option<demo::Step>,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
        /// The second act: mint, exchange, gift, redeem, present.
        #[arg(long)]
        story: bool,
    },
    /// Run a host daemon whose own entity is the trusted third party.
    ///
    /// The config must have a [ttp] section: the TTP's key and certificate and
    /// its decision store (SQLite, or PostgreSQL with --features postgres). It
    /// resolves and aborts exchanges on the cards' requests, deciding each
    /// exchange once (docs/vouchers.md).
    ///
    /// Example: tenet ttp --config /etc/tenet/ttp.toml
    Ttp {
        /// TOML configuration with [ttp] (see docs/vouchers.md).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// A wallet app: balances, offers, exchanges, recovery.
    ///
    /// It connects to the host daemon that holds the card, authenticates to the
    /// card with its PIN (--pin-file, TENET_PIN, --pin or the terminal) and
    /// gives the card its orders; the card runs the exchange itself.
    ///
    /// Example: tenet wallet balance --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt
    Wallet {
        #[command(flatten)]
        login: wallet::Login,
        #[command(flatten)]
        socket: SocketArg,
        #[command(subcommand)]
        cmd: wallet::WalletCmd,
    },
    /// Make a certificate authority for cards, hosts and the TTP.
    ///
    /// `init` makes the CA, `entity` the TTP's signing certificate, `sign`
    /// signs a request made where the key lives (production: docs/deploy.md).
    /// For development, `tenet host certs` and `tenet card new --ca` use the CA
    /// directly.
    ///
    /// Example: tenet ca init --dir ca
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Make, inspect and serve virtual cards.
    ///
    /// A virtual card is a store file: the card makes its own key, which never
    /// leaves it, and holds its certificate, PIN and vouchers. A host daemon
    /// runs it in-process ([card] virtual = FILE), or `serve` plugs it into
    /// pcscd.
    ///
    /// Example: tenet card new --store alice.card --pin 1234 --ca ca
    Card {
        #[command(subcommand)]
        cmd: card::CardCmd,
    },
    /// Run benchmarks side by side and print ratios.
    ///
    /// Each scenario runs next to its baseline in the same run (raw sockets,
    /// the ISO 7816-4 way, D-Bus, the paper's Table 2 on a simulated card);
    /// `all` writes the report of docs/benchmarks.md.
    ///
    /// Example: tenet bench core --json
    Bench {
        /// Print the results as JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        which: tenet_bench::Which,
    },
    /// Write the manual pages.
    ///
    /// tenet.1 and one per command (tenet-host.1, tenet-wallet-offer.1, ...),
    /// in roff for man(1); it prints the path of each file it writes.
    ///
    /// Example: tenet man /usr/local/share/man/man1
    Man {
        /// Directory to write them to (created if missing).
        dir: PathBuf,
    },
    /// Print a shell completion script.
    ///
    /// Completes the commands, options and enumerated values for bash, zsh,
    /// fish, elvish or PowerShell.
    ///
    /// Example: tenet completions bash > ~/.local/share/bash-completion/completions/tenet
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Whether `cmd` prints and ends, as opposed to serving (a daemon, the
/// vpcd connector, the demo's and benchmarks' daemons).
fn prints_and_ends(cmd: &Cmd) -> bool {
    !matches!(
        cmd,
        Cmd::Host { action: None, .. }
            | Cmd::Ttp { .. }
            | Cmd::Demo { .. }
            | Cmd::Bench { .. }
            | Cmd::Card {
                cmd: card::CardCmd::Serve { .. }
            }
    )
}

/// What the log shows on stderr: `-v` info, `-vv` debug, `-vvv` trace;
/// without -v, `TENET_LOG` (an env-filter directive such as
/// `tenet_host=debug`); else warnings and errors only. The demo's
/// default leaves out the guard's warnings too: with --interrupt-after,
/// a guard rule drops a message on purpose and the demo's own output
/// says so.
fn log_filter(verbose: u8, cmd: &Cmd) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let default = match cmd {
        Cmd::Demo { .. } => "warn,tenet::guard=error",
        _ => "warn",
    };
    match verbose {
        0 => EnvFilter::try_from_env("TENET_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        1 => EnvFilter::new("info"),
        2 => EnvFilter::new("debug"),
        _ => EnvFilter::new("trace"),
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
        .with_env_filter(log_filter(cli.verbose, &cli.cmd))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    // `--socket` after the command, else before it, else the default.
    let before = cli.socket;
    let socket = |after: Option<PathBuf>| {
        after
            .or_else(|| before.clone())
            .unwrap_or_else(tenet_proto::socket::default_socket_path)
    };
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
            let life = tenet_pki::Lifetime::days(days);
            println!(
                "{}",
                tenet_pki::host_certs_report(&dir, &name, &domains, life)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Host {
            action: Some(HostAction::Csr(a)),
            ..
        } => {
            let asked = a.id.map_or(
                tenet_pki::Asked::Domains(a.domains),
                tenet_pki::Asked::Entity,
            );
            println!("{}", tenet_pki::make_request(&a.dir, &a.name, &asked)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Host {
            config,
            socket: after,
            action: None,
        } => host(config, socket(after)).await,
        Cmd::Ping {
            dst,
            count,
            interval,
            timeout,
            size,
            socket: after,
        } => {
            let (interval, timeout) = (secs("interval", interval)?, secs("timeout", timeout)?);
            let o = tenet_client::tools::PingOptions {
                count,
                interval,
                timeout,
                size,
            };
            let lost =
                tenet_client::tools::ping(&socket(after.socket), dst, o, &mut stdout()).await?;
            Ok(ExitCode::from(u8::from(lost > 0)))
        }
        Cmd::Tap {
            src,
            dst,
            src_domain,
            dst_domain,
            mtype,
            count,
            pcap,
            socket: after,
        } => {
            let f = Filter {
                src,
                dst,
                src_domain,
                dst_domain,
                mtype,
            };
            let mut capture = pcap.as_deref().map(pcap::Capture::create).transpose()?;
            let mut each = |at, m: &_| {
                capture
                    .as_mut()
                    .map_or(Ok(()), |c| c.write(at, m).map_err(io::Error::other))
            };
            let out = &mut stdout();
            tenet_client::tools::tap(&socket(after.socket), f, count, out, &mut each).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            what: Some(VerifyCmd::Receipt { file }),
            ca,
            ..
        } => {
            let ca = card::anchor(&ca.context("--ca CA.pem is needed")?)?;
            let r = tenet_client::journal::read_receipt(&file)?;
            let check = tenet_voucher::redeem::receipt_check(&ca);
            r.verify(&check)
                .with_context(|| format!("receipt {} refused", file.display()))?;
            println!("valid: {r}, holder {}", r.offer.initiator);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            ca,
            amount,
            count,
            socket: after,
            ..
        } => {
            let (ca, amount) = (
                ca.context("--ca CA.pem is needed")?,
                amount.context("--amount")?,
            );
            let (ca, mut out) = (card::anchor(&ca)?, std::io::stdout());
            let mut cap = tenet_client::Capability::acquire(&socket(after.socket)).await?;
            tenet_client::wallet::verify_presentations(&mut cap, &ca, &amount, count, &mut out)
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status {
            json,
            socket: after,
        } => {
            let status = tenet_client::host_status(socket(after.socket)).await?;
            print!("{}", tenet_client::status::render(&status, json));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            interrupt_after,
            json,
            story,
        } => demo::run(interrupt_after, json, story).await,
        Cmd::Wallet {
            login,
            socket: after,
            cmd,
        } => wallet::run(&socket(after.socket), login, cmd).await,
        Cmd::Ttp {
            config,
            socket: after,
        } => {
            let cfg = tenet_host::Config::load(&config)?;
            anyhow::ensure!(
                cfg.ttp.is_some(),
                "{} has no [ttp] section",
                config.display()
            );
            host(Some(config), socket(after.socket)).await
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
            let life = tenet_pki::Lifetime::days(days);
            println!("{}", tenet_pki::entity_report(&dir, &name, id, life)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ca {
            cmd: CaCmd::Sign(a),
        } => {
            let req = tenet_pki::Request::read(&a.csr)?;
            let days = a.days.unwrap_or(a.role.default_days());
            let lifetime = tenet_pki::Lifetime::days(days);
            let signed = tenet_pki::sign_request(&a.dir, &req, a.role, a.id, lifetime)
                .with_context(|| format!("signing with the CA in {}", a.dir.display()))?;
            let out = a.out.unwrap_or_else(|| a.csr.with_extension("pem"));
            std::fs::write(&out, &signed.pem)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("signed {}\n{signed}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ca {
            cmd: CaCmd::Init { dir, name, days },
        } => {
            let life = tenet_pki::Lifetime::days(days);
            println!("{}", tenet_pki::ca_init_report(&dir, &name, life)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Card {
            cmd: card::CardCmd::Pin { socket: after, cmd },
        } => pin_cmd::run(&socket(after.socket), cmd).await,
        Cmd::Card { cmd } => tokio::task::spawn_blocking(move || card::run(cmd)).await?,
        Cmd::Bench { which, json } => tenet_bench::run(which, json).await,
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut cmd = Cli::command().disable_help_subcommand(true);
            cmd.build();
            write_man_pages(&cmd, &dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "tenet", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes the man page of `cmd` (built) and of each of its subcommands
/// into `dir`, printing each file's path.
fn write_man_pages(cmd: &clap::Command, dir: &std::path::Path) -> Result<()> {
    let path = clap_mangen::Man::new(cmd.clone())
        .generate_to(dir)
        .with_context(|| format!("writing a man page into {}", dir.display()))?;
    println!("{}", path.display());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, dir)?;
    }
    Ok(())
}

async fn host(config: Option<PathBuf>, socket: PathBuf) -> Result<ExitCode> {
    let mut cfg = match &config {
        Some(p) => tenet_host::Config::load(p)?,
        None => tenet_host::Config::default(),
    };
    if cfg.host.socket.is_none() {
        cfg.host.socket = Some(socket);
    }
    let handle = tenet_voucher_app::start(&cfg).await?;
    handle
        .serve_until_signal()
        .await
        .context("installing the signal handlers")?;
    Ok(ExitCode::SUCCESS)
}

fn secs(name: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("{name} must be a non-negative number of seconds, got {v}"))
}
