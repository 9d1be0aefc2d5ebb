//! The voucher applet: [`VoucherCard`] on a TENeT card, with the card's
//! ECDSA P-256 key and X.509 certificates.
//!
//! The applet keeps its whole state in the card's persistent store; the
//! runtime commits it with the outgoing messages in one atomic update.
//! Signatures are the card's (made inside the card); certificates are
//! checked against the CA certificate installed at personalization (once
//! per certificate while the card remembers it, [`crate::checked`]), and
//! must name the expected signer as `DOMAIN-PORT.id.tenet`.

use std::cell::RefCell;

use pki_types::{CertificateDer, ServerName, UnixTime};
use tenet_card::{Applet, AppletCx, Refusal};
use tenet_proto::codec::Codec;
use tenet_proto::{EntityId, Message, Mtype};

use crate::card::{BALANCE_REQUEST, Ctx, EXCHANGES_REQUEST, MINT, SET_ACCEPTOR, VoucherCard};
use crate::checked::CheckedCertificates;
use crate::crypto::{Crypto, VerifyError};
use crate::msg;

/// The DER value of the id-kp-clientAuth OID; a certificate with an EKU
/// extension must allow it (card certificates have none).
const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Checks `cert` against `ca` at time `now`, that it names `signer`, and
/// `sig` over `msg`.
pub fn verify_with_ca(
    ca: &[u8],
    now: UnixTime,
    signer: EntityId,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let e = |what: &str, err: webpki::Error| VerifyError(format!("{what}: {err}"));
    let ca = CertificateDer::from(ca);
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|err| e("CA certificate", err))?;
    let cert = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&cert).map_err(|err| e("certificate", err))?;
    ee.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &[],
        now,
        webpki::KeyUsage::required_if_present(CLIENT_AUTH),
        None,
        None,
    )
    .map_err(|err| e("certificate chain", err))?;
    verify_signed_by(&ee, signer, msg, sig)
}

/// Checks that `cert`, already checked against the CA, names `signer`,
/// and `sig` over `msg`.
pub fn verify_known(
    signer: EntityId,
    cert: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let cert = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&cert)
        .map_err(|err| VerifyError(format!("certificate: {err}")))?;
    verify_signed_by(&ee, signer, msg, sig)
}

fn verify_signed_by(
    ee: &webpki::EndEntityCert<'_>,
    signer: EntityId,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let e = |what: &str, err: webpki::Error| VerifyError(format!("{what}: {err}"));
    let name = ServerName::try_from(signer.certificate_name())
        .map_err(|_| VerifyError("bad name".into()))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|err| e(&format!("certificate for {signer}"), err))?;
    ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, msg, sig)
        .map_err(|err| e("signature", err))
}

struct CardCrypto<'c, 'a> {
    cx: &'c mut AppletCx<'a>,
    checked: RefCell<&'c mut CheckedCertificates>,
}

impl Crypto for CardCrypto<'_, '_> {
    fn sign(&mut self, msg: &[u8]) -> Vec<u8> {
        self.cx.sign(msg)
    }

    fn certificate(&self) -> Vec<u8> {
        self.cx.certificate.map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn verify(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        let ca = self
            .cx
            .ca_certificate
            .ok_or_else(|| VerifyError("no CA certificate installed on this card".into()))?;
        // The card's time is what its host last told it; a card never told
        // falls back to the system clock of the virtual card's process.
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(self.cx.time.now));
        let mut checked = self.checked.borrow_mut();
        if checked.is_disabled() {
            // Two verifications for a timing model: the CA's signature over
            // the certificate (its DER length bounds the signed part), then
            // `sig`.
            self.cx.count_verify(cert.len());
            self.cx.count_verify(msg.len());
            return verify_with_ca(ca, now, signer, cert, msg, sig);
        }
        self.cx
            .count_hash_blocks(CheckedCertificates::hash_blocks(ca, cert));
        let key = CheckedCertificates::key(ca, cert);
        if checked.contains(&key, now) {
            self.cx.count_verify(msg.len());
            return verify_known(signer, cert, msg, sig);
        }
        self.cx.count_verify(cert.len());
        self.cx.count_verify(msg.len());
        verify_with_ca(ca, now, signer, cert, msg, sig)?;
        checked.insert(key, cert);
        Ok(())
    }

    fn random(&mut self, out: &mut [u8]) {
        self.cx.entropy.fill(out);
    }
}

/// The voucher applet.
#[derive(Debug, Clone, Default)]
pub struct VoucherApplet {
    /// A TTP that overrides the one installed at personalization (host
    /// config `[card] ttp`).
    pub ttp: Option<EntityId>,
    /// The state last decoded or written, with its bytes: used again only
    /// while the stored data is exactly these bytes (card RAM, not state).
    cache: Option<(Vec<u8>, VoucherCard)>,
    /// Peer certificates already checked against the CA (card RAM).
    checked: CheckedCertificates,
}

