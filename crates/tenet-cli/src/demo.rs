//! `tenet demo`: two hosts on loopback linked over TLS, each with an
//! in-process virtual card running the voucher applet; the wallet apps
//! authenticate, mint, and trade vouchers; the cards run the exchange
//! themselves across the hosts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tenet_client::Capability;
use tenet_host::config::PeerSection;
use tenet_proto::card::{PinOutcome, PinStatus, VerifyPin};
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, Domain, EntityId, Filter, Message, Mtype};
use tenet_voucher::card::{BALANCE_REQUEST, BALANCES, MINT, decode_balances};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{self, Offer, StartExchange};

const WAIT: Duration = Duration::from_secs(10);
const PIN: &[u8] = b"1234";

struct Side {
    name: &'static str,
    card: EntityId,
    host: tenet_host::HostHandle,
    wallet: Capability,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn expect(wallet: &mut Capability, mtype: Mtype) -> Result<Message> {
    loop {
        let m = tokio::time::timeout(WAIT, wallet.receive())
            .await
            .context("no answer in time")??;
        if m.mtype() == mtype {
            return Ok(m);
        }
        if m.mtype() == Mtype::REFUSED {
            let r = Refused::decode(&m.param)?;
            bail!("{} refused {}: {}", m.src(), r.mtype, r.text);
        }
    }
}

async fn balances(s: &mut Side) -> Result<String> {
    s.wallet.send(s.card, BALANCE_REQUEST, Vec::new()).await?;
    let m = expect(&mut s.wallet, BALANCES).await?;
    let b = decode_balances(&m.param)?;
    Ok(b.iter()
        .map(|a| format!("{} {}", a.quantity, a.class.promise))
        .collect::<Vec<_>>()
        .join(", "))
}

pub async fn run() -> Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca");
    tenet_host::certs::ensure_ca(&ca, "demo CA")?;
    let ttp = Domain::new([0x77; 12]).owner();
    println!(
        "TENeT voucher exchange demo: two hosts on loopback over TLS, a virtual card on each.\n"
    );

    // Personalize a card per side and make the hosts' TLS certificates.
    let mut starts = Vec::new();
    for (name, sw, cd) in [
        ("alice", [0xa1u8; 12], [0xca; 12]),
        ("bob", [0xb2; 12], [0xcb; 12]),
    ] {
        let (sw, cd) = (Domain::new(sw), Domain::new(cd));
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
        starts.push((name, sw, cd, store, files, free_port()?));
    }
    let mut sides = Vec::new();
    let alice_port = starts[0].5;
    for (name, sw, cd, store, files, port) in starts {
        let mut cfg = tenet_host::Config::default();
        cfg.host.socket = Some(dir.path().join(format!("{name}.sock")));
        cfg.host.state_dir = Some(dir.path().join(format!("{name}-state")));
        cfg.host.domain = Some(sw.to_string());
        cfg.card.virtual_store = Some(store);
        cfg.card.ttp = Some(ttp.to_string());
        cfg.remote.listen = Some(format!("127.0.0.1:{port}"));
        (cfg.remote.ca, cfg.remote.cert, cfg.remote.key) =
            (Some(files.ca), Some(files.cert), Some(files.key));
        if name == "bob" {
            cfg.remote.peers = vec![PeerSection {
                address: format!("127.0.0.1:{alice_port}"),
                domains: Vec::new(),
            }];
        }
        let host = tenet_host::start(&cfg).await?;
        let mut wallet = Capability::acquire(host.socket_path()).await?;
        // Per-entity authentication: the wallet proves the PIN to its card.
        wallet
            .send(
                cd.owner(),
                Mtype::VERIFY_PIN,
                VerifyPin { pin: PIN.to_vec() }.to_bytes(),
            )
            .await?;
        let st = PinStatus::decode(&expect(&mut wallet, Mtype::PIN_STATUS).await?.param)?;
        if st.outcome != PinOutcome::Verified {
            bail!("{name}: PIN not verified: {st:?}");
        }
        sides.push(Side {
            name,
            card: cd.owner(),
            host,
            wallet,
        });
    }
    let (mut alice, mut bob) = {
        let mut it = sides.into_iter();
        (it.next().expect("two sides"), it.next().expect("two sides"))
    };

    // Each issuer mints vouchers of its own class.
    let coffee = VoucherClass {
        issuer: alice.card.domain(),
        promise: "coffee at Alice's".into(),
    };
    let ticket = VoucherClass {
        issuer: bob.card.domain(),
        promise: "cinema ticket from Bob".into(),
    };
    alice
        .wallet
        .send(
            alice.card,
            MINT,
            Amount {
                class: coffee.clone(),
                quantity: 5,
            }
            .to_bytes(),
        )
        .await?;
    bob.wallet
        .send(
            bob.card,
            MINT,
            Amount {
                class: ticket.clone(),
                quantity: 3,
            }
            .to_bytes(),
        )
        .await?;
    for s in [&mut alice, &mut bob] {
        let held = balances(s).await?;
        println!("{}: wallet {} holds {held}", s.name, s.wallet.id());
    }

    // Watch the traffic on Alice's host (paper 5.4.1's progress hooks).
    let mut watch = Capability::acquire(alice.host.socket_path()).await?;
    watch.tap(Filter::ANY).await?;

    println!(
        "\nalice's wallet orders her card: give 2 coffee, want 1 cinema ticket from bob's card"
    );
    let start = StartExchange {
        responder: bob.card,
        peer_wallet: bob.wallet.id(),
        give: Amount {
            class: coffee.clone(),
            quantity: 2,
        },
        want: Amount {
            class: ticket.clone(),
            quantity: 1,
        },
    };
    alice
        .wallet
        .send(alice.card, msg::START_EXCHANGE, start.to_bytes())
        .await?;
    let offer_msg = expect(&mut bob.wallet, msg::OFFER).await?;
    let offer = Offer::decode(&offer_msg.param)?;
    println!(
        "bob's wallet got the offer from {}: {} for {}; bob accepts",
        offer_msg.src(),
        offer.give,
        offer.want
    );
    bob.wallet
        .send(bob.card, msg::ACCEPT, offer_msg.param)
        .await?;

    // The cards finish on their own; wait until bob's card has stored v1.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = balances(&mut alice).await?;
        let b = balances(&mut bob).await?;
        if a.contains("cinema") && b.contains("coffee") {
            println!("\nafter the exchange:\n  alice holds {a}\n  bob holds {b}");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the exchange did not finish: alice {a}; bob {b}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let (apdus, out, inn) = alice.host.card_link_stats().unwrap_or_default();
    println!("\nalice's card link: {apdus} APDUs, {out} bytes to the card, {inn} bytes back");
    println!(
        "(the TTP service, recovery over the network and the wallet CLI come next; see docs/vouchers.md)"
    );
    for s in [alice, bob] {
        drop(s.wallet);
        s.host.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}
