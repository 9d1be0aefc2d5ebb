//! # tenet-hostile: the harness of the hostile-input property tests
//!
//! Every TENeT decoder gets property tests with hostile input; they live
//! next to the decoders, in each crate's `tests/hostile.rs`
//! (`docs/hostile-input.md` lists them). This crate is what those files
//! share, and knows nothing of TENeT's types (it depends on no TENeT crate,
//! only on proptest):
//!
//! - a counting global allocator ([`Counting`], installed in a test binary
//!   with [`install_counting_allocator!`]) and [`allocated_by`], which
//!   measures what a closure allocated on this thread;
//! - a runner ([`check`], [`check_with`], [`cases()`] from
//!   `TENET_HOSTILE_CASES`), allocation bounds `a·n + c` ([`Bound`]) and the
//!   tally of one decoder ([`Probe`]);
//! - mutation-based generators: changes to a byte string ([`Mutation`],
//!   [`mutation`], [`apply`], [`mutate`]), format tokens and edge values
//!   ([`TLV_TOKENS`], [`DER_TOKENS`], [`PEM_TOKENS`], [`TEXT_TOKENS`],
//!   [`EDGE_BYTES`], [`EDGE_WORDS`]), and the input mix of a property over
//!   bytes ([`hostile`]) or text ([`hostile_text`]);
//! - the generic properties: [`fuzz_decoder`] (bytes in, encode back),
//!   [`fuzz_text`] (text in, print back, grammar), and [`shape`] for one
//!   large worst-case input.
//!
//! A test file uses it like this: it installs the allocator once, and each
//! property hands a decoder, its encoder and a strategy of valid encodings
//! to the harness (here a toy decoder of at most 100 bytes, copied once):
//!
//! ```
//! use tenet_hostile::{ONE_COPY, TLV_TOKENS, bytes, fuzz_decoder};
//!
//! tenet_hostile::install_counting_allocator!();
//!
//! fn decode(b: &[u8]) -> Result<Vec<u8>, &'static str> {
//!     if b.len() > 100 { Err("too long") } else { Ok(b.to_vec()) }
//! }
//!
//! # fn main() {
//! // In a test file: #[test] fn toy() { ... }
//! fuzz_decoder("toy", ONE_COPY, bytes(100), TLV_TOKENS, decode, |v: &Vec<u8>| v.clone());
//! # }
//! ```
//!
//! It is a dev-dependency only (`publish = false`): the counting allocator
//! is for test binaries.

#![warn(missing_docs)]

mod alloc;
mod generate;
mod runner;

use std::fmt::Display;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

pub use alloc::{Counting, allocated_by};
pub use generate::{
    DER_TOKENS, EDGE_BYTES, EDGE_WORDS, Input, Mutation, PEM_TOKENS, TEXT_TOKENS, TLV_TOKENS,
    TextInput, apply, bytes, hostile, hostile_text, mutate, mutation,
};
pub use runner::{
    Bound, COVERAGE_MIN_CASES, ERROR_TEXT, NOTHING, ONE_COPY, Probe, cases, check, check_with,
};

/// Hostile input into `decode`: no panic, allocation within `bound`, and a
/// valid encoding decodes and `encode`s back to the same bytes.
///
/// # Panics
///
/// On a failing case (after shrinking it), and as [`Probe::finish`] does.
pub fn fuzz_decoder<T, E: Display>(
    name: &'static str,
    bound: Bound,
    seeds: BoxedStrategy<Vec<u8>>,
    tokens: &'static [&'static [u8]],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Vec<u8>,
) {
    let probe = Probe::new(name, bound);
    check(hostile(seeds, tokens), |input| {
        let out = probe.run(input.bytes.len(), || decode(&input.bytes))?;
        if input.pristine {
            match out {
                Ok(v) => prop_assert_eq!(
                    encode(&v),
                    input.bytes.clone(),
                    "{}: a valid encoding does not come back",
                    name
                ),
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "{name}: a valid encoding was refused: {e}"
                    )));
                }
            }
        }
        Ok(())
    });
    probe.finish(cases());
}

/// Hostile text into `parse`: no panic, allocation within `bound`, a valid
/// text parses and prints back, and whatever parses satisfies `grammar`
/// (the documented text form).
///
/// # Panics
///
/// On a failing case (after shrinking it), and as [`Probe::finish`] does.
pub fn fuzz_text<T, E>(
    name: &'static str,
    bound: Bound,
    seeds: BoxedStrategy<String>,
    parse: impl Fn(&str) -> Result<T, E>,
    print: impl Fn(&T) -> String,
    grammar: impl Fn(&str) -> bool,
) {
    let probe = Probe::new(name, bound);
    check(hostile_text(seeds, TEXT_TOKENS), |input| {
        let out = probe.run(input.text.len(), || parse(&input.text))?;
        match out {
            Ok(v) => {
                prop_assert!(
                    grammar(&input.text),
                    "{} accepted {:?}, which is not in the documented text form",
                    name,
                    input.text
                );
                if input.pristine {
                    prop_assert_eq!(print(&v), input.text.clone(), "{}", name);
                }
            }
            Err(_) => prop_assert!(!input.pristine, "{name} refused the valid {:?}", input.text),
        }
        Ok(())
    });
    probe.finish(cases());
}

/// Checks one large input against a bound, printing how much of it was
/// used. The random inputs of the properties are mostly small, where the
/// constant of a bound dominates; large inputs of the shapes that cost a
/// decoder most per byte check its per-byte factor.
///
/// # Panics
///
/// If decoding `input` allocated more than `bound`.
pub fn shape<'a, T, E>(
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

/// BER-TLV: empty objects with distinct three-byte tags (4 bytes each), up
/// to `max` bytes: the most objects a list can hold without a duplicate.
pub fn distinct_tags(max: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for first in [0x9fu8, 0xbf, 0xdf, 0xff, 0x1f, 0x3f, 0x5f, 0x7f] {
        for second in 0x80u8..=0xff {
            for third in 0u8..0x80 {
                if b.len() + 4 > max {
                    return b;
                }
                b.extend_from_slice(&[first, second, third, 0]);
            }
        }
    }
    b
}
