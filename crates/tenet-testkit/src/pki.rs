//! The CA, the TTP's identity and the cards it personalizes.

use std::path::{Path, PathBuf};

use tenet_card::{Card, CardLimits, FileStore, Personalization, Storage, SystemEntropy};
use tenet_pki::HostFiles;
use tenet_proto::{Domain, EntityId};

use crate::{Error, PIN, PUK};

/// A certificate authority in a directory (`ca.pem`, `ca.key`, and the
/// files it issues beside them).
#[derive(Debug, Clone)]
pub struct Ca {
    dir: PathBuf,
}

/// The TTP's entity: its key and certificate from the [`Ca`], which a
/// TTP host signs with and cards are provisioned with.
#[derive(Debug, Clone)]
pub struct TtpIdentity {
    /// The TTP's entity, `DOMAIN:0` of the TTP host's software domain.
    pub id: EntityId,
    /// Its key and certificate files, and the CA's certificate.
    pub files: HostFiles,
    /// Its CV certificate, which cards pin.
    pub cert: Vec<u8>,
}

impl Ca {
    /// Makes a CA named `name` in `dir`, or takes the one that is there.
    pub fn create(dir: impl Into<PathBuf>, name: &str) -> Result<Self, Error> {
        let dir = dir.into();
        tenet_pki::ensure_ca(&dir, name)?;
        Ok(Self { dir })
    }

    /// The CA's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues the TTP's entity key and certificate for `id`, as files
    /// `NAME-entity.pem` and `.key`.
    pub fn ttp(&self, name: &str, id: EntityId) -> Result<TtpIdentity, Error> {
        let files = tenet_pki::issue_entity_key(&self.dir, name, id)?;
        let text = std::fs::read(&files.cert).map_err(|source| {
            Error::Cert(tenet_pki::CertError::Io {
                path: files.cert.clone(),
                source,
            })
        })?;
        let cert = tenet_pki::cv::from_pem(&text)
            .map_err(|e| Error::Cert(tenet_pki::CertError::Malformed(e.0)))?;
        Ok(TtpIdentity { id, files, cert })
    }

    /// Personalizes a card in `store`: domain `domain`, PIN `pin` (PUK
    /// [`PUK`]), its key made on the card, its certificate from this CA,
    /// and, with `ttp`, the voucher applet's data naming that TTP and
    /// pinning its certificate. The applet itself is not installed: a host
    /// installs it when it runs the card.
    pub fn card<S: Storage>(
        &self,
        store: S,
        domain: Domain,
        pin: &[u8],
        ttp: Option<&TtpIdentity>,
    ) -> Result<Card<S>, Error> {
        let p = Personalization {
            domain,
            pin: pin.to_vec(),
            puk: PUK.to_vec(),
        };
        let mut card =
            Card::personalize(store, &p, CardLimits::default(), Box::new(SystemEntropy))?;
        let public_key = card.state().public_key.clone();
        let (cert, ca_der) =
            tenet_pki::issue_entity(&self.dir, card.id(), &public_key)?.card_forms()?;
        card.install_certificates(cert, ca_der)?;
        if let Some(t) = ttp {
            card.provision(
                tenet_voucher_app::applet::APPLET_ID,
                tenet_voucher_app::applet::initial_data(t.id, Some(t.cert.clone())),
            )?;
        }
        Ok(card)
    }
}

/// Makes the store file `DIR/NAME.card` (32 KiB) of a card personalized by
/// `ca` for `ttp` ([`Ca::card`], PIN [`PIN`]) and returns its path, for a
/// host's `card.virtual_store`.
pub fn make_card(
    dir: &Path,
    ca: &Ca,
    name: &str,
    domain: Domain,
    ttp: &TtpIdentity,
) -> Result<PathBuf, Error> {
    let store = dir.join(format!("{name}.card"));
    ca.card(
        FileStore::create(&store, 32 * 1024)?,
        domain,
        PIN,
        Some(ttp),
    )?;
    Ok(store)
}

/// Makes the store file `path` (16 KiB) of a card without certificate or
/// applet data, PIN [`PIN`], in a random domain whose last four bytes are
/// `seed`; returns the domain. Enough for echoes and PIN checks.
pub fn blank_card(path: &Path, seed: u8) -> Result<Domain, Error> {
    let mut b = [seed; 12];
    getrandom::fill(&mut b[..8]).map_err(Error::Random)?;
    let domain = Domain::new(b);
    let p = Personalization {
        domain,
        pin: PIN.to_vec(),
        puk: PUK.to_vec(),
    };
    Card::personalize(
        FileStore::create(path, 16 * 1024)?,
        &p,
        CardLimits::default(),
        Box::new(SystemEntropy),
    )?;
    Ok(domain)
}
