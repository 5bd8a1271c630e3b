#!/usr/bin/env bash
# Rolling restart behind HAProxy: two instances of a server, wrk through HAProxy for 12 s, and
# at +2 s instance A is restarted (SIGTERM, wait for exit, start, wait until ready), 2 s later
# instance B. Run for lastcall's stack (bench-server drain: DrainLayer + serve, readiness on
# /health/ready) and for a plain axum with_graceful_shutdown server (bench-server axum, checked
# on /), in the same invocation. Prints requests, non-2xx, socket errors and exit statuses.
# With several rounds the order alternates and the total requests of each side are compared.
# Target `orders` runs the issue's setup instead: two `lastcall demo` instances (the reference
# service: SQLite, a worker, a scheduler) against a plain axum server serving the same
# `GET /orders/{id}` from SQLite (bench-server axum-orders), wrk on /orders/1.
#   bash bench/rolling.sh [seconds=12] [rounds=1] [target=hello|orders]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
seconds=${1:-12}
rounds=${2:-1}
target=${3:-hello}
case $target in
  hello) ours=drain ours_check=/health/ready peer=axum peer_check=/ path=/ ;;
  orders) ours=demo ours_check=/health/ready peer=axum-orders peer_check=/orders/1 path=/orders/1 ;;
  *) echo "target must be hello or orders, not $target" >&2; exit 2 ;;
esac
for tool in haproxy wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install $tool" >&2; exit 1; }
done
cargo build -q --release -p lastcall-bench -p lastcall-cli
bin=${CARGO_TARGET_DIR:-target}/release/bench-server
cli=${CARGO_TARGET_DIR:-target}/release/lastcall
tmp=$(mktemp -d)
declare -A pid
cleanup() {
  for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$tmp/haproxy.pid" ] && kill "$(cat "$tmp/haproxy.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

start() { # mode name port check_path
  if [ "$1" = demo ]; then
    PORT=$3 LASTCALL_DRAIN_DELAY=500ms LASTCALL_BUDGET=10s LASTCALL_DEMO_DB="$tmp/$2.sqlite3" \
      "$cli" demo >"$tmp/$2.out" 2>&1 &
  else
    PORT=$3 LASTCALL_DRAIN_DELAY=500ms LASTCALL_BUDGET=10s BENCH_DB="$tmp/$2-peer.sqlite3" \
      "$bin" "$1" >"$tmp/$2.out" 2>&1 &
  fi
  pid[$2]=$!
  for _ in $(seq 1 500); do
    curl -fs -o /dev/null "http://127.0.0.1:$3$4" && return
    sleep 0.01
  done
  echo "instance $2 did not start" >&2
  exit 1
}

declare -A exited
restart() { # mode name port check_path; records the old process's exit status in exited[name]
  kill -TERM "${pid[$2]}"
  local status=0
  wait "${pid[$2]}" || status=$?
  exited[$2]=$status
  start "$1" "$2" "$3" "$4"
}

run() { # mode check_path
  local mode=$1 check=$2 a=18181 b=18182 front=18180
  cat >"$tmp/haproxy.cfg" <<CFG
global
  maxconn 4096
  pidfile $tmp/haproxy.pid
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
  option http-keep-alive
backend servers
  balance roundrobin
  option httpchk GET $check
  default-server inter 100ms fall 1 rise 1
  server a 127.0.0.1:$a check
  server b 127.0.0.1:$b check
frontend front
  bind 127.0.0.1:$front
  default_backend servers
CFG
  start "$mode" a "$a" "$check"
  start "$mode" b "$b" "$check"
  haproxy -D -f "$tmp/haproxy.cfg"
  sleep 0.5
  wrk -t2 -c32 -d"${seconds}s" "http://127.0.0.1:$front$path" >"$tmp/wrk.txt" &
  local wrk_pid=$!
  sleep 2
  restart "$mode" a "$a" "$check"
  sleep 2
  restart "$mode" b "$b" "$check"
  wait "$wrk_pid"
  kill "$(cat "$tmp/haproxy.pid")"
  kill -TERM "${pid[a]}" "${pid[b]}" 2>/dev/null || true
  wait "${pid[a]}" "${pid[b]}" 2>/dev/null || true
  wrk_line "$mode" "$tmp/wrk.txt" "${exited[a]}" "${exited[b]}"
}

for ((round = 1; round <= rounds; round++)); do
  # Alternate the order, so drift in the machine's load does not favour one side.
  if ((round % 2)); then
    run "$ours" "$ours_check"
    run "$peer" "$peer_check"
  else
    run "$peer" "$peer_check"
    run "$ours" "$ours_check"
  fi
done | tee "$tmp/runs.txt"
awk -v ours="$ours" -v peer="$peer" '{n[$1] += $3} END {
  if (n[peer] > 0) printf "total requests: %s %d, %s %d; %s/%s = %.3f\n", ours, n[ours], peer, n[peer], ours, peer, n[ours] / n[peer] }' "$tmp/runs.txt"
