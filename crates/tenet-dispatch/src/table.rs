//! The dispatch table (paper 4.3.1, 4.3.2).
//!
//! Every message entering the host is stored here until its reader takes
//! it. Readers are *endpoints*: an app connection, a smartcard proxy, a
//! remote proxy, or one of the daemon's built-in entities. An endpoint
//! reads messages for the ids bound to it, and messages claimed by its
//! handlers (subscriptions with a [`Filter`]). Taps get copies.
//!
//! Routing of a stored message, in order:
//! 1. the endpoint its `dst` is bound to, tagged with that endpoint's first
//!    matching subscription (or [`SubscriptionId`] 0);
//! 2. otherwise the first subscription, in registration order, whose filter
//!    matches;
//! 3. otherwise, for a `dst` outside the local domains, the default route
//!    (a broker link) if one is set;
//! 4. otherwise an `undeliverable` notice goes to the sender: reason
//!    *unknown destination* if `dst` is in a local domain, *no route* if not.
//!
//! Bounds, in messages and in bytes ([`crate::budget`]; a message costs its
//! encoded length):
//! - per destination: [`Limits::per_destination`] messages and
//!   [`Limits::per_destination_bytes`] bytes wait for one endpoint;
//! - in total: [`Limits::total`] messages and [`Limits::total_bytes`] bytes
//!   in the whole table, tap copies included;
//! - per sender: one sender holds at most [`Limits::per_sender_share`] of
//!   each of those, so one sender cannot fill a destination, or the table,
//!   that others need. A sender is a local entity (an app, a card, the
//!   host), or a whole foreign domain (a peer may use any port of it).
//!
//! A message that would exceed any bound is refused with
//! [`StoreError::QueueFull`], naming the bound; nothing is stored and
//! nothing already stored is dropped. Notices the table generates itself
//! are no sender's: they may exceed the per-destination bounds up to twice
//! them (never the total ones), so a sender learns of a failure even when
//! its own queue is full, yet one reader that does not read cannot fill
//! the table with notices; a notice that cannot be stored is counted in
//! [`Stats::notices_dropped`] and reported as [`Event::NoticeDropped`]. No
//! notice is ever generated about a notice.
//!
//! Fair service: an endpoint's messages wait in one queue per sender, and
//! [`DispatchTable::take`] serves those queues in turn, one message each.
//! Messages of one sender keep their order; a sender with a deep queue
//! (a flood of echo requests to a card) delays another sender's message by
//! at most one message of its own.
//!
//! Taps: copies wait in the tapping endpoint's tap queue, at most
//! [`Limits::tap_queue`] items and [`Limits::per_destination_bytes`] bytes;
//! they count in the total bounds, all taps together as one sender. A copy
//! beyond a bound is skipped and the tap told how many it missed; a tap
//! never holds up delivery.
//!
//! Time to live: a message not read within [`Limits::ttl`] is removed and
//! its sender gets an `undeliverable` notice with reason *expired*. Time is
//! an input (`now`); call [`DispatchTable::handle_timeout`] at or after
//! [`DispatchTable::poll_timeout`].
//!
//! When an endpoint is removed (an app disconnects), the messages waiting
//! for it produce *destination gone* notices.
//!
//! Taps get copies with the param of PIN messages ([`SECRET_PARAMS`])
//! removed: they show that a PIN was verified, never the PIN.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tenet_proto::app::{SubscriptionId, TapId};
use tenet_proto::notice::{Undeliverable, UndeliverableReason};
use tenet_proto::{Codec, Domain, EntityId, Filter, Message, Mtype};

use crate::budget::{Budget, Exceeded, Share, Unit, Usage};
use crate::guard::{Dropped, Guard, GuardChain, GuardContext, Ingress};

/// Mtypes whose param is a secret (a PIN or PUK): tap copies of them carry
/// an empty param.
pub const SECRET_PARAMS: [Mtype; 3] = [Mtype::VERIFY_PIN, Mtype::UNBLOCK_PIN, Mtype::CHANGE_PIN];

/// A reader of the table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct EndpointId(pub u64);

