//! `tenet card ...`: make, inspect and serve virtual cards.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use tenet_card::{Card, CardLimits, FileStore, Personalization, SystemEntropy};
use tenet_proto::{Codec, Domain};

/// Card subcommands.
#[derive(Subcommand)]
pub enum CardCmd {
    /// Personalize a new virtual card: the card generates its key pair, which never leaves it.
    ///
    /// The store file holds the card: its key, PIN and PUK (hashed), its
    /// certificate from --ca and the TTP it trusts for good (--ttp,
    /// --ttp-cert). The PUK is printed once if not given; keep it to unblock
    /// the PIN.
    ///
    /// Example: tenet card new --store alice.card --pin-file pin.txt --ca ca --ttp 777777777777777777777777:0 --ttp-cert ca/ttp-entity.pem
    New {
        /// The card's store file (created; never overwritten).
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
        /// The card's domain: 24 hex digits, or `random`.
        #[arg(long, default_value = "random")]
        domain: String,
        /// The PIN, 4 to 12 digits (also --pin-file or TENET_PIN; asked
        /// twice on the terminal if none is given).
        #[command(flatten)]
        pin: crate::pin::PinArgs,
        /// The PUK, 4 to 12 digits; default: 8 random digits, printed once.
        /// Other local users can read a process's arguments: prefer
        /// --puk-file.
        #[arg(long)]
        puk: Option<String>,
        /// Read the PUK from the first line of FILE (owner-only: chmod 600).
        #[arg(long, value_name = "FILE")]
        puk_file: Option<PathBuf>,
        /// Storage budget in bytes (the card's EEPROM).
        #[arg(long, default_value_t = tenet_card::store::DEFAULT_CAPACITY)]
        capacity: usize,
        /// A CA directory (`tenet ca init`): the CA signs the card's public
        /// key, and the card stores its certificate and the CA's.
        #[arg(long, value_name = "DIR")]
        ca: Option<PathBuf>,
        /// Days the card's certificate is valid (with --ca).
        #[arg(long, value_name = "N", default_value_t = tenet_pki::CARD_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500), requires = "ca")]
        days: u32,
        /// The TTP the card's voucher applet trusts (its host entity,
        /// DOMAIN:0), for good: a host cannot swap it. Its admissions must
        /// carry a certificate from the CA naming it.
        #[arg(long, value_name = "ID")]
        ttp: Option<tenet_proto::EntityId>,
        /// The TTP's certificate (PEM, from `tenet ca entity`), pinned on
        /// the card: admissions must carry this certificate or a renewal of
        /// it (same key). Recommended with --ttp.
        #[arg(long, value_name = "FILE", requires = "ttp")]
        ttp_cert: Option<PathBuf>,
        /// Seconds an exchange may stay pending before the card asks the
        /// TTP by itself, then again with backoff; 0: only when a wallet
        /// orders it (`tenet wallet recover`).
        #[arg(long, value_name = "SECS", requires = "ttp",
              default_value_t = tenet_voucher::card::DEFAULT_RECOVER_AFTER)]
        recover_after: u32,
    },
    /// Give a virtual card's key a new certificate from its CA.
    ///
    /// A renewal: the key stays on the card, the new certificate is valid
    /// --days from now. The daemon using the card must be stopped (the store
    /// file is locked while in use).
    ///
    /// Example: tenet card recertify --store alice.card --ca ca --days 365
    Recertify {
        /// The card's store file.
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
        /// The CA directory that personalized the card (`tenet ca init`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Days the new certificate is valid.
        #[arg(long, value_name = "N", default_value_t = tenet_pki::CARD_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Print a virtual card's id and public key.
    ///
    /// Also its PIN tries left, its certificate's validity and the TTP it
    /// trusts, read from the store file without the PIN; --cert-out writes
    /// the certificate.
    ///
    /// Example: tenet card info --store alice.card --cert-out alice.der
    Info {
        /// The card's store file.
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
        /// Also write the card's X.509 certificate (DER) to this file.
        #[arg(long, value_name = "FILE")]
        cert_out: Option<PathBuf>,
    },
    /// Change, unblock or lock the card's PIN.
    ///
    /// Through the host daemon that holds the card (--card DOMAIN:0); `unblock`
    /// also on a store file no daemon holds (--store FILE).
    ///
    /// Example: tenet card pin change --card 0a0b0c0d0e0f101112131415:0
    Pin {
        #[command(flatten)]
        socket: crate::SocketArg,
        #[command(subcommand)]
        cmd: crate::pin_cmd::PinCmd,
    },
    /// Plug a virtual card into pcscd through vsmartcard's vpcd driver.
    ///
    /// The card then sits in the PC/SC reader of that vpcd slot, for a host
    /// daemon with [card] reader = "..." (--features pcsc) or any PC/SC tool
    /// (opensc-tool); it runs until interrupted.
    ///
    /// Example: tenet card serve --store alice.card --vpcd 127.0.0.1:35963
    Serve {
        /// The card's store file.
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
        /// vpcd's address (its reader.conf CHANNELID port).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:35963")]
        vpcd: String,
        /// Largest eTP message the card accepts and emits (34 to 65535).
        #[arg(long, default_value_t = tenet_proto::MAX_MESSAGE_LEN)]
        max_message: usize,
        /// The TTP the card was personalized for (a check: any other is
        /// refused, a host cannot swap the card's TTP).
        #[arg(long, value_name = "ID")]
        ttp: Option<tenet_proto::EntityId>,
    },
}

