//! The high-level library for vouchers (paper 4.3.3): a wallet app's view
//! of its card, in the spirit of RFC 4154's VTS-API. It hides the eTP
//! message formats; the card runs the exchange itself.
//!
//! Every order that changes something is followed, on the same connection,
//! by a balance query: the card handles messages in order, so a refusal of
//! the order arrives before the balances and is returned as the order's
//! error.
//!
//! The wallet believes only its card: whoever else can reach its id (any
//! local app, any peer) may send it a message of any mtype, so an answer
//! counts only from the card's id, and a refusal or undeliverable notice
//! only if it concerns a message the wallet is waiting on (see
//! `Wallet::answer`). Anything else is logged and ignored.

use std::time::Duration;

use tenet_proto::card::{PinOutcome, PinStatus, VerifyPin};
use tenet_proto::notice::{Refused, Undeliverable};
use tenet_proto::{Codec, EntityId, Message, Mtype};
use tenet_voucher::card::{
    BALANCE_REQUEST, BALANCES, EXCHANGES, EXCHANGES_REQUEST, ExchangeSummary, LOG, LOG_REQUEST,
    Log, LogRequest, MINT, Phase, decode_balances, decode_exchanges,
};
use tenet_voucher::model::Amount;
use tenet_voucher::msg::{self, ExchangeId, Offer, StartExchange};
use tenet_voucher::redeem::{DELEGATE, DELEGATION, DelegateOrder, Delegation, INSTALL_DELEGATION};
use tracing::warn;

use crate::{Capability, ClientError};

