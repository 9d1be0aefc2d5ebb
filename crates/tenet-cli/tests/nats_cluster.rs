//! Beyond one machine, on existing engines: hosts and the TTP linked through
//! a three-node nats-server cluster (one user per host, with the
//! permissions of `docs/nats-server.example.conf`), trading vouchers.
//!
//! - The node host A is connected to is killed under a stream of
//!   exchanges: no exchange that finished is lost, A's host reconnects to
//!   another node and traffic resumes (the pause is printed), and the
//!   voucher recovery finishes what was in flight; vouchers are conserved
//!   and both cards agree on every exchange.
//! - TTP replicas: two `tenet ttp` processes serve the TTP's identity as
//!   the NATS queue group "ttp" and share one PostgreSQL decision store
//!   (`TENET_TEST_POSTGRES`, started by `scripts/test.sh`). Both cards of
//!   every exchange ask the TTP at once, one to resolve and one to abort,
//!   so the two requests of one exchange often reach different replicas;
//!   one replica is killed (SIGKILL) while they decide. Every exchange
//!   still ends with one decision that both cards follow. (Given each
//!   replica its own SQLite file instead, the test fails: one card
//!   resolved, the other aborted.)
//!
//! nats-server must be installed (`scripts/test.sh` installs it).

use std::time::{Duration, Instant};

use tenet_client::Capability;
use tenet_client::wallet::Wallet;
use tenet_dispatch::RuleSpec;
use tenet_host::config::NatsSection;
use tenet_host::{Config, HostHandle};
use tenet_proto::Domain;
use tenet_testkit::{
    Ca, CardSpec, HostSpec, NatsCluster, NatsUser, PIN, Running, Topology, TtpIdentity, WAIT,
    wait_links,
};
use tenet_voucher::card::{ExchangeSummary, Phase};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg;

// Only `support::daemon` (for `tenet ttp`) is used here.
#[cfg(feature = "postgres")]
#[allow(dead_code)]
mod support;

const A: Domain = Domain::new([0xa1; 12]);
const A_CARD: Domain = Domain::new([0x4a; 12]);
const B: Domain = Domain::new([0xb2; 12]);
const B_CARD: Domain = Domain::new([0x4b; 12]);
const TTP: Domain = Domain::new([0xc3; 12]);
/// The queue group of the TTP's replicas.
const QUEUE: &str = "ttp";

/// The cluster's users: Alice's and Bob's hosts (each with its card's
/// domain), and two TTP replicas that may read the TTP's subjects only in
/// the queue group.
fn users() -> Vec<NatsUser> {
    vec![
        NatsUser::host("alice", &[A, A_CARD]),
        NatsUser::host("bob", &[B, B_CARD]),
        NatsUser::replica("ttp1", &[TTP], QUEUE),
        NatsUser::replica("ttp2", &[TTP], QUEUE),
    ]
}

/// `[remote.nats]` for `user` of the cluster at `urls` (all its nodes).
fn nats(urls: &str, user: &str, queue: Option<&str>) -> NatsSection {
    NatsSection {
        url: urls.to_owned(),
        user: Some(user.to_owned()),
        password: Some(format!("{user}-secret")),
        queue: queue.map(str::to_owned),
        ..Default::default()
    }
}

/// Links the host through NATS only: no TLS listener.
fn over(section: NatsSection) -> impl FnOnce(&mut Config) + Send + 'static {
    move |c| {
        c.remote.listen = None;
        c.remote.nats = Some(section);
    }
}

struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    ttp: TtpIdentity,
    cluster: NatsCluster,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(dir.path().join("ca"), "test CA").unwrap();
        let ttp = ca.ttp("ttp", TTP.owner()).unwrap();
        let cluster = NatsCluster::start(dir.path(), 3, &users())
            .await
            .expect("a three-node nats-server cluster (scripts/test.sh installs nats-server)");
        Self {
            dir,
            ca,
            ttp,
            cluster,
        }
    }

    /// Alice's and Bob's hosts, each with its card, and the `more` hosts;
    /// `b_rule` is a guard rule on Bob's host.
    async fn hosts(&self, more: Vec<HostSpec>, b_rule: Option<RuleSpec>) -> Running {
        let urls = self.cluster.urls();
        let card = |d: Domain| CardSpec::new(d).ttp(&self.ttp);
        let a = HostSpec::new("a", A)
            .card(card(A_CARD))
            .config(over(nats(&urls, "alice", None)));
        let mut b = HostSpec::new("b", B)
            .card(card(B_CARD))
            .config(over(nats(&urls, "bob", None)));
        if let Some(r) = b_rule {
            b = b.rule(r);
        }
        let mut t = Topology::new(self.dir.path(), self.ca.clone())
            .host(a)
            .host(b);
        for h in more {
            t = t.host(h);
        }
        let running = t.start().await.unwrap();
        // Topology::start waits for TLS links; these are NATS subjects.
        let (ha, hb) = (running.host("a"), running.host("b"));
        wait_links(ha, &[B_CARD.owner(), TTP.owner()])
            .await
            .unwrap();
        wait_links(hb, &[A_CARD.owner(), TTP.owner()])
            .await
            .unwrap();
        running
    }
}

fn class(d: Domain, promise: &str) -> VoucherClass {
    VoucherClass {
        issuer: d,
        promise: promise.into(),
    }
}

fn one(c: &VoucherClass) -> Amount {
    Amount {
        class: c.clone(),
        quantity: 1,
    }
}

fn held(b: &[Amount], c: &VoucherClass) -> u64 {
    b.iter().find(|a| a.class == *c).map_or(0, |a| a.quantity)
}

/// Alice's and Bob's wallets, `n` coffee minted on A's card and `n`
/// tickets on B's.
async fn wallets(r: &Running, n: u64) -> (Wallet, Wallet, VoucherClass, VoucherClass) {
    let open = |h: &HostHandle, card: Domain| {
        let path = h.socket_path().to_owned();
        async move {
            Wallet::open(Capability::acquire(&path).await.unwrap(), card.owner(), PIN)
                .await
                .unwrap()
        }
    };
    let mut wa = open(r.host("a"), A_CARD).await;
    let mut wb = open(r.host("b"), B_CARD).await;
    let (coffee, ticket) = (class(A_CARD, "coffee"), class(B_CARD, "ticket"));
    wa.mint(Amount {
        class: coffee.clone(),
        quantity: n,
    })
    .await
    .unwrap();
    wb.mint(Amount {
        class: ticket.clone(),
        quantity: n,
    })
    .await
    .unwrap();
    (wa, wb, coffee, ticket)
}

/// B's wallet accepting every offer until `stop` is set; returns it with
/// the number it accepted.
fn acceptor(
    mut wb: Wallet,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Wallet, u64)> {
    tokio::spawn(async move {
        let mut accepted = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // A short wait, so the flag is seen soon after it is set.
            if let Some(o) = wb.next_offer(Duration::from_millis(200)).await.unwrap() {
                wb.accept(&o).await.unwrap();
                accepted += 1;
            }
        }
        (wb, accepted)
    })
}

/// Recovers on both cards until neither has a pending exchange (a late
/// message can open one on A after its wallet found none), within
/// three rounds; returns both cards' exchanges.
async fn recover_all(
    wa: &mut Wallet,
    wb: &mut Wallet,
) -> (Vec<ExchangeSummary>, Vec<ExchangeSummary>) {
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(
            wa.auto_recover(Duration::from_millis(300)),
            wb.auto_recover(Duration::from_millis(300))
        );
        ra.unwrap();
        rb.unwrap();
        let (ea, eb) = (wa.exchanges().await.unwrap(), wb.exchanges().await.unwrap());
        if ea.iter().chain(&eb).all(|e| e.phase.is_final()) {
            return (ea, eb);
        }
    }
    panic!("exchanges still pending after three rounds of recovery");
}

fn swapped(p: Phase) -> bool {
    matches!(p, Phase::Committed | Phase::Resolved)
}

