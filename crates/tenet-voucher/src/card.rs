//! The voucher applet's logic: what a card does with each exchange message,
//! as a plain value that consumes an input and returns outputs (no I/O).
//!
//! The whole [`VoucherCard`] is the applet's persistent data. The card
//! runtime commits it and releases the outputs in one atomic store update,
//! so a card never holds a deleted voucher without the pending exchange
//! that recovers it or its counterpart: the debit and the exchange record
//! are one write. An input that is refused changes nothing.

use std::collections::{BTreeMap, VecDeque};

use tenet_proto::codec::{Codec, DecodeError, Reader};
use tenet_proto::tlv::{self, Fields, Tag};
use tenet_proto::{EntityId, Mtype};

use crate::crypto::{Crypto, check_by_role};
use crate::model::{Amount, Balances, VoucherClass, fits_cap};
use crate::msg::{
    self, Admission, Agreement, Commitment, Confirmation, ExchangeId, Kind, Offer, RecoveryRequest,
    StartExchange,
};
use crate::present::{PRESENT, PRESENTATION, PresentOrder, Presentation};
use crate::redeem::{
    DELEGATE, DELEGATION, DelegateOrder, Delegation, INSTALL_DELEGATION, MAX_DELEGATIONS, Proof,
    Receipt,
};
use tenet_pki::Signer;

pub use crate::mtype::{
    ACCEPTOR_SET, BALANCE_REQUEST, BALANCES, EXCHANGES, EXCHANGES_REQUEST, LOG, LOG_REQUEST, MINT,
    PROGRESS, SET_ACCEPTOR, WITHDRAW,
};

/// One exchange as a wallet sees it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExchangeSummary {
    /// `h(n2)`.
    pub id: ExchangeId,
    /// This card's side.
    pub role: Role,
    /// Where it stands.
    pub phase: Phase,
    /// The offer.
    pub offer: Offer,
}

impl std::fmt::Display for ExchangeSummary {
    /// `ID  ROLE  PHASE  gives X, gets Y` (`tenet wallet exchanges`), with the
    /// whole id in hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nothing = || "nothing".to_owned();
        let want = self
            .offer
            .want
            .as_ref()
            .map_or_else(nothing, ToString::to_string);
        let give = self.offer.give.to_string();
        let (gives, gets) = match self.role {
            Role::Initiator => (give, want),
            Role::Responder => (want, give),
        };
        for b in self.id.0 {
            write!(f, "{b:02x}")?;
        }
        let (role, phase) = (self.role, self.phase);
        write!(f, "  {role:?}  {phase:?}  gives {gives}, gets {gets}")
    }
}

impl Codec for ExchangeSummary {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, Tag(0x80), &self.id.0);
        tlv::write(out, Tag(0x81), &[self.role as u8, self.phase.code()]);
        tlv::write_codec(out, Tag(0xa2), &self.offer);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[Tag(0x80), Tag(0x81), Tag(0xa2)], "exchange summary")?;
        let [role, phase] = f.require_array::<2>(Tag(0x81), "role and phase")?;
        Ok(Self {
            id: ExchangeId(f.require_array(Tag(0x80), "exchange id")?),
            role: role_from(role)?,
            phase: Phase::from_code(phase)?,
            offer: Offer::decode(f.require(Tag(0xa2), "offer")?)?,
        })
    }
}

fn role_from(c: u8) -> Result<Role, DecodeError> {
    match c {
        0 => Ok(Role::Initiator),
        1 => Ok(Role::Responder),
        _ => Err(DecodeError::Invalid {
            what: "role",
            detail: format!("unknown code {c}"),
        }),
    }
}

/// Decodes the param of [`EXCHANGES`].
pub fn decode_exchanges(param: &[u8]) -> Result<Vec<ExchangeSummary>, DecodeError> {
    tlv::parse_all(param)?
        .into_iter()
        .map(|i| ExchangeSummary::decode(i.value))
        .collect()
}

/// Encodes balances as the param of [`BALANCES`].
pub fn encode_balances(b: &Balances) -> Vec<u8> {
    let mut out = Vec::new();
    write_balances(&mut out, b);
    out
}

fn write_balances(out: &mut Vec<u8>, b: &Balances) {
    list(
        out,
        b.iter().map(|(c, q)| Amount {
            class: c.clone(),
            quantity: q,
        }),
        |out, a| a.encode(out),
    );
}

/// Decodes the param of [`BALANCES`].
pub fn decode_balances(param: &[u8]) -> Result<Vec<Amount>, DecodeError> {
    tlv::parse_all(param)?
        .into_iter()
        .map(|i| Amount::decode(i.value))
        .collect()
}

/// A refused input, in words for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// This card's certificate for a message to a peer that `named` the one
/// it holds: nothing if that is this card's certificate, else the
/// certificate.
fn own_certificate(cx: &Ctx<'_>, named: Option<[u8; 8]>) -> Vec<u8> {
    match named.is_some_and(|r| r == cx.crypto.certificate_ref()) {
        true => Vec::new(),
        false => cx.crypto.certificate(),
    }
}

/// The certificate of `peer` that this card named as held (`knows`) and
/// `what` therefore left out: refused if it named none or no longer holds
/// it (a power cycle empties the card's memory; the exchange then ends
/// through the TTP).
fn known(
    cx: &Ctx<'_>,
    peer: EntityId,
    knows: Option<[u8; 8]>,
    what: &str,
) -> Result<Vec<u8>, Refusal> {
    knows
        .and_then(|r| cx.crypto.known_certificate(peer, &r))
        .ok_or_else(|| {
            Refusal(format!(
                "{what}: the certificate was left out, and this card does not hold it"
            ))
        })
}

fn refuse<T>(s: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(s.into()))
}

/// Which side of an exchange this card is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// `S_A`: made the offer, gives `v1`.
    Initiator,
    /// `S_B`: accepted it, gives `v2`.
    Responder,
}

/// Where an exchange stands on this card.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Initiator: `v1` deleted, `m3` sent, waiting for `m4`.
    AwaitingCommitment,
    /// Responder: `v2` deleted, `m2` sent, waiting for `m3`.
    AwaitingConfirmation,
    /// Initiator: asked the TTP to resolve.
    Resolving,
    /// Responder: asked the TTP to abort.
    Aborting,
    /// Finished by the main protocol: both swapped.
    Committed,
    /// Finished by the TTP: swapped.
    Resolved,
    /// Finished by the TTP: undone.
    Aborted,
}

impl Phase {
    /// True once the exchange can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Committed | Phase::Resolved | Phase::Aborted)
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Result<Self, DecodeError> {
        Ok(match c {
            0 => Phase::AwaitingCommitment,
            1 => Phase::AwaitingConfirmation,
            2 => Phase::Resolving,
            3 => Phase::Aborting,
            4 => Phase::Committed,
            5 => Phase::Resolved,
            6 => Phase::Aborted,
            _ => {
                return Err(DecodeError::Invalid {
                    what: "phase",
                    detail: format!("unknown code {c}"),
                });
            }
        })
    }
}

/// Whether the step a card takes on `mtype` may be lost in a power cut
/// after the card answered: its store then writes it without waiting for
/// the medium (the card's next durable write makes it durable too). Two
/// steps may, both the initiator's:
/// - `start-exchange`: the offer (`m1`) goes out, nothing is deleted. Lost,
///   the responder's agreement finds no offer and is refused; the
///   responder ends its run through the TTP with an abort, and the
///   initiator's `v1` never left.
/// - `commitment` (`m4`): `v2` arrives. Lost, the exchange is back to
///   waiting for `m4` (or resolving, if it had asked the TTP), and the
///   card asks the TTP by itself (after its recovery timeout; with none,
///   its wallet does), which resolves it: the responder sent `m4` after
///   committing, so it never asked for an abort.
///
/// Every other step must be durable before the card answers: what the card
/// sends next binds it (`m2`, `m3`, `m4` give a voucher away; a recovery
/// request and a refund follow the TTP's word). The model checker crashes
/// cards with these two steps unsynced (`docs/model.md`).
pub fn may_lose_step(mtype: Mtype) -> bool {
    matches!(mtype, msg::START_EXCHANGE | msg::COMMITMENT)
}

/// Whether the answer to `mtype` reports state to someone (balances,
/// exchanges, the log the wallet's journal records, a presentation a
/// verifier keeps): everything the card committed, steps that
/// [`may_lose_step`] included, is made durable before it answers, so that
/// nothing reported is undone.
pub fn reports_state(mtype: Mtype) -> bool {
    matches!(
        mtype,
        BALANCE_REQUEST | EXCHANGES_REQUEST | LOG_REQUEST | PRESENT
    )
}

