//! Making and inspecting voucher cards (`tenet card new | info |
//! recertify | install-cert`): personalization with the CA's certificate
//! and the voucher applet's TTP, and the certificate checks before a card
//! stores one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tenet_card::{Card, CardError, CardLimits, FileStore, Personalization, SystemEntropy};
use tenet_proto::{Domain, EntityId};

use crate::applet;

/// Why a card could not be made or given a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The card refused.
    #[error(transparent)]
    Card(#[from] CardError),
    /// The card's store could not be made.
    #[error(transparent)]
    Store(#[from] tenet_card::StoreError),
    /// The CA could not issue the card's certificate.
    #[error("CA in {dir}: {source}")]
    Issue {
        /// The CA's folder.
        dir: PathBuf,
        /// Why.
        source: tenet_pki::CertError,
    },
    /// The certificate offered is not for this card.
    #[error(transparent)]
    NotIssued(#[from] tenet_pki::RequestError),
    /// The card's store is held by a daemon or another process.
    #[error(
        "card store {0} is held by a running daemon (or another process): stop it, or unblock through it with `tenet card pin unblock --card DOMAIN:0`"
    )]
    InUse(PathBuf),
    /// A wrong PUK.
    #[error(
        "wrong PUK: the PIN is unchanged; {0} PUK tries left before the card must be re-personalized"
    )]
    WrongPuk(u8),
    /// The PUK is blocked.
    #[error("the PUK of card {0} is blocked; the card must be re-personalized")]
    PukBlocked(EntityId),
    /// A certificate file could not be read.
    #[error("certificate file {path}: {reason}")]
    CertificateFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate comes from another CA than the card trusts.
    #[error("card {card} trusts another CA than {ca}; use the CA that personalized it")]
    OtherCa {
        /// The card.
        card: EntityId,
        /// The CA file offered.
        ca: PathBuf,
    },
}

/// What a new card gets.
pub struct NewCard {
    /// Its domain.
    pub domain: Domain,
    /// Its PIN and PUK.
    pub pin: String,
    /// Its PUK.
    pub puk: String,
    /// Bytes of store.
    pub capacity: usize,
    /// The CA folder that certifies it, for how many days.
    pub ca: Option<(PathBuf, u32)>,
    /// The TTP, its pinned CV certificate, and the recovery timeout.
    pub ttp: Option<(EntityId, Option<Vec<u8>>, u32)>,
}

/// Makes the card `store` (never overwritten; removed again if a step
/// fails) and returns it.
pub fn personalize(store: &Path, n: NewCard) -> Result<Card<FileStore>, AdminError> {
    let s = FileStore::create(store, n.capacity)?;
    let p = Personalization {
        domain: n.domain,
        pin: n.pin.into_bytes(),
        puk: n.puk.into_bytes(),
    };
    let made = Card::personalize(s, &p, CardLimits::default(), Box::new(SystemEntropy))
        .map_err(AdminError::from)
        .and_then(|mut card| {
            if let Some((dir, days)) = &n.ca {
                let public_key = card.state().public_key.clone();
                let life = tenet_pki::Lifetime::days(*days);
                let certs = tenet_pki::issue_entity_with(dir, card.id(), &public_key, life)
                    .map_err(|source| AdminError::Issue {
                        dir: dir.clone(),
                        source,
                    })?;
                let (cv, anchor) = certs.card_forms().map_err(|source| AdminError::Issue {
                    dir: dir.clone(),
                    source,
                })?;
                card.install_certificates(cv, anchor)?;
            }
            if let Some((t, cert, after)) = n.ttp {
                let data = applet::initial_data_with(t, cert, after);
                card.provision(applet::APPLET_ID, data)?;
            }
            Ok(card)
        });
    if made.is_err() {
        let _ = std::fs::remove_file(store);
    }
    made
}

/// Stores the card's forms of `certs` (its CV certificate and the CA's
/// anchor, `tenet_pki::cv`) on `card` once checked: the CA is the one the
/// card trusts, if any (`ca_path` names it), and the certificate, from it,
/// names the card and certifies its key, in both forms. Returns old and
/// new in words.
pub fn install(
    card: &mut Card<FileStore>,
    certs: &tenet_pki::CardCertificates,
    ca_path: &Path,
) -> Result<String, AdminError> {
    let id = card.id();
    let (cv, anchor) = certs
        .card_forms()
        .map_err(|e| tenet_pki::RequestError::NotIssued(e.to_string()))?;
    // A card personalized before CV certificates holds the CA's X.509
    // certificate: the same CA if its key is the anchor's.
    let trusts = |c: &Vec<u8>| {
        *c == anchor || tenet_pki::cv::Anchor::from_x509(c).is_ok_and(|a| a.to_bytes() == anchor)
    };
    if card
        .state()
        .ca_certificate
        .as_ref()
        .is_some_and(|c| !trusts(c))
    {
        return Err(AdminError::OtherCa {
            card: id,
            ca: ca_path.to_owned(),
        });
    }
    let new = tenet_pki::check_issued(
        &certs.x509,
        &certs.cv,
        &certs.ca,
        id,
        &card.state().public_key,
    )?;
    let before = card.state().certificate.as_deref().map(valid);
    card.install_certificates(cv, anchor)?;
    card.raise_clock_bound(tenet_proto::time::unix_now())?;
    let mut out = format!(
        "card {id}\npublic key {} (unchanged)\n",
        hex(&card.state().public_key)
    );
    if let Some(b) = before {
        let _ = writeln!(out, "old certificate {b}");
    }
    let _ = write!(out, "new certificate {new}");
    Ok(out)
}

