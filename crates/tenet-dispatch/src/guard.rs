//! Guard (paper 4.3.6, 4.4): filters on every inbound path of the dispatch
//! table.
//!
//! A [`GuardChain`] runs its [`Guard`]s in order for each message entering
//! the table; the first one that drops the message decides. Guards see the
//! [`Ingress`] path the message came in on and a [`GuardContext`] with the
//! host's card domains and privileged mtypes, which the table keeps current.

use std::collections::HashSet;
use std::time::Instant;

use tenet_proto::{Domain, EntityId, Header, Message, Mtype};

/// The inbound path a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ingress {
    /// From a local app through its capability (src stamped by the daemon).
    App,
    /// From a local card through its smartcard proxy.
    Card,
    /// From another host through a remote proxy.
    Remote,
    /// From the host daemon itself (notices, built-in services).
    Internal,
}

impl Ingress {
    /// Every path, in the order counters list them.
    pub const ALL: [Ingress; 4] = [
        Ingress::App,
        Ingress::Card,
        Ingress::Remote,
        Ingress::Internal,
    ];

    /// Lower-case name, as used in the config.
    pub fn name(self) -> &'static str {
        match self {
            Ingress::App => "app",
            Ingress::Card => "card",
            Ingress::Remote => "remote",
            Ingress::Internal => "internal",
        }
    }
}

/// What the table tells guards about the host.
#[derive(Debug, Default, Clone)]
pub struct GuardContext {
    /// Domains of the cards attached to this host.
    pub card_domains: HashSet<Domain>,
    /// Mtypes that the local cards' applets declare privileged.
    pub privileged: HashSet<Mtype>,
}

/// A guard's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the message pass to the next guard.
    Pass,
    /// Let the message pass and record a note (a `log` rule).
    Note(String),
    /// Drop the message; the reason names the cause.
    Drop(String),
    /// Deliver the message to `to` instead of its dst, and record `note`.
    /// A redirect ends the chain: the guards after this one do not see the
    /// message. This is how a guard holds a message for a local app that
    /// decides about it (the paper's option 2a).
    Redirect {
        /// The new destination.
        to: EntityId,
        /// Why, for the log.
        note: String,
    },
}

/// A programmatic guard. Implementations must not block: they run under the
/// dispatch table's lock.
pub trait Guard: Send {
    /// A short name for logs and errors.
    fn name(&self) -> &str;

    /// Decides about one message.
    fn check(&mut self, cx: &GuardContext, ingress: Ingress, h: &Header, now: Instant) -> Verdict;

    /// Decides about one message when the guard needs its param too. The
    /// chain calls this; by default it asks [`Guard::check`] with the
    /// header.
    fn inspect(
        &mut self,
        cx: &GuardContext,
        ingress: Ingress,
        m: &Message,
        now: Instant,
    ) -> Verdict {
        self.check(cx, ingress, &m.header, now)
    }
}

/// A message a guard dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dropped by guard {guard}: {reason}")]
pub struct Dropped {
    /// The guard's name.
    pub guard: String,
    /// Its reason.
    pub reason: String,
}

/// An ordered list of guards.
#[derive(Default)]
pub struct GuardChain {
    guards: Vec<Box<dyn Guard>>,
}

impl GuardChain {
    /// An empty chain, which passes everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// The chain every host starts with: the paper's default remote-ingress
    /// guard.
    pub fn with_defaults() -> Self {
        let mut c = Self::new();
        c.push(Box::new(RemoteIngressGuard));
        c
    }

    /// Appends a guard.
    pub fn push(&mut self, g: Box<dyn Guard>) {
        self.guards.push(g);
    }

    /// Names of the guards, in order.
    pub fn names(&self) -> Vec<String> {
        self.guards.iter().map(|g| g.name().to_owned()).collect()
    }