/// The table's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages waiting for one endpoint.
    pub per_destination: usize,
    /// Bytes waiting for one endpoint.
    pub per_destination_bytes: usize,
    /// Messages waiting in the whole table, tap copies included.
    pub total: usize,
    /// Bytes held in the whole table, tap copies included.
    pub total_bytes: usize,
    /// The most of each per-destination and total bound that one sender's
    /// messages may take.
    pub per_sender_share: Share,
    /// How long a message may wait to be read.
    pub ttl: Duration,
    /// Tap copies waiting for one endpoint before copies are skipped.
    pub tap_queue: usize,
    /// Subscriptions plus taps per endpoint.
    pub handlers_per_endpoint: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_destination: 1024,
            per_destination_bytes: 8 << 20,
            total: 65_536,
            total_bytes: 64 << 20,
            per_sender_share: Share::HALF,
            ttl: Duration::from_secs(30),
            tap_queue: 1024,
            handlers_per_endpoint: 64,
        }
    }
}

impl Limits {
    /// What may wait for one endpoint.
    pub fn per_destination_budget(&self) -> Budget {
        Budget::new(self.per_destination, self.per_destination_bytes)
    }

    /// What the whole table may hold.
    pub fn total_budget(&self) -> Budget {
        Budget::new(self.total, self.total_bytes)
    }
}

/// Which bound of the table a message would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// [`Limits::total`] or [`Limits::total_bytes`].
    Total,
    /// [`Limits::per_destination`] or [`Limits::per_destination_bytes`].
    PerDestination,
    /// The sender's [`Limits::per_sender_share`] of the total bound.
    SenderTotal,
    /// The sender's [`Limits::per_sender_share`] of the destination's bound.
    SenderPerDestination,
}

impl Bound {
    /// True for a sender's share.
    pub fn is_share(&self) -> bool {
        matches!(self, Bound::SenderTotal | Bound::SenderPerDestination)
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bound::Total => "total",
            Bound::PerDestination => "per-destination",
            Bound::SenderTotal => "this sender's share of the total",
            Bound::SenderPerDestination => "this sender's share of the per-destination",
        })
    }
}

/// Why a message was not stored. The table is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A bound is reached.
    #[error("queue full: {which} bound of {limit} {unit} reached for {dst}")]
    QueueFull {
        /// The message's destination.
        dst: EntityId,
        /// The bound.
        which: Bound,
        /// Its value.
        limit: usize,
        /// What it counts.
        unit: Unit,
    },
    /// A guard dropped the message.
    #[error(transparent)]
    Guard(#[from] Dropped),
    /// The message exceeds the maximum size.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

/// Why a table operation on endpoints or handlers failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// No such endpoint.
    #[error("no endpoint {0:?}")]
    NoEndpoint(EndpointId),
    /// The id is already bound to an endpoint.
    #[error("id {0} is already bound")]
    AlreadyBound(EntityId),
    /// No subscription or tap with that id on this endpoint.
    #[error("no subscription or tap {0} on this endpoint")]
    NoSuchHandler(u32),
    /// Too many subscriptions and taps on this endpoint.
    #[error("endpoint has {0} subscriptions and taps already")]
    TooManyHandlers(usize),
}

/// Where a stored message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Queued for an endpoint.
    Queued(EndpointId),
    /// Not deliverable; a notice went to the sender (unless the message was
    /// itself a notice).
    Undeliverable(UndeliverableReason),
}

/// Something the runtime should act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The endpoint's message queue went from empty to non-empty.
    Readable(EndpointId),
    /// The endpoint's tap queue went from empty to non-empty.
    TapReadable(EndpointId),
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
}

/// A message taken from the table by its reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The subscription that claimed it; 0 for a message to a bound id
    /// that no subscription of the endpoint matched.
    pub subscription: SubscriptionId,
    /// The message.
    pub message: Message,
}

/// An item from an endpoint's tap queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapItem {
    /// A copy of a matching message, with the time it was stored.
    Copy {
        /// The tap.
        tap: TapId,
        /// When it was stored.
        at: Instant,
        /// The copy.
        message: Message,
    },
    /// Copies skipped because the tap queue was full.
    Lagged {
        /// The tap.
        tap: TapId,
        /// How many.
        missed: u64,
    },
}

