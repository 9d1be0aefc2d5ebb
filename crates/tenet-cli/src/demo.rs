//! `tenet demo`: the voucher exchange on embedded defaults. Three host
//! daemons on loopback linked over TLS (Alice and Bob with a virtual card
//! each, and the TTP with SQLite); the wallets authenticate and mint,
//! Alice's wallet offers, Bob's accepts, the cards trade by themselves.
//! `--interrupt-after STEP` drops the next message after that step (a guard
//! rule on the receiving host) and shows the recovery through the TTP.
//!
//! [`run`] goes through the steps in order, one function each: start the
//! hosts ([`start_hosts`], from `tenet-testkit`), open the wallets, mint,
//! offer and accept, wait until both cards are final or recover, collect
//! the message flow from the taps, then report as text or JSON.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde::{Serialize, Serializer};
use tenet_client::wallet::Wallet;
use tenet_client::{Capability, Incoming};
use tenet_dispatch::RuleSpec;
use tenet_proto::{Domain, EntityId, Filter, Message};
use tenet_testkit::{Ca, CardSpec, HostSpec, PIN, Running, Topology, WAIT};
use tenet_voucher::card::{ExchangeSummary, Phase};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::ExchangeId;

/// Where `--interrupt-after` cuts the run: the message after this step is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Lose the agreement m2 (after Bob accepted).
    Accept,
    /// Lose the confirmation m3 (after the agreement).
    Agreement,
    /// Lose the commitment m4 (after the confirmation).
    Confirmation,
}

impl Step {
    /// The lost message's mtype name and the host that drops it.
    fn lost(self) -> (&'static str, &'static str) {
        match self {
            Step::Accept => ("agreement", "alice"),
            Step::Agreement => ("confirmation", "bob"),
            Step::Confirmation => ("commitment", "alice"),
        }
    }
}

/// The TTP host's software domain; the TTP is its entity `TTP:0`.
const TTP: Domain = Domain::new([0x77; 12]);
/// Alice's host and card.
const ALICE: Domain = Domain::new([0xa1; 12]);
const ALICE_CARD: Domain = Domain::new([0xca; 12]);
/// Bob's host and card.
const BOB: Domain = Domain::new([0xb2; 12]);
const BOB_CARD: Domain = Domain::new([0xcb; 12]);

/// The vouchers Alice's card issues.
fn coffee() -> VoucherClass {
    VoucherClass {
        issuer: ALICE_CARD,
        promise: "coffee at Alice's".into(),
    }
}

/// The vouchers Bob's card issues.
fn ticket() -> VoucherClass {
    VoucherClass {
        issuer: BOB_CARD,
        promise: "cinema ticket from Bob".into(),
    }
}

/// One message of the exchange as a tap saw it.
#[derive(Serialize)]
struct Flow {
    step: usize,
    src: String,
    dst: String,
    mtype: String,
    bytes: usize,
    /// Since Alice's wallet offered.
    #[serde(serialize_with = "ms3")]
    ms: f64,
}

/// What a run found, for either output.
struct Report {
    interrupt: Option<Step>,
    flow: Vec<Flow>,
    recovered: Vec<(ExchangeId, Phase)>,
    /// Alice's and Bob's balances after minting and after the exchange.
    before: [Vec<Amount>; 2],
    after: [Vec<Amount>; 2],
    /// From the offer until both cards were final; none if interrupted.
    latency: Option<Duration>,
    /// From the offer until the end, recovery included.
    total: Duration,
    /// The whole run, the hosts' start included.
    run: Duration,
}

