//! `tenet demo --story`: the vouchers' whole life across four hosts on
//! loopback over TLS. Alice's card issues coffees, Bob's cinema tickets;
//! Carol has a card too, and the TTP its own host.
//!
//! 1. **mint**: Alice's card mints 5 coffees, Bob's 3 tickets.
//! 2. **exchange**: Alice's wallet offers 2 coffees for 1 ticket; Bob's
//!    accepts; the cards trade by themselves.
//! 3. **gift**: Alice gives her ticket to Carol (the exchange with nothing
//!    wanted back); Carol's wallet takes it.
//! 4. **redeem**: Bob redeems a coffee at Alice's card, its issuer: the
//!    coffee is destroyed, and Bob's card keeps a receipt signed by
//!    Alice's card, which verifies offline with the CA.
//! 5. **present**: Carol shows her ticket at the cinema's gate (a verifier
//!    app on Bob's host): her card signs that it holds one, for the gate's
//!    fresh challenge; nothing moves.
//!
//! Each act prints the messages the taps saw and the holdings after it;
//! the story fails if a voucher was created or lost on the way.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tenet_client::Capability;
use tenet_client::wallet::Wallet;
use tenet_proto::{Codec, Domain, EntityId, Filter};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::present::{Challenges, PRESENTATION, Presentation, ca_check};
use tenet_voucher::redeem::receipt_check;

use crate::exchange::{ALICE, ALICE_CARD, BOB, BOB_CARD, Flow, TTP, coffee, show, ticket};
use crate::{Ca, CardSpec, Error, HostSpec, NatsCluster, NatsUser, PIN, Running, Topology, WAIT};
use tenet_host::Config;
use tenet_host::config::NatsSection;

/// Carol's host.
pub const CAROL: Domain = Domain::new([0xc0; 12]);
/// Carol's card.
pub const CAROL_CARD: Domain = Domain::new([0xcc; 12]);

/// One act: what it did, the messages the taps saw, and what each card
/// holds after it.
#[derive(Debug, Clone, Serialize)]
pub struct Act {
    /// Its name (`mint`, `exchange`, `gift`, `redeem`, `present`).
    pub name: &'static str,
    /// What happened, in words.
    pub said: Vec<String>,
    /// The voucher messages (mtypes `0201`-`0219`) in time order.
    pub flow: Vec<Flow>,
    /// Alice's, Bob's and Carol's holdings after it, in words.
    pub after: [String; 3],
}

/// The whole story.
#[derive(Debug, Clone, Serialize)]
pub struct Story {
    /// The acts, in order.
    pub acts: Vec<Act>,
    /// Coffees and tickets held by the three cards at the end, and the
    /// coffees destroyed by redemption: 5 coffees and 3 tickets in all.
    pub totals: (u64, u64, u64),
}

impl Story {
    /// Every voucher accounted for: 5 coffees (held or destroyed with a
    /// receipt) and 3 tickets.
    pub fn conserved(&self) -> bool {
        let (c, t, destroyed) = self.totals;
        c + destroyed == 5 && t == 3
    }

    /// The story as `tenet demo --story` prints it.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "TENeT voucher story: four hosts on loopback over TLS 1.3\n  alice {} with card {}, bob {} with card {}, carol {} with card {}, the TTP {}",
            ALICE.owner(),
            ALICE_CARD.owner(),
            BOB.owner(),
            BOB_CARD.owner(),
            CAROL.owner(),
            CAROL_CARD.owner(),
            TTP.owner()
        );
        for (i, a) in self.acts.iter().enumerate() {
            let _ = writeln!(o, "\n{}. {}", i + 1, a.name);
            for s in &a.said {
                let _ = writeln!(o, "   {s}");
            }
            for f in &a.flow {
                let _ = writeln!(
                    o,
                    "   {:>3}  {:<16} -> {:<16} {:<18} {:>6} B",
                    f.step, f.src, f.dst, f.mtype, f.bytes
                );
            }
            let [x, y, z] = &a.after;
            let _ = writeln!(o, "   now alice holds {x}; bob {y}; carol {z}");
        }
        let (c, t, d) = self.totals;
        let _ = writeln!(
            o,
            "\nvouchers: {c} coffees held and {d} destroyed for a receipt (of 5), {t} tickets (of 3): {}",
            if self.conserved() {
                "all accounted for"
            } else {
                "NOT CONSERVED"
            }
        );
        o
    }
}

