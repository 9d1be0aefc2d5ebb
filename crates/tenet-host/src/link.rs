//! Card links: how the host reaches its card, behind one trait.
//!
//! - [`InProcessLink`]: the virtual card runs inside the daemon.
//! - `PcscLink` (cargo feature `pcsc`): a card in a PC/SC reader, real or
//!   virtual (vpcd).
//!
//! [`CardSession`] speaks the TENeT APDU mapping (`docs/apdu.md`) over any
//! link: SELECT, GET INFO, ASSIGN PORT, and DELIVER with POLL, using
//! extended-length APDUs or, on short-APDU links, command chaining and GET
//! RESPONSE. It counts APDUs and bytes, and gives the card the host's time
//! (`set-time`, the card's only clock) after every SELECT and then
//! periodically ([`CardSession::tell_time_if_due`]).
//!
//! The card is the daemon's alone: `PcscLink` holds its reader exclusively,
//! on every connection, so no other PC/SC client can send the card a
//! command while the daemon uses it. And a session stays with the card it
//! first selected: after a reconnection, a card whose domain, public key or
//! certificate differs from what GET INFO said first is refused
//! ([`SessionError::OtherCard`]) before anything is sent to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tenet_card::{Card, FileStore};
use tenet_proto::apdu::{Command, Response, SHORT_LC_MAX, StatusWord, compact, tenet};
use tenet_proto::card::{CardInfo, SetTime};
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};

/// Why a link failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// No card (removed, never inserted, unpowered or not answering).
    #[error("no card: {0}")]
    Removed(String),
    /// The card was reset by someone else; the command was not sent.
    #[error("the card was reset")]
    Reset,
    /// Another PC/SC client is connected to the reader, so it cannot be
    /// held exclusively (`SCARD_E_SHARING_VIOLATION`).
    #[error(
        "in use by another PC/SC client (SCARD_E_SHARING_VIOLATION); close it or choose another reader"
    )]
    InUse,
    /// Any other link failure.
    #[error("card link: {0}")]
    Other(String),
}

/// A way to exchange APDUs with one card.
pub trait CardLink: Send {
    /// Sends a command APDU and returns the response APDU.
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError>;
    /// Re-establishes the connection after [`LinkError::Removed`] or
    /// [`LinkError::Reset`]; the card is reset (its authenticated set is
    /// cleared).
    fn reconnect(&mut self) -> Result<(), LinkError>;
    /// Lets go of the card (one that is not the session's card), so that
    /// the next [`reconnect`](Self::reconnect) connects afresh instead of
    /// resetting whatever card is now behind the old connection.
    fn release(&mut self) {}
    /// Whether extended-length APDUs pass.
    fn extended(&self) -> bool;
    /// For logs: what the link is.
    fn describe(&self) -> String;
    /// Whether a command may wait on something outside the daemon (a
    /// reader, pcscd): such a link is driven by the proxy thread alone.
    fn waits(&self) -> bool {
        true
    }
}

/// The virtual card inside the daemon.
pub struct InProcessLink {
    card: Card<FileStore>,
}

impl InProcessLink {
    /// Wraps an opened card.
    pub fn new(card: Card<FileStore>) -> Self {
        Self { card }
    }
}

impl CardLink for InProcessLink {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
        Ok(self.card.process_apdu(command))
    }

    fn reconnect(&mut self) -> Result<(), LinkError> {
        self.card.reset();
        Ok(())
    }

    fn extended(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "in-process virtual card".into()
    }

    fn waits(&self) -> bool {
        false
    }
}

/// APDU and byte counters of one card link.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Command APDUs sent.
    pub apdus: AtomicU64,
    /// Bytes sent (command APDUs).
    pub bytes_out: AtomicU64,
    /// Bytes received (response APDUs).
    pub bytes_in: AtomicU64,
    /// Nanoseconds spent waiting for the card's responses.
    pub busy_ns: AtomicU64,
    /// Messages delivered by the task that stored them rather than by the
    /// proxy thread (the in-process card only).
    pub inline: AtomicU64,
}

impl LinkStats {
    /// `(apdus, bytes_out, bytes_in)`.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.apdus.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
        )
    }
}

