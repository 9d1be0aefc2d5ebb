//! Hostile input into tenet-card's decoders: the card's persistent state
//! (`CardState`) and a card opened from a hostile store record.
//!
//! Each property feeds mutations of valid encodings and random bytes (the
//! harness: the tenet-hostile crate) and asserts that nothing panics, that a
//! valid encoding decodes and encodes back to the same bytes, and that
//! decoding `n` bytes allocates at most the decoder's bound `a·n + c`,
//! counted by the counting global allocator this binary installs. The
//! bounds and why they hold are in `docs/hostile-input.md`, with where the
//! other crates' properties live. The APDU front end under hostile APDU
//! sessions is tested with the voucher applet installed, in
//! tenet-voucher-app's `tests/hostile.rs`.
//!
//! Cases per property: `TENET_HOSTILE_CASES` (default 2000). A failure
//! prints the shrunk input; `PROPTEST_RNG_SEED=N` fixes a run's random seed.

use std::cell::Cell;
use std::fmt::Debug;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::select;
use tenet_card::state::{CardState, KdfParams, SecretHash};
use tenet_card::{Card, CardLimits, MemStore, Personalization, SeededEntropy, Storage};
use tenet_hostile::{
    Bound, COVERAGE_MIN_CASES, TLV_TOKENS, bytes, cases, check, fuzz_decoder, hostile, shape,
};
use tenet_pki::{ensure_ca, issue_entity};
use tenet_proto::apdu::{Command, Response, tenet};
use tenet_proto::tlv::{self, Tag};
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};

tenet_hostile::install_counting_allocator!();

/// Size of one parsed data object (`Tlv`: a tag and a borrowed value).
const TLV_ITEM: usize = std::mem::size_of::<tlv::Tlv<'static>>();

/// [`Bound::tlv_lists`] for tenet-proto's TLV objects.
const fn tlv_list(per_byte_levels: usize, lists: usize) -> Bound {
    Bound::tlv_lists(TLV_ITEM, per_byte_levels, lists)
}

// ---------------------------------------------------------------------------
// Valid values
// ---------------------------------------------------------------------------

// Ids as in tenet-proto's tests/hostile.rs.

fn domain() -> BoxedStrategy<Domain> {
    prop_oneof![
        any::<[u8; 12]>().prop_map(Domain::new),
        select(&[0u8, 0xc0, 0xff][..]).prop_map(|b| Domain::new([b; 12])),
    ]
    .boxed()
}

fn card_state() -> BoxedStrategy<CardState> {
    (
        (domain(), bytes(160), bytes(80), any::<[u8; 16]>()),
        (
            any::<[u8; 32]>(),
            any::<u8>(),
            any::<[u8; 32]>(),
            any::<u8>(),
        ),
        (
            any::<u32>(),
            proptest::option::of(bytes(400)),
            proptest::option::of(bytes(400)),
            proptest::collection::btree_map(any::<u16>(), bytes(100), 0..4),
        ),
    )
        .prop_map(
            |(
                (domain, key_pkcs8, public_key, salt),
                (pin_hash, pin_tries, puk_hash, puk_tries),
                (next_port, certificate, ca_certificate, applets),
            )| CardState {
                domain,
                key_pkcs8,
                public_key,
                salt,
                // Both layouts: Argon2id, and SHA-256 from older stores.
                pin_hash: SecretHash::Argon2id {
                    params: KdfParams::CURRENT,
                    hash: pin_hash,
                },
                pin_tries,
                puk_hash: SecretHash::Sha256(puk_hash),
                puk_tries,
                next_port,
                certificate,
                ca_certificate,
                clock_bound: u64::from(next_port),
                applets,
            },
        )
        .boxed()
}

fn encoded<T: Codec + Debug + 'static>(s: BoxedStrategy<T>) -> BoxedStrategy<Vec<u8>> {
    s.prop_map(|v| v.to_bytes()).boxed()
}

// ---------------------------------------------------------------------------
// A personalized card
// ---------------------------------------------------------------------------

const PIN: &[u8] = b"1234";

const PUK: &[u8] = b"12345678";

/// A card as personalization and setup leave it: its key, PIN and PUK, an
/// entity certificate and the CA's from a test CA, and one applet record
/// (opaque to the card; the voucher applet's holds a TLV list).
struct Fixture {
    /// The card's store.
    card_store: MemStore,
    /// An app on the card's host.
    wallet: EntityId,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ensure_ca(&ca, "hostile-input CA").unwrap();
        let domain = Domain::new([0xc0; 12]);
        let mut card = Card::personalize(
            MemStore::new(64 * 1024),
            &Personalization {
                domain,
                pin: PIN.to_vec(),
                puk: PUK.to_vec(),
            },
            CardLimits::default(),
            Box::new(SeededEntropy::new(1)),
        )
        .unwrap();
        let public_key = card.state().public_key.clone();
        let (cert, ca_cert) = issue_entity(&ca, card.id(), &public_key)
            .unwrap()
            .card_forms()
            .unwrap();
        let mut record = Vec::new();
        tlv::write(
            &mut record,
            Tag(0x80),
            &Domain::new([0x77; 12]).owner().to_bytes(),
        );
        tlv::write(&mut record, Tag(0x81), &cert);
        card.install_certificates(cert, ca_cert).unwrap();
        card.provision(0x0200, record).unwrap();
        Fixture {
            card_store: card.store().clone(),
            wallet: EntityId::new(domain, Port::new(5)),
        }
    })
}

