#!/usr/bin/env bash
# The relay's ephemeral path (SendEphemeral: pushed now or never, never
# stored) beside its durable path, in the same run against one release
# relay: W2 (1,000 subscribed devices, open-loop sends at fixed rates) once
# durable and once ephemeral per rate, alternating, with the relay's CPU per
# message (--cpu-pid). Figures from different runs are not comparable on a
# shared machine; compare the rows of one run.
#
# Usage: relay/benches/ephemeral/run.sh [rates...]   (default: 2000 5000 10000)
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
rates="${*:-2000 5000 10000}"
secs="${SOTTO_BENCH_SECONDS:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sotto-target}"
# Release builds compile their own optimised RocksDB (never the dev
# archive ./dev links): about 40 minutes the first time on two cores.
(cd "$root" && env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC \
    cargo build --release --locked -p sotto-relay -p sotto-loadgen --bins)
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
trap 'kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; rm -rf "$work" || true' EXIT
mkdir -p "$work/relay"
# Every device registers a delivery token from loopback (one address).
"$bin/sotto-relay" --data-dir "$work/relay" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --send-rate-per-sec 1000000 --send-burst 1000000 --max-connections-per-ip 1000000 \
    --source-send-rate-per-sec 1000000 --source-send-burst 1000000 --registration-burst 100000 \
    --ephemeral-burst 1000000 --ephemeral-rate-per-sec 1000000 \
    >"$work/relay.out" 2>"$work/relay.log" &
relay_pid=$!
until [ -s "$work/relay/relay.addr" ]; do
    kill -0 "$relay_pid" 2>/dev/null || { tail -n 20 "$work/relay.log" >&2; exit 1; }
    sleep 0.05
done
load() { "$bin/sotto-loadgen" --relay-dir "$work/relay" --cpu-pid "$relay_pid" "$@"; }
# Warm-up (not a figure), and the tokens registered once for the seed.
load --seed w2 w2 --rate 1000 --seconds 5 --ephemeral >/dev/null
for r in $rates; do
    echo "== rate $r/s"
    timeout 300 "$bin/sotto-loadgen" --relay-dir "$work/relay" --seed w2 --cpu-pid "$relay_pid" \
        w2 --rate "$r" --seconds "$secs" | grep -E "^W2 (rate|latency scheduled)" || echo "durable $r: not completed"
    timeout 300 "$bin/sotto-loadgen" --relay-dir "$work/relay" --seed w2 --cpu-pid "$relay_pid" \
        w2 --rate "$r" --seconds "$secs" --ephemeral | grep -E "^W2 (ephemeral|latency scheduled)" || echo "ephemeral $r: not completed"
done
