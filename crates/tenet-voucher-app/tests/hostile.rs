//! Hostile input: every decoder of the project under property tests.
//!
//! Each property feeds one decoder two kinds of input: mutations of valid
//! encodings (bits flipped, bytes set to boundary values, length-like words
//! overwritten, bytes and format tokens inserted, ranges deleted or
//! repeated, truncation, two encodings spliced) and plain random bytes or
//! text. It asserts that
//!
//! - the decoder never panics (a panic fails the case and is shrunk);
//! - a valid encoding decodes, and encodes back to the same bytes;
//! - decoding `n` bytes allocates at most the decoder's bound `a·n + c`,
//!   measured by the counting global allocator below (per-thread counters,
//!   so tests running in parallel do not see each other's allocations).
//!
//! The card's APDU front end gets sequences of hostile APDUs and must answer
//! each with a well-formed response, and leave its persistent state as it
//! was whenever it rejects an APDU or refuses the message it carried.
//!
//! The bounds and why they hold are in `docs/hostile-input.md`.
//!
//! Cases per property: `TENET_HOSTILE_CASES` (default 2000). The long run:
//! `TENET_HOSTILE_CASES=1000000 cargo test --release --all-features -p tenet-host --test hostile`.
//! A failure prints the shrunk input; `PROPTEST_RNG_SEED=N` fixes a run's
//! random seed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::{Debug, Write as _};
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestCaseResult, TestRunner,
};
use tenet_card::state::CardState;
use tenet_card::{Card, CardLimits, MemStore, Personalization, SeededEntropy, Storage};
use tenet_host::Config;
use tenet_pki::{ensure_ca, issue_entity, issue_entity_key};
use tenet_proto::apdu::{Command, Response, StatusWord, tenet};
use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, UnblockPin, VerifyPin};
use tenet_proto::notice::{Undeliverable, UndeliverableReason};
use tenet_proto::{Codec, Domain, EntityId, MAX_MESSAGE_LEN, Message, Mtype, Port};
use tenet_voucher::card::{self as vcard, Exchange, Phase, Role, VoucherCard};
use tenet_voucher::crypto::{Crypto, KeyCrypto};
use tenet_voucher::model::{Amount, VoucherClass};
use tenet_voucher::msg::{
    self, Admission, Agreement, Commitment, Confirmation, ExchangeId, Kind, Offer, StartExchange,
};
use tenet_voucher::policy::Policy;
use tenet_voucher_app::applet::{APPLET_ID, VoucherApplet, initial_data};

// ---------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------

/// The system allocator, counting the bytes each thread asks for while its
/// counter is switched on.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

