//! `tenet card ...`: make, inspect and serve virtual cards.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use tenet_card::{Card, CardLimits, FileStore, SystemEntropy};
use tenet_proto::Domain;

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
    /// Write a certificate request for a virtual card's key.
    ///
    /// Personalization away from the CA: the card signs the request with its
    /// key, which never leaves it; the CA signs it (`tenet ca sign --role card
    /// --id DOMAIN:0`) and `install-cert` stores the certificate on the card.
    ///
    /// Example: tenet card csr --store alice.card --out alice-card.csr
    Csr {
        /// The card's store file.
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
        /// Where to write the request (PEM).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Store a certificate signed by the CA on a virtual card.
    ///
    /// It must name the card, certify its key and chain to --ca-cert, which
    /// the card then trusts (on a renewal: the CA the card already trusts).
    ///
    /// Example: tenet card install-cert --store alice.card --cert alice-card.pem --ca-cert ca.pem
    InstallCert {
        /// The card's store file.
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
        /// The card's certificate (PEM, from `tenet ca sign --role card`).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The CA's certificate (PEM).
        #[arg(long, value_name = "FILE")]
        ca_cert: PathBuf,
    },
    /// Print a virtual card's id and public key.
    ///
    /// Also its PIN tries left, its certificate's validity and the TTP it
    /// trusts, read from the store file without the PIN; --cert-out writes
    /// the certificate.
    ///
    /// Example: tenet card info --store alice.card --cert-out alice.cvc
    Info {
        /// The card's store file.
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
        /// Also write the card's CV certificate (the form it sends) to this
        /// file.
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

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b)
}

pub(crate) use tenet_voucher_app::admin::{hex, read_certificate_file, valid};

/// The DER of the PEM certificate `path`.
pub(crate) fn pem(path: &Path) -> Result<Vec<u8>> {
    use pki_types::pem::PemObject;
    let der = pki_types::CertificateDer::from_pem_file(path);
    Ok(der
        .with_context(|| format!("certificate {}", path.display()))?
        .to_vec())
}

/// The anchor (`tenet_pki::cv`) of the CA certificate `path`: what
/// verifiers of cards' signatures trust.
pub(crate) fn anchor(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let a = tenet_pki::cv::Anchor::from_pem(&text);
    Ok(
        a.with_context(|| format!("CA certificate {}", path.display()))?
            .to_bytes(),
    )
}

/// Checks that `ttp`, named to serve the card in `store`, is the TTP the
/// card was personalized for.
pub(crate) fn check_ttp(
    card: &Card<FileStore>,
    store: &Path,
    ttp: tenet_proto::EntityId,
) -> Result<()> {
    let data = tenet_voucher_app::applet::applet_data(card.state());
    tenet_voucher_app::applet::VoucherApplet::check_ttp(data, ttp)
        .with_context(|| format!("card {} (--ttp {ttp})", store.display()))
}

fn install(
    card: &mut Card<FileStore>,
    certs: &tenet_pki::CardCertificates,
    at: &Path,
) -> Result<ExitCode> {
    println!("{}", tenet_voucher_app::admin::install(card, certs, at)?);
    Ok(ExitCode::SUCCESS)
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
                .as_deref()
                .map(|p| read_certificate_file(p).map(|(_, cv)| cv))
                .transpose()?;
            if let (Some(t), Some(c)) = (ttp, &ttp_cert)
                && !tenet_pki::names(c, t)
            {
                bail!("the TTP certificate does not name {t} (--ttp)");
            }
            let domain = match domain.as_str() {
                "random" => Domain::new(random()?),
                d => d.parse::<Domain>()?,
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
                None => random::<8>()?
                    .map(|x| char::from(b'0' + x % 10))
                    .iter()
                    .collect(),
            };
            let n = tenet_voucher_app::admin::NewCard {
                domain,
                pin,
                puk: puk.clone(),
                capacity,
                ca: ca.map(|c| (c, days)),
                ttp: ttp.map(|t| (t, ttp_cert.clone(), recover_after)),
            };
            let card = tenet_voucher_app::admin::personalize(&store, n)?;
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
            let (id, lifetime) = (card.id(), tenet_pki::Lifetime::days(days));
            let certs = tenet_pki::issue_entity_with(&ca, id, &card.state().public_key, lifetime)
                .with_context(|| format!("CA in {}", ca.display()))?;
            install(&mut card, &certs, &ca_pem)
        }
        CardCmd::Csr { store, out } => {
            let card = open(&store, CardLimits::default())?;
            let sign = |m: &[u8]| card.sign_certificate_request(m);
            let csr = tenet_pki::card_request(card.id(), &card.state().public_key, &sign)?;
            std::fs::write(&out, csr).with_context(|| format!("writing {}", out.display()))?;
            println!("request {} for card {}", out.display(), card.id());
            println!(
                "next: the CA runs `tenet ca sign --role card --id {}`",
                card.id()
            );
            Ok(ExitCode::SUCCESS)
        }
        CardCmd::InstallCert {
            store,
            cert,
            ca_cert,
        } => {
            let (x509, cv) = read_certificate_file(&cert)?;
            let ca = pem(&ca_cert)?;
            let certs = tenet_pki::CardCertificates { x509, cv, ca };
            install(&mut open(&store, CardLimits::default())?, &certs, &ca_cert)
        }
        CardCmd::Info { store, cert_out } => {
            let card = open(&store, CardLimits::default())?;
            println!("{}", tenet_voucher_app::admin::describe(&card));
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
