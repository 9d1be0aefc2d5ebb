//! # tenet-card: the virtual TENeT smartcard
//!
//! A smartcard that is a TENeT peer: it has a domain and a key pair, assigns
//! ports to the apps of its host, authenticates them one by one by PIN
//! (the authenticated-ID set of paper 4.4), enforces its applets'
//! privileged mtypes, answers echo, and exchanges eTP messages over ISO
//! 7816-4 APDUs.
//!
//! - [`store`]: the crash-safe persistent store (the card's EEPROM).
//! - [`state`]: the persistent record.
//! - [`applet`]: the applet interface and injected randomness.
//! - [`clock`]: the card's time, from its host, with a persisted lower
//!   bound no single wrong host time can break.
//! - [`card`]: the APDU front end, the runtime and the card services;
//!   sans-IO (bytes in, bytes out).
//! - [`vpcd`]: the connector that plugs a card into pcscd via vpcd.
//! - [`timing`]: operation counting and a timing model of a real card and
//!   its reader link, in simulated time (off unless asked for).
//!
//! The host side (smartcard proxies and card links) lives in `tenet-host`.
//! The APDU mapping is documented in `docs/apdu.md`.

#![warn(missing_docs)]

pub mod applet;
pub mod card;
pub mod clock;
pub mod state;
pub mod store;
pub mod timing;
pub mod vpcd;

pub use applet::{Applet, AppletCx, Durability, Entropy, Refusal, SeededEntropy, SystemEntropy};
pub use card::{
    ATR, Card, CardError, CardLimits, HashError, Personalization, SetTimeError, Unblock,
};
pub use clock::{CardTime, ClockRefusal};
pub use store::{FileStore, MemStore, Storage, StoreError};
pub use timing::{Meter, TimingModel};
