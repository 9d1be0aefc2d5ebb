//! Topologies started for real: hosts dial the addresses their peers
//! report, and the demo's exchange ends fair wherever it is cut.

use std::time::Duration;

use tenet_client::Capability;
use tenet_proto::Domain;
use tenet_testkit::exchange::{Cut, Outcome};
use tenet_testkit::{Ca, CardSpec, HostSpec, Topology};

#[tokio::test]
async fn hosts_dial_the_address_their_peer_reports() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create(dir.path().join("ca"), "test CA").unwrap();
    let (da, db, dcb) = (
        Domain::new([0xa1; 12]),
        Domain::new([0xb2; 12]),
        Domain::new([0xcb; 12]),
    );
    // Listed dialer first: the kit starts the listener first anyway.
    let hosts = Topology::new(dir.path(), ca)
        .host(HostSpec::new("b", db).card(CardSpec::new(dcb)).peer("a"))
        .host(HostSpec::new("a", da))
        .start()
        .await
        .unwrap();
    let order: Vec<&str> = hosts.hosts().map(|(n, _)| n).collect();
    assert_eq!(order, ["a", "b"]);
    for name in ["a", "b"] {
        let addr = hosts.remote_addr(name).unwrap();
        assert!(
            addr.ip().is_loopback() && addr.port() != 0,
            "{name}: {addr}"
        );
        assert_eq!(Some(addr), hosts.host(name).remote_addr());
    }
    // Started means linked: A reaches B's card at once, and B reaches A.
    let mut on_a = Capability::acquire(hosts.host("a").socket_path())
        .await
        .unwrap();
    on_a.echo(dcb.owner(), b"", Duration::from_secs(2))
        .await
        .unwrap();
    let mut on_b = Capability::acquire(hosts.host("b").socket_path())
        .await
        .unwrap();
    on_b.echo(da.owner(), b"", Duration::from_secs(2))
        .await
        .unwrap();
    drop((on_a, on_b));
    hosts.shutdown().await;
}

#[tokio::test]
async fn a_host_that_dials_a_host_not_in_the_topology_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create(dir.path().join("ca"), "test CA").unwrap();
    let err = Topology::new(dir.path(), ca)
        .host(HostSpec::new("a", Domain::new([0xa1; 12])).peer("nobody"))
        .start()
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "host \"a\" dials \"nobody\", which is not in the topology"
    );
}

/// The demo's run, uncut and cut after each step: fair, every voucher
/// accounted for, swapped unless the agreement was lost before Alice's
/// card committed to anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_exchange_is_fair_wherever_it_is_cut() {
    for (cut, outcome) in [
        (None, Outcome::Swapped),
        (Some(Cut::Accept), Outcome::Restored),
        (Some(Cut::Agreement), Outcome::Swapped),
        (Some(Cut::Confirmation), Outcome::Swapped),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ran = tenet_testkit::exchange::run(dir.path(), cut).await.unwrap();
        assert!(ran.fair(), "{cut:?}: {}", ran.text());
        assert_eq!(ran.outcome(), outcome, "{cut:?}: {}", ran.text());
        assert_eq!(ran.latency.is_some(), cut.is_none(), "{cut:?}");
        assert_eq!(ran.recovered.is_empty(), cut.is_none(), "{cut:?}");
        let json = ran.json().unwrap();
        // The keys of `tenet demo --json`, in this order, once each.
        let at: Vec<usize> = [
            "interrupt_after",
            "flow",
            "before",
            "after",
            "outcome",
            "exchange_ms",
            "total_ms",
            "run_ms",
        ]
        .iter()
        .map(|k| json.find(&format!("\"{k}\":")).unwrap())
        .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 8, "{json}");
        assert_eq!(v["outcome"], outcome.to_string());
    }
}
