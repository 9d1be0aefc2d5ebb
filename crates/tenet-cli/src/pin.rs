//! Where the CLI takes a card's PIN from, so that it need not sit in argv
//! (which every local user can read in /proc).
//!
//! In order: `--pin-file FILE` or `TENET_PIN_FILE` (its first line; the
//! file must be readable by its owner only, like an SSH key); `--pin` (kept
//! for scripts) or `TENET_PIN`; else a prompt on the terminal with echo
//! off. Without any of these and without a terminal, a clear error. The
//! PUK and a new PIN (`tenet card pin`) come the same ways.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// How a command gets a PIN.
#[derive(Args, Debug, Clone, Default)]
pub struct PinArgs {
    /// The PIN. Other local users can read a process's arguments: prefer
    /// --pin-file, TENET_PIN or the prompt.
    #[arg(long, env = "TENET_PIN", global = true, hide_env_values = true)]
    pub pin: Option<String>,
    /// Read the PIN from the first line of FILE (owner-only: chmod 600).
    #[arg(long, value_name = "FILE", env = "TENET_PIN_FILE", global = true)]
    pub pin_file: Option<PathBuf>,
}

impl PinArgs {
    /// The PIN, asking on the terminal for `what` if none was given.
    pub fn resolve(&self, what: &str) -> Result<String> {
        match given(self.pin.as_deref(), self.pin_file.as_deref())? {
            Some(pin) => Ok(pin),
            None => prompt("PIN", what, "--pin-file FILE, TENET_PIN or --pin"),
        }
    }
}

pub use tenet_client::secret::given;

/// A secret (`PIN`, `PUK`, ...) asked on the terminal with the prompt
/// `what`, echo off; without a terminal, an error naming the other ways
/// (`instead`).
pub fn prompt(secret: &str, what: &str, instead: &str) -> Result<String> {
    rpassword::prompt_password(format!("{what}: ")).map_err(|e| {
        anyhow::anyhow!("no {secret} given and no terminal to ask on ({e}): use {instead}")
    })
}
