//! The trusted third party's logic (the appendix's T), without I/O: check a
//! recovery request, decide once per exchange, and answer with a signed
//! admission. The decision store is injected (SQLite or PostgreSQL in the
//! service, memory in tests and the model checker).

use std::collections::HashMap;

use tenet_proto::EntityId;

use crate::crypto::Crypto;
use crate::msg::{Admission, Agreement, ExchangeId, Kind, RecoveryRequest};

/// Why the TTP refused a request; no decision was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtpError {
    /// The request does not verify or does not fit the exchange.
    #[error("refused: {0}")]
    Refused(String),
    /// The decision store failed; nothing was decided.
    #[error("decision store: {0}")]
    Store(String),
}

/// Where decisions live, once per exchange, forever.
pub trait DecisionStore {
    /// The admission already recorded for `id`, or, if none, records the
    /// one `make` produces and returns it. Must be atomic: two concurrent
    /// calls for one `id` record one admission.
    fn decide(
        &mut self,
        id: &ExchangeId,
        make: &mut dyn FnMut() -> Admission,
    ) -> Result<Admission, String>;
}

/// Decisions in memory, for tests and the model checker.
#[derive(Debug, Default, Clone)]
pub struct MemoryDecisions {
    /// Every decision made.
    pub decided: HashMap<ExchangeId, Admission>,
}

impl DecisionStore for MemoryDecisions {
    fn decide(
        &mut self,
        id: &ExchangeId,
        make: &mut dyn FnMut() -> Admission,
    ) -> Result<Admission, String> {
        Ok(self.decided.entry(*id).or_insert_with(make).clone())
    }
}

/// Handles a recovery request from `src`.
///
/// Checks, beyond the paper's signature check: the agreement in the request
/// is the responder's signature over this offer and this `h(n2)`, and the
/// requester is the party entitled to the kind (the offer's initiator may
/// resolve, its responder may abort), and is the message's sender. So
/// nobody who merely saw `m2` can decide another pair's exchange.
pub fn handle_request(
    crypto: &mut dyn Crypto,
    store: &mut dyn DecisionStore,
    src: EntityId,
    req: &RecoveryRequest,
) -> Result<Admission, TtpError> {
    handle_request_keyed(crypto, store, src, req, DecisionKey::ExchangeHash)
}

/// What the TTP records its one decision under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionKey {
    /// `h(n2)`, the exchange id (the paper's appendix). What the TTP uses.
    ExchangeHash,
    /// `n1`, as in the protocol the paper revised (its reference 17). With
    /// it, the user of `S_B` can replay `m1` to a card that no longer
    /// remembers it and abort that second run, which aborts the first run
    /// too. Kept only so that the model checker can show that attack; no
    /// service uses it.
    OfferNonce,
}

/// [`handle_request`] with the decision recorded under `key`. Under
/// [`DecisionKey::OfferNonce`] a decision recorded for one exchange of an
/// `n1` is applied to every exchange of that `n1`.
pub fn handle_request_keyed(
    crypto: &mut dyn Crypto,
    store: &mut dyn DecisionStore,
    src: EntityId,
    req: &RecoveryRequest,
    key: DecisionKey,
) -> Result<Admission, TtpError> {
    let refused = |s: String| TtpError::Refused(s);
    let id = req.agreement.id;
    if req.agreement.offer_digest != req.offer.digest() {
        return Err(refused("the agreement is not for this offer".into()));
    }
    crypto
        .verify(
            req.offer.responder,
            &req.agreement.certificate,
            &Agreement::signed_bytes(&req.agreement.offer_digest, &id),
            &req.agreement.signature,
        )
        .map_err(|e| refused(format!("agreement: {e}")))?;
    let entitled = match req.kind {
        Kind::Resolve => req.offer.initiator,
        Kind::Abort => req.offer.responder,
    };
    if src != entitled {
        return Err(refused(format!(
            "{:?} may be asked only by {entitled}, not {src}",
            req.kind
        )));
    }
    crypto
        .verify(
            entitled,
            &req.certificate,
            &req.kind.request_bytes(&id),
            &req.signature,
        )
        .map_err(|e| refused(format!("request: {e}")))?;
    let certificate = crypto.certificate();
    let mut make = || Admission {
        kind: req.kind,
        id,
        signature: crypto.sign(&req.kind.admission_bytes(&id)),
        certificate: certificate.clone(),
    };
    let key = match key {
        DecisionKey::ExchangeHash => id,
        DecisionKey::OfferNonce => ExchangeId(crate::model::h(&[b"tenet-n1", &req.offer.n1])),
    };
    let decided = store.decide(&key, &mut make).map_err(TtpError::Store)?;
    if decided.id == id {
        return Ok(decided);
    }
    // Only under `OfferNonce`: the decision was made for another exchange
    // of the same n1; the TTP signs it again for this one.
    Ok(Admission {
        kind: decided.kind,
        id,
        signature: crypto.sign(&decided.kind.admission_bytes(&id)),
        certificate,
    })
}
