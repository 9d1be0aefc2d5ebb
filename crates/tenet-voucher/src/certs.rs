//! What a card checks of the TTP a host names for it: the TTP installed on
//! the card at personalization, and the TTP certificate pinned there.

use tenet_proto::EntityId;

/// Why a host may not name the TTP it did for a card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtpSwap {
    /// The card was personalized with no TTP.
    #[error(
        "the card has no TTP installed, so the host may not choose one ({wanted}); personalize the card with --ttp and --ttp-cert"
    )]
    NoneInstalled {
        /// The TTP the host named.
        wanted: EntityId,
    },
    /// The host named another TTP than the card's.
    #[error("the card was personalized for TTP {installed}; the host may not swap it for {wanted}")]
    Other {
        /// The TTP the card was personalized for.
        installed: EntityId,
        /// The TTP the host named.
        wanted: EntityId,
    },
    /// The TTP certificate pinned on the card does not name the TTP.
    #[error("the TTP certificate pinned on the card does not name {wanted}")]
    NotPinned {
        /// The TTP the host named.
        wanted: EntityId,
    },
}

/// Checks that a host's TTP `wanted` (`[card] ttp`, `tenet card serve
/// --ttp`) is the one the card was personalized for: the TTP id installed
/// on it, named by the TTP certificate pinned on it, if any.
pub fn check_ttp(
    installed: Option<EntityId>,
    pinned: Option<&[u8]>,
    wanted: EntityId,
) -> Result<(), TtpSwap> {
    match installed {
        None => Err(TtpSwap::NoneInstalled { wanted }),
        Some(installed) if installed != wanted => Err(TtpSwap::Other { installed, wanted }),
        Some(_) if pinned.is_some_and(|c| !tenet_pki::names(c, wanted)) => {
            Err(TtpSwap::NotPinned { wanted })
        }
        Some(_) => Ok(()),
    }
}
