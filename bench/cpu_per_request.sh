#!/usr/bin/env bash
# CPU time (user + system, the kernel's loopback TCP included) the server process spends per
# request, for each bench-server mode, under wrk -t1 -c32 for a few seconds after a 1 s warm-up:
# what a user pays per request, which the machine's load swings far less than throughput.
# Fresh processes, modes alternating each round; the summary is each mode's mean and its ratio
# to the first mode. BENCH_* variables reach the servers (e.g. BENCH_CONNECT_INFO=off).
#   bash bench/cpu_per_request.sh [rounds=4] [seconds=5] [modes="axum plain drain"]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-4}
seconds=${2:-5}
read -r -a modes <<<"${3:-axum plain drain}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build -q --release -p lastcall-bench --bin bench-server
bin=${CARGO_TARGET_DIR:-target}/release/bench-server
tick_ns=$((1000000000 / $(getconf CLK_TCK)))
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime
for ((round = 1; round <= rounds; round++)); do
  for mode in "${modes[@]}"; do
    rm -f "$tmp/out"
    "$bin" "$mode" >"$tmp/out" 2>"$tmp/err" &
    pid=$!
    addr=$(listening_addr "$tmp/out" 200 0.02) || { echo "bench-server $mode did not start" >&2; exit 1; }
    wrk -t1 -c32 -d1s "http://$addr/" >/dev/null
    before=$(cpu_ticks "$pid")
    requests=$(wrk -t1 -c32 -d"${seconds}s" "http://$addr/" | awk '/requests in/ {print $1}')
    after=$(cpu_ticks "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
    echo "round $round $mode requests=$requests cpu_ns_per_request=$(((after - before) * tick_ns / requests))"
    echo "$mode $(((after - before) * tick_ns / requests))" >>"$tmp/all"
  done
done
awk -v first="${modes[0]}" '{sum[$1] += $2; n[$1]++; if (!($1 in order)) { order[$1] = ++k; name[k] = $1 } }
  END { base = sum[first] / n[first]
        for (i = 1; i <= k; i++) { m = name[i]; printf "%s %.0f ns", m, sum[m] / n[m]
          if (m != first) printf " (%.3f of %s)", sum[m] / n[m] / base, first
          printf (i < k ? "; " : "\n") } }' "$tmp/all"
