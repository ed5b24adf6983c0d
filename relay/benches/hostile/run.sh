#!/usr/bin/env bash
# W2 (open-loop sends at 2,000/s to 1,000 subscribed mailboxes) quiet, then
# beside 100 hostile connections (`sotto-loadgen hostile`: 60 stalled 2 MiB
# length prefixes and one trickled frame each), then quiet again, against one
# relay process, so the three figures come from the same run.
#
#   cargo build --release -p sotto-relay -p sotto-loadgen --bins
#   relay/benches/hostile/run.sh
#
# The per-address connection cap is raised: W2's 1,000 connections from
# loopback, those of the previous phase still closing and the attacker's
# would otherwise meet it, and the cap is not what is measured here.
set -euo pipefail
bin="${CARGO_TARGET_DIR:-/var/tmp/sotto-target}/release"
work="$(mktemp -d)"; trap 'kill "$relay" 2>/dev/null; rm -rf "$work"' EXIT
"$bin/sotto-relay" --data-dir "$work/relay" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --max-connections-per-ip 10000 >"$work/relay.out" 2>"$work/relay.log" &
relay=$!
until [ -s "$work/relay/relay.addr" ]; do sleep 0.1; done
rss() { awk '/VmRSS/ {print $2 " KiB"}' "/proc/$relay/status"; }
w2() { "$bin/sotto-loadgen" --relay-dir "$work/relay" --cpu-pid "$relay" --seed "$1" w2 --rate 2000 --seconds 20 | grep 'send started -> push'; }
echo "relay RSS $(rss)"
echo "quiet:          $(w2 quiet1)"
"$bin/sotto-loadgen" --relay-dir "$work/relay" hostile --connections 100 --streams 60 --seconds 45 >"$work/hostile.out" &
attacker=$!
sleep 8
echo "relay RSS under attack $(rss)"
echo "under attack:   $(w2 attacked)"
wait "$attacker"; cat "$work/hostile.out"
echo "quiet again:    $(w2 quiet2)"
