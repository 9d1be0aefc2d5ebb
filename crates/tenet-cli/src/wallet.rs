//! `tenet wallet ...`: a wallet app on the command line, over the `Wallet`
//! API. Every command authenticates to the card with the PIN (asked on the
//! terminal, or `--pin-file`, `TENET_PIN`, `--pin`: see [`crate::pin`]);
//! the card is named with `--card` or `TENET_CARD`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tenet_client::Capability;
use tenet_client::wallet::Wallet;
use tenet_proto::{Codec, EntityId};
use tenet_voucher::card::Role;
use tenet_voucher::model::Amount;
use tenet_voucher::msg::{DEFAULT_OFFER_SECS, StartExchange};

/// Who the wallet is.
#[derive(Args)]
pub struct Login {
    /// The wallet's card, DOMAIN:0.
    #[arg(long, env = "TENET_CARD", global = true)]
    card: Option<EntityId>,
    /// The card's PIN.
    #[command(flatten)]
    pin: crate::pin::PinArgs,
    /// The wallet's state folder, for the card's journal (default: $XDG_STATE_HOME/tenet or ~/.local/state/tenet).
    #[arg(long, env = "TENET_WALLET_STATE", global = true, value_name = "DIR")]
    state: Option<std::path::PathBuf>,
}