/// Why a card operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The card answered with an error status.
    #[error("card answered {0}")]
    Status(StatusWord),
    /// The card's answer is malformed.
    #[error("malformed answer from the card: {0}")]
    Malformed(String),
    /// A message for another entity than the card was handed to its
    /// session.
    #[error("message for {0} handed to the card's session")]
    NotForCard(EntityId),
    /// After a reconnection, another card than the one first selected.
    #[error("another card is in the reader: {0}")]
    OtherCard(#[from] OtherCard),
    /// The card kept announcing more response bytes (`61xx`) beyond what
    /// one answer can hold: it is broken or hostile.
    #[error(
        "the card kept answering 61xx: {rounds} GET RESPONSE rounds, {bytes} bytes, beyond one answer's {max} bytes"
    )]
    EndlessResponse {
        /// GET RESPONSE commands sent.
        rounds: usize,
        /// Response bytes collected.
        bytes: usize,
        /// The most one answer holds.
        max: usize,
    },
}

/// The most response bytes one command's answer holds, all `61xx` rounds
/// together: one eTP message (the card's answer is at most one), with room
/// for its encoding.
pub const MAX_RESPONSE: usize = tenet_proto::MAX_MESSAGE_LEN + 1;

/// How the card found after a reconnection differs from the one the
/// session first selected. Compared in this order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtherCard {
    /// Another domain.
    #[error("its domain is {found}, not {expected}")]
    Domain {
        /// The first card's domain.
        expected: Domain,
        /// This card's.
        found: Domain,
    },
    /// The same domain, another key pair: another card.
    #[error("same domain {0}, but another public key")]
    PublicKey(Domain),
    /// The same key, but the certificate differs or is missing.
    #[error("same domain and public key, but another certificate or none")]
    Certificate,
}

impl OtherCard {
    /// Why `found` is not the card that showed `first`, if it is not.
    pub fn check(first: &CardInfo, found: &CardInfo) -> Result<(), Self> {
        if found.domain != first.domain {
            return Err(Self::Domain {
                expected: first.domain,
                found: found.domain,
            });
        }
        if found.public_key != first.public_key {
            return Err(Self::PublicKey(found.domain));
        }
        if found.certificate != first.certificate {
            return Err(Self::Certificate);
        }
        Ok(())
    }
}

/// The TENeT APDU mapping over a link.
pub struct CardSession {
    link: Box<dyn CardLink>,
    short: bool,
    stats: std::sync::Arc<LinkStats>,
    /// What the card said about itself at the first selection; every later
    /// selection must show the same card.
    first: Option<CardInfo>,
    /// When the card was last given the time; `None` since the last
    /// SELECT (a reset or power-up makes the card forget it).
    time_told: Option<Instant>,
    /// The card's id when the card took the compact form (applet version
    /// 2, `tenet_proto::apdu::compact`); `None` for whole messages.
    compact: Option<EntityId>,
}

impl CardSession {
    /// A session over `link`; `force_short` uses short APDUs even when the
    /// link takes extended ones.
    pub fn new(link: Box<dyn CardLink>, force_short: bool) -> Self {
        let short = force_short || !link.extended();
        Self {
            link,
            short,
            stats: Default::default(),
            first: None,
            time_told: None,
            compact: None,
        }
    }

    /// The counters (shared; they keep counting).
    pub fn stats(&self) -> std::sync::Arc<LinkStats> {
        self.stats.clone()
    }

