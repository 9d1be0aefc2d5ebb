//! Where the CLI takes a card's PIN from, so that it need not sit in argv
//! (which every local user can read in /proc).
//!
//! In order: `--pin-file FILE` or `TENET_PIN_FILE` (its first line; the
//! file must be readable by its owner only, like an SSH key); `--pin` (kept
//! for scripts) or `TENET_PIN`; else a prompt on the terminal with echo
//! off. Without any of these and without a terminal, a clear error. The
//! PUK and a new PIN (`tenet card pin`) come the same ways.

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

/// A secret given as a file or as a value (flag or environment), the file
/// first when both are: it is the channel that does not show in the
/// process list; `None` if neither.
pub fn given(value: Option<&str>, file: Option<&Path>) -> Result<Option<String>> {
    match (file, value) {
        (Some(f), _) => read_pin_file(f).map(Some),
        (None, Some(v)) => Ok(Some(v.to_owned())),
        (None, None) => Ok(None),
    }
}

/// A secret (`PIN`, `PUK`, ...) asked on the terminal with the prompt
/// `what`, echo off; without a terminal, an error naming the other ways
/// (`instead`).
pub fn prompt(secret: &str, what: &str, instead: &str) -> Result<String> {
    rpassword::prompt_password(format!("{what}: ")).map_err(|e| {
        anyhow::anyhow!("no {secret} given and no terminal to ask on ({e}): use {instead}")
    })
}

/// The first line of `path`, which only its owner may read (checked on the
/// file as opened, so it cannot be swapped in between).
pub fn read_pin_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("PIN file {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("PIN file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "PIN file {} is readable or writable by others (mode {mode:04o}); \
             fix it with `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("PIN file {}", path.display()))?;
    let pin = text.lines().next().unwrap_or("").to_owned();
    if pin.is_empty() {
        bail!("PIN file {} is empty", path.display());
    }
    Ok(pin)
}