/// One exchange past the offer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Exchange {
    /// This card's side.
    pub role: Role,
    /// The offer.
    pub offer: Offer,
    /// `S_B`'s agreement.
    pub agreement: Agreement,
    /// `n2`, known to the responder from the start and to the initiator
    /// once `m4` arrives.
    pub n2: Option<[u8; 16]>,
    /// Where it stands.
    pub phase: Phase,
    /// The card time at which this card asks the TTP by itself, if the
    /// exchange is still pending then ([`VoucherCard::tick`]); set when it
    /// becomes pending (by the first tick, for a record stored without).
    pub due: Option<u64>,
    /// How often this card asked the TTP by itself (the backoff).
    pub asks: u8,
    /// The TTP's resolve admission, kept by the holder's card of a
    /// redemption the TTP resolved: the proof in its receipt.
    pub admission: Option<Admission>,
    /// Its place in the card's log, given when it finished.
    pub seq: Option<u64>,
}

impl Exchange {
    /// What this card gave (nothing: the payee of a gift).
    pub fn gives(&self) -> Option<&Amount> {
        match self.role {
            Role::Initiator => Some(&self.offer.give),
            Role::Responder => self.offer.want.as_ref(),
        }
    }

    /// What this card gets (nothing: the payer of a gift, and either side
    /// of a redemption, whose vouchers are destroyed).
    pub fn gets(&self) -> Option<&Amount> {
        match self.role {
            Role::Initiator => self.offer.want.as_ref(),
            Role::Responder if self.offer.is_redemption() => None,
            Role::Responder => Some(&self.offer.give),
        }
    }

    /// The receipt of a redemption this card made as holder, once the run
    /// completed (committed, or resolved by the TTP).
    pub fn receipt(&self) -> Option<Receipt> {
        if self.role != Role::Initiator || !self.offer.is_redemption() {
            return None;
        }
        let proof = match (self.phase, self.n2, &self.admission) {
            (Phase::Committed, Some(n2), _) => Proof::Commitment(n2),
            (Phase::Resolved, _, Some(a)) => Proof::Admission(a.clone()),
            _ => return None,
        };
        Some(Receipt {
            offer: self.offer.clone(),
            agreement: self.agreement.clone(),
            proof,
        })
    }

    /// The other card.
    pub fn peer(&self) -> EntityId {
        match self.role {
            Role::Initiator => self.offer.responder,
            Role::Responder => self.offer.initiator,
        }
    }
}

/// A message to send.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Out {
    /// Destination.
    pub dst: EntityId,
    /// Mtype.
    pub mtype: Mtype,
    /// Param.
    pub param: Vec<u8>,
}

/// What the card knows of its surroundings while handling one input.
pub struct Ctx<'a> {
    /// This card's id.
    pub me: EntityId,
    /// The TTP's id.
    pub ttp: EntityId,
    /// The wallet app that gets progress reports, if one is registered.
    pub wallet: Option<EntityId>,
    /// Keys and randomness.
    pub crypto: &'a mut dyn Crypto,
    /// The card's time (seconds since the Unix epoch): its host's, never
    /// below the card's bound (`tenet_card::clock`).
    pub now: u64,
}

/// Most finished exchanges remembered (older ones are forgotten first).
/// Finished exchanges are kept compact: without the agreement's signature
/// and certificate, which only recovery needs.
pub const HISTORY: usize = 16;

/// Most accepted offers remembered to refuse their replay (the oldest is
/// forgotten first). Safety does not rest on this memory: a replayed offer
/// that a card no longer remembers starts a new exchange with its own
/// h(n2), which only its own recovery touches (see docs/model.md).
pub const ACCEPTED_MEMORY: usize = 32;

/// Most gifts and redemptions accepted as responder that may be pending at
/// once (they debit nothing on this card, and cost their sender nothing).
pub const MAX_PENDING_ACCEPTED: usize = 16;

/// Most of those from one initiating card: a peer that never confirms
/// cannot take every place.
pub const MAX_PENDING_PER_PEER: usize = 4;

/// Most receipts no wallet has read, counting the redemptions under way
/// that may end with one: a card keeps each until a wallet's journal holds
/// it, and starts no redemption beyond this.
pub const MAX_UNREAD_RECEIPTS: usize = 16;

/// Most bytes of runs one log answer carries (at least one run): a wallet
/// asks again from the next number.
pub const LOG_PAGE_BYTES: usize = 4096;

/// The recovery timeout of a card whose state names none (personalized
/// before cards recovered by themselves): a minute.
pub const DEFAULT_RECOVER_AFTER: u32 = 60;

/// The longest wait between two requests a card sends the TTP by itself,
/// unless its timeout is longer: an hour.
pub const MAX_BACKOFF: u64 = 3600;

/// How long a card waits before asking the TTP again after its `asks`-th
/// request, with timeout `after`: doubling, up to [`MAX_BACKOFF`].
pub fn backoff(after: u64, asks: u8) -> u64 {
    after
        .saturating_mul(1 << asks.min(16))
        .min(after.max(MAX_BACKOFF))
}

/// Most certificates a card keeps in its record ([`VoucherCard::certificates`]),
/// unless its remembered exchanges name more: those stay, and the oldest
/// that none names goes first.
pub const KEPT_CERTIFICATES: usize = 8;

/// A certificate in a card's record ([`VoucherCard::certificates`]), with
/// the reference by which an exchange's record names it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeptCertificate {
    reference: [u8; 8],
    certificate: Vec<u8>,
}

impl KeptCertificate {
    /// `certificate`, with its reference (`tenet_pki::cache::cert_ref`).
    pub fn new(certificate: Vec<u8>) -> Self {
        Self {
            reference: tenet_pki::cache::cert_ref(&certificate),
            certificate,
        }
    }

    /// The certificate.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// Its reference.
    pub fn reference(&self) -> [u8; 8] {
        self.reference
    }
}

/// The voucher applet's persistent state.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct VoucherCard {
    /// Vouchers held.
    pub balances: Balances,
    /// Offers made and not yet agreed to, by `n1` (nothing deleted yet).
    pub offers: BTreeMap<[u8; 16], Offer>,
    /// Exchanges past the agreement, by `h(n2)`.
    pub exchanges: BTreeMap<ExchangeId, Exchange>,
    /// Offers this card accepted as responder (by digest): a replayed offer
    /// is refused.
    pub accepted: VecDeque<[u8; 32]>,
    /// The TTP this card trusts, installed at personalization.
    pub ttp: Option<EntityId>,
    /// The TTP's CV certificate, pinned at personalization: admissions
    /// must carry this certificate or one from the CA for the same key (a
    /// renewal).
    pub ttp_certificate: Option<Vec<u8>>,
    /// The wallet app that gets offers addressed to the card (option 2a).
    pub acceptor: Option<EntityId>,
    /// Finished exchanges in the order they finished: the oldest is
    /// forgotten first.
    pub finished: VecDeque<ExchangeId>,
    /// Seconds of card time an exchange may stay pending before the card
    /// asks the TTP by itself (resolve as initiator, abort as responder),
    /// chosen at personalization; 0: only when a wallet orders it.
    pub recover_after: u32,
    /// Delegations this card holds as redeemer, by class.
    pub delegations: BTreeMap<VoucherClass, Delegation>,
    /// The sequence number the next finished run gets in the log.
    pub next_seq: u64,
    /// Every finished run numbered below this is in a wallet's journal
    /// (the wallet asked for the log from here): its receipt may go.
    pub acked: u64,
    /// The certificates that exchanges' agreements carry, oldest first:
    /// the responders' (on the initiator's card) and this card's own (on
    /// the responder's). An exchange's record names its certificate here
    /// by reference, so that a card meeting a peer again writes no
    /// certificate ([`KEPT_CERTIFICATES`]).
    pub certificates: VecDeque<KeptCertificate>,
}

impl VoucherCard {
    /// Receipts no wallet has read, with the redemptions this card started
    /// that are not final yet (open offers included).
    pub fn unread_receipts(&self) -> usize {
        let kept = self.exchanges.values().filter(|e| {
            e.role == Role::Initiator
                && e.offer.is_redemption()
                && (!e.phase.is_final()
                    || (e.receipt().is_some() && e.seq.is_none_or(|s| s >= self.acked)))
        });
        kept.count() + self.offers.values().filter(|o| o.is_redemption()).count()
    }

    /// Exchanges not yet final: what recovery must finish after a restart.
    pub fn pending(&self) -> impl Iterator<Item = (&ExchangeId, &Exchange)> {
        self.exchanges.iter().filter(|(_, e)| !e.phase.is_final())
    }