/// Adds `bytes` to this thread's counter if it is on. `try_with` because an
/// allocation may happen while the thread's locals are being torn down.
fn note(bytes: usize) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes)));
        }
    });
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; the counting touches only
// const-initialized thread-locals that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    /// A reallocation counts as a fresh allocation of `new_size` bytes, so
    /// the counter is an upper bound on what a copying allocator would need
    /// (a growing vector is charged for every capacity it passes through).
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` and `layout` come from `System`; `new_size` is the
        // caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Switches this thread's counter off again, also when `f` panics.
struct CountingOff;

impl Drop for CountingOff {
    fn drop(&mut self) {
        COUNTING.with(|c| c.set(false));
    }
}

/// Runs `f` and returns its result and the bytes it allocated on this thread
/// (the result's own allocations included).
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let off = CountingOff;
    COUNTING.with(|c| c.set(true));
    let out = f();
    drop(off);
    (out, ALLOCATED.with(Cell::get) - before)
}

// ---------------------------------------------------------------------------
// Runner, bounds and tallies
// ---------------------------------------------------------------------------

/// Cases per property: `TENET_HOSTILE_CASES`, default 2000.
fn cases() -> u32 {
    match std::env::var("TENET_HOSTILE_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .expect("TENET_HOSTILE_CASES must be a positive number"),
        Err(_) => 2000,
    }
}

/// Below this many cases a property does not insist on having seen both
/// accepted and refused inputs (a quick run with a handful of cases may not).
const COVERAGE_MIN_CASES: u32 = 500;

fn check_with<S>(cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        // ChaCha, the default, spends most of a debug build's time in
        // unoptimized SIMD intrinsics; the inputs need no cryptographic RNG.
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

fn check<S>(strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    check_with(cases(), strategy, test)
}

/// An allocation bound: decoding `n` bytes allocates at most
/// `per_byte · n + constant` bytes in total (every allocation and
/// reallocation counted, nothing subtracted for frees).
#[derive(Clone, Copy, Debug)]
struct Bound {
    per_byte: usize,
    constant: usize,
}

impl Bound {
    const fn new(per_byte: usize, constant: usize) -> Self {
        Self { per_byte, constant }
    }

    fn limit(self, n: usize) -> usize {
        self.per_byte * n + self.constant
    }
}

/// Counts what a decoder did with the inputs of one property and the
/// largest share of its bound an input used.
struct Probe {
    name: &'static str,
    bound: Bound,
    accepted: Cell<u64>,
    refused: Cell<u64>,
    worst: Cell<(f64, usize, usize)>,
}

impl Probe {
    fn new(name: &'static str, bound: Bound) -> Self {
        Self {
            name,
            bound,
            accepted: Cell::new(0),
            refused: Cell::new(0),
            worst: Cell::new((0.0, 0, 0)),
        }
    }

    /// Decodes an `n`-byte input with `f`, failing the case if that
    /// allocated more than the bound.
    fn run<T, E>(
        &self,
        n: usize,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<Result<T, E>, TestCaseError> {
        let (out, used) = allocated_by(f);
        self.measured(n, used)?;
        match &out {
            Ok(_) => self.accepted.set(self.accepted.get() + 1),
            Err(_) => self.refused.set(self.refused.get() + 1),
        }
        Ok(out)
    }

    fn measured(&self, n: usize, used: usize) -> Result<(), TestCaseError> {
        let limit = self.bound.limit(n);
        let share = if limit == 0 {
            if used == 0 { 0.0 } else { f64::INFINITY }
        } else {
            used as f64 / limit as f64
        };
        if share > self.worst.get().0 {
            self.worst.set((share, used, n));
        }
        if used > limit {
            return Err(TestCaseError::fail(format!(
                "{}: decoding {n} bytes allocated {used} bytes, above the bound {} x n + {} = {limit}",
                self.name, self.bound.per_byte, self.bound.constant
            )));
        }
        Ok(())
    }

    /// Prints the tally and, on a full-size run, insists that the inputs
    /// reached both outcomes: a property whose inputs are all refused at the
    /// first byte (or all accepted) would pass without testing much.
    fn finish(&self, cases: u32) {
        let (share, used, n) = self.worst.get();
        eprintln!(
            "{}: {} accepted, {} refused; worst allocation {used} bytes for {n} input bytes ({:.1}% of the bound {} x n + {})",
            self.name,
            self.accepted.get(),
            self.refused.get(),
            share * 100.0,
            self.bound.per_byte,
            self.bound.constant
        );
        if cases >= COVERAGE_MIN_CASES {
            assert!(
                self.accepted.get() > 0,
                "{}: no input was accepted",
                self.name
            );
            assert!(
                self.refused.get() > 0,
                "{}: no input was refused",
                self.name
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Mutation-based generators
// ---------------------------------------------------------------------------

/// Byte values at the edges of the formats: TLV length forms (`80`-`84`),
/// multi-byte tag markers (`1f`, `9f`), constructed tags, APDU classes and
/// instructions, and the extremes.
const EDGE_BYTES: &[u8] = &[
    0x00, 0x01, 0x02, 0x04, 0x10, 0x12, 0x1f, 0x20, 0x22, 0x30, 0x3f, 0x7f, 0x80, 0x81, 0x82, 0x83,
    0x84, 0x90, 0x9f, 0xa0, 0xa1, 0xa2, 0xa4, 0xc0, 0xfe, 0xff,
];

/// Values for length and count fields: around the TLV, short/extended APDU,
/// eTP and u16/u32 boundaries.
const EDGE_WORDS: &[u32] = &[
    0,
    1,
    2,
    0x21,
    0x22,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x101,
    0x7fff,
    0x8000,
    (MAX_MESSAGE_LEN - 34) as u32,
    0xfffe,
    0xffff,
    0x1_0000,
    0x1_0001,
    0xff_ffff,
    0x100_0000,
    0x7fff_ffff,
    0xffff_fffe,
    0xffff_ffff,
];

/// Fragments of BER-TLV: headers with every length form, nested
/// constructed objects, over-long tags and lengths.
const TLV_TOKENS: &[&[u8]] = &[
    &[0x80, 0x00],
    &[0x80, 0x01, 0x00],
    &[0x81, 0x7f],
    &[0x82, 0x81, 0x80],
    &[0x83, 0x82, 0xff, 0xff],
    &[0x84, 0x83, 0xff, 0xff, 0xff],
    &[0x80, 0x84, 0, 0, 0, 1],
    &[0x80, 0x80],
    &[0x9f, 0x1a, 0x00],
    &[0x9f, 0x81, 0x81, 0x01],
    &[0x1f],
    &[0xa0, 0x00],
    &[0xa2, 0x04, 0xa0, 0x02, 0x80, 0x00],
    &[0x30, 0x00],
    &[0x30, 0x82, 0x01, 0x00],
    &[0x80, 0x10],
];

/// Fragments of TOML and of this project's configuration.
const TOML_TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"=",
    b" = ",
    b"\"",
    b"'",
    b"\"\"\"",
    b"'''",
    b"\n",
    b"\r\n",
    b"#",
    b".",
    b",",
    b"{",
    b"}",
    b"{ a = 1 }",
    b"[ 1, [2, [3]] ]",
    b"\\",
    b"\\u0000",
    b"\\UFFFFFFFF",
    b"\t",
    b"true",
    b"1e999",
    b"-1e-999",
    b"nan",
    b"-inf",
    b"+inf",
    b"0",
    b"-1",
    b"9223372036854775808",
    b"18446744073709551616",
    b"0x7fff",
    b"0o777",
    b"1_000",
    b"1979-05-27T07:32:00Z",
    b"[host]\n",
    b"[dispatch]\n",
    b"[card]\n",
    b"[remote]\n",
    b"[ttp]\n",
    b"[guard.offers]\n",
    b"[[guard.rules]]\naction = \"drop\"\n",
    b"[[remote.peers]]\naddress = \"a:1\"\n",
    b"[remote.nats]\nurl = \"nats://x\"\n",
    b"danger_plaintext = true\n",
    b"domain = \"00112233445566778899aabb\"\n",
    b"ttl_secs = ",
    b"wait_secs = ",
    b"max_message = ",
    b"rate = ",
    b"policy = \"GIVE>=1:cacacacacacacacacacacaca:x,WANT<=1:cacacacacacacacacacacaca:y\"\n",
    b"a.b.c.d.e.f.g = 1\n",
    b"\xc3\xa9",
    b"\xff",
];

/// One change to a byte string. Positions are `Index`es, resolved against
/// the length the string has when the change is applied.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrites a big-endian u16 (`false`) or u32 (`true`).
    SetWord(Index, u32, bool),
    Insert(Index, Vec<u8>),
    InsertToken(Index, &'static [u8]),
    /// Writes a token over the bytes at a position, keeping the length
    /// where it fits (a fixed-width field stays fixed-width).
    OverwriteToken(Index, &'static [u8]),
    Delete(Index, usize),
    Truncate(Index),
    /// Repeats a range after itself.
    Repeat(Index, usize, usize),
}

fn mutation(tokens: &'static [&'static [u8]]) -> BoxedStrategy<Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        3 => (any::<Index>(), prop_oneof![select(EDGE_BYTES), any::<u8>()])
            .prop_map(|(i, v)| Mutation::SetByte(i, v)),
        2 => (any::<Index>(), select(EDGE_WORDS), any::<bool>())
            .prop_map(|(i, w, four)| Mutation::SetWord(i, w, four)),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        3 => (any::<Index>(), select(tokens)).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        2 => (any::<Index>(), select(tokens)).prop_map(|(i, t)| Mutation::OverwriteToken(i, t)),
        2 => (any::<Index>(), 1usize..32).prop_map(|(i, k)| Mutation::Delete(i, k)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..64, 1usize..4).prop_map(|(i, k, t)| Mutation::Repeat(i, k, t)),
    ]
    .boxed()
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let len = buf.len();
    match m {
        Mutation::FlipBit(i, bit) if len > 0 => buf[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, v) if len > 0 => buf[i.index(len)] = *v,
        Mutation::SetWord(i, w, four) => {
            let bytes = w.to_be_bytes();
            let word = if *four { &bytes[..] } else { &bytes[2..] };
            if len >= word.len() {
                let at = i.index(len - word.len() + 1);
                buf[at..at + word.len()].copy_from_slice(word);
            }
        }
        Mutation::Insert(i, bytes) => {
            let at = i.index(len + 1);
            buf.splice(at..at, bytes.iter().copied());
        }
        Mutation::InsertToken(i, token) => {
            let at = i.index(len + 1);
            buf.splice(at..at, token.iter().copied());
        }
        Mutation::OverwriteToken(i, token) if len > 0 => {
            let at = i.index(len);
            let end = (at + token.len()).min(len);
            buf.splice(at..end, token.iter().copied());
        }
        Mutation::Delete(i, k) if len > 0 => {
            let at = i.index(len);
            buf.drain(at..(at + k).min(len));
        }
        Mutation::Truncate(i) => buf.truncate(i.index(len + 1)),
        Mutation::Repeat(i, k, times) if len > 0 => {
            let at = i.index(len);
            let end = (at + k).min(len);
            let chunk = buf[at..end].to_vec();
            for _ in 0..*times {
                buf.splice(end..end, chunk.iter().copied());
            }
        }
        _ => {}
    }
}

fn mutate(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        apply(&mut bytes, m);
    }
    bytes
}

/// One hostile input. `pristine` inputs are valid encodings, unchanged.
#[derive(Clone)]
struct Input {
    bytes: Vec<u8>,
    pristine: bool,
}

impl Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Input {{ pristine: {}, {} bytes: {:02x?} }}",
            self.pristine,
            self.bytes.len(),
            self.bytes
        )
    }
}

/// Valid encodings from `seeds` (one in ten unchanged), mutations of them,
/// splices of two of them, and random bytes.
fn hostile(
    seeds: BoxedStrategy<Vec<u8>>,
    tokens: &'static [&'static [u8]],
) -> BoxedStrategy<Input> {
    prop_oneof![
        1 => seeds.clone().prop_map(|bytes| Input { bytes, pristine: true }),
        6 => (seeds.clone(), proptest::collection::vec(mutation(tokens), 1..8))
            .prop_map(|(b, ms)| Input { bytes: mutate(b, &ms), pristine: false }),
        1 => (seeds.clone(), seeds, any::<Index>(), any::<Index>()).prop_map(|(a, b, i, j)| {
            let mut bytes = a[..i.index(a.len() + 1)].to_vec();
            bytes.extend_from_slice(&b[j.index(b.len() + 1)..]);
            Input { bytes, pristine: false }
        }),
        2 => proptest::collection::vec(any::<u8>(), 0..512)
            .prop_map(|bytes| Input { bytes, pristine: false }),
    ]
    .boxed()
}

/// Like [`hostile`], for text decoders: mutated bytes are read as UTF-8
/// with invalid sequences replaced, and random text is any Unicode.
#[derive(Clone, Debug)]
struct TextInput {
    text: String,
    pristine: bool,
}

fn hostile_text(
    seeds: BoxedStrategy<String>,
    tokens: &'static [&'static [u8]],
) -> BoxedStrategy<TextInput> {
    let as_bytes = seeds.clone().prop_map(String::into_bytes).boxed();
    prop_oneof![
        8 => hostile(as_bytes, tokens).prop_map(|i| TextInput {
            text: String::from_utf8_lossy(&i.bytes).into_owned(),
            pristine: i.pristine,
        }),
        1 => ".{0,200}".prop_map(|text| TextInput { text, pristine: false }),
        1 => seeds.prop_map(|text| TextInput { text, pristine: true }),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// Valid values
// ---------------------------------------------------------------------------

fn bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max).boxed()
}

fn domain() -> BoxedStrategy<Domain> {
    prop_oneof![
        any::<[u8; 12]>().prop_map(Domain::new),
        select(&[0u8, 0xc0, 0xff][..]).prop_map(|b| Domain::new([b; 12])),
    ]
    .boxed()
}

fn entity() -> BoxedStrategy<EntityId> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(EntityId::from_array),
        (domain(), 0u32..4).prop_map(|(d, p)| EntityId::new(d, Port::new(p))),
    ]
    .boxed()
}

fn promise() -> BoxedStrategy<String> {
    prop_oneof!["[a-z0-9 ]{0,40}", ".{0,20}"].boxed()
}

fn class() -> BoxedStrategy<VoucherClass> {
    (domain(), promise())
        .prop_map(|(issuer, promise)| VoucherClass { issuer, promise })
        .boxed()
}

/// An amount; `min` 1 for the amounts of an exchange, which must not be 0.
fn amount(min: u64) -> BoxedStrategy<Amount> {
    (class(), prop_oneof![min..=10, min..=u64::MAX])
        .prop_map(|(class, quantity)| Amount { class, quantity })
        .boxed()
}

fn offer() -> BoxedStrategy<Offer> {
    (entity(), entity(), amount(1), amount(1), any::<[u8; 16]>())
        .prop_map(|(initiator, responder, give, want, n1)| Offer {
            initiator,
            responder,
            give,
            want,
            n1,
        })
        .boxed()
}

fn exchange_id() -> BoxedStrategy<ExchangeId> {
    any::<[u8; 32]>().prop_map(ExchangeId).boxed()
}

fn agreement() -> BoxedStrategy<Agreement> {
    (any::<[u8; 32]>(), exchange_id(), bytes(80), bytes(400))
        .prop_map(|(offer_digest, id, signature, certificate)| Agreement {
            offer_digest,
            id,
            signature,
            certificate,
        })
        .boxed()
}

fn role() -> BoxedStrategy<Role> {
    select(vec![Role::Initiator, Role::Responder]).boxed()
}

fn phase() -> BoxedStrategy<Phase> {
    select(vec![
        Phase::AwaitingCommitment,
        Phase::AwaitingConfirmation,
        Phase::Resolving,
        Phase::Aborting,
        Phase::Committed,
        Phase::Resolved,
        Phase::Aborted,
    ])
    .boxed()
}

fn voucher_card() -> BoxedStrategy<VoucherCard> {
    let exchange = (
        role(),
        phase(),
        offer(),
        agreement(),
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(|(role, phase, offer, agreement, n2)| Exchange {
            role,
            phase,
            offer,
            agreement,
            // The decoder refuses a responder's exchange without n2.
            n2: if role == Role::Responder {
                Some(n2.unwrap_or([2; 16]))
            } else {
                n2
            },
        });
    (
        proptest::collection::vec(amount(0), 0..4),
        proptest::collection::vec(offer(), 0..3),
        proptest::collection::vec(exchange, 0..3),
        proptest::collection::vec(any::<[u8; 32]>(), 0..3),
        proptest::option::of(entity()),
        proptest::option::of(bytes(300)),
        proptest::option::of(entity()),
    )
        .prop_map(
            |(amounts, offers, exchanges, accepted, ttp, ttp_certificate, acceptor)| {
                let mut v = VoucherCard {
                    ttp,
                    ttp_certificate,
                    acceptor,
                    accepted: accepted.into_iter().collect(),
                    ..VoucherCard::default()
                };
                for a in &amounts {
                    let _ = v.balances.credit(a);
                }
                for o in offers {
                    v.offers.insert(o.n1, o);
                }
                for e in exchanges {
                    v.exchanges.insert(e.agreement.id, e);
                }
                v
            },
        )
        .boxed()
}

fn encoded<T: Codec + Debug + 'static>(s: BoxedStrategy<T>) -> BoxedStrategy<Vec<u8>> {
    s.prop_map(|v| v.to_bytes()).boxed()
}

// ---------------------------------------------------------------------------
// Generic properties
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// tenet-card: the persistent state and the APDU front end
// ---------------------------------------------------------------------------

const PIN: &[u8] = b"1234";
const PUK: &[u8] = b"12345678";

/// Shared by the card and certificate properties: a CA, a TTP and a peer
/// card with keys and certificates, and a personalized voucher card that
/// holds 1000 coffee vouchers and has one open offer.
struct Fixture {
    _dir: tempfile::TempDir,
    /// The card's store, as personalization and setup left it.
    card_store: MemStore,
    card: EntityId,
    /// The card's wallet app (authenticated in every case).
    wallet: EntityId,
    /// Valid messages to the card, one or more per service and voucher step.
    to_card: Vec<Message>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(Fixture::new)
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

/// Delivers `m` and collects every message the card answers with.
fn deliver(card: &mut Card<MemStore>, m: &Message) -> Vec<Message> {
    let mut r = Response::decode(&card.process_apdu(&deliver_apdu(m, Some(65_536)))).unwrap();
    let mut out = Vec::new();
    loop {
        assert!(r.sw.is_success(), "{}", r.sw);
        if !r.data.is_empty() {
            out.push(Message::decode(&r.data).unwrap());
        }
        if r.sw.waiting() == Some(0) {
            return out;
        }
        let poll = Command::new(tenet::CLA, tenet::INS_POLL, 0, 0).with_le(65_536);
        r = Response::decode(&card.process_apdu(&poll.to_bytes())).unwrap();
    }
}

fn coffee(issuer: Domain, quantity: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer,
            promise: "1 coffee".into(),
        },
        quantity,
    }
}

fn ticket(issuer: Domain, quantity: u64) -> Amount {
    Amount {
        class: VoucherClass {
            issuer,
            promise: "1 ticket".into(),
        },
        quantity,
    }
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ensure_ca(&ca, "hostile-input CA").unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();

        let ttp = Domain::new([0x77; 12]).owner();
        let files = issue_entity_key(&ca, "ttp", ttp).unwrap();
        let (ttp_key_pem, ttp_cert_pem, ca_pem) =
            (read(&files.key), read(&files.cert), read(&files.ca));
        let mut ttp_crypto = KeyCrypto::from_pem(&ttp_key_pem, &ttp_cert_pem, &ca_pem).unwrap();
        let ttp_cert_der = ttp_crypto.certificate();

        let peer = Domain::new([0x99; 12]).owner();
        let files = issue_entity_key(&ca, "peer", peer).unwrap();
        let mut peer_crypto =
            KeyCrypto::from_pem(&read(&files.key), &read(&files.cert), &ca_pem).unwrap();

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
        let id = card.id();
        let card_public_key = card.state().public_key.clone();
        let (cert, ca_cert) = issue_entity(&ca, id, &card_public_key).unwrap();
        card.install_certificates(cert, ca_cert).unwrap();
        card.provision(APPLET_ID, initial_data(ttp, Some(ttp_cert_der.clone())))
            .unwrap();
        card.install(Box::new(VoucherApplet::default()));
        let wallet = EntityId::new(domain, Port::new(5));
        assert_eq!(
            Response::decode(&card.process_apdu(&select_apdu()))
                .unwrap()
                .sw,
            StatusWord::OK
        );
        let verify = Message::new(
            wallet,
            id,
            Mtype::VERIFY_PIN,
            VerifyPin { pin: PIN.to_vec() }.to_bytes(),
        );
        let answer = deliver(&mut card, &verify);
        assert_eq!(
            PinStatus::decode(&answer[0].param).unwrap().outcome,
            PinOutcome::Verified
        );
        let mint = Message::new(wallet, id, vcard::MINT, coffee(domain, 1000).to_bytes());
        assert!(deliver(&mut card, &mint).is_empty(), "mint answered");
        let start = StartExchange {
            responder: peer,
            peer_wallet: EntityId::new(peer.domain(), Port::new(5)),
            give: coffee(domain, 10),
            want: ticket(peer.domain(), 1),
        };
        let start = Message::new(wallet, id, msg::START_EXCHANGE, start.to_bytes());
        let sent = deliver(&mut card, &start);
        assert_eq!(sent[0].mtype(), msg::OFFER, "{sent:?}");
        let open_offer = Offer::decode(&sent[0].param).unwrap();

        // Valid next steps from the state above, each from its proper sender.
        let n2 = [0x42; 16];
        let xid = ExchangeId::of_n2(&n2);
        let agreement = Agreement {
            offer_digest: open_offer.digest(),
            id: xid,
            signature: peer_crypto.sign(&Agreement::signed_bytes(&open_offer.digest(), &xid)),
            certificate: peer_crypto.certificate(),
        };
        let incoming = Offer {
            initiator: peer,
            responder: id,
            give: ticket(peer.domain(), 1),
            want: coffee(domain, 2),
            n1: [0x24; 16],
        };
        let mut admission = |kind: Kind| Admission {
            kind,
            id: xid,
            signature: ttp_crypto.sign(&kind.admission_bytes(&xid)),
            certificate: ttp_cert_der.clone(),
        };
        let confirmation = Confirmation {
            id: xid,
            signature: peer_crypto.sign(&Confirmation::signed_bytes(&xid)),
            certificate: peer_crypto.certificate(),
        };
        let stranger = EntityId::new(Domain::new([0x55; 12]), Port::new(9));
        let m = |src: EntityId, mtype: Mtype, param: Vec<u8>| Message::new(src, id, mtype, param);
        let to_card = vec![
            m(wallet, Mtype::ECHO_REQUEST, b"hi".to_vec()),
            m(
                wallet,
                Mtype::VERIFY_PIN,
                VerifyPin { pin: PIN.to_vec() }.to_bytes(),
            ),
            m(
                wallet,
                Mtype::VERIFY_PIN,
                VerifyPin {
                    pin: b"0000".to_vec(),
                }
                .to_bytes(),
            ),
            m(
                stranger,
                Mtype::VERIFY_PIN,
                VerifyPin { pin: PIN.to_vec() }.to_bytes(),
            ),
            m(
                wallet,
                Mtype::UNBLOCK_PIN,
                UnblockPin {
                    puk: PUK.to_vec(),
                    new_pin: PIN.to_vec(),
                }
                .to_bytes(),
            ),
            m(
                wallet,
                Mtype::CHANGE_PIN,
                ChangePin {
                    new_pin: PIN.to_vec(),
                }
                .to_bytes(),
            ),
            m(wallet, Mtype::LOGOUT, vec![]),
            m(wallet, Mtype::CARD_INFO_REQUEST, vec![]),
            m(wallet, vcard::MINT, coffee(domain, 5).to_bytes()),
            m(wallet, vcard::BALANCE_REQUEST, vec![]),
            m(wallet, vcard::EXCHANGES_REQUEST, vec![]),
            m(
                wallet,
                msg::START_EXCHANGE,
                StartExchange {
                    responder: peer,
                    peer_wallet: peer,
                    give: coffee(domain, 1),
                    want: ticket(peer.domain(), 3),
                }
                .to_bytes(),
            ),
            m(wallet, vcard::SET_ACCEPTOR, wallet.to_bytes()),
            m(peer, msg::OFFER, incoming.to_bytes()),
            m(wallet, msg::ACCEPT, incoming.to_bytes()),
            m(peer, msg::AGREEMENT, agreement.to_bytes()),
            m(peer, msg::COMMITMENT, Commitment { n2 }.to_bytes()),
            m(peer, msg::CONFIRMATION, confirmation.to_bytes()),
            m(wallet, msg::RECOVER, xid.to_bytes()),
            m(ttp, msg::ADMISSION, admission(Kind::Resolve).to_bytes()),
            m(ttp, msg::ADMISSION, admission(Kind::Abort).to_bytes()),
            m(
                peer,
                Mtype::UNDELIVERABLE,
                Undeliverable {
                    reason: UndeliverableReason::NO_ROUTE,
                    dst: peer,
                    mtype: msg::OFFER,
                }
                .to_bytes(),
            ),
            m(peer, Mtype::ECHO_REPLY, vec![1]),
            m(wallet, Mtype(0x8001), vec![1, 2, 3]),
        ];
        Self {
            card_store: card.store().clone(),
            card: id,
            wallet,
            to_card,
            _dir: dir,
        }
    }

    /// The card as setup left it, powered up: applet selected, wallet
    /// authenticated.
    fn card(&self) -> Card<MemStore> {
        let mut card = Card::open(
            self.card_store.clone(),
            CardLimits::default(),
            Box::new(SeededEntropy::new(3)),
        )
        .unwrap();
        card.install(Box::new(VoucherApplet::default()));
        card.process_apdu(&select_apdu());
        let verify = Message::new(
            self.wallet,
            self.card,
            Mtype::VERIFY_PIN,
            VerifyPin { pin: PIN.to_vec() }.to_bytes(),
        );
        deliver(&mut card, &verify);
        card
    }
}

/// One step of a card session: the APDUs of one command (several for a
/// chained DELIVER), then hostile changes to one of them.
fn apdu_step(fx: &'static Fixture) -> BoxedStrategy<Vec<Vec<u8>>> {
    let le = prop_oneof![
        Just(None),
        Just(Some(256)),
        Just(Some(65_536)),
        (1usize..=300).prop_map(Some),
    ];
    let message = (
        any::<Index>(),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(mutation(TLV_TOKENS), 1..4),
        ],
        any::<bool>(),
    )
        .prop_map(move |(i, ms, whole)| {
            let m = &fx.to_card[i.index(fx.to_card.len())];
            if whole {
                mutate(m.to_bytes(), &ms)
            } else {
                Message::new(m.src(), m.dst(), m.mtype(), mutate(m.param.clone(), &ms)).to_bytes()
            }
        });
    let deliver = (
        message,
        le.clone(),
        prop_oneof![3 => Just(None), 1 => (1usize..=255).prop_map(Some)],
    )
        .prop_map(|(mut data, le, chunk)| {
            data.truncate(65_535);
            let mut c = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0).with_data(data);
            c.le = le;
            match chunk {
                Some(n) => c.chain(n).iter().map(Command::to_bytes).collect(),
                None => vec![c.to_bytes()],
            }
        });
    let other = (
        select(vec![
            (tenet::CLA, tenet::INS_POLL),
            (tenet::CLA, tenet::INS_ASSIGN_PORT),
            (tenet::CLA, tenet::INS_GET_INFO),
            (0x00, tenet::INS_GET_RESPONSE),
            (0x00, tenet::INS_SELECT),
            (tenet::CLA, 0x99),
        ]),
        le,
        any::<bool>(),
    )
        .prop_map(|((cla, ins), le, other_aid)| {
            let mut c = Command::new(cla, ins, 0, 0);
            if ins == tenet::INS_SELECT {
                c.p1 = 4;
                c.data = if other_aid {
                    vec![0xa0, 0, 0, 0, 1]
                } else {
                    tenet::AID.to_vec()
                };
            }
            c.le = le;
            vec![c.to_bytes()]
        });
    let step = prop_oneof![
        5 => deliver,
        3 => other,
        1 => bytes(80).prop_map(|b| vec![b]),
    ];
    (
        step,
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec(mutation(TLV_TOKENS), 1..4),
        ],
        any::<Index>(),
    )
        .prop_map(|(mut apdus, ms, which)| {
            let i = which.index(apdus.len());
            apdus[i] = mutate(std::mem::take(&mut apdus[i]), &ms);
            apdus
        })
        .boxed()
}

/// What a rejected APDU must not change.
#[derive(Debug, PartialEq)]
struct Persistent {
    state: CardState,
    record: Option<Vec<u8>>,
    commits: u64,
}

impl Persistent {
    fn of(card: &Card<MemStore>) -> Self {
        Self {
            state: card.state().clone(),
            record: card.store().clone().load().unwrap(),
            commits: card.store().commits,
        }
    }
}

/// What a malformed APDU must not change either.
#[derive(Debug, PartialEq)]
struct Volatile {
    waiting: usize,
    authenticated: Vec<EntityId>,
}

impl Volatile {
    fn of(card: &Card<MemStore>) -> Self {
        Self {
            waiting: card.waiting(),
            authenticated: card.authenticated().copied().collect(),
        }
    }
}

/// Outcomes the card sessions must reach over a full-size run, so the
/// sequences are known to get past the front end into the services and the
/// voucher applet.
#[derive(Default, Debug)]
struct SessionTally {
    apdus: u64,
    malformed: u64,
    rejected: u64,
    refusals_checked: u64,
    answers: BTreeMap<u16, u64>,
}

/// Sequences of hostile APDUs into a real card holding vouchers, an open
/// offer and an authenticated wallet. After every APDU:
///
/// - the response is a well-formed response APDU;
/// - the store holds exactly the state the card works with;
/// - an APDU that fits no ISO 7816-4 case is answered `6700` and changes
///   nothing, volatile state included;
/// - an APDU answered with an error status (not `9000`, `91xx`, `61xx`)
///   leaves the persistent state and the store untouched (docs/apdu.md:
///   "nothing changed", "the message had no effect");
/// - a DELIVER whose message the card refuses (it answers with a `refused`
///   notice) leaves the persistent state untouched (an applet's refusal
///   commits nothing; the card services refuse before they change anything).
#[test]
fn card_front_end_apdu_sessions() {
    let fx = fixture();
    let tally = RefCell::new(SessionTally::default());
    let sessions = proptest::collection::vec(apdu_step(fx), 1..10);
    check(sessions, |steps| {
        let mut card = fx.card();
        let mut t = tally.borrow_mut();
        // A GET RESPONSE sequence is open after a 61xx answer until a
        // command gets past the APDU decoding and class check.
        let mut pending = false;
        for apdu in steps.iter().flatten() {
            t.apdus += 1;
            let (p0, v0) = (Persistent::of(&card), Volatile::of(&card));
            let cmd = Command::decode(apdu);
            let raw = card.process_apdu(apdu);
            let resp = Response::decode(&raw)
                .map_err(|e| TestCaseError::fail(format!("malformed response {raw:02x?}: {e}")))?;
            let (p1, v1) = (Persistent::of(&card), Volatile::of(&card));
            let stored = CardState::decode(p1.record.as_deref().unwrap_or_default())
                .map_err(|e| TestCaseError::fail(format!("stored state unreadable: {e}")))?;
            prop_assert_eq!(&stored, &p1.state, "store and card disagree");
            let early = match &cmd {
                Err(_) => {
                    t.malformed += 1;
                    prop_assert_eq!(resp.sw, StatusWord::WRONG_LENGTH);
                    prop_assert!(resp.data.is_empty());
                    prop_assert_eq!(&p1, &p0, "a malformed APDU changed the card");
                    prop_assert_eq!(&v1, &v0, "a malformed APDU changed the card");
                    true
                }
                Ok(c) => c.cla & 0x03 != 0,
            };
            let sw = resp.sw;
            let ok = sw.is_success() || sw.sw1() == 0x61;
            if !ok {
                t.rejected += 1;
                prop_assert!(resp.data.is_empty(), "data with an error status");
                prop_assert_eq!(&p1, &p0, "rejected APDU ({}) changed the card", sw);
            }
            if let Ok(c) = &cmd {
                let delivered = c.cla == tenet::CLA && c.ins == tenet::INS_DELIVER;
                let polled = c.cla == tenet::CLA && c.ins == tenet::INS_POLL;
                if (delivered || polled)
                    && sw.is_success()
                    && !resp.data.is_empty()
                    && let Ok(answer) = Message::decode(&resp.data)
                {
                    *t.answers.entry(answer.mtype().0).or_default() += 1;
                    if delivered && !pending && v0.waiting == 0 && answer.mtype() == Mtype::REFUSED
                    {
                        t.refusals_checked += 1;
                        prop_assert_eq!(&p1, &p0, "a refused message changed the card");
                    }
                }
            }
            if !early {
                pending = sw.sw1() == 0x61;
            }
        }
        Ok(())
    });
    let t = tally.into_inner();
    eprintln!("card sessions: {t:?}");
    if cases() >= COVERAGE_MIN_CASES {
        assert!(
            t.malformed > 0 && t.rejected > 0 && t.refusals_checked > 0,
            "{t:?}"
        );
        for (mtype, what) in [
            (Mtype::ECHO_REPLY, "echo"),
            (Mtype::PIN_STATUS, "PIN services"),
            (Mtype::CARD_INFO, "card info"),
            (Mtype::REFUSED, "refusals"),
            (vcard::BALANCES, "balances"),
            (msg::AGREEMENT, "accepting an offer"),
            (msg::CONFIRMATION, "an agreement to the open offer"),
        ] {
            assert!(
                t.answers.contains_key(&mtype.0),
                "no session reached {what} ({mtype}): {t:?}"
            );
        }
    }
}

/// The voucher applet reads its state from the card's store on every
/// message: hostile stored state makes it refuse, never panic.
#[test]
fn voucher_applet_reads_hostile_stored_state() {
    let fx = fixture();
    let real = fx.card().state().applets[&APPLET_ID].clone();
    let seeds = prop_oneof![Just(real), encoded(voucher_card())].boxed();
    let refused = Cell::new(0u64);
    let answered = Cell::new(0u64);
    let requests = [
        vcard::BALANCE_REQUEST,
        vcard::EXCHANGES_REQUEST,
        msg::RECOVER,
    ];
    check_with(
        cases().div_ceil(4),
        (hostile(seeds, TLV_TOKENS), select(requests.to_vec())),
        |(input, mtype)| {
            let mut card = fx.card();
            card.provision(APPLET_ID, input.bytes.clone()).unwrap();
            let param = if mtype == msg::RECOVER {
                ExchangeId([1; 32]).to_bytes()
            } else {
                vec![]
            };
            let before = Persistent::of(&card);
            let out = deliver(&mut card, &Message::new(fx.wallet, fx.card, mtype, param));
            prop_assert_eq!(out.len(), 1);
            if out[0].mtype() == Mtype::REFUSED {
                refused.set(refused.get() + 1);
                prop_assert_eq!(
                    &Persistent::of(&card),
                    &before,
                    "a refusal changed the card"
                );
            } else {
                answered.set(answered.get() + 1);
            }
            Ok(())
        },
    );
    eprintln!(
        "voucher applet on hostile state: {} answered, {} refused",
        answered.get(),
        refused.get()
    );
    if cases() >= COVERAGE_MIN_CASES {
        assert!(answered.get() > 0 && refused.get() > 0);
    }
}

// ---------------------------------------------------------------------------
// Certificates and keys
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Text: the configuration, offer policies, ids and mtypes
// ---------------------------------------------------------------------------

/// A configuration every part of which is valid (so the whole parses):
/// each section present or not, with values drawn from their valid ranges.
fn config_text() -> BoxedStrategy<String> {
    let host = (
        proptest::option::of(select(&["0660", "0600", "0640", "0700"][..])),
        proptest::option::of(domain()),
        proptest::option::of(any::<bool>()),
        proptest::option::of("/[a-z]{1,8}/[a-z]{1,8}"),
    )
        .prop_map(|(mode, dom, taps, socket)| {
            let mut s = String::from("[host]\n");
            if let Some(m) = mode {
                writeln!(s, "socket_mode = \"{m}\"").unwrap();
            }
            if let Some(d) = dom {
                writeln!(s, "domain = \"{d}\"").unwrap();
            }
            if let Some(t) = taps {
                writeln!(s, "allow_taps = {t}").unwrap();
            }
            if let Some(p) = socket {
                writeln!(s, "socket = \"{p}\"").unwrap();
            }
            s
        });
    let dispatch = (
        proptest::option::of(1usize..100_000),
        proptest::option::of(1usize..1_000_000),
        proptest::option::of(0.001f64..86_400.0),
        proptest::option::of(1usize..5000),
        proptest::option::of(1usize..100),
    )
        .prop_map(|(per, total, ttl, tap, handlers)| {
            let mut s = String::from("[dispatch]\n");
            for (k, v) in [
                ("per_destination", per),
                ("total", total),
                ("tap_queue", tap),
                ("handlers_per_app", handlers),
            ] {
                if let Some(v) = v {
                    writeln!(s, "{k} = {v}").unwrap();
                }
            }
            if let Some(t) = ttl {
                writeln!(s, "ttl_secs = {t:?}").unwrap();
            }
            s
        });
    let names: Vec<&'static str> = Mtype::registry().map(|(_, n)| n).collect();
    let rule = (
        proptest::option::of("[a-z-]{1,12}"),
        proptest::option::of(select(&["app", "card", "remote", "internal", "any"][..])),
        proptest::option::of(entity()),
        proptest::option::of(domain()),
        proptest::option::of(prop_oneof![
            select(names),
            any::<u16>().prop_map(|m| format!("{m:#06x}").leak() as &str)
        ]),
        prop_oneof![
            select(&["allow", "drop", "log"][..]).prop_map(|a| (a, None, None)),
            (0.01f64..1e6, proptest::option::of(1u32..10_000)).prop_map(|(r, b)| (
                "rate-limit",
                Some(r),
                b
            )),
        ],
    )
        .prop_map(
            |(name, ingress, src, dst_domain, mtype, (action, rate, burst))| {
                let mut s = String::from("[[guard.rules]]\n");
                if let Some(n) = name {
                    writeln!(s, "name = \"{n}\"").unwrap();
                }
                if let Some(i) = ingress {
                    writeln!(s, "ingress = \"{i}\"").unwrap();
                }
                if let Some(e) = src {
                    writeln!(s, "src = \"{e}\"").unwrap();
                }
                if let Some(d) = dst_domain {
                    writeln!(s, "dst_domain = \"{d}\"").unwrap();
                }
                if let Some(m) = mtype {
                    writeln!(s, "mtype = \"{m}\"").unwrap();
                }
                writeln!(s, "action = \"{action}\"").unwrap();
                if let Some(r) = rate {
                    writeln!(s, "rate = {r:?}").unwrap();
                }
                if let Some(b) = burst {
                    writeln!(s, "burst = {b}").unwrap();
                }
                s
            },
        );
    let card = (
        proptest::option::of("/[a-z]{1,8}/[a-z]{1,8}"),
        proptest::option::of(0.0f64..3600.0),
        proptest::option::of(34usize..=65_535),
        proptest::option::of(entity()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(virt, wait, max, ttp, short)| {
            let mut s = String::from("[card]\n");
            // `ttp` names the TTP of a virtual card only.
            let ttp = ttp.filter(|_| virt.is_some());
            if let Some(v) = virt {
                writeln!(s, "virtual = \"{v}\"").unwrap();
            }
            if let Some(w) = wait {
                writeln!(s, "wait_secs = {w:?}").unwrap();
            }
            if let Some(m) = max {
                writeln!(s, "max_message = {m}").unwrap();
            }
            if let Some(t) = ttp {
                writeln!(s, "ttp = \"{t}\"").unwrap();
            }
            if let Some(b) = short {
                writeln!(s, "short_apdus = {b}").unwrap();
            }
            s
        });
    let peer = (
        "[a-z]{1,8}:[0-9]{1,4}",
        proptest::collection::vec(domain(), 0..3),
    );
    let nats = (
        "nats://[a-z]{1,8}:[0-9]{1,4}",
        proptest::option::of("[a-z0-9]{1,12}"),
        proptest::option::of("[a-z]{1,8}"),
    );
    let remote = (
        proptest::option::of(1usize..5000),
        proptest::option::of(0.1f64..1e5),
        proptest::option::of(0.1f64..1e5),
        proptest::collection::vec(peer, 0..3),
        proptest::option::of(nats),
    )
        .prop_map(|(window, rate, burst, peers, nats)| {
            let mut s = String::from("[remote]\ndanger_plaintext = true\n");
            if let Some(w) = window {
                writeln!(s, "window = {w}").unwrap();
            }
            if let Some(r) = rate {
                writeln!(s, "rate = {r:?}").unwrap();
            }
            if let Some(b) = burst {
                writeln!(s, "burst = {b:?}").unwrap();
            }
            for (address, domains) in peers {
                let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
                write!(
                    s,
                    "[[remote.peers]]\naddress = \"{address}\"\ndomains = [{}]\n",
                    list.join(", ")
                )
                .unwrap();
            }
            if let Some((url, token, prefix)) = nats {
                writeln!(s, "[remote.nats]\nurl = \"{url}\"").unwrap();
                if let Some(t) = token {
                    writeln!(s, "token = \"{t}\"").unwrap();
                }
                if let Some(p) = prefix {
                    writeln!(s, "prefix = \"{p}\"").unwrap();
                }
            }
            s
        });
    let ttp = proptest::option::of(proptest::option::of("/[a-z]{1,8}\\.sqlite")).prop_map(|t| {
        t.map(|db| {
            let mut s = String::from("[ttp]\nkey = \"k.pem\"\ncert = \"c.pem\"\nca = \"ca.pem\"\n");
            if let Some(d) = db {
                writeln!(s, "database = \"{d}\"").unwrap();
            }
            s
        })
        .unwrap_or_default()
    });
    (
        proptest::option::of(host),
        proptest::option::of(dispatch),
        proptest::collection::vec(rule, 0..3),
        proptest::option::of(policy()),
        proptest::option::of(card),
        proptest::option::of(remote),
        ttp,
    )
        .prop_map(|(host, dispatch, rules, policy, card, remote, ttp)| {
            let mut s = String::new();
            s.push_str(&host.unwrap_or_default());
            s.push_str(&dispatch.unwrap_or_default());
            for r in rules {
                s.push_str(&r);
            }
            if let Some(p) = policy {
                writeln!(s, "[guard.offers]\npolicy = \"{p}\"").unwrap();
            }
            s.push_str(&card.unwrap_or_default());
            s.push_str(&remote.unwrap_or_default());
            s.push_str(&ttp);
            s
        })
        .boxed()
}

/// The shipped example configuration.
const EXAMPLE_CONFIG: &str = include_str!("../../../docs/host.example.toml");

/// The TOML parser (a third-party crate) lexes the text, builds a document
/// tree (tables, keys, values with their spans) and deserializes it; it
/// also records an error for every token it cannot place. Each token, node
/// and error stems from at least one input byte and costs a bounded number
/// of bytes, so the total is linear; nesting is limited by the parser (80
/// levels). The factor is measured, not derived: the worst shape found (an
/// unclosed array followed by closing braces, one error each) costs about
/// 400 bytes per input byte at every size from 1 KB to 200 KB; the bound
/// leaves a factor 2.5 above that.
const CONFIG: Bound = Bound::new(1024, 64 * 1024);

/// Hostile text into `Config::parse`: no panic, allocation within the
/// bound, every generated valid configuration and the shipped example
/// parse.
#[test]
fn config_parse() {
    let seeds = prop_oneof![
        4 => config_text(),
        1 => Just(EXAMPLE_CONFIG.to_owned()),
    ]
    .boxed();
    let probe = Probe::new("Config::parse", CONFIG);
    let path = Path::new("hostile.toml");
    let strategy = prop_oneof![
        9 => hostile_text(seeds, TOML_TOKENS),
        1 => "(\\[|\\]|=|\"|'|\\{|\\}|,|\\.|\n|[a-z_]{1,8}|[0-9]{1,3}| ){0,200}"
            .prop_map(|text| TextInput { text, pristine: false }),
    ];
    check(strategy, |input| {
        let out = probe.run(input.text.len(), || Config::parse(&input.text, path))?;
        if input.pristine {
            prop_assert!(
                out.is_ok(),
                "a valid configuration was refused: {:?}\n{}",
                out.err(),
                input.text
            );
        }
        Ok(())
    });
    probe.finish(cases());
}

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

// ---------------------------------------------------------------------------
// Worst-case shapes
// ---------------------------------------------------------------------------

/// Checks one large input against a bound, printing how much of it was
/// used.
fn shape<'a, T, E>(
    name: &str,
    bound: Bound,
    input: &'a [u8],
    decode: impl FnOnce(&'a [u8]) -> Result<T, E>,
) {
    let (out, used) = allocated_by(|| decode(input).is_ok());
    let limit = bound.limit(input.len());
    eprintln!(
        "shape {name}: {} bytes, {}, allocated {used} bytes ({:.2} per byte; bound {limit})",
        input.len(),
        if out { "accepted" } else { "refused" },
        used as f64 / input.len().max(1) as f64
    );
    assert!(
        used <= limit,
        "{name}: {} bytes allocated {used}, above the bound {} x n + {} = {limit}",
        input.len(),
        bound.per_byte,
        bound.constant
    );
}

/// Large inputs of the shapes that cost each decoder most per byte (most
/// objects per byte, invalid UTF-8 everywhere, deepest nesting, most map
/// entries, longest quoted errors), so the per-byte factors of the bounds
/// are checked where the constants no longer help. The random inputs above
/// are mostly small.
#[test]
fn worst_case_shapes_stay_within_the_bounds() {
    let path = Path::new("shape.toml");
    let toml_shapes: Vec<(&str, String)> = vec![
        (
            "unknown top-level keys",
            (0..6000).map(|i| format!("k{i}=1\n")).collect(),
        ),
        (
            "many tables",
            (0..6000).map(|i| format!("[t{i}]\n")).collect(),
        ),
        (
            "many arrays of tables",
            "[[remote.peers]]\naddress=\"a\"\n".repeat(2000),
        ),
        ("long array", format!("x=[{}]", "1,".repeat(30_000))),
        (
            "long inline table",
            format!(
                "x={{{}}}",
                (0..6000).map(|i| format!("a{i}=1,")).collect::<String>()
            ),
        ),
        (
            "deep arrays",
            format!("x={}{}", "[".repeat(5000), "]".repeat(5000)),
        ),
        ("deep inline tables", format!("x={}", "{a=".repeat(5000))),
        (
            "long dotted key",
            format!("{}=1", vec!["a"; 20_000].join(".")),
        ),
        (
            "escapes",
            format!("[host]\nsocket=\"{}\"", "\\u0041".repeat(10_000)),
        ),
        (
            "long bad line",
            format!("[host]\nsocket_mode = {}", "@".repeat(60_000)),
        ),
        (
            "many rules",
            "[[guard.rules]]\naction=\"log\"\nmtype=\"echo-request\"\n".repeat(1200),
        ),
        (
            "array of empty arrays",
            format!("x=[{}]", "[],".repeat(20_000)),
        ),
        (
            "array of empty tables",
            format!("x=[{}]", "{},".repeat(20_000)),
        ),
        (
            "array of one-element arrays",
            format!("x=[{}]", "[1],".repeat(15_000)),
        ),
        (
            "dotted keys",
            (0..6000).map(|i| format!("a.b{i}=1\n")).collect(),
        ),
        (
            "nested table headers",
            (0..3000).map(|i| format!("[a.b.c{i}]\n")).collect(),
        ),
        (
            "array of strings",
            format!("x=[{}]", "\"\",".repeat(20_000)),
        ),
        (
            "inline table of arrays",
            format!(
                "x={{{}}}",
                (0..5000).map(|i| format!("a{i}=[],")).collect::<String>()
            ),
        ),
        (
            "closing braces in an array",
            format!("a=[{}", "}".repeat(60_000)),
        ),
        ("commas", ",".repeat(60_000)),
        ("newlines", "\n".repeat(60_000)),
        ("dots", "a=1\n".to_owned() + &".".repeat(60_000)),
        ("brackets", "[".repeat(60_000)),
        ("quotes", "\"".repeat(60_000)),
        ("equals", "=".repeat(60_000)),
        (
            "deep dotted table headers",
            (0..2000)
                .map(|i| format!("[{}.k{i}]\n", ["a"; 10].join(".")))
                .collect(),
        ),
    ];
    for (name, text) in &toml_shapes {
        shape(
            &format!("Config::parse, {name}"),
            CONFIG,
            text.as_bytes(),
            |b| Config::parse(std::str::from_utf8(b).unwrap(), path),
        );
    }
}

// ---------------------------------------------------------------------------
// Regressions: inputs the properties above found
// ---------------------------------------------------------------------------
