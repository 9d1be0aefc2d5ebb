//! Hostile input into tenet-voucher's decoders: the voucher messages,
//! amounts, balances and exchange summaries, the voucher applet's whole
//! state (`VoucherCard`), the offer policy's text, and the TTP's PEM files
//! (`KeyCrypto::from_pem`).
//!
//! Each property feeds one decoder mutations of valid encodings and random
//! bytes or text (the harness: the tenet-hostile crate) and asserts that it
//! never panics, that a valid encoding decodes and encodes back to the same
//! bytes (a valid text parses and prints back), and that decoding `n` bytes
//! allocates at most the decoder's bound `a·n + c`, counted by the counting
//! global allocator this binary installs. The bounds and why they hold are
//! in `docs/hostile-input.md`, with where the other crates' properties
//! live; the applet reading hostile state on a real card is in
//! tenet-voucher-app's `tests/hostile.rs`.
//!
//! Cases per property: `TENET_HOSTILE_CASES` (default 2000). A failure
//! prints the shrunk input; `PROPTEST_RNG_SEED=N` fixes a run's random seed.

use std::fmt::Debug;
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use tenet_hostile::{
    Bound, PEM_TOKENS, Probe, TLV_TOKENS, bytes, cases, check, distinct_tags, fuzz_decoder,
    fuzz_text, hostile, shape,
};
use tenet_pki::{ensure_ca, issue_entity_key};
use tenet_proto::tlv::{self, Tag};
use tenet_proto::{Codec, Domain, EntityId, MAX_MESSAGE_LEN};
use tenet_voucher::card::{
    Exchange, ExchangeSummary, KeptCertificate, Phase, Role, VoucherCard, decode_balances,
    decode_exchanges, encode_balances,
};
use tenet_voucher::crypto::KeyCrypto;
use tenet_voucher::model::{Amount, Balances, VoucherClass};
use tenet_voucher::msg::{
    Admission, Commitment, Confirmation, ExchangeId, Offer, RecoveryRequest, StartExchange,
};
use tenet_voucher::policy::Policy;

tenet_hostile::install_counting_allocator!();

/// Size of one parsed data object (`Tlv`: a tag and a borrowed value).
const TLV_ITEM: usize = std::mem::size_of::<tlv::Tlv<'static>>();

/// [`Bound::tlv_lists`] for tenet-proto's TLV objects.
const fn tlv_list(per_byte_levels: usize, lists: usize) -> Bound {
    Bound::tlv_lists(TLV_ITEM, per_byte_levels, lists)
}

/// One TLV list, one copy of each value, an error text.
const FLAT_PARAMS: Bound = tlv_list(1, 1);

// ---------------------------------------------------------------------------
// Valid values
// ---------------------------------------------------------------------------

mod strategies;
use strategies::*;

/// [`fuzz_decoder`] for a [`Codec`] type.
fn fuzz_codec<T: Codec + Debug + 'static>(
    name: &'static str,
    bound: Bound,
    seeds: BoxedStrategy<T>,
) {
    fuzz_decoder(
        name,
        bound,
        encoded(seeds),
        TLV_TOKENS,
        T::decode,
        T::to_bytes,
    );
}

// ---------------------------------------------------------------------------
// Messages, amounts, balances, summaries, the applet's state
// ---------------------------------------------------------------------------

/// An amount: one TLV list, the promise copied and checked as UTF-8.
const AMOUNT: Bound = tlv_list(1, 1);
/// A message whose fields hold amounts: the message's list and one list per
/// amount inside it (each input byte is in at most two lists).
const WITH_AMOUNTS: Bound = tlv_list(2, 3);
/// An exchange summary: summary, offer and amount lists (three levels).
const SUMMARY: Bound = tlv_list(3, 4);
/// A recovery request: request, offer and amount lists (three levels), and
/// the agreement's list.
const RECOVERY: Bound = tlv_list(3, 5);

#[test]
fn voucher_amounts() {
    fuzz_codec("Amount", AMOUNT, amount(0));
}

#[test]
fn voucher_exchange_ids() {
    fuzz_codec("ExchangeId", FLAT_PARAMS, exchange_id());
}

