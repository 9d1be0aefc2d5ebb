//! The voucher application's mtypes, defined here and nowhere else
//! (`0x0200-0x02ff`, the range `tenet_proto::mtype` reserves for it). The
//! protocol's messages are re-exported by [`crate::msg`], the card's
//! services by [`crate::card`]; the names in the proto registry are tied
//! to these numbers by a test.

use tenet_proto::Mtype;

/// start-exchange (privileged).
pub const START_EXCHANGE: Mtype = Mtype(0x0201);
/// offer `m1`.
pub const OFFER: Mtype = Mtype(0x0202);
/// accept (privileged).
pub const ACCEPT: Mtype = Mtype(0x0203);
/// agreement `m2`.
pub const AGREEMENT: Mtype = Mtype(0x0204);
/// confirmation `m3`.
pub const CONFIRMATION: Mtype = Mtype(0x0205);
/// commitment `m4`.
pub const COMMITMENT: Mtype = Mtype(0x0206);
/// recovery request to the TTP.
pub const RECOVERY_REQUEST: Mtype = Mtype(0x0207);
/// the TTP's admission.
pub const ADMISSION: Mtype = Mtype(0x0208);
/// order a card to recover an exchange now (privileged).
pub const RECOVER: Mtype = Mtype(0x0209);

/// Mint (privileged): an issuer's card creates vouchers of its own class.
pub const MINT: Mtype = Mtype(0x020a);
/// Progress report to the wallet app (tap-free notification).
pub const PROGRESS: Mtype = Mtype(0x020b);
/// Ask the card for its balances (privileged: holdings are private).
pub const BALANCE_REQUEST: Mtype = Mtype(0x020c);
/// The card's balances: a sequence of `Amount`s (`crate::model::Amount`).
pub const BALANCES: Mtype = Mtype(0x020d);

/// Register the wallet app that gets offers addressed to the card itself
/// (option 2a; privileged). Param: the app's id (16 bytes).
pub const SET_ACCEPTOR: Mtype = Mtype(0x0210);
/// The card's answer to [`SET_ACCEPTOR`], sent to the new acceptor: from
/// now on, offers addressed to the card go to it.
pub const ACCEPTOR_SET: Mtype = Mtype(0x0211);

/// Withdraw open offers (privileged, RFC 4154's cancel): those to the
/// card named in the param (16 bytes), or all with an empty param. Only an
/// offer no agreement has reached yet: nothing was deleted for it, and the
/// headroom it reserved is released. Refused if none matches.
pub const WITHDRAW: Mtype = Mtype(0x0212);

/// Present (privileged): the holder's wallet orders its card to show a
/// verifier that it holds an amount (`crate::present::PresentOrder`).
pub const PRESENT: Mtype = Mtype(0x0213);
/// The card's signed statement to the verifier
/// (`crate::present::Presentation`).
pub const PRESENTATION: Mtype = Mtype(0x0214);

/// Delegate (privileged): the issuer's wallet orders its card to let a
/// redeemer card redeem a class (`crate::redeem::DelegateOrder`).
pub const DELEGATE: Mtype = Mtype(0x0215);
/// The issuer card's signed delegation, to its wallet
/// (`crate::redeem::Delegation`).
pub const DELEGATION: Mtype = Mtype(0x0216);
/// Install a delegation on the redeemer's card (privileged).
pub const INSTALL_DELEGATION: Mtype = Mtype(0x0217);
/// Ask the card for its log of finished runs after a sequence number
/// (privileged; `crate::card::LogRequest`).
pub const LOG_REQUEST: Mtype = Mtype(0x0218);
/// The card's log (`crate::card::Log`).
pub const LOG: Mtype = Mtype(0x0219);

/// Ask the card for its exchanges (privileged).
pub const EXCHANGES_REQUEST: Mtype = Mtype(0x020e);
/// The card's exchanges: a sequence of `ExchangeSummary`s (`crate::card::ExchangeSummary`).
pub const EXCHANGES: Mtype = Mtype(0x020f);

/// Every voucher mtype and its name in the proto registry.
pub const ALL: &[(Mtype, &str)] = &[
    (START_EXCHANGE, "start-exchange"),
    (OFFER, "offer"),
    (ACCEPT, "accept"),
    (AGREEMENT, "agreement"),
    (CONFIRMATION, "confirmation"),
    (COMMITMENT, "commitment"),
    (RECOVERY_REQUEST, "recovery-request"),
    (ADMISSION, "admission"),
    (RECOVER, "recover"),
    (MINT, "mint"),
    (PROGRESS, "progress"),
    (BALANCE_REQUEST, "balance-request"),
    (BALANCES, "balances"),
    (EXCHANGES_REQUEST, "exchanges-request"),
    (EXCHANGES, "exchanges"),
    (SET_ACCEPTOR, "set-acceptor"),
    (ACCEPTOR_SET, "acceptor-set"),
    (WITHDRAW, "withdraw"),
    (PRESENT, "present"),
    (PRESENTATION, "presentation"),
    (DELEGATE, "delegate"),
    (DELEGATION, "delegation"),
    (INSTALL_DELEGATION, "install-delegation"),
    (LOG_REQUEST, "log-request"),
    (LOG, "log"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proto_registry_names_exactly_these_numbers() {
        for (m, name) in ALL {
            assert_eq!(m.name(), Some(*name), "{m:?}");
        }
        let in_registry: Vec<Mtype> = Mtype::registry()
            .map(|(m, _)| m)
            .filter(|m| (0x0200..=0x02ff).contains(&m.0))
            .collect();
        let mine: Vec<Mtype> = ALL.iter().map(|(m, _)| *m).collect();
        assert_eq!(in_registry.len(), mine.len());
        assert!(in_registry.iter().all(|m| mine.contains(m)));
    }
}
