//! The attestation applet: one function per step of the protocol, named
//! after the step ([`crate::msg`] has the messages).
//!
//! ```text
//! P_A -> S_A  attest-start {B}                         (privileged)
//! S_A -> S_B  attest-hello {n_a, Cert_A}
//! S_B -> S_A  attest-reply {n_a, n_b, Cert_B, Sig_B(T)}   S_A checks Cert_B, Sig_B
//! S_A -> S_B  attest-finish {n_a, n_b, Sig_A(T)}          S_B checks Cert_A, Sig_A; records A
//! S_B -> S_A  attest-done {n_a, h(T)}                      S_A records B
//! S_A -> P_A  attest-result {B, attested h(T)}
//! ```
//!
//! What makes each message count, and what is refused:
//!
//! - A message is taken only as part of a session in progress with its
//!   sender, in the phase that expects it, under the session's nonces: a
//!   message from any other entity, a replay of an earlier session's
//!   message (its nonces are not the session's) or a message out of turn
//!   is refused (the runtime answers `refused`) and changes nothing. Each
//!   card picks a fresh nonce per session, and a session ends at its last
//!   message, so nothing can be played twice.
//! - A certificate is checked against the CA certificate installed on the
//!   card, at the card's time, and must name its sender
//!   (`DOMAIN-PORT.id.tenet`), with [`tenet_pki::verify_at`], together
//!   with the signature it carries. The responder checks the initiator's
//!   certificate's name and validity at the hello, and its chain with its
//!   signature at the finish.
//! - When the session's peer fails a check (a certificate from another
//!   CA, a bad signature, a transcript it did not sign), the card ends the
//!   session, records nothing, and tells the peer (`attest-abort`) and, if
//!   it started the session, its app (`attest-result`).
//!
//! Each card records its peer only once it has verified the peer's
//! signature over `T`: the responder when the finish verifies, the
//! initiator when the responder's done confirms the session (the
//! responder's signature it checked at the reply is its evidence; the done
//! only says the responder accepted it too). So a session refused by
//! either side leaves no record on either side. A done lost on the way
//! leaves the responder's record alone; the app sees no result and may
//! start again.
//!
//! Signatures are the card's own, made through [`AppletCx::sign`]; the
//! private key never reaches the applet.

use tenet_card::{Applet, AppletCx, Refusal};
use tenet_pki::{VerifyError, check_validity, names, validity, verify_at};
use tenet_proto::codec::{Codec, DecodeError};
use tenet_proto::{EntityId, Message, Mtype};

use crate::msg::{
    self, Abort, AttestResult, Done, Finish, Hello, Nonce, Outcome, Peers, Record, Reply, Start,
    Transcript, initiator_signs, responder_signs, sha256,
};
use crate::state::{Answered, AttestState, Phase, Started};

/// The applet's id: it keys the applet's data in the card's store.
pub const APPLET_ID: u16 = 0x8a00;

/// The mtypes the applet handles (attest-result and attest-peers go to
/// apps, never to a card).
const HANDLED: [Mtype; 7] = [
    msg::START,
    msg::HELLO,
    msg::REPLY,
    msg::FINISH,
    msg::DONE,
    msg::ABORT,
    msg::QUERY,
];

/// Why the applet refused a message or ended a session.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// A param that does not decode.
    #[error("malformed {mtype}: {source}")]
    Malformed {
        /// The message's mtype.
        mtype: Mtype,
        /// What is wrong with it.
        source: DecodeError,
    },
    /// The applet's stored data does not decode.
    #[error("stored attestation state unreadable: {0}")]
    Corrupt(DecodeError),
    /// The card has no certificate or no CA certificate installed.
    #[error("this card has no certificate yet; personalize it with a CA (tenet card new --ca DIR)")]
    NotCertified,
    /// The card's own certificate is expired or unreadable.
    #[error("this card's certificate cannot be used: {0}; renew it: tenet card recertify")]
    OwnCertificate(VerifyError),
    /// An app asked the card to attest with itself, or the card got its
    /// own hello.
    #[error("a card does not attest with itself")]
    SelfAttestation,
    /// A message that belongs to no session in progress with its sender
    /// under its nonces, in the phase that expects it.
    #[error(
        "{mtype} from {src} belongs to no attestation in progress with it (forged, replayed or out of turn)"
    )]
    NoSession {
        /// The message's mtype.
        mtype: Mtype,
        /// Its sender.
        src: EntityId,
    },
    /// The peer's certificate or signature did not verify.
    #[error("{peer} not attested: {source}")]
    Peer {
        /// The peer.
        peer: EntityId,
        /// What failed.
        source: VerifyError,
    },
    /// An mtype the applet does not handle (the runtime gives it only
    /// those it claims).
    #[error("{0} is not an attestation message")]
    Unhandled(Mtype),
    /// The responder confirmed a transcript other than the one this card
    /// verified.
    #[error("{peer} confirmed another transcript than the one this card verified")]
    TranscriptMismatch {
        /// The peer.
        peer: EntityId,
    },
}