    /// What this card is committed to hold of `class` at most: what it holds
    /// now plus every credit its open offers and pending exchanges may still
    /// bring, whichever way they end. An open offer may bring `v2` (its
    /// `v1` is not deleted yet); a pending exchange, deleted on this card,
    /// may bring what it gets (committed or resolved) or what it gave back
    /// (aborted): both are counted. The card keeps this within
    /// [`crate::model::MAX_QUANTITY`] for every class, so that every
    /// outcome the TTP may decide can be applied.
    pub fn committed(&self, class: &VoucherClass) -> u64 {
        let of = |a: Option<&Amount>| a.filter(|a| a.class == *class).map_or(0, |a| a.quantity);
        let offers = self.offers.values().map(|o| of(o.want.as_ref()));
        let pending = self
            .pending()
            .map(|(_, e)| of(e.gets()).saturating_add(of(e.gives())));
        offers
            .chain(pending)
            .fold(self.balances.of(class), u64::saturating_add)
    }

    /// Refuses unless this card can take on `adding` more of its class on
    /// top of what it is committed to ([`VoucherCard::committed`]).
    fn reserve(&self, adding: &Amount, what: &str) -> Result<(), Refusal> {
        fits_cap(
            &adding.class,
            self.committed(&adding.class),
            adding.quantity,
        )
        .map(|_| ())
        .map_err(|e| {
            Refusal(format!(
                "{what}: {e} (counting what pending exchanges may credit)"
            ))
        })
    }

    /// The card's clock ticked (its host told it the time `now`): every
    /// exchange pending for [`VoucherCard::recover_after`] seconds is
    /// recovered as if a wallet had ordered it (resolve as initiator, abort
    /// as responder), and asked again with [`backoff`] until the TTP's
    /// admission finishes it. A pending exchange is timed from when it
    /// became pending (a record stored without a timer: from the first
    /// tick that sees it). Returns the requests (and progress reports) to
    /// send; the caller stores the state with them.
    ///
    /// Offers that expired by `now` are forgotten first: nothing was
    /// deleted for them, and the headroom they reserved is free again.
    pub fn tick(&mut self, cx: &mut Ctx<'_>, now: u64) -> Vec<Out> {
        self.offers.retain(|_, o| !o.expired(now));
        if self.recover_after == 0 {
            return Vec::new();
        }
        let after = u64::from(self.recover_after);
        let pending: Vec<ExchangeId> = self.pending().map(|(id, _)| *id).collect();
        let mut outs = Vec::new();
        for id in pending {
            let e = self.exchanges.get_mut(&id).expect("pending");
            // A timer set while the host's clock was ahead waits no longer
            // than one set now would.
            let latest = now.saturating_add(backoff(after, e.asks));
            match e.due {
                None => e.due = Some(now.saturating_add(after)),
                Some(due) if due > latest => e.due = Some(latest),
                Some(due) if now >= due => {
                    // Pending, so recover cannot refuse.
                    if let Ok(o) = self.recover(cx, id) {
                        outs.extend(o);
                    }
                    let e = self.exchanges.get_mut(&id).expect("pending");
                    e.asks = e.asks.saturating_add(1);
                    e.due = Some(now.saturating_add(backoff(after, e.asks)));
                }
                Some(_) => {}
            }
        }
        outs
    }

    /// When a run that becomes pending at `now` is first asked about: set
    /// with the record itself, so that a tick never has to grow the state
    /// (a full store would otherwise stop every tick's requests).
    fn first_due(&self, now: u64) -> Option<u64> {
        (self.recover_after > 0).then(|| now.saturating_add(self.recover_after.into()))
    }

    /// Handles one eTP message addressed to the card (privilege was checked
    /// by the card runtime). On `Err`, nothing changed.
    pub fn handle(
        &mut self,
        cx: &mut Ctx<'_>,
        src: EntityId,
        mtype: Mtype,
        param: &[u8],
    ) -> Result<Vec<Out>, Refusal> {
        if let Some(r) = self.query(cx, src, mtype, param) {
            return r;
        }
        let bad = |e: DecodeError| Refusal(format!("malformed {mtype}: {e}"));
        match mtype {
            MINT => self.mint(cx, &Amount::decode(param).map_err(bad)?),
            msg::START_EXCHANGE => self.start(cx, StartExchange::decode(param).map_err(bad)?),
            msg::ACCEPT => self.accept(cx, Offer::decode(param).map_err(bad)?),
            msg::AGREEMENT => self.agreement(cx, src, Agreement::decode(param).map_err(bad)?),
            msg::CONFIRMATION => {
                self.confirmation(cx, src, Confirmation::decode(param).map_err(bad)?)
            }
            msg::COMMITMENT => self.commitment(cx, src, Commitment::decode(param).map_err(bad)?),
            msg::RECOVER => self.recover(cx, ExchangeId::decode(param).map_err(bad)?),
            PRESENT => self.present(cx, PresentOrder::decode(param).map_err(bad)?),
            DELEGATE => Self::delegate(cx, src, DelegateOrder::decode(param).map_err(bad)?),
            LOG_REQUEST => {
                let since = LogRequest::decode(param).map_err(bad)?.since;
                // Asking from `since` says the wallet's journal holds every
                // run before it; a number beyond this card's is another
                // card's journal and acknowledges nothing.
                if since <= self.next_seq {
                    self.acked = self.acked.max(since);
                }
                Ok(vec![Out {
                    dst: src,
                    mtype: LOG,
                    param: self.log(since).to_bytes(),
                }])
            }
            INSTALL_DELEGATION => self.install(cx, Delegation::decode(param).map_err(bad)?),
            WITHDRAW => {
                let to = match param {
                    [] => None,
                    p => Some(EntityId::decode(p).map_err(bad)?),
                };
                let before = self.offers.len();
                self.offers
                    .retain(|_, o| to.is_some_and(|t| o.responder != t));
                if self.offers.len() == before {
                    return refuse(match to {
                        Some(t) => format!("no open offer to {t} to withdraw"),
                        None => "no open offer to withdraw".to_owned(),
                    });
                }
                Ok(Vec::new())
            }
            msg::ADMISSION => self.admission(cx, src, Admission::decode(param).map_err(bad)?),
            SET_ACCEPTOR => {
                let id = EntityId::decode(param).map_err(bad)?;
                if id.domain() != cx.me.domain() || id.is_owner() {
                    return refuse("the acceptor must be an app of this card's domain");
                }
                self.acceptor = Some(id);
                // The confirmation goes to the acceptor through the host's
                // dispatch table, whose offer guard learns from it where to
                // hold offers addressed to this card.
                Ok(vec![Out {
                    dst: id,
                    mtype: ACCEPTOR_SET,
                    param: Vec::new(),
                }])
            }
            other => refuse(format!("the voucher applet does not handle {other}")),
        }
    }

    /// Handles the messages that only read the state (balances, the
    /// exchange list, an offer forwarded to the acceptor): `None` for any
    /// other mtype. The state cannot change here, so the card has nothing
    /// to store.
    pub fn query(
        &self,
        cx: &Ctx<'_>,
        src: EntityId,
        mtype: Mtype,
        param: &[u8],
    ) -> Option<Result<Vec<Out>, Refusal>> {
        let bad = |e: DecodeError| Refusal(format!("malformed {mtype}: {e}"));
        Some(match mtype {
            msg::OFFER => {
                // Option 2a: an offer addressed to the card itself goes to the
                // registered acceptor app, which decides.
                let offer = match Offer::decode(param) {
                    Ok(o) => o,
                    Err(e) => return Some(Err(bad(e))),
                };
                if offer.initiator != src || offer.responder != cx.me {
                    return Some(refuse(
                        "the offer must come from its initiator and name this card",
                    ));
                }
                let Some(acceptor) = self.acceptor else {
                    return Some(refuse("this card takes no offers: no acceptor registered"));
                };
                Ok(vec![Out {
                    dst: acceptor,
                    mtype: msg::OFFER,
                    param: param.to_vec(),
                }])
            }
            EXCHANGES_REQUEST => Ok(vec![Out {
                dst: src,
                mtype: EXCHANGES,
                param: {
                    let mut out = Vec::new();
                    let summaries = self.exchanges.iter().map(|(id, e)| ExchangeSummary {
                        id: *id,
                        role: e.role,
                        phase: e.phase,
                        offer: e.offer.clone(),
                    });
                    list(&mut out, summaries, |out, x| x.encode(out));
                    out
                },
            }]),
            BALANCE_REQUEST => Ok(vec![Out {
                dst: src,
                mtype: BALANCES,
                param: encode_balances(&self.balances),
            }]),

            _ => return None,
        })
    }

