//! The trusted third party's logic (the appendix's T), without I/O: check a
//! recovery request, decide once per exchange, and answer with a signed
//! admission. The decision store is injected (SQLite or PostgreSQL in the
//! service, memory in tests and the model checker).
//!
//! A TTP serves every card that trusts it, so no requester may crowd out
//! another:
//! - [`check_request`] makes the checks that cost no cryptography first
//!   (the sender is the party entitled to this kind of request, the
//!   signatures and certificates are no longer than the TTP reads, the
//!   agreement is for the offer in the request). A request that fails them
//!   is refused before any signature is verified.
//! - [`FairQueue`] holds the requests waiting for a decision, one bounded
//!   queue per requesting domain, served in turn: a peer that floods the
//!   TTP waits behind its own requests, and an honest requester waits for
//!   at most one request of each other domain.

use std::collections::{HashMap, VecDeque};

use tenet_proto::codec::DecodeError;
use tenet_proto::{Domain, EntityId};

use crate::crypto::{Crypto, VerifyError};
use crate::msg::{Admission, Agreement, ExchangeId, Kind, RecoveryRequest};

/// The longest signature the TTP reads: an ECDSA P-256 signature in ASN.1
/// DER is at most 72 bytes (in raw `r ‖ s`, 64).
pub const MAX_SIGNATURE_LEN: usize = 72;

/// The longest certificate the TTP reads. The card and entity certificates
/// `tenet ca` issues (ECDSA P-256, one name) are about 340 bytes.
pub const MAX_CERTIFICATE_LEN: usize = 2048;

/// Why the TTP refused a request; no decision was made.
#[derive(Debug, thiserror::Error)]
pub enum TtpError {
    /// The request does not verify or does not fit the exchange.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// The decision store failed; nothing was decided.
    #[error("decision store: {0}")]
    Store(StoreError),
}

/// Why a [`DecisionStore`] did not decide. Nothing was recorded; a
/// decision recorded before stays.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (unreachable, locked for too long, out of
    /// space): its own error, as it reports it.
    #[error(transparent)]
    Database(Box<dyn std::error::Error + Send + Sync>),
    /// A decision is recorded for the exchange, but its admission cannot
    /// be read back.
    #[error("stored admission unreadable: {0}")]
    Unreadable(DecodeError),
    /// The store took the decision (or found one taken concurrently), yet
    /// holds none for the exchange when read back.
    #[error("decision vanished")]
    Vanished,
}

/// What was wrong with a refused request. The first three are found
/// without cryptography ([`check_request`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The sender is not the party entitled to this kind of request: only
    /// the offer's initiator may resolve, only its responder may abort.
    #[error("{kind:?} may be asked only by {entitled}, not {src}")]
    NotEntitled {
        /// The kind asked for.
        kind: Kind,
        /// Who may ask for it.
        entitled: EntityId,
        /// Who asked.
        src: EntityId,
    },
    /// A signature or certificate is longer than the TTP reads
    /// ([`MAX_SIGNATURE_LEN`], [`MAX_CERTIFICATE_LEN`]).
    #[error("{what} of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The agreement is for another offer than the one in the request.
    #[error("the agreement is not for this offer")]
    WrongOffer,
    /// The responder's agreement does not verify.
    #[error("agreement: {0}")]
    Agreement(VerifyError),
    /// The requester's signature does not verify.
    #[error("request: {0}")]
    Request(VerifyError),
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
    ) -> Result<Admission, StoreError>;
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
    ) -> Result<Admission, StoreError> {
        Ok(self.decided.entry(*id).or_insert_with(make).clone())
    }
}

