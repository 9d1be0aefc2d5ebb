//! PIN management for an app: the card services of `docs/apdu.md`
//! (verify-pin, change-pin, unblock-pin, lock, logout) as calls that
//! return the card's `pin-status`.
//!
//! Authentication is per entity: [`CardPin::verify`] adds this app's id to
//! the card's authenticated set, and the privileged services
//! ([`CardPin::change`], [`CardPin::lock`]) need it first. What the outcome
//! means is the caller's to say (a wrong PIN is an answer, not an error);
//! errors are what kept the card from answering.
//!
//! As with the [`Wallet`](crate::wallet::Wallet), only the card speaks for
//! the card: a `pin-status` counts only from the card's id, a refusal only
//! from the card and about the service just asked for, an undeliverable
//! notice only from a host (an owner id) and about that service to the
//! card. Anything else that reaches the app meanwhile is logged and
//! dropped.

use std::time::Duration;

use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, UnblockPin, VerifyPin};
use tenet_proto::notice::{Refused, Undeliverable};
use tenet_proto::{Codec, EntityId, Mtype};
use tracing::debug;

use crate::{Capability, ClientError};

/// Why a PIN service got no `pin-status`.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The connection to the daemon failed, or the host could not deliver
    /// the request to the card.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The card refused the request (a privileged service from an app that
    /// has not verified the PIN, a blocked PUK, a malformed param).
    #[error("the card refused {mtype}: {text}")]
    Refused {
        /// The refused service.
        mtype: Mtype,
        /// Why.
        text: String,
    },
    /// The card did not answer in time.
    #[error("no answer from the card within {0:?}")]
    Timeout(Duration),
    /// The card's answer was malformed.
    #[error("malformed pin-status from the card: {0}")]
    Malformed(String),
}

/// A PIN status that is not the outcome asked for, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinOutcomeError {
    /// A wrong PIN.
    #[error("wrong PIN: {} left", if *.0 == 1 { "1 try".to_owned() } else { format!("{} tries", .0) })]
    Wrong(u8),
    /// The PIN is blocked.
    #[error("PIN blocked: unblock it with the PUK: tenet card pin unblock")]
    Blocked,
    /// A wrong PUK.
    #[error("wrong PUK: the PIN is unchanged")]
    WrongPuk,
    /// The app is not of the card's domain.
    #[error(
        "card {0} lets only apps of its own domain use its PIN: is this the socket of the daemon that holds it?"
    )]
    NotAllowed(EntityId),
    /// Anything else.
    #[error("unexpected answer from card {0}: {1:?}")]
    Unexpected(EntityId, PinOutcome),
}

/// `Ok` if `st` is the outcome `want`, else what it says instead.
pub fn expect(card: EntityId, st: PinStatus, want: PinOutcome) -> Result<(), PinOutcomeError> {
    match st.outcome {
        o if o == want => Ok(()),
        PinOutcome::Wrong => Err(PinOutcomeError::Wrong(st.tries_left)),
        PinOutcome::Blocked => Err(PinOutcomeError::Blocked),
        PinOutcome::WrongPuk => Err(PinOutcomeError::WrongPuk),
        PinOutcome::NotAllowed => Err(PinOutcomeError::NotAllowed(card)),
        o => Err(PinOutcomeError::Unexpected(card, o)),
    }
}

/// An app's PIN services on one card.
pub struct CardPin {
    cap: Capability,
    card: EntityId,
    wait: Duration,
}

impl CardPin {
    /// PIN services of `card` for the app `cap`.
    pub fn new(cap: Capability, card: EntityId) -> Self {
        Self {
            cap,
            card,
            wait: Duration::from_secs(10),
        }
    }

    /// This app's id.
    pub fn id(&self) -> EntityId {
        self.cap.id()
    }

    /// The card's id.
    pub fn card(&self) -> EntityId {
        self.card
    }

    /// How long to wait for each answer of the card (default 10 s).
    pub fn set_wait(&mut self, d: Duration) {
        self.wait = d;
    }

    /// The capability back, authenticated or not as the card left it.
    pub fn into_capability(self) -> Capability {
        self.cap
    }

    /// `verify-pin`: `Verified` adds this app to the card's authenticated
    /// set; `Wrong` and `Blocked` carry the tries left.
    pub async fn verify(&mut self, pin: &[u8]) -> Result<PinStatus, PinError> {
        let v = VerifyPin { pin: pin.to_vec() };
        self.ask(Mtype::VERIFY_PIN, v.to_bytes()).await
    }

    /// `change-pin` (privileged: [`verify`](Self::verify) first): `Changed`.
    pub async fn change(&mut self, new_pin: &[u8]) -> Result<PinStatus, PinError> {
        let c = ChangePin {
            new_pin: new_pin.to_vec(),
        };
        self.ask(Mtype::CHANGE_PIN, c.to_bytes()).await
    }

    /// `unblock-pin`: with the right PUK, `Changed` (the PIN is `new_pin`
    /// with all its tries); else `WrongPuk`. A blocked PUK is refused.
    pub async fn unblock(&mut self, puk: &[u8], new_pin: &[u8]) -> Result<PinStatus, PinError> {
        let u = UnblockPin {
            puk: puk.to_vec(),
            new_pin: new_pin.to_vec(),
        };
        self.ask(Mtype::UNBLOCK_PIN, u.to_bytes()).await
    }

    /// `lock` (privileged): ends every authenticated session of the card,
    /// this app's included; `Locked`.
    pub async fn lock(&mut self) -> Result<PinStatus, PinError> {
        self.ask(Mtype::LOCK, Vec::new()).await
    }

    /// `logout`: ends this app's own session; `LoggedOut`.
    pub async fn logout(&mut self) -> Result<PinStatus, PinError> {
        self.ask(Mtype::LOGOUT, Vec::new()).await
    }

    /// Sends one service request and waits for the card's `pin-status`.
    async fn ask(&mut self, mtype: Mtype, param: Vec<u8>) -> Result<PinStatus, PinError> {
        self.cap.send(self.card, mtype, param).await?;
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let m = tokio::time::timeout_at(deadline, self.cap.receive())
                .await
                .map_err(|_| PinError::Timeout(self.wait))??;
            let src = m.src();
            match m.mtype() {
                Mtype::PIN_STATUS if src == self.card => {
                    return PinStatus::decode(&m.param)
                        .map_err(|e| PinError::Malformed(e.to_string()));
                }
                Mtype::REFUSED if src == self.card => match Refused::decode(&m.param) {
                    Ok(r) if r.mtype == mtype => {
                        return Err(PinError::Refused {
                            mtype: r.mtype,
                            text: r.text,
                        });
                    }
                    Ok(r) => debug!(refused = %r.mtype, "refusal of nothing awaited; ignored"),
                    Err(e) => debug!(error = %e, "malformed refusal; ignored"),
                },
                Mtype::UNDELIVERABLE if src.is_owner() => match Undeliverable::decode(&m.param) {
                    Ok(u) if u.dst == self.card && u.mtype == mtype => {
                        return Err(ClientError::Undeliverable {
                            dst: u.dst,
                            reason: u.reason,
                        }
                        .into());
                    }
                    Ok(u) => {
                        debug!(dst = %u.dst, mtype = %u.mtype, "undeliverable: nothing awaited; ignored")
                    }
                    Err(e) => debug!(error = %e, "malformed undeliverable notice; ignored"),
                },
                t => debug!(%src, mtype = %t, "not the card's answer; ignored"),
            }
        }
    }
}