fn decode<T: Codec>(mtype: Mtype, param: &[u8]) -> Result<T, AttestError> {
    T::decode(param).map_err(|source| AttestError::Malformed { mtype, source })
}

/// The card's certificate and the CA certificate it trusts.
fn credentials<'a>(cx: &AppletCx<'a>) -> Result<(&'a [u8], &'a [u8]), AttestError> {
    match (cx.certificate, cx.ca_certificate) {
        (Some(own), Some(ca)) => Ok((own, ca)),
        _ => Err(AttestError::NotCertified),
    }
}

/// The card's own certificate, checked valid at `time`: a peer would
/// refuse it otherwise.
fn own_certificate<'a>(cx: &AppletCx<'a>) -> Result<&'a [u8], AttestError> {
    let (own, _) = credentials(cx)?;
    validity(own)
        .and_then(|v| check_validity(v, cx.time, "of this card"))
        .map_err(AttestError::OwnCertificate)?;
    Ok(own)
}

fn nonce(cx: &mut AppletCx<'_>) -> Nonce {
    let mut n = [0; msg::NONCE_LEN];
    cx.entropy.fill(&mut n);
    n
}

/// Checks `cert` against the card's CA at the card's time, that it names
/// `peer`, and `sig` over `signed`; tells a timing model about the two
/// verifications (the CA's signature over the certificate, then `sig`).
fn verify_peer(
    cx: &AppletCx<'_>,
    ca: &[u8],
    peer: EntityId,
    cert: &[u8],
    signed: &[u8],
    sig: &[u8],
) -> Result<(), AttestError> {
    cx.count_verify(cert.len());
    cx.count_verify(signed.len());
    verify_at(
        ca,
        cx.time,
        tenet_pki::Signer::card(peer),
        cert,
        signed,
        sig,
    )
    .map(|_| ())
    .map_err(|source| AttestError::Peer { peer, source })
}

fn hash(cx: &AppletCx<'_>, t: &Transcript<'_>) -> [u8; 32] {
    cx.count_hash_blocks(t.hash_blocks());
    t.hash()
}

/// `P_A -> S_A attest-start`: the card picks `n_a` and sends its hello.
fn start(
    state: &mut AttestState,
    cx: &mut AppletCx<'_>,
    app: EntityId,
    param: &[u8],
) -> Result<(), AttestError> {
    let Start { peer } = decode(msg::START, param)?;
    if peer == cx.card {
        return Err(AttestError::SelfAttestation);
    }
    let own = own_certificate(cx)?;
    let n_a = nonce(cx);
    state.begin(Started {
        peer,
        app,
        n_a,
        at: cx.time.now,
        phase: Phase::AwaitReply,
    });
    let hello = Hello {
        n_a,
        certificate: own.to_vec(),
    };
    cx.send(peer, msg::HELLO, hello.to_bytes());
    Ok(())
}

/// `S_A -> S_B attest-hello`: the responder checks the initiator's
/// certificate's name and validity, picks `n_b`, signs `T` and replies; or
/// aborts, so that the initiator's app learns why.
fn hello(
    state: &mut AttestState,
    cx: &mut AppletCx<'_>,
    initiator: EntityId,
    param: &[u8],
) -> Result<(), AttestError> {
    let h: Hello = decode(msg::HELLO, param)?;
    if initiator == cx.card {
        return Err(AttestError::SelfAttestation);
    }
    if let Err(e) = answer_hello(state, cx, initiator, &h) {
        let abort = Abort {
            n_a: h.n_a,
            reason: e.to_string(),
        };
        cx.send(initiator, msg::ABORT, abort.to_bytes());
    }
    Ok(())
}

