//! Message types (`mtype`, a big-endian u16 in the eTP header).
//!
//! [`Mtype`] is a newtype over the integer, so an mtype this build does not
//! know still round-trips and prints as hex (`0x7f01`). Known mtypes have a
//! name; names and hex both parse.
//!
//! Ranges (documented in `docs/wire.md`):
//!
//! | range           | owner                                   |
//! |-----------------|-----------------------------------------|
//! | `0x0000-0x00ff` | framework (echo, undeliverable, refused)|
//! | `0x0100-0x01ff` | card services (ports, PIN, info, time)  |
//! | `0x0200-0x02ff` | voucher application                     |
//! | `0x8000-0xffff` | free for applications                   |

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// An eTP message type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mtype(pub u16);

/// The registry: every mtype this build knows, with its name.
const REGISTRY: &[(Mtype, &str)] = &[
    (Mtype::ECHO_REQUEST, "echo-request"),
    (Mtype::ECHO_REPLY, "echo-reply"),
    (Mtype::UNDELIVERABLE, "undeliverable"),
    (Mtype::REFUSED, "refused"),
    (Mtype::VERIFY_PIN, "verify-pin"),
    (Mtype::PIN_STATUS, "pin-status"),
    (Mtype::UNBLOCK_PIN, "unblock-pin"),
    (Mtype::CHANGE_PIN, "change-pin"),
    (Mtype::LOGOUT, "logout"),
    (Mtype::CARD_INFO_REQUEST, "card-info-request"),
    (Mtype::CARD_INFO, "card-info"),
    (Mtype::SET_TIME, "set-time"),
    (Mtype::LOCK, "lock"),
    (Mtype(0x0201), "start-exchange"),
    (Mtype(0x0202), "offer"),
    (Mtype(0x0203), "accept"),
    (Mtype(0x0204), "agreement"),
    (Mtype(0x0205), "confirmation"),
    (Mtype(0x0206), "commitment"),
    (Mtype(0x0207), "recovery-request"),
    (Mtype(0x0208), "admission"),
    (Mtype(0x0209), "recover"),
    (Mtype(0x020a), "mint"),
    (Mtype(0x020b), "progress"),
    (Mtype(0x020c), "balance-request"),
    (Mtype(0x020d), "balances"),
    (Mtype(0x020e), "exchanges-request"),
    (Mtype(0x020f), "exchanges"),
    (Mtype(0x0210), "set-acceptor"),
    (Mtype(0x0211), "acceptor-set"),
    (Mtype(0x0212), "withdraw"),
    (Mtype(0x0213), "present"),
    (Mtype(0x0214), "presentation"),
    (Mtype(0x0215), "delegate"),
    (Mtype(0x0216), "delegation"),
    (Mtype(0x0217), "install-delegation"),
    (Mtype(0x0218), "log-request"),
    (Mtype(0x0219), "log"),
];

impl Mtype {
    /// Asks the destination to answer with [`Mtype::ECHO_REPLY`] carrying the
    /// same param. Every entity answers it.
    pub const ECHO_REQUEST: Mtype = Mtype(0x0001);
    /// The answer to an echo request; param is copied from the request.
    pub const ECHO_REPLY: Mtype = Mtype(0x0002);
    /// A host could not deliver a message; param is an
    /// [`Undeliverable`](crate::notice::Undeliverable) notice.
    pub const UNDELIVERABLE: Mtype = Mtype(0x0003);
    /// The destination refused a message (for example a privileged mtype from
    /// an unauthenticated sender); param is a
    /// [`Refused`](crate::notice::Refused) notice.
    pub const REFUSED: Mtype = Mtype(0x0004);