/// Counters since the table was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages stored for a reader.
    pub stored: u64,
    /// Messages taken by their readers.
    pub delivered: u64,
    /// Messages removed after their time to live.
    pub expired: u64,
    /// Messages that could not be routed.
    pub undeliverable: u64,
    /// Messages refused because a bound was reached (a sender's share
    /// included).
    pub refused_full: u64,
    /// Of those, messages refused because their sender's share was reached.
    pub refused_share: u64,
    /// Messages dropped by a guard.
    pub guard_dropped: u64,
    /// Notices that could not be stored.
    pub notices_dropped: u64,
    /// Tap copies skipped.
    pub tap_skipped: u64,
    /// The most bytes the table held at once (messages and tap copies).
    pub peak_bytes: u64,
    /// Messages stored for a reader, by the path they came in on (notices
    /// the table makes itself are not counted here).
    pub routed: PerIngress,
    /// Messages whose sender was told they cannot be delivered, by reason:
    /// no route or unknown destination, reported by a proxy, expired, their
    /// reader gone. A notice is never sent about a notice, but a notice
    /// that fails is counted too.
    pub undeliverable_by_reason: PerReason,
}

/// A count for each [`Ingress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerIngress([u64; 4]);

impl PerIngress {
    /// The count of `ingress`.
    pub fn get(&self, ingress: Ingress) -> u64 {
        self.0[Self::index(ingress)]
    }

    /// Every path and its count, in the order of [`Ingress::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (Ingress, u64)> + '_ {
        Ingress::ALL.into_iter().map(|i| (i, self.get(i)))
    }

    /// The sum over all paths.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn add(&mut self, ingress: Ingress) {
        self.0[Self::index(ingress)] += 1;
    }

    fn index(ingress: Ingress) -> usize {
        match ingress {
            Ingress::App => 0,
            Ingress::Card => 1,
            Ingress::Remote => 2,
            Ingress::Internal => 3,
        }
    }
}

/// A count for each [`UndeliverableReason`] this crate knows, and one for
/// all others together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerReason {
    /// Index: the reason's code for the known ones (1 to 5), 0 for others.
    counts: [u64; 6],
}

impl PerReason {
    /// The reasons counted one by one.
    pub const KNOWN: [UndeliverableReason; 5] = [
        UndeliverableReason::UNKNOWN_DESTINATION,
        UndeliverableReason::NO_ROUTE,
        UndeliverableReason::EXPIRED,
        UndeliverableReason::DESTINATION_GONE,
        UndeliverableReason::QUEUE_FULL,
    ];

    /// The count of `reason` (of all unknown reasons together, for one of
    /// them).
    pub fn get(&self, reason: UndeliverableReason) -> u64 {
        self.counts[Self::index(reason)]
    }

    /// Each of [`PerReason::KNOWN`] and its count.
    pub fn iter(&self) -> impl Iterator<Item = (UndeliverableReason, u64)> + '_ {
        Self::KNOWN.into_iter().map(|r| (r, self.get(r)))
    }

    /// Messages undeliverable for a reason outside [`PerReason::KNOWN`].
    pub fn other(&self) -> u64 {
        self.counts[0]
    }

    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, reason: UndeliverableReason) {
        self.counts[Self::index(reason)] += 1;
    }

    fn index(reason: UndeliverableReason) -> usize {
        if Self::KNOWN.contains(&reason) {
            usize::from(reason.0)
        } else {
            0
        }
    }
}

/// Messages one guard dropped, by the path they came in on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardDrops {
    /// The guard's name ([`Guard::name`]).
    pub guard: String,
    /// How many it dropped.
    pub dropped: PerIngress,
}

struct Queued {
    subscription: SubscriptionId,
    deadline: Instant,
    /// Generated by the table: counts against no sender's share.
    notice: bool,
    message: Message,
}

impl Queued {
    fn cost(&self) -> Usage {
        Usage::one(self.message.encoded_len())
    }
}

/// Whose share a message counts against.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Sender {
    /// A local entity: an app, a card, the host.
    Entity(EntityId),
    /// A foreign domain as a whole.
    Domain(Domain),
    /// All tap copies together.
    Taps,
}

/// One sender's messages waiting for one endpoint.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Queued>,
    /// The messages that count against the sender's share.
    charged: Usage,
}

struct Handler {
    id: u32,
    endpoint: EndpointId,
    filter: Filter,
}

#[derive(Default)]
struct Endpoint {
    /// Messages waiting, one queue per sender.
    lanes: HashMap<Sender, Lane>,
    /// Senders with messages waiting, in the order they are served.
    ready: VecDeque<Sender>,
    /// Everything in `lanes`.
    held: Usage,
    taps: VecDeque<TapItem>,
    /// The tap copies in `taps`.
    tap_held: Usage,
    lagged: Vec<(TapId, u64)>,
    in_heap: bool,
    bound: Vec<EntityId>,
    handlers: usize,
}

