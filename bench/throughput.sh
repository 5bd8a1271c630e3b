#!/usr/bin/env bash
# Throughput and p99 of the same hello-world handler served by two bench-server modes
# (default: lastcall's server without and with the DrainLayer; `"axum drain"` compares
# `axum::serve` + `with_graceful_shutdown` with `serve` + `DrainLayer`), measured with wrk on
# loopback, alternating A/B in one run; the summary is B/A.
# With PIN=1 each server runs one tokio worker on CPU 1 and wrk runs on CPU 0, so the server's
# CPU is the bottleneck and the scheduler's placement does not swing the figures.
# With HAPROXY=1 wrk goes through a fresh HAProxy (keep-alive both sides) in front of each
# server, as in production; not with PIN=1.
# A mode may name another build of the server: MODE@PATH (e.g. drain@/tmp/bench-server-old).
#   bash bench/throughput.sh [rounds=3] [seconds=5] [connections=32] [modes="plain drain"]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-3}
seconds=${2:-5}
connections=${3:-32}
read -r -a modes <<<"${4:-plain drain}"
((${#modes[@]} == 2)) || { echo "modes must be two bench-server modes, like \"axum drain\"" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
haproxy=${HAPROXY:-0}
if [ "$haproxy" = 1 ]; then
  command -v haproxy >/dev/null || { echo "haproxy is missing: apt-get install haproxy" >&2; exit 1; }
  [ "${PIN:-0}" = 1 ] && { echo "HAPROXY=1 and PIN=1 do not go together" >&2; exit 2; }
fi
cargo build -q --release -p lastcall-bench
default_bin=${CARGO_TARGET_DIR:-target}/release/bench-server
tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$tmp/haproxy.pid" ] && kill "$(cat "$tmp/haproxy.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

server_cpu=() client_cpu=()
if [ "${PIN:-0}" = 1 ]; then
  command -v taskset >/dev/null || { echo "taskset is missing: apt-get install util-linux" >&2; exit 1; }
  server_cpu=(taskset -c 1) client_cpu=(taskset -c 0)
  export TOKIO_WORKER_THREADS=1
fi

start() { # mode[@binary] -> sets pid and addr
  local mode=${1%%@*} bin=$default_bin
  [[ $1 == *@* ]] && bin=${1#*@}
  rm -f "$tmp/server.out"
  "${server_cpu[@]}" "$bin" "$mode" >"$tmp/server.out" 2>"$tmp/server.err" &
  pid=$!
  pids+=("$pid")
  addr=$(listening_addr "$tmp/server.out" 200 0.02) || { echo "bench-server $1 did not start" >&2; exit 1; }
  if [ "$haproxy" = 1 ]; then front "$addr"; fi
}

front() { # server address -> starts HAProxy in front of it, sets addr to HAProxy's
  cat >"$tmp/haproxy.cfg" <<CFG
global
  maxconn 4096
  pidfile $tmp/haproxy.pid
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
backend server
  server s $1
frontend front
  bind 127.0.0.1:18190
  default_backend server
CFG
  haproxy -D -f "$tmp/haproxy.cfg"
  for _ in $(seq 1 200); do
    curl -fs -o /dev/null "http://127.0.0.1:18190/" && { addr=127.0.0.1:18190; return; }
    sleep 0.02
  done
  echo "haproxy did not start" >&2
  exit 1
}

stop() { # pid
  if [ -f "$tmp/haproxy.pid" ]; then
    kill "$(cat "$tmp/haproxy.pid")" 2>/dev/null || true
    rm -f "$tmp/haproxy.pid"
  fi
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# A fresh pair of processes every round, in alternating order: a process's memory layout
# (address randomisation, code alignment) is fixed when it starts and can favour one side by
# 10 % or more for its whole life, so only fresh processes average it out.
via=direct
[ "$haproxy" = 1 ] && via="through HAProxy"
echo "wrk -t1 -c$connections -d${seconds}s $via, $rounds rounds, fresh processes, alternating"
a=${modes[0]} b=${modes[1]}
for ((round = 1; round <= rounds; round++)); do
  order="$a $b"
  ((round % 2)) || order="$b $a"
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
awk -v a="$a" -v b="$b" 'function us(v) {
       if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1e6
       return v + 0 }
     function median(mode,   i, j, t, k) {
       k = n[mode]
       for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
         if (p99[mode, j] < p99[mode, i]) { t = p99[mode, i]; p99[mode, i] = p99[mode, j]; p99[mode, j] = t }
       return k % 2 ? p99[mode, (k + 1) / 2] : (p99[mode, k / 2] + p99[mode, k / 2 + 1]) / 2 }
     {sum[$1] += $2; n[$1]++; p99[$1, n[$1]] = us($3)}
     END {
       p = sum[a] / n[a]; d = sum[b] / n[b];
       printf "mean rps: %s %.0f, %s %.0f; %s/%s = %.3f; median p99: %s %.0f us, %s %.0f us\n",
         a, p, b, d, b, a, d / p, a, median(a), b, median(b) }' "$tmp/all.txt"
