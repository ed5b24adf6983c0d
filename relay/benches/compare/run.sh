#!/usr/bin/env bash
# Runs the relay's W1 and W2 workloads against sotto-relay and against a local
# RabbitMQ (Debian's rabbitmq-server, durable classic queues, persistent
# messages, publisher confirms, manual consumer acks), one after the other in
# the same run, each on a fresh data directory. Prints every figure.
#
#   relay/benches/compare/run.sh                 # W1, then W2 at 1k 2k 5k 7k 10k /s
#   RATES="2000 5000" SECONDS_EACH=30 relay/benches/compare/run.sh w2
#
# Needs root or sudo: to install rabbitmq-server through apt (once), and on
# every run to start the broker as the rabbitmq user and clean up after it. Release
# builds go to $CARGO_TARGET_DIR (default /var/tmp/sotto-release-target);
# RocksDB's C++ at -O3 takes about 40 minutes there the first time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
what=${1:-all}
rates=${RATES:-1000 2000 5000 7000 10000}
secs=${SECONDS_EACH:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sotto-release-target}
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"

broker=/usr/lib/rabbitmq/bin/rabbitmq-server
if [ ! -x "$broker" ]; then
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server
    # On a systemd machine the package starts its own node on port 5672: this
    # script runs its own, on fresh data, so stop that one.
    if command -v systemctl >/dev/null && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
        $sudo systemctl stop rabbitmq-server
    fi
fi
(cd "$root" && cargo build --release --locked -p sotto-relay -p sotto-loadgen --bins)
cargo build --release --manifest-path "$here/Cargo.toml"
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d /var/tmp/sotto-compare.XXXXXX)
chmod 755 "$work" # the broker runs as the rabbitmq user
trap 'stop_relay; stop_rabbit; $sudo rm -rf "$work"' EXIT

relay_pid=""
start_relay() {
    rm -rf "$work/relay"; mkdir -p "$work/relay"
    # The load generator's 8 producers, all from loopback, send far above the
    # default per-key and per-address rate limits.
    "$bin/sotto-relay" --data-dir "$work/relay" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
        --send-rate-per-sec 1000000 --send-burst 1000000 --max-connections-per-ip 1000000 \
        --source-send-rate-per-sec 1000000 --source-send-burst 1000000 \
        >"$work/relay.out" 2>"$work/relay.log" &
    relay_pid=$!
    until [ -s "$work/relay/relay.addr" ]; do
        kill -0 "$relay_pid" 2>/dev/null || { tail -n 20 "$work/relay.log" >&2; exit 1; }
        sleep 0.05
    done
}
stop_relay() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
    relay_pid=""
}

rabbit_pid=""
start_rabbit() {
    local d="$work/rabbit"
    if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
        echo "error: something already listens on 127.0.0.1:5672; stop it first" >&2; exit 1
    fi
    $sudo rm -rf "$d"; mkdir -p "$d/mnesia" "$d/log"; $sudo chown -R rabbitmq:rabbitmq "$d"
    # Debian's wrapper drops to the rabbitmq user with 1,024 file handles,
    # too few for 1,000 device connections: start the server directly.
    $sudo env RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_NODENAME=sottocompare@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT=5672 \
        su rabbitmq -s /bin/sh -c "ulimit -n 20000 || exit 1; exec $broker" \
        >"$work/rabbit.out" 2>&1 &
    local tries=0
    until (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; do
        tries=$((tries + 1))
        if [ $tries -gt 600 ]; then tail -n 20 "$work/rabbit.out" >&2; exit 1; fi
        sleep 0.2
    done
    rabbit_pid=$(cat "$d/mnesia/sottocompare@localhost.pid" 2>/dev/null || true)
    [ -n "$rabbit_pid" ] || { echo "error: RabbitMQ started but its pid was not found" >&2; exit 1; }
}
stop_rabbit() {
    [ -n "$rabbit_pid" ] && $sudo kill "$rabbit_pid" 2>/dev/null || true
    # kill -0 would fail with EPERM on the rabbitmq user's process.
    while [ -n "$rabbit_pid" ] && [ -e "/proc/$rabbit_pid" ]; do sleep 0.2; done
    rabbit_pid=""
}

if [ "$what" = all ] || [ "$what" = w1 ]; then
    echo "== W1, sotto-relay"
    start_relay
    timeout 900 "$bin/sotto-loadgen" --relay-dir "$work/relay" --cpu-pid "$relay_pid" w1
    stop_relay
    echo "== W1, RabbitMQ"
    start_rabbit
    timeout 900 "$bin/rabbitmq-load" --cpu-pid "$rabbit_pid" w1
    stop_rabbit
fi
if [ "$what" = all ] || [ "$what" = w2 ]; then
    echo "== W2, sotto-relay (1,000 devices, one connection each)"
    start_relay
    # Warm-up (not a figure): both systems first get 10 s at 1,000/s (a
    # fresh RabbitMQ node is still busy with its new queues for seconds).
    "$bin/sotto-loadgen" --relay-dir "$work/relay" --seed warm --cpu-pid "$relay_pid" \
        w2 --rate 1000 --seconds 10 >/dev/null
    for r in $rates; do
        timeout 300 "$bin/sotto-loadgen" --relay-dir "$work/relay" --seed "w2-$r" --cpu-pid "$relay_pid" \
            w2 --rate "$r" --seconds "$secs" || echo "rate $r: not completed"
    done
    stop_relay
    for conns in 1000 8; do
        echo "== W2, RabbitMQ (1,000 consumers over $conns connections)"
        start_rabbit
        "$bin/rabbitmq-load" w2 --rate 1000 --seconds 10 --device-connections "$conns" >/dev/null
        for r in $rates; do
            timeout 300 "$bin/rabbitmq-load" --cpu-pid "$rabbit_pid" \
                w2 --rate "$r" --seconds "$secs" --device-connections "$conns" || echo "rate $r: not completed"
        done
        stop_rabbit
    done
fi
