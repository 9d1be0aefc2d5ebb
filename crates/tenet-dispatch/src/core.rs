//! The host's logic without I/O: [`HostCore`] is the dispatch table with
//! everything a host decides around it, and a runtime (the tokio daemon of
//! `tenet-host`, or a simulator) does only what the core's [`Effect`]s say.
//!
//! Inputs are method calls with `now`: a message from an endpoint
//! ([`HostCore::store`]), a message from another host whose origin the
//! transport established ([`HostCore::remote_ingress`]), a service that
//! could not take a request ([`HostCore::service_busy`]), time
//! ([`HostCore::handle_timeout`]). Outputs are [`Effect`]s, polled with
//! [`HostCore::poll_effect`]: wake the reader of an endpoint of some
//! [`EndpointKind`], hand a request to a service of the host entity, log.
//!
//! What the core decides itself:
//! - the endpoint registry: which kind of reader each endpoint is, so the
//!   runtime wakes an app, the card, a peer link or the default route
//!   without asking around;
//! - the host entity `DOMAIN:0`: requests of a service's mtypes go to the
//!   service; the entity answers echo itself and refuses everything else
//!   ([`host_entity_answer`]);
//! - remote ingress, the one policy of every transport ([`IngressRefusal`]).
//!
//! The model is quinn-proto's `Endpoint`: state and decisions here, sockets
//! and timers in the driver.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tenet_proto::notice::{Refused, Undeliverable, UndeliverableReason};
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype};

use crate::guard::{Dropped, Ingress};
use crate::table::{DispatchTable, EndpointId, Event, Limits, StoreError, Stored};

/// What reads an endpoint's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    /// A local app, on the app socket.
    App,
    /// The host's card, through the smartcard proxy.
    Card,
    /// A link to another host.
    Peer,
    /// The default route: a transport that reaches hosts by subject, not
    /// by link (NATS).
    DefaultRoute,
    /// The host's own entity, `DOMAIN:0`: read by the core itself.
    HostEntity,
}

/// A service of the host entity, as the core knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub usize);

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The endpoint has messages or tap items to read: wake its reader.
    Wake {
        /// The endpoint.
        ep: EndpointId,
        /// What reads it.
        kind: EndpointKind,
    },
    /// A request to the host entity for a service.
    Service {
        /// The service.
        service: ServiceId,
        /// The request.
        message: Message,
    },
    /// A guard note (a `log` rule) to write to the log.
    GuardNote(String),
    /// A message a guard dropped, for the log.
    GuardDropped {
        /// The path it came in on.
        ingress: Ingress,
        /// Its sender.
        src: EntityId,
        /// Its destination.
        dst: EntityId,
        /// Its mtype.
        mtype: Mtype,
        /// The guard and reason.
        why: Dropped,
    },
    /// A notice that could not be stored (the table was full).
    NoticeDropped {
        /// Who it was for.
        to: EntityId,
        /// Why it was sent.
        reason: UndeliverableReason,
    },
    /// An answer of the host entity that the table could not store.
    AnswerDropped {
        /// Who it was for.
        to: EntityId,
        /// Why.
        error: StoreError,
    },
}

/// Why remote ingress refused a message from another host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressRefusal {
    /// Its src is in no domain its sender may send from: a forgery.
    #[error("src {0} is not in a domain of the sending host")]
    Forged(EntityId),
    /// Its src claims one of this host's own domains: a forgery.
    #[error("src {0} claims a domain of this host")]
    OwnDomain(EntityId),
    /// An `undeliverable` notice about a message to an entity of this host:
    /// only this host can know that, so another host's is a forgery (it
    /// would make a local app give up on its own card).
    #[error("{src} reports {dst}, an entity of this host, undeliverable")]
    ForgedNotice {
        /// The notice's sender.
        src: EntityId,
        /// The local entity it names.
        dst: EntityId,
    },
    /// The guard chain dropped it (first the default remote-ingress guard).
    #[error("{0}")]
    Guard(Dropped),
    /// The table could not take it; its sender was told `undeliverable`.
    #[error("{0}")]
    NotStored(StoreError),
}

/// What the host entity `me` answers to `m` when no service takes it: an
/// echo reply to an echo request, nothing to a notice, `refused` to
/// anything else.
pub fn host_entity_answer(me: EntityId, m: &Message) -> Option<Message> {
    match m.mtype() {
        Mtype::ECHO_REQUEST => Some(Message::new(
            me,
            m.src(),
            Mtype::ECHO_REPLY,
            m.param.clone(),
        )),
        Mtype::ECHO_REPLY | Mtype::UNDELIVERABLE | Mtype::REFUSED => None,
        other => Some(Message::new(
            me,
            m.src(),
            Mtype::REFUSED,
            Refused {
                mtype: other,
                text: "the host entity answers only echo-request".into(),
            }
            .to_bytes(),
        )),
    }
}

