//! Valid voucher values as proptest strategies: the seeds that the
//! hostile-input properties mutate. Used by tenet-voucher's
//! tests/hostile.rs (whose properties decode them) and tenet-voucher-app's
//! (where they are the applet's stored state), which includes this file by
//! path.
#![allow(dead_code)]

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::select;
use tenet_hostile::bytes;
use tenet_proto::{Codec, Domain, EntityId, Port};
use tenet_voucher::card::{Exchange, KeptCertificate, Phase, Role, VoucherCard};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{Agreement, ExchangeId, Kind, Offer};

// Ids as in tenet-proto's tests/hostile.rs.

pub fn domain() -> BoxedStrategy<Domain> {
    prop_oneof![
        any::<[u8; 12]>().prop_map(Domain::new),
        select(&[0u8, 0xc0, 0xff][..]).prop_map(|b| Domain::new([b; 12])),
    ]
    .boxed()
}

pub fn entity() -> BoxedStrategy<EntityId> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(EntityId::from_array),
        (domain(), 0u32..4).prop_map(|(d, p)| EntityId::new(d, Port::new(p))),
    ]
    .boxed()
}

pub fn promise() -> BoxedStrategy<String> {
    prop_oneof!["[a-z0-9 ]{0,40}", ".{0,20}"].boxed()
}

pub fn class() -> BoxedStrategy<VoucherClass> {
    (domain(), promise())
        .prop_map(|(issuer, promise)| VoucherClass { issuer, promise })
        .boxed()
}

/// An amount; `min` 1 for the amounts of an exchange, which must not be 0.
pub fn amount(min: u64) -> BoxedStrategy<Amount> {
    (class(), prop_oneof![min..=10, min..=u64::MAX])
        .prop_map(|(class, quantity)| Amount { class, quantity })
        .boxed()
}

pub fn offer() -> BoxedStrategy<Offer> {
    (
        entity(),
        entity(),
        amount(1),
        proptest::option::of(amount(1)),
        any::<[u8; 16]>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(entity()),
        proptest::option::of(any::<[u8; 8]>()),
    )
        .prop_map(
            |(initiator, responder, give, want, n1, expires, ttp, knows)| Offer {
                knows,
                // A redemption wants nothing back.
                redeem: ttp.filter(|_| want.is_none()),
                initiator,
                responder,
                give,
                want,
                n1,
                expires,
            },
        )
        .boxed()
}

pub fn exchange_id() -> BoxedStrategy<ExchangeId> {
    any::<[u8; 32]>().prop_map(ExchangeId).boxed()
}

pub fn delegation() -> BoxedStrategy<tenet_voucher::redeem::Delegation> {
    (
        (entity(), entity(), class()),
        any::<u64>(),
        bytes(72),
        bytes(400),
    )
        .prop_map(
            |((issuer, redeemer, class), until, signature, certificate)| {
                tenet_voucher::redeem::Delegation {
                    issuer,
                    redeemer,
                    class,
                    until,
                    signature,
                    certificate,
                }
            },
        )
        .boxed()
}

pub fn agreement() -> BoxedStrategy<Agreement> {
    (
        any::<[u8; 32]>(),
        exchange_id(),
        bytes(80),
        bytes(400),
        proptest::option::of(delegation()),
        proptest::option::of(any::<[u8; 8]>()),
    )
        .prop_map(
            |(offer_digest, id, signature, certificate, delegation, knows)| Agreement {
                knows,
                delegation,
                offer_digest,
                id,
                signature,
                certificate,
            },
        )
        .boxed()
}

pub fn kind() -> BoxedStrategy<Kind> {
    select(vec![Kind::Resolve, Kind::Abort]).boxed()
}

pub fn role() -> BoxedStrategy<Role> {
    select(vec![Role::Initiator, Role::Responder]).boxed()
}

pub fn phase() -> BoxedStrategy<Phase> {
    select(vec![
        Phase::AwaitingCommitment,
        Phase::AwaitingConfirmation,
        Phase::Resolving,
        Phase::Aborting,
        Phase::Committed,
        Phase::Resolved,
        Phase::Aborted,
    ])
    .boxed()
}

pub fn voucher_card() -> BoxedStrategy<VoucherCard> {
    let exchange = (
        role(),
        phase(),
        offer(),
        agreement(),
        proptest::option::of(any::<[u8; 16]>()),
        proptest::option::of((any::<u64>(), any::<u8>())),
    )
        .prop_map(|(role, phase, offer, mut agreement, n2, timer)| {
            // The decoder refuses a responder's exchange without n2.
            let n2 = match role {
                Role::Responder => Some(n2.unwrap_or([2; 16])),
                Role::Initiator => n2,
            };
            // What a card's record derives rather than writes, as every
            // card step makes it: the agreement's offer digest, and a
            // responder's exchange id.
            agreement.offer_digest = offer.digest();
            if let (Role::Responder, Some(n2)) = (role, &n2) {
                agreement.id = ExchangeId::for_offer(&offer, n2);
            }
            Exchange {
                admission: None,
                seq: None,
                role,
                phase,
                offer,
                agreement,
                due: timer.map(|(due, _)| due),
                asks: timer.map_or(0, |(_, asks)| asks),
                n2,
            }
        });
    (
        proptest::collection::vec(amount(0), 0..4),
        proptest::collection::vec(offer(), 0..3),
        proptest::collection::vec(exchange, 0..3),
        proptest::collection::vec(any::<[u8; 32]>(), 0..3),
        proptest::option::of(entity()),
        proptest::option::of(bytes(300)),
        proptest::option::of(entity()),
        any::<u32>(),
    )
        .prop_map(
            |(
                amounts,
                offers,
                exchanges,
                accepted,
                ttp,
                ttp_certificate,
                acceptor,
                recover_after,
            )| {
                let mut v = VoucherCard {
                    ttp,
                    ttp_certificate,
                    acceptor,
                    recover_after,
                    accepted: accepted.into_iter().collect(),
                    ..VoucherCard::default()
                };
                for a in &amounts {
                    let _ = v.balances.credit(a);
                }
                for o in offers {
                    v.offers.insert(o.n1, o);
                }
                for (i, e) in exchanges.into_iter().enumerate() {
                    // Some certificates kept in the record's table, the
                    // exchange naming it by reference.
                    let c = &e.agreement.certificate;
                    if i % 2 == 0
                        && !c.is_empty()
                        && v.certificates.iter().all(|k| k.certificate() != c)
                    {
                        v.certificates.push_back(KeptCertificate::new(c.clone()));
                    }
                    v.exchanges.insert(e.agreement.id, e);
                }
                v
            },
        )
        .boxed()
}

pub fn encoded<T: Codec + Debug + 'static>(s: BoxedStrategy<T>) -> BoxedStrategy<Vec<u8>> {
    s.prop_map(|v| v.to_bytes()).boxed()
}
