//! # tenet-dispatch: the dispatch core
//!
//! The host's dispatch table (paper 4.3.1) with its handlers and taps
//! (4.3.2) and the Guard chain on every inbound path (4.3.6, 4.4), as a
//! plain data structure: no sockets, no clock, no async runtime. Inputs are
//! method calls with `now`; outputs are return values and [`Event`]s the
//! runtime polls. The host daemon (`tenet-host`) wraps a
//! [`DispatchTable`] in a short `std::sync::Mutex`; tests drive it directly.
//!
//! - [`table`]: storage until read, routing, bounds, fair service of
//!   senders, time to live, undeliverable notices.
//! - [`core`]: [`HostCore`], the host's decisions around the table (the
//!   endpoint registry, the host entity and its services, remote ingress)
//!   as inputs and [`Effect`]s.
//! - [`bucket`]: a token bucket (rate limits).
//! - [`budget`]: bounds in messages and in bytes, and a sender's share of
//!   them; the table, the tap queues, link windows and the NATS path count
//!   what they hold with it.
//! - [`guard`]: the [`Guard`] trait, the chain, and the paper's default
//!   remote-ingress guard.
//! - [`rules`]: rule guards read from the configuration.
//! - [`reliable`]: sequencing, acknowledgement and retransmission on links
//!   between hosts.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bucket;
pub mod budget;
pub mod core;
pub mod guard;
pub mod hello;
pub mod reliable;
pub mod rules;
pub mod table;

pub use bucket::{KeyedBuckets, TokenBucket};
pub use budget::{Budget, Share, Unit, Usage};
pub use core::{Effect, EndpointKind, HostCore, IngressRefusal, ServiceId, host_entity_answer};
pub use guard::{Dropped, Guard, GuardChain, GuardContext, Ingress, RemoteIngressGuard, Verdict};
pub use hello::{HelloFacts, HelloRefusal, hello_refusal};
pub use rules::{RuleError, RuleGuard, RuleSpec};
pub use table::{
    Bound, Delivery, DispatchTable, EndpointId, Event, GuardDrops, Limits, PerIngress, PerReason,
    Stats, StoreError, Stored, TableError, TapItem,
};
