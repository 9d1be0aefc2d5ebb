//! The offer guard (option 2a, paper 5.3): offers addressed to a local card
//! itself are held in the daemon for the card's acceptor app, so a merchant
//! can publish its stable card id and the card spends no APDU on offers.
//!
//! The guard learns the acceptor from the card: when an authenticated app
//! registers one (`set-acceptor`, privileged), the card answers the new
//! acceptor with `acceptor-set` through this host's dispatch table, and the
//! guard sees that answer come in on the card's ingress. An offer to the
//! card is then checked (well-formed, sent by the card it names as
//! initiator, naming this card as responder, inside the merchant's
//! `[guard.offers] policy` if one is set) and redirected to the acceptor,
//! which decides and answers the card with a privileged `accept`. Until
//! the guard has seen an acceptor (for instance after a daemon restart),
//! offers pass to the card, which forwards them to the acceptor it keeps
//! in its own store or refuses them.

use std::collections::HashMap;
use std::time::Instant;

use tenet_dispatch::{Guard, GuardContext, Ingress, Verdict};
use tenet_proto::{Codec, Domain, EntityId, Header, Message};
use tenet_voucher::card::ACCEPTOR_SET;
use tenet_voucher::msg::{OFFER, Offer};
use tenet_voucher::policy::{Policy, RedeemPolicy};

/// Holds offers addressed to local cards for their acceptor apps.
#[derive(Debug, Default)]
pub struct OfferGuard {
    policy: Option<Policy>,
    redeem: Option<RedeemPolicy>,
    acceptors: HashMap<Domain, EntityId>,
}

impl OfferGuard {
    /// A guard that applies `policy`, if given, to every offer addressed to
    /// a local card.
    pub fn new(policy: Option<Policy>) -> Self {
        Self {
            policy,
            redeem: None,
            acceptors: HashMap::new(),
        }
    }

    /// The guard with a standing redemption policy: redemptions at a local
    /// card outside it are dropped. Without one, redemptions pass unless an
    /// exchange policy is set (which no redemption is inside).
    pub fn redeeming(mut self, redeem: Option<RedeemPolicy>) -> Self {
        self.redeem = redeem;
        self
    }

    /// Whether `offer` is inside the standing policies.
    fn inside(&self, offer: &Offer) -> Result<(), String> {
        match (&self.redeem, &self.policy) {
            (Some(r), _) if offer.is_redemption() && !r.allows(offer) => {
                Err(format!("the redemption policy {r}"))
            }
            (Some(_), _) if offer.is_redemption() => Ok(()),
            (_, Some(p)) if !p.allows(offer) => Err(format!("the policy {p}")),
            _ => Ok(()),
        }
    }

    /// The acceptor the guard holds offers for, for the card of `domain`.
    pub fn acceptor(&self, domain: Domain) -> Option<EntityId> {
        self.acceptors.get(&domain).copied()
    }
}

impl Guard for OfferGuard {
    fn name(&self) -> &str {
        "offers"
    }

    /// Offers are judged by their param, in [`Guard::inspect`].
    fn check(&mut self, _: &GuardContext, _: Ingress, _: &Header, _: Instant) -> Verdict {
        Verdict::Pass
    }