/// A host's decisions, without I/O.
pub struct HostCore {
    table: DispatchTable,
    kinds: HashMap<EndpointId, EndpointKind>,
    host_ep: EndpointId,
    /// The mtypes of each service, by [`ServiceId`].
    services: Vec<Vec<Mtype>>,
    effects: VecDeque<Effect>,
}

impl HostCore {
    /// A core for the host entity `host_id` (`DOMAIN:0`) with `limits`.
    pub fn new(host_id: EntityId, limits: Limits) -> Self {
        let mut table = DispatchTable::new(host_id, limits);
        let host_ep = table.add_endpoint();
        table
            .bind(host_ep, host_id)
            .expect("a fresh table has no bindings");
        Self {
            table,
            kinds: HashMap::from([(host_ep, EndpointKind::HostEntity)]),
            host_ep,
            services: Vec::new(),
            effects: VecDeque::new(),
        }
    }

    /// The dispatch table, to read.
    pub fn table(&self) -> &DispatchTable {
        &self.table
    }

    /// The dispatch table, to set up and to take messages from (taking
    /// causes no events). A change that stores messages goes through
    /// [`HostCore::store`] so that its effects are seen.
    pub fn table_mut(&mut self) -> &mut DispatchTable {
        &mut self.table
    }

    /// The table's bounds.
    pub fn limits(&self) -> Limits {
        self.table.limits()
    }

    /// Takes the next message waiting for `ep` (its reader reads).
    pub fn take(&mut self, ep: EndpointId) -> Option<crate::table::Delivery> {
        self.table.take(ep)
    }

    /// Takes the next tap item waiting for `ep`.
    pub fn take_tap(&mut self, ep: EndpointId) -> Option<crate::table::TapItem> {
        self.table.take_tap(ep)
    }

    /// Tells the sender of `failed` that it could not be delivered.
    pub fn undeliverable(&mut self, failed: &Message, reason: UndeliverableReason, now: Instant) {
        self.table.undeliverable(failed, reason, now);
        self.process(now);
    }

    /// Works out the effects of changes made through
    /// [`HostCore::table_mut`] (a runtime calls it after each batch).
    pub fn process_events(&mut self, now: Instant) {
        self.process(now);
    }

    /// The host entity's id.
    pub fn host_id(&self) -> EntityId {
        self.table.host_id()
    }

    /// A new endpoint read by a `kind` reader.
    pub fn add_endpoint(&mut self, kind: EndpointKind) -> EndpointId {
        let ep = self.table.add_endpoint();
        self.kinds.insert(ep, kind);
        ep
    }

    /// What reads `ep`.
    pub fn kind(&self, ep: EndpointId) -> Option<EndpointKind> {
        self.kinds.get(&ep).copied()
    }

    /// Removes `ep` (its reader went away): its bindings, handlers and
    /// queued messages, whose senders are told.
    pub fn remove_endpoint(&mut self, ep: EndpointId, now: Instant) {
        self.table.remove_endpoint(ep, now);
        self.kinds.remove(&ep);
        self.process(now);
    }

    /// Registers a service of the host entity for `mtypes`; requests of
    /// those mtypes to the host entity become [`Effect::Service`].
    pub fn add_service(&mut self, mtypes: Vec<Mtype>) -> ServiceId {
        self.services.push(mtypes);
        ServiceId(self.services.len() - 1)
    }

    /// Stores `m`, arrived on `ingress`, and works out the effects.
    pub fn store(
        &mut self,
        ingress: Ingress,
        m: Message,
        now: Instant,
    ) -> Result<Stored, StoreError> {
        let r = self.table.store(ingress, m, now);
        self.process(now);
        r
    }

    /// Remote ingress, the one path of every transport: a message from
    /// another host whose origin the transport established as `from` (the
    /// domains the TLS link's certificate names; over NATS, the sender
    /// domain of the subject) is stored only if its src is in one of those
    /// domains, is not in one of this host's own domains, is not a notice
    /// about one of this host's entities, and passes the guard chain,
    /// beginning with the default remote-ingress guard. A message the
    /// table cannot take gets its sender an `undeliverable` notice.
    pub fn remote_ingress(
        &mut self,
        from: &[Domain],
        m: Message,
        now: Instant,
    ) -> Result<(), IngressRefusal> {
        let r = self.remote_ingress_inner(from, m, now);
        self.process(now);
        r
    }