    /// Card service: verify the sending app's PIN
    /// ([`VerifyPin`](crate::card::VerifyPin)); answered by `pin-status`.
    pub const VERIFY_PIN: Mtype = Mtype(0x0101);
    /// Card service answer: [`PinStatus`](crate::card::PinStatus).
    pub const PIN_STATUS: Mtype = Mtype(0x0102);
    /// Card service: unblock the PIN with the PUK
    /// ([`UnblockPin`](crate::card::UnblockPin)).
    pub const UNBLOCK_PIN: Mtype = Mtype(0x0103);
    /// Card service, privileged: change the PIN
    /// ([`ChangePin`](crate::card::ChangePin)).
    pub const CHANGE_PIN: Mtype = Mtype(0x0104);
    /// Card service: remove the sender from the authenticated set.
    pub const LOGOUT: Mtype = Mtype(0x0105);
    /// Card service: ask for the card's [`CardInfo`](crate::card::CardInfo).
    pub const CARD_INFO_REQUEST: Mtype = Mtype(0x0106);
    /// Card service answer: [`CardInfo`](crate::card::CardInfo).
    pub const CARD_INFO: Mtype = Mtype(0x0107);
    /// Card service: the host's time for the card's clock
    /// ([`SetTime`](crate::card::SetTime)), sent by the smartcard proxy as
    /// the card's own id `DOMAIN:0` at attach and every `[card] clock_secs`
    /// (10 s by default); each time taken is also a tick on which the
    /// card's applets act by themselves. The only clock in the system; no
    /// answer unless refused.
    pub const SET_TIME: Mtype = Mtype(0x0108);
    /// Card service, privileged: end every authenticated session of the
    /// card at once (clear its authenticated-ID set), as pulling the card
    /// would; answered by `pin-status` "locked". No param.
    pub const LOCK: Mtype = Mtype(0x0109);

    /// The registered name, if this build knows the mtype.
    pub fn name(self) -> Option<&'static str> {
        REGISTRY.iter().find(|(m, _)| *m == self).map(|(_, n)| *n)
    }

    /// All registered mtypes and their names.
    pub fn registry() -> impl Iterator<Item = (Mtype, &'static str)> {
        REGISTRY.iter().copied()
    }
}

impl fmt::Display for Mtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#06x}", self.0),
        }
    }
}

impl fmt::Debug for Mtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mtype({self})")
    }
}

/// An mtype name that is neither registered nor hex.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown mtype {0:?}: use a registered name (echo-request, ...) or hex like 0x8001")]
pub struct MtypeParseError(pub String);

impl FromStr for Mtype {
    type Err = MtypeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((m, _)) = REGISTRY.iter().find(|(_, n)| n.eq_ignore_ascii_case(s)) {
            return Ok(*m);
        }
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| MtypeParseError(s.to_owned()))?;
        // Hex digits only: `from_str_radix` alone would also take a `+`.
        if hex.is_empty() || hex.len() > 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MtypeParseError(s.to_owned()));
        }
        u16::from_str_radix(hex, 16)
            .map(Mtype)
            .map_err(|_| MtypeParseError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_mtypes_print_names_unknown_print_hex() {
        assert_eq!(Mtype::ECHO_REQUEST.to_string(), "echo-request");
        assert_eq!(Mtype(0x7f01).to_string(), "0x7f01");
        assert_eq!("echo-reply".parse(), Ok(Mtype::ECHO_REPLY));
        assert_eq!("0x0001".parse(), Ok(Mtype::ECHO_REQUEST));
        assert!("no-such".parse::<Mtype>().is_err());
        assert!("0x12345".parse::<Mtype>().is_err());
    }

    #[test]
    fn registry_names_are_unique() {
        let names: std::collections::HashSet<_> = Mtype::registry().map(|(_, n)| n).collect();
        let codes: std::collections::HashSet<_> = Mtype::registry().map(|(m, _)| m).collect();
        assert_eq!(names.len(), REGISTRY.len());
        assert_eq!(codes.len(), REGISTRY.len());
    }

    proptest! {
        #[test]
        fn every_mtype_round_trips_through_text(n in any::<u16>()) {
            let m = Mtype(n);
            prop_assert_eq!(m.to_string().parse::<Mtype>(), Ok(m));
        }
    }
}