    /// The finished runs this card still holds with a sequence number of
    /// `since` or more, oldest first, at most [`LOG_PAGE_BYTES`] of them
    /// (at least one).
    pub fn log(&self, since: u64) -> Log {
        let mut entries: Vec<LogEntry> = self
            .exchanges
            .iter()
            .filter_map(|(id, e)| {
                let seq = e.seq.filter(|s| *s >= since)?;
                Some(LogEntry {
                    seq,
                    summary: ExchangeSummary {
                        id: *id,
                        role: e.role,
                        phase: e.phase,
                        offer: e.offer.clone(),
                    },
                    receipt: e.receipt(),
                })
            })
            .collect();
        entries.sort_by_key(|e| e.seq);
        let mut bytes = 0;
        let page = entries
            .iter()
            .take_while(|e| {
                bytes += e.summary.to_bytes().len()
                    + e.receipt.as_ref().map_or(0, |r| r.to_bytes().len());
                bytes <= LOG_PAGE_BYTES
            })
            .count()
            .max(1);
        entries.truncate(page);
        let first = self
            .exchanges
            .values()
            .filter_map(|e| e.seq)
            .min()
            .unwrap_or(self.next_seq);
        Log {
            first,
            next: self.next_seq,
            entries,
        }
    }

    /// Signs, as the issuer's card, a delegation for the ordering wallet.
    fn delegate(cx: &mut Ctx<'_>, src: EntityId, o: DelegateOrder) -> Result<Vec<Out>, Refusal> {
        if o.class.issuer != cx.me.domain() {
            return refuse(format!(
                "this card delegates only its own domain's classes ({}), not {}",
                cx.me.domain(),
                o.class
            ));
        }
        if o.redeemer == cx.me || !o.redeemer.is_owner() {
            return refuse("the redeemer must be another card");
        }
        if o.until <= cx.now {
            return refuse("the delegation would end before it starts");
        }
        let mut d = Delegation {
            issuer: cx.me,
            redeemer: o.redeemer,
            class: o.class,
            until: o.until,
            signature: Vec::new(),
            certificate: cx.crypto.certificate(),
        };
        d.signature = cx.crypto.sign(&d.signed_bytes());
        Ok(vec![Out {
            dst: src,
            mtype: DELEGATION,
            param: d.to_bytes(),
        }])
    }

    /// Installs a delegation naming this card, checked as a holder's card
    /// checks it; it replaces one for the same class. Expired ones go first.
    fn install(&mut self, cx: &mut Ctx<'_>, d: Delegation) -> Result<Vec<Out>, Refusal> {
        let check =
            |s: Signer, c: &[u8], m: &[u8], g: &[u8]| check_by_role(&*cx.crypto, s, c, m, g);
        d.check(&check, cx.me, &d.class, Some(cx.now))
            .map_err(|e| Refusal(format!("delegation refused: {e}")))?;
        self.delegations.retain(|_, x| x.until > cx.now);
        if !self.delegations.contains_key(&d.class) && self.delegations.len() >= MAX_DELEGATIONS {
            return refuse(format!(
                "this card holds {MAX_DELEGATIONS} delegations already"
            ));
        }
        self.delegations.insert(d.class.clone(), d);
        Ok(Vec::new())
    }

    fn progress(cx: &Ctx<'_>, id: &ExchangeId, phase: Phase) -> Vec<Out> {
        cx.wallet
            .map(|w| Out {
                dst: w,
                mtype: PROGRESS,
                param: {
                    let mut p = id.to_bytes();
                    tlv::write(&mut p, Tag(0x81), &[phase.code()]);
                    p
                },
            })
            .into_iter()
            .collect()
    }

    fn mint(&mut self, cx: &mut Ctx<'_>, a: &Amount) -> Result<Vec<Out>, Refusal> {
        if a.class.issuer != cx.me.domain() {
            return refuse(format!(
                "this card issues only vouchers of its own domain {}",
                cx.me.domain()
            ));
        }
        self.reserve(a, "mint refused")?;
        self.balances
            .credit(a)
            .map_err(|e| Refusal(e.to_string()))?;
        Ok(Vec::new())
    }

    fn start(&mut self, cx: &mut Ctx<'_>, s: StartExchange) -> Result<Vec<Out>, Refusal> {
        if s.responder == cx.me {
            return refuse("an exchange needs another card");
        }
        if s.redeem && s.want.is_some() {
            return refuse("a redemption wants nothing back");
        }
        if s.redeem && self.unread_receipts() >= MAX_UNREAD_RECEIPTS {
            return refuse(format!(
                "{MAX_UNREAD_RECEIPTS} receipts or redemptions under way await a wallet: run any `tenet wallet` command to read them first"
            ));
        }
        let held = self.balances.of(&s.give.class);
        if held < s.give.quantity {
            return refuse(format!(
                "holds {held} of {}, offers {}",
                s.give.class, s.give.quantity
            ));
        }
        // The exchange may bring `want` (committed or resolved); `give`,
        // deleted at the agreement, may come back (aborted) to where it is.
        if let Some(want) = &s.want {
            self.reserve(want, "offer refused")?;
        }
        let mut n1 = [0u8; 16];
        cx.crypto.random(&mut n1);
        let offer = Offer {
            // The responder's certificate, if this card checked it before:
            // the responder may then leave it out of m2.
            knows: cx.crypto.known_reference(s.responder),
            initiator: cx.me,
            responder: s.responder,
            give: s.give,
            want: s.want,
            n1,
            expires: s.expires_in.map(|t| cx.now.saturating_add(t.into())),
            redeem: s.redeem.then_some(cx.ttp),
        };
        let out = Out {
            dst: s.peer_wallet,
            mtype: msg::OFFER,
            param: offer.to_bytes(),
        };
        self.offers.insert(n1, offer);
        Ok(vec![out])
    }

    /// Signs, for the verifier, that this card holds at least the ordered
    /// amount now ([`crate::present`]); nothing moves or is stored.
    fn present(&mut self, cx: &mut Ctx<'_>, o: PresentOrder) -> Result<Vec<Out>, Refusal> {
        let held = self.balances.of(&o.amount.class);
        if held < o.amount.quantity {
            return refuse(format!(
                "holds {held} of {}, cannot show {}",
                o.amount.class, o.amount.quantity
            ));
        }
        let mut p = Presentation {
            holder: cx.me,
            verifier: o.verifier,
            challenge: o.challenge,
            amount: o.amount,
            time: cx.now,
            signature: Vec::new(),
            certificate: cx.crypto.certificate(),
        };
        p.signature = cx.crypto.sign(&p.signed_bytes());
        Ok(vec![Out {
            dst: o.verifier,
            mtype: PRESENTATION,
            param: p.to_bytes(),
        }])
    }