/// Wallet commands.
#[derive(Subcommand)]
pub enum WalletCmd {
    /// Print the card's vouchers.
    ///
    /// One line per voucher class the card holds: quantity, promise and issuer,
    /// as the card reports them (the card is the only record).
    ///
    /// Example: tenet wallet balance --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt
    Balance,
    /// Mint vouchers of the card's own class: QTY:PROMISE.
    ///
    /// A card issues vouchers only of its own class (its domain is the issuer);
    /// they add to its balance. A balance is capped at 2^53 - 1.
    ///
    /// Example: tenet wallet mint 5:coffee --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt
    Mint {
        /// Quantity and promise, e.g. `5:coffee`.
        amount: String,
    },
    /// Offer vouchers to another card.
    ///
    /// The card signs an offer of what it gives for what it wants and sends it
    /// to the other card's wallet (or to the card itself, for a merchant that
    /// accepts by policy); the exchange then runs between the cards. Vouchers
    /// are QTY:ISSUERHEX:PROMISE.
    ///
    /// Example: tenet wallet offer --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt --to b2b2b2b2b2b2b2b2b2b2b2b2:0 --wallet b2b2b2b2b2b2b2b2b2b2b2b2:7 --give 2:0a0b0c0d0e0f101112131415:coffee --want 1:b2b2b2b2b2b2b2b2b2b2b2b2:ticket
    Offer {
        /// The other card, DOMAIN:0.
        #[arg(long)]
        to: EntityId,
        /// The other card's wallet app (the id `tenet wallet offers` prints).
        #[arg(long)]
        wallet: EntityId,
        /// What this card gives: QTY:ISSUERHEX:PROMISE.
        #[arg(long)]
        give: String,
        /// What it wants: QTY:ISSUERHEX:PROMISE.
        #[arg(long)]
        want: String,
        /// Seconds of the card's time the offer stays open, 30 to 2592000 (the other card refuses it after).
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_OFFER_SECS,
              value_parser = clap::value_parser!(u32).range(30..=2_592_000))]
        expires_in: u32,
    },
    /// Withdraw this card's open offers, before an agreement reaches them.
    ///
    /// Nothing was deleted for an open offer; the card forgets it, releases
    /// what it reserved, and refuses an agreement to it (the other card then
    /// aborts). Refused if no offer is open.
    ///
    /// Example: tenet wallet withdraw --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt --to b2b2b2b2b2b2b2b2b2b2b2b2:0
    Withdraw {
        /// Only the offers to this card (default: all).
        #[arg(long)]
        to: Option<EntityId>,
    },
    /// Give vouchers to another card: the exchange with nothing wanted back.
    ///
    /// The payee's wallet accepts it (tenet wallet offers --accept-transfers); it ends delivered or refunded, recovered like an exchange.
    ///
    /// Example: tenet wallet transfer --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt --to b2b2b2b2b2b2b2b2b2b2b2b2:0 --wallet b2b2b2b2b2b2b2b2b2b2b2b2:7 --amount 1:0a0b0c0d0e0f101112131415:coffee
    Transfer {
        /// The payee's card, DOMAIN:0.
        #[arg(long)]
        to: EntityId,
        /// The payee's wallet app (the id `tenet wallet offers` prints).
        #[arg(long)]
        wallet: EntityId,
        /// What this card gives: QTY:ISSUERHEX:PROMISE.
        #[arg(long)]
        amount: String,
    },
    /// Redeem vouchers at their issuer's card (or a card it delegated) for a signed receipt.
    ///
    /// The vouchers are destroyed, never credited; the receipt (tenet wallet receipts) verifies offline with the CA (tenet verify receipt). Fair: the vouchers are gone only with the receipt.
    ///
    /// Example: tenet wallet redeem --card b2b2b2b2b2b2b2b2b2b2b2b2:0 --pin-file pin.txt --at 0a0b0c0d0e0f101112131415:0 --amount 1:0a0b0c0d0e0f101112131415:coffee
    Redeem {
        /// The redeemer's card, DOMAIN:0.
        #[arg(long)]
        at: EntityId,
        /// The redeemer's wallet app (default: the card itself, which takes redemptions by policy).
        #[arg(long)]
        wallet: Option<EntityId>,
        /// What to redeem: QTY:ISSUERHEX:PROMISE.
        #[arg(long)]
        amount: String,
    },
    /// List the receipts of this card's redemptions.
    ///
    /// From the journal, which pulls them from the card's log.
    ///
    /// Example: tenet wallet receipts --card b2b2b2b2b2b2b2b2b2b2b2b2:0 --pin-file pin.txt --out receipts
    Receipts {
        /// Also write each as DIR/ID.receipt, for tenet verify receipt.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Let another card redeem this card's class.
    ///
    /// The issuer's card signs a delegation naming the redeemer's card, the class and its end; the redeemer's wallet installs it.
    ///
    /// Example: tenet wallet delegate --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt --to c3c3c3c3c3c3c3c3c3c3c3c3:0 --class 0a0b0c0d0e0f101112131415:coffee --days 30 --out till.delegation
    Delegate {
        /// The redeemer's card, DOMAIN:0.
        #[arg(long)]
        to: EntityId,
        /// The class: ISSUERHEX:PROMISE (this card's own domain).
        #[arg(long)]
        class: String,
        /// Days it lasts, 1 to 3650.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Where to write it, for tenet wallet install-delegation.
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Install on the redeemer's card a delegation from tenet wallet delegate.
    ///
    /// The card checks that it names this card and comes from the class's issuer card, unexpired.
    ///
    /// Example: tenet wallet install-delegation --card c3c3c3c3c3c3c3c3c3c3c3c3:0 --pin-file pin.txt till.delegation
    InstallDelegation {
        /// The delegation file.
        file: std::path::PathBuf,
    },
    /// Print the card's journal: every finished run and what this wallet did.
    ///
    /// Pulled from the card's log by sequence number; a gap says the card forgot runs before a wallet read them.
    ///
    /// Example: tenet wallet history --card b2b2b2b2b2b2b2b2b2b2b2b2:0 --pin-file pin.txt --json
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a verifier that the card holds an amount, moving nothing.
    ///
    /// The card signs "holds at least QTY at this time" for the verifier's
    /// challenge (printed by `tenet verify`); refused if it holds less.
    ///
    /// Example: tenet wallet present --card b2b2b2b2b2b2b2b2b2b2b2b2:0 --pin-file pin.txt --to 0a0b0c0d0e0f101112131415:9 --challenge 00112233445566778899aabbccddeeff --amount 1:b2b2b2b2b2b2b2b2b2b2b2b2:ticket
    Present {
        /// The verifier's id.
        #[arg(long)]
        to: EntityId,
        /// The verifier's challenge, 32 hex digits.
        #[arg(long)]
        challenge: String,
        /// At least this much: QTY:ISSUERHEX:PROMISE.
        #[arg(long)]
        amount: String,
    },
    /// Wait for offers and print them.
    ///
    /// Offers to this wallet, or to the card itself (this wallet registers as
    /// the card's acceptor): one line each with the offer's hex for `accept`
    /// or `reject`. With --accept or --accept-if it accepts them as they come.
    ///
    /// Example: tenet wallet offers --card b2b2b2b2b2b2b2b2b2b2b2b2:0 --pin-file pin.txt --accept-if 'GIVE>=2:0a0b0c0d0e0f101112131415:coffee,WANT<=1:b2b2b2b2b2b2b2b2b2b2b2b2:ticket'
    Offers {
        /// Accept every offer that arrives.
        #[arg(long)]
        accept: bool,
        /// Accept only offers that give at least N of a class for at most M
        /// of another: `GIVE>=N:ISSUERHEX:PROMISE,WANT<=M:ISSUERHEX:PROMISE`
        /// (a merchant's standing policy).
        #[arg(long, value_name = "POLICY")]
        accept_if: Option<String>,
        /// Accept the gifts (transfers) that arrive; neither --accept nor a policy takes them.
        #[arg(long)]
        accept_transfers: bool,
        /// Redeem the redemptions that destroy at most N of a class: `REDEEM<=N:ISSUERHEX:PROMISE`.
        #[arg(long, value_name = "POLICY")]
        redeem_if: Option<tenet_voucher::policy::RedeemPolicy>,
        /// Stop after this many offers.
        #[arg(short = 'c', long)]
        count: Option<u32>,
    },
    /// Accept an offer printed by `tenet wallet offers` (its hex).
    ///
    /// The card checks the offer and its own balance, then runs the exchange
    /// with the offering card (agreement, confirmation, commitment).
    ///
    /// Example: tenet wallet accept --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt OFFER-HEX
    Accept {
        /// The offer's hex.
        offer: String,
    },
    /// Decline an offer printed by `tenet wallet offers`.
    ///
    /// Nothing is sent and nothing on either card changes; the offering card
    /// may recover its exchange through the TTP later.
    ///
    /// Example: tenet wallet reject --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt OFFER-HEX
    Reject {
        /// The offer's hex.
        offer: String,
    },
    /// List the card's exchanges.
    ///
    /// One line per exchange the card remembers: its id (hex), the card's role
    /// (Initiator or Responder), its state and what it gives and gets.
    ///
    /// Example: tenet wallet exchanges --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt
    Exchanges,
    /// Ask the TTP to resolve an exchange this card offered.
    ///
    /// For an exchange stuck after the card sent its offer: the TTP decides
    /// once for both sides, and the card either completes the swap or gets its
    /// vouchers back.
    ///
    /// Example: tenet wallet resolve --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt EXCHANGE-ID
    Resolve {
        /// The exchange id (as `exchanges` prints it, full hex).
        id: String,
    },
    /// Ask the TTP to abort an exchange this card accepted.
    ///
    /// For an exchange stuck after the card accepted: the TTP decides once for
    /// both sides; if the other side already resolved it, the swap completes.
    ///
    /// Example: tenet wallet abort --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt EXCHANGE-ID
    Abort {
        /// The exchange id (full hex).
        id: String,
    },
    /// Recover every exchange still pending after SECS.
    ///
    /// Resolve or abort each by the card's role, e.g. after a restart or a lost
    /// link; exchanges younger than --after are left to finish.
    ///
    /// Example: tenet wallet recover --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt --after 60
    Recover {
        /// Seconds an exchange may stay pending before recovery.
        #[arg(long, default_value_t = 30.0)]
        after: f64,
    },
    /// Print the card's exchange messages as they pass the host.
    ///
    /// A tap on the card's traffic: one line per exchange message to or from
    /// the card, until --count messages or Ctrl-C.
    ///
    /// Example: tenet wallet watch --card 0a0b0c0d0e0f101112131415:0 --pin-file pin.txt -c 10
    Watch {
        /// Stop after this many messages.
        #[arg(short = 'c', long)]
        count: Option<u64>,
    },
}

use crate::card::hex;
use tenet_client::wallet::{parse_amount as amount, parse_id, unhex};

fn show(b: &[Amount]) {
    print!("{}", tenet_client::wallet::balances_text(b));
}

pub async fn run(socket: &Path, login: Login, cmd: WalletCmd) -> Result<ExitCode> {
    let card = login
        .card
        .context("name the card with --card DOMAIN:0 or TENET_CARD")?;
    let pin = login.pin.resolve(&format!("PIN of card {card}"))?;
    let cap = Capability::acquire(socket).await?;
    let mut w = Wallet::open(cap, card, pin.as_bytes()).await?;
    let (journal, said) =
        tenet_client::journal::open_synced(login.state.as_deref(), &mut w).await?;
    if let Some(n) = said {
        eprintln!("note: {n}");
    }
    let note = |kind: &str, text: &str| journal.note(kind, text);
    match cmd {
        WalletCmd::Balance => show(&w.balances().await?),
        WalletCmd::Mint { amount: a } => {
            show(&w.mint(amount(&a, Some(card.domain()))?).await?);
            note("mint", &format!("minted {a}"))?;
        }
        WalletCmd::Offer {
            to,
            wallet,
            give,
            want,
            expires_in,
        } => {
            let (give, want) = (amount(&give, None)?, Some(amount(&want, None)?));
            let s_text = format!("{give} for {}", want.as_ref().expect("wanted"));
            let s = StartExchange {
                redeem: false,
                responder: to,
                peer_wallet: wallet,
                give,
                want,
                expires_in: Some(expires_in),
            };
            w.start(s).await?;
            note("offer", &format!("offered {} to {to}", s_text))?;
            println!(
                "offer sent to {wallet} for card {to}, open {expires_in} s; follow it with `tenet wallet exchanges`"
            );
        }
        WalletCmd::Transfer {
            to,
            wallet,
            amount: a,
        } => {
            w.transfer(to, wallet, amount(&a, None)?).await?;
            note("transfer", &format!("gave {a} to {to}"))?;
            println!(
                "gift of {a} sent to {wallet} for card {to}; follow it with `tenet wallet exchanges`"
            );
        }
        WalletCmd::Redeem {
            at,
            wallet,
            amount: a,
        } => {
            w.redeem(at, wallet.unwrap_or(at), amount(&a, None)?)
                .await?;
            note("redeem", &format!("asked {at} to redeem {a}"))?;
            println!("redemption of {a} sent to {at}; the receipt follows (tenet wallet receipts)");
        }
        WalletCmd::Receipts { out } => {
            let mut o = std::io::stdout();
            tenet_client::journal::print_receipts(&journal, out.as_deref(), &mut o)?;
        }
        WalletCmd::Delegate {
            to,
            class,
            days,
            out,
        } => {
            let class = amount(&format!("1:{class}"), None)?.class;
            println!("{}", journal.delegate(&mut w, to, class, days, &out).await?);
        }
        WalletCmd::InstallDelegation { file } => {
            println!("{}", journal.install_delegation(&mut w, &file).await?);
        }
        WalletCmd::History { json } => {
            print!(
                "{}",
                tenet_client::journal::history(&journal.entries()?, json)
            );
        }
        WalletCmd::Present {
            to,
            challenge,
            amount: a,
        } => {
            let c = unhex(&challenge)?.try_into();
            let c = c.map_err(|_| anyhow::anyhow!("a challenge is 16 bytes (32 hex digits)"))?;
            w.present(to, c, amount(&a, None)?).await?;
            note("present", &format!("showed at least {a} to {to}"))?;
            println!("presented at least {a} to {to}");
        }
        WalletCmd::Withdraw { to } => {
            w.withdraw(to).await?;
            note("withdraw", "withdrew open offers")?;
            println!(
                "withdrew the open offers{}",
                to.map_or(String::new(), |t| format!(" to {t}"))
            );
        }
        WalletCmd::Offers {
            accept,
            accept_if,
            accept_transfers: gifts,
            redeem_if,
            count,
        } => {
            let policy = accept_if
                .as_deref()
                .map(str::parse::<tenet_voucher::policy::Policy>)
                .transpose()?;
            let mut out = std::io::stdout();
            let p = policy.as_ref();
            let r = redeem_if.as_ref();
            tenet_client::wallet::take_offers(&mut w, p, accept, gifts, r, count, &mut out).await?;
        }
        WalletCmd::Accept { offer } => {
            let bytes = unhex(&offer)?;
            let o = tenet_voucher::msg::Offer::decode(&bytes).context("not an offer")?;
            w.accept_offer(&o).await?;
            let want = o
                .want
                .as_ref()
                .map_or("nothing".into(), ToString::to_string);
            println!("accepted: this card gets {} and gives {want}", o.give);
        }
        WalletCmd::Reject { offer } => {
            let from =
                tenet_voucher::msg::Offer::decode(&unhex(&offer)?).context("not an offer")?;
            let from = from.initiator;
            println!("declined the offer from {from}: nothing was sent, nothing changed");
        }
        WalletCmd::Exchanges => print!(
            "{}",
            tenet_client::wallet::exchanges_text(&w.exchanges().await?)
        ),
        WalletCmd::Recover { after } => {
            let after = Duration::try_from_secs_f64(after)
                .context("--after must be a non-negative number of seconds")?;
            let done = w.auto_recover(after).await?;
            if done.is_empty() {
                println!("nothing pending");
            }
            for (id, phase) in done {
                println!("{}  {phase:?}", hex(&id.0));
            }
            show(&w.balances().await?);
        }
        WalletCmd::Resolve { id } => recover(&mut w, &id, Role::Initiator, "resolve").await?,
        WalletCmd::Abort { id } => recover(&mut w, &id, Role::Responder, "abort").await?,
        WalletCmd::Watch { count } => {
            tenet_client::tools::watch_card(socket, card, count, &mut std::io::stdout()).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn recover(w: &mut Wallet, id: &str, role: Role, what: &str) -> Result<()> {
    let phase = w.recover_as(parse_id(id)?, role, what).await?;
    println!("{what}: the exchange is now {phase:?}");
    show(&w.balances().await?);
    Ok(())
}