#[test]
fn voucher_start_exchange() {
    let seeds = (
        entity(),
        entity(),
        amount(1),
        proptest::option::of(amount(1)),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(
            |(responder, peer_wallet, give, want, expires_in)| StartExchange {
                redeem: false,
                responder,
                peer_wallet,
                give,
                want,
                expires_in,
            },
        )
        .boxed();
    fuzz_codec("StartExchange", WITH_AMOUNTS, seeds);
}

#[test]
fn voucher_present_orders() {
    let seeds = (entity(), any::<[u8; 16]>(), amount(1))
        .prop_map(
            |(verifier, challenge, amount)| tenet_voucher::present::PresentOrder {
                verifier,
                challenge,
                amount,
            },
        )
        .boxed();
    fuzz_codec("PresentOrder", WITH_AMOUNTS, seeds);
}

#[test]
fn voucher_presentations() {
    let seeds = (
        (entity(), entity(), any::<[u8; 16]>()),
        amount(1),
        any::<u64>(),
        bytes(80),
        bytes(400),
    )
        .prop_map(
            |((holder, verifier, challenge), amount, time, signature, certificate)| {
                tenet_voucher::present::Presentation {
                    holder,
                    verifier,
                    challenge,
                    amount,
                    time,
                    signature,
                    certificate,
                }
            },
        )
        .boxed();
    fuzz_codec("Presentation", WITH_AMOUNTS, seeds);
}

#[test]
fn voucher_offers() {
    fuzz_codec("Offer", WITH_AMOUNTS, offer());
}

/// An agreement: its list, a delegation's, the delegation's class.
const AGREEMENT: Bound = tlv_list(3, 3);

#[test]
fn voucher_agreements() {
    fuzz_codec("Agreement", AGREEMENT, agreement());
}

#[test]
fn voucher_delegations() {
    fuzz_codec("Delegation", WITH_AMOUNTS, delegation());
}

#[test]
fn voucher_delegate_orders() {
    let seeds = (entity(), class(), any::<u64>())
        .prop_map(
            |(redeemer, class, until)| tenet_voucher::redeem::DelegateOrder {
                redeemer,
                class,
                until,
            },
        )
        .boxed();
    fuzz_codec("DelegateOrder", WITH_AMOUNTS, seeds);
}

#[test]
fn voucher_log_requests() {
    let seeds = any::<u64>()
        .prop_map(|since| tenet_voucher::card::LogRequest { since })
        .boxed();
    fuzz_codec("LogRequest", FLAT_PARAMS, seeds);
}

/// A receipt: its list, the offer's and its amount's, the agreement's,
/// its delegation's and class's, the admission's (four levels deep).
const RECEIPT: Bound = tlv_list(4, 7);

#[test]
fn voucher_receipts() {
    use tenet_voucher::redeem::{Proof, Receipt};
    let admission = (kind(), exchange_id(), bytes(80), bytes(300)).prop_map(
        |(kind, id, signature, certificate)| Admission {
            kind,
            id,
            signature,
            certificate,
        },
    );
    let proof = prop_oneof![
        any::<[u8; 16]>().prop_map(Proof::Commitment),
        admission.prop_map(Proof::Admission),
    ];
    let seeds = (offer(), agreement(), proof)
        .prop_map(|(offer, agreement, proof)| Receipt {
            offer,
            agreement,
            proof,
        })
        .boxed();
    fuzz_codec("Receipt", RECEIPT, seeds);
}

#[test]
fn voucher_confirmations() {
    let seeds = (exchange_id(), bytes(80), bytes(400))
        .prop_map(|(id, signature, certificate)| Confirmation {
            id,
            signature,
            certificate,
        })
        .boxed();
    fuzz_codec("Confirmation", FLAT_PARAMS, seeds);
}

#[test]
fn voucher_commitments() {
    fuzz_codec(
        "Commitment",
        FLAT_PARAMS,
        any::<[u8; 16]>().prop_map(|n2| Commitment { n2 }).boxed(),
    );
}

#[test]
fn voucher_recovery_requests() {
    let seeds = (kind(), offer(), agreement(), bytes(80), bytes(300))
        .prop_map(
            |(kind, offer, agreement, signature, certificate)| RecoveryRequest {
                kind,
                offer,
                agreement,
                signature,
                certificate,
            },
        )
        .boxed();
    fuzz_codec("RecoveryRequest", RECOVERY, seeds);
}

#[test]
fn voucher_admissions() {
    let seeds = (kind(), exchange_id(), bytes(80), bytes(300))
        .prop_map(|(kind, id, signature, certificate)| Admission {
            kind,
            id,
            signature,
            certificate,
        })
        .boxed();
    fuzz_codec("Admission", FLAT_PARAMS, seeds);
}

fn summary() -> BoxedStrategy<ExchangeSummary> {
    (exchange_id(), role(), phase(), offer())
        .prop_map(|(id, role, phase, offer)| ExchangeSummary {
            id,
            role,
            phase,
            offer,
        })
        .boxed()
}

#[test]
fn voucher_exchange_summaries() {
    fuzz_codec("ExchangeSummary", SUMMARY, summary());
}

/// The list of a balances or exchanges param, then each item decoded on its
/// own. Every item takes at least two bytes, so the per-item list minimum
/// (4 objects) is charged per two input bytes; items are decoded in order
/// and the first refused one ends the decoding.
const BALANCE_LIST: Bound = Bound::new(
    AMOUNT.per_byte + 2 * TLV_ITEM + 4 * TLV_ITEM + 64,
    AMOUNT.constant,
);
const SUMMARY_LIST: Bound = Bound::new(
    SUMMARY.per_byte + 2 * TLV_ITEM + 4 * TLV_ITEM + 64,
    SUMMARY.constant,
);

fn list_of(items: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        tlv::write(&mut out, Tag(0x30 | 0x20), &i);
    }
    out
}

