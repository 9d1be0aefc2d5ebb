//! # tenet-attest: mutual attestation of two cards
//!
//! A second card application, small and not about vouchers, built only on
//! the framework's public plug-in API to show that the framework is
//! general. Two cards on different hosts prove to each other that each
//! holds a certificate from the CA installed on it, with a signed session
//! transcript, and each records the other. `docs/applets.md` walks through
//! it as the example of how to write an applet.
//!
//! An app orders its card to attest with a peer card (`attest-start`,
//! privileged); the two cards then run the protocol by themselves across
//! their hosts; the app gets the result (`attest-result`), and any
//! authenticated app of the card's own domain may ask the card who has
//! attested with it (`attest-query`, privileged, answered by
//! `attest-peers`).
//!
//! - [`msg`]: the mtypes, the params, the transcript and what is signed.
//! - [`state`]: what the applet stores on the card, and its bounds.
//! - [`applet`]: the applet ([`AttestApplet`]), one function per step.
//! - [`plug`]: adds the applet to a host.
//!
//! It does no I/O and keeps no key: the card signs through the applet
//! context, the host routes the messages, and the card's runtime commits
//! the applet's data together with the messages it sends.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod applet;
pub mod msg;
pub mod state;

pub use applet::{APPLET_ID, AttestApplet, AttestError};

use tenet_host::plugin::HostBuilder;

/// Adds the attestation applet to the host's in-process virtual card.
///
/// The applet needs no provisioning: it starts with empty data (no
/// records). The card needs its certificate and the CA certificate
/// installed at personalization (`tenet card new --ca DIR`), as for
/// vouchers; without them it refuses to attest, with a message that says
/// so.
pub fn plug(host: HostBuilder<'_>) -> HostBuilder<'_> {
    host.applet(Box::new(|_card| Ok(Box::new(AttestApplet::new()))))
}