    fn inspect(&mut self, cx: &GuardContext, ingress: Ingress, m: &Message, _: Instant) -> Verdict {
        let h = &m.header;
        if h.mtype == ACCEPTOR_SET {
            // Only the card itself, on its own ingress, names its acceptor.
            if ingress == Ingress::Card
                && h.src.is_owner()
                && cx.card_domains.contains(&h.src.domain())
                && h.dst.domain() == h.src.domain()
                && !h.dst.is_owner()
            {
                self.acceptors.insert(h.src.domain(), h.dst);
                return Verdict::Note(format!(
                    "offers to card {} now go to acceptor {}",
                    h.src, h.dst
                ));
            }
            return Verdict::Pass;
        }
        if h.mtype != OFFER || !h.dst.is_owner() || !cx.card_domains.contains(&h.dst.domain()) {
            return Verdict::Pass;
        }
        let offer = match Offer::decode(&m.param) {
            Ok(o) => o,
            Err(e) => return Verdict::Drop(format!("malformed offer to card {}: {e}", h.dst)),
        };
        if offer.initiator != h.src || offer.responder != h.dst {
            return Verdict::Drop(format!(
                "an offer to card {} must come from its initiator and name that card as responder",
                h.dst
            ));
        }
        if let Err(p) = self.inside(&offer) {
            return Verdict::Drop(format!("offer from {} is outside {p}", h.src));
        }
        match self.acceptors.get(&h.dst.domain()) {
            Some(&to) => Verdict::Redirect {
                to,
                note: "offer held for the card's acceptor (option 2a)".into(),
            },
            None => Verdict::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_proto::Port;
    use tenet_voucher::model::{Amount, VoucherClass};

    fn id(d: u8, p: u32) -> EntityId {
        EntityId::new(Domain::new([d; 12]), Port::new(p))
    }

    fn cx() -> GuardContext {
        GuardContext {
            card_domains: [Domain::new([2; 12])].into(),
            privileged: Default::default(),
        }
    }

    fn amount(issuer: u8, promise: &str, quantity: u64) -> Amount {
        Amount {
            class: VoucherClass {
                issuer: Domain::new([issuer; 12]),
                promise: promise.into(),
            },
            quantity,
        }
    }

    /// An offer from card 1 to card 2 (local), giving `give` coffee for one
    /// ticket.
    fn offer(give: u64) -> Message {
        let o = Offer {
            knows: None,
            redeem: None,
            initiator: id(1, 0),
            responder: id(2, 0),
            give: amount(1, "coffee", give),
            want: Some(amount(2, "ticket", 1)),
            n1: [9; 16],
            expires: None,
        };
        Message::new(id(1, 0), id(2, 0), OFFER, o.to_bytes())
    }

    fn acceptor_set(ingress: Ingress, src: EntityId, dst: EntityId) -> (Ingress, Message) {
        (ingress, Message::new(src, dst, ACCEPTOR_SET, Vec::new()))
    }

    fn inspect(g: &mut OfferGuard, ingress: Ingress, m: &Message) -> Verdict {
        g.inspect(&cx(), ingress, m, Instant::now())
    }

    #[test]
    fn offers_pass_to_the_card_until_it_names_an_acceptor() {
        let mut g = OfferGuard::new(None);
        assert_eq!(inspect(&mut g, Ingress::Remote, &offer(2)), Verdict::Pass);
        let (i, m) = acceptor_set(Ingress::Card, id(2, 0), id(2, 7));
        assert!(matches!(inspect(&mut g, i, &m), Verdict::Note(_)));
        assert_eq!(g.acceptor(Domain::new([2; 12])), Some(id(2, 7)));
        assert!(matches!(
            inspect(&mut g, Ingress::Remote, &offer(2)),
            Verdict::Redirect { to, .. } if to == id(2, 7)
        ));
        // An offer between two cards of this host is held too.
        assert!(matches!(
            inspect(&mut g, Ingress::Card, &offer(2)),
            Verdict::Redirect { .. }
        ));
    }

    #[test]
    fn only_the_card_itself_names_its_acceptor() {
        let mut g = OfferGuard::new(None);
        for (i, m) in [
            // An app, even of the card's domain, cannot claim the role.
            acceptor_set(Ingress::App, id(2, 0), id(2, 7)),
            acceptor_set(Ingress::App, id(2, 5), id(2, 5)),
            // A remote peer cannot either.
            acceptor_set(Ingress::Remote, id(2, 0), id(2, 7)),
            // The card names only apps of its own domain.
            acceptor_set(Ingress::Card, id(2, 0), id(3, 7)),
            acceptor_set(Ingress::Card, id(2, 0), id(2, 0)),
            // Another (not local) card's domain.
            acceptor_set(Ingress::Card, id(4, 0), id(4, 7)),
        ] {
            assert_eq!(inspect(&mut g, i, &m), Verdict::Pass);
        }
        assert_eq!(g.acceptor(Domain::new([2; 12])), None);
        assert_eq!(g.acceptor(Domain::new([4; 12])), None);
    }

    #[test]
    fn bad_offers_are_dropped_before_card_or_app_sees_them() {
        let mut g = OfferGuard::new(None);
        let (i, m) = acceptor_set(Ingress::Card, id(2, 0), id(2, 7));
        inspect(&mut g, i, &m);
        let mut garbage = offer(2);
        garbage.param.truncate(5);
        assert!(
            matches!(inspect(&mut g, Ingress::Remote, &garbage), Verdict::Drop(r) if r.contains("malformed"))
        );
        let mut forged = offer(2);
        forged.header.src = id(3, 0);
        assert!(
            matches!(inspect(&mut g, Ingress::Remote, &forged), Verdict::Drop(r) if r.contains("initiator"))
        );
        // An offer to an app, or to a card elsewhere, is not this guard's.
        let mut to_app = offer(2);
        to_app.header.dst = id(2, 7);
        assert_eq!(inspect(&mut g, Ingress::Remote, &to_app), Verdict::Pass);
        let mut elsewhere = garbage.clone();
        elsewhere.header.dst = id(5, 0);
        assert_eq!(inspect(&mut g, Ingress::Remote, &elsewhere), Verdict::Pass);
    }

    #[test]
    fn the_merchant_policy_drops_offers_outside_it() {
        let policy: Policy = format!(
            "GIVE>=2:{}:coffee,WANT<=1:{}:ticket",
            Domain::new([1; 12]),
            Domain::new([2; 12])
        )
        .parse()
        .unwrap();
        let mut g = OfferGuard::new(Some(policy));
        // Without an acceptor, an offer inside the policy goes to the card.
        assert_eq!(inspect(&mut g, Ingress::Remote, &offer(2)), Verdict::Pass);
        assert!(
            matches!(inspect(&mut g, Ingress::Remote, &offer(1)), Verdict::Drop(r) if r.contains("outside the policy"))
        );
        let (i, m) = acceptor_set(Ingress::Card, id(2, 0), id(2, 7));
        inspect(&mut g, i, &m);
        assert!(matches!(
            inspect(&mut g, Ingress::Remote, &offer(3)),
            Verdict::Redirect { .. }
        ));
        assert!(matches!(
            inspect(&mut g, Ingress::Remote, &offer(1)),
            Verdict::Drop(_)
        ));
    }

    /// A gift (nothing wanted back) addressed to the card is never inside
    /// a merchant's policy: dropped, however much it gives; without a
    /// policy it goes to the acceptor like any offer.
    #[test]
    fn a_policy_drops_gifts_to_the_card() {
        let gift = |give| {
            let o = Offer {
                knows: None,
                redeem: None,
                initiator: id(1, 0),
                responder: id(2, 0),
                give: amount(1, "coffee", give),
                want: None,
                n1: [8; 16],
                expires: None,
            };
            Message::new(id(1, 0), id(2, 0), OFFER, o.to_bytes())
        };
        let policy: Policy = format!(
            "GIVE>=2:{}:coffee,WANT<=1:{}:ticket",
            Domain::new([1; 12]),
            Domain::new([2; 12])
        )
        .parse()
        .unwrap();
        let mut g = OfferGuard::new(Some(policy));
        assert!(
            matches!(inspect(&mut g, Ingress::Remote, &gift(5)), Verdict::Drop(r) if r.contains("outside the policy"))
        );
        let mut g = OfferGuard::new(None);
        let (i, m) = acceptor_set(Ingress::Card, id(2, 0), id(2, 7));
        inspect(&mut g, i, &m);
        assert!(matches!(
            inspect(&mut g, Ingress::Remote, &gift(5)),
            Verdict::Redirect { to, .. } if to == id(2, 7)
        ));
    }

    /// A merchant's redemption policy: redemptions at the card inside it
    /// go to the acceptor, others are dropped; an exchange policy alone
    /// drops every redemption.
    #[test]
    fn a_redemption_policy_bounds_what_the_card_redeems() {
        let redemption = |q| {
            let o = Offer {
                knows: None,
                initiator: id(1, 0),
                responder: id(2, 0),
                give: amount(2, "ticket", q),
                want: None,
                n1: [6; 16],
                expires: None,
                redeem: Some(id(7, 0)),
            };
            Message::new(id(1, 0), id(2, 0), OFFER, o.to_bytes())
        };
        let r: RedeemPolicy = format!("REDEEM<=2:{}:ticket", Domain::new([2; 12]))
            .parse()
            .unwrap();
        assert_eq!(r.to_string().parse::<RedeemPolicy>().unwrap(), r);
        let mut g = OfferGuard::new(None).redeeming(Some(r));
        let (i, m) = acceptor_set(Ingress::Card, id(2, 0), id(2, 7));
        inspect(&mut g, i, &m);
        assert!(matches!(
            inspect(&mut g, Ingress::Remote, &redemption(2)),
            Verdict::Redirect { to, .. } if to == id(2, 7)
        ));
        assert!(
            matches!(inspect(&mut g, Ingress::Remote, &redemption(3)), Verdict::Drop(r) if r.contains("redemption policy"))
        );
        // An exchange offer is not the redemption policy's to judge.
        assert!(matches!(
            inspect(&mut g, Ingress::Remote, &offer(1)),
            Verdict::Redirect { .. }
        ));
        let policy: Policy = format!(
            "GIVE>=2:{}:coffee,WANT<=1:{}:ticket",
            Domain::new([1; 12]),
            Domain::new([2; 12])
        )
        .parse()
        .unwrap();
        let mut g = OfferGuard::new(Some(policy));
        assert!(matches!(
            inspect(&mut g, Ingress::Remote, &redemption(1)),
            Verdict::Drop(_)
        ));
        for bad in ["", "REDEEM>=1:cacacacacacacacacacacaca:c", "REDEEM<=1:zz:c"] {
            let e = bad.parse::<RedeemPolicy>().unwrap_err().to_string();
            assert!(e.contains("REDEEM<="), "{bad:?}: {e}");
        }
    }
}