    fn remote_ingress_inner(
        &mut self,
        from: &[Domain],
        m: Message,
        now: Instant,
    ) -> Result<(), IngressRefusal> {
        let src = m.src();
        if !from.contains(&src.domain()) {
            return Err(IngressRefusal::Forged(src));
        }
        if self.table.is_local_domain(src.domain()) {
            return Err(IngressRefusal::OwnDomain(src));
        }
        if m.mtype() == Mtype::UNDELIVERABLE
            && let Ok(u) = Undeliverable::decode(&m.param)
            && self.table.is_local_domain(u.dst.domain())
        {
            return Err(IngressRefusal::ForgedNotice { src, dst: u.dst });
        }
        // Only the header is needed to tell the sender: the param is not copied.
        let header = Message {
            header: m.header,
            param: Vec::new(),
        };
        match self.table.store(Ingress::Remote, m, now) {
            Ok(_) => Ok(()),
            Err(StoreError::Guard(d)) => Err(IngressRefusal::Guard(d)),
            Err(e) => {
                self.table
                    .undeliverable(&header, UndeliverableReason::QUEUE_FULL, now);
                Err(IngressRefusal::NotStored(e))
            }
        }
    }

    /// A service could not take `request` (its queue is full): its sender
    /// is told that the service `name` is busy.
    pub fn service_busy(&mut self, name: &str, request: &Message, now: Instant) {
        let busy = Message::new(
            self.host_id(),
            request.src(),
            Mtype::REFUSED,
            Refused {
                mtype: request.mtype(),
                text: format!("the {name} is busy; ask again later"),
            }
            .to_bytes(),
        );
        self.answer(busy, now);
        self.process(now);
    }

    /// Stores messages a service sends as the host entity.
    pub fn send_as_host(&mut self, messages: impl IntoIterator<Item = Message>, now: Instant) {
        for m in messages {
            self.answer(m, now);
        }
        self.process(now);
    }