/// The dispatch table. A plain data structure: no I/O, no clock, no
/// locking; the runtime wraps it in a short mutex.
pub struct DispatchTable {
    host_id: EntityId,
    limits: Limits,
    local_domains: Vec<Domain>,
    guard_cx: GuardContext,
    guards: GuardChain,
    bound: HashMap<EntityId, EndpointId>,
    endpoints: HashMap<EndpointId, Endpoint>,
    subscriptions: Vec<Handler>,
    taps: Vec<Handler>,
    default_route: Option<EndpointId>,
    /// Messages waiting for readers.
    waiting: usize,
    /// Messages waiting and tap copies.
    held: Usage,
    /// What each sender holds, for the senders holding anything.
    senders: HashMap<Sender, Usage>,
    next_endpoint: u64,
    next_handler: u32,
    deadlines: BinaryHeap<Reverse<(Instant, EndpointId)>>,
    events: VecDeque<Event>,
    stats: Stats,
    /// Drops by guard name: one entry per guard that dropped anything.
    guard_drops: Vec<GuardDrops>,
    notes: Vec<String>,
}

impl DispatchTable {
    /// A table for a host whose own id (the `src` of its notices) is
    /// `host_id`, with the default guard chain.
    pub fn new(host_id: EntityId, limits: Limits) -> Self {
        Self {
            host_id,
            limits,
            local_domains: vec![host_id.domain()],
            guard_cx: GuardContext::default(),
            guards: GuardChain::with_defaults(),
            bound: HashMap::new(),
            endpoints: HashMap::new(),
            subscriptions: Vec::new(),
            taps: Vec::new(),
            default_route: None,
            waiting: 0,
            held: Usage::default(),
            senders: HashMap::new(),
            next_endpoint: 1,
            next_handler: 1,
            deadlines: BinaryHeap::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            guard_drops: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The host's own id.
    pub fn host_id(&self) -> EntityId {
        self.host_id
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Messages dropped by each guard that dropped any, by the path they
    /// came in on (their sum is [`Stats::guard_dropped`]). One entry per
    /// guard name: as many as the chain has guards.
    pub fn guard_drops(&self) -> &[GuardDrops] {
        &self.guard_drops
    }

    /// Messages waiting in the table.
    pub fn len(&self) -> usize {
        self.waiting
    }

    /// True if no message waits.
    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// What the table holds now: messages waiting and tap copies, the
    /// amounts [`Limits::total`] and [`Limits::total_bytes`] bound.
    pub fn held(&self) -> Usage {
        self.held
    }

    /// Adds a guard at the end of the chain.
    pub fn push_guard(&mut self, g: Box<dyn Guard>) {
        self.guards.push(g);
    }

    /// Names of the guards in the chain.
    pub fn guard_names(&self) -> Vec<String> {
        self.guards.names()
    }

    /// Declares a domain local (its unknown ids are *unknown destination*,
    /// not *no route*).
    pub fn add_local_domain(&mut self, d: Domain) {
        if !self.local_domains.contains(&d) {
            self.local_domains.push(d);
        }
    }

    /// Declares a local card's domain and the mtypes its applets hold
    /// privileged; the remote-ingress guard protects both.
    pub fn add_card(&mut self, d: Domain, privileged: impl IntoIterator<Item = Mtype>) {
        self.add_local_domain(d);
        self.guard_cx.card_domains.insert(d);
        self.guard_cx.privileged.extend(privileged);
    }

    /// Sets the endpoint that gets messages for non-local domains that no
    /// subscription claims (a broker link such as NATS).
    pub fn set_default_route(&mut self, ep: Option<EndpointId>) {
        self.default_route = ep;
    }

    /// True if `d` is a local domain.
    pub fn is_local_domain(&self, d: Domain) -> bool {
        self.local_domains.contains(&d)
    }

    /// Adds a reader.
    pub fn add_endpoint(&mut self) -> EndpointId {
        let id = EndpointId(self.next_endpoint);
        self.next_endpoint += 1;
        self.endpoints.insert(id, Endpoint::default());
        id
    }

    /// Binds `id` to `ep`: messages to `id` are queued for `ep`.
    pub fn bind(&mut self, ep: EndpointId, id: EntityId) -> Result<(), TableError> {
        if self.bound.contains_key(&id) {
            return Err(TableError::AlreadyBound(id));
        }
        let e = self
            .endpoints
            .get_mut(&ep)
            .ok_or(TableError::NoEndpoint(ep))?;
        e.bound.push(id);
        self.bound.insert(id, ep);
        Ok(())
    }

    /// The endpoint `id` is bound to.
    pub fn bound_to(&self, id: EntityId) -> Option<EndpointId> {
        self.bound.get(&id).copied()
    }

    /// Removes a reader with its bindings, subscriptions and taps. Messages
    /// waiting for it produce *destination gone* notices.
    pub fn remove_endpoint(&mut self, ep: EndpointId, now: Instant) {
        let Some(e) = self.endpoints.remove(&ep) else {
            return;
        };
        for id in &e.bound {
            self.bound.remove(id);
        }
        self.subscriptions.retain(|h| h.endpoint != ep);
        self.taps.retain(|h| h.endpoint != ep);
        self.waiting -= e.held.messages;
        self.held.remove(e.held);
        self.held.remove(e.tap_held);
        release(&mut self.senders, Sender::Taps, e.tap_held);
        let mut lanes = e.lanes;
        for key in e.ready {
            let Some(lane) = lanes.remove(&key) else {
                continue;
            };
            release(&mut self.senders, key, lane.charged);
            for q in lane.queue {
                self.notify_sender(&q.message, UndeliverableReason::DESTINATION_GONE, now);
            }
        }
    }

    /// Whose share a message from `src` counts against.
    fn sender(&self, src: EntityId) -> Sender {
        if self.is_local_domain(src.domain()) {
            Sender::Entity(src)
        } else {
            Sender::Domain(src.domain())
        }
    }

    fn add_handler(
        &mut self,
        ep: EndpointId,
        filter: Filter,
        tap: bool,
    ) -> Result<u32, TableError> {
        let max = self.limits.handlers_per_endpoint;
        let e = self
            .endpoints
            .get_mut(&ep)
            .ok_or(TableError::NoEndpoint(ep))?;
        if e.handlers >= max {
            return Err(TableError::TooManyHandlers(e.handlers));
        }
        e.handlers += 1;
        let id = self.next_handler;
        self.next_handler = self.next_handler.wrapping_add(1).max(1);
        let h = Handler {
            id,
            endpoint: ep,
            filter,
        };
        if tap {
            self.taps.push(h);
        } else {
            self.subscriptions.push(h);
        }
        Ok(id)
    }

    fn remove_handler(&mut self, ep: EndpointId, id: u32, tap: bool) -> Result<(), TableError> {
        let list = if tap {
            &mut self.taps
        } else {
            &mut self.subscriptions
        };
        let pos = list
            .iter()
            .position(|h| h.id == id && h.endpoint == ep)
            .ok_or(TableError::NoSuchHandler(id))?;
        list.remove(pos);
        if let Some(e) = self.endpoints.get_mut(&ep) {
            e.handlers -= 1;
        }
        Ok(())
    }

    /// Registers a handler: messages matching `filter` that no bound id
    /// claims are queued for `ep`, tagged with the returned id. For
    /// messages to ids bound to `ep` itself, the id tags the first
    /// matching subscription.
    pub fn subscribe(
        &mut self,
        ep: EndpointId,
        filter: Filter,
    ) -> Result<SubscriptionId, TableError> {
        self.add_handler(ep, filter, false).map(SubscriptionId)
    }

    /// Drops a subscription of `ep`.
    pub fn unsubscribe(&mut self, ep: EndpointId, id: SubscriptionId) -> Result<(), TableError> {
        self.remove_handler(ep, id.0, false)
    }

    /// Registers a tap: `ep` gets a copy of every stored message matching
    /// `filter`, without consuming it.
    pub fn tap(&mut self, ep: EndpointId, filter: Filter) -> Result<TapId, TableError> {
        self.add_handler(ep, filter, true).map(TapId)
    }

    /// Drops a tap of `ep`.
    pub fn untap(&mut self, ep: EndpointId, id: TapId) -> Result<(), TableError> {
        self.remove_handler(ep, id.0, true)
    }

    /// Stores a message that arrived on `ingress`. On success the message
    /// is in the table (or a notice about it is); on error nothing changed
    /// but the counters.
    pub fn store(
        &mut self,
        ingress: Ingress,
        mut message: Message,
        now: Instant,
    ) -> Result<Stored, StoreError> {
        if message.encoded_len() > tenet_proto::MAX_MESSAGE_LEN {
            return Err(StoreError::TooLarge {
                len: message.encoded_len(),
                max: tenet_proto::MAX_MESSAGE_LEN,
            });
        }
        let h = message.header;
        let checked = self
            .guards
            .check(&self.guard_cx, ingress, &message, now, &mut self.notes);
        for n in self.notes.drain(..) {
            self.events.push_back(Event::GuardNote(n));
        }
        if let Err(why) = checked {
            self.stats.guard_dropped += 1;
            match self.guard_drops.iter_mut().find(|d| d.guard == why.guard) {
                Some(d) => d.dropped.add(ingress),
                None => {
                    let mut dropped = PerIngress::default();
                    dropped.add(ingress);
                    self.guard_drops.push(GuardDrops {
                        guard: why.guard.clone(),
                        dropped,
                    });
                }
            }
            self.events.push_back(Event::GuardDropped {
                ingress,
                src: h.src,
                dst: h.dst,
                mtype: h.mtype,
                why: why.clone(),
            });
            return Err(why.into());
        }
        if let Ok(Some(to)) = checked {
            message.header.dst = to;
        }
        match self.route(&message) {
            Ok((ep, subscription)) => {
                self.enqueue(ep, subscription, message, now, false)?;
                self.stats.routed.add(ingress);
                Ok(Stored::Queued(ep))
            }
            Err(reason) => {
                self.stats.undeliverable += 1;
                self.tap_copies(&message, now);
                self.notify_sender(&message, reason, now);
                Ok(Stored::Undeliverable(reason))
            }
        }
    }

    fn route(&self, m: &Message) -> Result<(EndpointId, SubscriptionId), UndeliverableReason> {
        let h = &m.header;
        if let Some(&ep) = self.bound.get(&h.dst) {
            let sub = self
                .subscriptions
                .iter()
                .find(|s| s.endpoint == ep && s.filter.matches(h))
                .map_or(SubscriptionId(0), |s| SubscriptionId(s.id));
            return Ok((ep, sub));
        }
        if let Some(s) = self.subscriptions.iter().find(|s| s.filter.matches(h)) {
            return Ok((s.endpoint, SubscriptionId(s.id)));
        }
        if self.is_local_domain(h.dst.domain()) {
            Err(UndeliverableReason::UNKNOWN_DESTINATION)
        } else if let Some(ep) = self
            .default_route
            .filter(|ep| self.endpoints.contains_key(ep))
        {
            Ok((ep, SubscriptionId(0)))
        } else {
            Err(UndeliverableReason::NO_ROUTE)
        }
    }

    fn enqueue(
        &mut self,
        ep: EndpointId,
        subscription: SubscriptionId,
        message: Message,
        now: Instant,
        notice: bool,
    ) -> Result<(), StoreError> {
        let limits = self.limits;
        let sender = self.sender(message.src());
        let cost = Usage::one(message.encoded_len());
        let e = self
            .endpoints
            .get_mut(&ep)
            .expect("routed to a live endpoint");
        // Notices may exceed the per-destination bounds, so a sender whose
        // own queue is full still learns of a failure, but only up to twice
        // the bounds: a reader that does not read (an app that never reads,
        // a peer that never acknowledges) cannot fill the whole table with
        // notices about its own messages. They are no sender's, so no share
        // applies to them.
        let per_destination = limits.per_destination_budget();
        let share = limits.per_sender_share;
        let lane = e.lanes.get(&sender).map_or(Usage::default(), |l| l.charged);
        let anywhere = self.senders.get(&sender).copied().unwrap_or_default();
        let checks = [
            (Bound::Total, limits.total_budget(), self.held),
            (
                Bound::PerDestination,
                per_destination.times(if notice { 2 } else { 1 }),
                e.held,
            ),
            (
                Bound::SenderTotal,
                limits.total_budget().share(share),
                anywhere,
            ),
            (
                Bound::SenderPerDestination,
                per_destination.share(share),
                lane,
            ),
        ];
        let applicable = if notice { 2 } else { checks.len() };
        for &(which, budget, used) in &checks[..applicable] {
            if let Err(Exceeded { unit, limit }) = budget.admits(used, cost.bytes) {
                self.stats.refused_full += 1;
                if which.is_share() {
                    self.stats.refused_share += 1;
                }
                return Err(StoreError::QueueFull {
                    dst: message.dst(),
                    which,
                    limit,
                    unit,
                });
            }
        }
        let deadline = now + limits.ttl;
        let was_empty = e.held.messages == 0;
        let lane = e.lanes.entry(sender).or_default();
        if lane.queue.is_empty() {
            e.ready.push_back(sender);
        }
        if !notice {
            lane.charged.add(cost);
            self.senders.entry(sender).or_default().add(cost);
        }
        lane.queue.push_back(Queued {
            subscription,
            deadline,
            notice,
            message,
        });
        e.held.add(cost);
        if !e.in_heap {
            e.in_heap = true;
            self.deadlines.push(Reverse((deadline, ep)));
        }
        self.waiting += 1;
        self.hold(cost);
        self.stats.stored += 1;
        if was_empty {
            self.events.push_back(Event::Readable(ep));
        }
        let e = &self.endpoints[&ep];
        let m = &e.lanes[&sender].queue.back().expect("just pushed").message;
        // Borrow juggling: copy the message out only if some tap wants it.
        if self.taps.iter().any(|t| t.filter.matches(&m.header)) {
            let m = m.clone();
            self.tap_copies(&m, now);
        }
        Ok(())
    }

    /// Adds `cost` to what the table holds.
    fn hold(&mut self, cost: Usage) {
        self.held.add(cost);
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.held.bytes as u64);
    }

    fn tap_copies(&mut self, m: &Message, now: Instant) {
        let limits = self.limits;
        let per_tap = Budget::new(limits.tap_queue, limits.per_destination_bytes);
        let taps_share = limits.total_budget().share(limits.per_sender_share);
        // A tap shows that a PIN was verified, changed or unblocked, never
        // the PIN or PUK: any app may tap, and a PIN it saw would let it
        // join the card's authenticated set.
        let redacted;
        let m = if SECRET_PARAMS.contains(&m.mtype()) {
            redacted = Message::new(m.src(), m.dst(), m.mtype(), Vec::new());
            &redacted
        } else {
            m
        };
        for t in &self.taps {
            if !t.filter.matches(&m.header) {
                continue;
            }
            let Some(e) = self.endpoints.get_mut(&t.endpoint) else {
                continue;
            };
            let tap = TapId(t.id);
            let cost = Usage::one(m.encoded_len());
            let queued = Usage {
                messages: e.taps.len(),
                bytes: e.tap_held.bytes,
            };
            let all_taps = self.senders.get(&Sender::Taps).copied().unwrap_or_default();
            let fits = per_tap.admits(queued, cost.bytes).is_ok()
                && limits.total_budget().admits(self.held, cost.bytes).is_ok()
                && taps_share.admits(all_taps, cost.bytes).is_ok();
            if !fits {
                self.stats.tap_skipped += 1;
                match e.lagged.iter_mut().find(|(id, _)| *id == tap) {
                    Some((_, n)) => *n += 1,
                    None => e.lagged.push((tap, 1)),
                }
                continue;
            }
            if let Some(pos) = e.lagged.iter().position(|(id, _)| *id == tap) {
                let (_, missed) = e.lagged.swap_remove(pos);
                e.taps.push_back(TapItem::Lagged { tap, missed });
            }
            let was_empty = e.taps.is_empty();
            e.taps.push_back(TapItem::Copy {
                tap,
                at: now,
                message: m.clone(),
            });
            e.tap_held.add(cost);
            self.senders.entry(Sender::Taps).or_default().add(cost);
            self.held.add(cost);
            self.stats.peak_bytes = self.stats.peak_bytes.max(self.held.bytes as u64);
            if was_empty {
                self.events.push_back(Event::TapReadable(t.endpoint));
            }
        }
    }

    /// Tells the sender of `failed` that it could not be delivered: for
    /// proxies that took a message from the table and then failed to pass
    /// it on. Counted in [`Stats::undeliverable`].
    pub fn undeliverable(&mut self, failed: &Message, reason: UndeliverableReason, now: Instant) {
        self.stats.undeliverable += 1;
        self.notify_sender(failed, reason, now);
    }

    /// Counts `failed` as undeliverable for `reason` and tells its sender
    /// (unless it is itself a notice).
    fn notify_sender(&mut self, failed: &Message, reason: UndeliverableReason, now: Instant) {
        self.stats.undeliverable_by_reason.add(reason);
        let h = failed.header;
        if h.mtype == Mtype::UNDELIVERABLE || h.mtype == Mtype::REFUSED {
            return;
        }
        let notice = Undeliverable {
            reason,
            dst: h.dst,
            mtype: h.mtype,
        };
        let m = Message::new(self.host_id, h.src, Mtype::UNDELIVERABLE, notice.to_bytes());
        let stored = match self.route(&m) {
            Ok((ep, sub)) => self.enqueue(ep, sub, m, now, true).is_ok(),
            Err(_) => false,
        };
        if !stored {
            self.stats.notices_dropped += 1;
            self.events
                .push_back(Event::NoticeDropped { to: h.src, reason });
        }
    }

    /// Takes the next message waiting for `ep`: the oldest of the sender
    /// whose turn it is (senders are served in turn, one message each).
    pub fn take(&mut self, ep: EndpointId) -> Option<Delivery> {
        let e = self.endpoints.get_mut(&ep)?;
        let key = e.ready.pop_front()?;
        let lane = e.lanes.get_mut(&key).expect("a ready sender has a lane");
        let q = lane.queue.pop_front().expect("a ready lane is not empty");
        let cost = q.cost();
        if !q.notice {
            lane.charged.remove(cost);
            release(&mut self.senders, key, cost);
        }
        if lane.queue.is_empty() {
            e.lanes.remove(&key);
        } else {
            e.ready.push_back(key);
        }
        e.held.remove(cost);
        self.held.remove(cost);
        self.waiting -= 1;
        self.stats.delivered += 1;
        Some(Delivery {
            subscription: q.subscription,
            message: q.message,
        })
    }

    /// The message [`take`](Self::take) would give `ep` next, if any
    /// waits.
    pub fn peek(&self, ep: EndpointId) -> Option<&Message> {
        let e = self.endpoints.get(&ep)?;
        let lane = e.lanes.get(e.ready.front()?)?;
        lane.queue.front().map(|q| &q.message)
    }

    /// Messages waiting for `ep`.
    pub fn pending(&self, ep: EndpointId) -> usize {
        self.endpoints.get(&ep).map_or(0, |e| e.held.messages)
    }

    /// Messages and bytes waiting for `ep`.
    pub fn pending_usage(&self, ep: EndpointId) -> Usage {
        self.endpoints.get(&ep).map_or(Usage::default(), |e| e.held)
    }

    /// Takes the oldest tap item waiting for `ep`.
    pub fn take_tap(&mut self, ep: EndpointId) -> Option<TapItem> {
        let e = self.endpoints.get_mut(&ep)?;
        if let Some(item) = e.taps.pop_front() {
            if let TapItem::Copy { message, .. } = &item {
                let cost = Usage::one(message.encoded_len());
                e.tap_held.remove(cost);
                self.held.remove(cost);
                release(&mut self.senders, Sender::Taps, cost);
            }
            return Some(item);
        }
        let (tap, missed) = e.lagged.pop()?;
        Some(TapItem::Lagged { tap, missed })
    }

    /// The next event for the runtime.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest time at which [`handle_timeout`](Self::handle_timeout)
    /// has work (a lower bound: it may find nothing to do).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((t, _))| *t)
    }

    /// Removes messages whose time to live has passed and notifies their
    /// senders.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, ep))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let Some(e) = self.endpoints.get_mut(&ep) else {
                continue;
            };
            let mut expired = Vec::new();
            let mut next: Option<Instant> = None;
            for (key, lane) in &mut e.lanes {
                while lane.queue.front().is_some_and(|q| q.deadline <= now) {
                    let q = lane.queue.pop_front().expect("front exists");
                    let cost = q.cost();
                    if !q.notice {
                        lane.charged.remove(cost);
                        release(&mut self.senders, *key, cost);
                    }
                    e.held.remove(cost);
                    self.held.remove(cost);
                    expired.push(q.message);
                }
                if let Some(q) = lane.queue.front() {
                    next = Some(next.map_or(q.deadline, |n| n.min(q.deadline)));
                }
            }
            if !expired.is_empty() {
                e.lanes.retain(|_, l| !l.queue.is_empty());
                let lanes = &e.lanes;
                e.ready.retain(|k| lanes.contains_key(k));
            }
            match next {
                Some(d) => self.deadlines.push(Reverse((d, ep))),
                None => e.in_heap = false,
            }
            self.waiting -= expired.len();
            self.stats.expired += expired.len() as u64;
            for m in expired {
                self.notify_sender(&m, UndeliverableReason::EXPIRED, now);
            }
        }
    }
}

/// Takes `cost` off what `key` holds.
fn release(senders: &mut HashMap<Sender, Usage>, key: Sender, cost: Usage) {
    if cost.is_empty() {
        return;
    }
    if let Some(u) = senders.get_mut(&key) {
        u.remove(cost);
        if u.is_empty() {
            senders.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
