#!/usr/bin/env bash
# Throughput and p99 of a hello-world handler served by lastcall's server with and without the
# DrainLayer, measured with wrk on loopback, alternating A/B in one run.
# With PIN=1 each server runs one tokio worker on CPU 1 and wrk runs on CPU 0, so the server's
# CPU is the bottleneck and the scheduler's placement does not swing the figures.
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

server_cpu=() client_cpu=()
if [ "${PIN:-0}" = 1 ]; then
  command -v taskset >/dev/null || { echo "taskset is missing: apt-get install util-linux" >&2; exit 1; }
  server_cpu=(taskset -c 1) client_cpu=(taskset -c 0)
  export TOKIO_WORKER_THREADS=1
fi

start() { # mode -> sets pid and addr
  "${server_cpu[@]}" "$bin" "$1" >"$tmp/$1.out" 2>"$tmp/$1.err" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 200); do
    if grep -q '^listening on ' "$tmp/$1.out"; then
      addr=$(sed -n 's/^listening on //p' "$tmp/$1.out")
      return
    fi
    sleep 0.02
  done
  echo "bench-server $1 did not start" >&2
  exit 1
}

stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# A fresh pair of processes every round, in alternating order: a process's memory layout
# (address randomisation, code alignment) is fixed when it starts and can favour one side by
# 10 % or more for its whole life, so only fresh processes average it out.
echo "wrk -t1 -c$connections -d${seconds}s, $rounds rounds, fresh processes, alternating"
for ((round = 1; round <= rounds; round++)); do
  order="plain drain"
  ((round % 2)) || order="drain plain"
  for mode in $order; do
    start "$mode"
    "${client_cpu[@]}" wrk -t1 -c"$connections" -d"${seconds}s" --latency "http://$addr/" >"$tmp/wrk.txt"
    stop "$pid"
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$tmp/wrk.txt")
    errors=$(awk '/Socket errors|Non-2xx/ {print}' "$tmp/wrk.txt" | tr '\n' ' ')
    echo "round $round $mode rps=$rps p99=$p99 $errors"
    echo "$mode $rps $p99" >>"$tmp/all.txt"
  done
done
# p99 as wrk prints it (750.00us, 1.15ms, 2.01s) in microseconds; the median of the rounds'.
awk 'function us(v) {
       if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1e6
       return v + 0 }
     function median(mode,   i, j, t, k) {
       k = n[mode]
       for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
         if (p99[mode, j] < p99[mode, i]) { t = p99[mode, i]; p99[mode, i] = p99[mode, j]; p99[mode, j] = t }
       return k % 2 ? p99[mode, (k + 1) / 2] : (p99[mode, k / 2] + p99[mode, k / 2 + 1]) / 2 }
     {sum[$1] += $2; n[$1]++; p99[$1, n[$1]] = us($3)}
     END {
       p = sum["plain"] / n["plain"]; d = sum["drain"] / n["drain"];
       printf "mean rps: plain %.0f, drain %.0f; drain/plain = %.3f; median p99: plain %.0f us, drain %.0f us\n",
         p, d, d / p, median("plain"), median("drain") }' "$tmp/all.txt"
