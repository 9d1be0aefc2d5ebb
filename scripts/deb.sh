#!/usr/bin/env bash
# Builds the Debian package of the tenet command (with PC/SC and the
# PostgreSQL TTP store) into target/debian/: the release binary, the man
# pages it writes, the systemd units, the tenet system user, the example
# configs and the Wireshark dissector. Needs cargo-deb
# (`cargo install cargo-deb`) and, for the pcsc feature, libpcsclite-dev.
# Not part of the test command; see docs/packaging.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p tenet --features pcsc,postgres
rm -rf target/man && mkdir -p target/man
target/release/tenet man target/man >/dev/null
gzip -9n target/man/*.1
cargo deb --no-build --strip -p tenet "$@"
