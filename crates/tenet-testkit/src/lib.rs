//! # tenet-testkit: what tests, the demo and the benchmarks build on
//!
//! - [`sim`]: a deterministic simulator of several hosts ([`tenet_dispatch::HostCore`]),
//!   their virtual cards and the TTP on a network that loses, duplicates
//!   and reorders, in simulated time, from a seed.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod sim;