/// The three wallets.
struct People {
    alice: Wallet,
    bob: Wallet,
    carol: Wallet,
}

/// How the story's hosts are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// TLS: Bob dials Alice, Carol dials Alice and Bob, all dial the TTP.
    Tls,
    /// A nats-server (started in the story's folder) that every host
    /// uses as its user, with the per-host subject permissions.
    Nats,
}

/// Runs the story on hosts linked over TLS in `dir` (which must outlive
/// the call).
pub async fn run(dir: &Path) -> Result<Story, Error> {
    run_over(dir, Links::Tls).await
}

/// Runs the story on hosts in `dir` linked by `links`.
pub async fn run_over(dir: &Path, links: Links) -> Result<Story, Error> {
    let ca = Ca::create(dir.join("ca"), "demo CA")?;
    let ttp = ca.ttp("ttp", TTP.owner())?;
    let ca_der = ca_der(ca.dir())?;
    let people = [
        ("alice", ALICE, ALICE_CARD),
        ("bob", BOB, BOB_CARD),
        ("carol", CAROL, CAROL_CARD),
    ];
    let nats = match links {
        Links::Tls => None,
        Links::Nats => {
            let mut users: Vec<NatsUser> = people
                .iter()
                .map(|(n, d, c)| NatsUser::host(n, &[*d, *c]))
                .collect();
            users.push(NatsUser::host("ttp", &[TTP]));
            Some(NatsCluster::start(dir, 1, &users).await?)
        }
    };
    let link = |h: HostSpec, name: &str, dial: &[&str]| match &nats {
        None => dial.iter().fold(h, |h, p| h.peer(p)),
        Some(c) => h.config(over_nats(c.urls(), name)),
    };
    let mut t = Topology::new(dir, ca).host(link(
        HostSpec::new("ttp", TTP).ttp(&ttp, dir.join("ttp.sqlite")),
        "ttp",
        &[],
    ));
    let dials: [&[&str]; 3] = [&["ttp"], &["alice", "ttp"], &["alice", "bob", "ttp"]];
    for ((name, d, c), dial) in people.into_iter().zip(dials) {
        let h = HostSpec::new(name, d).card(CardSpec::new(c).ttp(&ttp));
        t = t.host(link(h, name, dial));
    }
    let hosts = t.start().await?;
    if nats.is_some() {
        // Topology::start waits for TLS links; these are NATS subjects.
        for (name, _, c) in people {
            let others: Vec<EntityId> = people
                .iter()
                .filter(|(_, _, o)| *o != c)
                .map(|(_, _, o)| o.owner())
                .chain([TTP.owner()])
                .collect();
            crate::wait_links(hosts.host(name), &others).await?;
        }
    }
    let told = tell(&hosts, &ca_der).await;
    hosts.shutdown().await;
    told
}

/// `[remote.nats]` for `user` of the server at `url`, with no TLS
/// listener: the host is linked through NATS only.
fn over_nats(url: String, user: &str) -> impl FnOnce(&mut Config) + Send + 'static {
    let section = NatsSection {
        url,
        user: Some(user.to_owned()),
        password: Some(format!("{user}-secret")),
        ..Default::default()
    };
    move |c| {
        c.remote.listen = None;
        c.remote.nats = Some(section);
    }
}

