#!/usr/bin/env bash
# Instructions per request, which do not swing with the machine's load the way throughput
# does: each bench-server mode runs under valgrind's callgrind while wrk loads it on loopback
# for a few seconds; instructions (user space, counted from the moment the server listens, so
# startup is left out) / requests answered.
# A mode may name another build of the server: MODE@PATH (e.g. drain@/tmp/bench-server-old).
# The TLS modes (tls-plain, tls-drain) are loaded over https with a self-signed certificate.
#   bash bench/instructions.sh [seconds=6] [modes="axum plain drain"]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
seconds=${1:-6}
modes=${2:-"axum plain drain"}
case $seconds in '' | *[!0-9]*) echo "seconds must be a whole number" >&2; exit 2 ;; esac
for tool in valgrind wrk; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install $tool" >&2; exit 1; }
done
cargo build -q --release -p lastcall-bench --bin bench-server
bin=${CARGO_TARGET_DIR:-target}/release/bench-server
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
if [[ " $modes " == *" tls-"* ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
  export BENCH_CERT=$tmp/cert.pem BENCH_KEY=$tmp/key.pem
fi
n=0
for spec in $modes; do
  mode=${spec%%@*} server=$bin
  [[ $spec == *@* ]] && server=${spec#*@}
  scheme=http
  [[ $mode == tls-* ]] && scheme=https
  n=$((n + 1))
  out="$tmp/$n"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.cg" "$server" "$mode" >"$out.out" 2>"$out.err" &
  pid=$!
  addr=$(listening_addr "$out.out" 300 0.1) || { echo "bench-server $spec did not start under valgrind" >&2; exit 1; }
  callgrind_control --instr=on "$pid" >/dev/null 2>&1
  wrk -t1 -c8 -d"${seconds}s" "$scheme://$addr/" >"$out.wrk"
  kill -TERM "$pid"
  wait "$pid" || true
  pid=
  requests=$(awk '/requests in/ {print $1}' "$out.wrk")
  total=$(awk '/^summary:/ {print $2}' "$out.cg")
  awk -v m="$spec" -v r="$requests" -v t="$total" \
    'BEGIN { printf "%-6s requests %d, instructions %d, per request %.0f\n", m, r, t, t / r }'
done
