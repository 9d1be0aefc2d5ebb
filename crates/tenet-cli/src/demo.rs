//! `tenet demo`: the voucher exchange on embedded defaults. Three host
//! daemons on loopback linked over TLS (Alice and Bob with a virtual card
//! each, and the TTP with SQLite); the wallets authenticate and mint,
//! Alice's wallet offers, Bob's accepts, the cards trade by themselves.
//! `--interrupt-after STEP` drops the next message after that step (a guard
//! rule on the receiving host) and shows the recovery through the TTP.

use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use tenet_client::wallet::Wallet;
use tenet_client::{Capability, Incoming};
use tenet_host::HostHandle;
use tenet_host::config::{PeerSection, TtpSection};
use tenet_proto::{Domain, EntityId, Filter, Message};
use tenet_voucher::card::ExchangeSummary;
use tenet_voucher::model::{Amount, VoucherClass};

pub(crate) const WAIT: Duration = Duration::from_secs(10);
pub(crate) const PIN: &[u8] = b"1234";

/// Where `--interrupt-after` cuts the run: the message after this step is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_amounts(b: &[Amount]) -> String {
    let items: Vec<String> = b
        .iter()
        .map(|a| {
            format!(
                "{{\"issuer\":\"{}\",\"promise\":{},\"quantity\":{}}}",
                a.class.issuer,
                json_str(&a.class.promise),
                a.quantity
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

struct Flow {
    step: usize,
    src: String,
    dst: String,
    mtype: String,
    bytes: usize,
    ms: f64,
}

pub(crate) fn host_config(
    dir: &std::path::Path,
    ca: &std::path::Path,
    name: &str,
    sw: Domain,
    more: &[Domain],
    port: u16,
) -> Result<tenet_host::Config> {
    let mut domains = vec![sw];
    domains.extend_from_slice(more);
    let files = tenet_pki::issue_host(ca, name, &domains)?;
    let mut cfg = tenet_host::Config::default();
    cfg.host.socket = Some(dir.join(format!("{name}.sock")));
    cfg.host.state_dir = Some(dir.join(format!("{name}-state")));
    cfg.host.domain = Some(sw.to_string());
    cfg.remote.listen = Some(format!("127.0.0.1:{port}"));
    (cfg.remote.ca, cfg.remote.cert, cfg.remote.key) =
        (Some(files.ca), Some(files.cert), Some(files.key));
    Ok(cfg)
}

pub(crate) fn make_card(
    dir: &std::path::Path,
    ca: &std::path::Path,
    name: &str,
    cd: Domain,
    ttp: EntityId,
    ttp_cert: &[u8],
) -> Result<std::path::PathBuf> {
    let store = dir.join(format!("{name}.card"));
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
    let (cert, ca_der) = tenet_pki::issue_entity(ca, card.id(), &card.state().public_key.clone())?;
    card.install_certificates(cert, ca_der)?;
    card.provision(
        tenet_voucher_app::applet::APPLET_ID,
        tenet_voucher_app::applet::initial_data(ttp, Some(ttp_cert.to_vec())),
    )?;
    Ok(store)
}

pub(crate) async fn wait_links(from: &HostHandle, to: &[EntityId]) -> Result<()> {
    let mut probe = Capability::acquire(from.socket_path()).await?;
    for dst in to {
        let deadline = tokio::time::Instant::now() + WAIT;
        while probe
            .echo(*dst, b"", Duration::from_millis(500))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                bail!("no link to {dst}");
            }
        }
    }
    Ok(())
}

async fn all_final(w: &mut Wallet) -> Result<Option<Vec<ExchangeSummary>>> {
    let ex = w.exchanges().await?;
    Ok((!ex.is_empty() && ex.iter().all(|e| e.phase.is_final())).then_some(ex))
}

pub async fn run(interrupt: Option<Step>, json: bool) -> Result<ExitCode> {
    let t_run = Instant::now();
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca");
    tenet_pki::ensure_ca(&ca, "demo CA")?;
    let (ds, da, dca, db, dcb) = (
        Domain::new([0x77; 12]),
        Domain::new([0xa1; 12]),
        Domain::new([0xca; 12]),
        Domain::new([0xb2; 12]),
        Domain::new([0xcb; 12]),
    );
    let ttp = ds.owner();
    let (pt, pa, pb) = (free_port()?, free_port()?, free_port()?);

    // The TTP: a host whose own entity decides, with SQLite.
    let mut ct = host_config(dir.path(), &ca, "ttp", ds, &[], pt)?;
    let tf = tenet_pki::issue_entity_key(&ca, "ttp", ttp)?;
    ct.ttp = Some(TtpSection {
        key: tf.key,
        cert: tf.cert,
        ca: tf.ca,
        database: Some(dir.path().join("ttp.sqlite")),
        postgres: None,
    });
    let ttp_cert = {
        use pki_types::pem::PemObject;
        pki_types::CertificateDer::from_pem_file(&ct.ttp.as_ref().context("TTP configured")?.cert)?
            .to_vec()
    };
    let ht = tenet_voucher_app::start(&ct).await?;

    // Alice and Bob: a card each (key made on the card, certificate from the CA, the TTP's id).
    let mut ca_cfg = host_config(dir.path(), &ca, "alice", da, &[dca], pa)?;
    ca_cfg.card.virtual_store = Some(make_card(dir.path(), &ca, "alice", dca, ttp, &ttp_cert)?);
    ca_cfg.remote.peers = vec![PeerSection {
        address: format!("127.0.0.1:{pt}"),
        domains: vec![],
    }];
    let mut cb_cfg = host_config(dir.path(), &ca, "bob", db, &[dcb], pb)?;
    cb_cfg.card.virtual_store = Some(make_card(dir.path(), &ca, "bob", dcb, ttp, &ttp_cert)?);
    cb_cfg.remote.peers = vec![
        PeerSection {
            address: format!("127.0.0.1:{pa}"),
            domains: vec![],
        },
        PeerSection {
            address: format!("127.0.0.1:{pt}"),
            domains: vec![],
        },
    ];
    if let Some(step) = interrupt {
        let (lost, at) = step.lost();
        let rule = toml::from_str(&format!(
            "name = \"demo-interrupt\"\ningress = \"remote\"\nmtype = \"{lost}\"\naction = \"drop\""
        ))?;
        if at == "alice" {
            &mut ca_cfg
        } else {
            &mut cb_cfg
        }
        .guard
        .rules
        .push(rule);
    }
    let ha = tenet_voucher_app::start(&ca_cfg).await?;
    let hb = tenet_voucher_app::start(&cb_cfg).await?;
    wait_links(&hb, &[dca.owner(), ttp]).await?;
    wait_links(&ha, &[ttp]).await?;

    let mut alice = Wallet::open(
        Capability::acquire(ha.socket_path()).await?,
        dca.owner(),
        PIN,
    )
    .await?;
    let mut bob = Wallet::open(
        Capability::acquire(hb.socket_path()).await?,
        dcb.owner(),
        PIN,
    )
    .await?;
    let names: HashMap<EntityId, &str> = [
        (alice.id(), "alice's wallet"),
        (alice.card(), "alice's card"),
        (bob.id(), "bob's wallet"),
        (bob.card(), "bob's card"),
        (ttp, "the TTP"),
    ]
    .into_iter()
    .collect();
    let name = |id: EntityId| names.get(&id).map_or(id.to_string(), |n| (*n).to_owned());

    // The issuers: each card mints its own class for its wallet.
    let coffee = VoucherClass {
        issuer: dca,
        promise: "coffee at Alice's".into(),
    };
    let ticket = VoucherClass {
        issuer: dcb,
        promise: "cinema ticket from Bob".into(),
    };
    let before_a = alice
        .mint(Amount {
            class: coffee.clone(),
            quantity: 5,
        })
        .await?;
    let before_b = bob
        .mint(Amount {
            class: ticket.clone(),
            quantity: 3,
        })
        .await?;

    // Taps on both hosts see the message flow (paper 5.4.1).
    let mut taps = Vec::new();
    for h in [&ha, &hb, &ht] {
        let mut t = Capability::acquire(h.socket_path()).await?;
        t.tap(Filter::ANY).await?;
        taps.push(t);
    }

    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    alice
        .offer(
            bob.card(),
            bob.id(),
            Amount {
                class: coffee,
                quantity: 2,
            },
            Amount {
                class: ticket,
                quantity: 1,
            },
        )
        .await?;
    let offer = bob
        .next_offer(WAIT)
        .await?
        .context("the offer never reached bob's wallet")?;
    bob.accept(&offer).await?;

    // Wait until both cards are final (the main protocol), or stuck (interrupted).
    let deadline = tokio::time::Instant::now()
        + if interrupt.is_some() {
            Duration::from_millis(800)
        } else {
            WAIT
        };
    let mut latency = None;
    loop {
        if let (Some(_), Some(_)) = (all_final(&mut alice).await?, all_final(&mut bob).await?) {
            latency = Some(t0.elapsed());
            break;
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if latency.is_none() && interrupt.is_none() {
        bail!("the exchange did not finish");
    }
    let mut recovered = Vec::new();
    if latency.is_none() {
        // Interrupted: both wallets recover what is pending, through the TTP.
        recovered.extend(alice.auto_recover(Duration::from_millis(100)).await?);
        recovered.extend(bob.auto_recover(Duration::from_millis(100)).await?);
    }
    let total = t0.elapsed();
    let after_a = alice.balances().await?;
    let after_b = bob.balances().await?;

    // Collect the flow: voucher messages seen on any host, once each, in time order.
    let mut seen = BTreeSet::new();
    let mut flow: Vec<(SystemTime, Message)> = Vec::new();
    for t in &mut taps {
        while let Ok(Ok(Incoming::Tapped { at, message, .. })) =
            tokio::time::timeout(Duration::from_millis(100), t.next()).await
        {
            let m = message.mtype().0;
            // The exchange's messages, recovery included (0x0201-0x0209).
            if (0x0201..=0x0209).contains(&m)
                && seen.insert((message.src(), message.dst(), m, message.param.clone()))
            {
                flow.push((at, message));
            }
        }
    }
    flow.sort_by_key(|(at, _)| *at);
    let steps: Vec<Flow> = flow
        .iter()
        .enumerate()
        .map(|(i, (at, m))| Flow {
            step: i + 1,
            src: name(m.src()),
            dst: name(m.dst()),
            mtype: m.mtype().to_string(),
            bytes: m.encoded_len(),
            ms: at
                .duration_since(t0_wall)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3),
        })
        .collect();
    let count = |b: &[Amount], c: &str| {
        b.iter()
            .find(|a| a.class.promise.starts_with(c))
            .map_or(0, |a| a.quantity)
    };
    let coffee_total = count(&after_a, "coffee") + count(&after_b, "coffee");
    let ticket_total = count(&after_a, "cinema") + count(&after_b, "cinema");
    let swapped = count(&after_a, "cinema") == 1 && count(&after_b, "coffee") == 2;
    let restored = count(&after_a, "coffee") == 5 && count(&after_b, "cinema") == 3;
    let outcome = match (swapped, restored) {
        (true, _) => "swapped",
        (_, true) => "restored",
        _ => "UNFAIR",
    };

    if json {
        let steps_json: Vec<String> = steps
            .iter()
            .map(|f| {
                format!(
                    "{{\"step\":{},\"src\":{},\"dst\":{},\"mtype\":{},\"bytes\":{},\"ms\":{:.3}}}",
                    f.step,
                    json_str(&f.src),
                    json_str(&f.dst),
                    json_str(&f.mtype),
                    f.bytes,
                    f.ms
                )
            })
            .collect();
        println!(
            "{{\"interrupt_after\":{},\"flow\":[{}],\"before\":{{\"alice\":{},\"bob\":{}}},\"after\":{{\"alice\":{},\"bob\":{}}},\"outcome\":\"{outcome}\",\"exchange_ms\":{},\"total_ms\":{:.3},\"run_ms\":{:.3}}}",
            interrupt.map_or("null".into(), |s| json_str(
                &format!("{s:?}").to_lowercase()
            )),
            steps_json.join(","),
            json_amounts(&before_a),
            json_amounts(&before_b),
            json_amounts(&after_a),
            json_amounts(&after_b),
            latency.map_or("null".into(), |l| format!("{:.3}", l.as_secs_f64() * 1e3)),
            total.as_secs_f64() * 1e3,
            t_run.elapsed().as_secs_f64() * 1e3,
        );
    } else {
        println!("TENeT voucher exchange demo: three hosts on loopback over TLS 1.3");
        println!(
            "  alice {} with card {}, bob {} with card {}, the TTP {} (SQLite)",
            da.owner(),
            dca.owner(),
            db.owner(),
            dcb.owner(),
            ttp
        );
        println!(
            "\nbefore: alice holds {}; bob holds {}",
            show(&before_a),
            show(&before_b)
        );
        if let Some(step) = interrupt {
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
        for f in &steps {
            println!(
                "{:>4}  {:<16} -> {:<16} {:<18} {:>6}  {:>9.3}",
                f.step, f.src, f.dst, f.mtype, f.bytes, f.ms
            );
        }
        for (id, phase) in &recovered {
            println!("      recovered exchange {id}: {phase:?}");
        }
        println!(
            "\nafter: alice holds {}; bob holds {}",
            show(&after_a),
            show(&after_b)
        );
        match latency {
            Some(l) => println!(
                "the exchange took {:.1} ms as the wallets saw it (offer to both cards final)",
                l.as_secs_f64() * 1e3
            ),
            None => println!(
                "interrupted and recovered in {:.1} ms",
                total.as_secs_f64() * 1e3
            ),
        }
        println!(
            "outcome: {outcome}; coffee {coffee_total} of 5 and tickets {ticket_total} of 3 accounted for"
        );
    }
    drop((alice, bob, taps));
    for h in [ha, hb, ht] {
        h.shutdown().await;
    }
    if outcome == "UNFAIR" || coffee_total != 5 || ticket_total != 3 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