fn answer_hello(
    state: &mut AttestState,
    cx: &mut AppletCx<'_>,
    initiator: EntityId,
    h: &Hello,
) -> Result<(), AttestError> {
    let own = own_certificate(cx)?;
    let peer_error = |source| AttestError::Peer {
        peer: initiator,
        source,
    };
    if !names(&h.certificate, initiator) {
        return Err(peer_error(VerifyError(format!(
            "its certificate does not name {initiator}"
        ))));
    }
    validity(&h.certificate)
        .and_then(|v| check_validity(v, cx.time, &format!("for {initiator}")))
        .map_err(peer_error)?;
    let n_b = nonce(cx);
    let transcript = hash(
        cx,
        &Transcript {
            initiator,
            responder: cx.card,
            n_a: &h.n_a,
            n_b: &n_b,
            initiator_certificate: &h.certificate,
            responder_certificate: own,
        },
    );
    let signature = cx.sign(&responder_signs(&transcript));
    state.answer(Answered {
        peer: initiator,
        n_a: h.n_a,
        n_b,
        certificate: h.certificate.clone(),
        transcript,
        at: cx.time.now,
    });
    let reply = Reply {
        n_a: h.n_a,
        n_b,
        certificate: own.to_vec(),
        signature,
    };
    cx.send(initiator, msg::REPLY, reply.to_bytes());
    Ok(())
}

/// `S_B -> S_A attest-reply`: the initiator checks the responder's
/// certificate and signature over `T`; it signs `T` and finishes, or
/// aborts and tells its app.
fn reply(
    state: &mut AttestState,
    cx: &mut AppletCx<'_>,
    responder: EntityId,
    param: &[u8],
) -> Result<(), AttestError> {
    let r: Reply = decode(msg::REPLY, param)?;
    let i = state
        .started_with(responder, &r.n_a)
        .filter(|&i| state.started[i].phase == Phase::AwaitReply)
        .ok_or(AttestError::NoSession {
            mtype: msg::REPLY,
            src: responder,
        })?;
    let (own, ca) = credentials(cx)?;
    let transcript = hash(
        cx,
        &Transcript {
            initiator: cx.card,
            responder,
            n_a: &r.n_a,
            n_b: &r.n_b,
            initiator_certificate: own,
            responder_certificate: &r.certificate,
        },
    );
    let checked = verify_peer(
        cx,
        ca,
        responder,
        &r.certificate,
        &responder_signs(&transcript),
        &r.signature,
    );
    if let Err(e) = checked {
        let session = state.started.remove(i);
        let reason = e.to_string();
        let abort = Abort {
            n_a: r.n_a,
            reason: reason.clone(),
        };
        cx.send(responder, msg::ABORT, abort.to_bytes());
        let result = AttestResult {
            peer: responder,
            outcome: Outcome::Refused { reason },
        };
        cx.send(session.app, msg::RESULT, result.to_bytes());
        return Ok(());
    }
    let signature = cx.sign(&initiator_signs(&transcript));
    state.started[i].phase = Phase::AwaitDone {
        transcript,
        certificate: sha256(&r.certificate),
    };
    let finish = Finish {
        n_a: r.n_a,
        n_b: r.n_b,
        signature,
    };
    cx.send(responder, msg::FINISH, finish.to_bytes());
    Ok(())
}

/// `S_A -> S_B attest-finish`: the responder checks the initiator's
/// certificate against the CA and its signature over `T`; it records the
/// initiator and says done, or aborts.
fn finish(
    state: &mut AttestState,
    cx: &mut AppletCx<'_>,
    initiator: EntityId,
    param: &[u8],
) -> Result<(), AttestError> {
    let f: Finish = decode(msg::FINISH, param)?;
    let i = state
        .answered_for(initiator, &f.n_a)
        .filter(|&i| state.answered[i].n_b == f.n_b)
        .ok_or(AttestError::NoSession {
            mtype: msg::FINISH,
            src: initiator,
        })?;
    let (_, ca) = credentials(cx)?;
    let session = state.answered.remove(i);
    let checked = verify_peer(
        cx,
        ca,
        initiator,
        &session.certificate,
        &initiator_signs(&session.transcript),
        &f.signature,
    );
    if let Err(e) = checked {
        let abort = Abort {
            n_a: f.n_a,
            reason: e.to_string(),
        };
        cx.send(initiator, msg::ABORT, abort.to_bytes());
        return Ok(());
    }
    state.record(Record {
        peer: initiator,
        certificate: sha256(&session.certificate),
        transcript: session.transcript,
        at: cx.time.now,
    });
    let done = Done {
        n_a: f.n_a,
        transcript: session.transcript,
    };
    cx.send(initiator, msg::DONE, done.to_bytes());
    Ok(())
}

