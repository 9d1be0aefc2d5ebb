//! The applet runtime's interface: what an applet implements and what it
//! is given.
//!
//! An applet handles the eTP messages of the mtypes it claims. It never
//! does I/O: the runtime hands it the message, a mutable copy of its own
//! persistent data, randomness, the time, and the card's signing key, and
//! collects the messages it emits. When the handler returns `Ok`, the
//! runtime commits the applet's data and releases its messages together
//! (one atomic store update); when it returns `Err` or the commit fails,
//! neither happens.

use tenet_proto::{EntityId, Message, Mtype};

use crate::timing::Meter;

/// Randomness, injected so tests are deterministic.
pub trait Entropy: Send {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// The operating system's randomness.
#[derive(Debug, Default)]
pub struct SystemEntropy;

impl Entropy for SystemEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        getrandom::fill(buf).expect("the operating system provides randomness");
    }
}

/// A deterministic generator for tests (xorshift; not for keys in use).
#[derive(Debug, Clone)]
pub struct SeededEntropy(u64);

impl SeededEntropy {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// Why an applet refused a message; the runtime answers the sender with a
/// `refused` notice carrying the text, and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// What an applet sees while handling one message.
pub struct AppletCx<'a> {
    /// The card's id.
    pub card: EntityId,
    /// Whether the sender is in the authenticated-ID set.
    pub sender_authenticated: bool,
    /// The applet's persistent data (a copy; committed on `Ok`).
    pub data: &'a mut Vec<u8>,
    /// Randomness.
    pub entropy: &'a mut dyn Entropy,
    /// The card's time ([`crate::clock`]): the host's, never below the
    /// card's persisted bound.
    pub time: crate::clock::CardTime,
    /// The card's CV certificate (`tenet_pki::cv`), once issued.
    pub certificate: Option<&'a [u8]>,
    /// The CA anchor the card trusts (`tenet_pki::cv::Anchor`), once
    /// installed.
    pub ca_certificate: Option<&'a [u8]>,
    pub(crate) out: &'a mut Vec<Message>,
    pub(crate) signer: &'a dyn Fn(&[u8]) -> Vec<u8>,
    pub(crate) meter: Option<&'a Meter>,
    pub(crate) durability: Durability,
}

/// How a step's data reaches the card's store before the card answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Changed data is on the medium before the card answers (fsync);
    /// unchanged data leaves the store as it is.
    #[default]
    Synced,
    /// Changed data is written but not waited for: a power cut right after
    /// may lose this step (never an earlier synced one, never half of it).
    /// The card's next synced commit makes it durable too. Only for a step
    /// whose loss the applet's protocol recovers from, whatever the card
    /// sent.
    Unsynced,
    /// Everything committed so far, unsynced steps included, is on the
    /// medium before the card answers: for an answer that reports state an
    /// unsynced step made (a log an app records).
    SyncFirst,
}

impl AppletCx<'_> {
    /// How this step's data reaches the store ([`Durability`]; synced
    /// unless the applet says otherwise).
    pub fn set_durability(&mut self, d: Durability) {
        self.durability = d;
    }

    /// Emits a message from the card.
    pub fn send(&mut self, dst: EntityId, mtype: Mtype, param: Vec<u8>) {
        self.out.push(Message::new(self.card, dst, mtype, param));
    }

    /// Signs `msg` with the card's key (ECDSA P-256, SHA-256, ASN.1 DER).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        (self.signer)(msg)
    }

    /// Whether the card counts operations for a timing model
    /// ([`crate::timing`]).
    pub fn metered(&self) -> bool {
        self.meter.is_some()
    }

    /// Tells the card's timing model about one signature verification the
    /// applet made over `hashed` bytes (the runtime cannot see those: the
    /// applet verifies with the certificates it is given). Does nothing
    /// unless the card is metered.
    pub fn count_verify(&self, hashed: usize) {
        if let Some(m) = self.meter {
            m.verify(hashed);
        }
    }

    /// Tells the card's timing model about SHA-256 blocks the applet hashed
    /// itself, outside signing and verification. Does nothing unless the
    /// card is metered.
    pub fn count_hash_blocks(&self, blocks: u64) {
        if let Some(m) = self.meter {
            m.hash_blocks(blocks);
        }
    }
}

/// An applet on the card.
pub trait Applet: Send {
    /// Its id, which keys its persistent data.
    fn id(&self) -> u16;
    /// A short name for refusals and logs.
    fn name(&self) -> &'static str;
    /// True for the mtypes it handles.
    fn handles(&self, mtype: Mtype) -> bool;
    /// The mtypes it accepts only from authenticated senders.
    fn privileged(&self) -> &[Mtype];
    /// Handles one message addressed to the card.
    fn handle(&mut self, cx: &mut AppletCx<'_>, m: &Message) -> Result<(), Refusal>;
    /// The card took a time from its host (`set-time`, every `[card]
    /// clock_secs`): `cx.time` is the new time. The applet may act on its
    /// own, e.g. ask again for what it waits for too long; its data and
    /// messages are committed as for [`Applet::handle`]. A refusal is only
    /// logged (there is no sender to tell). Default: nothing.
    fn on_time(&mut self, cx: &mut AppletCx<'_>) -> Result<(), Refusal> {
        let _ = cx;
        Ok(())
    }
}