#[test]
fn voucher_balances() {
    let seeds = proptest::collection::vec(amount(0), 0..5)
        .prop_map(|amounts| {
            let mut b = Balances::default();
            for a in &amounts {
                let _ = b.credit(a);
            }
            encode_balances(&b)
        })
        .boxed();
    fuzz_decoder(
        "decode_balances",
        BALANCE_LIST,
        seeds,
        TLV_TOKENS,
        decode_balances,
        |v: &Vec<Amount>| list_of(v.iter().map(Codec::to_bytes).collect()),
    );
}

#[test]
fn voucher_exchange_lists() {
    let seeds = proptest::collection::vec(summary(), 0..4)
        .prop_map(|s| list_of(s.iter().map(Codec::to_bytes).collect()))
        .boxed();
    fuzz_decoder(
        "decode_exchanges",
        SUMMARY_LIST,
        seeds,
        TLV_TOKENS,
        decode_exchanges,
        |v: &Vec<ExchangeSummary>| list_of(v.iter().map(Codec::to_bytes).collect()),
    );
}

/// The applet's whole state: TLV lists five levels deep (state, exchanges,
/// exchange, offer, amount), the per-item list minimum, B-tree nodes for
/// balances, offers, exchanges and accepted digests (a node holds 5 to 11
/// entries; the first node of each map is allocated whole for its first
/// entry, hence the constant), and copies of promises, signatures and
/// certificates.
const VOUCHER_STATE: Bound = Bound::new(tlv_list(5, 0).per_byte + 4 * TLV_ITEM + 64, 32 * 1024);

#[test]
fn voucher_card_state() {
    fuzz_codec("VoucherCard", VOUCHER_STATE, voucher_card());
}

// ---------------------------------------------------------------------------
// Text: offer policies
// ---------------------------------------------------------------------------

fn policy() -> BoxedStrategy<Policy> {
    let promise = "[a-z0-9]([a-z0-9 ]{0,28}[a-z0-9])?";
    // A policy's quantities, like every amount's text, stop at the cap.
    let quantity = 0..=tenet_voucher::model::MAX_QUANTITY;
    let amount = (domain(), promise, quantity).prop_map(|(issuer, promise, quantity)| Amount {
        class: VoucherClass { issuer, promise },
        quantity,
    });
    (amount.clone(), amount)
        .prop_map(|(give, want)| Policy { give, want })
        .boxed()
}

/// The error keeps the whole text and explains what is wrong, quoting a
/// part of the text in `{:?}` form (at most 5 bytes per input byte, for a
/// control character written `\u{1}`), and for a bad issuer the id parser's
/// error, which quotes it again: at most `n + 2 · 5n` bytes of text, built
/// in strings that may double.
const POLICY: Bound = Bound::new(32, 1024);