/// What went wrong, in a wallet's terms.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The connection to the daemon failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The PIN was not accepted.
    #[error("PIN not accepted: {0:?}")]
    Pin(PinStatus),
    /// The card refused an order.
    #[error("the card refused {mtype}: {text}")]
    Refused {
        /// The refused mtype.
        mtype: Mtype,
        /// Why.
        text: String,
    },
    /// The card did not answer in time.
    #[error("no answer from the card within {0:?}")]
    Timeout(Duration),
    /// The card's answer was malformed.
    #[error("malformed answer from the card: {0}")]
    Malformed(String),
    /// Text given for an input is not what it must be.
    #[error("{0}")]
    Input(String),
    /// The card has no run with this id, or another role in it.
    #[error("{0}")]
    NotYours(String),
    /// Writing what the wallet reports failed (its reader went away).
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// A verifier of presentations on `cap` (an app; it needs no card):
/// issues a challenge, prints it on `out` with its own id for the holder
/// (`tenet wallet present --to ID --challenge HEX`), and checks each
/// presentation that arrives against the CA's anchor `ca`
/// (`tenet_pki::cv::Anchor` bytes) and `wanted`,
/// reporting it; a new challenge follows each verified one, until `count`
/// are verified. A replayed statement, one for another verifier or
/// another challenge, or one showing less is reported as refused.
pub async fn verify_presentations(
    cap: &mut Capability,
    ca: &[u8],
    wanted: &Amount,
    count: Option<u32>,
    out: &mut impl std::io::Write,
) -> Result<(), WalletError> {
    use tenet_voucher::present::{Challenges, PRESENTATION, Presentation, ca_check};
    let me = cap.id();
    let mut challenges = Challenges::default();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut n = 0;
    while count.is_none_or(|c| n < c) {
        let c = challenges.fresh();
        writeln!(out, "verifier {me} challenge {} wants {wanted}", hex(&c))?;
        out.flush()?;
        loop {
            let m = cap.receive().await?;
            if m.mtype() != PRESENTATION {
                continue;
            }
            let checked = Presentation::decode(&m.param)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    challenges
                        .verify(ca_check(ca), me, m.src(), &p, wanted)
                        .map(|()| p)
                        .map_err(|e| e.to_string())
                });
            match checked {
                Ok(p) => {
                    let at = tenet_proto::time::Utc(p.time);
                    writeln!(
                        out,
                        "verified: {} holds at least {} at {at}",
                        p.holder, p.amount
                    )?;
                    n += 1;
                    break;
                }
                Err(e) => writeln!(out, "refused from {}: {e}", m.src())?,
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// Registers `w` as its card's acceptor, then reports each offer that
/// reaches it on `out` (the initiator, what it gives and wants, when it
/// expires, and its hex for `tenet wallet accept`), up to `count` offers.
/// Offers within `policy` are accepted, or all with `accept`; gifts
/// (transfers: nothing wanted back) only with `gifts`, never by a policy
/// or `accept`; redemptions only within `redeem`. A card that refuses one (a replay, an expired offer, too
/// little held) deleted nothing, and the refusal is reported.
pub async fn take_offers(
    w: &mut Wallet,
    policy: Option<&tenet_voucher::policy::Policy>,
    accept: bool,
    gifts: bool,
    redeem: Option<&tenet_voucher::policy::RedeemPolicy>,
    count: Option<u32>,
    out: &mut impl std::io::Write,
) -> Result<(), WalletError> {
    w.register_acceptor().await?;
    writeln!(
        out,
        "wallet {} waiting for offers (to it or to card {})",
        w.id(),
        w.card()
    )?;
    let mut n = 0;
    while count.is_none_or(|c| n < c) {
        let Some(o) = w.next_offer(Duration::from_secs(3600)).await? else {
            continue;
        };
        n += 1;
        let expires = o.offer.expires.map_or(String::new(), |e| {
            format!(", expires {}", tenet_proto::time::Utc(e))
        });
        let hex: String = o.param.iter().map(|b| format!("{b:02x}")).collect();
        let (from, give) = (o.offer.initiator, &o.offer.give);
        match &o.offer.want {
            Some(want) => writeln!(
                out,
                "offer from {from}: {give} for {want}{expires}\n  {hex}"
            )?,
            None if o.offer.is_redemption() => writeln!(
                out,
                "redemption by {from}: {give} to destroy for a receipt{expires}\n  {hex}"
            )?,
            None => writeln!(out, "gift from {from}: {give}{expires}\n  {hex}")?,
        }
        let how = match policy {
            _ if o.offer.is_redemption() => match redeem {
                Some(r) if r.allows(&o.offer) => "accepted (redemption)",
                Some(_) => {
                    writeln!(out, "  declined: outside the redemption policy")?;
                    continue;
                }
                None => {
                    writeln!(out, "  not taken: a redemption (--redeem-if takes them)")?;
                    continue;
                }
            },
            _ if o.offer.is_gift() => match gifts {
                true => "accepted (gift)",
                false => {
                    writeln!(out, "  not taken: a gift (--accept-transfers takes gifts)")?;
                    continue;
                }
            },
            Some(p) if !p.allows(&o.offer) => {
                writeln!(out, "  declined: outside the policy")?;
                continue;
            }
            Some(_) => "accepted (policy)",
            None if accept => "accepted",
            None => continue,
        };
        match w.accept(&o).await {
            Ok(()) => writeln!(out, "  {how}")?,
            Err(WalletError::Refused { text, .. }) => {
                writeln!(out, "  refused by the card: {text}")?
            }
            Err(e) => return Err(e),
        }
        out.flush()?;
    }
    Ok(())
}

/// The bytes of hex text `s`.
pub fn unhex(s: &str) -> Result<Vec<u8>, WalletError> {
    let bad = || WalletError::Input(format!("not hex: {s:?}"));
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// An amount from its text `QTY:ISSUERHEX:PROMISE`, or `QTY:PROMISE` of
/// the class of `own` (an issuer's card minting), at least 1.
pub fn parse_amount(s: &str, own: Option<tenet_proto::Domain>) -> Result<Amount, WalletError> {
    let a: Result<Amount, _> = match (s.split_once(':'), own) {
        (Some((q, p)), Some(d)) if !p.contains(':') => format!("{q}:{d}:{p}").parse(),
        _ => s.parse(),
    };
    let a = a.map_err(|e| WalletError::Input(e.to_string()))?;
    if a.quantity == 0 {
        return Err(WalletError::Input("quantity must be at least 1".into()));
    }
    Ok(a)
}

/// A run's id from its 64 hex digits.
pub fn parse_id(s: &str) -> Result<ExchangeId, WalletError> {
    let b = unhex(s)?.try_into();
    let b = b.map_err(|_| WalletError::Input("an exchange id is 32 bytes (64 hex digits)".into()));
    Ok(ExchangeId(b?))
}

/// Balances as `tenet wallet balance` prints them, one line per class.
pub fn balances_text(b: &[Amount]) -> String {
    if b.is_empty() {
        return "(no vouchers)\n".into();
    }
    b.iter()
        .map(|a| {
            format!(
                "{:>8}  {}  {}\n",
                a.quantity, a.class.issuer, a.class.promise
            )
        })
        .collect()
}

/// Exchanges as `tenet wallet exchanges` prints them, one line each.
pub fn exchanges_text(ex: &[ExchangeSummary]) -> String {
    if ex.is_empty() {
        return "(no exchanges)\n".into();
    }
    ex.iter().map(|e| format!("{e}\n")).collect()
}

/// An offer that reached this wallet (option 2b: the offering card sends
/// it to the peer's wallet app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingOffer {
    /// The offer.
    pub offer: Offer,
    param: Vec<u8>,
}

/// A wallet app bound to its card.
pub struct Wallet {
    cap: Capability,
    card: EntityId,
    wait: Duration,
    offers: Vec<IncomingOffer>,
}

impl Wallet {
    /// Authenticates `cap` to `card` with `pin` (per entity: this wallet
    /// only).
    pub async fn open(
        mut cap: Capability,
        card: EntityId,
        pin: &[u8],
    ) -> Result<Self, WalletError> {
        cap.send(
            card,
            Mtype::VERIFY_PIN,
            VerifyPin { pin: pin.to_vec() }.to_bytes(),
        )
        .await?;
        let mut w = Self {
            cap,
            card,
            wait: Duration::from_secs(10),
            offers: Vec::new(),
        };
        let m = w.answer(Mtype::PIN_STATUS, &[Mtype::VERIFY_PIN]).await?;
        let st = PinStatus::decode(&m.param).map_err(|e| WalletError::Malformed(e.to_string()))?;
        if st.outcome != PinOutcome::Verified {
            return Err(WalletError::Pin(st));
        }
        Ok(w)
    }

    /// This wallet's id (give it to peers as `peer_wallet`).
    pub fn id(&self) -> EntityId {
        self.cap.id()
    }

    /// The card's id.
    pub fn card(&self) -> EntityId {
        self.card
    }

    /// How long to wait for the card (default 10 s).
    pub fn set_wait(&mut self, d: Duration) {
        self.wait = d;
    }

    /// Waits for the card's answer of `mtype` to what this wallet just sent
    /// it (messages of mtypes `sent`), keeping offers that arrive meanwhile
    /// and turning a refusal of one of `sent` into an error.
    ///
    /// Only the card speaks for the card, whoever else can reach this
    /// wallet (any local app, any peer): an answer counts only from the
    /// card's id; a refusal only from the card and about one of `sent`; an
    /// undeliverable notice only from a domain's owner id (a host; no app
    /// holds one) and about one of `sent` to the card. Anything else is
    /// logged and skipped, and the wait goes on until the same deadline.
    async fn answer(&mut self, mtype: Mtype, sent: &[Mtype]) -> Result<Message, WalletError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let m = tokio::time::timeout_at(deadline, self.cap.receive())
                .await
                .map_err(|_| WalletError::Timeout(self.wait))??;
            let src = m.src();
            match m.mtype() {
                t if t == mtype && src == self.card => return Ok(m),
                t if t == mtype => {
                    warn!(%src, mtype = %t, "answer not from the card; ignored");
                }
                Mtype::REFUSED if src == self.card => {
                    let r = Refused::decode(&m.param)
                        .map_err(|e| WalletError::Malformed(e.to_string()))?;
                    if sent.contains(&r.mtype) {
                        return Err(WalletError::Refused {
                            mtype: r.mtype,
                            text: r.text,
                        });
                    }
                    warn!(refused = %r.mtype, text = %r.text, "refusal of nothing awaited; ignored");
                }
                Mtype::UNDELIVERABLE if src.is_owner() => match Undeliverable::decode(&m.param) {
                    Ok(u) if u.dst == self.card && sent.contains(&u.mtype) => {
                        return Err(ClientError::Undeliverable {
                            dst: u.dst,
                            reason: u.reason,
                        }
                        .into());
                    }
                    Ok(u) => {
                        warn!(%src, dst = %u.dst, mtype = %u.mtype, "undeliverable: nothing awaited; ignored");
                    }
                    Err(e) => warn!(%src, error = %e, "malformed undeliverable notice; ignored"),
                },
                t @ (Mtype::REFUSED | Mtype::UNDELIVERABLE) => {
                    warn!(%src, mtype = %t, "notice from neither the card nor a host; ignored");
                }
                msg::OFFER => self.keep_offer(&m),
                _ => {}
            }
        }
    }

    fn keep_offer(&mut self, m: &Message) {
        if let Ok(offer) = Offer::decode(&m.param) {
            // The offering card is the src (option 2b), or this wallet's own
            // card forwards an offer addressed to it (option 2a).
            if offer.initiator == m.src() || (m.src() == self.card && offer.responder == self.card)
            {
                self.offers.push(IncomingOffer {
                    offer,
                    param: m.param.clone(),
                });
            }
        }
    }

    /// Sends an order, then uses a balance query as a barrier so that a
    /// refusal of the order comes back as its error.
    async fn order(&mut self, mtype: Mtype, param: Vec<u8>) -> Result<Vec<Amount>, WalletError> {
        self.cap.send(self.card, mtype, param).await?;
        self.query_balances(&[mtype, BALANCE_REQUEST]).await
    }

    /// Returns once the card has handled every message that reached it
    /// before this call (an echo through the card, which the card link
    /// answers in order): after [`Self::next_progress`] showed the
    /// commitment on its way to the card, the exchange is stored (written,
    /// not yet synced: a power cut may undo it, and the TTP settles it
    /// again; [`Self::balances`] answers only from what is durable,
    /// `tenet_voucher::card::may_lose_step`).
    pub async fn sync(&mut self) -> Result<(), WalletError> {
        self.cap.echo(self.card, b"", self.wait).await?;
        Ok(())
    }

    /// The card's holdings.
    pub async fn balances(&mut self) -> Result<Vec<Amount>, WalletError> {
        self.query_balances(&[BALANCE_REQUEST]).await
    }

    /// Asks the card for its balances; `sent` names the mtypes of what this
    /// wallet sent the card for this answer, the balance request included:
    /// a refusal of any of them is the error.
    async fn query_balances(&mut self, sent: &[Mtype]) -> Result<Vec<Amount>, WalletError> {
        self.cap
            .send(self.card, BALANCE_REQUEST, Vec::new())
            .await?;
        let m = match self.answer(BALANCES, sent).await {
            Ok(m) => m,
            // The order was refused; the balance request behind it still
            // gets its answer. Take it now, or the next query would read
            // these balances instead of its own.
            Err(WalletError::Refused { mtype, text }) if mtype != BALANCE_REQUEST => {
                let _ = self.answer(BALANCES, &[BALANCE_REQUEST]).await;
                return Err(WalletError::Refused { mtype, text });
            }
            Err(e) => return Err(e),
        };
        decode_balances(&m.param).map_err(|e| WalletError::Malformed(e.to_string()))
    }

    /// Mints vouchers of the card's own class (issuers only).
    pub async fn mint(&mut self, a: Amount) -> Result<Vec<Amount>, WalletError> {
        self.order(MINT, a.to_bytes()).await
    }

    /// Has the card offer `give` for `want` to card `responder`, whose
    /// wallet app is `peer_wallet`, open for
    /// [`msg::DEFAULT_OFFER_SECS`] of the card's time.
    pub async fn offer(
        &mut self,
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
        self.start(s).await
    }

    /// Has the card give `amount` to card `payee`, whose wallet app is
    /// `payee_wallet`, as a gift: the exchange with nothing wanted back,
    /// fair and recovered the same way (the payer's vouchers end either
    /// delivered or refunded, never both, never neither). The payee's
    /// wallet must accept it.
    pub async fn transfer(
        &mut self,
        payee: EntityId,
        payee_wallet: EntityId,
        amount: Amount,
    ) -> Result<(), WalletError> {
        self.start(StartExchange {
            redeem: false,
            responder: payee,
            peer_wallet: payee_wallet,
            give: amount,
            want: None,
            expires_in: Some(msg::DEFAULT_OFFER_SECS),
        })
        .await
    }

    /// Has the card redeem `amount` at card `redeemer` (the class's issuer
    /// card, or one it delegated), whose wallet app is `redeemer_wallet`
    /// (or the card itself, for a merchant that redeems by policy): the
    /// vouchers are destroyed, and this card keeps the receipt
    /// ([`Wallet::log`], [`crate::journal`]). Fair as the exchange: the
    /// vouchers are gone only with the receipt, and come back otherwise.
    pub async fn redeem(
        &mut self,
        redeemer: EntityId,
        redeemer_wallet: EntityId,
        amount: Amount,
    ) -> Result<(), WalletError> {
        self.start(StartExchange {
            redeem: true,
            responder: redeemer,
            peer_wallet: redeemer_wallet,
            give: amount,
            want: None,
            expires_in: Some(msg::DEFAULT_OFFER_SECS),
        })
        .await
    }

    /// Has the card (the issuer of `class`) sign a delegation letting card
    /// `redeemer` redeem `class` until the card time `until`.
    pub async fn delegate(
        &mut self,
        redeemer: EntityId,
        class: tenet_voucher::model::VoucherClass,
        until: u64,
    ) -> Result<Delegation, WalletError> {
        let o = DelegateOrder {
            redeemer,
            class,
            until,
        };
        self.cap.send(self.card, DELEGATE, o.to_bytes()).await?;
        let m = self.answer(DELEGATION, &[DELEGATE]).await?;
        Delegation::decode(&m.param).map_err(|e| WalletError::Malformed(e.to_string()))
    }

    /// Installs a delegation naming this card, which then redeems its
    /// class; the card checks it first.
    pub async fn install_delegation(&mut self, d: &Delegation) -> Result<(), WalletError> {
        self.order(INSTALL_DELEGATION, d.to_bytes())
            .await
            .map(|_| ())
    }

    /// The card's log of finished runs numbered `since` or later.
    pub async fn log(&mut self, since: u64) -> Result<Log, WalletError> {
        let r = LogRequest { since };
        self.cap.send(self.card, LOG_REQUEST, r.to_bytes()).await?;
        let m = self.answer(LOG, &[LOG_REQUEST]).await?;
        Log::decode(&m.param).map_err(|e| WalletError::Malformed(e.to_string()))
    }

    /// Has the card make the offer `s` (its expiry included).
    pub async fn start(&mut self, s: StartExchange) -> Result<(), WalletError> {
        self.order(msg::START_EXCHANGE, s.to_bytes())
            .await
            .map(|_| ())
    }

    /// Has the card show `verifier` that it holds at least `amount`,
    /// answering the verifier's `challenge`: the card signs the statement
    /// and sends it to the verifier; nothing moves. Refused if the card
    /// holds less.
    pub async fn present(
        &mut self,
        verifier: EntityId,
        challenge: tenet_voucher::present::Challenge,
        amount: Amount,
    ) -> Result<(), WalletError> {
        let o = tenet_voucher::present::PresentOrder {
            verifier,
            challenge,
            amount,
        };
        self.order(tenet_voucher::present::PRESENT, o.to_bytes())
            .await
            .map(|_| ())
    }

    /// Withdraws the card's open offers to `to`, or all of them: those no
    /// agreement has reached yet (nothing was deleted for them). Refused
    /// if there is none.
    pub async fn withdraw(&mut self, to: Option<EntityId>) -> Result<(), WalletError> {
        let param = to.map_or_else(Vec::new, |t| t.to_bytes());
        self.order(tenet_voucher::card::WITHDRAW, param)
            .await
            .map(|_| ())
    }

    /// Registers this wallet as the card's acceptor: offers addressed to the
    /// card itself (option 2a: a merchant publishes only its card id) come
    /// here.
    pub async fn register_acceptor(&mut self) -> Result<(), WalletError> {
        let me = self.id();
        self.cap
            .send(self.card, tenet_voucher::card::SET_ACCEPTOR, me.to_bytes())
            .await?;
        self.answer(
            tenet_voucher::card::ACCEPTOR_SET,
            &[tenet_voucher::card::SET_ACCEPTOR],
        )
        .await
        .map(|_| ())
    }

    /// The next offer to this wallet, waiting up to `within`.
    pub async fn next_offer(
        &mut self,
        within: Duration,
    ) -> Result<Option<IncomingOffer>, WalletError> {
        if !self.offers.is_empty() {
            return Ok(Some(self.offers.remove(0)));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let Ok(m) = tokio::time::timeout_at(deadline, self.cap.receive()).await else {
                return Ok(None);
            };
            let m = m?;
            if m.mtype() == msg::OFFER {
                self.keep_offer(&m);
                if !self.offers.is_empty() {
                    return Ok(Some(self.offers.remove(0)));
                }
            }
        }
    }

    /// Accepts an offer: the card deletes its side and sends the agreement.
    pub async fn accept(&mut self, offer: &IncomingOffer) -> Result<(), WalletError> {
        self.order(msg::ACCEPT, offer.param.clone())
            .await
            .map(|_| ())
    }

    /// Accepts an offer obtained some other way (a wallet started later
    /// than the one that received it).
    pub async fn accept_offer(&mut self, offer: &Offer) -> Result<(), WalletError> {
        self.order(msg::ACCEPT, offer.to_bytes()).await.map(|_| ())
    }

    /// The card's exchanges, pending and finished.
    pub async fn exchanges(&mut self) -> Result<Vec<ExchangeSummary>, WalletError> {
        self.cap
            .send(self.card, EXCHANGES_REQUEST, Vec::new())
            .await?;
        let m = self.answer(EXCHANGES, &[EXCHANGES_REQUEST]).await?;
        decode_exchanges(&m.param).map_err(|e| WalletError::Malformed(e.to_string()))
    }

    /// Asks the TTP to finish exchange `id`: resolve if this card made the
    /// offer, abort if it accepted it.
    pub async fn recover(&mut self, id: ExchangeId) -> Result<(), WalletError> {
        self.order(msg::RECOVER, id.to_bytes()).await.map(|_| ())
    }

    /// Asks the TTP to finish exchange `id` if this card is its `role`
    /// (`what` names the step: resolve or abort), and waits up to 30 s
    /// for it to be final; returns its phase.
    pub async fn recover_as(
        &mut self,
        id: ExchangeId,
        role: tenet_voucher::card::Role,
        what: &str,
    ) -> Result<Phase, WalletError> {
        let e = self.exchanges().await?.into_iter().find(|e| e.id == id);
        let e =
            e.ok_or_else(|| WalletError::NotYours("the card has no exchange with this id".into()))?;
        if e.role != role {
            return Err(WalletError::NotYours(format!(
                "this card is the {:?} of the exchange; it may not {what} it",
                e.role
            )));
        }
        self.recover(id).await?;
        self.wait_final(id, Duration::from_secs(30)).await
    }

    /// Recovers every exchange that has stayed pending for `after` (measured
    /// from when this call first sees it), and waits until none is pending;
    /// returns the exchanges it recovered with their final phase. Run it
    /// after a restart to finish what a crash interrupted.
    ///
    /// An exchange still pending after its request is asked again, waiting
    /// twice as long each time (from `after`, at least 500 ms, up to the
    /// card wait): the request or the TTP's answer may have been lost with
    /// a daemon that died or a NATS server that restarted, and the card
    /// then stays resolving or aborting until someone asks again. So is an
    /// exchange found resolving or aborting (asked by an earlier wallet).
    /// The TTP decides once; a repeated request gets the same decision.
    pub async fn auto_recover(
        &mut self,
        after: Duration,
    ) -> Result<Vec<(ExchangeId, Phase)>, WalletError> {
        let start = tokio::time::Instant::now();
        // When to ask next, and the wait after that.
        let mut due: std::collections::HashMap<ExchangeId, (tokio::time::Instant, Duration)> =
            Default::default();
        let mut recovered = Vec::new();
        loop {
            let now = tokio::time::Instant::now();
            let pending: Vec<ExchangeSummary> = self
                .exchanges()
                .await?
                .into_iter()
                .filter(|e| !e.phase.is_final())
                .collect();
            if pending.is_empty() {
                let mut out = Vec::new();
                let all = self.exchanges().await?;
                for id in recovered {
                    if let Some(e) = all.iter().find(|e| e.id == id) {
                        out.push((id, e.phase));
                    }
                }
                return Ok(out);
            }
            for e in pending {
                let (at, wait) = *due.entry(e.id).or_insert((now + after, after));
                if now >= at {
                    match self.recover(e.id).await {
                        // Refused: it became final meanwhile (the next
                        // listing shows it).
                        Ok(()) | Err(WalletError::Refused { .. }) => {}
                        Err(err) => return Err(err),
                    }
                    if !recovered.contains(&e.id) {
                        recovered.push(e.id);
                    }
                    let cap = self.wait.max(after).max(Duration::from_millis(500));
                    let wait = (wait * 2).max(Duration::from_millis(500)).min(cap);
                    due.insert(e.id, (now + wait, wait));
                }
            }
            if now.duration_since(start) > after + self.wait * 3 {
                return Err(WalletError::Timeout(after + self.wait * 3));
            }
            tokio::time::sleep(Duration::from_millis(50).min(after.max(Duration::from_millis(5))))
                .await;
        }
    }

    /// Follows the card's exchange messages (paper 5.4.1's progress hooks):
    /// taps on what the card sends and receives; read them with
    /// [`next_progress`](Self::next_progress).
    pub async fn follow(&mut self) -> Result<(), WalletError> {
        let card = self.card;
        self.cap
            .tap(tenet_proto::Filter {
                src: Some(card),
                ..tenet_proto::Filter::ANY
            })
            .await?;
        self.cap.tap(tenet_proto::Filter::to(card)).await?;
        Ok(())
    }

    /// Follows only the ends of the card's exchanges: the commitments and
    /// the TTP's admissions on their way to the card (taps by mtype). For a
    /// wallet that waits for its exchanges to finish: one tap copy per
    /// exchange, where [`follow`](Self::follow) copies every message to and
    /// from the card; read them with
    /// [`next_progress`](Self::next_progress), then [`sync`](Self::sync) to
    /// know the card stored them.
    pub async fn follow_ends(&mut self) -> Result<(), WalletError> {
        for mtype in [msg::COMMITMENT, msg::ADMISSION] {
            self.cap
                .tap(tenet_proto::Filter {
                    dst: Some(self.card),
                    mtype: Some(mtype),
                    ..tenet_proto::Filter::ANY
                })
                .await?;
        }
        Ok(())
    }

    /// The next exchange message the card sent or received (after
    /// [`follow`](Self::follow) or [`follow_ends`](Self::follow_ends)),
    /// waiting up to `within`.
    pub async fn next_progress(
        &mut self,
        within: Duration,
    ) -> Result<Option<Message>, WalletError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let Ok(i) = tokio::time::timeout_at(deadline, self.cap.next()).await else {
                return Ok(None);
            };
            match i? {
                crate::Incoming::Tapped { message, .. }
                    if (0x0201..=0x0209).contains(&message.mtype().0) =>
                {
                    return Ok(Some(message));
                }
                crate::Incoming::Message { message, .. } if message.mtype() == msg::OFFER => {
                    self.keep_offer(&message)
                }
                _ => {}
            }
        }
    }

    /// Waits until exchange `id` is final; returns its phase.
    pub async fn wait_final(
        &mut self,
        id: ExchangeId,
        within: Duration,
    ) -> Result<Phase, WalletError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(e) = self.exchanges().await?.into_iter().find(|e| e.id == id)
                && e.phase.is_final()
            {
                return Ok(e.phase);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(WalletError::Timeout(within));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
