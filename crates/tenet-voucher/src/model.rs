//! Vouchers after RFC 3506: an issuer makes a promise; a holder holds a
//! quantity of it. A voucher class is (issuer, promise); a card holds a
//! quantity per class; `v1` and `v2` in the exchange are [`Amount`]s.

use std::collections::BTreeMap;
use std::fmt;

use ring::digest;
use tenet_proto::codec::{Codec, DecodeError, Reader};
use tenet_proto::tlv::{self, Fields, Tag};
use tenet_proto::{Domain, EntityId};

/// Longest promise text in bytes.
pub const MAX_PROMISE: usize = 256;

/// The most a card holds of one class: 2^53 - 1, so that every balance,
/// and every balance plus the credits its pending exchanges may still
/// bring, is exact in a u64, in an IEEE double (JSON) and in the sums a
/// card makes. A mint beyond it is refused, and a card enters an exchange
/// only if it could apply either outcome without crossing it (see
/// `docs/vouchers.md`, "The cap").
pub const MAX_QUANTITY: u64 = (1 << 53) - 1;

/// A voucher class: who issues it and what it promises.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct VoucherClass {
    /// The issuer's domain (its card mints the class).
    pub issuer: Domain,
    /// The promise, e.g. "1 coffee at Cafe X".
    pub promise: String,
}

impl fmt::Display for VoucherClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.issuer, self.promise)
    }
}

const T_ISSUER: Tag = Tag(0x80);
const T_PROMISE: Tag = Tag(0x81);
const T_QTY: Tag = Tag(0x82);

fn class_fields(f: &Fields<'_>) -> Result<VoucherClass, DecodeError> {
    let promise = f.require(T_PROMISE, "promise")?;
    if promise.len() > MAX_PROMISE {
        return Err(DecodeError::TooLarge {
            what: "promise",
            len: promise.len(),
            max: MAX_PROMISE,
        });
    }
    Ok(VoucherClass {
        issuer: Domain::new(f.require_array(T_ISSUER, "issuer")?),
        promise: String::from_utf8(promise.to_vec()).map_err(|_| DecodeError::Invalid {
            what: "promise",
            detail: "not UTF-8".into(),
        })?,
    })
}

impl Codec for VoucherClass {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_ISSUER, self.issuer.bytes());
        tlv::write(out, T_PROMISE, self.promise.as_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_ISSUER, T_PROMISE], "voucher class")?;
        class_fields(&f)
    }
}

/// A quantity of one class.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Amount {
    /// The class.
    pub class: VoucherClass,
    /// How many; at least 1 in an exchange.
    pub quantity: u64,
}

/// Why the text of an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("amount {text:?}: {reason} (expected QTY:ISSUERHEX:PROMISE)")]
pub struct AmountParseError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The text form `QTY:ISSUERHEX:PROMISE`, as the CLI and the offer policy
/// take it; the promise is 1 to [`MAX_PROMISE`] bytes.
impl std::str::FromStr for Amount {
    type Err = AmountParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| AmountParseError {
            text: s.to_owned(),
            reason,
        };
        let mut parts = s.splitn(3, ':');
        let (Some(q), Some(i), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err("not QTY:ISSUERHEX:PROMISE".into()));
        };
        let quantity: u64 = q
            .parse()
            .map_err(|_| err(format!("quantity {q:?} is not a number")))?;
        if quantity > MAX_QUANTITY {
            return Err(err(format!(
                "quantity {quantity} is above the cap {MAX_QUANTITY} (2^53 - 1)"
            )));
        }
        let issuer: Domain = i.parse().map_err(|e| err(format!("issuer {i:?}: {e}")))?;
        if p.is_empty() || p.len() > MAX_PROMISE {
            return Err(err(format!("promise must be 1 to {MAX_PROMISE} bytes")));
        }
        Ok(Amount {
            class: VoucherClass {
                issuer,
                promise: p.to_owned(),
            },
            quantity,
        })
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} x {}", self.quantity, self.class)
    }
}

impl VoucherClass {
    /// The class's fields, as an [`Amount`] writes them before its
    /// quantity.
    pub(crate) fn encode_fields(&self, out: &mut Vec<u8>) {
        tlv::write(out, T_ISSUER, self.issuer.bytes());
        tlv::write(out, T_PROMISE, self.promise.as_bytes());
    }

    /// Reads what [`VoucherClass::encode_fields`] wrote.
    pub(crate) fn decode_fields(bytes: &[u8]) -> Result<Self, DecodeError> {
        let f = Fields::parse(bytes)?;
        f.only(&[T_ISSUER, T_PROMISE], "voucher class")?;
        class_fields(&f)
    }
}

impl Codec for Amount {
    fn encode(&self, out: &mut Vec<u8>) {
        self.class.encode_fields(out);
        tlv::write(out, T_QTY, &self.quantity.to_be_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T_ISSUER, T_PROMISE, T_QTY], "amount")?;
        Ok(Self {
            class: class_fields(&f)?,
            quantity: u64::from_be_bytes(f.require_array(T_QTY, "quantity")?),
        })
    }
}

/// SHA-256, the protocol's `h`.
pub fn h(parts: &[&[u8]]) -> [u8; 32] {
    let mut c = digest::Context::new(&digest::SHA256);
    let mut n = 0;
    for p in parts {
        c.update(&(p.len() as u32).to_be_bytes());
        c.update(p);
        n += 4 + p.len();
    }
    H_BLOCKS.with(|b| b.set(b.get() + (n as u64 + 9).div_ceil(64)));
    c.finish().as_ref().try_into().expect("32 bytes")
}