    /// Step 4 of the responder: delete `v2`, record the exchange, send `m2`.
    fn accept(&mut self, cx: &mut Ctx<'_>, offer: Offer) -> Result<Vec<Out>, Refusal> {
        if offer.responder != cx.me {
            return refuse("the offer is for another card");
        }
        if offer.expired(cx.now) {
            return refuse(format!(
                "the offer expired at {}",
                tenet_proto::time::Utc(offer.expires.unwrap_or_default())
            ));
        }
        let digest = offer.digest();
        if self.accepted.contains(&digest) {
            return refuse("this offer was already accepted (replay)");
        }
        // Each accepted run is a record until it ends; a stranger's gifts
        // or redemptions, which debit nothing here, must not fill the
        // store. (An exchange's record is paid with this card's own
        // vouchers, and its user's decision.)
        let accepted: Vec<&Exchange> = self
            .pending()
            .filter(|(_, e)| e.role == Role::Responder && e.offer.want.is_none())
            .map(|(_, e)| e)
            .collect();
        if offer.want.is_none() && accepted.len() >= MAX_PENDING_ACCEPTED {
            return refuse(format!(
                "{MAX_PENDING_ACCEPTED} runs this card accepted are still pending; it takes no more until they end"
            ));
        }
        // One peer that never confirms holds at most a few of them.
        let from_peer = accepted
            .iter()
            .filter(|e| e.offer.initiator == offer.initiator);
        if offer.want.is_none() && from_peer.count() >= MAX_PENDING_PER_PEER {
            return refuse(format!(
                "{MAX_PENDING_PER_PEER} runs from {} are still pending; this card takes no more from it until they end",
                offer.initiator
            ));
        }
        // A redemption: this card must be the issuer's or hold its
        // delegation, and use the TTP the holder's card names.
        let delegation = match offer.redeem {
            None => None,
            Some(t) if t != cx.ttp => {
                return refuse(format!(
                    "the redemption names TTP {t}; this card uses {}",
                    cx.ttp
                ));
            }
            Some(_) if offer.give.class.issuer == cx.me.domain() => None,
            Some(_) => match self.delegations.get(&offer.give.class) {
                Some(d) if cx.now < d.until => Some(d.clone()),
                Some(_) => return refuse("this card's delegation for the class expired"),
                None => {
                    return refuse(format!(
                        "this card redeems only its own class or a delegated one, not {}",
                        offer.give.class
                    ));
                }
            },
        };
        // From here `v2` is deleted and either `v1` (committed or resolved)
        // or `v2` back (aborted) will be credited: refuse now, before
        // deleting anything, an exchange whose outcome could not be applied.
        // `v2`'s refund only restores what is held now. A redemption
        // credits nothing here.
        if !offer.is_redemption() {
            self.reserve(&offer.give, "offer refused")?;
        }
        // A gift's payee deletes nothing.
        let mut balances = self.balances.clone();
        if let Some(want) = &offer.want {
            balances.debit(want).map_err(|e| Refusal(e.to_string()))?;
        }
        let mut n2 = [0u8; 16];
        cx.crypto.random(&mut n2);
        let id = ExchangeId::for_offer(&offer, &n2);
        let agreement = Agreement {
            knows: cx.crypto.known_reference(offer.initiator),
            offer_digest: digest,
            id,
            signature: cx.crypto.sign(&Agreement::signed_bytes(&digest, &id)),
            certificate: cx.crypto.certificate(),
            delegation,
        };
        // The record keeps the certificate (recovery sends it to the TTP);
        // m2 leaves it out when the initiator said it holds it.
        let sent = Agreement {
            certificate: own_certificate(cx, offer.knows),
            ..agreement.clone()
        };
        let out = Out {
            dst: offer.initiator,
            mtype: msg::AGREEMENT,
            param: sent.to_bytes(),
        };
        self.balances = balances;
        self.accepted.push_back(digest);
        while self.accepted.len() > ACCEPTED_MEMORY {
            self.accepted.pop_front();
        }
        let due = self.first_due(cx.now);
        self.exchanges.insert(
            id,
            Exchange {
                role: Role::Responder,
                offer,
                agreement,
                n2: Some(n2),
                phase: Phase::AwaitingConfirmation,
                due,
                asks: 0,
                admission: None,
                seq: None,
            },
        );
        self.keep_certificate(id);
        self.trim();
        let mut outs = vec![out];
        outs.extend(Self::progress(cx, &id, Phase::AwaitingConfirmation));
        Ok(outs)
    }

    /// Step 5 of the initiator: verify `m2`, delete `v1`, record, send `m3`.
    fn agreement(
        &mut self,
        cx: &mut Ctx<'_>,
        src: EntityId,
        mut a: Agreement,
    ) -> Result<Vec<Out>, Refusal> {
        let Some((n1, offer)) = self
            .offers
            .iter()
            .find(|(_, o)| o.digest() == a.offer_digest)
        else {
            return refuse("no open offer matches this agreement (replayed or withdrawn)");
        };
        let (n1, offer) = (*n1, offer.clone());
        // Past its expiry by this card's clock, the offer is over whatever
        // the responder's clock said: nothing is deleted here, and the
        // responder, which deleted its side, aborts with the TTP.
        if offer.expired(cx.now) {
            return refuse("the offer this agreement answers has expired");
        }
        if src != offer.responder {
            return refuse(format!(
                "agreement from {src}, offer was to {}",
                offer.responder
            ));
        }
        // Left out: the one this card said it holds, checked before; the
        // record keeps it whole for recovery.
        if a.certificate.is_empty() {
            a.certificate = known(cx, offer.responder, offer.knows, "agreement")?;
        }
        cx.crypto
            .verify(
                offer.responder,
                &a.certificate,
                &Agreement::signed_bytes(&a.offer_digest, &a.id),
                &a.signature,
            )
            .map_err(|e| Refusal(format!("agreement: {e}")))?;
        // A delegation rides only with a redemption at a delegate: it is
        // not under the agreement's signature, so nowhere else may a relay
        // add one (and grow this card's records with it).
        let delegated = offer.is_redemption() && offer.responder != offer.give.class.issuer.owner();
        if a.delegation.is_some() && !delegated {
            return refuse("a delegation comes only with a redemption at a delegated card");
        }
        // A redemption gives only to the issuer's card or its delegate.
        if offer.is_redemption() {
            let check =
                |s: Signer, c: &[u8], m: &[u8], g: &[u8]| check_by_role(&*cx.crypto, s, c, m, g);
            crate::redeem::entitled(&check, &offer, a.delegation.as_ref(), Some(cx.now))
                .map_err(|e| Refusal(format!("redemption refused: {e}")))?;
        }
        if self.exchanges.contains_key(&a.id) {
            return refuse("exchange id already in use");
        }
        let mut balances = self.balances.clone();
        balances
            .debit(&offer.give)
            .map_err(|e| Refusal(e.to_string()))?;
        let conf = Confirmation {
            id: a.id,
            signature: cx.crypto.sign(&Confirmation::signed_bytes(&a.id)),
            certificate: own_certificate(cx, a.knows),
        };
        let out = Out {
            dst: offer.responder,
            mtype: msg::CONFIRMATION,
            param: conf.to_bytes(),
        };
        let id = a.id;
        self.balances = balances;
        self.offers.remove(&n1);
        let due = self.first_due(cx.now);
        self.exchanges.insert(
            id,
            Exchange {
                role: Role::Initiator,
                offer,
                agreement: a,
                n2: None,
                phase: Phase::AwaitingCommitment,
                due,
                asks: 0,
                admission: None,
                seq: None,
            },
        );
        self.keep_certificate(id);
        self.trim();
        let mut outs = vec![out];
        outs.extend(Self::progress(cx, &id, Phase::AwaitingCommitment));
        Ok(outs)
    }

    /// Step 6 of the responder: verify `m3`, store `v1`, send `m4`.
    fn confirmation(
        &mut self,
        cx: &mut Ctx<'_>,
        src: EntityId,
        c: Confirmation,
    ) -> Result<Vec<Out>, Refusal> {
        let Some(e) = self.exchanges.get(&c.id) else {
            return refuse("no exchange with this id");
        };
        if e.role != Role::Responder || src != e.offer.initiator {
            return refuse("confirmation from the wrong party");
        }
        // A repeated m3 after committing gets m4 again, though a card
        // that restarted since no longer holds the certificate it left
        // out: n2 went out with the first m4.
        if let (true, Phase::Committed, Some(n2)) = (c.certificate.is_empty(), e.phase, e.n2) {
            return Ok(vec![Out {
                dst: e.offer.initiator,
                mtype: msg::COMMITMENT,
                param: Commitment { n2 }.to_bytes(),
            }]);
        }
        let certificate = match c.certificate.is_empty() {
            true => known(cx, e.offer.initiator, e.agreement.knows, "confirmation")?,
            false => c.certificate,
        };
        cx.crypto
            .verify(
                e.offer.initiator,
                &certificate,
                &Confirmation::signed_bytes(&c.id),
                &c.signature,
            )
            .map_err(|err| Refusal(format!("confirmation: {err}")))?;
        let Some(n2) = e.n2 else {
            return refuse("the stored exchange lacks n2");
        };
        let commit = Out {
            dst: e.offer.initiator,
            mtype: msg::COMMITMENT,
            param: Commitment { n2 }.to_bytes(),
        };
        match e.phase {
            Phase::AwaitingConfirmation => {}
            // A repeated m3 after committing gets m4 again (idempotent).
            Phase::Committed => return Ok(vec![commit]),
            // Once abort was asked for, only the TTP decides.
            other => return refuse(format!("exchange is {other:?}; the TTP decides")),
        }
        // A redemption's vouchers are destroyed: nothing is credited.
        let mut balances = self.balances.clone();
        if let Some(g) = e.gets() {
            balances.credit(g).map_err(|err| Refusal(err.to_string()))?;
        }
        self.balances = balances;
        self.exchanges.get_mut(&c.id).expect("present").phase = Phase::Committed;
        self.trim();
        let mut outs = vec![commit];
        outs.extend(Self::progress(cx, &c.id, Phase::Committed));
        Ok(outs)
    }