/// Every exchange is final on both cards and fair: both swapped or
/// neither (an exchange B accepted whose agreement never reached A is
/// aborted on B). Returns how many swapped.
fn fair(ea: &[ExchangeSummary], eb: &[ExchangeSummary]) -> u64 {
    for e in ea {
        assert!(
            eb.iter().any(|b| b.id == e.id),
            "A's exchange {:?} unknown to B",
            e.id
        );
    }
    let mut n = 0;
    for b in eb {
        assert!(b.phase.is_final(), "{:?} on B", b.phase);
        match ea.iter().find(|a| a.id == b.id) {
            Some(a) => assert_eq!(
                swapped(a.phase),
                swapped(b.phase),
                "unfair: A {:?}, B {:?}",
                a.phase,
                b.phase
            ),
            None => assert_eq!(b.phase, Phase::Aborted, "B swapped, A never deleted"),
        }
        n += u64::from(swapped(b.phase));
    }
    n
}

/// The balances moved by exactly the swapped exchanges, one coffee for
/// one ticket each, from `n` of each: nothing made, nothing lost.
async fn conserved(
    wa: &mut Wallet,
    wb: &mut Wallet,
    coffee: &VoucherClass,
    ticket: &VoucherClass,
    n: u64,
    swapped: u64,
) {
    let (ba, bb) = (wa.balances().await.unwrap(), wb.balances().await.unwrap());
    assert_eq!(
        (
            held(&ba, coffee),
            held(&bb, coffee),
            held(&bb, ticket),
            held(&ba, ticket)
        ),
        (n - swapped, swapped, n - swapped, swapped),
        "A {ba:?}, B {bb:?} after {swapped} swaps"
    );
}

/// The node Alice's host is connected to dies under a stream of exchanges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_dying_under_exchanges_loses_no_exchange() {
    // A card remembers its last 16 finished exchanges
    // (tenet_voucher::card::HISTORY): all of these.
    const N: u64 = 16;
    const KILL_AFTER: usize = 5;
    let mut w = World::new().await;
    let ttp = HostSpec::new("ttp", TTP)
        .ttp(&w.ttp, w.dir.path().join("ttp.sqlite"))
        .config(over(nats(&w.cluster.urls(), "ttp1", Some(QUEUE))));
    let r = w.hosts(vec![ttp], None).await;
    let (mut wa, wb, coffee, ticket) = wallets(&r, N).await;
    let wb_id = wb.id();
    wa.follow().await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepting = acceptor(wb, stop.clone());

    let mut committed_before: Vec<ExchangeSummary> = Vec::new();
    let (mut killed, mut committed_after, mut pause) = (None::<Instant>, 0, None);
    let (mut reconnected, mut resumed) = (None, None);
    let mut probe = Capability::acquire(r.host("a").socket_path())
        .await
        .unwrap();
    let mut done = 0;
    for _ in 0..N {
        // The node to kill during the next exchange, once KILL_AFTER have
        // finished.
        let mut target = None;
        if done == KILL_AFTER && killed.is_none() {
            committed_before = wa.exchanges().await.unwrap();
            assert_eq!(committed_before.len(), KILL_AFTER);
            assert!(committed_before.iter().all(|e| e.phase == Phase::Committed));
            let on = w.cluster.nodes_of("alice").await.unwrap();
            assert_eq!(on.len(), 1, "A's host has one connection: {on:?}");
            target = Some(on[0]);
        }
        wa.offer(B_CARD.owner(), wb_id, one(&coffee), one(&ticket))
            .await
            .unwrap();
        // This exchange's commitment, or none in time (lost with the node,
        // or after it: recovery finishes it below). The exchange the node
        // dies under gets 3 s from the kill.
        let mut deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match wa.next_progress(left).await.unwrap() {
                // A's card deleted its coffee and sent the confirmation:
                // the node dies with the rest of the exchange in flight.
                Some(m) if m.mtype() == msg::CONFIRMATION && target.is_some() => {
                    let node = target.take().unwrap_or_default();
                    w.cluster.kill(node);
                    let k = Instant::now();
                    killed = Some(k);
                    deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(3));
                    let now_on = w.cluster.wait_for("alice").await.unwrap();
                    assert_ne!(now_on, node);
                    reconnected = Some(k.elapsed());
                    // Traffic between the hosts again: an echo from A to
                    // B's card.
                    loop {
                        let echo = probe.echo(B_CARD.owner(), b"", Duration::from_millis(200));
                        if echo.await.is_ok() {
                            break;
                        }
                        assert!(k.elapsed() < WAIT, "no traffic after the kill");
                    }
                    resumed = Some(k.elapsed());
                }
                Some(m) if m.mtype() == msg::COMMITMENT && m.dst() == A_CARD.owner() => {
                    done += 1;
                    if let Some(k) = killed {
                        committed_after += 1;
                        pause.get_or_insert(k.elapsed());
                    }
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut wb, accepted) = accepting.await.unwrap();
    let killed = killed.expect("the node was killed");
    assert!(
        committed_after >= 5,
        "traffic resumed: {committed_after} exchanges committed after the kill"
    );

    let (ea, eb) = recover_all(&mut wa, &mut wb).await;
    for e in &committed_before {
        assert_eq!(e.phase, Phase::Committed);
        let on_b = eb.iter().find(|b| b.id == e.id).expect("on B");
        assert_eq!(on_b.phase, Phase::Committed, "finished before the kill");
        let on_a = ea.iter().find(|a| a.id == e.id).expect("on A");
        assert_eq!(on_a.phase, Phase::Committed, "finished before the kill");
    }
    let n_swapped = fair(&ea, &eb);
    conserved(&mut wa, &mut wb, &coffee, &ticket, N, n_swapped).await;
    let recovered = ea
        .iter()
        .chain(&eb)
        .filter(|e| matches!(e.phase, Phase::Resolved | Phase::Aborted))
        .count();
    eprintln!(
        "node killed after {KILL_AFTER} exchanges: {N} offered, {accepted} accepted, \
         {done} committed ({committed_after} after the kill), {n_swapped} swapped, \
         {recovered} card sides finished by the TTP; A's host connected to another node \
         {:?} after the kill, an echo from A to B's card answered {:?} after it, the next \
         commitment {:?} after it, all final {:?} after it",
        reconnected.unwrap_or_default(),
        resumed.unwrap_or_default(),
        pause.unwrap_or_default(),
        killed.elapsed()
    );
    r.shutdown().await;
}

