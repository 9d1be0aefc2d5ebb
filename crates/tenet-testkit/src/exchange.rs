//! The voucher exchange of `tenet demo`, as a scenario: Alice's and Bob's
//! hosts with a virtual card each and the TTP's host on a third, linked
//! over TLS. The wallets authenticate and mint (5 coffees on Alice's card,
//! 3 cinema tickets on Bob's); Alice's wallet offers 2 coffees for 1
//! ticket, Bob's accepts, the cards trade by themselves. With a [`Cut`], a
//! guard rule on the receiving host drops the message after that step, and
//! both wallets recover through the TTP. Taps on every host record the
//! message flow.
//!
//! [`run`] goes through the steps in order, one function each: start the
//! hosts, open the wallets, mint, offer and accept, wait until both cards
//! are final or recover, collect the flow. It returns what happened
//! ([`ExchangeRun`]), which reads as `tenet demo` prints it:
//! [`ExchangeRun::text`] and [`ExchangeRun::json`].

use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::{Serialize, Serializer};
use tenet_client::wallet::Wallet;
use tenet_client::{Capability, Incoming};
use tenet_dispatch::RuleSpec;
use tenet_proto::{Domain, EntityId, Filter, Message};
use tenet_voucher::card::Phase;
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::ExchangeId;

use crate::{Ca, CardSpec, Error, HostSpec, PIN, Running, Topology, WAIT};

/// The TTP host's software domain; the TTP is its entity `TTP:0`.
pub const TTP: Domain = Domain::new([0x77; 12]);
/// Alice's host.
pub const ALICE: Domain = Domain::new([0xa1; 12]);
/// Alice's card, the issuer of the coffees.
pub const ALICE_CARD: Domain = Domain::new([0xca; 12]);
/// Bob's host.
pub const BOB: Domain = Domain::new([0xb2; 12]);
/// Bob's card, the issuer of the tickets.
pub const BOB_CARD: Domain = Domain::new([0xcb; 12]);

/// Where a run is cut: the message after this step is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cut {
    /// Lose the agreement m2 (after Bob accepted).
    Accept,
    /// Lose the confirmation m3 (after the agreement).
    Agreement,
    /// Lose the commitment m4 (after the confirmation).
    Confirmation,
}

impl Cut {
    /// The lost message's mtype name and the host that drops it.
    pub fn lost(self) -> (&'static str, &'static str) {
        match self {
            Cut::Accept => ("agreement", "alice"),
            Cut::Agreement => ("confirmation", "bob"),
            Cut::Confirmation => ("commitment", "alice"),
        }
    }
}

/// One message of the exchange as a tap saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    /// Its place in the flow, from 1.
    pub step: usize,
    /// Its sender, named (`alice's card`) or as `DOMAIN:PORT`.
    pub src: String,
    /// Its destination, named likewise.
    pub dst: String,
    /// Its mtype's name.
    pub mtype: String,
    /// Its encoded size (header and param).
    pub bytes: usize,
    /// Milliseconds since Alice's wallet offered.
    #[serde(serialize_with = "ms3")]
    pub ms: f64,
}

/// Whether the exchange was fair: the vouchers swapped, or every one back
/// where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Alice holds 1 ticket, Bob 2 coffees.
    Swapped,
    /// Alice holds her 5 coffees, Bob his 3 tickets.
    Restored,
    /// Neither: a voucher was lost, doubled or only half traded.
    Unfair,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Swapped => "swapped",
            Outcome::Restored => "restored",
            Outcome::Unfair => "UNFAIR",
        })
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct ExchangeRun {
    /// Where it was cut, if it was.
    pub cut: Option<Cut>,
    /// The exchange's messages (recovery included) in time order.
    pub flow: Vec<Flow>,
    /// The exchanges the wallets recovered, and how they ended.
    pub recovered: Vec<(ExchangeId, Phase)>,
    /// Alice's and Bob's balances after minting.
    pub before: [Vec<Amount>; 2],
    /// Alice's and Bob's balances at the end.
    pub after: [Vec<Amount>; 2],
    /// From the offer until both cards were final; none if cut.
    pub latency: Option<Duration>,
    /// From the offer until the end, recovery included.
    pub total: Duration,
    /// The whole run, from starting the hosts until the flow was collected.
    pub run: Duration,
}

/// Runs the exchange on hosts in `dir` (which must outlive the call), cut
/// after `cut` if given, and shuts the hosts down.
pub async fn run(dir: &Path, cut: Option<Cut>) -> Result<ExchangeRun, Error> {
    let t_run = Instant::now();
    let hosts = start_hosts(dir, cut).await?;
    let ran = trade(&hosts, cut, t_run).await;
    hosts.shutdown().await;
    ran
}

