//! `tenet card pin change|unblock|lock`: the card's PIN the way card users
//! expect it, through the host daemon that holds the card (the wallet's
//! socket connection, over `tenet_client::card_pin`); `unblock` also works
//! on a store file no daemon holds.
//!
//! Every PIN and PUK comes as [`crate::pin`] says (a flag, an environment
//! variable, an owner-only file, or the terminal with echo off); a new PIN
//! asked on the terminal is asked twice. After a wrong PIN the tries left
//! are shown; a blocked PIN says how to unblock it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tenet_client::Capability;
use tenet_client::card_pin::CardPin;
use tenet_proto::EntityId;
use tenet_proto::card::{PinOutcome, PinStatus, check_pin};

use crate::pin::{PinArgs, given, prompt};

/// The card, for the commands that go through the daemon.
#[derive(Args)]
pub struct CardArg {
    /// The card, DOMAIN:0.
    #[arg(long, env = "TENET_CARD")]
    card: Option<EntityId>,
}

impl CardArg {
    fn get(&self) -> Result<EntityId> {
        self.card
            .context("name the card with --card DOMAIN:0 or TENET_CARD")
    }
}

/// Where a new PIN comes from.
#[derive(Args)]
pub struct NewPinArgs {
    /// The new PIN, 4 to 12 digits. Other local users can read a process's
    /// arguments: prefer --new-pin-file, TENET_NEW_PIN or the prompt.
    #[arg(long, env = "TENET_NEW_PIN", hide_env_values = true)]
    new_pin: Option<String>,
    /// Read the new PIN from the first line of FILE (owner-only: chmod 600).
    #[arg(long, value_name = "FILE", env = "TENET_NEW_PIN_FILE")]
    new_pin_file: Option<PathBuf>,
}

impl NewPinArgs {
    /// The new PIN, checked (4 to 12 digits); asked twice on the terminal
    /// if none was given.
    fn resolve(&self, card: &str) -> Result<String> {
        let pin = if let Some(p) = given(self.new_pin.as_deref(), self.new_pin_file.as_deref())? {
            p
        } else {
            let first = prompt(
                "new PIN",
                &format!("New PIN of {card}"),
                "--new-pin-file FILE, TENET_NEW_PIN or --new-pin",
            )?;
            let again = prompt("new PIN", "New PIN again", "--new-pin-file FILE")?;
            if first != again {
                bail!("the two new PINs differ; nothing changed");
            }
            first
        };
        check_pin(pin.as_bytes(), "new PIN")?;
        Ok(pin)
    }
}

/// Where the PUK comes from.
#[derive(Args)]
pub struct PukArgs {
    /// The PUK. Other local users can read a process's arguments: prefer
    /// --puk-file, TENET_PUK or the prompt.
    #[arg(long, env = "TENET_PUK", hide_env_values = true)]
    puk: Option<String>,
    /// Read the PUK from the first line of FILE (owner-only: chmod 600).
    #[arg(long, value_name = "FILE", env = "TENET_PUK_FILE")]
    puk_file: Option<PathBuf>,
}

impl PukArgs {
    fn resolve(&self, card: &str) -> Result<String> {
        let puk = match given(self.puk.as_deref(), self.puk_file.as_deref())? {
            Some(p) => p,
            None => prompt(
                "PUK",
                &format!("PUK of {card}"),
                "--puk-file FILE, TENET_PUK or --puk",
            )?,
        };
        check_pin(puk.as_bytes(), "PUK")?;
        Ok(puk)
    }
}