/// Handles a recovery request from `src`.
///
/// Checks, beyond the paper's signature check: the agreement in the request
/// is the responder's signature over this offer and this `h(n2)`, and the
/// requester is the party entitled to the kind (the offer's initiator may
/// resolve, its responder may abort), and is the message's sender. So
/// nobody who merely saw `m2` can decide another pair's exchange. The
/// checks without cryptography ([`check_request`]) come first: a request
/// they refuse costs no signature verification.
pub fn handle_request(
    crypto: &mut dyn Crypto,
    store: &mut dyn DecisionStore,
    src: EntityId,
    req: &RecoveryRequest,
) -> Result<Admission, TtpError> {
    handle_request_keyed(crypto, store, src, req, DecisionKey::ExchangeHash)
}

/// The checks of a request from `src` that cost no cryptography, made
/// before any signature is verified: `src` is the party entitled to the
/// kind (the offer's initiator may resolve, its responder may abort); no
/// signature or certificate is longer than the TTP reads; the agreement is
/// for the offer in the request (the exchange id it signs is then bound to
/// that offer).
pub fn check_request(src: EntityId, req: &RecoveryRequest) -> Result<(), Refusal> {
    let entitled = match req.kind {
        Kind::Resolve => req.offer.initiator,
        Kind::Abort => req.offer.responder,
    };
    if src != entitled {
        return Err(Refusal::NotEntitled {
            kind: req.kind,
            entitled,
            src,
        });
    }
    for (what, len, max) in [
        ("request signature", req.signature.len(), MAX_SIGNATURE_LEN),
        (
            "request certificate",
            req.certificate.len(),
            MAX_CERTIFICATE_LEN,
        ),
        (
            "agreement signature",
            req.agreement.signature.len(),
            MAX_SIGNATURE_LEN,
        ),
        (
            "agreement certificate",
            req.agreement.certificate.len(),
            MAX_CERTIFICATE_LEN,
        ),
    ] {
        if len > max {
            return Err(Refusal::TooLarge { what, len, max });
        }
    }
    if req.agreement.offer_digest != req.offer.digest() {
        return Err(Refusal::WrongOffer);
    }
    Ok(())
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
    check_request(src, req)?;
    let id = req.agreement.id;
    crypto
        .verify_for_recovery(
            req.offer.responder,
            &req.agreement.certificate,
            &Agreement::signed_bytes(&req.agreement.offer_digest, &id),
            &req.agreement.signature,
        )
        .map_err(Refusal::Agreement)?;
    crypto
        .verify_for_recovery(
            src,
            &req.certificate,
            &req.kind.request_bytes(&id),
            &req.signature,
        )
        .map_err(Refusal::Request)?;
    let certificate = crypto.certificate();
    let mut make = || Admission {
        kind: req.kind,
        id,
        signature: crypto.sign(&req.kind.admission_bytes(&id)),
        certificate: certificate.clone(),
    };
    let key = match key {
        // A gift's id is n2 hashed under its own label, so gifts keep
        // their decisions in a key space of their own already.
        DecisionKey::ExchangeHash => id,
        DecisionKey::OfferNonce => ExchangeId(crate::model::h(&[b"tenet-n1", &req.offer.n1])),
    };
    let decided = store.decide(&key, &mut make).map_err(TtpError::Store)?;
    if decided.id == id && decided.certificate == certificate {
        return Ok(decided);
    }
    // The decision was made under a certificate of the TTP renewed since
    // (a card would refuse the old one once expired), or, only under
    // `OfferNonce`, for another exchange of the same n1: the TTP signs the
    // same decision again, for this exchange, with its current key.
    Ok(Admission {
        kind: decided.kind,
        id,
        signature: crypto.sign(&decided.kind.admission_bytes(&id)),
        certificate,
    })
}

/// Requests waiting for the TTP: one queue per requesting domain, each
/// bounded, served in turn (round robin, one request a turn).
///
/// A peer host sends only from the domains its certificate names (the
/// remote proxy checks), and an app only from its host's domain (the daemon
/// stamps it), so a domain is the unit one party controls. A party that
/// floods the TTP fills only its own queue: beyond `per_domain` waiting
/// requests [`FairQueue::push`] refuses its next ones, and every other
/// domain with a request waiting is served before its second one. The
/// number of queues is bounded by the domains the CA certified; an emptied
/// queue is forgotten.
///
/// A value without I/O or clock: the service pushes what arrives and pops
/// what to decide next.
#[derive(Debug, Clone)]
pub struct FairQueue<T> {
    /// The waiting requests of each domain with at least one.
    queues: HashMap<Domain, VecDeque<T>>,
    /// The domains with requests waiting, the next one to serve first.
    turns: VecDeque<Domain>,
    per_domain: usize,
    /// The bound over all domains together.
    total: usize,
    len: usize,
}

