//! # tenet-host: the host daemon runtime
//!
//! Drives the host's core ([`tenet_dispatch::HostCore`]: the dispatch table,
//! the endpoint registry, the host entity and its services, remote ingress)
//! on tokio, doing what its effects say: it listens on the
//! app socket, binds each connection to the id it acquires (the capability
//! of paper 4.4), stamps and checks `src`, moves messages between the
//! dispatch table and the apps' sockets, answers echo for the host's own
//! entity, and expires messages.
//!
//! - [`config`]: the TOML configuration.
//! - [`state`]: the persistent software domain and port counter.
//! - [`link`]: card links (in-process, PC/SC) and the APDU session.
//! - `proxy`: the smartcard proxy between table and card: its thread, and
//!   the tasks that deliver to the in-process card themselves.
//! - [`server`]: the socket server; [`start`] runs a daemon.
//!
//! - [`remote`]: the remote proxy: links to other hosts over TLS, routing
//!   by domain, reliable delivery across link breaks.
//! - [`plugin`]: what an application plugs in: card applets, card guards,
//!   services of the host entity ([`HostBuilder`]). The host itself knows
//!   no application.
//! - [`transport`]: the [`transport::RemoteTransport`] trait: TLS links,
//!   NATS and in-memory links between hosts in one process.
//! - [`nats`]: the NATS transport: subjects derived from domains, no routing
//!   table; origin bound to the subject.
//! - `metrics`: the host's figures, read from its counters when asked:
//!   `/metrics` (`[metrics] listen`) and the app socket's status request
//!   (`tenet status`).

#![warn(missing_docs)]

pub mod config;
pub mod link;
mod metrics;
pub mod nats;
pub mod plugin;
mod proxy;
pub mod remote;
pub mod server;
pub mod state;
pub mod transport;

pub use config::{Config, ConfigError};
pub use plugin::HostBuilder;
pub use server::{HostError, HostHandle, start};

/// True when the daemon runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// An error and its causes, joined with ": ".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
