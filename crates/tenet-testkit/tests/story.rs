//! `tenet demo --story`: the vouchers' whole life across four hosts.

use tenet_testkit::story;

/// Every act happens as told: the exchange, the gift and the redemption
/// each run the four protocol messages, the receipt verifies with the CA,
/// the gate lets Carol in, and every voucher is accounted for (one coffee
/// destroyed for the receipt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_mints_trades_gives_redeems_and_presents() {
    let dir = tempfile::tempdir().unwrap();
    check(story::run(dir.path()).await.unwrap());
}

/// The same story with every host linked through a nats-server only
/// (scripts/test.sh installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_runs_over_nats_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = story::run_over(dir.path(), story::Links::Nats)
        .await
        .expect("the story over NATS (scripts/test.sh installs nats-server)");
    check(s);
}

fn check(s: story::Story) {
    let names: Vec<&str> = s.acts.iter().map(|a| a.name).collect();
    assert_eq!(names, ["mint", "exchange", "gift", "redeem", "present"]);
    for a in &s.acts[1..4] {
        let m: Vec<&str> = a.flow.iter().map(|f| f.mtype.as_str()).collect();
        for step in ["offer", "agreement", "confirmation", "commitment"] {
            assert!(m.contains(&step), "{}: {m:?}", a.name);
        }
    }
    let redeem = &s.acts[3];
    assert!(
        redeem.said[1].ends_with("verified offline with the CA"),
        "{:?}",
        redeem.said
    );
    let present = &s.acts[4];
    assert!(
        present.said[1].starts_with("the gate lets carol in"),
        "{:?}",
        present.said
    );
    assert!(
        present
            .flow
            .iter()
            .any(|f| f.mtype == "presentation" && f.dst == "the cinema gate")
    );
    assert_eq!(
        s.totals,
        (4, 3, 1),
        "4 coffees held, 1 destroyed; 3 tickets"
    );
    assert!(s.conserved());
    let [alice, bob, carol] = &present.after;
    assert_eq!(alice, "3 coffee at Alice's");
    assert!(
        bob.contains("1 coffee at Alice's") && bob.contains("2 cinema ticket"),
        "{bob}"
    );
    assert_eq!(carol, "1 cinema ticket from Bob");
    let text = s.text();
    assert!(text.contains("all accounted for"), "{text}");
}
