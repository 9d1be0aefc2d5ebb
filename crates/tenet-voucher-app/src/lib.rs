//! # tenet-voucher-app: the voucher application, plugged into a host
//!
//! The protocol of `tenet-voucher` made into the three parts a host runs,
//! through the host's plug-in API ([`tenet_host::plugin`]) only:
//!
//! - [`applet`]: the card applet ([`applet::VoucherApplet`]) on the
//!   in-process virtual card, checked against the TTP the host names.
//! - [`offers`]: the offer guard, holding offers to the card for its
//!   acceptor app (option 2a), with the host's `[guard.offers]` policy.
//! - [`ttp`]: the TTP service of the host's own entity, keeping each
//!   decision in SQLite or PostgreSQL (`[ttp]`).
//!
//! [`plug`] adds what a config asks for to a [`HostBuilder`]; [`start`]
//! starts such a host (what `tenet host` and `tenet ttp` run).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod applet;
pub mod offers;
pub mod ttp;

use tenet_host::config::{Config, ConfigError, Settings};
use tenet_host::plugin::{HostBuilder, ServiceError};
use tenet_host::{HostError, HostHandle};
use tenet_proto::EntityId;
use tenet_voucher::certs::TtpSwap;
use tenet_voucher::policy::{Policy, PolicyError, RedeemPolicy, RedeemPolicyError};

/// `[guard.offers] policy`, parsed.
pub fn offer_policy(config: &Config) -> Result<Option<Policy>, ConfigError> {
    config
        .guard
        .offers
        .policy
        .as_deref()
        .map(|p| {
            p.parse().map_err(|e: PolicyError| ConfigError::Value {
                key: "guard.offers.policy",
                detail: e.to_string(),
            })
        })
        .transpose()
}

/// `[guard.offers] redeem`, parsed.
pub fn redeem_policy(config: &Config) -> Result<Option<RedeemPolicy>, ConfigError> {
    let text = config.guard.offers.redeem.as_deref();
    text.map(|p| {
        p.parse()
            .map_err(|e: RedeemPolicyError| ConfigError::Value {
                key: "guard.offers.redeem",
                detail: e.to_string(),
            })
    })
    .transpose()
}

/// Checks the values of the voucher application's keys (`[guard.offers]`,
/// `[ttp]`) that the host's own check leaves alone.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    offer_policy(config)?;
    redeem_policy(config)?;
    if config.ttp.as_ref().is_some_and(|t| t.postgres.is_some()) && !cfg!(feature = "postgres") {
        return Err(ConfigError::Value {
            key: "ttp.postgres",
            detail: "this build has no PostgreSQL support; rebuild with `--features postgres`"
                .into(),
        });
    }
    Ok(())
}

/// Why the applet refuses to start: the host names another TTP
/// (`[card] ttp`) than the card was personalized for.
#[derive(Debug, thiserror::Error)]
#[error("[card] ttp = \"{ttp}\": {swap}")]
pub struct WrongTtp {
    /// The TTP the host names.
    pub ttp: EntityId,
    /// Why the card does not take it.
    pub swap: TtpSwap,
}

/// Adds the voucher application to `host` as `config` asks: the applet on
/// the virtual card (checked against `[card] ttp`), the offer guard, and
/// `ttp`, the TTP service opened from `[ttp]` ([`open_ttp`]).
pub fn plug<'a>(
    host: HostBuilder<'a>,
    config: &'a Config,
    ttp: Option<ttp::TtpService>,
) -> Result<HostBuilder<'a>, HostError> {
    let settings = Settings::try_from(config)?;
    validate(config)?;
    let card_ttp = settings.card_ttp;
    let mut host = host
        .applet(Box::new(move |card| {
            if let Some(t) = card_ttp {
                // The host may only name the TTP the card was personalized
                // for: a host owner cannot swap it.
                let data = card.applets.get(&applet::APPLET_ID).map(Vec::as_slice);
                applet::VoucherApplet::check_ttp(data, t)
                    .map_err(|swap| WrongTtp { ttp: t, swap })?;
            }
            Ok(Box::new(applet::VoucherApplet::new(card_ttp)))
        }))
        .card_guard(Box::new(
            offers::OfferGuard::new(offer_policy(config)?).redeeming(redeem_policy(config)?),
        ));
    if let Some(service) = ttp {
        host = host.service(Box::new(service));
    }
    Ok(host)
}

/// Opens the TTP service `[ttp]` asks for, if any, off the async workers
/// (a PostgreSQL client runs its own runtime; SQLite writes a file).
pub async fn open_ttp(config: &Config) -> Result<Option<ttp::TtpService>, HostError> {
    validate(config)?;
    let Some(t) = config.ttp.clone() else {
        return Ok(None);
    };
    let dir = config.state_dir();
    tokio::task::spawn_blocking(move || -> Result<_, HostError> {
        tenet_host::state::ensure_dir(&dir)?;
        ttp::TtpService::open(&t, &dir).map_err(|e| HostError::Ttp(ServiceError::Plugin(e.into())))
    })
    .await
    .map_err(|e| HostError::Ttp(ServiceError::Plugin(e.into())))?
    .map(Some)
}

/// Starts a host from `config` with the voucher application plugged in.
pub async fn start(config: &Config) -> Result<HostHandle, HostError> {
    config.validate()?;
    let ttp = open_ttp(config).await?;
    plug(HostBuilder::new(config), config, ttp)?.start().await
}