    /// Step 7 of the initiator: check `m4`, store `v2`.
    fn commitment(
        &mut self,
        cx: &mut Ctx<'_>,
        src: EntityId,
        m: Commitment,
    ) -> Result<Vec<Out>, Refusal> {
        // An exchange's id, a gift's or a redemption's, whichever this card
        // has.
        let id = [
            ExchangeId::of_n2(&m.n2),
            ExchangeId::of_gift_n2(&m.n2),
            ExchangeId::of_redeem_n2(&m.n2),
        ]
        .into_iter()
        .find(|id| {
            self.exchanges
                .get(id)
                .is_some_and(|e| ExchangeId::for_offer(&e.offer, &m.n2) == *id)
        });
        let Some((id, e)) = id.and_then(|id| self.exchanges.get(&id).map(|e| (id, e))) else {
            return refuse("no exchange for this commitment");
        };
        if e.role != Role::Initiator || src != e.offer.responder {
            return refuse("commitment from the wrong party");
        }
        if !matches!(e.phase, Phase::AwaitingCommitment | Phase::Resolving) {
            return refuse(format!("exchange is {:?}", e.phase));
        }
        // m4 proves the responder committed; it can then never have aborted,
        // so it also settles an exchange being resolved.
        let mut balances = self.balances.clone();
        if let Some(want) = &e.offer.want {
            balances
                .credit(want)
                .map_err(|err| Refusal(err.to_string()))?;
        }
        self.balances = balances;
        let e = self.exchanges.get_mut(&id).expect("present");
        e.phase = Phase::Committed;
        e.n2 = Some(m.n2);
        self.trim();
        Ok(Self::progress(cx, &id, Phase::Committed))
    }

    /// Starts resolve (initiator) or abort (responder) with the TTP, or
    /// repeats the request.
    fn recover(&mut self, cx: &mut Ctx<'_>, id: ExchangeId) -> Result<Vec<Out>, Refusal> {
        let Some(e) = self.exchanges.get(&id) else {
            return refuse("no exchange with this id");
        };
        let (kind, next) = match (e.role, e.phase) {
            (Role::Initiator, Phase::AwaitingCommitment | Phase::Resolving) => {
                (Kind::Resolve, Phase::Resolving)
            }
            (Role::Responder, Phase::AwaitingConfirmation | Phase::Aborting) => {
                (Kind::Abort, Phase::Aborting)
            }
            (_, p) => return refuse(format!("exchange is {p:?}; nothing to recover")),
        };
        let req = RecoveryRequest {
            kind,
            offer: e.offer.clone(),
            agreement: e.agreement.clone(),
            signature: cx.crypto.sign(&kind.request_bytes(&id)),
            certificate: cx.crypto.certificate(),
        };
        self.exchanges.get_mut(&id).expect("present").phase = next;
        let mut outs = vec![Out {
            dst: cx.ttp,
            mtype: msg::RECOVERY_REQUEST,
            param: req.to_bytes(),
        }];
        outs.extend(Self::progress(cx, &id, next));
        Ok(outs)
    }

    /// Step 4 of resolve and abort: follow the TTP's signed decision.
    fn admission(
        &mut self,
        cx: &mut Ctx<'_>,
        src: EntityId,
        a: Admission,
    ) -> Result<Vec<Out>, Refusal> {
        if src != cx.ttp {
            return refuse("admissions come only from the TTP");
        }
        cx.crypto
            .verify_ttp(
                cx.ttp,
                &a.certificate,
                &a.kind.admission_bytes(&a.id),
                &a.signature,
            )
            .map_err(|e| Refusal(format!("admission: {e}")))?;
        if self
            .ttp_certificate
            .as_ref()
            .is_some_and(|pinned| !tenet_pki::same_key(pinned, &a.certificate))
        {
            return refuse(
                "the admission's certificate is not the TTP certificate installed on this card (nor a renewal for its key)",
            );
        }
        let Some(e) = self.exchanges.get(&a.id) else {
            return refuse("no exchange with this id");
        };
        if e.phase.is_final() {
            return Ok(Vec::new()); // a repeated admission
        }
        let (role, gives, gets) = (e.role, e.gives().cloned(), e.gets().cloned());
        let mut balances = self.balances.clone();
        let (phase, credit) = match a.kind {
            Kind::Resolve => (Phase::Resolved, gets),
            Kind::Abort => (Phase::Aborted, gives),
        };
        if let Some(c) = &credit {
            balances.credit(c).map_err(|err| Refusal(err.to_string()))?;
        }
        self.balances = balances;
        let e = self.exchanges.get_mut(&a.id).expect("present");
        e.phase = phase;
        // The holder of a resolved redemption keeps the admission: its
        // receipt's proof.
        if role == Role::Initiator && phase == Phase::Resolved && e.offer.is_redemption() {
            e.admission = Some(a.clone());
        }
        self.trim();
        Ok(Self::progress(cx, &a.id, phase))
    }

    /// Keeps the certificate of exchange `id`'s agreement in
    /// [`VoucherCard::certificates`], if not there yet, and forgets the
    /// oldest that no exchange names beyond [`KEPT_CERTIFICATES`].
    fn keep_certificate(&mut self, id: ExchangeId) {
        let Some(certificate) = self.exchanges.get(&id).map(|e| &e.agreement.certificate) else {
            return;
        };
        let kept = &mut self.certificates;
        // One longer than a recovery request may carry stays whole in its
        // exchange's record (a record is refused with such a one kept).
        if certificate.is_empty()
            || certificate.len() > crate::ttp::MAX_CERTIFICATE_LEN
            || kept.iter().any(|p| p.certificate == *certificate)
        {
            return;
        }
        // Another certificate with the same reference (a collision of 64
        // bits): this one stays whole in its exchange's record.
        let new = KeptCertificate::new(certificate.clone());
        if kept.iter().any(|p| p.reference == new.reference) {
            return;
        }
        kept.push_back(new);
        let mut i = 0;
        while kept.len() > KEPT_CERTIFICATES && i < kept.len() {
            let named = self
                .exchanges
                .values()
                .any(|e| e.agreement.certificate == kept[i].certificate);
            match named {
                true => i += 1,
                false => {
                    kept.remove(i);
                }
            }
        }
    }

    /// Compacts finished exchanges and forgets the oldest beyond
    /// [`HISTORY`]; pending ones are never touched.
    fn trim(&mut self) {
        let Self {
            exchanges,
            finished,
            next_seq,
            acked,
            ..
        } = self;
        for (id, e) in exchanges.iter_mut() {
            if e.phase.is_final() {
                // A receipt needs its agreement whole.
                if e.receipt().is_none() {
                    e.agreement.signature.clear();
                    e.agreement.certificate.clear();
                    e.agreement.delegation = None;
                }
                if e.seq.is_none() {
                    e.seq = Some(*next_seq);
                    *next_seq += 1;
                }
                e.due = None;
                e.asks = 0;
                if !finished.contains(id) {
                    finished.push_back(*id);
                }
            }
        }
        finished.retain(|id| exchanges.contains_key(id));
        // Beyond HISTORY the oldest go, but not a receipt no wallet has
        // read (at most MAX_UNREAD_RECEIPTS: no redemption starts beyond).
        let unread: Vec<ExchangeId> = finished
            .iter()
            .filter(|id| {
                let e = &exchanges[*id];
                e.receipt().is_some() && e.seq.is_none_or(|s| s >= *acked)
            })
            .copied()
            .collect();
        let mut keep = VecDeque::new();
        while finished.len() > HISTORY {
            let Some(id) = finished.pop_front() else {
                break;
            };
            if unread.contains(&id) {
                keep.push_back(id);
            } else {
                exchanges.remove(&id);
            }
        }
        while let Some(id) = keep.pop_back() {
            finished.push_front(id);
        }
    }
}

/// The wallet's question to its card's log ([`LOG_REQUEST`]): the finished
/// runs numbered `since` or later.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogRequest {
    /// The first sequence number wanted.
    pub since: u64,
}

impl Codec for LogRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, Tag(0x80), &self.since.to_be_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[Tag(0x80)], "log request")?;
        Ok(Self {
            since: u64::from_be_bytes(f.require_array(Tag(0x80), "since")?),
        })
    }
}

/// One finished run in the card's log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogEntry {
    /// Its sequence number: runs are numbered as they finish.
    pub seq: u64,
    /// The run.
    pub summary: ExchangeSummary,
    /// Its receipt, for a redemption this card made as holder.
    pub receipt: Option<Receipt>,
}

/// The card's answer to [`LOG_REQUEST`] ([`LOG`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Log {
    /// The oldest sequence number the card still holds (`next` if none):
    /// runs numbered from the request's `since` up to this one are lost
    /// to the asker (the card's log wrapped).
    pub first: u64,
    /// The number the next finished run gets.
    pub next: u64,
    /// The runs asked for, oldest first.
    pub entries: Vec<LogEntry>,
}

