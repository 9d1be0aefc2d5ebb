//! The card: its APDU front end, the applet runtime and the card services.
//!
//! Sans-IO: [`Card::process_apdu`] takes command bytes and returns response
//! bytes; the power line is [`Card::power_off`] / [`Card::reset`]. The only
//! side effect is the [`Storage`] it was given. The APDU mapping is
//! documented in `docs/apdu.md`.
//!
//! PINs and PUKs are stored as Argon2id hashes ([`SecretHash`]), made with
//! [`KdfParams::CURRENT`]; a hash made otherwise (SHA-256 in stores
//! written before, or older parameters) is checked as it was made and
//! replaced by a current one at the next successful use of the secret.
//! Comparisons are constant-time.

use std::collections::{BTreeSet, VecDeque};

use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
};
use tenet_proto::apdu::{CLA_CHAINING, Command, Response, StatusWord, compact, tenet};
use tenet_proto::card::{
    CardInfo, ChangePin, PinOutcome, PinStatus, SetTime, UnblockPin, VerifyPin, check_pin,
};
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, DecodeError, Domain, EntityId, MAX_MESSAGE_LEN, Message, Mtype, Port};
use tracing::{debug, error};

use crate::applet::{Applet, AppletCx, Durability, Entropy, Refusal};
use crate::clock::{CardTime, Clock, ClockRefusal};
use crate::state::{CardState, KdfParams, PIN_TRIES, PUK_TRIES, SECRET_HASH_LEN, SecretHash};
use crate::store::{Storage, StoreError};
use crate::timing::Meter;

/// The card's answer to reset: T=1 only, no historical bytes. TS `3B`
/// (direct convention), T0 `80` (TD1 follows, no historical bytes), TD1
/// `01` (T=1, nothing follows), TCK `81` (T0 to TCK XOR to zero).
pub const ATR: &[u8] = &[0x3b, 0x80, 0x01, 0x81];

fn status(sw: StatusWord) -> Vec<u8> {
    Response::status(sw).to_bytes()
}

/// Limits a card enforces besides its storage budget (the store's capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardLimits {
    /// Largest eTP message accepted or emitted.
    pub max_message: usize,
}

impl Default for CardLimits {
    fn default() -> Self {
        Self {
            max_message: MAX_MESSAGE_LEN,
        }
    }
}

/// What personalization writes onto a blank card.
#[derive(Debug, Clone)]
pub struct Personalization {
    /// The card's domain.
    pub domain: Domain,
    /// The PIN, 4 to 12 digits.
    pub pin: Vec<u8>,
    /// The PUK, 4 to 12 digits.
    pub puk: Vec<u8>,
}

/// Why a card cannot be opened or personalized.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store holds no card yet.
    #[error("the card store is blank; personalize it with `tenet card new`")]
    Blank,
    /// The store already holds a card.
    #[error("the card store already holds a personalized card")]
    AlreadyPersonalized,
    /// The stored record is unreadable.
    #[error("the card's stored state is corrupt: {0}")]
    Corrupt(DecodeError),
    /// The key could not be made or loaded.
    #[error("card key: {0}")]
    Key(String),
    /// A PIN or PUK is malformed.
    #[error("{0}")]
    BadSecret(DecodeError),
    /// A PIN or PUK could not be hashed (the memory Argon2id needs could
    /// not be had); nothing changed.
    #[error("the card could not hash the PIN or PUK: {0}")]
    Hash(HashError),
}

/// Why a PIN or PUK could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The parameters are not ones Argon2id takes (a stored hash made
    /// with parameters this build refuses).
    #[error("invalid Argon2id parameters {0:?}")]
    Params(KdfParams),
    /// Argon2id failed (the memory it needs could not be had).
    #[error("{0}")]
    Argon2(argon2::Error),
}

/// What an unblock with the PUK did ([`Card::unblock_pin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unblock {
    /// The PUK was right: the PIN is the new one, with all its tries, and
    /// the PUK has all its tries again.
    Unblocked,
    /// The PUK was wrong; the PIN is unchanged.
    WrongPuk {
        /// Wrong PUKs left before the PUK blocks for good.
        puk_tries_left: u8,
    },
    /// The PUK is blocked: only re-personalization helps. Nothing was
    /// tried.
    PukBlocked,
}

/// Why a host time was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SetTimeError {
    /// The card refused it ([`crate::clock`]); nothing changed.
    #[error(transparent)]
    Refused(#[from] ClockRefusal),
    /// The store failed while moving the clock's bound; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct PendingResponse {
    bytes: Vec<u8>,
    off: usize,
    sw: StatusWord,
    from_outbox: bool,
}

/// The form of messages on the card link: whole eTP messages (applet
/// version 1, [`tenet::AID`]) or the compact form (version 2,
/// [`tenet::AID_COMPACT`], `tenet_proto::apdu::compact`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Full,
    Compact,
}

struct Chain {
    ins: u8,
    data: Vec<u8>,
}