    /// Expires messages whose time to live ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.table.poll_timeout().is_some_and(|d| d <= now) {
            self.table.handle_timeout(now);
        }
        self.process(now);
    }

    /// When [`HostCore::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.table.poll_timeout()
    }

    /// The next thing the runtime must do.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    fn answer(&mut self, m: Message, now: Instant) {
        let to = m.dst();
        if let Err(error) = self.table.store(Ingress::Internal, m, now) {
            self.effects.push_back(Effect::AnswerDropped { to, error });
        }
    }

    /// Turns the table's events into effects; serves the host entity.
    fn process(&mut self, now: Instant) {
        while let Some(ev) = self.table.poll_event() {
            match ev {
                Event::Readable(ep) | Event::TapReadable(ep) if ep == self.host_ep => {
                    self.serve_host_entity(now);
                }
                Event::Readable(ep) | Event::TapReadable(ep) => {
                    if let Some(&kind) = self.kinds.get(&ep) {
                        let wake = Effect::Wake { ep, kind };
                        if !self.effects.contains(&wake) {
                            self.effects.push_back(wake);
                        }
                    }
                }
                Event::GuardNote(n) => self.effects.push_back(Effect::GuardNote(n)),
                Event::GuardDropped {
                    ingress,
                    src,
                    dst,
                    mtype,
                    why,
                } => self.effects.push_back(Effect::GuardDropped {
                    ingress,
                    src,
                    dst,
                    mtype,
                    why,
                }),
                Event::NoticeDropped { to, reason } => {
                    self.effects.push_back(Effect::NoticeDropped { to, reason })
                }
            }
        }
    }

    fn serve_host_entity(&mut self, now: Instant) {
        let me = self.host_id();
        while let Some(d) = self.table.take(self.host_ep) {
            let mtype = d.message.mtype();
            if let Some(i) = self.services.iter().position(|s| s.contains(&mtype)) {
                self.effects.push_back(Effect::Service {
                    service: ServiceId(i),
                    message: d.message,
                });
            } else if let Some(answer) = host_entity_answer(me, &d.message) {
                self.answer(answer, now);
            }
        }
        while self.table.take_tap(self.host_ep).is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use tenet_proto::{Filter, Port};

    use super::*;

    fn dom(b: u8) -> Domain {
        Domain::new([b; 12])
    }

    fn id(d: Domain, p: u32) -> EntityId {
        EntityId::new(d, Port::new(p))
    }

    #[test]
    fn the_host_entity_answers_echo_and_hands_service_mtypes_to_the_service() {
        let me = dom(1);
        let now = Instant::now();
        let mut core = HostCore::new(me.owner(), Limits::default());
        let svc = core.add_service(vec![Mtype(0x0207)]);
        let app = core.add_endpoint(EndpointKind::App);
        let a = id(me, 5);
        core.table_mut().bind(app, a).unwrap();

        core.store(
            Ingress::App,
            Message::new(a, me.owner(), Mtype::ECHO_REQUEST, vec![9]),
            now,
        )
        .unwrap();
        assert_eq!(
            core.poll_effect(),
            Some(Effect::Wake {
                ep: app,
                kind: EndpointKind::App
            })
        );
        let reply = core.table_mut().take(app).unwrap().message;
        assert_eq!((reply.mtype(), reply.param), (Mtype::ECHO_REPLY, vec![9]));

        let request = Message::new(a, me.owner(), Mtype(0x0207), vec![1, 2]);
        core.store(Ingress::App, request.clone(), now).unwrap();
        assert_eq!(
            core.poll_effect(),
            Some(Effect::Service {
                service: svc,
                message: request.clone()
            })
        );
        assert_eq!(core.poll_effect(), None);

        core.service_busy("TTP", &request, now);
        let busy = core.table_mut().take(app).unwrap().message;
        assert_eq!(busy.mtype(), Mtype::REFUSED);
        let text = Refused::decode(&busy.param).unwrap().text;
        assert_eq!(text, "the TTP is busy; ask again later");
    }

    #[test]
    fn each_endpoint_is_woken_as_its_kind_once_until_read() {
        let me = dom(1);
        let now = Instant::now();
        let mut core = HostCore::new(me.owner(), Limits::default());
        let card = core.add_endpoint(EndpointKind::Card);
        let peer = core.add_endpoint(EndpointKind::Peer);
        core.table_mut().add_card(dom(2), []);
        core.table_mut().bind(card, dom(2).owner()).unwrap();
        core.table_mut()
            .subscribe(peer, Filter::to_domain(dom(3)))
            .unwrap();
        let app = id(me, 7);
        for dst in [dom(2).owner(), dom(3).owner(), dom(2).owner()] {
            core.store(
                Ingress::App,
                Message::new(app, dst, Mtype::ECHO_REQUEST, vec![]),
                now,
            )
            .unwrap();
        }
        let effects: Vec<Effect> = std::iter::from_fn(|| core.poll_effect()).collect();
        assert_eq!(
            effects,
            vec![
                Effect::Wake {
                    ep: card,
                    kind: EndpointKind::Card
                },
                Effect::Wake {
                    ep: peer,
                    kind: EndpointKind::Peer
                },
            ]
        );
        assert_eq!(core.kind(card), Some(EndpointKind::Card));
    }

    /// The checks of remote ingress, in order, the same for TLS and NATS.
    #[test]
    fn remote_ingress_checks_origin_own_domains_then_the_guard() {
        let (me, card, peer, other) = (dom(0xa1), dom(0x4b), dom(0xb2), dom(0xc3));
        let mut t = HostCore::new(me.owner(), Limits::default());
        t.table_mut().add_card(card, [Mtype::CHANGE_PIN]);
        let ep = t.add_endpoint(EndpointKind::Card);
        t.table_mut()
            .subscribe(ep, Filter::to_domain(card))
            .unwrap();
        let now = Instant::now();
        let from = |d: Domain| id(d, 1);
        let m = |src, mtype| Message::new(src, card.owner(), mtype, vec![]);
        let mut ingress = |src, mtype| t.remote_ingress(&[peer], m(src, mtype), now);
        assert_eq!(
            ingress(from(other), Mtype::ECHO_REQUEST),
            Err(IngressRefusal::Forged(from(other)))
        );
        assert_eq!(
            ingress(from(me), Mtype::ECHO_REQUEST),
            Err(IngressRefusal::Forged(from(me)))
        );
        assert!(matches!(
            ingress(from(peer), Mtype::CHANGE_PIN),
            Err(IngressRefusal::Guard(why)) if why.to_string().contains("privileged")
        ));
        assert_eq!(ingress(from(peer), Mtype::ECHO_REQUEST), Ok(()));
        // A sender authorized for a domain of this host still cannot use it.
        assert_eq!(
            t.remote_ingress(&[card], m(from(card), Mtype::ECHO_REQUEST), now),
            Err(IngressRefusal::OwnDomain(from(card)))
        );
        assert_eq!(t.table().len(), 1, "only the honest message was stored");

        // Another host cannot report a local card undeliverable to a local
        // app; it may report its own entities.
        let notice = |dst| Undeliverable {
            dst,
            mtype: Mtype::ECHO_REQUEST,
            reason: UndeliverableReason::NO_ROUTE,
        };
        let app = id(card, 7);
        let to_app =
            |n: Undeliverable| Message::new(peer.owner(), app, Mtype::UNDELIVERABLE, n.to_bytes());
        assert_eq!(
            t.remote_ingress(&[peer], to_app(notice(card.owner())), now),
            Err(IngressRefusal::ForgedNotice {
                src: peer.owner(),
                dst: card.owner()
            })
        );
        assert_eq!(
            t.remote_ingress(&[peer], to_app(notice(from(peer))), now),
            Ok(())
        );
        assert_eq!(t.table().len(), 2);
    }
}
