//! The voucher applet: [`VoucherCard`] on a TENeT card, with the card's
//! ECDSA P-256 key and card-verifiable certificates (`tenet_pki::cv`).
//!
//! The applet keeps its whole state in the card's persistent store; the
//! runtime commits it with the outgoing messages in one atomic update.
//! Signatures are the card's (made inside the card, raw r || s);
//! certificates are checked against the CA anchor installed at
//! personalization (once per certificate while the card remembers it,
//! `tenet_pki::cache`), at the card's time ([`tenet_card::clock`]), and
//! must name the expected signer in its role (`tenet_pki::Signer`). A card whose own certificate
//! has expired refuses to start or accept an exchange (its peer would
//! refuse its signatures): `tenet card recertify` renews it.

use std::cell::RefCell;

use tenet_card::{Applet, AppletCx, Durability, Refusal};
use tenet_proto::codec::Codec;
use tenet_proto::{EntityId, Message, Mtype};

use tenet_pki::cache::{CertRef, CheckedCertificates, cert_ref};
use tenet_pki::{Signer, check_validity, validity, verify_at};
use tenet_voucher::card::{
    BALANCE_REQUEST, Ctx, DEFAULT_RECOVER_AFTER, EXCHANGES_REQUEST, LOG_REQUEST, MINT, Out,
    SET_ACCEPTOR, VoucherCard, WITHDRAW,
};
use tenet_voucher::certs::TtpSwap;
use tenet_voucher::crypto::{Crypto, VerifyError};
use tenet_voucher::msg;
use tenet_voucher::present::PRESENT;
use tenet_voucher::redeem::{DELEGATE, INSTALL_DELEGATION};

pub use tenet_pki::{verify_known, verify_with_ca};

struct CardCrypto<'c, 'a> {
    cx: &'c mut AppletCx<'a>,
    checked: RefCell<&'c mut CheckedCertificates>,
}

impl CardCrypto<'_, '_> {
    /// Checks `cert` (from the card's CA, at the card's time, naming
    /// `signer` in its role) and `sig` over `msg`, once against the CA per
    /// certificate while the card remembers it.
    fn verify_as(
        &self,
        signer: Signer,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        let ca = self
            .cx
            .ca_certificate
            .ok_or_else(|| VerifyError("no CA certificate installed on this card".into()))?;
        // The card's clock: its host's time, never below its bound.
        let time = self.cx.time;
        let mut checked = self.checked.borrow_mut();
        if checked.is_disabled() {
            // Two verifications for a timing model: the CA's signature over
            // the certificate (its length bounds the signed part), then
            // `sig`.
            self.cx.count_verify(cert.len());
            self.cx.count_verify(msg.len());
            return verify_at(ca, time, signer, cert, msg, sig).map(|_| ());
        }
        self.cx
            .count_hash_blocks(CheckedCertificates::hash_blocks(ca, cert));
        let key = CheckedCertificates::key(ca, cert);
        if let Some(v) = checked.lookup(&key) {
            check_validity(v, time, &format!("for {}", signer.id))?;
            self.cx.count_verify(msg.len());
            return verify_known(signer, cert, msg, sig);
        }
        self.cx.count_verify(cert.len());
        self.cx.count_verify(msg.len());
        let v = verify_at(ca, time, signer, cert, msg, sig)?;
        self.cx
            .count_hash_blocks(CheckedCertificates::reference_blocks(cert));
        checked.insert(key, v, signer.id, cert);
        Ok(())
    }
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
        self.verify_as(Signer::card(signer), cert, msg, sig)
    }

    fn verify_ttp(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify_as(Signer::entity(signer), cert, msg, sig)
    }

    fn random(&mut self, out: &mut [u8]) {
        self.cx.entropy.fill(out);
    }

    fn certificate_ref(&self) -> CertRef {
        let own = self.cx.certificate.unwrap_or_default();
        self.cx
            .count_hash_blocks(CheckedCertificates::reference_blocks(own));
        cert_ref(own)
    }

    fn known_reference(&self, peer: EntityId) -> Option<CertRef> {
        self.checked.borrow().reference_for(peer)
    }

    fn known_certificate(&self, peer: EntityId, r: &CertRef) -> Option<Vec<u8>> {
        self.checked
            .borrow()
            .certificate(peer, r)
            .map(<[u8]>::to_vec)
    }
}