    /// Runs the chain; notes from `log` and redirect verdicts are appended
    /// to `notes`. `Ok(Some(to))` means a guard redirected the message to
    /// `to`.
    pub fn check(
        &mut self,
        cx: &GuardContext,
        ingress: Ingress,
        m: &Message,
        now: Instant,
        notes: &mut Vec<String>,
    ) -> Result<Option<EntityId>, Dropped> {
        for g in &mut self.guards {
            match g.inspect(cx, ingress, m, now) {
                Verdict::Pass => {}
                Verdict::Note(n) => notes.push(format!("{}: {n}", g.name())),
                Verdict::Redirect { to, note } => {
                    notes.push(format!(
                        "{}: {} redirected to {to}: {note}",
                        g.name(),
                        m.header.dst
                    ));
                    return Ok(Some(to));
                }
                Verdict::Drop(reason) => {
                    return Err(Dropped {
                        guard: g.name().to_owned(),
                        reason,
                    });
                }
            }
        }
        Ok(None)
    }
}

/// The default guard of paper 4.4 on remote ingress: drops a remote message
/// whose src domain is a local card's domain (no remote entity can hold an
/// id there, so it is forged), and a remote message of a privileged mtype
/// addressed to a local card.
#[derive(Debug, Default)]
pub struct RemoteIngressGuard;

impl Guard for RemoteIngressGuard {
    fn name(&self) -> &str {
        "remote-ingress"
    }

    fn check(&mut self, cx: &GuardContext, ingress: Ingress, h: &Header, _now: Instant) -> Verdict {
        if ingress != Ingress::Remote {
            return Verdict::Pass;
        }
        if cx.card_domains.contains(&h.src.domain()) {
            return Verdict::Drop(format!(
                "remote message claims src {} in local card domain",
                h.src
            ));
        }
        if cx.card_domains.contains(&h.dst.domain()) && cx.privileged.contains(&h.mtype) {
            return Verdict::Drop(format!(
                "privileged mtype {} from remote {} to local card domain",
                h.mtype, h.src
            ));
        }
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_proto::{EntityId, Port};

    fn id(d: u8, p: u32) -> EntityId {
        EntityId::new(Domain::new([d; 12]), Port::new(p))
    }

    fn m(h: &Header) -> Message {
        Message::new(h.src, h.dst, h.mtype, Vec::new())
    }

    fn cx() -> GuardContext {
        GuardContext {
            card_domains: [Domain::new([1; 12])].into(),
            privileged: [Mtype(0x0201)].into(),
        }
    }

    #[test]
    fn remote_guard_drops_forged_local_card_domain_src() {
        let mut c = GuardChain::with_defaults();
        let h = Header {
            src: id(1, 5),
            dst: id(1, 0),
            mtype: Mtype::ECHO_REQUEST,
        };
        let err = c
            .check(&cx(), Ingress::Remote, &m(&h), Instant::now(), &mut vec![])
            .unwrap_err();
        assert_eq!(err.guard, "remote-ingress");
        // The same header from a local app passes: apps of the card's domain live here.
        assert!(
            c.check(&cx(), Ingress::App, &m(&h), Instant::now(), &mut vec![])
                .is_ok()
        );
    }

    #[test]
    fn remote_guard_drops_privileged_mtype_to_local_card_only() {
        let mut c = GuardChain::with_defaults();
        let now = Instant::now();
        let privileged_to_card = Header {
            src: id(2, 5),
            dst: id(1, 0),
            mtype: Mtype(0x0201),
        };
        assert!(
            c.check(
                &cx(),
                Ingress::Remote,
                &m(&privileged_to_card),
                now,
                &mut vec![]
            )
            .is_err()
        );
        let plain_to_card = Header {
            mtype: Mtype::ECHO_REQUEST,
            ..privileged_to_card
        };
        assert!(
            c.check(&cx(), Ingress::Remote, &m(&plain_to_card), now, &mut vec![])
                .is_ok()
        );
        let privileged_elsewhere = Header {
            dst: id(3, 0),
            ..privileged_to_card
        };
        assert!(
            c.check(
                &cx(),
                Ingress::Remote,
                &m(&privileged_elsewhere),
                now,
                &mut vec![]
            )
            .is_ok()
        );
    }
}