/// A request [`FairQueue::push`] did not take: its domain already has the
/// bound of requests waiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{bound} recovery requests are already waiting (of {domain}, or of all domains together)")]
pub struct Full<T> {
    /// The requester's domain.
    pub domain: Domain,
    /// The bound reached: the one per domain, or the one over all domains
    /// when that is the one reached (many domains flooding at once).
    pub bound: usize,
    /// The request, handed back.
    pub request: T,
}

impl<T> FairQueue<T> {
    /// An empty queue holding at most `per_domain` requests of each domain
    /// (0 holds none).
    pub fn new(per_domain: usize) -> Self {
        Self::with_total(per_domain, usize::MAX)
    }

    /// An empty queue holding at most `per_domain` requests of each domain
    /// and `total` over all domains: however many domains a flood comes
    /// from, the queue's memory stays bounded.
    pub fn with_total(per_domain: usize, total: usize) -> Self {
        Self {
            queues: HashMap::new(),
            turns: VecDeque::new(),
            per_domain,
            total,
            len: 0,
        }
    }

    /// Queues `request` from `domain`, after the others of that domain; a
    /// domain that had none waiting takes its turn after the domains that
    /// have some.
    pub fn push(&mut self, domain: Domain, request: T) -> Result<(), Full<T>> {
        if self.len >= self.total {
            return Err(Full {
                domain,
                bound: self.total,
                request,
            });
        }
        let q = self.queues.entry(domain).or_default();
        if q.len() >= self.per_domain {
            if q.is_empty() {
                self.queues.remove(&domain);
            }
            return Err(Full {
                domain,
                bound: self.per_domain,
                request,
            });
        }
        if q.is_empty() {
            self.turns.push_back(domain);
        }
        q.push_back(request);
        self.len += 1;
        Ok(())
    }

    /// The next request to decide and its domain: the oldest of the domain
    /// whose turn it is. That domain's turn then comes again after every
    /// other domain with requests waiting.
    pub fn pop(&mut self) -> Option<(Domain, T)> {
        let domain = self.turns.pop_front()?;
        let q = self
            .queues
            .get_mut(&domain)
            .expect("a domain takes turns only while it has requests");
        let request = q
            .pop_front()
            .expect("a domain takes turns only while it has requests");
        if q.is_empty() {
            self.queues.remove(&domain);
        } else {
            self.turns.push_back(domain);
        }
        self.len -= 1;
        Some((domain, request))
    }

    /// Requests waiting, all domains together.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no request is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Requests of `domain` waiting.
    pub fn waiting(&self, domain: &Domain) -> usize {
        self.queues.get(domain).map_or(0, VecDeque::len)
    }