/// The voucher applet.
#[derive(Debug, Clone, Default)]
pub struct VoucherApplet {
    /// The TTP its host names (host config `[card] ttp`, `tenet card serve
    /// --ttp`): it must be the one the card was personalized for
    /// ([`VoucherApplet::check_ttp`]), or the applet refuses everything.
    pub ttp: Option<EntityId>,
    /// The state last decoded or written, with its bytes: used again only
    /// while the stored data is exactly these bytes (card RAM, not state).
    cache: Option<(Vec<u8>, VoucherCard)>,
    /// Peer certificates already checked against the CA (card RAM).
    checked: CheckedCertificates,
    /// The TTP installed and pinned at personalization, once it was found
    /// to be `ttp` (they never change after; card RAM): the check is not
    /// made again for every message.
    ttp_checked: Option<(EntityId, Option<Vec<u8>>)>,
}

impl VoucherApplet {
    /// The applet, with the TTP its host names, if any: check it first
    /// with [`VoucherApplet::check_ttp`].
    pub fn new(ttp: Option<EntityId>) -> Self {
        Self {
            ttp,
            ..Self::default()
        }
    }

    /// Checks, at startup, that the TTP a host names for its card is the
    /// one the card was personalized for ([`tenet_voucher::certs::check_ttp`]):
    /// `data` is the applet's stored data (`CardState::applets`), absent
    /// on a card personalized without a TTP.
    pub fn check_ttp(data: Option<&[u8]>, wanted: EntityId) -> Result<(), TtpSwap> {
        let state = data
            .filter(|d| !d.is_empty())
            .and_then(|d| VoucherCard::decode(d).ok())
            .unwrap_or_default();
        tenet_voucher::certs::check_ttp(state.ttp, state.ttp_certificate.as_deref(), wanted)
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
/// pinning its CV certificate, written at personalization
/// (`Card::provision`).
pub fn initial_data(ttp: EntityId, ttp_certificate: Option<Vec<u8>>) -> Vec<u8> {
    initial_data_with(ttp, ttp_certificate, DEFAULT_RECOVER_AFTER)
}

/// [`initial_data`] with the card's recovery timeout: the seconds an
/// exchange may stay pending before the card asks the TTP by itself
/// ([`VoucherCard::tick`]); 0 leaves recovery to the wallet.
pub fn initial_data_with(
    ttp: EntityId,
    ttp_certificate: Option<Vec<u8>>,
    recover_after: u32,
) -> Vec<u8> {
    VoucherCard {
        ttp: Some(ttp),
        ttp_certificate,
        recover_after,
        ..VoucherCard::default()
    }
    .to_bytes()
}

/// The TTP the applet's stored `data` trusts and its recovery timeout, as
/// `tenet card info` shows them: the TTP's id, whether its certificate is
/// pinned, and when the card recovers by itself.
pub fn describe_ttp(data: Option<&[u8]>) -> String {
    match data.and_then(|d| VoucherCard::decode(d).ok()) {
        Some(VoucherCard {
            ttp: Some(t),
            ttp_certificate,
            recover_after,
            ..
        }) => {
            let pinned = ["not pinned", "pinned"][usize::from(ttp_certificate.is_some())];
            let recovery = match recover_after {
                0 => "recovery when a wallet orders it (tenet wallet recover)".to_owned(),
                s => format!("recovery by the card after {s} s pending, then with backoff"),
            };
            format!("TTP {t} (certificate {pinned})\n{recovery}")
        }
        _ => "TTP none (personalize with --ttp and --ttp-cert)".into(),
    }
}

/// The voucher applet's stored data on a card, if it has any.
pub fn applet_data(card: &tenet_card::state::CardState) -> Option<&[u8]> {
    card.applets.get(&APPLET_ID).map(Vec::as_slice)
}

/// The applet's id (keys its persistent data).
pub const APPLET_ID: u16 = 0x0200;

const HANDLED: [Mtype; 17] = [
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
    WITHDRAW,
    PRESENT,
    DELEGATE,
    INSTALL_DELEGATION,
    LOG_REQUEST,
];

const PRIVILEGED: [Mtype; 12] = [
    msg::START_EXCHANGE,
    msg::ACCEPT,
    msg::RECOVER,
    MINT,
    BALANCE_REQUEST,
    EXCHANGES_REQUEST,
    SET_ACCEPTOR,
    WITHDRAW,
    PRESENT,
    DELEGATE,
    INSTALL_DELEGATION,
    LOG_REQUEST,
];

impl VoucherApplet {
    /// Runs `f` on `state` with the card's keys as its context, then
    /// stores the state and sends what `f` returned; on a refusal, neither.
    fn step(
        &mut self,
        cx: &mut AppletCx<'_>,
        mut state: VoucherCard,
        ttp: EntityId,
        f: impl FnOnce(&mut VoucherCard, &mut Ctx<'_>) -> Result<Vec<Out>, Refusal>,
    ) -> Result<(), Refusal> {
        let hashed_before = tenet_voucher::model::h_blocks();
        let now = cx.time.now;
        let outs = {
            let mut crypto = CardCrypto {
                cx,
                checked: RefCell::new(&mut self.checked),
            };
            let mut ctx = Ctx {
                me: crypto.cx.card,
                ttp,
                wallet: None,
                crypto: &mut crypto,
                now,
            };
            f(&mut state, &mut ctx)?
        };
        cx.count_hash_blocks(tenet_voucher::model::h_blocks() - hashed_before);
        cx.data.clear();
        state.encode(cx.data);
        self.cache = Some((cx.data.clone(), state));
        for o in outs {
            cx.send(o.dst, o.mtype, o.param);
        }
        Ok(())
    }

    /// The stored state, from the cache while the stored bytes are the
    /// cached ones.
    fn load(&mut self, data: &[u8]) -> Result<(Vec<u8>, VoucherCard), Refusal> {
        Ok(match self.cache.take() {
            Some((bytes, state)) if bytes == *data => (bytes, state),
            _ if data.is_empty() => (Vec::new(), VoucherCard::default()),
            _ => (
                data.to_vec(),
                VoucherCard::decode(data)
                    .map_err(|e| Refusal(format!("stored voucher state unreadable: {e}")))?,
            ),
        })
    }
}

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
        let (bytes, state) = self.load(cx.data)?;
        let me = cx.card;
        let Some(ttp) = state.ttp else {
            return Err(Refusal(
                "no TTP installed on this card (tenet card new --ttp)".into(),
            ));
        };
        if let Some(wanted) = self.ttp {
            let pinned = state.ttp_certificate.as_deref();
            let checked = self
                .ttp_checked
                .as_ref()
                .is_some_and(|(t, c)| *t == ttp && c.as_deref() == pinned);
            if !checked {
                tenet_voucher::certs::check_ttp(state.ttp, pinned, wanted)
                    .map_err(|e| Refusal(e.to_string()))?;
                self.ttp_checked = Some((ttp, pinned.map(<[u8]>::to_vec)));
            }
        }
        if [msg::START_EXCHANGE, msg::ACCEPT, PRESENT, DELEGATE].contains(&m.mtype()) {
            let own = cx.certificate.unwrap_or_default();
            validity(own)
                .and_then(|v| check_validity(v, cx.time, "of this card"))
                .map_err(|e| Refusal(format!("{}; renew it: tenet card recertify", e.0)))?;
        }
        if tenet_voucher::card::may_lose_step(m.mtype()) {
            cx.set_durability(Durability::Unsynced);
        } else if tenet_voucher::card::reports_state(m.mtype()) {
            cx.set_durability(Durability::SyncFirst);
        }
        // A query only reads the state: the stored data stays as it is and
        // is not encoded again.
        let now = cx.time.now;
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
                now,
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
        self.step(cx, state, ttp, |s, ctx| {
            s.handle(ctx, m.src(), m.mtype(), &m.param)
                .map_err(|r| Refusal(r.0))
        })
    }

    /// A tick of the card's clock: exchanges pending longer than the card's
    /// recovery timeout are recovered with the TTP, and asked again with
    /// backoff ([`VoucherCard::tick`]). Nothing before the host has told
    /// the time since power-up, on a card without its certificates or TTP,
    /// or without pending exchanges.
    fn on_time(&mut self, cx: &mut AppletCx<'_>) -> Result<(), Refusal> {
        if !cx.time.from_host
            || cx.data.is_empty()
            || cx.certificate.is_none()
            || cx.ca_certificate.is_none()
        {
            return Ok(());
        }
        let (bytes, state) = self.load(cx.data)?;
        let waiting =
            state.pending().next().is_some() || state.offers.values().any(|o| o.expires.is_some());
        let Some(ttp) = state.ttp.filter(|_| waiting) else {
            self.cache = Some((bytes, state));
            return Ok(());
        };
        let now = cx.time.now;
        self.step(cx, state, ttp, |s, ctx| Ok(s.tick(ctx, now)))
    }
}