pub async fn run(interrupt: Option<Step>, json: bool) -> Result<ExitCode> {
    let t_run = Instant::now();
    let dir = tempfile::tempdir()?;
    let hosts = start_hosts(dir.path(), interrupt).await?;
    let (mut alice, mut bob) = open_wallets(&hosts).await?;
    let before = mint(&mut alice, &mut bob).await?;
    // Taps on every host see the message flow (paper 5.4.1).
    let mut taps = Vec::new();
    for name in ["alice", "bob", "ttp"] {
        let mut t = Capability::acquire(hosts.host(name).socket_path()).await?;
        t.tap(Filter::ANY).await?;
        taps.push(t);
    }

    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    offer_and_accept(&mut alice, &mut bob).await?;
    let latency = wait_final(&mut alice, &mut bob, interrupt, t0).await?;
    let mut recovered = Vec::new();
    if latency.is_none() {
        // Interrupted: both wallets recover what is pending, through the TTP.
        recovered.extend(alice.auto_recover(Duration::from_millis(100)).await?);
        recovered.extend(bob.auto_recover(Duration::from_millis(100)).await?);
    }
    let total = t0.elapsed();
    let after = [alice.balances().await?, bob.balances().await?];

    let names: HashMap<EntityId, &str> = [
        (alice.id(), "alice's wallet"),
        (alice.card(), "alice's card"),
        (bob.id(), "bob's wallet"),
        (bob.card(), "bob's card"),
        (TTP.owner(), "the TTP"),
    ]
    .into_iter()
    .collect();
    let flow = collect_flow(&mut taps, t0_wall, &names).await;
    let report = Report {
        interrupt,
        flow,
        recovered,
        before,
        after,
        latency,
        total,
        run: t_run.elapsed(),
    };
    if json {
        println!("{}", serde_json::to_string(&report.json())?);
    } else {
        report.print();
    }
    drop((alice, bob, taps));
    hosts.shutdown().await;
    Ok(if report.fair() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The TTP (its decisions in SQLite), then Alice dialing it, then Bob
/// dialing both; the cards know the TTP. With `interrupt`, a guard rule on
/// the receiving host drops the message after that step.
async fn start_hosts(dir: &Path, interrupt: Option<Step>) -> Result<Running> {
    let ca = Ca::create(dir.join("ca"), "demo CA")?;
    let ttp = ca.ttp("ttp", TTP.owner())?;
    let mut alice = HostSpec::new("alice", ALICE)
        .card(CardSpec::new(ALICE_CARD).ttp(&ttp))
        .peer("ttp");
    let mut bob = HostSpec::new("bob", BOB)
        .card(CardSpec::new(BOB_CARD).ttp(&ttp))
        .peer("alice")
        .peer("ttp");
    if let Some(step) = interrupt {
        let (lost, at) = step.lost();
        let rule = RuleSpec {
            name: Some("demo-interrupt".into()),
            ingress: Some("remote".into()),
            src: None,
            dst: None,
            src_domain: None,
            dst_domain: None,
            mtype: Some(lost.into()),
            action: "drop".into(),
            rate: None,
            burst: None,
        };
        if at == "alice" {
            alice = alice.rule(rule);
        } else {
            bob = bob.rule(rule);
        }
    }
    Ok(Topology::new(dir, ca)
        .host(HostSpec::new("ttp", TTP).ttp(&ttp, dir.join("ttp.sqlite")))
        .host(alice)
        .host(bob)
        .start()
        .await?)
}

/// Alice's and Bob's wallets, each authenticated to its card with the PIN.
async fn open_wallets(hosts: &Running) -> Result<(Wallet, Wallet)> {
    let open = |host: &str, card: Domain| {
        let socket = hosts.host(host).socket_path().to_owned();
        async move {
            let cap = Capability::acquire(&socket).await?;
            anyhow::Ok(Wallet::open(cap, card.owner(), PIN).await?)
        }
    };
    Ok((
        open("alice", ALICE_CARD).await?,
        open("bob", BOB_CARD).await?,
    ))
}

/// The issuers: each card mints its own class for its wallet, 5 coffees
/// and 3 tickets. Returns the balances then.
async fn mint(alice: &mut Wallet, bob: &mut Wallet) -> Result<[Vec<Amount>; 2]> {
    let a = alice
        .mint(Amount {
            class: coffee(),
            quantity: 5,
        })
        .await?;
    let b = bob
        .mint(Amount {
            class: ticket(),
            quantity: 3,
        })
        .await?;
    Ok([a, b])
}

/// Alice's wallet offers 2 coffees for 1 ticket to Bob's card; Bob's
/// wallet accepts the offer when it arrives.
async fn offer_and_accept(alice: &mut Wallet, bob: &mut Wallet) -> Result<()> {
    alice
        .offer(
            bob.card(),
            bob.id(),
            Amount {
                class: coffee(),
                quantity: 2,
            },
            Amount {
                class: ticket(),
                quantity: 1,
            },
        )
        .await?;
    let offer = bob
        .next_offer(WAIT)
        .await?
        .context("the offer never reached bob's wallet")?;
    bob.accept(&offer).await?;
    Ok(())
}

/// Waits until both cards are final (the main protocol) and returns the
/// time since `t0`, or, when a message is lost on purpose, until it is
/// clear they are stuck (none).
async fn wait_final(
    alice: &mut Wallet,
    bob: &mut Wallet,
    interrupt: Option<Step>,
    t0: Instant,
) -> Result<Option<Duration>> {
    let deadline = tokio::time::Instant::now()
        + if interrupt.is_some() {
            Duration::from_millis(800)
        } else {
            WAIT
        };
    loop {
        if let (Some(_), Some(_)) = (all_final(alice).await?, all_final(bob).await?) {
            return Ok(Some(t0.elapsed()));
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if interrupt.is_none() {
        bail!("the exchange did not finish");
    }
    Ok(None)
}

async fn all_final(w: &mut Wallet) -> Result<Option<Vec<ExchangeSummary>>> {
    let ex = w.exchanges().await?;
    Ok((!ex.is_empty() && ex.iter().all(|e| e.phase.is_final())).then_some(ex))
}

/// The exchange's messages (recovery included, mtypes 0x0201-0x0209)
/// the taps saw on any host, once each, in time order, with their time
/// since `t0`.
async fn collect_flow(
    taps: &mut [Capability],
    t0: SystemTime,
    names: &HashMap<EntityId, &str>,
) -> Vec<Flow> {
    let mut seen = BTreeSet::new();
    let mut flow: Vec<(SystemTime, Message)> = Vec::new();
    for t in taps {
        while let Ok(Ok(Incoming::Tapped { at, message, .. })) =
            tokio::time::timeout(Duration::from_millis(100), t.next()).await
        {
            let m = message.mtype().0;
            if (0x0201..=0x0209).contains(&m)
                && seen.insert((message.src(), message.dst(), m, message.param.clone()))
            {
                flow.push((at, message));
            }
        }
    }
    flow.sort_by_key(|(at, _)| *at);
    let name = |id: EntityId| names.get(&id).map_or(id.to_string(), |n| (*n).to_owned());
    flow.iter()
        .enumerate()
        .map(|(i, (at, m))| Flow {
            step: i + 1,
            src: name(m.src()),
            dst: name(m.dst()),
            mtype: m.mtype().to_string(),
            bytes: m.encoded_len(),
            ms: at.duration_since(t0).map_or(0.0, |d| d.as_secs_f64() * 1e3),
        })
        .collect()
}

/// The quantity of the class whose promise starts with `promise` in `b`.
fn count(b: &[Amount], promise: &str) -> u64 {
    b.iter()
        .find(|a| a.class.promise.starts_with(promise))
        .map_or(0, |a| a.quantity)
}

impl Report {
    /// Coffees and tickets held by Alice and Bob together.
    fn totals(&self) -> (u64, u64) {
        let [a, b] = &self.after;
        (
            count(a, "coffee") + count(b, "coffee"),
            count(a, "cinema") + count(b, "cinema"),
        )
    }

    /// `swapped`, `restored` (as before the offer) or `UNFAIR`.
    fn outcome(&self) -> &'static str {
        let [a, b] = &self.after;
        let swapped = count(a, "cinema") == 1 && count(b, "coffee") == 2;
        let restored = count(a, "coffee") == 5 && count(b, "cinema") == 3;
        match (swapped, restored) {
            (true, _) => "swapped",
            (_, true) => "restored",
            _ => "UNFAIR",
        }
    }

    /// Fair, and every voucher accounted for.
    fn fair(&self) -> bool {
        self.outcome() != "UNFAIR" && self.totals() == (5, 3)
    }

    fn json(&self) -> Json<'_> {
        Json {
            interrupt_after: self.interrupt,
            flow: &self.flow,
            before: people(&self.before),
            after: people(&self.after),
            outcome: self.outcome(),
            exchange_ms: self.latency.map(|l| l.as_secs_f64() * 1e3),
            total_ms: self.total.as_secs_f64() * 1e3,
            run_ms: self.run.as_secs_f64() * 1e3,
        }
    }

    fn print(&self) {
        println!("TENeT voucher exchange demo: three hosts on loopback over TLS 1.3");
        println!(
            "  alice {} with card {}, bob {} with card {}, the TTP {} (SQLite)",
            ALICE.owner(),
            ALICE_CARD.owner(),
            BOB.owner(),
            BOB_CARD.owner(),
            TTP.owner()
        );
        println!(
            "\nbefore: alice holds {}; bob holds {}",
            show(&self.before[0]),
            show(&self.before[1])
        );
        if let Some(step) = self.interrupt {
            println!(
                "interrupt: the {} after step {:?} is lost (a guard rule drops it)",
                step.lost().0,
                step
            );
        }
        println!(
            "\n{:>4}  {:<16} -> {:<16} {:<18} {:>6}  {:>9}",
            "step", "src", "dst", "mtype", "bytes", "time ms"
        );
        for f in &self.flow {
            println!(
                "{:>4}  {:<16} -> {:<16} {:<18} {:>6}  {:>9.3}",
                f.step, f.src, f.dst, f.mtype, f.bytes, f.ms
            );
        }
        for (id, phase) in &self.recovered {
            println!("      recovered exchange {id}: {phase:?}");
        }
        println!(
            "\nafter: alice holds {}; bob holds {}",
            show(&self.after[0]),
            show(&self.after[1])
        );
        match self.latency {
            Some(l) => println!(
                "the exchange took {:.1} ms as the wallets saw it (offer to both cards final)",
                l.as_secs_f64() * 1e3
            ),
            None => println!(
                "interrupted and recovered in {:.1} ms",
                self.total.as_secs_f64() * 1e3
            ),
        }
        let (coffee, tickets) = self.totals();
        println!(
            "outcome: {}; coffee {coffee} of 5 and tickets {tickets} of 3 accounted for",
            self.outcome()
        );
    }
}

fn show(b: &[Amount]) -> String {
    if b.is_empty() {
        return "nothing".into();
    }
    b.iter()
        .map(|a| format!("{} {}", a.quantity, a.class.promise))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `tenet demo --json`: one object, keys in this order.
#[derive(Serialize)]
struct Json<'a> {
    interrupt_after: Option<Step>,
    flow: &'a [Flow],
    before: People<'a>,
    after: People<'a>,
    outcome: &'static str,
    #[serde(serialize_with = "ms3_or_null")]
    exchange_ms: Option<f64>,
    #[serde(serialize_with = "ms3")]
    total_ms: f64,
    #[serde(serialize_with = "ms3")]
    run_ms: f64,
}

#[derive(Serialize)]
struct People<'a> {
    alice: Vec<JsonAmount<'a>>,
    bob: Vec<JsonAmount<'a>>,
}

fn people(b: &[Vec<Amount>; 2]) -> People<'_> {
    People {
        alice: b[0].iter().map(JsonAmount::from).collect(),
        bob: b[1].iter().map(JsonAmount::from).collect(),
    }
}

#[derive(Serialize)]
struct JsonAmount<'a> {
    issuer: String,
    promise: &'a str,
    quantity: u64,
}

impl<'a> From<&'a Amount> for JsonAmount<'a> {
    fn from(a: &'a Amount) -> Self {
        Self {
            issuer: a.class.issuer.to_string(),
            promise: &a.class.promise,
            quantity: a.quantity,
        }
    }
}

/// Milliseconds with three decimals, as `{:.3}` writes them (`1.500`, not
/// `1.5`): written through as a raw JSON number.
fn ms3<S: Serializer>(ms: &f64, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    serde_json::value::RawValue::from_string(format!("{ms:.3}"))
        .map_err(S::Error::custom)?
        .serialize(s)
}

/// [`ms3`], or `null`.
fn ms3_or_null<S: Serializer>(ms: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(v) => ms3(v, s),
        None => s.serialize_none(),
    }
}
