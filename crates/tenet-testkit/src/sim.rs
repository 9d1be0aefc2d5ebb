//! A deterministic simulator: several hosts ([`HostCore`]s), their real
//! virtual cards (APDUs through [`CardSession`]) and the TTP's real
//! decision logic, joined by a network that loses, duplicates and reorders
//! messages, all in simulated time and driven from one seed.
//!
//! Each host reaches the others the way the NATS transport does: one
//! default-route endpoint, a message per delivery, the sender's domains as
//! its established origin, and remote ingress ([`HostCore::remote_ingress`])
//! at the receiver. Between a host and its own card and apps nothing is
//! lost (a socket and a card link are reliable). The network's faults come
//! from a [`rand::rngs::StdRng`] seeded by the caller, and every decision
//! of the simulator follows from that seed and the order of effects, so a
//! seed replays a run: [`Sim::trace`] is the same each time.
//!
//! Apps are endpoints the test drives ([`Sim::app_send`], [`Sim::inbox`]);
//! [`Wallet`] does what `tenet_client::wallet::Wallet` does, in simulated
//! time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tenet_card::{Card, FileStore, Personalization, SeededEntropy};
use tenet_dispatch::{Effect, EndpointId, EndpointKind, HostCore, Ingress, Limits, ServiceId};
use tenet_host::link::{CardSession, InProcessLink};
use tenet_proto::card::{PinOutcome, PinStatus, SetTime, VerifyPin};
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};
use tenet_voucher::card::{
    BALANCE_REQUEST, BALANCES, EXCHANGES, EXCHANGES_REQUEST, ExchangeSummary, MINT,
    decode_balances, decode_exchanges,
};
use tenet_voucher::crypto::KeyCrypto;
use tenet_voucher::model::Amount;
use tenet_voucher::msg::{self, ExchangeId, StartExchange};
use tenet_voucher::ttp::MemoryDecisions;
use tenet_voucher_app::applet::{APPLET_ID, VoucherApplet, initial_data};

/// The PIN of every simulated card.
pub const PIN: &[u8] = b"1234";

/// What the network does to each message between hosts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Each delivery takes between 1 ms and this long, drawn anew for
    /// every copy: messages overtake each other.
    pub max_delay: Duration,
}

impl Faults {
    /// A network that delivers everything once, in 1 ms.
    pub const NONE: Self = Self {
        loss: 0.0,
        duplicate: 0.0,
        max_delay: Duration::from_millis(1),
    };
}

/// One thing that happened, for [`Sim::trace`]: at simulated time `at`,
/// `what` of a message from `src` to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Simulated time since the start.
    pub at: Duration,
    /// What happened.
    pub what: &'static str,
    /// The message's sender.
    pub src: EntityId,
    /// Its destination.
    pub dst: EntityId,
    /// Its mtype.
    pub mtype: Mtype,
}

/// A host's card in the simulation.
struct SimCard {
    session: CardSession,
    ep: EndpointId,
    id: EntityId,
}

/// The TTP service in the simulation: the real decision, a memory store.
struct SimTtp {
    service: ServiceId,
    crypto: KeyCrypto,
    store: MemoryDecisions,
}

/// One simulated host.
struct SimHost {
    core: HostCore,
    /// The domains this host speaks for (its own, its card's).
    domains: Vec<Domain>,
    card: Option<SimCard>,
    apps: HashMap<EntityId, (EndpointId, VecDeque<Message>)>,
    ttp: Option<SimTtp>,
    next_port: u32,
}

