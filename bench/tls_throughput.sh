#!/usr/bin/env bash
# Throughput and p99 over TLS of a hello-world handler: lastcall's `http::serve` + DrainLayer on
# a `TlsListener` (tls-drain) against a plain hyper-util + tokio-rustls server (tls-plain) on
# the same handlers, the same certificate and the same rustls configuration, measured with wrk
# (which does not verify certificates) on loopback, alternating in one run, fresh processes
# every round. Two workloads: keep-alive, and a new connection (a full handshake) per request
# (`Connection: close`).
# With PIN=1 each server runs one tokio worker on CPU 1 and wrk runs on CPU 0.
#   bash bench/tls_throughput.sh [rounds=3] [seconds=5] [connections=32]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-3}
seconds=${2:-5}
connections=${3:-32}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }
cargo build -q --release -p lastcall-bench
bin=${CARGO_TARGET_DIR:-target}/release/bench-server
tmp=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# One self-signed P-256 certificate for both servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
export BENCH_CERT=$tmp/cert.pem BENCH_KEY=$tmp/key.pem

server_cpu=() client_cpu=()
if [ "${PIN:-0}" = 1 ]; then
  command -v taskset >/dev/null || { echo "taskset is missing: apt-get install util-linux" >&2; exit 1; }
  server_cpu=(taskset -c 1) client_cpu=(taskset -c 0)
  export TOKIO_WORKER_THREADS=1
fi

start() { # mode -> sets pid and addr
  rm -f "$tmp/$1.out"
  "${server_cpu[@]}" "$bin" "$1" >"$tmp/$1.out" 2>"$tmp/$1.err" &
  pid=$!
  pids+=("$pid")
  addr=$(listening_addr "$tmp/$1.out" 200 0.02) && return
  echo "bench-server $1 did not start: $(cat "$tmp/$1.err")" >&2
  exit 1
}

stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

echo "wrk -t1 -c$connections -d${seconds}s over TLS, $rounds rounds, fresh processes, alternating"
for workload in keepalive close; do
  header=()
  [ "$workload" = close ] && header=(-H "Connection: close")
  for ((round = 1; round <= rounds; round++)); do
    order="tls-plain tls-drain"
    ((round % 2)) || order="tls-drain tls-plain"
    for mode in $order; do
      start "$mode"
      "${client_cpu[@]}" wrk -t1 -c"$connections" -d"${seconds}s" --latency "${header[@]}" \
        "https://$addr/" >"$tmp/wrk.txt"
      stop "$pid"
      rps=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.txt")
      p99=$(awk '$1 == "99%" {print $2}' "$tmp/wrk.txt")
      errors=$(awk '/Socket errors|Non-2xx/ {print}' "$tmp/wrk.txt" | tr '\n' ' ')
      echo "$workload round $round $mode rps=$rps p99=$p99 $errors"
      echo "$workload $mode $rps $p99" >>"$tmp/all.txt"
    done
  done
done
# p99 as wrk prints it (750.00us, 1.15ms, 2.01s) in microseconds; the median of the rounds'.
for workload in keepalive close; do
  awk -v w="$workload" 'function us(v) {
         if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1e6
         return v + 0 }
       function median(mode,   i, j, t, k) {
         k = n[mode]
         for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
           if (p99[mode, j] < p99[mode, i]) { t = p99[mode, i]; p99[mode, i] = p99[mode, j]; p99[mode, j] = t }
         return k % 2 ? p99[mode, (k + 1) / 2] : (p99[mode, k / 2] + p99[mode, k / 2 + 1]) / 2 }
       $1 == w {sum[$2] += $3; n[$2]++; p99[$2, n[$2]] = us($4)}
       END {
         p = sum["tls-plain"] / n["tls-plain"]; d = sum["tls-drain"] / n["tls-drain"];
         printf "%s: mean rps: plain %.0f, lastcall %.0f; lastcall/plain = %.3f; median p99: plain %.0f us, lastcall %.0f us\n",
           w, p, d, d / p, median("tls-plain"), median("tls-drain") }' "$tmp/all.txt"
done