/// The anchor (`tenet_pki::cv`) of the CA in `dir`: what verifiers of
/// cards' signatures trust.
fn ca_der(dir: &Path) -> Result<Vec<u8>, Error> {
    use pki_types::pem::PemObject;
    let path = dir.join("ca.pem");
    match pki_types::CertificateDer::from_pem_file(&path) {
        Ok(c) => tenet_pki::cv::Anchor::from_x509(&c)
            .map(|a| a.to_bytes())
            .map_err(|e| Error::Cert(tenet_pki::CertError::Malformed(e.0))),
        Err(source) => Err(Error::Pem { path, source }),
    }
}

async fn wallet(hosts: &Running, host: &str, card: Domain) -> Result<Wallet, Error> {
    let cap = Capability::acquire(hosts.host(host).socket_path()).await?;
    Ok(Wallet::open(cap, card.owner(), PIN).await?)
}

/// Everything between starting and stopping the hosts.
async fn tell(hosts: &Running, ca: &[u8]) -> Result<Story, Error> {
    let mut p = People {
        alice: wallet(hosts, "alice", ALICE_CARD).await?,
        bob: wallet(hosts, "bob", BOB_CARD).await?,
        carol: wallet(hosts, "carol", CAROL_CARD).await?,
    };
    let mut taps = Vec::new();
    for name in ["alice", "bob", "carol", "ttp"] {
        let mut t = Capability::acquire(hosts.host(name).socket_path()).await?;
        t.tap(Filter::ANY).await?;
        taps.push(t);
    }
    let mut names: HashMap<EntityId, &str> = [
        (p.alice.id(), "alice's wallet"),
        (ALICE_CARD.owner(), "alice's card"),
        (p.bob.id(), "bob's wallet"),
        (BOB_CARD.owner(), "bob's card"),
        (p.carol.id(), "carol's wallet"),
        (CAROL_CARD.owner(), "carol's card"),
        (TTP.owner(), "the TTP"),
    ]
    .into_iter()
    .collect();
    let amount = |class: VoucherClass, quantity| Amount { class, quantity };
    let mut acts = Vec::new();

    let t0 = SystemTime::now();
    p.alice.mint(amount(coffee(), 5)).await?;
    p.bob.mint(amount(ticket(), 3)).await?;
    let said = vec!["alice's card mints 5 coffees, bob's 3 cinema tickets".into()];
    acts.push(act("mint", said, &mut taps, t0, &names, &mut p).await?);

    let t0 = SystemTime::now();
    let (bob_card, bob_id) = (p.bob.card(), p.bob.id());
    let (give, want) = (amount(coffee(), 2), amount(ticket(), 1));
    p.alice.offer(bob_card, bob_id, give, want).await?;
    take(&mut p.bob).await?;
    final_all(&mut [&mut p.alice, &mut p.bob]).await?;
    let said = vec!["alice offers 2 coffees for 1 ticket; bob's wallet accepts".into()];
    acts.push(act("exchange", said, &mut taps, t0, &names, &mut p).await?);

    let t0 = SystemTime::now();
    let (carol_card, carol_id) = (p.carol.card(), p.carol.id());
    p.alice
        .transfer(carol_card, carol_id, amount(ticket(), 1))
        .await?;
    take(&mut p.carol).await?;
    final_all(&mut [&mut p.alice, &mut p.carol]).await?;
    let said = vec!["alice gives her ticket to carol; carol's wallet takes the gift".into()];
    acts.push(act("gift", said, &mut taps, t0, &names, &mut p).await?);

    let t0 = SystemTime::now();
    let (alice_card, alice_id) = (p.alice.card(), p.alice.id());
    p.bob
        .redeem(alice_card, alice_id, amount(coffee(), 1))
        .await?;
    take(&mut p.alice).await?;
    final_all(&mut [&mut p.alice, &mut p.bob]).await?;
    let log = p.bob.log(0).await?;
    let receipt = log
        .entries
        .iter()
        .find_map(|e| e.receipt.clone())
        .ok_or(Error::Stalled("bob's card holds no receipt"))?;
    let verified = match receipt.verify(&receipt_check(ca)) {
        Ok(()) => "verified offline with the CA".to_owned(),
        Err(e) => format!("REFUSED: {e}"),
    };
    let said = vec![
        "bob redeems a coffee at alice's card, its issuer: destroyed, never credited".into(),
        format!("bob's receipt {}: {verified}", receipt.id()),
    ];
    acts.push(act("redeem", said, &mut taps, t0, &names, &mut p).await?);

    let t0 = SystemTime::now();
    let mut gate = Capability::acquire(hosts.host("bob").socket_path()).await?;
    names.insert(gate.id(), "the cinema gate");
    let mut challenges = Challenges::default();
    let c = challenges.fresh();
    p.carol.present(gate.id(), c, amount(ticket(), 1)).await?;
    let shown = loop {
        let m = tokio::time::timeout(WAIT, gate.receive())
            .await
            .map_err(|_| Error::Stalled("the presentation never reached the gate"))??;
        if m.mtype() == PRESENTATION {
            break (m.src(), Presentation::decode(&m.param));
        }
    };
    let gate_says = match shown.1 {
        Ok(pr) => {
            match challenges.verify(ca_check(ca), gate.id(), shown.0, &pr, &amount(ticket(), 1)) {
                Ok(()) => format!(
                    "the gate lets carol in: {} holds at least {}",
                    pr.holder, pr.amount
                ),
                Err(e) => format!("the gate REFUSES: {e}"),
            }
        }
        Err(e) => format!("the gate REFUSES a malformed statement: {e}"),
    };
    let said = vec![
        "carol shows her ticket at the cinema's gate for its fresh challenge; nothing moves".into(),
        gate_says,
    ];
    acts.push(act("present", said, &mut taps, t0, &names, &mut p).await?);

    let mut held = (0, 0);
    for w in [&mut p.alice, &mut p.bob, &mut p.carol] {
        let b = w.balances().await?;
        held.0 += count(&b, &coffee());
        held.1 += count(&b, &ticket());
    }
    let destroyed = if verified.starts_with("verified") {
        receipt.offer.give.quantity
    } else {
        0
    };
    Ok(Story {
        acts,
        totals: (held.0, held.1, destroyed),
    })
}