/// A TENeT smartcard.
pub struct Card<S: Storage> {
    store: S,
    state: CardState,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    limits: CardLimits,
    entropy: Box<dyn Entropy>,
    applets: Vec<Box<dyn Applet>>,
    /// The form messages take on the link, by the AID selected; `None`
    /// before a SELECT.
    selected: Option<Form>,
    authenticated: BTreeSet<EntityId>,
    outbox: VecDeque<Message>,
    chain: Option<Chain>,
    pending: Option<PendingResponse>,
    clock: Clock,
    meter: Option<Meter>,
    /// The buffer the store record is encoded into, kept between commits.
    record: Vec<u8>,
}

/// Which secret a hash is of: its label follows the card's salt in the
/// Argon2id salt, so a PIN and a PUK that are the same digits never hash
/// alike.
#[derive(Debug, Clone, Copy)]
enum Secret {
    Pin,
    Puk,
}

impl Secret {
    fn label(self) -> &'static [u8; 3] {
        match self {
            Self::Pin => b"PIN",
            Self::Puk => b"PUK",
        }
    }
}

/// Argon2id (version 0x13) of `secret`, salted with `salt ‖ label`.
fn argon2id(
    params: KdfParams,
    salt: &[u8; 16],
    which: Secret,
    secret: &[u8],
) -> Result<[u8; SECRET_HASH_LEN], HashError> {
    let p = params.argon2().ok_or(HashError::Params(params))?;
    let mut s = [0u8; 19];
    s[..16].copy_from_slice(salt);
    s[16..].copy_from_slice(which.label());
    let mut out = [0u8; SECRET_HASH_LEN];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p)
        .hash_password_into(secret, &s, &mut out)
        .map_err(HashError::Argon2)?;
    Ok(out)
}

/// A new hash of `secret`, with the current parameters.
fn secret_hash(salt: &[u8; 16], which: Secret, secret: &[u8]) -> Result<SecretHash, CardError> {
    let params = KdfParams::CURRENT;
    let hash = argon2id(params, salt, which, secret).map_err(CardError::Hash)?;
    Ok(SecretHash::Argon2id { params, hash })
}

/// Whether `secret` is the one `stored` was made from, compared in
/// constant time. A hash that cannot be computed (no memory) never
/// matches.
fn secret_matches(stored: &SecretHash, salt: &[u8; 16], which: Secret, secret: &[u8]) -> bool {
    match stored {
        SecretHash::Sha256(h) => {
            // The layout before Argon2id: SHA-256(salt ‖ secret).
            let mut ctx = digest::Context::new(&digest::SHA256);
            ctx.update(salt);
            ctx.update(secret);
            ct_eq(ctx.finish().as_ref(), h)
        }
        SecretHash::Argon2id { params, hash } => match argon2id(*params, salt, which, secret) {
            Ok(h) => ct_eq(&h, hash),
            Err(e) => {
                error!(error = %e, ?which, "cannot hash the secret; taken as wrong");
                false
            }
        },
    }
}

/// `stored` replaced by a current hash of `secret` when it needs an
/// upgrade (called after `secret` matched it). If the new hash cannot be
/// made, the old one stays: it still works.
fn upgraded(stored: &SecretHash, salt: &[u8; 16], which: Secret, secret: &[u8]) -> SecretHash {
    if !stored.needs_upgrade() {
        return stored.clone();
    }
    match secret_hash(salt, which, secret) {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, ?which, "cannot upgrade the secret's hash; kept");
            stored.clone()
        }
    }
}

/// Randomness that tells the meter how much was drawn.
struct CountedEntropy<'a> {
    inner: &'a mut dyn Entropy,
    meter: &'a Meter,
}

impl Entropy for CountedEntropy<'_> {
    fn fill(&mut self, buf: &mut [u8]) {
        self.meter.random(buf.len());
        self.inner.fill(buf);
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The card's key, signing as the card link wants: raw r || s (64 bytes).
fn load_key(pkcs8: &[u8], rng: &SystemRandom) -> Result<EcdsaKeyPair, CardError> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, rng)
        .map_err(|e| CardError::Key(e.to_string()))
}

