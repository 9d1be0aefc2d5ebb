#!/usr/bin/env bash
# The whole test suite, as the README shows it and .ci/run calls it.
#
# Installs what the tests need when it is missing (as root, with apt-get):
# pcscd, the vsmartcard vpcd driver, libpcsclite-dev and pkg-config for the
# PC/SC card link, opensc-tool for the interop test, nats-server for the
# NATS transport, iproute2 for the network-namespace test (which needs
# root, like the installs), PostgreSQL for the TTP's PostgreSQL store,
# dbus-daemon for the D-Bus baseline of `tenet bench scale`.
# Starts a private PostgreSQL (unix socket in a temporary directory, no TCP
# port) and pcscd with the vpcd reader (unless one already
# runs) and stops what it started at the end; the NATS tests start and stop
# their own nats-server on private loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

VPCD_DRIVER=/usr/lib/pcsc/drivers/serial/libifdvpcd.so
missing=()
command -v pcscd >/dev/null || missing+=(pcscd)
[ -e "$VPCD_DRIVER" ] || missing+=(vsmartcard-vpcd)
command -v pkg-config >/dev/null || missing+=(pkgconf)
pkg-config --exists libpcsclite 2>/dev/null || missing+=(libpcsclite-dev)
command -v opensc-tool >/dev/null || missing+=(opensc)
command -v nats-server >/dev/null || missing+=(nats-server)
command -v ip >/dev/null || missing+=(iproute2)
command -v dbus-daemon >/dev/null || missing+=(dbus-daemon)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${missing[*]}; install them or run this as root" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# One pcscd serves the whole machine (its socket is /run/pcscd/pcscd.comm).
# vpcd's first slot listens on 127.0.0.1:35963 ("Virtual PCD 00 00").
export TENET_VPCD_ADDR=127.0.0.1:35963
export TENET_PCSC_READER="Virtual PCD 00 00"
started_pcscd=""
conf_dir=""
pg_dir=""
pg_bin=""
cleanup() {
    if [ -n "$pg_dir" ]; then
        runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$pg_dir"
    fi
    if [ -n "$started_pcscd" ]; then
        kill "$started_pcscd" 2>/dev/null || true
        wait "$started_pcscd" 2>/dev/null || true
    fi
    if [ -n "$conf_dir" ]; then
        rm -rf "$conf_dir"
    fi
}
trap cleanup EXIT
if pgrep -x -r S,R,D pcscd >/dev/null; then
    echo "== using the pcscd that is already running"
else
    conf_dir=$(mktemp -d)
    cat > "$conf_dir/vpcd" <<CONF
FRIENDLYNAME "Virtual PCD"
DEVICENAME   /dev/null:0x8C7B
LIBPATH      $VPCD_DRIVER
CHANNELID    0x8C7B
CONF
    mkdir -p /run/pcscd
    pcscd --foreground -c "$conf_dir" >/dev/null 2>&1 &
    started_pcscd=$!
    for _ in $(seq 50); do
        [ -S /run/pcscd/pcscd.comm ] && break
        sleep 0.1
    done
    [ -S /run/pcscd/pcscd.comm ] || { echo "pcscd did not start" >&2; exit 1; }
    echo "== started pcscd (pid $started_pcscd) with the vpcd reader"
fi

# A private PostgreSQL for the TTP's PostgreSQL store.
pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
pg_dir=$(mktemp -d)
chown postgres "$pg_dir"
runuser -u postgres -- "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres >/dev/null
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -w -l "$pg_dir/log" \
    -o "-c listen_addresses='' -k $pg_dir -p 5432" start >/dev/null
export TENET_TEST_POSTGRES="host=$pg_dir port=5432 user=postgres dbname=postgres"
echo "== started PostgreSQL in $pg_dir"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "== tests"
cargo test --workspace --all-features
