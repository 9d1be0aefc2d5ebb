//! Where the CLI takes a card's PIN from, so that it need not sit in argv
//! (which every local user can read in /proc).
//!
//! In order: `--pin` (kept for scripts) or `TENET_PIN`; `--pin-file FILE`
//! or `TENET_PIN_FILE` (its first line; the file must be readable by its
//! owner only, like an SSH key); else a prompt on the terminal with echo
//! off. Without any of these and without a terminal, a clear error.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

/// How a command gets a PIN.
#[derive(Args, Debug, Clone, Default)]
pub struct PinArgs {
    /// The PIN. Other local users can read a process's arguments: prefer
    /// --pin-file, TENET_PIN or the prompt.
    #[arg(long, env = "TENET_PIN", global = true, hide_env_values = true)]
    pub pin: Option<String>,
    /// Read the PIN from the first line of FILE (owner-only: chmod 600).
    #[arg(
        long,
        value_name = "FILE",
        env = "TENET_PIN_FILE",
        global = true,
        conflicts_with = "pin"
    )]
    pub pin_file: Option<PathBuf>,
}

impl PinArgs {
    /// The PIN, asking on the terminal for `what` if none was given.
    pub fn resolve(&self, what: &str) -> Result<String> {
        if let Some(p) = &self.pin {
            return Ok(p.clone());
        }
        if let Some(f) = &self.pin_file {
            return read_pin_file(f);
        }
        rpassword::prompt_password(format!("{what}: ")).map_err(|e| {
            anyhow::anyhow!(
                "no PIN given and no terminal to ask on ({e}): use --pin-file FILE, \
                 TENET_PIN or --pin"
            )
        })
    }
}

/// The first line of `path`, which only its owner may read.
pub fn read_pin_file(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("PIN file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "PIN file {} is readable or writable by others (mode {mode:04o}); \
             fix it with `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("PIN file {}", path.display()))?;
    let pin = text.lines().next().unwrap_or("").to_owned();
    if pin.is_empty() {
        bail!("PIN file {} is empty", path.display());
    }
    Ok(pin)
}