thread_local! {
    static H_BLOCKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// SHA-256 compression blocks [`h`] has run on this thread so far: the
/// voucher applet reports the difference across one message to a metered
/// card's timing model.
pub fn h_blocks() -> u64 {
    H_BLOCKS.with(std::cell::Cell::get)
}

/// A card's holdings.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Balances(BTreeMap<VoucherClass, u64>);

/// Why a balance change is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    /// Not enough of the class.
    #[error("holds {held} of {class}, needs {needed}")]
    Insufficient {
        /// The class.
        class: VoucherClass,
        /// What is held.
        held: u64,
        /// What is needed.
        needed: u64,
    },
    /// The quantity would cross [`MAX_QUANTITY`].
    #[error("{class}: holding {held} and adding {adding} would cross the cap {MAX_QUANTITY}")]
    AboveCap {
        /// The class.
        class: VoucherClass,
        /// What is held (with what pending exchanges may still credit,
        /// where the caller counts it).
        held: u64,
        /// What would be added.
        adding: u64,
    },
}

impl Balances {
    /// The quantity held of `class`.
    pub fn of(&self, class: &VoucherClass) -> u64 {
        self.0.get(class).copied().unwrap_or(0)
    }

    /// Every class held, with its quantity.
    pub fn iter(&self) -> impl Iterator<Item = (&VoucherClass, u64)> {
        self.0.iter().map(|(c, q)| (c, *q))
    }

    /// Adds `a`, unless the class would then cross [`MAX_QUANTITY`]. A
    /// class is held while its quantity is above zero (adding nothing to
    /// a class not held leaves it not held).
    pub fn credit(&mut self, a: &Amount) -> Result<(), BalanceError> {
        let held = self.of(&a.class);
        let q = fits_cap(&a.class, held, a.quantity)?;
        if q > 0 {
            self.0.insert(a.class.clone(), q);
        }
        Ok(())
    }

    /// Removes `a`, if held.
    pub fn debit(&mut self, a: &Amount) -> Result<(), BalanceError> {
        let held = self.of(&a.class);
        let left = held
            .checked_sub(a.quantity)
            .ok_or_else(|| BalanceError::Insufficient {
                class: a.class.clone(),
                held,
                needed: a.quantity,
            })?;
        if left == 0 {
            self.0.remove(&a.class);
        } else {
            self.0.insert(a.class.clone(), left);
        }
        Ok(())
    }

    /// The total quantity over all classes (for conservation checks).
    pub fn total(&self) -> u128 {
        self.0.values().map(|q| u128::from(*q)).sum()
    }
}

/// `held + adding`, if it stays within [`MAX_QUANTITY`].
pub fn fits_cap(class: &VoucherClass, held: u64, adding: u64) -> Result<u64, BalanceError> {
    held.checked_add(adding)
        .filter(|q| *q <= MAX_QUANTITY)
        .ok_or_else(|| BalanceError::AboveCap {
            class: class.clone(),
            held,
            adding,
        })
}

/// The id of a card, the party of an exchange.
pub type CardId = EntityId;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amount_text_is_qty_issuer_promise() {
        let a: Amount = "3:cacacacacacacacacacacaca:coffee".parse().unwrap();
        assert_eq!(
            (a.quantity, a.class.issuer, a.class.promise.as_str()),
            (3, Domain::new([0xca; 12]), "coffee")
        );
        for (text, why) in [
            ("3:coffee", "not QTY:ISSUERHEX:PROMISE"),
            ("x:cacacacacacacacacacacaca:coffee", "quantity"),
            ("3:zz:coffee", "issuer"),
            ("3:cacacacacacacacacacacaca:", "promise"),
            (
                "9007199254740992:cacacacacacacacacacacaca:coffee",
                "above the cap",
            ),
            (
                "18446744073709551615:cacacacacacacacacacacaca:coffee",
                "above the cap",
            ),
        ] {
            let e = text.parse::<Amount>().unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    fn coffee(q: u64) -> Amount {
        Amount {
            class: VoucherClass {
                issuer: Domain::new([1; 12]),
                promise: "1 coffee".into(),
            },
            quantity: q,
        }
    }

    #[test]
    fn balances_credit_and_debit() {
        let mut b = Balances::default();
        b.credit(&coffee(3)).unwrap();
        assert!(b.debit(&coffee(4)).is_err());
        assert_eq!(b.of(&coffee(0).class), 3, "a failed debit changes nothing");
        b.debit(&coffee(3)).unwrap();
        assert_eq!(b.iter().count(), 0);
        b.credit(&coffee(MAX_QUANTITY)).unwrap();
        assert!(matches!(
            b.credit(&coffee(1)),
            Err(BalanceError::AboveCap {
                held: MAX_QUANTITY,
                adding: 1,
                ..
            })
        ));
        assert_eq!(
            b.of(&coffee(0).class),
            MAX_QUANTITY,
            "a refused credit changes nothing"
        );
        let mut b = Balances::default();
        assert!(
            b.credit(&coffee(u64::MAX)).is_err(),
            "above the cap at once"
        );
        assert!(b.credit(&coffee(MAX_QUANTITY + 1)).is_err());
        assert_eq!(b.iter().count(), 0);
    }

    #[test]
    fn hash_separates_parts() {
        assert_ne!(h(&[b"ab", b"c"]), h(&[b"a", b"bc"]));
    }

    proptest! {
        #[test]
        fn amounts_round_trip(p in "[a-z ]{0,40}", q in any::<u64>(), d in any::<[u8; 12]>()) {
            let a = Amount { class: VoucherClass { issuer: Domain::new(d), promise: p }, quantity: q };
            prop_assert_eq!(Amount::decode(&a.to_bytes()), Ok(a));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Amount::decode(&b);
        }
    }
}
