//! The benchmarks of `tenet bench`: each scenario runs ours and its
//! baseline side by side in one process, at the same moment, and reports
//! ratios. Absolute times on a shared machine are noise; the ratios are
//! the result.
//!
//! Each scenario is a module that returns a section of the report
//! (markdown, JSON, plots): `core` (the dispatch table, app echo through
//! the daemon next to a raw Unix socket), `remote` (TLS and NATS links
//! next to raw TCP and plain NATS), `exchange` (the voucher exchange
//! between two hosts), `baseline` (the exchange the ISO 7816-4 way next to
//! ours), `table2` (the paper's Table 2 on a simulated card), `card`
//! (PC/SC through pcscd and vpcd next to the in-process card link),
//! `scale` (thousands of apps, a flood, D-Bus) and `cluster` (TTP
//! replicas in a NATS queue group and pairs of hosts, growing). [`run`] runs what the
//! command line asked for ([`Which`]); `report` prints the sections and
//! writes the markdown report of `docs/benchmarks.md`. Hosts linked to
//! each other, their cards and the private nats-server come from
//! `tenet-testkit`; a scenario with one daemon configures it itself.
//!
//! It is a library of the `tenet` binary and assumes it runs inside it:
//! the `scale` scenario starts its daemon as a child process of the
//! running program (`tenet host --config`).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::report::{Section, emit, write_report};

mod affinity;
mod baseline;
mod card;
mod cluster;
mod core;
mod exchange;
mod remote;
mod report;
mod scale;
mod stats;
mod table2;

pub use exchange::Stores;
pub use scale::Args as ScaleArgs;

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
        stores: Vec<Stores>,
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
    /// Scale-out over NATS: TTP replicas in a queue group and pairs of hosts.
    ///
    /// Decisions per second of 1, 2, ... TTP replicas sharing one decision
    /// store (one SQLite file, or PostgreSQL with --postgres) under a stream of
    /// valid resolve requests, and exchanges per second of 1, 2, ... host pairs
    /// trading at once, all on one private nats-server; side by side in each
    /// round, as ratios to the first count (median of the rounds, with range).
    ///
    /// Example: tenet bench cluster --replicas 1,2 --pairs 1,2 --rounds 3
    Cluster {
        /// Resolve requests per decision run.
        #[arg(long, default_value_t = 1_000)]
        requests: u32,
        /// Exchanges per host pair per run.
        #[arg(long, default_value_t = 40)]
        exchanges: u32,
        /// TTP replica counts, measured in turn; the first is the base.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        replicas: Vec<usize>,
        /// Host pair counts, measured in turn; the first is the base.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        pairs: Vec<usize>,
        /// Rounds; each measures every count.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// A PostgreSQL connection string for the replicas' decisions
        /// (needs a build with --features postgres), instead of one SQLite
        /// file.
        #[arg(long, value_name = "CONN")]
        postgres: Option<String>,
    },
    /// Daemon memory and throughput with thousands of apps and a deep queue.
    ///
    /// Also the dispatch table with thousands of endpoints, a flood of apps
    /// that never read, and an app-to-card echo next to a D-Bus method call
    /// through dbus-daemon (the D-Bus side needs `--features dbus` and
    /// dbus-daemon).
    ///
    /// Example: tenet bench scale --apps 1000 --json
    Scale(ScaleArgs),
}

/// Runs the benchmark `which` and prints its results, as text or with
/// `json` as JSON (`tenet bench [--json] WHICH`).
pub async fn run(which: Which, json: bool) -> Result<ExitCode> {
    match which {
        Which::Core { messages, echoes } => {
            emit(&[core::run(messages, echoes).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Exchange {
            exchanges,
            pairs,
            stores,
        } => {
            emit(&[exchange::run(exchanges, &pairs, &stores).await?], json);
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
            emit(&[baseline::run(exchanges).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Table2 { exchanges } => {
            emit(&[table2::run(exchanges).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Remote { echoes } => {
            emit(&[remote::run(echoes).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Card {
            rounds,
            vpcd,
            reader,
        } => {
            emit(&[card::run(rounds, &vpcd, &reader).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Cluster {
            requests,
            exchanges,
            replicas,
            pairs,
            rounds,
            postgres,
        } => {
            let args = cluster::Args {
                requests,
                exchanges,
                replicas: &replicas,
                pairs: &pairs,
                rounds,
                postgres: postgres.as_deref(),
            };
            emit(&[cluster::run(&args).await?], json);
            Ok(ExitCode::SUCCESS)
        }
        Which::Scale(args) => {
            emit(&[scale::run(&args).await?], json);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs every scenario this build has, in a fixed order.
async fn all(quick: bool) -> Result<Vec<Section>> {
    let scale = |full: u64, small: u64| if quick { small } else { full };
    let mut sections =
        vec![core::run(scale(2_000_000, 200_000), scale(20_000, 2_000) as u32).await?];
    sections.push(remote::run(scale(5_000, 1_000) as u32).await?);
    sections.push(
        exchange::run(
            scale(500, 50) as u32,
            &[1, 8, 64],
            &[Stores::Disk, Stores::Tmpfs],
        )
        .await?,
    );
    sections.push(baseline::run(scale(200, 20) as u32).await?);
    sections.push(table2::run(scale(20, 3) as u32).await?);
    sections.push(
        scale::run(&ScaleArgs {
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
    sections.push(
        cluster::run(&cluster::Args {
            requests: scale(1_000, 200) as u32,
            exchanges: scale(40, 10) as u32,
            replicas: &[1, 2, 3],
            pairs: &[1, 2, 4],
            rounds: scale(5, 2) as u32,
            postgres: None,
        })
        .await?,
    );
    if cfg!(feature = "pcsc") {
        sections.push(
            card::run(
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
