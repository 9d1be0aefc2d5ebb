//! # tenet-proto: the TENeT wire protocol
//!
//! What travels between entities and hosts, as plain types with one codec
//! trait ([`Codec`]). This crate has no async runtime and does no I/O (but
//! for [`socket`], which reads file metadata to find and check the app
//! socket's folder for daemon and clients alike): it
//! turns bytes into typed values and back, and refuses malformed input with a
//! [`DecodeError`] instead of panicking.
//!
//! Layout, bottom up:
//!
//! - [`codec`]: the [`Codec`] trait and a bounded [`Reader`].
//! - [`id`]: [`Domain`] (12 bytes), [`Port`] (u32), [`EntityId`] (16 bytes)
//!   and their text form `DOMAINHEX:PORT`.
//! - [`mtype`]: [`Mtype`] and the registry of known message types.
//! - [`message`]: the eTP [`Message`] with its 34-byte [`Header`], and
//!   [`MAX_MESSAGE_LEN`].
//! - [`frame`]: u32 length-prefixed stream framing.
//! - [`tlv`]: BER-TLV for params.
//! - [`link`]: frames between hosts (hello, data, ack).
//! - [`filter`]: header [`Filter`]s used by handlers, taps and guards.
//! - [`notice`]: the framework's own notices (undeliverable, refused).
//! - [`apdu`]: ISO 7816-4 APDUs and the TENeT card mapping.
//! - [`card`]: params of the card services (PIN, card info, time).
//! - [`app`]: the app-socket protocol between the client library and the
//!   host daemon.
//! - [`status`]: a daemon's figures, as `tenet status` and `/metrics` show
//!   them.
//! - [`socket`]: where the app socket lives and the check of its folder.
//! - [`time`]: a card's time ([`time::CardTime`]) and UTC display.
//!
//! What it does not do: routing, storage, sockets (see `tenet-dispatch` and
//! `tenet-host`). The byte layouts are documented in `docs/wire.md`.

// Unsafe code is denied, and allowed in one place only: reading this
// process's user and group ids (`socket`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod apdu;
pub mod app;
pub mod card;
pub mod codec;
pub mod filter;
pub mod frame;
pub mod id;
pub mod link;
pub mod message;
pub mod mtype;
pub mod notice;
pub mod socket;
pub mod status;
pub mod time;
pub mod tlv;

pub use codec::{Codec, DecodeError, Reader};
pub use filter::Filter;
pub use id::{Domain, EntityId, IdParseError, Port};
pub use message::{HEADER_LEN, Header, MAX_MESSAGE_LEN, MAX_PARAM_LEN, Message};
pub use mtype::Mtype;
