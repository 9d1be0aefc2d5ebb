//! The smartcard proxy (paper 4.3.4): moves messages between the dispatch
//! table and the host's card.
//!
//! It drives the card link from a thread of its own (PC/SC calls block).
//! The card's id `DOMAIN:0` is bound to the proxy's endpoint; when messages
//! for it are stored, the daemon wakes the proxy, which takes them one at a
//! time, delivers each with one DELIVER APDU, and stores what the card
//! answers (ingress path `card`). It also assigns ports for apps acquiring
//! ids (ASSIGN PORT) and gives the card its time.
//!
//! The in-process virtual card waits on nothing outside the daemon, so the
//! task that stores a message for it delivers that message itself (`drive`)
//! when the card's queue held nothing else, the card is free and has been
//! quick (its deliveries took under 500 us on average: not a store on a
//! slow disk), its time is not due, and the message fits one command and
//! is not a PIN or PUK check: no hand-off to the thread and back, whose two
//! wake-ups per message were most of a local exchange's time. The card's
//! applets and its store's writes then run on that task; one task at a
//! time drives the card, the others leave their messages to the thread. A
//! card in a reader is driven by the thread alone.
//!
//! The card is the daemon's alone: a PC/SC reader is held exclusively on
//! every connection (`PcscLink`), so no other local PC/SC client can select
//! the card, deliver to it under a guessed authenticated `src`, assign
//! ports or poll away its outgoing messages.
//!
//! The card's clock: the proxy gives the card the host's time (`set-time`,
//! as the card's own id) when it attaches the card, before anything else,
//! after every reconnection or reset (before the next delivery), and every
//! `[card] clock_secs` after (10 s by default). Each time is also the tick
//! on which the card's applets act by themselves (a voucher card asks the
//! TTP about an exchange stuck too long); what the card sends then is
//! stored like any of its messages. A time the card refuses (far below the bound it
//! keeps, `tenet_card::clock`) is logged as a warning.
//!
//! A missing card: when the link reports the card gone, the message being
//! delivered is returned to its sender as *destination gone* (the card may
//! or may not have seen it, so it is never sent twice), the proxy retries
//! the connection every 500 ms, and other messages wait in the table under
//! its usual bounds and time to live. A card that comes back is reset and
//! re-selected, so its authenticated set is empty. It must be the card the
//! daemon started with: same domain, same public key, same certificate
//! (`CardSession` compares them with its first GET INFO). Any other card
//! is refused, logged once with the reason, and sent nothing; the messages
//! waiting for the card (a `verify-pin` with its PIN, say) stay in the
//! table until the right card is back. A reset the proxy did not ask for
//! (pcscd's) is handled the same way, and the command it interrupted (not
//! executed by the card) is sent again, only to the same card.

use std::sync::Arc;
use std::sync::TryLockError;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tenet_dispatch::{EndpointId, Ingress};
use tenet_proto::notice::{Refused, UndeliverableReason};
use tenet_proto::{Codec, EntityId, Message, Mtype, Port};
use tracing::{debug, error, info, warn};

use crate::link::{CardSession, LinkError, SessionError};
use crate::server::{CardAttach, Shared, lock};

/// Requests to the proxy thread.
pub(crate) enum ProxyCmd {
    /// Messages for the card wait in the table.
    Wake,
    /// Assign a port for an app acquiring its id.
    AssignPort(tokio::sync::oneshot::Sender<Result<Port, NoPort>>),
    /// Stop the thread.
    Stop,
}

/// Why the card assigned no port to an app acquiring its id.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoPort {
    /// The card is not connected (the proxy keeps retrying).
    #[error("card not present")]
    Absent,
    /// The card link failed while asking.
    #[error("card not available: {0}")]
    Unavailable(LinkError),
    /// The card refused, or answered something else than a port.
    #[error("{0}")]
    Refused(SessionError),
}

const RETRY: Duration = Duration::from_millis(500);
/// Messages delivered before the proxy looks at its requests again: an app
/// acquiring an id waits behind at most this many, however long the card's
/// queue stays full (a flood keeps it so).
const BATCH: usize = 8;
/// The most a delivery to the in-process card may take, on average, for
/// tasks to deliver to it themselves (`drive`): above it (a store on a
/// slow disk, whose fsync takes milliseconds) the thread delivers, so that
/// no tokio worker waits that long. Tokio asks for well under a
/// millisecond between awaits.
const INLINE_MOST: Duration = Duration::from_micros(500);