fn select_apdu() -> Vec<u8> {
    Command::new(0, tenet::INS_SELECT, 4, 0)
        .with_data(tenet::AID.to_vec())
        .to_bytes()
}

fn deliver_apdu(m: &Message, le: Option<usize>) -> Vec<u8> {
    let mut c = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0).with_data(m.to_bytes());
    c.le = le;
    c.to_bytes()
}

// ---------------------------------------------------------------------------
// The persistent state
// ---------------------------------------------------------------------------

/// One TLV list; key, public key, certificates and applet data copied once;
/// one B-tree node per 5 to 11 applet records of at least 6 bytes each.
const CARD_STATE: Bound = Bound::new(tlv_list(1, 0).per_byte + 1 + 64, 4 * 1024);

#[test]
fn card_state_decode() {
    let fx = fixture();
    let real = fx.card_store.clone().load().unwrap().expect("personalized");
    let seeds = prop_oneof![
        1 => Just(real),
        3 => encoded(card_state()),
    ]
    .boxed();
    fuzz_decoder(
        "CardState",
        CARD_STATE,
        seeds,
        TLV_TOKENS,
        CardState::decode,
        CardState::to_bytes,
    );
}

/// A card opened from a hostile store record: it refuses to open (corrupt
/// state or key) or opens and then answers APDUs; it never panics. No
/// applet is installed: a card-info request makes the card services read
/// the domain, key and certificates the record gave it. (The voucher
/// applet reading hostile stored state is tenet-voucher-app's property.)
#[test]
fn card_opens_hostile_store_records() {
    let fx = fixture();
    let real = fx.card_store.clone().load().unwrap().expect("personalized");
    let seeds = prop_oneof![Just(real.clone()), encoded(card_state())].boxed();
    let opened = Cell::new(0u64);
    let refused = Cell::new(0u64);
    check(hostile(seeds, TLV_TOKENS), |input| {
        let mut store = MemStore::new(1 << 20);
        store.commit(&input.bytes).unwrap();
        let card = Card::open(
            store,
            CardLimits::default(),
            Box::new(SeededEntropy::new(5)),
        );
        if input.bytes == real {
            prop_assert!(card.is_ok(), "the real record did not open");
        }
        match card {
            Ok(mut card) => {
                opened.set(opened.get() + 1);
                for apdu in [
                    select_apdu(),
                    Command::new(tenet::CLA, tenet::INS_GET_INFO, 0, 0)
                        .with_le(65_536)
                        .to_bytes(),
                    Command::new(tenet::CLA, tenet::INS_ASSIGN_PORT, 0, 0).to_bytes(),
                    deliver_apdu(
                        &Message::new(fx.wallet, card.id(), Mtype::CARD_INFO_REQUEST, vec![]),
                        Some(65_536),
                    ),
                ] {
                    let r = card.process_apdu(&apdu);
                    prop_assert!(Response::decode(&r).is_ok());
                }
            }
            Err(_) => refused.set(refused.get() + 1),
        }
        Ok(())
    });
    eprintln!(
        "Card::open: {} opened, {} refused",
        opened.get(),
        refused.get()
    );
    if cases() >= COVERAGE_MIN_CASES {
        assert!(opened.get() > 0 && refused.get() > 0);
    }
}

// ---------------------------------------------------------------------------
// Worst-case shape
// ---------------------------------------------------------------------------

/// The state with the most applet records (the per-byte factor of
/// [`CARD_STATE`]: one B-tree node per 5 to 11 records).
#[test]
fn worst_case_shapes_stay_within_the_bounds() {
    let state = CardState {
        domain: Domain::new([1; 12]),
        key_pkcs8: vec![],
        public_key: vec![],
        salt: [0; 16],
        pin_hash: SecretHash::Argon2id {
            params: KdfParams::CURRENT,
            hash: [0; 32],
        },
        pin_tries: 3,
        puk_hash: SecretHash::Argon2id {
            params: KdfParams::CURRENT,
            hash: [0; 32],
        },
        puk_tries: 10,
        next_port: 1,
        certificate: None,
        ca_certificate: None,
        clock_bound: 0,
        applets: (0..10_800u16).map(|i| (i, vec![])).collect(),
    };
    shape(
        "CardState, most applet records",
        CARD_STATE,
        &state.to_bytes(),
        CardState::decode,
    );
}