    /// The bound per domain.
    pub fn per_domain(&self) -> usize {
        self.per_domain
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use tenet_proto::Port;

    use super::*;
    use crate::crypto::TestCrypto;
    use crate::model::{Amount, VoucherClass};
    use crate::msg::Offer;

    fn dom(b: u8) -> Domain {
        Domain::new([b; 12])
    }

    /// [`TestCrypto`] that counts the verifications asked of it.
    struct Counting {
        inner: TestCrypto,
        verified: Cell<usize>,
    }

    impl Crypto for Counting {
        fn sign(&mut self, msg: &[u8]) -> Vec<u8> {
            self.inner.sign(msg)
        }
        fn certificate(&self) -> Vec<u8> {
            self.inner.certificate()
        }
        fn verify(
            &self,
            signer: EntityId,
            cert: &[u8],
            msg: &[u8],
            sig: &[u8],
        ) -> Result<(), VerifyError> {
            self.verified.set(self.verified.get() + 1);
            self.inner.verify(signer, cert, msg, sig)
        }
        fn random(&mut self, out: &mut [u8]) {
            self.inner.random(out)
        }
    }

    fn counting(id: EntityId) -> Counting {
        Counting {
            inner: TestCrypto::new(id, 1),
            verified: Cell::new(0),
        }
    }

    const A: u8 = 0xa1;
    const B: u8 = 0xb2;
    const T: u8 = 0x77;

    /// A well-formed request of `kind` for an exchange between the cards of
    /// [`A`] (initiator) and [`B`] (responder), signed by the entitled card.
    fn request(kind: Kind) -> RecoveryRequest {
        let (a, b) = (dom(A).owner(), dom(B).owner());
        let amount = |d: u8, promise: &str| Amount {
            class: VoucherClass {
                issuer: dom(d),
                promise: promise.into(),
            },
            quantity: 1,
        };
        let offer = Offer {
            knows: None,
            redeem: None,
            initiator: a,
            responder: b,
            give: amount(A, "coffee"),
            want: Some(amount(B, "ticket")),
            n1: [1; 16],
            expires: None,
        };
        let id = ExchangeId::of_n2(&[2; 16]);
        let mut cb = TestCrypto::new(b, 2);
        let agreement = Agreement {
            knows: None,
            delegation: None,
            offer_digest: offer.digest(),
            id,
            signature: cb.sign(&Agreement::signed_bytes(&offer.digest(), &id)),
            certificate: cb.certificate(),
        };
        let mut requester = TestCrypto::new(if kind == Kind::Resolve { a } else { b }, 3);
        RecoveryRequest {
            kind,
            offer,
            agreement,
            signature: requester.sign(&kind.request_bytes(&id)),
            certificate: requester.certificate(),
        }
    }

    #[test]
    fn the_entitled_party_is_admitted_after_two_verifications() {
        for (kind, src) in [(Kind::Resolve, A), (Kind::Abort, B)] {
            let mut t = counting(dom(T).owner());
            let a = handle_request(
                &mut t,
                &mut MemoryDecisions::default(),
                dom(src).owner(),
                &request(kind),
            )
            .unwrap();
            assert_eq!(a.kind, kind);
            assert_eq!(t.verified.get(), 2, "the agreement and the request");
        }
    }

    /// Regression: the TTP verified the agreement's signature before it
    /// looked at who sent the request, so anyone could make it verify
    /// signatures at will.
    #[test]
    fn cheap_checks_refuse_before_any_signature_is_verified() {
        let outsider = EntityId::new(dom(0x66), Port::new(9));
        let cases: Vec<(EntityId, RecoveryRequest, &str)> = vec![
            // Resolve only by the initiator, abort only by the responder.
            (dom(B).owner(), request(Kind::Resolve), "not entitled"),
            (dom(A).owner(), request(Kind::Abort), "not entitled"),
            (outsider, request(Kind::Resolve), "not entitled"),
            (
                dom(A).owner(),
                RecoveryRequest {
                    signature: vec![0; MAX_SIGNATURE_LEN + 1],
                    ..request(Kind::Resolve)
                },
                "too large",
            ),
            (
                dom(A).owner(),
                {
                    let mut r = request(Kind::Resolve);
                    r.agreement.certificate = vec![0; MAX_CERTIFICATE_LEN + 1];
                    r
                },
                "too large",
            ),
            (
                dom(A).owner(),
                {
                    let mut r = request(Kind::Resolve);
                    r.offer.n1 = [9; 16];
                    r
                },
                "wrong offer",
            ),
        ];
        for (src, req, why) in cases {
            let mut t = counting(dom(T).owner());
            let mut decisions = MemoryDecisions::default();
            let err = handle_request(&mut t, &mut decisions, src, &req).unwrap_err();
            let TtpError::Refused(refusal) = &err else {
                panic!("{why}: {err}");
            };
            assert_eq!(check_request(src, &req).as_ref(), Err(refusal), "{why}");
            match (why, refusal) {
                ("not entitled", Refusal::NotEntitled { src: s, .. }) => assert_eq!(*s, src),
                ("too large", Refusal::TooLarge { .. }) | ("wrong offer", Refusal::WrongOffer) => {}
                _ => panic!("{why}: {refusal}"),
            }
            assert_eq!(t.verified.get(), 0, "{why}: {refusal}");
            assert!(decisions.decided.is_empty());
        }
    }

    #[test]
    fn bad_signatures_are_refused_by_name() {
        let a = dom(A).owner();
        let mut bad_agreement = request(Kind::Resolve);
        bad_agreement.agreement.signature[0] ^= 1;
        let mut bad_request = request(Kind::Resolve);
        bad_request.signature[0] ^= 1;
        let mut t = counting(dom(T).owner());
        let mut d = MemoryDecisions::default();
        assert!(matches!(
            handle_request(&mut t, &mut d, a, &bad_agreement),
            Err(TtpError::Refused(Refusal::Agreement(_)))
        ));
        assert!(matches!(
            handle_request(&mut t, &mut d, a, &bad_request),
            Err(TtpError::Refused(Refusal::Request(_)))
        ));
        assert!(d.decided.is_empty());
    }

    #[test]
    fn fair_queue_serves_domains_in_turn() {
        let mut q = FairQueue::new(100);
        // A flood from one domain, then one request from each of two others.
        for i in 0..50 {
            q.push(dom(1), i).unwrap();
        }
        q.push(dom(2), 1000).unwrap();
        assert_eq!(q.pop(), Some((dom(1), 0)));
        q.push(dom(3), 2000).unwrap();
        q.push(dom(2), 1001).unwrap();
        let order: Vec<(Domain, i32)> = std::iter::from_fn(|| q.pop()).take(6).collect();
        assert_eq!(
            order,
            [
                (dom(2), 1000),
                (dom(1), 1),
                (dom(3), 2000),
                (dom(2), 1001),
                (dom(1), 2),
                (dom(1), 3),
            ]
        );
        assert_eq!(q.len(), 46);
        assert_eq!(q.waiting(&dom(1)), 46);
        assert_eq!(q.waiting(&dom(2)), 0);
        while q.pop().is_some() {}
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn fair_queue_bounds_each_domain_alone() {
        let mut q = FairQueue::new(3);
        for i in 0..3 {
            q.push(dom(1), i).unwrap();
        }
        let full = q.push(dom(1), 3).unwrap_err();
        assert_eq!((full.domain, full.bound, full.request), (dom(1), 3, 3));
        assert_eq!(q.len(), 3, "nothing waiting was dropped");
        // Another domain is not affected by the first one's full queue.
        q.push(dom(2), 10).unwrap();
        assert_eq!(q.pop(), Some((dom(1), 0)));
        assert_eq!(q.pop(), Some((dom(2), 10)));
        // Room again after a pop.
        q.push(dom(1), 4).unwrap();
        assert_eq!(q.waiting(&dom(1)), 3);
        let mut none = FairQueue::new(0);
        assert!(none.push(dom(1), ()).is_err());
        assert!(none.is_empty() && none.waiting(&dom(1)) == 0);
    }

    #[test]
    fn fair_queue_bounds_all_domains_together() {
        // A flood from many domains, each within its own bound.
        let mut q = FairQueue::with_total(2, 5);
        for d in 0..5 {
            q.push(dom(d), d).unwrap();
        }
        let full = q.push(dom(9), 9).unwrap_err();
        assert_eq!((full.domain, full.bound, full.request), (dom(9), 5, 9));
        assert_eq!(q.len(), 5);
        assert_eq!(q.waiting(&dom(9)), 0, "no empty queue is kept for it");
        q.pop();
        q.push(dom(9), 9).unwrap();
    }
}