impl Codec for Log {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, Tag(0x80), &self.first.to_be_bytes());
        tlv::write(out, Tag(0x81), &self.next.to_be_bytes());
        tlv::write_with(out, Tag(0xa2), |out| {
            list(out, self.entries.iter(), |out, e| {
                tlv::write(out, Tag(0x80), &e.seq.to_be_bytes());
                tlv::write_codec(out, Tag(0xa1), &e.summary);
                if let Some(r) = &e.receipt {
                    tlv::write_codec(out, Tag(0xa2), r);
                }
            })
        });
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[Tag(0x80), Tag(0x81), Tag(0xa2)], "log")?;
        let mut entries = Vec::new();
        for item in tlv::parse_all(f.require(Tag(0xa2), "log entries")?)? {
            let g = Fields::parse(item.value)?;
            g.only(&[Tag(0x80), Tag(0xa1), Tag(0xa2)], "log entry")?;
            entries.push(LogEntry {
                seq: u64::from_be_bytes(g.require_array(Tag(0x80), "sequence number")?),
                summary: ExchangeSummary::decode(g.require(Tag(0xa1), "run")?)?,
                receipt: g.get(Tag(0xa2)).map(Receipt::decode).transpose()?,
            });
        }
        Ok(Self {
            first: u64::from_be_bytes(f.require_array(Tag(0x80), "first")?),
            next: u64::from_be_bytes(f.require_array(Tag(0x81), "next")?),
            entries,
        })
    }
}

const T_BAL: Tag = Tag(0xa0);
const T_OFFERS: Tag = Tag(0xa1);
const T_EX: Tag = Tag(0xa2);
/// The accepted offers' digests, oldest first (records written before
/// [`T_SEEN_NEWEST_FIRST`]).
const T_SEEN: Tag = Tag(0x83);
/// The accepted offers' digests, newest first.
const T_SEEN_NEWEST_FIRST: Tag = Tag(0x8d);
const T_TTP: Tag = Tag(0x84);
const T_ACCEPTOR: Tag = Tag(0x85);
const T_TTP_CERT: Tag = Tag(0x86);
const T_FINISHED: Tag = Tag(0x87);
const T_RECOVER_AFTER: Tag = Tag(0x88);
const T_DELEGATIONS: Tag = Tag(0xa9);
const T_NEXT_SEQ: Tag = Tag(0x8a);
const T_ACKED: Tag = Tag(0x8b);
/// The quantities, 8 bytes each, in the order of [`T_CLASSES`] (0 for a
/// class not held).
const T_QUANTITIES: Tag = Tag(0x8c);
/// The classes held and those the remembered offers and exchanges move
/// (without their quantities: `VoucherCard::classes_listed`).
const T_CLASSES: Tag = Tag(0xad);
const T_CERTS: Tag = Tag(0xae);
/// In an exchange's record: its responder's certificate is the one in
/// [`T_CERTS`] with this reference.
const T_EX_CERT_REF: Tag = Tag(0x87);

/// Appends each item as a constructed SEQUENCE that `write` fills in place.
fn list<T>(out: &mut Vec<u8>, items: impl Iterator<Item = T>, write: impl Fn(&mut Vec<u8>, T)) {
    for i in items {
        tlv::write_with(out, Tag(0x30 | 0x20 /* constructed sequence */), |out| {
            write(out, i)
        });
    }
}

/// A list of 32-byte values written back to back (digests, exchange ids).
fn digests<'a>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<impl DoubleEndedIterator<Item = [u8; 32]> + 'a, DecodeError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(DecodeError::Invalid {
            what,
            detail: "length not a multiple of 32".into(),
        });
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| c.try_into().expect("chunks of 32 bytes")))
}

impl VoucherCard {
    /// The finished exchanges in the order their sequence numbers give,
    /// which is the order they finished in: a record whose
    /// [`VoucherCard::finished`] is this order does not write it.
    fn finished_by_seq(exchanges: &BTreeMap<ExchangeId, Exchange>) -> VecDeque<ExchangeId> {
        let mut done: Vec<(&ExchangeId, &Exchange)> = exchanges
            .iter()
            .filter(|(_, e)| e.phase.is_final())
            .collect();
        done.sort_by_key(|(_, e)| e.seq);
        done.into_iter().map(|(id, _)| *id).collect()
    }
}

impl VoucherCard {
    /// The classes the record lists with their quantities: those held, and
    /// those the remembered offers and exchanges move (held or not), so
    /// that a class given away whole and received back does not change
    /// the list.
    fn classes_listed(&self) -> std::collections::BTreeSet<&VoucherClass> {
        let mut classes: std::collections::BTreeSet<&VoucherClass> =
            self.balances.iter().map(|(c, _)| c).collect();
        for o in self
            .offers
            .values()
            .chain(self.exchanges.values().map(|e| &e.offer))
        {
            classes.insert(&o.give.class);
            classes.extend(o.want.as_ref().map(|w| &w.class));
        }
        classes
    }
}