impl VoucherApplet {
    /// The applet, with a TTP that overrides the one installed at
    /// personalization, if given.
    pub fn new(ttp: Option<EntityId>) -> Self {
        Self {
            ttp,
            ..Self::default()
        }
    }

    /// The applet remembering up to `n` checked certificates instead of
    /// [`CheckedCertificates::CAPACITY`]; 0 checks every certificate
    /// against the CA every time (as the paper's card did).
    pub fn remembering_certificates(mut self, n: usize) -> Self {
        self.checked = CheckedCertificates::new(n);
        self
    }
}

/// The applet's initial persistent data naming the TTP and, if given,
/// pinning its certificate (DER), written at personalization
/// (`Card::provision`).
pub fn initial_data(ttp: EntityId, ttp_certificate: Option<Vec<u8>>) -> Vec<u8> {
    VoucherCard {
        ttp: Some(ttp),
        ttp_certificate,
        ..VoucherCard::default()
    }
    .to_bytes()
}

/// The applet's id (keys its persistent data).
pub const APPLET_ID: u16 = 0x0200;

const HANDLED: [Mtype; 12] = [
    msg::START_EXCHANGE,
    msg::ACCEPT,
    msg::AGREEMENT,
    msg::CONFIRMATION,
    msg::COMMITMENT,
    msg::RECOVER,
    msg::ADMISSION,
    MINT,
    BALANCE_REQUEST,
    EXCHANGES_REQUEST,
    SET_ACCEPTOR,
    msg::OFFER,
];

const PRIVILEGED: [Mtype; 7] = [
    msg::START_EXCHANGE,
    msg::ACCEPT,
    msg::RECOVER,
    MINT,
    BALANCE_REQUEST,
    EXCHANGES_REQUEST,
    SET_ACCEPTOR,
];

impl Applet for VoucherApplet {
    fn id(&self) -> u16 {
        APPLET_ID
    }

    fn name(&self) -> &'static str {
        "vouchers"
    }

    fn handles(&self, mtype: Mtype) -> bool {
        HANDLED.contains(&mtype)
    }

    fn privileged(&self) -> &[Mtype] {
        &PRIVILEGED
    }

    fn handle(&mut self, cx: &mut AppletCx<'_>, m: &Message) -> Result<(), Refusal> {
        if cx.certificate.is_none() || cx.ca_certificate.is_none() {
            return Err(Refusal("this card has no certificate yet".into()));
        }
        let (bytes, mut state) = match self.cache.take() {
            Some((bytes, state)) if bytes == *cx.data => (bytes, state),
            _ if cx.data.is_empty() => (Vec::new(), VoucherCard::default()),
            _ => (
                cx.data.clone(),
                VoucherCard::decode(cx.data)
                    .map_err(|e| Refusal(format!("stored voucher state unreadable: {e}")))?,
            ),
        };
        let me = cx.card;
        let Some(ttp) = self.ttp.or(state.ttp) else {
            return Err(Refusal(
                "no TTP installed on this card (tenet card new --ttp)".into(),
            ));
        };
        // A query only reads the state: the stored data stays as it is and
        // is not encoded again.
        let query = {
            let mut crypto = CardCrypto {
                cx,
                checked: RefCell::new(&mut self.checked),
            };
            let ctx = Ctx {
                me,
                ttp,
                wallet: None,
                crypto: &mut crypto,
            };
            state.query(&ctx, m.src(), m.mtype(), &m.param)
        };
        if let Some(outs) = query {
            self.cache = Some((bytes, state));
            for o in outs.map_err(|r| Refusal(r.0))? {
                cx.send(o.dst, o.mtype, o.param);
            }
            return Ok(());
        }
        let hashed_before = crate::model::h_blocks();
        let outs = {
            let mut crypto = CardCrypto {
                cx,
                checked: RefCell::new(&mut self.checked),
            };
            let mut ctx = Ctx {
                me,
                ttp,
                wallet: None,
                crypto: &mut crypto,
            };
            state
                .handle(&mut ctx, m.src(), m.mtype(), &m.param)
                .map_err(|r| Refusal(r.0))?
        };
        cx.count_hash_blocks(crate::model::h_blocks() - hashed_before);
        cx.data.clear();
        state.encode(cx.data);
        self.cache = Some((cx.data.clone(), state));
        for o in outs {
            cx.send(o.dst, o.mtype, o.param);
        }
        Ok(())
    }
}