impl<S: Storage> Card<S> {
    /// Personalizes a blank store: the card generates its key pair, which
    /// never leaves it, and stores the PIN and PUK hashes. The bound of
    /// its clock ([`crate::clock`]) is this machine's time.
    pub fn personalize(
        mut store: S,
        p: &Personalization,
        limits: CardLimits,
        mut entropy: Box<dyn Entropy>,
    ) -> Result<Self, CardError> {
        if store.load()?.is_some() {
            return Err(CardError::AlreadyPersonalized);
        }
        check_pin(&p.pin, "PIN").map_err(CardError::BadSecret)?;
        check_pin(&p.puk, "PUK").map_err(CardError::BadSecret)?;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| CardError::Key(e.to_string()))?;
        let key = load_key(pkcs8.as_ref(), &rng)?;
        let mut salt = [0u8; 16];
        entropy.fill(&mut salt);
        let state = CardState {
            domain: p.domain,
            key_pkcs8: pkcs8.as_ref().to_vec(),
            public_key: key.public_key().as_ref().to_vec(),
            salt,
            pin_hash: secret_hash(&salt, Secret::Pin, &p.pin)?,
            pin_tries: PIN_TRIES,
            puk_hash: secret_hash(&salt, Secret::Puk, &p.puk)?,
            puk_tries: PUK_TRIES,
            next_port: 1,
            certificate: None,
            ca_certificate: None,
            clock_bound: tenet_proto::time::unix_now().min(crate::clock::MAX_TIME),
            applets: Default::default(),
        };
        store.commit(&state.to_bytes())?;
        Ok(Self::assemble(store, state, key, rng, limits, entropy))
    }

    /// Opens a personalized card from its store.
    pub fn open(
        mut store: S,
        limits: CardLimits,
        entropy: Box<dyn Entropy>,
    ) -> Result<Self, CardError> {
        let record = store.load()?.ok_or(CardError::Blank)?;
        let state = CardState::decode(&record).map_err(CardError::Corrupt)?;
        let rng = SystemRandom::new();
        let key = load_key(&state.key_pkcs8, &rng)?;
        Ok(Self::assemble(store, state, key, rng, limits, entropy))
    }

    fn assemble(
        store: S,
        state: CardState,
        key: EcdsaKeyPair,
        rng: SystemRandom,
        limits: CardLimits,
        entropy: Box<dyn Entropy>,
    ) -> Self {
        Self {
            store,
            state,
            key,
            rng,
            limits,
            entropy,
            applets: Vec::new(),
            selected: None,
            authenticated: BTreeSet::new(),
            outbox: VecDeque::new(),
            chain: None,
            pending: None,
            clock: Clock::default(),
            meter: None,
            record: Vec::new(),
        }
    }

    /// Stores the card's CV certificate and the CA anchor it trusts
    /// (`tenet_pki::cv`; personalization, after the CA signed the card's
    /// public key).
    pub fn install_certificates(
        &mut self,
        certificate: Vec<u8>,
        ca: Vec<u8>,
    ) -> Result<(), CardError> {
        let mut s = self.state.clone();
        s.certificate = Some(certificate);
        s.ca_certificate = Some(ca);
        self.commit(s)?;
        Ok(())
    }

    /// Signs `info`, the signed part of a certificate request for this
    /// card's key (ECDSA P-256, SHA-256, ASN.1 DER): personalization away
    /// from the CA (`tenet card csr`), with the store file at hand. No APDU
    /// reaches it.
    pub fn sign_certificate_request(&self, info: &[u8]) -> Vec<u8> {
        // A certificate request's signature is ASN.1 DER, unlike the card
        // link's.
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &self.state.key_pkcs8,
            &self.rng,
        )
        .ok()
        .and_then(|k| k.sign(&self.rng, info).ok())
        .map(|s| s.as_ref().to_vec())
        .unwrap_or_default()
    }

    /// Writes an applet's initial persistent data (personalization).
    pub fn provision(&mut self, applet: u16, data: Vec<u8>) -> Result<(), CardError> {
        let mut s = self.state.clone();
        s.applets.insert(applet, data);
        self.commit(s)?;
        Ok(())
    }

    /// Installs an applet.
    pub fn install(&mut self, applet: Box<dyn Applet>) {
        self.applets.push(applet);
    }

    /// The card's id, `domain:0`.
    pub fn id(&self) -> EntityId {
        self.state.domain.owner()
    }

    /// The persistent state (for tests and inspection; holds no way to get
    /// the private key out: [`CardState`]'s `Debug` hides it and nothing
    /// sends it).
    pub fn state(&self) -> &CardState {
        &self.state
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Mutable access to the store (tests inject failures through it).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Ids in the authenticated set.
    pub fn authenticated(&self) -> impl Iterator<Item = &EntityId> {
        self.authenticated.iter()
    }

    /// Mtypes accepted only from authenticated senders.
    pub fn privileged(&self) -> Vec<Mtype> {
        let mut p = vec![Mtype::CHANGE_PIN, Mtype::LOCK];
        for a in &self.applets {
            p.extend_from_slice(a.privileged());
        }
        p
    }

    /// What the card says about itself.
    pub fn info(&self) -> CardInfo {
        CardInfo {
            domain: self.state.domain,
            public_key: self.state.public_key.clone(),
            privileged: self.privileged(),
            max_message: self.limits.max_message as u32,
            certificate: self.state.certificate.clone(),
        }
    }

    /// Turns operation counting for a timing model on (`Some`) or off.
    /// Off, the card does no counting work.
    pub fn set_meter(&mut self, meter: Option<Meter>) {
        self.meter = meter;
    }

    /// The meter, when counting is on.
    pub fn meter(&self) -> Option<&Meter> {
        self.meter.as_ref()
    }

    /// The card's time ([`crate::clock`]).
    pub fn time(&self) -> CardTime {
        self.clock.time(self.state.clock_bound)
    }

    /// Takes the host's time `now` (seconds since the Unix epoch), as the
    /// `set-time` service does, with `elapsed` the real time since the
    /// previous one: refused if far below the clock's bound, which it may
    /// move forward ([`crate::clock`]). Returns the card's time.
    pub fn set_time(&mut self, now: u64, elapsed: Option<u64>) -> Result<CardTime, SetTimeError> {
        let bound = self.state.clock_bound;
        let raised = self.clock.check(now, elapsed, bound)?;
        if let Some(b) = raised {
            let mut s = self.state.clone();
            s.clock_bound = b;
            self.commit(s)?;
        }
        self.clock.accept(now, elapsed, raised.is_some());
        Ok(self.time())
    }

    /// Raises the bound of the card's clock to `now` if it is earlier
    /// (personalization, `tenet card recertify`: the personalizing
    /// machine's time, taken without the limits host times have).
    pub fn raise_clock_bound(&mut self, now: u64) -> Result<(), CardError> {
        if now > self.state.clock_bound {
            let mut s = self.state.clone();
            s.clock_bound = now.min(crate::clock::MAX_TIME);
            self.commit(s)?;
        }
        Ok(())
    }

    /// Power off: everything volatile is lost (selection, authenticated
    /// set, unsent messages, chains, the host's time); the store is kept.
    pub fn power_off(&mut self) {
        self.clock = Clock::default();
        self.selected = None;
        self.authenticated.clear();
        self.outbox.clear();
        self.chain = None;
        self.pending = None;
    }

    /// Ends every authenticated session at once (the `lock` service): the
    /// authenticated-ID set is emptied, as a power cycle would, and
    /// nothing else changes. Returns how many sessions ended.
    pub fn lock(&mut self) -> usize {
        let n = self.authenticated.len();
        self.authenticated.clear();
        n
    }

    /// Unblocks the PIN with the PUK and sets `new_pin`, as the
    /// `unblock-pin` service does (`tenet card pin unblock --store` calls
    /// it on a card no daemon holds). A PUK try is counted in the store
    /// before the comparison.
    pub fn unblock_pin(&mut self, puk: &[u8], new_pin: &[u8]) -> Result<Unblock, CardError> {
        check_pin(puk, "PUK").map_err(CardError::BadSecret)?;
        check_pin(new_pin, "new PIN").map_err(CardError::BadSecret)?;
        if self.state.puk_tries == 0 {
            return Ok(Unblock::PukBlocked);
        }
        let mut s = self.state.clone();
        s.puk_tries -= 1;
        self.commit(s)?;
        let salt = self.state.salt;
        if !secret_matches(&self.state.puk_hash, &salt, Secret::Puk, puk) {
            return Ok(Unblock::WrongPuk {
                puk_tries_left: self.state.puk_tries,
            });
        }
        let mut s = self.state.clone();
        s.puk_tries = PUK_TRIES;
        match secret_hash(&salt, Secret::Pin, new_pin) {
            Ok(h) => {
                s.pin_tries = PIN_TRIES;
                s.pin_hash = h;
                s.puk_hash = upgraded(&s.puk_hash, &salt, Secret::Puk, puk);
                self.commit(s)?;
                Ok(Unblock::Unblocked)
            }
            Err(e) => {
                // The right PUK costs no try, even when the new PIN could
                // not be hashed; the PIN stays as it was.
                self.commit(s)?;
                Err(e)
            }
        }
    }

    /// Warm reset: the same as a power cycle for this card.
    pub fn reset(&mut self) {
        self.power_off();
    }

    /// Messages waiting to leave the card.
    pub fn waiting(&self) -> usize {
        self.outbox.len()
    }

    /// Handles one command APDU and returns the response APDU. Never
    /// panics on any input.
    pub fn process_apdu(&mut self, raw: &[u8]) -> Vec<u8> {
        let cmd = match Command::decode(raw) {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "malformed APDU");
                return Response::status(StatusWord::WRONG_LENGTH).to_bytes();
            }
        };
        // A chain in progress takes only its next piece: same INS, class
        // 80 or 90. Anything else ends it (ISO 7816-4 5.1.1.1).
        if let Some(chain) = &self.chain
            && !(cmd.cla & !CLA_CHAINING == tenet::CLA && cmd.ins == chain.ins)
        {
            self.chain = None;
            return status(StatusWord::CHAIN_EXPECTED);
        }
        // Classes: 00 (interindustry, channel 0, no secure messaging) and
        // 80 (proprietary), 90 being 80 with the chaining bit. 10 is 00
        // chained: no interindustry command here takes chaining. Logical
        // channels, secure messaging and other classes are not supported.
        if cmd.cla & 0x03 != 0 {
            return status(StatusWord::CLA_NOT_SUPPORTED);
        }
        // A new command abandons an unfinished GET RESPONSE sequence; a
        // message it carried goes back to the outbox, so nothing is lost.
        if !(cmd.cla == 0x00 && cmd.ins == tenet::INS_GET_RESPONSE) {
            self.abandon_pending();
        }
        let chained = cmd.cla == tenet::CLA | CLA_CHAINING;
        match cmd.cla {
            0x00 | tenet::CLA => {}
            c if c == tenet::CLA | CLA_CHAINING => {}
            0x10 => return status(StatusWord::CHAINING_NOT_SUPPORTED),
            _ => return status(StatusWord::CLA_NOT_SUPPORTED),
        }
        if cmd.cla == 0x00 {
            return match cmd.ins {
                tenet::INS_SELECT => self.select(&cmd),
                tenet::INS_GET_RESPONSE => self.get_response(&cmd),
                _ => status(StatusWord::INS_NOT_SUPPORTED),
            };
        }
        if self.selected.is_none() {
            return status(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let ins = cmd.ins;
        if !matches!(
            ins,
            tenet::INS_DELIVER | tenet::INS_POLL | tenet::INS_ASSIGN_PORT | tenet::INS_GET_INFO
        ) {
            self.chain = None;
            return status(StatusWord::INS_NOT_SUPPORTED);
        }
        if (cmd.p1, cmd.p2) != (0, 0) {
            self.chain = None;
            return status(StatusWord::INCORRECT_P1P2);
        }
        if ins != tenet::INS_DELIVER {
            // POLL, ASSIGN PORT and GET INFO carry no data (cases 1 and 2).
            if chained {
                return status(StatusWord::CHAINING_NOT_SUPPORTED);
            }
            if !cmd.data.is_empty() {
                return status(StatusWord::WRONG_LENGTH);
            }
        }
        self.proprietary(ins, cmd, chained)
    }

    fn abandon_pending(&mut self) {
        if let Some(p) = self.pending.take()
            && p.from_outbox
            && let Ok(m) = self.decode_own(&p.bytes)
        {
            self.outbox.push_front(m);
        }
    }

    /// A message this card sent, as the selected form wrote it.
    fn decode_own(&self, bytes: &[u8]) -> Result<Message, DecodeError> {
        match self.selected {
            Some(Form::Compact) => compact::decode_from_card(self.id(), bytes),
            _ => Message::decode(bytes),
        }
    }

    /// SELECT by DF name (P1 `04`) of the full AID: P2 `00` (first or only
    /// occurrence, FCI) or `0C` (no response data); the card answers no
    /// data either way. P2 `02` / `0E` (next occurrence): the card holds
    /// one applet, so there is none: `6A 82`, and the selection stays.
    fn select(&mut self, cmd: &Command) -> Vec<u8> {
        if cmd.p1 != 0x04 {
            return status(StatusWord::INCORRECT_P1P2);
        }
        let next = match cmd.p2 {
            0x00 | 0x0c => false,
            0x02 | 0x0e => true,
            _ => return status(StatusWord::INCORRECT_P1P2),
        };
        if cmd.data.is_empty() {
            return status(StatusWord::WRONG_LENGTH);
        }
        if next {
            return status(StatusWord::NOT_FOUND);
        }
        self.selected = match cmd.data[..] {
            ref aid if aid == tenet::AID => Some(Form::Full),
            ref aid if aid == tenet::AID_COMPACT => Some(Form::Compact),
            _ => None,
        };
        status(match self.selected {
            Some(_) => StatusWord::OK,
            None => StatusWord::NOT_FOUND,
        })
    }

    fn get_response(&mut self, cmd: &Command) -> Vec<u8> {
        if (cmd.p1, cmd.p2) != (0, 0) {
            return status(StatusWord::INCORRECT_P1P2);
        }
        if !cmd.data.is_empty() {
            return status(StatusWord::WRONG_LENGTH);
        }
        let Some(p) = self.pending.take() else {
            return status(StatusWord::CONDITIONS_NOT_SATISFIED);
        };
        let rest = p.bytes[p.off..].to_vec();
        self.respond_chunked(
            cmd.le.or(Some(256)),
            rest,
            p.sw,
            p.from_outbox,
            Some((p.bytes, p.off)),
        )
    }

    /// Sends `data` within the command's Le; the rest waits for GET RESPONSE.
    fn respond_chunked(
        &mut self,
        le: Option<usize>,
        data: Vec<u8>,
        sw: StatusWord,
        from_outbox: bool,
        whole: Option<(Vec<u8>, usize)>,
    ) -> Vec<u8> {
        let le = le.unwrap_or(0);
        if data.len() <= le {
            return Response { data, sw }.to_bytes();
        }
        let (bytes, base) = whole.unwrap_or_else(|| (data.clone(), 0));
        let first = data[..le].to_vec();
        let off = base + le;
        let left = bytes.len() - off;
        self.pending = Some(PendingResponse {
            bytes,
            off,
            sw,
            from_outbox,
        });
        Response {
            data: first,
            sw: StatusWord::more_bytes(left),
        }
        .to_bytes()
    }

    fn proprietary(&mut self, ins: u8, cmd: Command, chained: bool) -> Vec<u8> {
        // Command chaining (ISO 7816-4 5.1.1.1).
        if chained {
            let chain = self.chain.get_or_insert_with(|| Chain {
                ins,
                data: Vec::new(),
            });
            if chain.data.len() + cmd.data.len() > self.limits.max_message {
                self.chain = None;
                return status(StatusWord::NOT_ENOUGH_MEMORY);
            }
            chain.data.extend_from_slice(&cmd.data);
            return status(StatusWord::OK);
        }
        let data = match self.chain.take() {
            Some(mut c) => {
                c.data.extend_from_slice(&cmd.data);
                c.data
            }
            None => cmd.data,
        };
        match ins {
            tenet::INS_DELIVER => self.deliver(&data, cmd.le),
            tenet::INS_POLL => self.next_out(cmd.le),
            tenet::INS_ASSIGN_PORT => self.assign_port(cmd.le),
            _ => {
                let info = self.info().to_bytes();
                self.respond_chunked(cmd.le, info, StatusWord::OK, false, None)
            }
        }
    }

    fn deliver(&mut self, data: &[u8], le: Option<usize>) -> Vec<u8> {
        if data.len() > self.limits.max_message {
            return Response::status(StatusWord::NOT_ENOUGH_MEMORY).to_bytes();
        }
        let m = match self.selected {
            Some(Form::Compact) => compact::decode_to_card(self.id(), data),
            _ => Message::decode(data),
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "DELIVER of a malformed eTP message");
                return Response::status(StatusWord::INCORRECT_DATA).to_bytes();
            }
        };
        // The limit is on the whole message, whichever form carried it.
        if m.encoded_len() > self.limits.max_message {
            return Response::status(StatusWord::NOT_ENOUGH_MEMORY).to_bytes();
        }
        if m.dst() != self.id() {
            return Response::status(StatusWord::DATA_NOT_FOUND).to_bytes();
        }
        if let Err(e) = self.handle_message(m) {
            debug!(error = %e, "store update failed; message had no effect");
            return Response::status(match e {
                StoreError::Full { .. } => StatusWord::NOT_ENOUGH_MEMORY,
                _ => StatusWord::MEMORY_FAILURE,
            })
            .to_bytes();
        }
        self.next_out(le)
    }

    fn next_out(&mut self, le: Option<usize>) -> Vec<u8> {
        match self.outbox.pop_front() {
            None => Response::status(StatusWord::OK).to_bytes(),
            Some(m) => {
                let sw = StatusWord::messages_waiting(self.outbox.len());
                let bytes = match self.selected {
                    Some(Form::Compact) => compact::from_card(&m),
                    _ => m.to_bytes(),
                };
                self.respond_chunked(le, bytes, sw, true, None)
            }
        }
    }

    fn assign_port(&mut self, le: Option<usize>) -> Vec<u8> {
        let port = self.state.next_port;
        let Some(next) = port.checked_add(1) else {
            return Response::status(StatusWord::NOT_ENOUGH_MEMORY).to_bytes();
        };
        let mut s = self.state.clone();
        s.next_port = next;
        if self.commit(s).is_err() {
            return Response::status(StatusWord::MEMORY_FAILURE).to_bytes();
        }
        self.respond_chunked(
            le.or(Some(4)),
            port.to_be_bytes().to_vec(),
            StatusWord::OK,
            false,
            None,
        )
    }

    /// Assigns a port without the APDU layer (the in-process link uses the
    /// APDU; this is for tests and tools).
    pub fn next_port(&self) -> Port {
        Port::new(self.state.next_port)
    }

    fn commit(&mut self, new: CardState) -> Result<(), StoreError> {
        let record = new.to_bytes();
        self.store.commit(&record)?;
        if let Some(m) = &self.meter {
            m.commit(&self.state.to_bytes(), &record);
        }
        self.state = new;
        Ok(())
    }

    /// Commits new data of one applet without copying the rest of the
    /// state: on a store error the state keeps the applet's old data.
    fn commit_applet(
        &mut self,
        app_id: u16,
        data: Vec<u8>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let old_record = self.meter.as_ref().map(|_| self.state.to_bytes());
        let old = self.state.applets.insert(app_id, data);
        let mut record = std::mem::take(&mut self.record);
        record.clear();
        self.state.encode(&mut record);
        let committed = match durability {
            Durability::Unsynced => self.store.commit_unsynced(&record),
            Durability::Synced | Durability::SyncFirst => self.store.commit(&record),
        };
        if let (Ok(()), Some(m), Some(old_record)) = (&committed, &self.meter, old_record) {
            m.commit(&old_record, &record);
        }
        self.record = record;
        if committed.is_err() {
            match old {
                Some(d) => self.state.applets.insert(app_id, d),
                None => self.state.applets.remove(&app_id),
            };
        }
        committed
    }

    fn emit(&mut self, dst: EntityId, mtype: Mtype, param: Vec<u8>) {
        let m = Message::new(self.id(), dst, mtype, param);
        if m.encoded_len() <= self.limits.max_message {
            self.outbox.push_back(m);
        } else {
            debug!(%dst, %mtype, "outgoing message exceeds the card's limit; dropped");
        }
    }

    fn refuse(&mut self, to: EntityId, mtype: Mtype, text: String) {
        debug!(%to, %mtype, %text, "refused");
        self.emit(to, Mtype::REFUSED, Refused { mtype, text }.to_bytes());
    }

    fn pin_status(&mut self, to: EntityId, outcome: PinOutcome) {
        let tries_left = self.state.pin_tries;
        self.emit(
            to,
            Mtype::PIN_STATUS,
            PinStatus {
                outcome,
                tries_left,
            }
            .to_bytes(),
        );
    }

    /// Only apps of the card's own domain may authenticate (paper 4.4).
    fn may_authenticate(&self, src: EntityId) -> bool {
        src.domain() == self.state.domain && !src.is_owner()
    }

    /// Handles one eTP message addressed to the card. On a store failure
    /// the message has had no effect and nothing was emitted.
    pub fn handle_message(&mut self, m: Message) -> Result<(), StoreError> {
        let src = m.src();
        let mt = m.mtype();
        if self.privileged().contains(&mt) && !self.authenticated.contains(&src) {
            self.refuse(
                src,
                mt,
                format!("{mt} is privileged: {src} is not authenticated on this card; verify the PIN first"),
            );
            return Ok(());
        }
        match mt {
            Mtype::ECHO_REQUEST => self.emit(src, Mtype::ECHO_REPLY, m.param),
            Mtype::VERIFY_PIN => return self.verify_pin(src, &m.param),
            Mtype::UNBLOCK_PIN => return self.unblock_pin_message(src, &m.param),
            Mtype::CHANGE_PIN => return self.change_pin(src, &m.param),
            Mtype::LOGOUT => {
                self.authenticated.remove(&src);
                self.pin_status(src, PinOutcome::LoggedOut);
            }
            Mtype::LOCK => {
                let ended = self.lock();
                debug!(%src, ended, "locked: every authenticated session ended");
                self.pin_status(src, PinOutcome::Locked);
            }
            Mtype::CARD_INFO_REQUEST => {
                let info = self.info().to_bytes();
                self.emit(src, Mtype::CARD_INFO, info);
            }
            Mtype::SET_TIME => return self.set_time_message(src, &m.param),
            _ => return self.run_applet(m),
        }
        Ok(())
    }

    /// `set-time`: only from the card's own id, which only the smartcard
    /// proxy holds. No answer unless refused.
    fn set_time_message(&mut self, src: EntityId, param: &[u8]) -> Result<(), StoreError> {
        if src != self.id() {
            self.refuse(
                src,
                Mtype::SET_TIME,
                format!("set-time comes only from the card's host, as {}", self.id()),
            );
            return Ok(());
        }
        let t = match SetTime::decode(param) {
            Ok(t) => t,
            Err(e) => {
                self.refuse(src, Mtype::SET_TIME, format!("malformed set-time: {e}"));
                return Ok(());
            }
        };
        match self.set_time(t.now, t.elapsed) {
            Ok(time) => {
                debug!(%time, "host time taken");
                for i in 0..self.applets.len() {
                    if let Err(Refusal(text)) = self.call_applet(i, src, |a, cx| a.on_time(cx))? {
                        let name = self.applets[i].name();
                        debug!(applet = name, %text, "the applet did nothing at this time");
                    }
                }
            }
            Err(SetTimeError::Refused(r)) => self.refuse(src, Mtype::SET_TIME, r.to_string()),
            Err(SetTimeError::Store(e)) => return Err(e),
        }
        Ok(())
    }

    fn verify_pin(&mut self, src: EntityId, param: &[u8]) -> Result<(), StoreError> {
        let v = match VerifyPin::decode(param) {
            Ok(v) => v,
            Err(e) => {
                self.refuse(src, Mtype::VERIFY_PIN, format!("malformed verify-pin: {e}"));
                return Ok(());
            }
        };
        if !self.may_authenticate(src) {
            self.pin_status(src, PinOutcome::NotAllowed);
            return Ok(());
        }
        if self.state.pin_tries == 0 {
            self.pin_status(src, PinOutcome::Blocked);
            return Ok(());
        }
        // Count the try before comparing, so cutting the power after a
        // wrong guess cannot save the try.
        let mut s = self.state.clone();
        s.pin_tries -= 1;
        self.commit(s)?;
        let salt = self.state.salt;
        if secret_matches(&self.state.pin_hash, &salt, Secret::Pin, &v.pin) {
            let mut s = self.state.clone();
            s.pin_tries = PIN_TRIES;
            // An old hash (SHA-256, older parameters) becomes a current
            // one, in the same commit that restores the tries.
            s.pin_hash = upgraded(&s.pin_hash, &salt, Secret::Pin, &v.pin);
            self.commit(s)?;
            self.authenticated.insert(src);
            self.pin_status(src, PinOutcome::Verified);
        } else {
            self.authenticated.remove(&src);
            let outcome = if self.state.pin_tries == 0 {
                PinOutcome::Blocked
            } else {
                PinOutcome::Wrong
            };
            self.pin_status(src, outcome);
        }
        Ok(())
    }

    fn unblock_pin_message(&mut self, src: EntityId, param: &[u8]) -> Result<(), StoreError> {
        let u = match UnblockPin::decode(param) {
            Ok(u) => u,
            Err(e) => {
                self.refuse(
                    src,
                    Mtype::UNBLOCK_PIN,
                    format!("malformed unblock-pin: {e}"),
                );
                return Ok(());
            }
        };
        if !self.may_authenticate(src) {
            self.pin_status(src, PinOutcome::NotAllowed);
            return Ok(());
        }
        match self.unblock_pin(&u.puk, &u.new_pin) {
            Ok(Unblock::Unblocked) => self.pin_status(src, PinOutcome::Changed),
            Ok(Unblock::WrongPuk { .. }) => self.pin_status(src, PinOutcome::WrongPuk),
            Ok(Unblock::PukBlocked) => self.refuse(
                src,
                Mtype::UNBLOCK_PIN,
                "the PUK is blocked; the card must be re-personalized".into(),
            ),
            Err(CardError::Store(e)) => return Err(e),
            Err(e) => self.refuse(src, Mtype::UNBLOCK_PIN, e.to_string()),
        }
        Ok(())
    }

    fn change_pin(&mut self, src: EntityId, param: &[u8]) -> Result<(), StoreError> {
        let c = match ChangePin::decode(param) {
            Ok(c) => c,
            Err(e) => {
                self.refuse(src, Mtype::CHANGE_PIN, format!("malformed change-pin: {e}"));
                return Ok(());
            }
        };
        let pin_hash = match secret_hash(&self.state.salt, Secret::Pin, &c.new_pin) {
            Ok(h) => h,
            Err(e) => {
                self.refuse(src, Mtype::CHANGE_PIN, e.to_string());
                return Ok(());
            }
        };
        let mut s = self.state.clone();
        s.pin_hash = pin_hash;
        s.pin_tries = PIN_TRIES;
        self.commit(s)?;
        self.pin_status(src, PinOutcome::Changed);
        Ok(())
    }

    fn run_applet(&mut self, m: Message) -> Result<(), StoreError> {
        let src = m.src();
        let mt = m.mtype();
        let Some(i) = self.applets.iter().position(|a| a.handles(mt)) else {
            // Notices and replies nobody asked for are dropped silently by
            // design (answering them could loop); anything else is refused.
            if !matches!(
                mt,
                Mtype::ECHO_REPLY
                    | Mtype::UNDELIVERABLE
                    | Mtype::REFUSED
                    | Mtype::PIN_STATUS
                    | Mtype::CARD_INFO
            ) {
                self.refuse(src, mt, format!("no applet on this card handles {mt}"));
            }
            return Ok(());
        };
        if let Err(Refusal(text)) = self.call_applet(i, src, |a, cx| a.handle(cx, &m))? {
            let name = self.applets[i].name();
            self.refuse(src, mt, format!("{name}: {text}"));
        }
        Ok(())
    }

    /// Runs `f` on applet `i` with its context (`src` decides whether the
    /// sender is authenticated). On `Ok` the applet's data is committed
    /// and its messages queued, in one store update; on a refusal nothing
    /// changes and the refusal is returned.
    fn call_applet(
        &mut self,
        i: usize,
        src: EntityId,
        f: impl FnOnce(&mut dyn Applet, &mut AppletCx<'_>) -> Result<(), Refusal>,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let app_id = self.applets[i].id();
        let mut data = self.state.applets.get(&app_id).cloned().unwrap_or_default();
        let mut out = Vec::new();
        let key = &self.key;
        let rng = &self.rng;
        let meter = self.meter.as_ref();
        let signer = |msg: &[u8]| -> Vec<u8> {
            if let Some(m) = meter {
                m.sign(msg.len());
            }
            key.sign(rng, msg)
                .map(|s| s.as_ref().to_vec())
                .unwrap_or_default()
        };
        let mut counted;
        let entropy: &mut dyn Entropy = match meter {
            None => self.entropy.as_mut(),
            Some(meter) => {
                counted = CountedEntropy {
                    inner: self.entropy.as_mut(),
                    meter,
                };
                &mut counted
            }
        };
        let mut cx = AppletCx {
            certificate: self.state.certificate.as_deref(),
            ca_certificate: self.state.ca_certificate.as_deref(),
            card: self.state.domain.owner(),
            sender_authenticated: self.authenticated.contains(&src),
            data: &mut data,
            entropy,
            time: self.clock.time(self.state.clock_bound),
            out: &mut out,
            signer: &signer,
            meter,
            durability: Durability::Synced,
        };
        let result = f(self.applets[i].as_mut(), &mut cx);
        let durability = cx.durability;
        if result.is_ok() {
            let changed = match self.state.applets.get(&app_id) {
                Some(before) => *before != data,
                None => !data.is_empty(),
            };
            if changed {
                self.commit_applet(app_id, data, durability)?;
            } else if durability == Durability::SyncFirst {
                self.store.sync()?;
            }
            for o in out {
                if o.encoded_len() <= self.limits.max_message {
                    self.outbox.push_back(o);
                }
            }
        }
        Ok(result)
    }
}
