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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tenet_card::{Card, FileStore};
use tenet_proto::apdu::{Command, Response, SHORT_LC_MAX, StatusWord, tenet};
use tenet_proto::card::{CardInfo, SetTime};
use tenet_proto::{Codec, EntityId, Message, Mtype, Port};

/// Why a link failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// No card (removed, never inserted, unpowered or not answering).
    #[error("no card: {0}")]
    Removed(String),
    /// The card was reset by someone else; the command was not sent.
    #[error("the card was reset")]
    Reset,
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
    /// Whether extended-length APDUs pass.
    fn extended(&self) -> bool;
    /// For logs: what the link is.
    fn describe(&self) -> String;
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
}

/// The TENeT APDU mapping over a link.
pub struct CardSession {
    link: Box<dyn CardLink>,
    short: bool,
    stats: std::sync::Arc<LinkStats>,
    /// When the card was last given the time; `None` since the last
    /// SELECT (a reset or power-up makes the card forget it).
    time_told: Option<Instant>,
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
            time_told: None,
        }
    }

    /// The counters (shared; they keep counting).
    pub fn stats(&self) -> std::sync::Arc<LinkStats> {
        self.stats.clone()
    }

    /// What the link is.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} APDUs)",
            self.link.describe(),
            if self.short { "short" } else { "extended" }
        )
    }

    /// Reconnects the link (resetting the card) and selects the applet.
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
        while r.sw.sw1() == 0x61 {
            r = self.raw(&Command::new(0x00, tenet::INS_GET_RESPONSE, 0, 0).with_le(256))?;
            data.extend_from_slice(&r.data);
        }
        r.data = data;
        Ok(r)
    }

    fn le(&self) -> usize {
        if self.short { 256 } else { 65_536 }
    }

    /// Selects the TENeT applet and reads the card's info.
    pub fn select(&mut self) -> Result<CardInfo, SessionError> {
        self.time_told = None;
        let r = self.exchange(
            Command::new(0x00, tenet::INS_SELECT, 0x04, 0x00).with_data(tenet::AID.to_vec()),
        )?;
        if r.sw != StatusWord::OK {
            return Err(SessionError::Status(r.sw));
        }
        let le = self.le();
        let r = self.exchange(Command::new(tenet::CLA, tenet::INS_GET_INFO, 0, 0).with_le(le))?;
        if r.sw != StatusWord::OK {
            return Err(SessionError::Status(r.sw));
        }
        CardInfo::decode(&r.data).map_err(|e| SessionError::Malformed(e.to_string()))
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
        let r = self.exchange(
            Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
                .with_data(m.to_bytes())
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
        self.time_told = Some(Instant::now());
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.deliver(&Message::new(
            card,
            card,
            Mtype::SET_TIME,
            SetTime { now }.to_bytes(),
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
                out.push(
                    Message::decode(&r.data).map_err(|e| SessionError::Malformed(e.to_string()))?,
                );
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

    /// A card in a PC/SC reader, chosen by reader name.
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
        /// Connects to the card in reader `name`. `extended` says whether
        /// the reader passes extended-length APDUs.
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
            if let Some(card) = self.card.as_mut()
                && card
                    .reconnect(ShareMode::Shared, Protocols::ANY, Disposition::ResetCard)
                    .is_ok()
            {
                return Ok(());
            }
            self.card = None;
            let card = self
                .ctx
                .connect(&self.reader, ShareMode::Shared, Protocols::ANY)
                .map_err(map)?;
            self.card = Some(card);
            Ok(())
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

    fn session(extended: bool) -> CardSession {
        let p = Personalization {
            domain: Domain::new([1; 12]),
            pin: b"1234".to_vec(),
            puk: b"12345678".to_vec(),
        };
        let card = Card::personalize(
            MemStore::new(8192),
            &p,
            CardLimits::default(),
            Box::new(SeededEntropy::new(3)),
        )
        .unwrap();
        CardSession::new(Box::new(MemLink(card, extended)), false)
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
        // 1034 bytes: 5 chained commands; 1034-byte answer: 4 GET RESPONSEs after the first 256.
        assert_eq!(apdus, 5 + 4, "{apdus}");
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
