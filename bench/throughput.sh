#!/usr/bin/env bash
# Throughput and p99 of a hello-world handler served by lastcall's server with and without the
# DrainLayer, measured with wrk on loopback, alternating A/B in one run.
#   bash bench/throughput.sh [rounds=3] [seconds=5] [connections=32]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-5}
connections=${3:-32}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build -q --release -p lastcall-bench
bin=${CARGO_TARGET_DIR:-target}/release/bench-server
tmp=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

start() { # mode -> prints the address
  "$bin" "$1" >"$tmp/$1.out" 2>"$tmp/$1.err" &
  pids+=($!)
  for _ in $(seq 1 200); do
    if grep -q '^listening on ' "$tmp/$1.out"; then
      sed -n 's/^listening on //p' "$tmp/$1.out"
      return
    fi
    sleep 0.02
  done
  echo "bench-server $1 did not start" >&2
  exit 1
}

plain=$(start plain)
drain=$(start drain)
echo "wrk -t1 -c$connections -d${seconds}s, $rounds rounds, alternating; plain=$plain drain=$drain"
for ((round = 1; round <= rounds; round++)); do
  for mode in plain drain; do
    addr=$plain
    [ "$mode" = drain ] && addr=$drain
    wrk -t1 -c"$connections" -d"${seconds}s" --latency "http://$addr/" >"$tmp/wrk.txt"
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$tmp/wrk.txt")
    errors=$(awk '/Socket errors|Non-2xx/ {print}' "$tmp/wrk.txt" | tr '\n' ' ')
    echo "round $round $mode rps=$rps p99=$p99 $errors"
    echo "$mode $rps" >>"$tmp/all.txt"
  done
done
awk '{sum[$1] += $2; n[$1]++} END {
  p = sum["plain"] / n["plain"]; d = sum["drain"] / n["drain"];
  printf "mean rps: plain %.0f, drain %.0f; drain/plain = %.3f\n", p, d, d / p }' "$tmp/all.txt"