    /// Counts a message delivered by the task that stored it.
    pub(crate) fn count_inline(&self) {
        self.stats.inline.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the card runs in the daemon: its commands wait on nothing
    /// outside it (its store's writes aside).
    pub fn in_process(&self) -> bool {
        !self.link.waits()
    }

    /// What the link is.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} APDUs)",
            self.link.describe(),
            if self.short { "short" } else { "extended" }
        )
    }

    /// Reconnects the link (resetting the card) and selects the applet;
    /// [`SessionError::OtherCard`] when it is not the card first selected.
    pub fn reconnect(&mut self) -> Result<CardInfo, SessionError> {
        self.link.reconnect()?;
        self.select()
    }

    fn raw(&mut self, cmd: &Command) -> Result<Response, SessionError> {
        let bytes = cmd.to_bytes();
        let t = std::time::Instant::now();
        let resp = self.link.transmit(&bytes)?;
        self.stats
            .busy_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.stats.apdus.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_out
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.stats
            .bytes_in
            .fetch_add(resp.len() as u64, Ordering::Relaxed);
        Response::decode(&resp).map_err(|e| SessionError::Malformed(e.to_string()))
    }

    /// Sends `cmd` (chained if needed) and collects the whole response
    /// (following `61xx` with GET RESPONSE).
    fn exchange(&mut self, cmd: Command) -> Result<Response, SessionError> {
        let parts = if self.short && cmd.needs_extended() {
            cmd.chain(SHORT_LC_MAX)
        } else {
            vec![cmd]
        };
        let last = parts.len() - 1;
        let mut resp = None;
        for (i, p) in parts.into_iter().enumerate() {
            let r = self.raw(&p)?;
            if i < last && r.sw != StatusWord::OK {
                return Err(SessionError::Status(r.sw));
            }
            resp = Some(r);
        }
        let mut r = resp.expect("at least one part");
        let mut data = std::mem::take(&mut r.data);
        let mut rounds = 0;
        while r.sw.sw1() == 0x61 {
            // Each round brings 1 to 256 bytes: a card that goes on beyond
            // one answer's worth is an error, not a loop.
            if data.len() > MAX_RESPONSE || rounds > MAX_RESPONSE.div_ceil(256) {
                return Err(SessionError::EndlessResponse {
                    rounds,
                    bytes: data.len(),
                    max: MAX_RESPONSE,
                });
            }
            r = self.raw(&Command::new(0x00, tenet::INS_GET_RESPONSE, 0, 0).with_le(256))?;
            rounds += 1;
            data.extend_from_slice(&r.data);
        }
        if data.len() > MAX_RESPONSE {
            return Err(SessionError::EndlessResponse {
                rounds,
                bytes: data.len(),
                max: MAX_RESPONSE,
            });
        }
        r.data = data;
        Ok(r)
    }

    /// The longest message one DELIVER command carries without chaining
    /// (the compact form's header is shorter, so this errs on the safe
    /// side).
    pub fn one_command(&self) -> usize {
        if self.short { 255 } else { 65_535 }
    }

    fn le(&self) -> usize {
        if self.short { 256 } else { 65_536 }
    }

    /// Selects the TENeT applet and reads the card's info. The first card
    /// selected is the session's card; later, another one is refused with
    /// [`SessionError::OtherCard`] (and nothing more is sent to it).
    ///
    /// It selects the applet's version 2 (the compact form on the link)
    /// and, on a card without it (`6A 82`), version 1 (whole messages).
    pub fn select(&mut self) -> Result<CardInfo, SessionError> {
        self.time_told = None;
        self.compact = None;
        let select = |aid: [u8; 7]| {
            Command::new(0x00, tenet::INS_SELECT, 0x04, 0x00).with_data(aid.to_vec())
        };
        let mut r = self.exchange(select(tenet::AID_COMPACT))?;
        let compact = r.sw == StatusWord::OK;
        if r.sw == StatusWord::NOT_FOUND {
            r = self.exchange(select(tenet::AID))?;
        }
        if r.sw != StatusWord::OK {
            return Err(SessionError::Status(r.sw));
        }
        let le = self.le();
        let r = self.exchange(Command::new(tenet::CLA, tenet::INS_GET_INFO, 0, 0).with_le(le))?;
        if r.sw != StatusWord::OK {
            return Err(SessionError::Status(r.sw));
        }
        let info = CardInfo::decode(&r.data).map_err(|e| SessionError::Malformed(e.to_string()))?;
        match &self.first {
            Some(first) => {
                if let Err(e) = OtherCard::check(first, &info) {
                    self.link.release();
                    return Err(e.into());
                }
            }
            None => self.first = Some(info.clone()),
        }
        self.compact = compact.then(|| info.domain.owner());
        Ok(info)
    }

    /// Whether the card took the compact form at the last SELECT.
    pub fn compact(&self) -> bool {
        self.compact.is_some()
    }

    /// Asks the card for a new port.
    pub fn assign_port(&mut self) -> Result<Port, SessionError> {
        let r = self.exchange(Command::new(tenet::CLA, tenet::INS_ASSIGN_PORT, 0, 0).with_le(4))?;
        if r.sw != StatusWord::OK {
            return Err(SessionError::Status(r.sw));
        }
        let b: [u8; 4] = r
            .data
            .try_into()
            .map_err(|d: Vec<u8>| SessionError::Malformed(format!("port of {} bytes", d.len())))?;
        Ok(Port::new(u32::from_be_bytes(b)))
    }

    /// Delivers one message (one DELIVER APDU, chained on short links) and
    /// returns what the card sends back: the message in the response, then
    /// one per POLL while the status word says more wait.
    pub fn deliver(&mut self, m: &Message) -> Result<Vec<Message>, SessionError> {
        let le = self.le();
        let data = match self.compact {
            // The compact form implies the card as the destination.
            Some(card) if m.dst() != card => return Err(SessionError::NotForCard(m.dst())),
            Some(_) => compact::to_card(m),
            None => m.to_bytes(),
        };
        let r = self.exchange(
            Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
                .with_data(data)
                .with_le(le),
        )?;
        self.collect(r)
    }

    /// Gives the card `card` the host's time (`set-time` as the card's own
    /// id: the card's only clock, `tenet_card::clock`) unless it had it
    /// since its last SELECT, less than `period` ago. Returns what the card
    /// sent back: nothing, or a `refused` to its own id if it refused the
    /// time.
    pub fn tell_time_if_due(
        &mut self,
        card: EntityId,
        period: Duration,
    ) -> Result<Vec<Message>, SessionError> {
        if self.time_told.is_some_and(|t| t.elapsed() < period) {
            return Ok(Vec::new());
        }
        // The real time since the last one, by the monotonic clock: what
        // the card credits towards moving its clock's bound.
        let elapsed = self.time_told.map(|t| t.elapsed().as_secs());
        self.time_told = Some(Instant::now());
        let now = tenet_proto::time::unix_now();
        self.deliver(&Message::new(
            card,
            card,
            Mtype::SET_TIME,
            SetTime { now, elapsed }.to_bytes(),
        ))
    }

    /// How long until [`CardSession::tell_time_if_due`] tells the time
    /// again (zero when due).
    pub fn time_due_in(&self, period: Duration) -> Duration {
        self.time_told
            .map_or(Duration::ZERO, |t| period.saturating_sub(t.elapsed()))
    }

    /// Fetches waiting messages with POLL.
    pub fn poll(&mut self) -> Result<Vec<Message>, SessionError> {
        let le = self.le();
        let r = self.exchange(Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(le))?;
        self.collect(r)
    }

    fn collect(&mut self, mut r: Response) -> Result<Vec<Message>, SessionError> {
        let mut out = Vec::new();
        loop {
            let Some(waiting) = r.sw.waiting() else {
                return Err(SessionError::Status(r.sw));
            };
            if !r.data.is_empty() {
                let m = match self.compact {
                    Some(card) => compact::decode_from_card(card, &r.data),
                    None => Message::decode(&r.data),
                };
                out.push(m.map_err(|e| SessionError::Malformed(e.to_string()))?);
            }
            if waiting == 0 {
                return Ok(out);
            }
            let le = self.le();
            r = self.exchange(Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(le))?;
        }
    }
}