/// `S_B -> S_A attest-done`: the initiator records the responder it
/// verified at the reply, and tells its app.
fn done(
    state: &mut AttestState,
    cx: &mut AppletCx<'_>,
    responder: EntityId,
    param: &[u8],
) -> Result<(), AttestError> {
    let d: Done = decode(msg::DONE, param)?;
    let no_session = AttestError::NoSession {
        mtype: msg::DONE,
        src: responder,
    };
    let i = state.started_with(responder, &d.n_a).ok_or(no_session)?;
    let Phase::AwaitDone {
        transcript,
        certificate,
    } = state.started[i].phase
    else {
        return Err(AttestError::NoSession {
            mtype: msg::DONE,
            src: responder,
        });
    };
    let session = state.started.remove(i);
    let outcome = if d.transcript == transcript {
        state.record(Record {
            peer: responder,
            certificate,
            transcript,
            at: cx.time.now,
        });
        Outcome::Attested {
            transcript,
            certificate,
        }
    } else {
        Outcome::Refused {
            reason: AttestError::TranscriptMismatch { peer: responder }.to_string(),
        }
    };
    let result = AttestResult {
        peer: responder,
        outcome,
    };
    cx.send(session.app, msg::RESULT, result.to_bytes());
    Ok(())
}

/// `attest-abort` from the session's peer: the session ends; the app that
/// started it, if this card did, is told. Never answered with an abort.
fn abort(
    state: &mut AttestState,
    cx: &mut AppletCx<'_>,
    peer: EntityId,
    param: &[u8],
) -> Result<(), AttestError> {
    let a: Abort = decode(msg::ABORT, param)?;
    if let Some(i) = state.started_with(peer, &a.n_a) {
        let session = state.started.remove(i);
        let result = AttestResult {
            peer,
            outcome: Outcome::Aborted { reason: a.reason },
        };
        cx.send(session.app, msg::RESULT, result.to_bytes());
        return Ok(());
    }
    if let Some(i) = state.answered_for(peer, &a.n_a) {
        state.answered.remove(i);
        return Ok(());
    }
    Err(AttestError::NoSession {
        mtype: msg::ABORT,
        src: peer,
    })
}

/// `attest-query` (privileged): the records, to the app that asked.
fn query(state: &AttestState, cx: &mut AppletCx<'_>, app: EntityId) {
    cx.send(app, msg::PEERS, Peers(state.peers.clone()).to_bytes());
}

/// The attestation applet. It keeps nothing in card RAM: everything is in
/// its stored data ([`AttestState`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttestApplet;

impl AttestApplet {
    /// The applet.
    pub fn new() -> Self {
        Self
    }

    /// Handles one message: the state as stored, then the step, then the
    /// state to store (the runtime writes it, with the messages, only when
    /// this returns `Ok`).
    fn step(&self, cx: &mut AppletCx<'_>, m: &Message) -> Result<(), AttestError> {
        let mut state = AttestState::decode(cx.data).map_err(AttestError::Corrupt)?;
        state.expire(cx.time.now);
        let src = m.src();
        match m.mtype() {
            msg::START => start(&mut state, cx, src, &m.param)?,
            msg::HELLO => hello(&mut state, cx, src, &m.param)?,
            msg::REPLY => reply(&mut state, cx, src, &m.param)?,
            msg::FINISH => finish(&mut state, cx, src, &m.param)?,
            msg::DONE => done(&mut state, cx, src, &m.param)?,
            msg::ABORT => abort(&mut state, cx, src, &m.param)?,
            msg::QUERY => query(&state, cx, src),
            other => return Err(AttestError::Unhandled(other)),
        }
        cx.data.clear();
        state.encode(cx.data);
        Ok(())
    }
}

impl Applet for AttestApplet {
    fn id(&self) -> u16 {
        APPLET_ID
    }

    fn name(&self) -> &'static str {
        "attest"
    }

    fn handles(&self, mtype: Mtype) -> bool {
        HANDLED.contains(&mtype)
    }

    fn privileged(&self) -> &[Mtype] {
        &msg::PRIVILEGED
    }

    fn handle(&mut self, cx: &mut AppletCx<'_>, m: &Message) -> Result<(), Refusal> {
        self.step(cx, m).map_err(|e| Refusal(e.to_string()))
    }
}
