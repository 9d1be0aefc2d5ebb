//! # tenet-voucher: the fair exchange of electronic vouchers
//!
//! Paper section 5 and its appendix, as sans-IO logic shared by the card
//! applet, the TTP service, the tests and the model checker:
//!
//! - [`model`]: vouchers after RFC 3506 (class = issuer + promise, a
//!   quantity per class), balances, `h`.
//! - [`mtype`]: the application's mtypes, defined once.
//! - [`msg`]: the exchange's messages `m1`-`m4`, recovery requests and
//!   admissions, with their mtypes and signed bytes.
//! - [`certs`]: whether a host may name the TTP of a card (the TTP
//!   installed and pinned at personalization); the certificate checks
//!   themselves are `tenet_pki`'s.
//! - [`crypto`]: the [`Crypto`](crypto::Crypto) interface (sign, verify
//!   with certificate, randomness) and a deterministic test stand-in.
//! - [`card`]: what a card does with each message ([`card::VoucherCard`]).
//! - [`present`]: showing a holding without giving it.
//! - [`redeem`]: redeeming at the issuer for a receipt, and delegations.
//! - [`ttp`]: the TTP's once-per-exchange decision.
//!
//! Exchanges are identified by `h(n2)`, never `n1` (appendix).
//! What we added to the paper: the offer names both cards, so every
//! signature binds the parties, and a recovery request carries the offer
//! and the responder's agreement, so the TTP decides only at the request
//! of the party entitled to it.
//!
//! Not here: I/O, persistence (the card runtime stores
//! [`card::VoucherCard`] atomically), the TTP's database.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod card;
pub mod certs;
pub mod crypto;
pub mod model;
pub mod msg;
pub mod mtype;
pub mod policy;
pub mod present;
pub mod redeem;
pub mod ttp;