#[cfg(feature = "pcsc")]
pub use self::pcsc_link::PcscLink;

#[cfg(feature = "pcsc")]
mod pcsc_link {
    use std::ffi::CString;

    use pcsc::{Context, Disposition, Protocols, Scope, ShareMode};

    use super::{CardLink, LinkError};

    /// A card in a PC/SC reader, chosen by reader name, held exclusively
    /// (`SCARD_SHARE_EXCLUSIVE`) on every connection: while the daemon is
    /// connected, pcscd refuses every other client's connection to the
    /// reader with a sharing violation, so nobody else can select the card,
    /// send it messages, poll its answers or reset it.
    pub struct PcscLink {
        ctx: Context,
        reader: CString,
        card: Option<pcsc::Card>,
        extended: bool,
        buf: Vec<u8>,
    }

    fn map(e: pcsc::Error) -> LinkError {
        use pcsc::Error as E;
        match e {
            E::ResetCard => LinkError::Reset,
            E::SharingViolation => LinkError::InUse,
            E::RemovedCard
            | E::NoSmartcard
            | E::UnpoweredCard
            | E::UnresponsiveCard
            | E::ReaderUnavailable
            | E::UnknownReader
            | E::NotTransacted
            | E::NoReadersAvailable => LinkError::Removed(e.to_string()),
            other => LinkError::Other(other.to_string()),
        }
    }