/// Everything but starting and stopping the hosts.
async fn trade(hosts: &Running, cut: Option<Cut>, t_run: Instant) -> Result<ExchangeRun, Error> {
    let (mut alice, mut bob) = open_wallets(hosts).await?;
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
    let latency = wait_final(&mut alice, &mut bob, cut, t0).await?;
    let mut recovered = Vec::new();
    if latency.is_none() {
        // Cut: both wallets recover what is pending, through the TTP.
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
    let flow = collect_flow(&mut taps, t0_wall, &names, &|m| {
        (0x0201..=0x0209).contains(&m)
    })
    .await;
    Ok(ExchangeRun {
        cut,
        flow,
        recovered,
        before,
        after,
        latency,
        total,
        run: t_run.elapsed(),
    })
}

/// The vouchers Alice's card issues.
pub(crate) fn coffee() -> VoucherClass {
    VoucherClass {
        issuer: ALICE_CARD,
        promise: "coffee at Alice's".into(),
    }
}

/// The vouchers Bob's card issues.
pub(crate) fn ticket() -> VoucherClass {
    VoucherClass {
        issuer: BOB_CARD,
        promise: "cinema ticket from Bob".into(),
    }
}

/// The TTP (its decisions in SQLite), then Alice dialing it, then Bob
/// dialing both; the cards know the TTP. With `cut`, a guard rule on the
/// receiving host drops the message after that step.
async fn start_hosts(dir: &Path, cut: Option<Cut>) -> Result<Running, Error> {
    let ca = Ca::create(dir.join("ca"), "demo CA")?;
    let ttp = ca.ttp("ttp", TTP.owner())?;
    let mut alice = HostSpec::new("alice", ALICE)
        .card(CardSpec::new(ALICE_CARD).ttp(&ttp))
        .peer("ttp");
    let mut bob = HostSpec::new("bob", BOB)
        .card(CardSpec::new(BOB_CARD).ttp(&ttp))
        .peer("alice")
        .peer("ttp");
    if let Some(cut) = cut {
        let (lost, at) = cut.lost();
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
    Topology::new(dir, ca)
        .host(HostSpec::new("ttp", TTP).ttp(&ttp, dir.join("ttp.sqlite")))
        .host(alice)
        .host(bob)
        .start()
        .await
}

/// Alice's and Bob's wallets, each authenticated to its card with the PIN.
async fn open_wallets(hosts: &Running) -> Result<(Wallet, Wallet), Error> {
    let mut wallets = Vec::new();
    for (host, card) in [("alice", ALICE_CARD), ("bob", BOB_CARD)] {
        let cap = Capability::acquire(hosts.host(host).socket_path()).await?;
        wallets.push(Wallet::open(cap, card.owner(), PIN).await?);
    }
    let bob = wallets.pop().expect("two wallets");
    let alice = wallets.pop().expect("two wallets");
    Ok((alice, bob))
}

/// The issuers: each card mints its own class for its wallet, 5 coffees
/// and 3 tickets. Returns the balances then.
async fn mint(alice: &mut Wallet, bob: &mut Wallet) -> Result<[Vec<Amount>; 2], Error> {
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
async fn offer_and_accept(alice: &mut Wallet, bob: &mut Wallet) -> Result<(), Error> {
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
        .ok_or(Error::Stalled("the offer never reached bob's wallet"))?;
    bob.accept(&offer).await?;
    Ok(())
}

/// Waits until both cards are final (the main protocol) and returns the
/// time since `t0`, or, when a message is lost on purpose, until it is
/// clear they are stuck (none).
async fn wait_final(
    alice: &mut Wallet,
    bob: &mut Wallet,
    cut: Option<Cut>,
    t0: Instant,
) -> Result<Option<Duration>, Error> {
    let deadline = tokio::time::Instant::now()
        + if cut.is_some() {
            Duration::from_millis(800)
        } else {
            WAIT
        };
    loop {
        if all_final(alice).await? && all_final(bob).await? {
            return Ok(Some(t0.elapsed()));
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if cut.is_none() {
        return Err(Error::Stalled("the exchange did not finish"));
    }
    Ok(None)
}

/// The card has exchanges, all final.
async fn all_final(w: &mut Wallet) -> Result<bool, Error> {
    let ex = w.exchanges().await?;
    Ok(!ex.is_empty() && ex.iter().all(|e| e.phase.is_final()))
}

/// The messages of the mtypes `wanted` takes (for the exchange, recovery
/// included: 0x0201-0x0209) the taps saw on any host since the last call,
/// once each, in time order, with their time since `t0`.
pub(crate) async fn collect_flow(
    taps: &mut [Capability],
    t0: SystemTime,
    names: &HashMap<EntityId, &str>,
    wanted: &dyn Fn(u16) -> bool,
) -> Vec<Flow> {
    let mut seen = BTreeSet::new();
    let mut flow: Vec<(SystemTime, Message)> = Vec::new();
    for t in taps {
        while let Ok(Ok(Incoming::Tapped { at, message, .. })) =
            tokio::time::timeout(Duration::from_millis(100), t.next()).await
        {
            let m = message.mtype().0;
            if wanted(m) && seen.insert((message.src(), message.dst(), m, message.param.clone())) {
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

impl ExchangeRun {
    /// Coffees and tickets held by Alice and Bob together at the end.
    pub fn totals(&self) -> (u64, u64) {
        let [a, b] = &self.after;
        (
            count(a, "coffee") + count(b, "coffee"),
            count(a, "cinema") + count(b, "cinema"),
        )
    }

    /// Whether the vouchers were swapped, restored or neither.
    pub fn outcome(&self) -> Outcome {
        let [a, b] = &self.after;
        let swapped = count(a, "cinema") == 1 && count(b, "coffee") == 2;
        let restored = count(a, "coffee") == 5 && count(b, "cinema") == 3;
        match (swapped, restored) {
            (true, _) => Outcome::Swapped,
            (_, true) => Outcome::Restored,
            _ => Outcome::Unfair,
        }
    }

    /// Fair, and every voucher accounted for (5 coffees, 3 tickets).
    pub fn fair(&self) -> bool {
        self.outcome() != Outcome::Unfair && self.totals() == (5, 3)
    }

    /// The run as `tenet demo` prints it: the hosts, the balances before,
    /// the cut, the flow as a table, the recovered exchanges, the balances
    /// after, the time and the outcome.
    pub fn text(&self) -> String {
        let mut o = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_text(&mut o);
        o
    }

    fn write_text(&self, o: &mut String) -> fmt::Result {
        writeln!(
            o,
            "TENeT voucher exchange demo: three hosts on loopback over TLS 1.3"
        )?;
        writeln!(
            o,
            "  alice {} with card {}, bob {} with card {}, the TTP {} (SQLite)",
            ALICE.owner(),
            ALICE_CARD.owner(),
            BOB.owner(),
            BOB_CARD.owner(),
            TTP.owner()
        )?;
        let [a, b] = &self.before;
        writeln!(
            o,
            "\nbefore: alice holds {}; bob holds {}",
            show(a),
            show(b)
        )?;
        if let Some(cut) = self.cut {
            writeln!(
                o,
                "interrupt: the {} after step {cut:?} is lost (a guard rule drops it)",
                cut.lost().0
            )?;
        }
        writeln!(
            o,
            "\n{:>4}  {:<16} -> {:<16} {:<18} {:>6}  {:>9}",
            "step", "src", "dst", "mtype", "bytes", "time ms"
        )?;
        for f in &self.flow {
            writeln!(
                o,
                "{:>4}  {:<16} -> {:<16} {:<18} {:>6}  {:>9.3}",
                f.step, f.src, f.dst, f.mtype, f.bytes, f.ms
            )?;
        }
        for (id, phase) in &self.recovered {
            writeln!(o, "      recovered exchange {id}: {phase:?}")?;
        }
        let [a, b] = &self.after;
        writeln!(o, "\nafter: alice holds {}; bob holds {}", show(a), show(b))?;
        match self.latency {
            Some(l) => writeln!(
                o,
                "the exchange took {:.1} ms as the wallets saw it (offer to both cards final)",
                l.as_secs_f64() * 1e3
            )?,
            None => writeln!(
                o,
                "interrupted and recovered in {:.1} ms",
                self.total.as_secs_f64() * 1e3
            )?,
        }
        let (coffee, tickets) = self.totals();
        writeln!(
            o,
            "outcome: {}; coffee {coffee} of 5 and tickets {tickets} of 3 accounted for",
            self.outcome()
        )
    }

    /// The run as `tenet demo --json` prints it, on one line: the keys
    /// `interrupt_after`, `flow`, `before`, `after`, `outcome`,
    /// `exchange_ms`, `total_ms` and `run_ms` in this order, times in
    /// milliseconds with three decimals.
    pub fn json(&self) -> Result<String, serde_json::Error> {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        serde_json::to_string(&Json {
            interrupt_after: self.cut,
            flow: &self.flow,
            before: people(&self.before),
            after: people(&self.after),
            outcome: self.outcome().to_string(),
            exchange_ms: self.latency.map(ms),
            total_ms: ms(self.total),
            run_ms: ms(self.run),
        })
    }
}

/// Vouchers as `alice holds ...` names them.
pub(crate) fn show(b: &[Amount]) -> String {
    if b.is_empty() {
        return "nothing".into();
    }
    b.iter()
        .map(|a| format!("{} {}", a.quantity, a.class.promise))
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`ExchangeRun::json`]'s object.
#[derive(Serialize)]
struct Json<'a> {
    interrupt_after: Option<Cut>,
    flow: &'a [Flow],
    before: People<'a>,
    after: People<'a>,
    outcome: String,
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

fn people([a, b]: &[Vec<Amount>; 2]) -> People<'_> {
    People {
        alice: a.iter().map(JsonAmount::from).collect(),
        bob: b.iter().map(JsonAmount::from).collect(),
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
