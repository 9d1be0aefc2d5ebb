//! The runner, allocation bounds and the tally of one property.

use std::cell::Cell;
use std::fmt::Debug;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestCaseResult, TestRunner};

use crate::allocated_by;

/// Cases per property: `TENET_HOSTILE_CASES`, default 2000.
///
/// # Panics
///
/// If `TENET_HOSTILE_CASES` is set to something else than a number.
pub fn cases() -> u32 {
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
pub const COVERAGE_MIN_CASES: u32 = 500;

/// Runs `test` on `cases` inputs from `strategy`; a failure is shrunk and
/// the test panics with the smallest failing input.
pub fn check_with<S>(cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // ChaCha, the default, spends most of a debug build's time in
        // unoptimized SIMD intrinsics; the inputs need no cryptographic RNG.
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// [`check_with`] for [`cases()`] cases.
pub fn check<S>(strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
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
pub struct Bound {
    /// Bytes allowed per input byte.
    pub per_byte: usize,
    /// Bytes allowed whatever the input's length.
    pub constant: usize,
}

impl Bound {
    /// `per_byte · n + constant`.
    pub const fn new(per_byte: usize, constant: usize) -> Self {
        Self { per_byte, constant }
    }

    /// What lists of TLV data objects may cost, for parsed objects of
    /// `item` bytes each: every object takes at least two input bytes (tag,
    /// length), so a list of `n` bytes has `k <= n/2` items; its vector
    /// grows by doubling from 4, so the capacities it passes through add up
    /// to less than `2 · max(2k, 4)` items: `2 · item · n + 8 · item` bytes
    /// per list. `per_byte_levels` counts how many lists one input byte can
    /// be part of (nesting); 16 more per byte pay for the copies of values
    /// and for the tag vector of the duplicate check (4 bytes per object).
    /// `lists` counts the lists whose 4-item minimum is charged as a
    /// constant; [`ERROR_TEXT`] pays for one error message.
    pub const fn tlv_lists(item: usize, per_byte_levels: usize, lists: usize) -> Self {
        Self::new(
            2 * item * per_byte_levels + 16,
            4 * 2 * item * lists + ERROR_TEXT,
        )
    }

    /// The bound for `n` input bytes.
    pub fn limit(self, n: usize) -> usize {
        self.per_byte * n + self.constant
    }
}

/// What building one error message may cost (a `format!` of a fixed text
/// with numbers or a tag: under 100 bytes, and the `String` growing to it).
pub const ERROR_TEXT: usize = 512;

/// No allocation at all (borrowed or fixed-size results, static errors).
pub const NOTHING: Bound = Bound::new(0, 0);
/// At most one copy of the input.
pub const ONE_COPY: Bound = Bound::new(1, 0);

/// Counts what a decoder did with the inputs of one property and the
/// largest share of its bound an input used.
pub struct Probe {
    name: &'static str,
    bound: Bound,
    accepted: Cell<u64>,
    refused: Cell<u64>,
    worst: Cell<(f64, usize, usize)>,
}

impl Probe {
    /// A probe for the decoder `name`, held to `bound`.
    pub fn new(name: &'static str, bound: Bound) -> Self {
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
    pub fn run<T, E>(
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
    ///
    /// # Panics
    ///
    /// If a run of at least [`COVERAGE_MIN_CASES`] cases saw its decoder
    /// accept no input, or refuse none.
    pub fn finish(&self, cases: u32) {
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