    impl PcscLink {
        /// Connects exclusively to the card in reader `name`. `extended`
        /// says whether the reader passes extended-length APDUs. A reader
        /// another PC/SC client is connected to fails with
        /// [`LinkError::InUse`].
        pub fn connect(name: &str, extended: bool) -> Result<Self, LinkError> {
            let ctx = Context::establish(Scope::User)
                .map_err(|e| LinkError::Other(format!("PC/SC service (pcscd): {e}")))?;
            let reader = CString::new(name)
                .map_err(|_| LinkError::Other("reader name contains NUL".into()))?;
            let mut l = Self {
                ctx,
                reader,
                card: None,
                extended,
                buf: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED],
            };
            l.reconnect()?;
            Ok(l)
        }

        /// Whether pcscd sees a card in reader `name`.
        pub fn card_present(name: &str) -> Result<bool, LinkError> {
            let ctx = Context::establish(Scope::User).map_err(map)?;
            let name = CString::new(name)
                .map_err(|_| LinkError::Other("reader name contains NUL".into()))?;
            let mut states = [pcsc::ReaderState::new(name, pcsc::State::UNAWARE)];
            ctx.get_status_change(std::time::Duration::from_millis(100), &mut states)
                .map_err(map)?;
            Ok(states[0].event_state().contains(pcsc::State::PRESENT))
        }

