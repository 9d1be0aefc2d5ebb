//! Whether a peer host's hello is accepted: a pure decision over facts
//! the transport gathered (the link's certificate, the peer registry, the
//! table). No I/O; every transport that runs a hello asks it.

use tenet_proto::{Domain, EntityId};

/// What decides whether a hello is accepted. `E` is the transport's
/// reason why its credential (a TLS certificate) does not name what the
/// link would carry.
#[derive(Debug)]
pub struct HelloFacts<'a, E> {
    /// This host.
    pub me: EntityId,
    /// The host id in the hello.
    pub host: EntityId,
    /// The host this peer was before, if any.
    pub pinned: Option<EntityId>,
    /// Whether the credential names the host's domain, the announced
    /// domains and the domains the config routes to this peer.
    pub named: Result<(), E>,
    /// The domains the link would carry, each with whether it is local.
    pub wanted: &'a [(Domain, bool)],
    /// Domains other peers serve.
    pub others: &'a [Domain],
}

/// Why a hello is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloRefusal<E> {
    /// The hello names another host than the one this peer was before.
    #[error("expected host {expected}, got {got}")]
    OtherHost {
        /// The peer's host id so far.
        expected: EntityId,
        /// The host id in the hello.
        got: EntityId,
    },
    /// The hello is this host's own.
    #[error("a link to itself")]
    Itself,
    /// The link's credential does not name every domain the link would
    /// carry.
    #[error("{0}")]
    Unnamed(E),
    /// The peer announces a domain of this host.
    #[error("domain {0} is local here")]
    LocalDomain(Domain),
    /// The peer announces a domain another peer serves.
    #[error("domain {0} is already served by another peer")]
    Served(Domain),
}

/// The first reason that applies, in order: another host than before,
/// this host itself, a credential that does not name what the link would
/// carry, a local domain, a domain another peer serves. `None`: accepted.
pub fn hello_refusal<E>(f: HelloFacts<'_, E>) -> Option<HelloRefusal<E>> {
    if let Some(expected) = f.pinned.filter(|h| *h != f.host) {
        return Some(HelloRefusal::OtherHost {
            expected,
            got: f.host,
        });
    }
    if f.host == f.me {
        return Some(HelloRefusal::Itself);
    }
    if let Err(e) = f.named {
        return Some(HelloRefusal::Unnamed(e));
    }
    f.wanted.iter().find_map(|(d, is_local)| {
        if *is_local {
            Some(HelloRefusal::LocalDomain(*d))
        } else if f.others.contains(d) {
            Some(HelloRefusal::Served(*d))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_proto::Port;

    fn dom(b: u8) -> Domain {
        Domain::new([b; 12])
    }

    /// The hello decisions, in order: the same host as before, not this
    /// host, a credential naming what the link carries, no local domain,
    /// no domain another peer serves.
    #[test]
    fn a_hello_is_refused_for_the_first_reason_that_applies() {
        let (me, peer, other) = (dom(1).owner(), dom(2).owner(), dom(3).owner());
        let ok: &[(Domain, bool)] = &[(dom(2), false)];
        let served = [dom(2)];
        let facts = |host, pinned, named, wanted, others| HelloFacts {
            me,
            host,
            pinned,
            named,
            wanted,
            others,
        };
        assert_eq!(
            hello_refusal::<&str>(facts(peer, None, Ok(()), ok, &[])),
            None
        );
        assert_eq!(
            hello_refusal::<&str>(facts(peer, Some(peer), Ok(()), ok, &[])),
            None
        );
        assert_eq!(
            hello_refusal::<&str>(facts(other, Some(peer), Ok(()), ok, &[])),
            Some(HelloRefusal::OtherHost {
                expected: peer,
                got: other
            })
        );
        assert_eq!(
            hello_refusal::<&str>(facts(me, None, Ok(()), ok, &[])),
            Some(HelloRefusal::Itself)
        );
        assert_eq!(
            hello_refusal(facts(peer, None, Err("no certificate"), ok, &[])),
            Some(HelloRefusal::Unnamed("no certificate"))
        );
        // A pinned other host is refused before an unnamed credential.
        assert!(matches!(
            hello_refusal(facts(other, Some(peer), Err("no certificate"), ok, &[])),
            Some(HelloRefusal::OtherHost { .. })
        ));
        let local: &[(Domain, bool)] = &[(dom(2), false), (dom(9), true)];
        assert_eq!(
            hello_refusal::<&str>(facts(peer, None, Ok(()), local, &[])),
            Some(HelloRefusal::LocalDomain(dom(9)))
        );
        assert_eq!(
            hello_refusal::<&str>(facts(peer, None, Ok(()), ok, &served)),
            Some(HelloRefusal::Served(dom(2)))
        );
        // An id of another port in the peer's domain is another host.
        let twin = EntityId::new(dom(2), Port::new(1));
        assert!(hello_refusal::<&str>(facts(twin, Some(peer), Ok(()), ok, &[])).is_some());
    }
}