fn open(store: &Path, limits: CardLimits) -> Result<Card<FileStore>> {
    let s = FileStore::open(store)?;
    Card::open(s, limits, Box::new(SystemEntropy))
        .with_context(|| format!("opening card {}", store.display()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `from .. to` of a certificate (DER), in UTC.
fn valid(der: &[u8]) -> String {
    use tenet_card::clock::Utc;
    match tenet_pki::validity(der) {
        Ok(v) => format!("valid {} to {}", Utc(v.not_before), Utc(v.not_after)),
        Err(e) => format!("unreadable: {e}"),
    }
}

/// Checks that `ttp`, named to serve the card in `store`, is the TTP the
/// card was personalized for.
pub(crate) fn check_ttp(
    card: &Card<FileStore>,
    store: &Path,
    ttp: tenet_proto::EntityId,
) -> Result<()> {
    let data = card
        .state()
        .applets
        .get(&tenet_voucher_app::applet::APPLET_ID)
        .map(Vec::as_slice);
    tenet_voucher_app::applet::VoucherApplet::check_ttp(data, ttp)
        .with_context(|| format!("card {} (--ttp {ttp})", store.display()))
}

pub fn run(cmd: CardCmd) -> Result<ExitCode> {
    match cmd {
        CardCmd::New {
            store,
            domain,
            pin,
            puk,
            puk_file,
            capacity,
            ca,
            days,
            ttp,
            ttp_cert,
            recover_after,
        } => {
            let ttp_cert = ttp_cert
                .map(|p| {
                    use pki_types::pem::PemObject;
                    pki_types::CertificateDer::from_pem_file(&p)
                        .map(|c| c.to_vec())
                        .with_context(|| format!("TTP certificate {}", p.display()))
                })
                .transpose()?;
            if let (Some(t), Some(c)) = (ttp, &ttp_cert)
                && !tenet_pki::names(c, t)
            {
                bail!("the TTP certificate does not name {t} (--ttp)");
            }
            let domain = if domain == "random" {
                let mut b = [0u8; 12];
                getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                Domain::new(b)
            } else {
                domain.parse::<Domain>()?
            };
            if capacity < 1024 {
                bail!("capacity {capacity} is too small; a card needs at least 1024 bytes");
            }
            let pin = match crate::pin::given(pin.pin.as_deref(), pin.pin_file.as_deref())? {
                Some(p) => p,
                None => {
                    let instead = "--pin-file FILE, TENET_PIN or --pin";
                    let first = crate::pin::prompt("PIN", "PIN of the new card", instead)?;
                    if first != crate::pin::prompt("PIN", "The PIN again", instead)? {
                        bail!("the two PINs differ; no card was made");
                    }
                    first
                }
            };
            let puk = crate::pin::given(puk.as_deref(), puk_file.as_deref())?;
            let generated = puk.is_none();
            let puk = match puk {
                Some(p) => p,
                None => {
                    let mut b = [0u8; 8];
                    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                    b.iter().map(|x| char::from(b'0' + x % 10)).collect()
                }
            };
            let s = FileStore::create(&store, capacity)?;
            let p = Personalization {
                domain,
                pin: pin.into_bytes(),
                puk: puk.clone().into_bytes(),
            };
            let made = Card::personalize(s, &p, CardLimits::default(), Box::new(SystemEntropy))
                .map_err(anyhow::Error::from)
                .and_then(|mut card| {
                    if let Some(dir) = &ca {
                        let public_key = card.state().public_key.clone();
                        let (cert, ca_der) = tenet_pki::issue_entity_with(
                            dir,
                            card.id(),
                            &public_key,
                            tenet_pki::Lifetime::days(days),
                        )
                        .with_context(|| format!("CA in {}", dir.display()))?;
                        card.install_certificates(cert, ca_der)?;
                    }
                    if let Some(t) = ttp {
                        card.provision(
                            tenet_voucher_app::applet::APPLET_ID,
                            tenet_voucher_app::applet::initial_data_with(
                                t,
                                ttp_cert.clone(),
                                recover_after,
                            ),
                        )?;
                    }
                    Ok(card)
                });
            let card = match made {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_file(&store);
                    return Err(e);
                }
            };
            println!("card {}", card.id());
            println!("public key {}", hex(&card.state().public_key));
            if let Some(c) = &card.state().certificate {
                println!("certificate {}", valid(c));
            }
            if generated {
                println!("PUK {puk} (write it down; it is shown only now)");
            }
            if ttp.is_some() && ttp_cert.is_none() {
                eprintln!(
                    "note: no --ttp-cert: the card takes any certificate from the CA naming the TTP; pin it with --ttp-cert"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CardCmd::Recertify { store, ca, days } => {
            let mut card = open(&store, CardLimits::default())?;
            let ca_pem = ca.join("ca.pem");
            let ca_der = {
                use pki_types::pem::PemObject;
                pki_types::CertificateDer::from_pem_file(&ca_pem)
                    .with_context(|| format!("CA certificate {}", ca_pem.display()))?
                    .to_vec()
            };
            if card
                .state()
                .ca_certificate
                .as_ref()
                .is_some_and(|c| *c != ca_der)
            {
                bail!(
                    "card {} trusts another CA than {}; recertify it with the CA that personalized it",
                    card.id(),
                    ca_pem.display()
                );
            }
            let before = card.state().certificate.as_deref().map(valid);
            let public_key = card.state().public_key.clone();
            let (cert, ca_der) = tenet_pki::issue_entity_with(
                &ca,
                card.id(),
                &public_key,
                tenet_pki::Lifetime::days(days),
            )
            .with_context(|| format!("CA in {}", ca.display()))?;
            card.install_certificates(cert.clone(), ca_der)?;
            card.raise_clock_bound(now())?;
            println!("card {}", card.id());
            println!("public key {} (unchanged)", hex(&public_key));
            if let Some(b) = before {
                println!("old certificate {b}");
            }
            println!("new certificate {}", valid(&cert));
            Ok(ExitCode::SUCCESS)
        }
        CardCmd::Info { store, cert_out } => {
            let card = open(&store, CardLimits::default())?;
            println!("card {}", card.id());
            println!("public key {}", hex(&card.state().public_key));
            println!("PIN tries left {}", card.state().pin_tries);
            println!("next port {}", card.state().next_port);
            match &card.state().certificate {
                Some(c) => println!("certificate {} bytes (X.509 DER), {}", c.len(), valid(c)),
                None => println!("certificate none (personalize with --ca)"),
            }
            let voucher = card
                .state()
                .applets
                .get(&tenet_voucher_app::applet::APPLET_ID)
                .and_then(|d| tenet_voucher::card::VoucherCard::decode(d).ok());
            match voucher.as_ref().filter(|v| v.ttp.is_some()) {
                Some(v) => {
                    let pinned = ["not pinned", "pinned"][usize::from(v.ttp_certificate.is_some())];
                    println!("TTP {} (certificate {pinned})", v.ttp.expect("filtered"));
                    match v.recover_after {
                        0 => println!("recovery when a wallet orders it (tenet wallet recover)"),
                        s => {
                            println!("recovery by the card after {s} s pending, then with backoff")
                        }
                    }
                }
                None => println!("TTP none (personalize with --ttp and --ttp-cert)"),
            }
            println!(
                "clock bound {}",
                tenet_card::clock::Utc(card.state().clock_bound)
            );
            if let Some(out) = cert_out {
                let c = card
                    .state()
                    .certificate
                    .as_ref()
                    .context("the card has no certificate")?;
                std::fs::write(&out, c).with_context(|| format!("writing {}", out.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        // Talks to the daemon: run by `main` on the async runtime.
        CardCmd::Pin { .. } => bail!("`tenet card pin` runs on the async runtime"),
        CardCmd::Serve {
            store,
            vpcd,
            max_message,
            ttp,
        } => {
            if !(tenet_proto::HEADER_LEN..=tenet_proto::MAX_MESSAGE_LEN).contains(&max_message) {
                bail!("--max-message {max_message} is not between 34 and 65535");
            }
            let mut card = open(&store, CardLimits { max_message })?;
            if let Some(t) = ttp {
                check_ttp(&card, &store, t)?;
            }
            card.install(Box::new(tenet_voucher_app::applet::VoucherApplet::new(ttp)));
            eprintln!("card {} serving vpcd at {vpcd}", card.id());
            tenet_card::vpcd::serve(&mut card, &vpcd)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
