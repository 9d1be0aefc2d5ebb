//! # tenet-client: the messaging library for apps
//!
//! An app talks to its host daemon through a [`Capability`] (paper 4.3.2,
//! 4.4): it connects to the daemon's app socket, acquires an id, and from
//! then on every message it sends carries that id as `src`. The daemon
//! binds the id to the connection and rejects any other `src`, so the
//! capability is the only way to send as that id. A `Capability` is neither
//! `Clone` nor serializable:
//!
//! ```compile_fail
//! fn copy(c: &tenet_client::Capability) -> tenet_client::Capability { c.clone() }
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), tenet_client::ClientError> {
//! use tenet_client::Capability;
//! use tenet_proto::Mtype;
//!
//! let mut me = Capability::acquire_default().await?;
//! println!("I am {}", me.id());
//! let host = me.id().domain().owner();
//! let rtt = me.echo(host, b"hi", std::time::Duration::from_secs(1)).await?;
//! me.send(host, Mtype(0x8001), vec![]).await?;
//! # let _ = rtt; Ok(()) }
//! ```
//!
//! [`wallet::Wallet`] is the high-level library for vouchers on top (paper
//! 4.3.3): balances, mint, offer, incoming offers, accept, exchanges,
//! recovery. [`card_pin::CardPin`] is the PIN management an app needs:
//! verify, change, unblock with the PUK, lock the card. [`status`] asks a
//! daemon for its figures without acquiring an id, and lays them out for a
//! person or as JSON (`tenet status`); [`tools`] are `tenet ping` and
//! `tenet tap`.
//!
//! The client owns its socket and has no background task: frames are read
//! when the app calls [`Capability::next`], [`Capability::receive`] or a
//! request method; frames that arrive while waiting for something else are
//! kept in order for later. Echo requests addressed to the app are answered
//! automatically while the app reads (see [`Capability::set_answer_echo`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenet_proto::app::{ClientFrame, DaemonFrame, ErrorCode, MAX_APP_FRAME, SubscriptionId, TapId};
use tenet_proto::frame::{FrameDecoder, write_codec_frame};
use tenet_proto::notice::{Undeliverable, UndeliverableReason};
use tenet_proto::status::Status;
use tenet_proto::{Codec, DecodeError, EntityId, Filter, MAX_MESSAGE_LEN, Message, Mtype};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub mod card_pin;
pub mod journal;
pub mod secret;
pub mod status;
pub mod tools;
pub mod wallet;

pub use tenet_proto::socket::default_socket_path;

/// What went wrong, in the app's terms.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the socket path.
    #[error("tenet host daemon is not running at {path}; start it with `tenet host`")]
    NotRunning {
        /// The socket path tried.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The socket's folder could be controlled by someone else: nothing
    /// was sent.
    #[error(transparent)]
    UnsafeSocketDir(#[from] tenet_proto::socket::UnsafeSocketDir),
    /// The daemon refused a request for lack of an id.
    #[error("no id acquired yet on this connection")]
    NotAcquired,
    /// The destination's queue or the dispatch table is full; nothing was
    /// stored. Retry later.
    #[error("queue full: {0}")]
    QueueFull(String),
    /// The message exceeds [`MAX_MESSAGE_LEN`].
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A guard on the host dropped the message.
    #[error("rejected by guard: {0}")]
    RejectedByGuard(String),
    /// The host could not deliver the message.
    #[error("undeliverable to {dst}: {reason}")]
    Undeliverable {
        /// The destination.
        dst: EntityId,
        /// Why.
        reason: UndeliverableReason,
    },
    /// No answer in time.
    #[error("no answer from {dst} within {after:?}")]
    Timeout {
        /// Who did not answer.
        dst: EntityId,
        /// How long we waited.
        after: Duration,
    },
    /// The daemon refused a request.
    #[error("daemon refused: {code}: {text}")]
    Daemon {
        /// Its error code.
        code: ErrorCode,
        /// Its explanation.
        text: String,
    },
    /// The daemon sent something this library does not understand.
    #[error("protocol error from daemon: {0}")]
    Protocol(#[from] DecodeError),
    /// The daemon closed the connection.
    #[error("the daemon closed the connection")]
    Closed,
    /// A socket error.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl ClientError {
    fn from_daemon(code: ErrorCode, text: String) -> Self {
        match code {
            ErrorCode::NOT_ACQUIRED => Self::NotAcquired,
            ErrorCode::QUEUE_FULL => Self::QueueFull(text),
            ErrorCode::REJECTED_BY_GUARD => Self::RejectedByGuard(text),
            _ => Self::Daemon { code, text },
        }
    }
}

/// Something the daemon pushed to this app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message for this app.
    Message {
        /// The subscription that claimed it; 0 if none.
        subscription: SubscriptionId,
        /// The message.
        message: Message,
    },
    /// A copy of a message one of this app's taps matched.
    Tapped {
        /// The tap.
        tap: TapId,
        /// When the host stored the message.
        at: SystemTime,
        /// The copy.
        message: Message,
    },
    /// A tap skipped copies because this app read too slowly.
    Lagged {
        /// The tap.
        tap: TapId,
        /// How many were skipped.
        missed: u64,
    },
}

/// An app's capability object: its connection to the host daemon, bound to
/// the id it acquired.
pub struct Capability {
    stream: UnixStream,
    id: EntityId,
    frames: FrameDecoder,
    inbox: VecDeque<Incoming>,
    answer_echo: bool,
    echo_seq: u64,
}

impl std::fmt::Debug for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capability")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Capability {
    /// Connects to the daemon at `path` and acquires an id.
    ///
    /// The socket's folder is checked once connected and before anything
    /// is sent ([`tenet_proto::socket`]): a socket in a folder that another user
    /// could control is refused, and the connection is dropped unused.
    pub async fn acquire(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let mut c = Self::connect(path.as_ref()).await?;
        match c.request(&ClientFrame::Acquire).await? {
            DaemonFrame::Acquired(id) => c.id = id,
            other => return Err(unexpected(&other)),
        }
        Ok(c)
    }

    /// Connects to the daemon at `path` and checks the socket's folder; no
    /// id yet (the id field is all zeros until an acquire).
    async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::NotRunning {
                path: path.to_owned(),
                source,
            })?;
        tenet_proto::socket::check_for_client(path)?;
        Ok(Self {
            stream,
            id: EntityId::from_array([0; 16]),
            frames: FrameDecoder::new(MAX_APP_FRAME),
            inbox: VecDeque::new(),
            answer_echo: true,
            echo_seq: 0,
        })
    }

    /// The daemon's figures now ([`status`]), on this connection.
    pub async fn status(&mut self) -> Result<Status, ClientError> {
        match self.request(&ClientFrame::Status).await? {
            DaemonFrame::Status(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Connects to the daemon at [`default_socket_path`] and acquires an id.
    pub async fn acquire_default() -> Result<Self, ClientError> {
        Self::acquire(default_socket_path()).await
    }

    /// The id this capability sends as.
    pub fn id(&self) -> EntityId {
        self.id
    }

    /// Whether echo requests to this app are answered automatically while it
    /// reads (default `true`). When off, they are returned like any message.
    pub fn set_answer_echo(&mut self, on: bool) {
        self.answer_echo = on;
    }

    /// Sends a message; returns once the host has stored it.
    pub async fn send(
        &mut self,
        dst: EntityId,
        mtype: Mtype,
        param: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let m = Message::new(self.id, dst, mtype, param.into());
        if m.encoded_len() > MAX_MESSAGE_LEN {
            return Err(ClientError::TooLarge {
                len: m.encoded_len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        match self.request(&ClientFrame::Send(m)).await? {
            DaemonFrame::Ok(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Registers a handler for messages addressed to this app that match
    /// `filter`; such messages arrive tagged with the returned id.
    pub async fn subscribe(&mut self, filter: Filter) -> Result<SubscriptionId, ClientError> {
        match self.request(&ClientFrame::Subscribe(filter)).await? {
            DaemonFrame::Ok(id) => Ok(SubscriptionId(id)),
            other => Err(unexpected(&other)),
        }
    }

    /// Drops a subscription.
    pub async fn unsubscribe(&mut self, id: SubscriptionId) -> Result<(), ClientError> {
        match self.request(&ClientFrame::Unsubscribe(id)).await? {
            DaemonFrame::Ok(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Observes messages matching `filter` without consuming them; copies
    /// arrive as [`Incoming::Tapped`].
    pub async fn tap(&mut self, filter: Filter) -> Result<TapId, ClientError> {
        match self.request(&ClientFrame::Tap(filter)).await? {
            DaemonFrame::Ok(id) => Ok(TapId(id)),
            other => Err(unexpected(&other)),
        }
    }

    /// Drops a tap.
    pub async fn untap(&mut self, id: TapId) -> Result<(), ClientError> {
        match self.request(&ClientFrame::Untap(id)).await? {
            DaemonFrame::Ok(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The next thing the daemon pushed: a message, a tap copy, or a lag
    /// report.
    pub async fn next(&mut self) -> Result<Incoming, ClientError> {
        loop {
            let item = match self.inbox.pop_front() {
                Some(i) => i,
                None => {
                    self.pull().await?;
                    continue;
                }
            };
            if !self.answered(&item).await? {
                return Ok(item);
            }
        }
    }

    /// The next message for this app. Tap copies and lag reports that come
    /// first stay queued, in order, for [`next`](Self::next).
    pub async fn receive(&mut self) -> Result<Message, ClientError> {
        loop {
            let Some(pos) = self
                .inbox
                .iter()
                .position(|i| matches!(i, Incoming::Message { .. }))
            else {
                self.pull().await?;
                continue;
            };
            let item = self.inbox.remove(pos).expect("position is in range");
            if self.answered(&item).await? {
                continue;
            }
            let Incoming::Message { message, .. } = item else {
                unreachable!("position found a message")
            };
            return Ok(message);
        }
    }

    /// Answers `item` if it is an echo request this app answers itself.
    async fn answered(&mut self, item: &Incoming) -> Result<bool, ClientError> {
        let Incoming::Message { message, .. } = item else {
            return Ok(false);
        };
        if !(self.answer_echo && message.mtype() == Mtype::ECHO_REQUEST && message.dst() == self.id)
        {
            return Ok(false);
        }
        self.send(message.src(), Mtype::ECHO_REPLY, message.param.clone())
            .await?;
        Ok(true)
    }

    /// Reads one pushed frame into the inbox.
    async fn pull(&mut self) -> Result<(), ClientError> {
        let f = self.read_frame().await?;
        self.keep(f)
    }

    fn keep(&mut self, f: DaemonFrame) -> Result<(), ClientError> {
        let item = match f {
            DaemonFrame::Deliver {
                subscription,
                message,
            } => Incoming::Message {
                subscription,
                message,
            },
            DaemonFrame::Tapped {
                tap,
                at_micros,
                message,
            } => Incoming::Tapped {
                tap,
                at: UNIX_EPOCH + Duration::from_micros(at_micros),
                message,
            },
            DaemonFrame::Lagged { tap, missed } => Incoming::Lagged { tap, missed },
            other => return Err(unexpected(&other)),
        };
        self.inbox.push_back(item);
        Ok(())
    }

    /// Sends an echo request with `payload` to `dst` and waits for the
    /// matching reply; returns the round-trip time. Other messages arriving
    /// meanwhile are kept for [`next`](Self::next).
    pub async fn echo(
        &mut self,
        dst: EntityId,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Duration, ClientError> {
        self.echo_seq += 1;
        let mut param = self.echo_seq.to_be_bytes().to_vec();
        param.extend_from_slice(payload);
        let start = Instant::now();
        self.send(dst, Mtype::ECHO_REQUEST, param.clone()).await?;
        let deadline = tokio::time::Instant::from_std(start + timeout);
        let mut held = VecDeque::new();
        let result = loop {
            let item = match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(r) => r?,
                Err(_) => {
                    break Err(ClientError::Timeout {
                        dst,
                        after: timeout,
                    });
                }
            };
            if let Incoming::Message { message: m, .. } = &item {
                if m.mtype() == Mtype::ECHO_REPLY && m.src() == dst && m.param == param {
                    break Ok(start.elapsed());
                }
                // Only a host (a domain's owner id, which no app holds)
                // says a message was undeliverable: any app may send this
                // mtype.
                if m.mtype() == Mtype::UNDELIVERABLE
                    && m.src().is_owner()
                    && let Ok(n) = Undeliverable::decode(&m.param)
                    && n.dst == dst
                    && n.mtype == Mtype::ECHO_REQUEST
                {
                    break Err(ClientError::Undeliverable {
                        dst,
                        reason: n.reason,
                    });
                }
                if m.mtype() == Mtype::ECHO_REPLY && m.src() == dst {
                    // A late reply to an earlier, timed-out request.
                    continue;
                }
            }
            held.push_back(item);
        };
        // Keep what arrived meanwhile, ahead of anything read later.
        while let Some(i) = held.pop_back() {
            self.inbox.push_front(i);
        }
        result
    }

    async fn request(&mut self, req: &ClientFrame) -> Result<DaemonFrame, ClientError> {
        let mut buf = Vec::new();
        write_codec_frame(&mut buf, req);
        self.stream.write_all(&buf).await?;
        loop {
            match self.read_frame().await? {
                f @ (DaemonFrame::Acquired(_) | DaemonFrame::Ok(_) | DaemonFrame::Status(_)) => {
                    return Ok(f);
                }
                DaemonFrame::Error { code, text } => {
                    return Err(ClientError::from_daemon(code, text));
                }
                pushed => self.keep(pushed)?,
            }
        }
    }

    async fn read_frame(&mut self) -> Result<DaemonFrame, ClientError> {
        loop {
            if let Some(f) = self.frames.next_decoded::<DaemonFrame>()? {
                return Ok(f);
            }
            if self.stream.read_buf(self.frames.read_buf()).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

/// Asks the daemon at `path` for its figures, without acquiring an id (so
/// without a card write): any local user who may connect to the socket may
/// ask. See [`status`] to print them.
pub async fn host_status(path: impl AsRef<Path>) -> Result<Status, ClientError> {
    Capability::connect(path.as_ref()).await?.status().await
}

fn unexpected(f: &DaemonFrame) -> ClientError {
    ClientError::Protocol(DecodeError::Invalid {
        what: "daemon reply",
        detail: format!("unexpected frame {f:?}"),
    })
}