/// The proxy thread: gives the card its time, delivers what waits for it
/// when woken, reconnects a missing card, assigns ports. Ends on
/// [`ProxyCmd::Stop`] or when the host drops its sender.
pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<ProxyCmd>) {
    let Some(card) = shared.card.as_ref() else {
        return;
    };
    // The card's time first, before anything is delivered to it: until
    // then `connected` is false, so no task delivers inline.
    if let Some(link) = lock(&card.session).as_mut() {
        link.connected = tell_time(&shared, link);
    }
    loop {
        let Some((connected, more, due)) = lock(&card.session)
            .as_ref()
            .map(|l| (l.connected, l.more, l.session.time_due_in(l.clock)))
        else {
            return;
        };
        let cmd = if connected && more {
            // Messages still wait: look at the requests, then go on.
            rx.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else if connected {
            // Wakes for the next tick of the card's clock (drain tells it).
            rx.recv_timeout(due)
        } else {
            rx.recv_timeout(RETRY)
        };
        let cmd = match cmd {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => ProxyCmd::Wake,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut guard = lock(&card.session);
        let Some(link) = guard.as_mut() else {
            return;
        };
        if !link.connected {
            link.connected = link.reconnect();
        }
        match cmd {
            ProxyCmd::Stop => return,
            ProxyCmd::AssignPort(reply) => {
                let r = if link.connected {
                    match link.session.assign_port() {
                        Ok(p) => Ok(p),
                        Err(SessionError::Link(e)) => {
                            link.connected = link.handle_link_error(&e);
                            Err(NoPort::Unavailable(e))
                        }
                        Err(e) => Err(NoPort::Refused(e)),
                    }
                } else {
                    Err(NoPort::Absent)
                };
                let _ = reply.send(r);
            }
            ProxyCmd::Wake => {}
        }
        if link.connected {
            link.connected = drain(&shared, link, card.ep, Drain::Thread);
        }
    }
}

/// Delivers the message waiting for the card on the calling task, when
/// the card's link waits on nothing outside the daemon (the in-process
/// virtual card: its applets and its store's writes run here), no one else
/// drives the card now, and the card's deliveries have been quick
/// ([`INLINE_MOST`]). Saves the hand-off to the proxy thread and back, two
/// thread wake-ups per message. Returns whether all was done: `false`
/// leaves the rest to the proxy thread, which the caller must wake (the
/// card is busy, missing, slow, on a reader, its time is due, or another
/// message waits, or this one is not for [`inline_fits`]).
pub(crate) fn drive(shared: &Shared, card: &CardAttach) -> bool {
    if !card.inline {
        return false;
    }
    let mut guard = match card.session.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        // Someone else drives the card: the caller wakes the thread, which
        // delivers what this caller stored once the session is free.
        Err(TryLockError::WouldBlock) => return false,
    };
    let Some(link) = guard.as_mut() else {
        // The host stopped.
        return true;
    };
    if !link.connected || link.slow >= INLINE_MOST {
        return false;
    }
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drain(shared, link, card.ep, Drain::Inline)
    }));
    match done {
        Ok(connected) => {
            link.connected = connected;
            connected && !link.more
        }
        Err(_) => {
            // A bug in the card or an applet: the task that stored the
            // message goes on; the thread resets the card and selects it
            // again, as after a reset it did not ask for.
            error!(card = %link.card, "the card panicked while a task delivered a message; it is reset");
            link.connected = false;
            false
        }
    }
}

/// Whether a task may deliver `m` itself (`drive`): not if it needs
/// chained commands (`one_command` is the most one command carries), nor
/// if it asks for the card's PIN or PUK to be checked or changed: those run
/// Argon2 on purpose slowly, tens of milliseconds no worker should wait.
fn inline_fits(m: &Message, one_command: usize) -> bool {
    m.encoded_len() <= one_command
        && !matches!(
            m.mtype(),
            Mtype::VERIFY_PIN | Mtype::UNBLOCK_PIN | Mtype::CHANGE_PIN
        )
}

/// Who delivers, and so how much.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// The proxy thread: up to [`BATCH`] messages.
    Thread,
    /// A task that stored a message for the card: one message, and only if
    /// [`inline_fits`] (over short APDUs a large message takes hundreds of
    /// chained commands: that is the thread's work, not a worker's).
    Inline,
}

/// The session with the card, and why the last reconnection failed.
pub(crate) struct Attached {
    session: CardSession,
    card: EntityId,
    /// How often the card is given the time (`[card] clock_secs`).
    clock: Duration,
    /// Why the last reconnection failed, so that a refusal is logged once
    /// until it changes (the proxy retries every 500 ms).
    failed: Option<SessionError>,
    /// The last drain stopped with messages still waiting (a full batch,
    /// or a message a task left to the thread).
    more: bool,
    /// The card is selected (and `drain` tells it the time before any
    /// message): messages may be delivered.
    connected: bool,
    /// The time a delivery to the card took, averaged over the last few
    /// (`drive` leaves a slow card to the thread).
    slow: Duration,
}

impl Attached {
    /// A session not yet told the time: the proxy thread tells it first.
    pub(crate) fn new(session: CardSession, card: EntityId, clock: Duration) -> Self {
        Self {
            session,
            card,
            clock,
            failed: None,
            more: false,
            connected: false,
            slow: Duration::ZERO,
        }
    }

