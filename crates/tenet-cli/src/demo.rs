//! `tenet demo`: two hosts on loopback linked over TLS, each with an
//! in-process virtual card running the voucher applet; the wallet apps
//! authenticate, mint, and trade vouchers; the cards run the exchange
//! themselves across the hosts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tenet_client::Capability;
use tenet_client::wallet::Wallet;
use tenet_host::config::PeerSection;
use tenet_proto::{Domain, Filter};
use tenet_voucher::model::{Amount, VoucherClass};

const WAIT: Duration = Duration::from_secs(10);
const PIN: &[u8] = b"1234";

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn show(b: &[Amount]) -> String {
    b.iter()
        .map(|a| format!("{} {}", a.quantity, a.class.promise))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run() -> Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca");
    tenet_host::certs::ensure_ca(&ca, "demo CA")?;
    let ttp = Domain::new([0x77; 12]).owner();
    println!(
        "TENeT voucher exchange demo: two hosts on loopback over TLS, a virtual card on each.\n"
    );

    let mut hosts = Vec::new();
    let mut wallets = Vec::new();
    let mut alice_port = 0;
    for (name, sw, cd) in [
        ("alice", [0xa1u8; 12], [0xca; 12]),
        ("bob", [0xb2; 12], [0xcb; 12]),
    ] {
        let (sw, cd) = (Domain::new(sw), Domain::new(cd));
        // The card makes its key; the CA certifies its public key.
        let store = dir.path().join(format!("{name}.card"));
        let p = tenet_card::Personalization {
            domain: cd,
            pin: PIN.to_vec(),
            puk: b"12345678".to_vec(),
        };
        let mut card = tenet_card::Card::personalize(
            tenet_card::FileStore::create(&store, 32 * 1024)?,
            &p,
            Default::default(),
            Box::new(tenet_card::SystemEntropy),
        )?;
        let (cert, ca_der) =
            tenet_host::certs::issue_entity(&ca, card.id(), &card.state().public_key.clone())?;
        card.install_certificates(cert, ca_der)?;
        drop(card);
        let files = tenet_host::certs::issue_host(&ca, name, &[sw, cd])?;
        println!(
            "{name}: host {} with card {} (key made on the card, certificate from the CA)",
            sw.owner(),
            cd.owner()
        );

        let port = free_port()?;
        let mut cfg = tenet_host::Config::default();
        cfg.host.socket = Some(dir.path().join(format!("{name}.sock")));
        cfg.host.state_dir = Some(dir.path().join(format!("{name}-state")));
        cfg.host.domain = Some(sw.to_string());
        cfg.card.virtual_store = Some(store);
        cfg.card.ttp = Some(ttp.to_string());
        cfg.remote.listen = Some(format!("127.0.0.1:{port}"));
        (cfg.remote.ca, cfg.remote.cert, cfg.remote.key) =
            (Some(files.ca), Some(files.cert), Some(files.key));
        if name == "alice" {
            alice_port = port;
        } else {
            cfg.remote.peers = vec![PeerSection {
                address: format!("127.0.0.1:{alice_port}"),
                domains: Vec::new(),
            }];
        }
        let host = tenet_host::start(&cfg).await?;
        // Per-entity authentication: the wallet proves the PIN to its card.
        let cap = Capability::acquire(host.socket_path()).await?;
        let wallet = Wallet::open(cap, cd.owner(), PIN)
            .await
            .with_context(|| format!("{name}'s wallet"))?;
        hosts.push(host);
        wallets.push(wallet);
    }
    let mut bob = wallets.pop().context("two wallets")?;
    let mut alice = wallets.pop().context("two wallets")?;

    // Each issuer mints vouchers of its own class.
    let coffee = VoucherClass {
        issuer: alice.card().domain(),
        promise: "coffee at Alice's".into(),
    };
    let ticket = VoucherClass {
        issuer: bob.card().domain(),
        promise: "cinema ticket from Bob".into(),
    };
    let a = alice
        .mint(Amount {
            class: coffee.clone(),
            quantity: 5,
        })
        .await?;
    println!("alice: wallet {} holds {}", alice.id(), show(&a));
    let b = bob
        .mint(Amount {
            class: ticket.clone(),
            quantity: 3,
        })
        .await?;
    println!("bob: wallet {} holds {}", bob.id(), show(&b));

    // Watch the traffic on Alice's host (paper 5.4.1's progress hooks).
    let mut watch = Capability::acquire(hosts[0].socket_path()).await?;
    watch.tap(Filter::ANY).await?;

    println!(
        "\nalice's wallet orders her card: give 2 coffee, want 1 cinema ticket from bob's card"
    );
    let give = Amount {
        class: coffee,
        quantity: 2,
    };
    let want = Amount {
        class: ticket,
        quantity: 1,
    };
    alice.offer(bob.card(), bob.id(), give, want).await?;
    let offer = bob
        .next_offer(WAIT)
        .await?
        .context("the offer never reached bob's wallet")?;
    println!(
        "bob's wallet got the offer from {}: {} for {}; bob accepts",
        offer.offer.initiator, offer.offer.give, offer.offer.want
    );
    bob.accept(&offer).await?;

    // The cards finish on their own; wait until both exchanges are final.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let done = |w: Vec<tenet_voucher::card::ExchangeSummary>| {
            !w.is_empty() && w.iter().all(|e| e.phase.is_final())
        };
        if done(alice.exchanges().await?) && done(bob.exchanges().await?) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the exchange did not finish in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "\nafter the exchange:\n  alice holds {}\n  bob holds {}",
        show(&alice.balances().await?),
        show(&bob.balances().await?)
    );
    println!("\nthe exchange as seen on alice's host (a tap):");
    while let Ok(Ok(tenet_client::Incoming::Tapped { message: m, .. })) =
        tokio::time::timeout(Duration::from_millis(200), watch.next()).await
    {
        if (0x0201..=0x0209).contains(&m.mtype().0) {
            println!(
                "  {} -> {} {} ({} bytes)",
                m.src(),
                m.dst(),
                m.mtype(),
                m.param.len()
            );
        }
    }
    let (apdus, out, inn) = hosts[0].card_link_stats().unwrap_or_default();
    println!("\nalice's card link: {apdus} APDUs, {out} bytes to the card, {inn} bytes back");
    println!("(recovery through the TTP is tested across daemons; see docs/vouchers.md)");
    drop((alice, bob, watch));
    for h in hosts {
        h.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}