/// TTP replicas on PostgreSQL (`--features postgres`).
#[cfg(feature = "postgres")]
mod replicas {
    use std::path::Path;
    use std::process::Child;

    use super::*;

    /// A `tenet ttp` replica: the TTP's identity, decisions in PostgreSQL,
    /// NATS user `user` in the queue group.
    fn replica(w: &World, user: &str, postgres: &str) -> Child {
        let d = w.dir.path();
        let conf = d.join(format!("{user}.toml"));
        let text = format!(
            "[host]\nsocket = {:?}\nstate_dir = {:?}\ndomain = \"{TTP}\"\n\n\
         [remote.nats]\nurl = {:?}\nuser = {user:?}\npassword = \"{user}-secret\"\n\
         queue = \"{QUEUE}\"\n\n\
         [ttp]\nkey = {:?}\ncert = {:?}\nca = {:?}\npostgres = {postgres:?}\n",
            d.join(format!("{user}.sock")),
            d.join(format!("{user}-state")),
            w.cluster.urls(),
            w.ttp.files.key,
            w.ttp.files.cert,
            w.ttp.files.ca,
        );
        std::fs::write(&conf, text).unwrap();
        support::daemon("ttp", &conf).0
    }

    /// The decisions a replica made (its `service_events_total` admissions).
    async fn decided(socket: &Path) -> u64 {
        let st = Capability::acquire(socket)
            .await
            .unwrap()
            .status()
            .await
            .unwrap();
        st.figures
            .iter()
            .filter(|f| {
                f.name == "service_events_total"
                    && f.label("event").is_some_and(|e| e.starts_with("admission"))
            })
            .map(|f| f.value.as_f64() as u64)
            .sum()
    }