        /// Names of the readers pcscd knows.
        pub fn readers() -> Result<Vec<String>, LinkError> {
            let ctx = Context::establish(Scope::User).map_err(map)?;
            let names = ctx.list_readers_owned().map_err(map)?;
            Ok(names
                .into_iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect())
        }
    }

    impl CardLink for PcscLink {
        fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
            let card = self
                .card
                .as_ref()
                .ok_or_else(|| LinkError::Removed("not connected".into()))?;
            match card.transmit(command, &mut self.buf) {
                Ok(r) => Ok(r.to_vec()),
                Err(e) => {
                    let e = map(e);
                    if matches!(e, LinkError::Removed(_)) {
                        self.card = None;
                    }
                    Err(e)
                }
            }
        }

        fn reconnect(&mut self) -> Result<(), LinkError> {
            // Exclusive again: a reconnection must not open the reader to
            // other clients.
            if let Some(card) = self.card.as_mut()
                && card
                    .reconnect(ShareMode::Exclusive, Protocols::ANY, Disposition::ResetCard)
                    .is_ok()
            {
                return Ok(());
            }
            self.card = None;
            let card = self
                .ctx
                .connect(&self.reader, ShareMode::Exclusive, Protocols::ANY)
                .map_err(map)?;
            self.card = Some(card);
            Ok(())
        }

        fn release(&mut self) {
            self.card = None;
        }

        fn extended(&self) -> bool {
            self.extended
        }

        fn describe(&self) -> String {
            format!("PC/SC reader {:?}", self.reader.to_string_lossy())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_card::{CardLimits, MemStore, Personalization, SeededEntropy};
    use tenet_proto::{Domain, EntityId, Mtype};

    struct MemLink(Card<MemStore>, bool);

    impl CardLink for MemLink {
        fn transmit(&mut self, c: &[u8]) -> Result<Vec<u8>, LinkError> {
            Ok(self.0.process_apdu(c))
        }
        fn reconnect(&mut self) -> Result<(), LinkError> {
            self.0.reset();
            Ok(())
        }
        fn extended(&self) -> bool {
            self.1
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn card(domain: u8, seed: u64) -> Card<MemStore> {
        let p = Personalization {
            domain: Domain::new([domain; 12]),
            pin: b"1234".to_vec(),
            puk: b"12345678".to_vec(),
        };
        Card::personalize(
            MemStore::new(8192),
            &p,
            CardLimits::default(),
            Box::new(SeededEntropy::new(seed)),
        )
        .unwrap()
    }

    fn session(extended: bool) -> CardSession {
        CardSession::new(Box::new(MemLink(card(1, 3), extended)), false)
    }

    /// A reader whose card the test swaps.
    struct Slot(std::sync::Arc<std::sync::Mutex<Card<MemStore>>>);

    impl CardLink for Slot {
        fn transmit(&mut self, c: &[u8]) -> Result<Vec<u8>, LinkError> {
            Ok(self.0.lock().unwrap().process_apdu(c))
        }
        fn reconnect(&mut self) -> Result<(), LinkError> {
            self.0.lock().unwrap().reset();
            Ok(())
        }
        fn extended(&self) -> bool {
            true
        }
        fn describe(&self) -> String {
            "swappable".into()
        }
    }

    #[test]
    fn a_reconnection_takes_only_the_card_first_selected() {
        let uncertified = card(1, 3);
        // The same card (same key) before its certificate was installed.
        let reopen = |c: &Card<MemStore>| {
            Card::open(
                c.store().clone(),
                CardLimits::default(),
                Box::new(SeededEntropy::new(5)),
            )
            .unwrap()
        };
        let mut first = reopen(&uncertified);
        first
            .install_certificates(vec![0x30, 1], vec![0x30, 2])
            .unwrap();
        let certified = reopen(&first);
        let slot = std::sync::Arc::new(std::sync::Mutex::new(first));
        let mut s = CardSession::new(Box::new(Slot(slot.clone())), false);
        let info = s.select().unwrap();
        let mut put = |c: Card<MemStore>| {
            *slot.lock().unwrap() = c;
            s.reconnect().map(|_| ())
        };
        let other_domain = put(card(2, 3)).unwrap_err();
        assert_eq!(
            other_domain,
            SessionError::OtherCard(OtherCard::Domain {
                expected: info.domain,
                found: Domain::new([2; 12])
            })
        );
        let other_key = put(card(1, 4)).unwrap_err();
        assert_eq!(
            other_key,
            SessionError::OtherCard(OtherCard::PublicKey(info.domain))
        );
        // The same key without the certificate it showed is not taken
        // either.
        let no_cert = put(uncertified).unwrap_err();
        assert_eq!(no_cert, SessionError::OtherCard(OtherCard::Certificate));
        put(certified).expect("the first card is taken back");
    }

    #[test]
    fn one_apdu_per_message_when_the_card_answers_with_at_most_one() {
        let mut s = session(true);
        let info = s.select().unwrap();
        let card = info.domain.owner();
        let before = s.stats().snapshot().0;
        let app = EntityId::new(info.domain, Port::new(1));
        let out = s
            .deliver(&Message::new(app, card, Mtype::ECHO_REQUEST, vec![9; 1000]))
            .unwrap();
        assert_eq!(
            out,
            vec![Message::new(card, app, Mtype::ECHO_REPLY, vec![9; 1000])]
        );
        assert_eq!(s.stats().snapshot().0 - before, 1, "exactly one APDU");
    }

    #[test]
    fn short_links_chain_and_get_response() {
        let mut s = session(false);
        let info = s.select().unwrap();
        let card = info.domain.owner();
        let app = EntityId::new(info.domain, Port::new(1));
        let before = s.stats().snapshot().0;
        let out = s
            .deliver(&Message::new(app, card, Mtype::ECHO_REQUEST, vec![9; 1000]))
            .unwrap();
        assert_eq!(out[0].param, vec![9; 1000]);
        let apdus = s.stats().snapshot().0 - before;
        // 1007 bytes in the compact form (7 bytes of header from the card's
        // own domain): 4 chained commands; the 1007-byte answer: 3 GET
        // RESPONSEs after the first 256.
        assert_eq!(apdus, 4 + 3, "{apdus}");
    }

    /// A card of applet version 1 only: it does not know the compact
    /// form's AID.
    struct VersionOne(Card<MemStore>);

    impl CardLink for VersionOne {
        fn transmit(&mut self, c: &[u8]) -> Result<Vec<u8>, LinkError> {
            let v2 = Command::new(0x00, tenet::INS_SELECT, 0x04, 0x00)
                .with_data(tenet::AID_COMPACT.to_vec())
                .to_bytes();
            if c == v2 {
                return Ok(Response::status(StatusWord::NOT_FOUND).to_bytes());
            }
            Ok(self.0.process_apdu(c))
        }
        fn reconnect(&mut self) -> Result<(), LinkError> {
            self.0.reset();
            Ok(())
        }
        fn extended(&self) -> bool {
            true
        }
        fn describe(&self) -> String {
            "version 1".into()
        }
    }

    /// The compact form leaves out the card's own id, and the other id's
    /// domain and port where they are the card's and 0; a card without
    /// it gets whole messages, with the same answers.
    #[test]
    fn the_compact_form_drops_what_the_link_knows_and_version_1_cards_get_whole_messages() {
        let mut sessions = [
            session(true),
            CardSession::new(Box::new(VersionOne(card(1, 3))), false),
        ];
        let mut sent = Vec::new();
        for s in &mut sessions {
            let info = s.select().unwrap();
            let card = info.domain.owner();
            let (app, peer) = (
                EntityId::new(info.domain, Port::new(1)),
                Domain::new([0xee; 12]).owner(),
            );
            let before = s.stats().snapshot();
            for from in [app, peer] {
                let out = s
                    .deliver(&Message::new(from, card, Mtype::ECHO_REQUEST, vec![7; 10]))
                    .unwrap();
                assert_eq!(
                    out,
                    vec![Message::new(card, from, Mtype::ECHO_REPLY, vec![7; 10])]
                );
            }
            let after = s.stats().snapshot();
            sent.push((s.compact(), after.1 - before.1, after.2 - before.2));
            if s.compact() {
                let e = s
                    .deliver(&Message::new(app, peer, Mtype::ECHO_REQUEST, vec![]))
                    .unwrap_err();
                assert!(matches!(e, SessionError::NotForCard(d) if d == peer), "{e}");
            }
        }
        // Headers: from the wallet 7 bytes, from another card 15 (full: 34
        // each), each way.
        let saved = (34 - 7) + (34 - 15);
        assert!(sent[0].0 && !sent[1].0, "{sent:?}");
        assert_eq!(sent[1].1 - sent[0].1, saved, "{sent:?}");
        assert_eq!(sent[1].2 - sent[0].2, saved, "{sent:?}");
    }

    /// A card that never stops answering `61xx` (even with no data) is a
    /// clear error after a bounded number of rounds, not a loop.
    #[test]
    fn a_card_that_keeps_answering_61xx_is_an_error_not_a_loop() {
        struct Endless {
            sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
            data: usize,
        }
        impl CardLink for Endless {
            fn transmit(&mut self, _: &[u8]) -> Result<Vec<u8>, LinkError> {
                let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                assert!(n < 10_000, "the host is looping");
                let mut r = vec![0x55; self.data];
                r.extend_from_slice(&[0x61, 0x00]);
                Ok(r)
            }
            fn reconnect(&mut self) -> Result<(), LinkError> {
                Ok(())
            }
            fn extended(&self) -> bool {
                true
            }
            fn describe(&self) -> String {
                "endless".into()
            }
        }
        for data in [0, 256] {
            let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut s = CardSession::new(
                Box::new(Endless {
                    sent: sent.clone(),
                    data,
                }),
                false,
            );
            let e = s.select().unwrap_err();
            assert!(matches!(e, SessionError::EndlessResponse { .. }), "{e}");
            assert!(e.to_string().contains("kept answering 61xx"), "{e}");
            let n = sent.load(std::sync::atomic::Ordering::Relaxed);
            assert!(n <= MAX_RESPONSE.div_ceil(256) + 2, "{n} APDUs");
        }
    }

    #[test]
    fn ports_come_from_the_card() {
        let mut s = session(true);
        s.select().unwrap();
        let a = s.assign_port().unwrap();
        let b = s.assign_port().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, Port::OWNER);
    }
}