#[test]
fn offer_policies() {
    fuzz_text(
        "Policy",
        POLICY,
        policy().prop_map(|p| p.to_string()).boxed(),
        str::parse::<Policy>,
        Policy::to_string,
        |_| true,
    );
}

// ---------------------------------------------------------------------------
// Keys: the TTP's PEM files
// ---------------------------------------------------------------------------

/// The TTP's PEM files, made once per test binary: its PKCS#8 key, its
/// certificate and the CA's certificate.
struct Fixture {
    _dir: tempfile::TempDir,
    ttp_key_pem: Vec<u8>,
    ttp_cert_pem: Vec<u8>,
    ca_pem: Vec<u8>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ensure_ca(&ca, "hostile-input CA").unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        let ttp = Domain::new([0x77; 12]).owner();
        let files = issue_entity_key(&ca, "ttp", ttp).unwrap();
        Fixture {
            ttp_key_pem: read(&files.key),
            ttp_cert_pem: read(&files.cert),
            ca_pem: read(&files.ca),
            _dir: dir,
        }
    })
}

/// PEM decoding of three sections (each base64-decoded once into a vector
/// of at most 3/4 of its text, a line buffer and a 1 KiB base64 buffer that
/// may double), the key check, copies of the two certificates and an error
/// text that may quote a line.
const PEM_KEYS: Bound = Bound::new(16, 16 * 1024);

/// Hostile PEM key, certificate and CA certificate into
/// `KeyCrypto::from_pem` (how the TTP loads its identity).
#[test]
fn key_crypto_from_pem() {
    let fx = fixture();
    let parts = [
        (0usize, fx.ttp_key_pem.clone()),
        (1, fx.ttp_cert_pem.clone()),
        (2, fx.ca_pem.clone()),
    ];
    let strategy = proptest::strategy::Union::new(
        parts
            .into_iter()
            .map(|(part, seed)| {
                hostile(Just(seed).boxed(), PEM_TOKENS)
                    .prop_map(move |i| (part, i))
                    .boxed()
            })
            .collect::<Vec<_>>(),
    );
    let probe = Probe::new("KeyCrypto::from_pem", PEM_KEYS);
    check(strategy, |(part, input)| {
        let mut pems = [&fx.ttp_key_pem[..], &fx.ttp_cert_pem[..], &fx.ca_pem[..]];
        pems[part] = &input.bytes;
        let n = pems.iter().map(|p| p.len()).sum();
        let out = probe.run(n, || KeyCrypto::from_pem(pems[0], pems[1], pems[2]))?;
        if input.pristine {
            prop_assert!(out.is_ok(), "the TTP's own PEM files were refused");
        }
        Ok(())
    });
    probe.finish(cases());
}

// ---------------------------------------------------------------------------
// Worst-case shapes
// ---------------------------------------------------------------------------