/// Reads an entity's certificate file (`tenet ca sign`, `tenet ca
/// entity`): its X.509 certificate and, after it, its CV certificate.
pub fn read_certificate_file(path: &Path) -> Result<(Vec<u8>, Vec<u8>), AdminError> {
    let bad = |reason: String| AdminError::CertificateFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    tenet_pki::cv::both_from_pem(&text).map_err(|e| bad(e.0))
}

/// What `tenet card info` prints.
pub fn describe(card: &Card<FileStore>) -> String {
    let st = card.state();
    let mut out = format!(
        "card {}\npublic key {}\nPIN tries left {}\nnext port {}\n",
        card.id(),
        hex(&st.public_key),
        st.pin_tries,
        st.next_port
    );
    let _ = match st
        .certificate
        .as_deref()
        .map(tenet_pki::cv::CvCertificate::decode)
    {
        Some(Ok(c)) => writeln!(
            out,
            "certificate {} bytes (CV): holder {} ({}), CA key {}, {}\n  {}",
            st.certificate.as_ref().map_or(0, Vec::len),
            c.holder,
            c.role,
            c.authority,
            c.validity,
            hex(&c.to_bytes())
        ),
        Some(Err(e)) => writeln!(out, "certificate unreadable: {e}"),
        None => writeln!(out, "certificate none (personalize with --ca)"),
    };
    let data = applet::applet_data(st);
    let _ = writeln!(out, "{}", applet::describe_ttp(data));
    let _ = write!(
        out,
        "clock bound {}",
        tenet_card::clock::Utc(st.clock_bound)
    );
    out
}

/// Unblocks the PIN of the card in `store` (not held by a daemon) with
/// `puk`, setting `new_pin`; returns what happened in words.
pub fn unblock_offline(store: &Path, puk: &str, new_pin: &str) -> Result<String, AdminError> {
    let s = match FileStore::open(store) {
        Ok(s) => s,
        Err(tenet_card::StoreError::InUse(_)) => return Err(AdminError::InUse(store.to_owned())),
        Err(e) => return Err(e.into()),
    };
    let mut card = Card::open(s, CardLimits::default(), Box::new(SystemEntropy))?;
    let id = card.id();
    match card.unblock_pin(puk.as_bytes(), new_pin.as_bytes())? {
        tenet_card::Unblock::Unblocked => Ok(format!(
            "PIN of card {id} unblocked and set ({} tries)",
            card.state().pin_tries
        )),
        tenet_card::Unblock::WrongPuk { puk_tries_left } => {
            Err(AdminError::WrongPuk(puk_tries_left))
        }
        tenet_card::Unblock::PukBlocked => Err(AdminError::PukBlocked(id)),
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `valid .. to ..` of a CV certificate, in UTC.
pub fn valid(der: &[u8]) -> String {
    tenet_pki::validity(der).map_or_else(|e| format!("unreadable: {e}"), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A card personalized before CV certificates (it stored the X.509
    /// forms) is moved to the CV forms by its CA, and refuses another CA.
    #[test]
    fn a_card_holding_x509_forms_is_moved_to_cv_forms_by_its_own_ca_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = (dir.path().join("ca"), dir.path().join("other"));
        tenet_pki::ensure_ca(&ca, "test CA").unwrap();
        tenet_pki::ensure_ca(&other, "other CA").unwrap();
        let store = dir.path().join("c.card");
        let n = NewCard {
            domain: Domain::new([0xc1; 12]),
            pin: "1234".into(),
            puk: "12345678".into(),
            capacity: 16 * 1024,
            ca: None,
            ttp: None,
        };
        let mut card = personalize(&store, n).unwrap();
        let key = card.state().public_key.clone();
        let old = tenet_pki::issue_entity(&ca, card.id(), &key).unwrap();
        card.install_certificates(old.x509.clone(), old.ca.clone())
            .unwrap();
        let from_other = tenet_pki::issue_entity(&other, card.id(), &key).unwrap();
        let e = install(&mut card, &from_other, &other).unwrap_err();
        assert!(matches!(e, AdminError::OtherCa { .. }), "{e}");
        let new = tenet_pki::issue_entity(&ca, card.id(), &key).unwrap();
        install(&mut card, &new, &ca).unwrap();
        let (cv, anchor) = new.card_forms().unwrap();
        assert_eq!(card.state().certificate.as_ref(), Some(&cv));
        assert_eq!(card.state().ca_certificate.as_ref(), Some(&anchor));
        assert!(describe(&card).contains("(CV): holder"));
    }
}