    struct Killed(Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Two TTP replicas on one PostgreSQL; one dies while they decide.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ttp_replicas_on_one_postgres_decide_once_and_survive_a_kill() {
        // Within the 16 finished exchanges a card remembers.
        const N: u64 = 16;
        let postgres = std::env::var("TENET_TEST_POSTGRES")
            .expect("TENET_TEST_POSTGRES names the test PostgreSQL (scripts/test.sh starts one)");
        let w = World::new().await;
        let mut r1 = Killed(replica(&w, "ttp1", &postgres));
        let _r2 = Killed(replica(&w, "ttp2", &postgres));
        let (s1, s2) = (
            w.dir.path().join("ttp1.sock"),
            w.dir.path().join("ttp2.sock"),
        );
        // B drops every confirmation (m3): each exchange stops with A's coffee
        // and B's ticket deleted, and needs the TTP.
        let drop_m3 = RuleSpec {
            name: Some("drop-confirmation".into()),
            ingress: Some("remote".into()),
            src: None,
            dst: None,
            src_domain: None,
            dst_domain: None,
            mtype: Some("confirmation".into()),
            action: "drop".into(),
            rate: None,
            burst: None,
        };
        let r = w.hosts(Vec::new(), Some(drop_m3)).await;
        let (mut wa, mut wb, coffee, ticket) = wallets(&r, N).await;
        for i in 0..N {
            wa.offer(B_CARD.owner(), wb.id(), one(&coffee), one(&ticket))
                .await
                .unwrap();
            let o = wb.next_offer(WAIT).await.unwrap().expect("the offer");
            wb.accept(&o).await.unwrap();
            // Stopped: A waits for a commitment, B for the confirmation.
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let a = wa.exchanges().await.unwrap();
                if a.len() as u64 == i + 1 && a.iter().all(|e| e.phase == Phase::AwaitingCommitment)
                {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "A: {a:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let b = wb.exchanges().await.unwrap();
        assert!(b.iter().all(|e| e.phase == Phase::AwaitingConfirmation));

        // Both cards ask at once, A to resolve and B to abort; ttp1 dies once
        // a few are decided.
        let recovering = tokio::spawn(async move {
            let (ea, eb) = recover_all(&mut wa, &mut wb).await;
            (wa, wb, ea, eb)
        });
        let deadline = tokio::time::Instant::now() + WAIT;
        let (mut d1, mut d2);
        loop {
            (d1, d2) = (decided(&s1).await, decided(&s2).await);
            // ttp1 is serving, and most requests are still to come.
            if d1 >= 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{d1} + {d2} decided"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        r1.0.kill().unwrap();
        let _ = r1.0.wait();
        let killed = Instant::now();
        let (mut wa, mut wb, ea, eb) = recovering.await.unwrap();
        let after = decided(&s2).await;
        eprintln!(
            "ttp1 killed after deciding {d1} (ttp2 then {d2}); ttp2 decided {after} in all; \
         every exchange final {:?} after the kill",
            killed.elapsed()
        );
        assert!(
            d1 + d2 < 2 * N,
            "killed mid-run: {d1} + {d2} of {} requests decided before",
            2 * N
        );
        assert!(after > d2, "the surviving replica took over");
        assert_eq!(ea.len() as u64, N);
        assert_eq!(eb.len() as u64, N);
        for e in ea.iter().chain(&eb) {
            assert!(
                matches!(e.phase, Phase::Resolved | Phase::Aborted),
                "decided by the TTP: {:?}",
                e.phase
            );
        }
        let n_swapped = fair(&ea, &eb);
        conserved(&mut wa, &mut wb, &coffee, &ticket, N, n_swapped).await;
        // One decision per exchange id, h(n2), in the shared store, and each
        // card followed it. (The client blocks: off the runtime's threads.)
        let ids: Vec<_> = ea.iter().map(|e| (e.id, e.phase)).collect();
        tokio::task::spawn_blocking(move || {
            let mut store = tenet_voucher_app::ttp::PgDecisions::connect(&postgres).unwrap();
            for (id, phase) in ids {
                let stored =
                    tenet_voucher::ttp::DecisionStore::decide(&mut store, &id, &mut || {
                        panic!("exchange {id:?} has no decision in PostgreSQL")
                    })
                    .unwrap();
                assert_eq!(
                    stored.kind == tenet_voucher::msg::Kind::Resolve,
                    phase == Phase::Resolved,
                    "the cards follow the stored decision"
                );
            }
        })
        .await
        .unwrap();
        r.shutdown().await;
    }
}