fn count(b: &[Amount], class: &VoucherClass) -> u64 {
    b.iter()
        .find(|a| a.class == *class)
        .map_or(0, |a| a.quantity)
}

/// Takes the next offer that reaches `w`'s wallet (whatever its kind:
/// the story expects it).
async fn take(w: &mut Wallet) -> Result<(), Error> {
    let o = w
        .next_offer(WAIT)
        .await?
        .ok_or(Error::Stalled("an offer never reached its wallet"))?;
    w.accept(&o).await?;
    Ok(())
}

/// Waits until every run on the wallets' cards is final.
async fn final_all(ws: &mut [&mut Wallet]) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + WAIT;
    for w in ws.iter_mut() {
        loop {
            if w.exchanges().await?.iter().all(|e| e.phase.is_final()) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Stalled("a run did not finish"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// An act: what it did, the flow the taps saw since `t0`, the holdings.
async fn act(
    name: &'static str,
    said: Vec<String>,
    taps: &mut [Capability],
    t0: SystemTime,
    names: &HashMap<EntityId, &str>,
    p: &mut People,
) -> Result<Act, Error> {
    // The protocol's messages: not the wallet's orders and queries.
    let order = [
        0x0201, 0x0203, 0x0209, 0x020a, 0x020b, 0x020c, 0x020d, 0x020e, 0x020f, 0x0213, 0x0218,
        0x0219,
    ];
    let wanted = |m: u16| (0x0201..=0x0219).contains(&m) && !order.contains(&m);
    let flow = crate::exchange::collect_flow(taps, t0, names, &wanted).await;
    let after = [
        show(&p.alice.balances().await?),
        show(&p.bob.balances().await?),
        show(&p.carol.balances().await?),
    ];
    Ok(Act {
        name,
        said,
        flow,
        after,
    })
}
