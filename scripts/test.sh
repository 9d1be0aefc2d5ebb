#!/usr/bin/env bash
# The whole test suite, as the README shows it and .ci/run calls it.
#
# Installs what the tests need when it is missing (as root, with apt-get):
# pcscd, the vsmartcard vpcd driver, libpcsclite-dev and pkg-config for the
# PC/SC card link, opensc-tool for the interop test, python3-pyscard (for
# Debian's /usr/bin/python3) for the ISO 7816-4 conformance suite
# (tests/conformance, run by tenet-card's `conformance` test), nats-server for the
# NATS transport, iproute2 for the network-namespace test (which needs
# root, like the installs), PostgreSQL for the TTP's PostgreSQL store,
# dbus-daemon for the D-Bus baseline of `tenet bench scale`, systemd and
# man-db for `systemd-analyze verify` of the units in contrib/systemd,
# tshark to read a `tenet tap --pcap` capture with contrib/wireshark/tenet.lua.
# Starts a private PostgreSQL (unix socket in a temporary directory, and
# TLS only on a loopback port) and pcscd with the vpcd reader (unless one
# already runs) and stops what it started at the end; the NATS tests start
# and stop their own nats-server (one, or a three-node cluster) on private
# loopback ports.
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
/usr/bin/python3 -c 'import smartcard' 2>/dev/null || missing+=(python3-pyscard)
command -v nats-server >/dev/null || missing+=(nats-server)
command -v ip >/dev/null || missing+=(iproute2)
command -v dbus-daemon >/dev/null || missing+=(dbus-daemon)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v man >/dev/null || missing+=(man-db)
command -v tshark >/dev/null || missing+=(tshark)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v openssl >/dev/null || missing+=(openssl)
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

# A private PostgreSQL for the TTP's PostgreSQL store: a unix socket in a
# temporary directory (TENET_TEST_POSTGRES), and 127.0.0.1 with TLS only
# (TENET_TEST_POSTGRES_TLS), its certificate from a development root made
# here, on the first free port from 54329 (the socket's name has it too).
pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
pg_dir=$(mktemp -d)
chown postgres "$pg_dir"
# Over TCP (which every local user can reach) only TLS with a password made
# for this run; the private Unix socket stays password-free.
pg_pass=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$pg_pass" > "$pg_dir/pwfile"
chown postgres "$pg_dir/pwfile"
chmod 600 "$pg_dir/pwfile"
runuser -u postgres -- "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres \
    --pwfile="$pg_dir/pwfile" >/dev/null
rm "$pg_dir/pwfile"
printf '%s\n' "local all all trust" "hostssl all all 127.0.0.1/32 scram-sha-256" > "$pg_dir/data/pg_hba.conf"
pg_tls="$pg_dir/tls"
mkdir "$pg_tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=TENeT test PostgreSQL root" -keyout "$pg_tls/root.key" -out "$pg_tls/root.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$pg_tls/server.key" -out "$pg_tls/server.csr" 2>/dev/null
openssl x509 -req -in "$pg_tls/server.csr" -CA "$pg_tls/root.pem" -CAkey "$pg_tls/root.key" \
    -CAcreateserial -CAserial "$pg_tls/root.srl" -days 2 -out "$pg_tls/server.pem" \
    -extfile <(printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        "extendedKeyUsage=serverAuth" "basicConstraints=critical,CA:FALSE") 2>/dev/null
rm "$pg_tls/root.key" "$pg_tls/root.srl" "$pg_tls/server.csr"
chown -R postgres "$pg_tls"
chmod 600 "$pg_tls/server.key"
pg_port=""
for port in $(seq 54329 54348); do
    if runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -w -l "$pg_dir/log" \
        -o "-c listen_addresses=127.0.0.1 -k $pg_dir -p $port -c ssl=on \
            -c ssl_cert_file=$pg_tls/server.pem -c ssl_key_file=$pg_tls/server.key" \
        start >/dev/null 2>&1; then
        pg_port=$port
        break
    fi
done
if [ -z "$pg_port" ]; then
    echo "PostgreSQL did not start (ports 54329-54348):" >&2
    tail -5 "$pg_dir/log" >&2
    exit 1
fi
export TENET_TEST_POSTGRES="host=$pg_dir port=$pg_port user=postgres dbname=postgres"
export TENET_TEST_POSTGRES_TLS="host=127.0.0.1 port=$pg_port user=postgres password=$pg_pass dbname=postgres sslmode=verify-full sslrootcert=$pg_tls/root.pem"
echo "== started PostgreSQL in $pg_dir (TLS on 127.0.0.1:$pg_port)"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings -D clippy::incompatible_msrv

echo "== tests"
cargo test --workspace --all-features