/// A message on the network, ordered by arrival time, then by sending.
#[derive(Debug)]
struct InFlight {
    at: Duration,
    /// Sends in order of sending for equal times.
    seq: u64,
    from: usize,
    to: usize,
    message: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A host in a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostIx(pub usize);

/// The simulation.
pub struct Sim {
    rng: StdRng,
    faults: Faults,
    base: Instant,
    /// The wall-clock time at the start, as cards are told it.
    wall: u64,
    now: Duration,
    hosts: Vec<SimHost>,
    net: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    trace: Vec<TraceEvent>,
    dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    ttp_id: Option<EntityId>,
    ttp_cert: Option<Vec<u8>>,
}

/// Why the simulation could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A certificate could not be made.
    #[error("certificate: {0}")]
    Cert(#[from] tenet_pki::CertError),
    /// A card could not be made or opened.
    #[error("card: {0}")]
    Card(#[from] tenet_card::CardError),
    /// A card's store could not be made.
    #[error("card store: {0}")]
    Store(#[from] tenet_card::StoreError),
    /// The card session failed.
    #[error("card session: {0}")]
    Session(#[from] tenet_host::link::SessionError),
    /// A file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TTP's keys are unusable.
    #[error("TTP keys: {0}")]
    Keys(#[from] tenet_pki::VerifyError),
    /// A host has no card, or the TTP is missing.
    #[error("{0}")]
    Setup(&'static str),
}

impl Sim {
    /// An empty simulation whose network faults follow `seed`.
    pub fn new(seed: u64, faults: Faults) -> Result<Self, SimError> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        tenet_pki::ensure_ca(&ca, "simulation CA")?;
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            rng: StdRng::seed_from_u64(seed),
            faults,
            base: Instant::now(),
            wall,
            now: Duration::ZERO,
            hosts: Vec::new(),
            net: BinaryHeap::new(),
            seq: 0,
            trace: Vec::new(),
            dir,
            ca,
            ttp_id: None,
            ttp_cert: None,
        })
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    /// Everything that happened on the network and at the cards, in order.
    pub fn trace(&self) -> &[TraceEvent] {
        &self.trace
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn add_host(&mut self, domain: Domain) -> HostIx {
        let mut core = HostCore::new(domain.owner(), Limits::default());
        let route = core.add_endpoint(EndpointKind::DefaultRoute);
        core.table_mut().set_default_route(Some(route));
        self.hosts.push(SimHost {
            core,
            domains: vec![domain],
            card: None,
            apps: HashMap::new(),
            ttp: None,
            next_port: 1,
        });
        HostIx(self.hosts.len() - 1)
    }

    /// Adds the TTP's host: its entity `DOMAIN:0` decides recovery
    /// requests with the real decision logic, in memory. Add it first: the
    /// cards are personalized for it.
    pub fn add_ttp(&mut self, domain: Domain) -> Result<HostIx, SimError> {
        let ix = self.add_host(domain);
        let id = domain.owner();
        let files = tenet_pki::issue_entity_key(&self.ca, "ttp", id)?;
        let read = |p: &Path| std::fs::read(p);
        let crypto =
            KeyCrypto::from_pem(&read(&files.key)?, &read(&files.cert)?, &read(&files.ca)?)?;
        self.ttp_cert = Some(pem_der(&read(&files.cert)?)?);
        self.ttp_id = Some(id);
        let host = &mut self.hosts[ix.0];
        let service = host.core.add_service(vec![msg::RECOVERY_REQUEST]);
        host.ttp = Some(SimTtp {
            service,
            crypto,
            store: MemoryDecisions::default(),
        });
        Ok(ix)
    }

    /// Adds a host with software domain `domain` and a virtual card of
    /// domain `card_domain`, personalized with [`PIN`], a certificate from
    /// the simulation's CA and the TTP; returns the host and the card's id.
    pub fn add_card_host(
        &mut self,
        domain: Domain,
        card_domain: Domain,
        seed: u64,
    ) -> Result<(HostIx, EntityId), SimError> {
        let ttp = self.ttp_id.ok_or(SimError::Setup("add the TTP first"))?;
        let store = self.dir.path().join(format!("{card_domain}.card"));
        let p = Personalization {
            domain: card_domain,
            pin: PIN.to_vec(),
            puk: b"12345678".to_vec(),
        };
        let mut card = Card::personalize(
            FileStore::create(&store, 32 * 1024)?,
            &p,
            Default::default(),
            Box::new(SeededEntropy::new(seed)),
        )?;
        let key = card.state().public_key.clone();
        let (cert, ca_der) = tenet_pki::issue_entity(&self.ca, card.id(), &key)?.card_forms()?;
        card.install_certificates(cert, ca_der)?;
        card.provision(APPLET_ID, initial_data(ttp, self.ttp_cert.clone()))?;
        card.install(Box::new(VoucherApplet::new(Some(ttp))));
        let id = card.id();
        let mut session = CardSession::new(Box::new(InProcessLink::new(card)), false);
        let info = session.reconnect()?;
        let ix = self.add_host(domain);
        let wall = self.wall;
        let host = &mut self.hosts[ix.0];
        host.core
            .table_mut()
            .add_card(info.domain, info.privileged.iter().copied());
        host.core
            .table_mut()
            .push_guard(Box::new(tenet_voucher_app::offers::OfferGuard::new(None)));
        let ep = host.core.add_endpoint(EndpointKind::Card);
        host.core
            .table_mut()
            .bind(ep, id)
            .map_err(|_| SimError::Setup("the card's id is taken"))?;
        host.domains.push(card_domain);
        // The card's time, as the smartcard proxy tells it at attach.
        session.deliver(&Message::new(
            id,
            id,
            Mtype::SET_TIME,
            SetTime {
                now: wall,
                elapsed: None,
            }
            .to_bytes(),
        ))?;
        host.card = Some(SimCard { session, ep, id });
        Ok((ix, id))
    }

    /// A new app on `host`, with a fresh id: a port of the card's domain,
    /// assigned by the card, on a host with a card (as the daemon does);
    /// else a port of the host's domain.
    pub fn add_app(&mut self, host: HostIx) -> EntityId {
        let h = &mut self.hosts[host.0];
        let id = match h.card.as_mut() {
            Some(c) => EntityId::new(
                c.id.domain(),
                c.session.assign_port().expect("the card assigns a port"),
            ),
            None => {
                h.next_port += 1;
                EntityId::new(h.domains[0], Port::new(h.next_port - 1))
            }
        };
        let ep = h.core.add_endpoint(EndpointKind::App);
        h.core.table_mut().bind(ep, id).expect("a fresh port");
        h.apps.insert(id, (ep, VecDeque::new()));
        id
    }

    /// The app `app` on `host` sends a message (its src stamped, as the
    /// daemon does).
    pub fn app_send(
        &mut self,
        host: HostIx,
        app: EntityId,
        dst: EntityId,
        mtype: Mtype,
        param: Vec<u8>,
    ) {
        let now = self.instant();
        let m = Message::new(app, dst, mtype, param);
        let h = &mut self.hosts[host.0];
        let _ = h.core.store(Ingress::App, m, now);
        self.settle();
    }

    /// Takes the messages `app` on `host` has received.
    pub fn inbox(&mut self, host: HostIx, app: EntityId) -> Vec<Message> {
        self.hosts[host.0]
            .apps
            .get_mut(&app)
            .map(|(_, q)| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// Acts on every effect of every host until none is left (no
    /// simulated time passes).
    fn settle(&mut self) {
        loop {
            let mut any = false;
            for ix in 0..self.hosts.len() {
                while let Some(e) = self.hosts[ix].core.poll_effect() {
                    any = true;
                    self.act(ix, e);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn act(&mut self, ix: usize, effect: Effect) {
        let now = self.instant();
        match effect {
            Effect::Wake { ep, kind } => match kind {
                EndpointKind::App => {
                    let h = &mut self.hosts[ix];
                    while let Some(d) = h.core.table_mut().take(ep) {
                        if let Some((_, q)) = h.apps.values_mut().find(|(e, _)| *e == ep) {
                            q.push_back(d.message);
                        }
                    }
                    while h.core.table_mut().take_tap(ep).is_some() {}
                }
                EndpointKind::Card => self.run_card(ix, ep),
                EndpointKind::DefaultRoute => {
                    while let Some(d) = self.hosts[ix].core.table_mut().take(ep) {
                        self.send_over_network(ix, d.message);
                    }
                }
                EndpointKind::Peer | EndpointKind::HostEntity => {}
            },
            Effect::Service { service, message } => {
                let h = &mut self.hosts[ix];
                let me = h.core.host_id();
                if let Some(t) = h.ttp.as_mut().filter(|t| t.service == service) {
                    let reply =
                        tenet_voucher_app::ttp::answer(&mut t.crypto, &mut t.store, me, &message);
                    h.core.send_as_host([reply], now);
                }
            }
            Effect::GuardNote(_)
            | Effect::GuardDropped { .. }
            | Effect::NoticeDropped { .. }
            | Effect::AnswerDropped { .. } => {}
        }
    }

    fn run_card(&mut self, ix: usize, ep: EndpointId) {
        let now = self.instant();
        loop {
            let h = &mut self.hosts[ix];
            let Some(card) = h.card.as_mut().filter(|c| c.ep == ep) else {
                return;
            };
            let Some(d) = h.core.table_mut().take(ep) else {
                return;
            };
            let m = d.message;
            self.trace.push(TraceEvent {
                at: self.now,
                what: "card",
                src: m.src(),
                dst: m.dst(),
                mtype: m.mtype(),
            });
            let id = card.id;
            let out = match card.session.deliver(&m) {
                Ok(out) => out,
                // As the smartcard proxy does: the sender is told.
                Err(e) => {
                    self.trace.push(TraceEvent {
                        at: self.now,
                        what: "card-error",
                        src: m.src(),
                        dst: m.dst(),
                        mtype: m.mtype(),
                    });
                    vec![Message::new(
                        id,
                        m.src(),
                        Mtype::REFUSED,
                        tenet_proto::notice::Refused {
                            mtype: m.mtype(),
                            text: format!("the card refused the message: {e}"),
                        }
                        .to_bytes(),
                    )]
                }
            };
            for o in out.into_iter().filter(|o| o.src() == id) {
                let (src, dst, mtype) = (o.src(), o.dst(), o.mtype());
                if h.core.store(Ingress::Card, o, now).is_err() {
                    self.trace.push(TraceEvent {
                        at: self.now,
                        what: "not-stored",
                        src,
                        dst,
                        mtype,
                    });
                }
            }
        }
    }

    fn send_over_network(&mut self, from: usize, m: Message) {
        let dst = m.dst().domain();
        let Some(to) = self.hosts.iter().position(|h| h.domains.contains(&dst)) else {
            self.trace.push(TraceEvent {
                at: self.now,
                what: "no-host",
                src: m.src(),
                dst: m.dst(),
                mtype: m.mtype(),
            });
            return;
        };
        let copies = if self.rng.random_bool(self.faults.loss) {
            0
        } else if self.rng.random_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        self.trace.push(TraceEvent {
            at: self.now,
            what: ["lost", "sent", "duplicated"][copies],
            src: m.src(),
            dst: m.dst(),
            mtype: m.mtype(),
        });
        let max = self.faults.max_delay.as_micros().max(1000) as u64;
        for _ in 0..copies {
            let delay = Duration::from_micros(self.rng.random_range(1000..=max));
            self.seq += 1;
            self.net.push(Reverse(InFlight {
                at: self.now + delay,
                seq: self.seq,
                from,
                to,
                message: m.clone(),
            }));
        }
    }

    /// Runs the network for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.settle();
        while let Some(Reverse(next)) = self.net.peek() {
            if next.at > end {
                break;
            }
            let Reverse(f) = self.net.pop().expect("peeked");
            self.now = f.at;
            let from = self.hosts[f.from].domains.clone();
            let now = self.instant();
            let h = &mut self.hosts[f.to];
            let (src, dst, mtype) = (f.message.src(), f.message.dst(), f.message.mtype());
            let what = match h.core.remote_ingress(&from, f.message, now) {
                Ok(()) => "delivered",
                Err(_) => "refused",
            };
            self.trace.push(TraceEvent {
                at: self.now,
                what,
                src,
                dst,
                mtype,
            });
            self.settle();
        }
        self.now = end;
        for ix in 0..self.hosts.len() {
            self.hosts[ix].core.handle_timeout(self.base + end);
        }
        self.settle();
    }
}

/// The CV certificate in an entity's certificate file.
fn pem_der(pem: &[u8]) -> Result<Vec<u8>, SimError> {
    tenet_pki::cv::from_pem(pem).map_err(|_| SimError::Setup("the TTP certificate has no CV form"))
}

/// A wallet app in the simulation: what `tenet_client::wallet::Wallet`
/// does, one request at a time, in simulated time.
pub struct Wallet {
    host: HostIx,
    /// The wallet's id.
    pub id: EntityId,
    /// Its card.
    pub card: EntityId,
}

/// Why a wallet's request failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalletError {
    /// The card did not answer within the simulated wait.
    #[error("no answer from the card")]
    NoAnswer,
    /// The card refused.
    #[error("the card refused: {0}")]
    Refused(String),
    /// The card did not take the PIN.
    #[error("PIN: {0:?}")]
    Pin(PinOutcome),
    /// The answer did not decode.
    #[error("malformed answer: {0}")]
    Malformed(tenet_proto::DecodeError),
}

impl Wallet {
    /// A wallet app on `host` for `card`, authenticated with [`PIN`].
    pub fn open(sim: &mut Sim, host: HostIx, card: EntityId) -> Result<Self, WalletError> {
        let id = sim.add_app(host);
        let w = Self { host, id, card };
        sim.app_send(
            host,
            id,
            card,
            Mtype::VERIFY_PIN,
            VerifyPin { pin: PIN.to_vec() }.to_bytes(),
        );
        let m = w.answer(sim, Mtype::PIN_STATUS)?;
        let status = PinStatus::decode(&m.param).map_err(WalletError::Malformed)?;
        if status.outcome != PinOutcome::Verified {
            return Err(WalletError::Pin(status.outcome));
        }
        Ok(w)
    }

    /// Waits (in simulated time, up to a second) for the card's answer of
    /// `mtype`; keeps other messages (offers) in `kept`.
    fn answer_keeping(
        &self,
        sim: &mut Sim,
        mtype: Mtype,
        kept: &mut Vec<Message>,
    ) -> Result<Message, WalletError> {
        for _ in 0..1000 {
            let mut batch = sim.inbox(self.host, self.id).into_iter();
            while let Some(m) = batch.next() {
                let found = if m.src() == self.card && m.mtype() == mtype {
                    Ok(m)
                } else if m.src() == self.card && m.mtype() == Mtype::REFUSED {
                    tenet_proto::notice::Refused::decode(&m.param)
                        .map_err(WalletError::Malformed)
                        .and_then(|r| Err(WalletError::Refused(r.text)))
                } else {
                    kept.push(m);
                    continue;
                };
                // What came after the answer stays for later.
                kept.extend(batch);
                return found;
            }
            sim.run_for(Duration::from_millis(1));
        }
        Err(WalletError::NoAnswer)
    }

    fn answer(&self, sim: &mut Sim, mtype: Mtype) -> Result<Message, WalletError> {
        let mut kept = Vec::new();
        let m = self.answer_keeping(sim, mtype, &mut kept);
        sim.hosts[self.host.0]
            .apps
            .get_mut(&self.id)
            .expect("the wallet's app")
            .1
            .extend(kept);
        m
    }

    /// Has the card do `mtype` with `param`, then reads the balances (a
    /// barrier). A refused order still takes its barrier's answer, as
    /// `tenet_client::wallet::Wallet` does, so that the next query reads
    /// its own.
    fn order(
        &self,
        sim: &mut Sim,
        mtype: Mtype,
        param: Vec<u8>,
    ) -> Result<Vec<Amount>, WalletError> {
        sim.app_send(self.host, self.id, self.card, mtype, param);
        match self.balances(sim) {
            Err(WalletError::Refused(text)) => {
                let _ = self.answer(sim, BALANCES);
                Err(WalletError::Refused(text))
            }
            other => other,
        }
    }

    /// The card's balances.
    pub fn balances(&self, sim: &mut Sim) -> Result<Vec<Amount>, WalletError> {
        sim.app_send(self.host, self.id, self.card, BALANCE_REQUEST, Vec::new());
        let m = self.answer(sim, BALANCES)?;
        decode_balances(&m.param).map_err(WalletError::Malformed)
    }

    /// Mints `a` (the card is its class's issuer).
    pub fn mint(&self, sim: &mut Sim, a: Amount) -> Result<Vec<Amount>, WalletError> {
        self.order(sim, MINT, a.to_bytes())
    }

    /// Offers `give` for `want` to card `responder`, whose wallet is
    /// `peer_wallet`.
    pub fn offer(
        &self,
        sim: &mut Sim,
        responder: EntityId,
        peer_wallet: EntityId,
        give: Amount,
        want: Amount,
    ) -> Result<(), WalletError> {
        let s = StartExchange {
            redeem: false,
            responder,
            peer_wallet,
            give,
            want: Some(want),
            expires_in: Some(msg::DEFAULT_OFFER_SECS),
        };
        self.order(sim, msg::START_EXCHANGE, s.to_bytes())
            .map(|_| ())
    }

    /// The offers that reached this wallet (the param of each).
    pub fn offers(&self, sim: &mut Sim) -> Vec<Vec<u8>> {
        let mut offers = Vec::new();
        let mut keep = Vec::new();
        for m in sim.inbox(self.host, self.id) {
            if m.mtype() == msg::OFFER {
                offers.push(m.param);
            } else {
                keep.push(m);
            }
        }
        sim.hosts[self.host.0]
            .apps
            .get_mut(&self.id)
            .expect("the wallet's app")
            .1
            .extend(keep);
        offers
    }

    /// Accepts an offer (its param as received).
    pub fn accept(&self, sim: &mut Sim, offer: Vec<u8>) -> Result<(), WalletError> {
        self.order(sim, msg::ACCEPT, offer).map(|_| ())
    }

    /// The card's exchanges.
    pub fn exchanges(&self, sim: &mut Sim) -> Result<Vec<ExchangeSummary>, WalletError> {
        sim.app_send(self.host, self.id, self.card, EXCHANGES_REQUEST, Vec::new());
        let m = self.answer(sim, EXCHANGES)?;
        decode_exchanges(&m.param).map_err(WalletError::Malformed)
    }

    /// Asks the TTP, through the card, to finish exchange `id`.
    pub fn recover(&self, sim: &mut Sim, id: ExchangeId) -> Result<(), WalletError> {
        self.order(sim, msg::RECOVER, id.to_bytes()).map(|_| ())
    }
}
