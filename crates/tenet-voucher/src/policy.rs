//! A merchant's standing auto-accept policy (option 2a): accept any offer
//! that gives this card at least N of class X and wants at most M of class
//! Y. The wallet's `--accept-if` and the daemon's offer guard share it.
//!
//! Text form: `GIVE>=N:ISSUERHEX:PROMISE,WANT<=M:ISSUERHEX:PROMISE`, where
//! GIVE is what the offering card gives (what this card gets).

use std::fmt;
use std::str::FromStr;

use crate::model::Amount;
use crate::msg::Offer;

/// Why a policy text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad offer policy {text:?}: {reason} (expected GIVE>=N:ISSUERHEX:PROMISE,WANT<=M:ISSUERHEX:PROMISE)"
)]
pub struct PolicyError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Accept offers giving at least `give` for at most `want`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The least the offering card must give, of this class.
    pub give: Amount,
    /// The most it may want, of this class.
    pub want: Amount,
}

impl Policy {
    /// True if `offer` is inside the policy. The offer's `give` is what
    /// this card gets; its `want` is what this card gives. A gift is
    /// never inside an exchange policy: unsolicited transfers are taken
    /// only on their own say-so (`tenet wallet offers --accept-transfers`).
    pub fn allows(&self, offer: &Offer) -> bool {
        let Some(want) = &offer.want else {
            return false;
        };
        offer.give.class == self.give.class
            && offer.give.quantity >= self.give.quantity
            && want.class == self.want.class
            && want.quantity <= self.want.quantity
    }
}

/// A merchant's standing redemption policy: redeem at the card any
/// redemption of at most `most` of its class. Text form
/// `REDEEM<=N:ISSUERHEX:PROMISE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemPolicy {
    /// The most one redemption may destroy, of this class.
    pub most: Amount,
}

impl RedeemPolicy {
    /// True if `offer` is a redemption of at most `most` of its class.
    pub fn allows(&self, offer: &Offer) -> bool {
        offer.is_redemption()
            && offer.give.class == self.most.class
            && offer.give.quantity <= self.most.quantity
    }
}

/// Why a redemption policy text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad redemption policy {text:?}: {reason} (expected REDEEM<=N:ISSUERHEX:PROMISE)")]
pub struct RedeemPolicyError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for RedeemPolicy {
    type Err = RedeemPolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| RedeemPolicyError {
            text: text.to_owned(),
            reason,
        };
        let most = text
            .trim()
            .strip_prefix("REDEEM<=")
            .ok_or_else(|| err("it must start with REDEEM<=".into()))?;
        Ok(Self {
            most: most.parse::<Amount>().map_err(|e| err(e.reason))?,
        })
    }
}

impl fmt::Display for RedeemPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.most.class;
        write!(
            f,
            "REDEEM<={}:{}:{}",
            self.most.quantity, c.issuer, c.promise
        )
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| PolicyError {
            text: text.to_owned(),
            reason,
        };
        let (g, w) = text
            .split_once(',')
            .ok_or_else(|| err("no comma between GIVE and WANT".into()))?;
        let g = g
            .trim()
            .strip_prefix("GIVE>=")
            .ok_or_else(|| err("it must start with GIVE>=".into()))?;
        let w = w
            .trim()
            .strip_prefix("WANT<=")
            .ok_or_else(|| err("the second part must start with WANT<=".into()))?;
        Ok(Self {
            give: g.parse::<Amount>().map_err(|e| err(e.reason))?,
            want: w.parse::<Amount>().map_err(|e| err(e.reason))?,
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GIVE>={}:{}:{},WANT<={}:{}:{}",
            self.give.quantity,
            self.give.class.issuer,
            self.give.class.promise,
            self.want.quantity,
            self.want.class.issuer,
            self.want.class.promise
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_proto::{Domain, EntityId, Port};

    fn offer(give: u64, want: u64) -> Offer {
        let p: Policy =
            "GIVE>=1:cacacacacacacacacacacaca:coffee,WANT<=1:cbcbcbcbcbcbcbcbcbcbcbcb:ticket"
                .parse()
                .unwrap();
        Offer {
            knows: None,
            redeem: None,
            initiator: EntityId::new(Domain::new([1; 12]), Port::new(0)),
            responder: EntityId::new(Domain::new([2; 12]), Port::new(0)),
            give: Amount {
                quantity: give,
                ..p.give
            },
            want: Some(Amount {
                quantity: want,
                ..p.want
            }),
            n1: [7; 16],
            expires: None,
        }
    }

    #[test]
    fn a_policy_bounds_what_is_given_and_wanted() {
        let p: Policy =
            "GIVE>=2:cacacacacacacacacacacaca:coffee,WANT<=1:cbcbcbcbcbcbcbcbcbcbcbcb:ticket"
                .parse()
                .unwrap();
        assert!(p.allows(&offer(2, 1)));
        assert!(p.allows(&offer(5, 1)));
        assert!(!p.allows(&offer(1, 1)), "gives too little");
        assert!(!p.allows(&offer(2, 2)), "wants too much");
        let mut other = offer(2, 1);
        other.give.class.promise = "tea".into();
        assert!(!p.allows(&other), "another class");
        assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
    }

    #[test]
    fn bad_policies_name_their_fault() {
        for (text, why) in [
            ("", "no comma"),
            ("GIVE>=1:ca:coffee", "no comma"),
            (
                "GIVE<=1:cacacacacacacacacacacaca:c,WANT<=1:cacacacacacacacacacacaca:c",
                "GIVE>=",
            ),
            (
                "GIVE>=1:cacacacacacacacacacacaca:c,WANT>=1:cacacacacacacacacacacaca:c",
                "WANT<=",
            ),
            (
                "GIVE>=x:cacacacacacacacacacacaca:c,WANT<=1:cacacacacacacacacacacaca:c",
                "quantity",
            ),
            ("GIVE>=1:zz:c,WANT<=1:cacacacacacacacacacacaca:c", "issuer"),
            (
                "GIVE>=1:cacacacacacacacacacacaca:,WANT<=1:cacacacacacacacacacacaca:c",
                "promise",
            ),
            (
                "GIVE>=1:coffee,WANT<=1:cacacacacacacacacacacaca:c",
                "QTY:ISSUERHEX:PROMISE",
            ),
        ] {
            let e = text.parse::<Policy>().unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