/// PIN subcommands.
#[derive(Subcommand)]
pub enum PinCmd {
    /// Change the card's PIN.
    ///
    /// Through the host daemon that holds the card: verifies the current
    /// PIN (a wrong one costs one of the card's three tries; the tries left
    /// are shown), then sets the new one, 4 to 12 digits. The current PIN
    /// comes from --pin-file, TENET_PIN, --pin or the terminal; the new one
    /// from --new-pin-file, TENET_NEW_PIN, --new-pin or the terminal (asked
    /// twice).
    ///
    /// Example: tenet card pin change --card 0a0b0c0d0e0f101112131415:0
    Change {
        #[command(flatten)]
        card: CardArg,
        #[command(flatten)]
        pin: PinArgs,
        #[command(flatten)]
        new_pin: NewPinArgs,
    },
    /// Unblock the PIN with the PUK and set a new one.
    ///
    /// After three wrong PINs the card refuses even the right one until
    /// its PUK unblocks it; this sets a new PIN with all its tries. Ten
    /// wrong PUKs block the PUK for good (the card must be
    /// re-personalized); a wrong PUK leaves the PIN as it was. With --card
    /// it goes through the host daemon that holds the card; with --store it
    /// opens a virtual card's store file directly, which no running daemon
    /// may hold (stop it first). The PUK comes from --puk-file, TENET_PUK,
    /// --puk or the terminal; the new PIN as for `change`.
    ///
    /// Example: tenet card pin unblock --card 0a0b0c0d0e0f101112131415:0
    /// (or, daemon stopped: tenet card pin unblock --store card.store)
    Unblock {
        #[command(flatten)]
        card: CardArg,
        /// A virtual card's store file, opened directly (no daemon may
        /// hold it); --card and TENET_CARD are not used then.
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        #[command(flatten)]
        puk: PukArgs,
        #[command(flatten)]
        new_pin: NewPinArgs,
    },
    /// Lock the card: end every app's authenticated session at once.
    ///
    /// Through the host daemon that holds the card, after verifying the
    /// PIN: the card empties its authenticated set, as pulling it out
    /// would, so every app (wallets, merchants' acceptors, this command)
    /// must verify the PIN again before its next privileged order. The
    /// card, its vouchers and its PIN are unchanged. (An app's `logout`
    /// ends only its own session; this ends everyone's.)
    ///
    /// Example: tenet card pin lock --card 0a0b0c0d0e0f101112131415:0
    Lock {
        #[command(flatten)]
        card: CardArg,
        #[command(flatten)]
        pin: PinArgs,
    },
}

fn expect(card: EntityId, st: PinStatus, want: PinOutcome) -> Result<()> {
    Ok(tenet_client::card_pin::expect(card, st, want)?)
}

/// Connects to the daemon and verifies the PIN.
async fn verified(socket: &Path, card: EntityId, pin: &PinArgs) -> Result<CardPin> {
    let mut p = CardPin::new(Capability::acquire(socket).await?, card);
    let pin = pin.resolve(&format!("PIN of card {card}"))?;
    let st = p.verify(pin.as_bytes()).await?;
    expect(card, st, PinOutcome::Verified)?;
    Ok(p)
}

pub async fn run(socket: &Path, cmd: PinCmd) -> Result<ExitCode> {
    match cmd {
        PinCmd::Change { card, pin, new_pin } => {
            let card = card.get()?;
            let mut p = verified(socket, card, &pin).await?;
            let new_pin = new_pin.resolve(&format!("card {card}"))?;
            let st = p.change(new_pin.as_bytes()).await?;
            expect(card, st, PinOutcome::Changed)?;
            println!("PIN of card {card} changed");
        }
        PinCmd::Unblock {
            store: Some(store),
            puk,
            new_pin,
            ..
        } => {
            let what = format!("card {}", store.display());
            let puk = puk.resolve(&what)?;
            let new_pin = new_pin.resolve(&what)?;
            tokio::task::spawn_blocking(move || unblock_offline(&store, &puk, &new_pin)).await??;
        }
        PinCmd::Unblock {
            card,
            store: None,
            puk,
            new_pin,
        } => {
            let card = card.get()?;
            let mut p = CardPin::new(Capability::acquire(socket).await?, card);
            let puk = puk.resolve(&format!("card {card}"))?;
            let new_pin = new_pin.resolve(&format!("card {card}"))?;
            let st = p.unblock(puk.as_bytes(), new_pin.as_bytes()).await?;
            expect(card, st, PinOutcome::Changed)?;
            println!(
                "PIN of card {card} unblocked and set ({} tries)",
                st.tries_left
            );
        }
        PinCmd::Lock { card, pin } => {
            let card = card.get()?;
            let mut p = verified(socket, card, &pin).await?;
            let st = p.lock().await?;
            expect(card, st, PinOutcome::Locked)?;
            println!("card {card} locked: every app must verify the PIN again");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `unblock --store`: the card's own unblock on its store file.
fn unblock_offline(store: &Path, puk: &str, new_pin: &str) -> Result<()> {
    println!(
        "{}",
        tenet_voucher_app::admin::unblock_offline(store, puk, new_pin)?
    );
    Ok(())
}