/// Large inputs of the shapes that cost each decoder most per byte (most
/// objects per byte, most map entries, longest quoted errors, the longest
/// and the most PEM sections), so the per-byte factors of the bounds are
/// checked where the constants no longer help. The random inputs above are
/// mostly small.
#[test]
fn worst_case_shapes_stay_within_the_bounds() {
    let max = MAX_MESSAGE_LEN;
    let fill = |unit: &[u8], prefix: &[u8]| {
        let mut b = prefix.to_vec();
        while b.len() + unit.len() <= max {
            b.extend_from_slice(unit);
        }
        b
    };
    let distinct = distinct_tags(max);
    shape(
        "Offer, distinct tags",
        WITH_AMOUNTS,
        &distinct,
        Offer::decode,
    );

    let tiny = |i: u32| Amount {
        class: VoucherClass {
            issuer: Domain::new([i as u8, (i >> 8) as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            promise: String::new(),
        },
        quantity: 1,
    };
    let mut balances = Balances::default();
    for i in 0..2300 {
        balances.credit(&tiny(i)).unwrap();
    }
    let encoded_balances = encode_balances(&balances);
    shape(
        "decode_balances, most amounts",
        BALANCE_LIST,
        &encoded_balances,
        decode_balances,
    );
    let invalid_amounts = fill(&[0x30 | 0x20, 0x02, 0x80, 0x00], &[]);
    shape(
        "decode_balances, empty amounts",
        BALANCE_LIST,
        &invalid_amounts,
        decode_balances,
    );
    // A small offer between two fixed cards, and `i` as the first bytes of
    // an array.
    let offer = |give: Amount, want: Option<Amount>, n1: [u8; 16]| Offer {
        knows: None,
        redeem: None,
        initiator: EntityId::from_array([1; 16]),
        responder: EntityId::from_array([2; 16]),
        give,
        want,
        n1,
        expires: None,
    };
    fn numbered<const N: usize>(i: u32) -> [u8; N] {
        let mut a = [0u8; N];
        a[..4].copy_from_slice(&i.to_be_bytes());
        a
    }
    let summaries: Vec<Vec<u8>> = (0..500u32)
        .map(|i| {
            ExchangeSummary {
                id: ExchangeId([i as u8; 32]),
                role: Role::Initiator,
                phase: Phase::Committed,
                offer: offer(tiny(i), Some(tiny(i + 1)), [0; 16]),
            }
            .to_bytes()
        })
        .collect();
    shape(
        "decode_exchanges, most summaries",
        SUMMARY_LIST,
        &list_of(summaries),
        decode_exchanges,
    );

    let mut voucher = VoucherCard {
        balances,
        accepted: (0..300u32).map(numbered).collect(),
        ..VoucherCard::default()
    };
    for i in 0..100u32 {
        let n1 = numbered(i);
        voucher.offers.insert(n1, offer(tiny(i), Some(tiny(i)), n1));
    }
    let voucher = voucher.to_bytes();
    shape(
        "VoucherCard, most entries",
        VOUCHER_STATE,
        &voucher,
        VoucherCard::decode,
    );

    // The longest kept certificate, named by as many small exchanges as
    // fit: each gets its own copy when read.
    let cert = vec![7u8; tenet_voucher::ttp::MAX_CERTIFICATE_LEN];
    let mut named = VoucherCard::default();
    named
        .certificates
        .push_back(KeptCertificate::new(cert.clone()));
    for i in 0u32.. {
        let n2 = numbered(i);
        let offer = offer(tiny(0), None, [0; 16]);
        let id = ExchangeId::for_offer(&offer, &n2);
        let agreement = tenet_voucher::msg::Agreement {
            offer_digest: offer.digest(),
            id,
            signature: Vec::new(),
            certificate: cert.clone(),
            delegation: None,
            knows: None,
        };
        named.exchanges.insert(
            id,
            Exchange {
                role: Role::Responder,
                offer,
                agreement,
                n2: Some(n2),
                phase: Phase::AwaitingConfirmation,
                due: None,
                asks: 0,
                admission: None,
                seq: None,
            },
        );
        if named.to_bytes().len() > max {
            named.exchanges.remove(&id);
            break;
        }
    }
    let named_bytes = named.to_bytes();
    assert!(named.exchanges.len() > 100, "{}", named.exchanges.len());
    assert_eq!(VoucherCard::decode(&named_bytes).unwrap(), named);
    shape(
        "VoucherCard, one kept certificate named by every exchange",
        VOUCHER_STATE,
        &named_bytes,
        VoucherCard::decode,
    );

    let control = "\u{1}".repeat(20_000);
    let policy = format!("GIVE>=1:{control}:x,WANT<=1:{control}:y");
    shape(
        "Policy, control characters quoted twice",
        POLICY,
        policy.as_bytes(),
        |b| std::str::from_utf8(b).unwrap().parse::<Policy>(),
    );

    let fx = fixture();
    let body: String = {
        let line = "QUJD".repeat(16);
        (0..900).map(|_| format!("{line}\n")).collect()
    };
    let big_cert = format!("-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n");
    shape(
        "KeyCrypto::from_pem, long certificate",
        PEM_KEYS,
        big_cert.as_bytes(),
        |b| KeyCrypto::from_pem(&fx.ttp_key_pem, b, &fx.ca_pem),
    );
    let labels = "-----BEGIN X-----\n".repeat(3500);
    shape(
        "KeyCrypto::from_pem, many sections",
        PEM_KEYS,
        labels.as_bytes(),
        |b| KeyCrypto::from_pem(b, &fx.ttp_cert_pem, &fx.ca_pem),
    );
}
