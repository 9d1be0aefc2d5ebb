//! `tenet demo`: the voucher exchange on embedded defaults. Three host
//! daemons on loopback linked over TLS (Alice and Bob with a virtual card
//! each, and the TTP with SQLite); the wallets authenticate and mint,
//! Alice's wallet offers, Bob's accepts, the cards trade by themselves.
//! `--interrupt-after STEP` drops the next message after that step (a guard
//! rule on the receiving host) and shows the recovery through the TTP.
//!
//! The run and its report are [`tenet_testkit::exchange`]'s; this names the
//! steps on the command line and prints.

use std::process::ExitCode;

use anyhow::Result;
use clap::ValueEnum;
use tenet_testkit::exchange::Cut;

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

impl From<Step> for Cut {
    fn from(s: Step) -> Self {
        match s {
            Step::Accept => Cut::Accept,
            Step::Agreement => Cut::Agreement,
            Step::Confirmation => Cut::Confirmation,
        }
    }
}

/// Runs the demo and prints it; fails if the exchange was unfair or lost
/// a voucher.
pub async fn run(interrupt: Option<Step>, json: bool, story: bool) -> Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    if story {
        let s = tenet_testkit::story::run(dir.path()).await?;
        let out = if json {
            serde_json::to_string(&s)? + "\n"
        } else {
            s.text()
        };
        print!("{out}");
        return Ok(ExitCode::from(u8::from(!s.conserved())));
    }
    let ran = tenet_testkit::exchange::run(dir.path(), interrupt.map(Cut::from)).await?;
    let out = if json {
        format!("{}\n", ran.json()?)
    } else {
        ran.text()
    };
    // The daemons run in this process, so SIGPIPE stays ignored: a reader
    // that went away (`tenet demo | head -1`) ends the output quietly.
    use std::io::Write;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(if ran.fair() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