    /// Reconnects (the card is reset) and checks it is the daemon's card.
    /// Returns whether the card is usable.
    fn reconnect(&mut self) -> bool {
        let card = self.card;
        let why = match self.session.reconnect() {
            Ok(_) => {
                self.failed = None;
                info!(%card, link = self.session.describe(), "card is back (reset: authenticated set cleared)");
                return true;
            }
            Err(e) => e,
        };
        let first = self.failed.as_ref() != Some(&why);
        match &why {
            SessionError::OtherCard(reason) if first => {
                warn!(expected = %card, %reason, "card refused: another card is in the reader; nothing is sent to it, messages for the card wait");
            }
            SessionError::Link(LinkError::InUse) if first => {
                warn!(%card, link = self.session.describe(), error = %why, "card not reachable; messages for the card wait");
            }
            _ => debug!(%card, error = %why, "card not back yet"),
        }
        self.failed = Some(why);
        false
    }

    /// After a link error: reconnects at once for a reset, else reports the
    /// card missing. Returns whether the card is usable.
    fn handle_link_error(&mut self, e: &LinkError) -> bool {
        match e {
            LinkError::Reset => self.reconnect(),
            _ => {
                warn!(card = %self.card, error = %e, "card link lost; messages for the card wait in the table");
                false
            }
        }
    }
}

/// Delivers what waits for the card, as much as `who` delivers (then
/// `link.more` is set if messages still wait). Returns whether the card is
/// still connected.
fn drain(shared: &Shared, link: &mut Attached, ep: EndpointId, who: Drain) -> bool {
    let card = link.card;
    link.more = false;
    let batch = match who {
        Drain::Thread => BATCH,
        Drain::Inline => 1,
    };
    for _ in 0..batch {
        if who == Drain::Inline && link.session.time_due_in(link.clock).is_zero() {
            // The card's tick runs its applets' own work (recovery
            // requests, signed and stored): the thread's, not a worker's.
            link.more = true;
            return true;
        }
        // After a reconnection or reset, and every `clock_secs`: the time
        // first.
        if !tell_time(shared, link) {
            return false;
        }
        let d = {
            let mut core = lock(&shared.table);
            match core.table().peek(ep) {
                None => return true,
                Some(m) if who == Drain::Inline && !inline_fits(m, link.session.one_command()) => {
                    link.more = true;
                    return true;
                }
                Some(_) => core.take(ep),
            }
        };
        let Some(d) = d else {
            return true;
        };
        let m = d.message;
        let t = Instant::now();
        let mut result = link.session.deliver(&m);
        if inline_fits(&m, link.session.one_command()) {
            // An average over about the last eight deliveries a task could
            // have made.
            link.slow = (link.slow * 7 + t.elapsed()) / 8;
        }
        if who == Drain::Inline {
            link.session.count_inline();
        }
        if let Err(SessionError::Link(LinkError::Reset)) = result {
            // The command was not executed; the card was reset by someone
            // else. Select again (the same card only) and send it once more.
            // The reset card gets the time before the message, as after any
            // reconnection.
            if !link.reconnect() || !tell_time(shared, link) {
                undeliverable(shared, &m);
                return false;
            }
            result = link.session.deliver(&m);
        }
        match result {
            Ok(out) => store_from_card(shared, card, out),
            Err(SessionError::Link(e)) => {
                undeliverable(shared, &m);
                // Messages behind this one wait: whoever drives next looks.
                link.more = true;
                return link.handle_link_error(&e);
            }
            Err(e) => {
                warn!(%card, src = %m.src(), mtype = %m.mtype(), error = %e, "card did not take a message");
                let refusal = Message::new(
                    card,
                    m.src(),
                    Mtype::REFUSED,
                    Refused {
                        mtype: m.mtype(),
                        text: format!("the card refused the message: {e}"),
                    }
                    .to_bytes(),
                );
                store_from_card(shared, card, vec![refusal]);
            }
        }
    }
    link.more = lock(&shared.table).table().peek(ep).is_some();
    true
}

/// Gives the card the host's time if due (`[card] clock_secs`, or since the
/// card was selected again). Returns whether the card is still connected.
fn tell_time(shared: &Shared, link: &mut Attached) -> bool {
    let card = link.card;
    match link.session.tell_time_if_due(card, link.clock) {
        Ok(out) => {
            let (refusals, rest): (Vec<_>, Vec<_>) = out.into_iter().partition(|m| m.dst() == card);
            for m in refusals {
                let text = Refused::decode(&m.param).map_or_else(|e| e.to_string(), |r| r.text);
                warn!(%card, %text, "the card refused the host's time; check the host's clock");
            }
            store_from_card(shared, card, rest);
            true
        }
        Err(SessionError::Link(e)) => link.handle_link_error(&e),
        Err(e) => {
            warn!(%card, error = %e, "the card did not take the host's time");
            true
        }
    }
}

fn undeliverable(shared: &Shared, m: &Message) {
    shared.with_core(|t| t.undeliverable(m, UndeliverableReason::DESTINATION_GONE, Instant::now()));
}

fn store_from_card(shared: &Shared, card: EntityId, out: Vec<Message>) {
    shared.with_core(|t| {
        for m in out {
            if m.src() != card {
                warn!(%card, claimed = %m.src(), "message from the card with another src dropped");
                continue;
            }
            if let Err(e) = t.store(Ingress::Card, m, Instant::now()) {
                warn!(%card, error = %e, "message from the card not stored");
            }
        }
    });
}