impl Codec for VoucherCard {
    /// The record is laid out for a card that updates it in place
    /// (`tenet_card::timing::pages_changed` counts the EEPROM pages a step
    /// reprograms): what a step changes comes first and together (the
    /// counters, every quantity side by side, the accepted offers newest
    /// first, the open offers, then the pending exchanges, each with its
    /// phase and numbers before its agreement and offer); the finished
    /// exchanges follow newest first, so that a run that finishes stays
    /// where it is and the oldest is forgotten from the end; and nothing
    /// is written that the record holds or
    /// derives elsewhere: an agreement's offer digest (`h(offer)`), a
    /// responder's exchange id (from `n2`), the finished list while it is
    /// the order the sequence numbers give (as `trim` keeps it), a
    /// certificate already in [`VoucherCard::certificates`]. Decoding also
    /// reads records written before this layout.
    fn encode(&self, out: &mut Vec<u8>) {
        if self.next_seq > 0 {
            tlv::write(out, T_NEXT_SEQ, &self.next_seq.to_be_bytes());
        }
        if self.acked > 0 {
            tlv::write(out, T_ACKED, &self.acked.to_be_bytes());
        }
        let classes = self.classes_listed();
        tlv::write_with(out, T_QUANTITIES, |out| {
            for c in &classes {
                out.extend_from_slice(&self.balances.of(c).to_be_bytes());
            }
        });
        // Newest first: an accepted offer goes in at the front, next to
        // the quantities, and the oldest leaves from the end, next to the
        // new exchange.
        tlv::write_with(out, T_SEEN_NEWEST_FIRST, |out| {
            for a in self.accepted.iter().rev() {
                out.extend_from_slice(a);
            }
        });
        tlv::write_with(out, T_OFFERS, |out| {
            list(out, self.offers.values(), |out, o| o.encode(out))
        });
        let mut order: Vec<&Exchange> = self.exchanges.values().collect();
        order.sort_by_key(|e| (e.phase.is_final(), std::cmp::Reverse(e.seq)));
        tlv::write_with(out, T_EX, |out| {
            list(out, order.into_iter(), |b, e| {
                tlv::write(b, Tag(0x80), &[e.role as u8, e.phase.code()]);
                if let Some(n2) = &e.n2 {
                    tlv::write(b, Tag(0x83), n2);
                }
                if let Some(due) = e.due {
                    let mut v = due.to_be_bytes().to_vec();
                    v.push(e.asks);
                    tlv::write(b, Tag(0x84), &v);
                }
                if let Some(seq) = e.seq {
                    tlv::write(b, Tag(0x85), &seq.to_be_bytes());
                }
                let kept = match e.agreement.certificate.is_empty() {
                    true => None,
                    false => self
                        .certificates
                        .iter()
                        .find(|p| p.certificate == e.agreement.certificate),
                };
                if let Some(p) = kept {
                    tlv::write(b, T_EX_CERT_REF, &p.reference);
                }
                tlv::write_with(b, Tag(0xa2), |b| {
                    e.agreement
                        .encode_stored(b, e.role != Role::Responder, kept.is_none())
                });
                tlv::write_codec(b, Tag(0xa1), &e.offer);
                if let Some(a) = &e.admission {
                    tlv::write_codec(b, Tag(0xa6), a);
                }
            })
        });
        if self.finished != Self::finished_by_seq(&self.exchanges) {
            tlv::write_with(out, T_FINISHED, |out| {
                for id in &self.finished {
                    out.extend_from_slice(&id.0);
                }
            });
        }
        if let Some(t) = &self.ttp {
            tlv::write(out, T_TTP, &t.to_array());
        }
        if let Some(a) = &self.acceptor {
            tlv::write(out, T_ACCEPTOR, &a.to_array());
        }
        if let Some(c) = &self.ttp_certificate {
            tlv::write(out, T_TTP_CERT, c);
        }
        tlv::write(out, T_RECOVER_AFTER, &self.recover_after.to_be_bytes());
        if !self.delegations.is_empty() {
            tlv::write_with(out, T_DELEGATIONS, |out| {
                list(out, self.delegations.values(), |out, d| d.encode(out))
            });
        }
        if !self.certificates.is_empty() {
            tlv::write_with(out, T_CERTS, |out| {
                for p in &self.certificates {
                    tlv::write(out, Tag(0x80), &p.certificate);
                }
            });
        }
        tlv::write_with(out, T_CLASSES, |out| {
            list(out, classes.iter(), |out, c| c.encode_fields(out))
        });
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(
            &[
                T_BAL,
                T_OFFERS,
                T_EX,
                T_SEEN,
                T_TTP,
                T_ACCEPTOR,
                T_TTP_CERT,
                T_FINISHED,
                T_RECOVER_AFTER,
                T_DELEGATIONS,
                T_NEXT_SEQ,
                T_ACKED,
                T_QUANTITIES,
                T_CLASSES,
                T_CERTS,
                T_SEEN_NEWEST_FIRST,
            ],
            "voucher state",
        )?;
        let mut s = VoucherCard {
            ttp: f
                .get(T_TTP)
                .map(|_| f.require_array(T_TTP, "TTP id").map(EntityId::from_array))
                .transpose()?,
            ttp_certificate: f.get(T_TTP_CERT).map(<[u8]>::to_vec),
            acceptor: f
                .get(T_ACCEPTOR)
                .map(|_| {
                    f.require_array(T_ACCEPTOR, "acceptor")
                        .map(EntityId::from_array)
                })
                .transpose()?,
            // A state from before cards recovered by themselves names no
            // timeout: such a card gets the default.
            recover_after: f
                .get(T_RECOVER_AFTER)
                .map(|_| f.require_array(T_RECOVER_AFTER, "recovery timeout"))
                .transpose()?
                .map_or(DEFAULT_RECOVER_AFTER, u32::from_be_bytes),
            next_seq: f
                .get(T_NEXT_SEQ)
                .map(|_| f.require_array(T_NEXT_SEQ, "next sequence number"))
                .transpose()?
                .map_or(0, u64::from_be_bytes),
            acked: f
                .get(T_ACKED)
                .map(|_| f.require_array(T_ACKED, "acknowledged sequence number"))
                .transpose()?
                .map_or(0, u64::from_be_bytes),
            ..VoucherCard::default()
        };
        for item in tlv::parse_all(f.get(T_DELEGATIONS).unwrap_or_default())? {
            let d = Delegation::decode(item.value)?;
            s.delegations.insert(d.class.clone(), d);
        }
        for (old, new) in [(T_BAL, T_QUANTITIES), (T_SEEN, T_SEEN_NEWEST_FIRST)] {
            if f.get(old).is_some() && f.get(new).is_some() {
                return Err(DecodeError::Invalid {
                    what: "voucher state",
                    detail: format!(
                        "tags {:#x} (the older layout) and {:#x} together",
                        old.0, new.0
                    ),
                });
            }
        }
        let held: Vec<Amount> = match f.get(T_QUANTITIES) {
            // Written before the quantities stood apart: whole amounts.
            None => tlv::parse_all(f.require(T_BAL, "balances")?)?
                .iter()
                .map(|i| Amount::decode(i.value))
                .collect::<Result<_, _>>()?,
            Some(q) => {
                let classes = tlv::parse_all(f.require(T_CLASSES, "classes held")?)?;
                if q.len() != 8 * classes.len() {
                    return Err(DecodeError::Invalid {
                        what: "balances",
                        detail: format!(
                            "{} bytes of quantities for {} classes",
                            q.len(),
                            classes.len()
                        ),
                    });
                }
                classes
                    .iter()
                    .zip(q.chunks_exact(8))
                    .map(|(c, q)| {
                        Ok(Amount {
                            class: VoucherClass::decode_fields(c.value)?,
                            quantity: u64::from_be_bytes(q.try_into().expect("8 bytes")),
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?
            }
        };
        for a in &held {
            if s.balances.of(&a.class) > 0 {
                return Err(DecodeError::Invalid {
                    what: "balances",
                    detail: format!("{} listed twice", a.class),
                });
            }
            s.balances.credit(a).map_err(|e| DecodeError::Invalid {
                what: "balances",
                detail: e.to_string(),
            })?;
        }
        for item in tlv::parse_all(f.get(T_CERTS).unwrap_or_default())? {
            // Each exchange that names one gets its own copy: no longer
            // than a recovery request may carry.
            if item.value.len() > crate::ttp::MAX_CERTIFICATE_LEN {
                return Err(DecodeError::Invalid {
                    what: "kept certificates",
                    detail: format!(
                        "a certificate of {} bytes (at most {})",
                        item.value.len(),
                        crate::ttp::MAX_CERTIFICATE_LEN
                    ),
                });
            }
            s.certificates
                .push_back(KeptCertificate::new(item.value.to_vec()));
        }
        let mut by_reference: BTreeMap<[u8; 8], &[u8]> = BTreeMap::new();
        for k in &s.certificates {
            if by_reference
                .insert(k.reference, k.certificate.as_slice())
                .is_some()
            {
                return Err(DecodeError::Invalid {
                    what: "kept certificates",
                    detail: "two with one reference".into(),
                });
            }
        }
        for item in tlv::parse_all(f.require(T_OFFERS, "offers")?)? {
            let o = Offer::decode(item.value)?;
            s.offers.insert(o.n1, o);
        }
        for item in tlv::parse_all(f.require(T_EX, "exchanges")?)? {
            let g = Fields::parse(item.value)?;
            g.only(
                &[
                    Tag(0x80),
                    Tag(0x83),
                    Tag(0x84),
                    Tag(0x85),
                    T_EX_CERT_REF,
                    Tag(0xa1),
                    Tag(0xa2),
                    Tag(0xa6),
                ],
                "exchange",
            )?;
            let [role, phase] = g.require_array::<2>(Tag(0x80), "role and phase")?;
            let role = role_from(role)?;
            let offer = Offer::decode(g.require(Tag(0xa1), "offer")?)?;
            let n2: Option<[u8; 16]> = g
                .get(Tag(0x83))
                .map(|_| g.require_array(Tag(0x83), "n2"))
                .transpose()?;
            if role == Role::Responder && n2.is_none() {
                return Err(DecodeError::Invalid {
                    what: "exchange",
                    detail: "a responder's exchange without n2".into(),
                });
            }
            let certificate = match g.get(T_EX_CERT_REF) {
                None => None,
                Some(_) => {
                    let r: [u8; 8] = g.require_array(T_EX_CERT_REF, "certificate reference")?;
                    Some(
                        by_reference
                            .get(&r)
                            .copied()
                            .ok_or_else(|| DecodeError::Invalid {
                                what: "exchange",
                                detail: "names a certificate the record does not hold".into(),
                            })?,
                    )
                }
            };
            let agreement = Agreement::decode_stored(
                g.require(Tag(0xa2), "agreement")?,
                offer.digest(),
                n2.filter(|_| role == Role::Responder)
                    .map(|n2| ExchangeId::for_offer(&offer, &n2)),
                certificate,
            )?;
            let timer = g
                .get(Tag(0x84))
                .map(|_| g.require_array::<9>(Tag(0x84), "recovery timer"))
                .transpose()?;
            let e = Exchange {
                due: timer.map(|t| u64::from_be_bytes(t[..8].try_into().expect("8 bytes"))),
                asks: timer.map_or(0, |t| t[8]),
                role,
                phase: Phase::from_code(phase)?,
                offer,
                n2,
                seq: g
                    .get(Tag(0x85))
                    .map(|_| g.require_array(Tag(0x85), "sequence number"))
                    .transpose()?
                    .map(u64::from_be_bytes),
                admission: g.get(Tag(0xa6)).map(Admission::decode).transpose()?,
                agreement,
            };
            if s.exchanges.insert(e.agreement.id, e).is_some() {
                return Err(DecodeError::Invalid {
                    what: "exchanges",
                    detail: "two with one id".into(),
                });
            }
        }
        s.accepted = match f.get(T_SEEN_NEWEST_FIRST) {
            Some(d) => digests(d, "accepted offers")?.rev().collect(),
            None => digests(f.require(T_SEEN, "accepted offers")?, "accepted offers")?.collect(),
        };
        s.finished = match f.get(T_FINISHED) {
            Some(ids) => digests(ids, "finished exchanges")?
                .map(ExchangeId)
                .collect(),
            None => Self::finished_by_seq(&s.exchanges),
        };
        Ok(s)
    }
}
