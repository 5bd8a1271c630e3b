#!/usr/bin/env bash
# Rolling restart behind nginx (open source: passive checks only). Two instances of a server
# behind nginx (keep-alive upstream connections, `proxy_next_upstream error timeout`,
# `max_fails`/`fail_timeout`), wrk through nginx for 12 s, and at +2 s instance A is restarted
# (SIGTERM, wait for exit, start, wait until it answers), 2 s later instance B. Run for
# lastcall's stack (bench-server drain: DrainLayer + serve) once per drain delay, then once for a
# plain axum with_graceful_shutdown server (bench-server axum), in the same invocation. Prints
# requests, non-2xx, socket errors and exit statuses like bench/rolling.sh, then what nginx saw:
# requests it retried on the other instance, answers it made itself (502/504), and its error
# log by cause.
#   bash bench/rolling_nginx.sh [seconds=12] [drain delays="0ms 100ms 500ms 1s"]
# Environment (defaults in brackets):
#   NEXT_UPSTREAM ["error timeout"]  proxy_next_upstream
#   MAX_FAILS [1], FAIL_TIMEOUT [1s] the passive check on each upstream server
#   METHOD [GET]                     POST: wrk sends POST (non-idempotent for nginx, so not
#                                    retried once sent unless NEXT_UPSTREAM has non_idempotent);
#                                    nginx forwards it as GET (proxy_method) so the servers answer
#   KEEPALIVE [32]                   idle keep-alive connections nginx keeps per worker to the
#                                    servers (the upstream's keepalive); 0: none, one
#                                    connection per request
#   WORKERS [2]                      nginx worker_processes
#   PEER [axum]                      the peer run after the drain delays; "none" to skip it
#   PEER_FIRST [unset]               1: run the peer before the drain delays instead
#   NO_BUILD [unset]                 1: use the bench-server already built
#   KEEP_LOGS [unset]                a directory: keep each run's nginx error log and its log
#                                    of retried or failed requests there
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
seconds=${1:-12}
delays=${2:-"0ms 100ms 500ms 1s"}
next_upstream=${NEXT_UPSTREAM:-"error timeout"}
max_fails=${MAX_FAILS:-1}
fail_timeout=${FAIL_TIMEOUT:-1s}
method=${METHOD:-GET}
workers=${WORKERS:-2}
keepalive=${KEEPALIVE:-32}
peer=${PEER:-axum}
case $seconds in '' | *[!0-9]*) echo "seconds must be a whole number" >&2; exit 2 ;; esac
[ "$seconds" -ge 7 ] && [ "$seconds" -le 300 ] || { echo "seconds must be 7 to 300" >&2; exit 2; }
case $keepalive in '' | *[!0-9]*) echo "KEEPALIVE must be a whole number" >&2; exit 2 ;; esac
case $method in GET | POST) ;; *) echo "METHOD must be GET or POST" >&2; exit 2 ;; esac
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install $tool" >&2; exit 1; }
done
[ -n "${NO_BUILD:-}" ] || cargo build -q --release -p lastcall-bench --bin bench-server
tmp=$(mktemp -d)
# A copy, so a rebuild of the shared target dir during the runs cannot change the binary.
cp "${CARGO_TARGET_DIR:-target}/release/bench-server" "$tmp/bench-server"
bin=$tmp/bench-server
declare -A pid
nginx_pid=
wrk_pid=
stop_nginx() { # graceful stop of the master (it stops its workers), bounded
  [ -n "$nginx_pid" ] || return 0
  kill -TERM "$nginx_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$nginx_pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$nginx_pid" 2>/dev/null; then
    for w in $(pgrep -P "$nginx_pid" || true); do kill -KILL "$w" 2>/dev/null || true; done
    kill -KILL "$nginx_pid" 2>/dev/null || true
  fi
  wait "$nginx_pid" 2>/dev/null || true
  nginx_pid=
}
cleanup() {
  [ -n "$wrk_pid" ] && kill "$wrk_pid" 2>/dev/null || true
  for p in "${pid[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  stop_nginx
  for p in "${pid[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Three free loopback ports: nginx, A, B.
read -r front a b < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks: s.close()')

wait_ok() { # url what
  for _ in $(seq 1 500); do
    curl -fs -o /dev/null --max-time 1 "$1" && return
    sleep 0.01
  done
  echo "$2 did not start" >&2
  exit 1
}

start() { # mode name port drain_delay
  PORT=$3 LASTCALL_DRAIN_DELAY=$4 LASTCALL_BUDGET=10s "$bin" "$1" >>"$dir/$2.out" 2>&1 &
  pid[$2]=$!
  wait_ok "http://127.0.0.1:$3/" "instance $2"
}

declare -A exited
restart() { # mode name port drain_delay; records the old process's exit status in exited[name]
  kill -TERM "${pid[$2]}"
  local status=0
  wait "${pid[$2]}" || status=$?
  exited[$2]=$status
  start "$1" "$2" "$3" "$4"
}

nginx_conf() {
  local forward="" pool=""
  [ "$keepalive" -gt 0 ] && pool="keepalive $keepalive;"
  [ "$method" = POST ] && forward="proxy_method GET; proxy_pass_request_body off; proxy_set_header Content-Length \"\";"
  cat <<CONF
worker_processes $workers;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 2048; }
http {
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  # Only requests that were retried on another server, or that did not end in a 2xx.
  map "\$status \$upstream_addr" \$notable { "~^2[0-9][0-9] [^,]*\$" 0; default 1; }
  log_format notable '\$msec \$status "\$upstream_addr" "\$upstream_status"';
  access_log $dir/notable.log notable if=\$notable;
  upstream servers {
    zone servers 64k;
    server 127.0.0.1:$a max_fails=$max_fails fail_timeout=$fail_timeout;
    server 127.0.0.1:$b max_fails=$max_fails fail_timeout=$fail_timeout;
    $pool
  }
  server {
    listen 127.0.0.1:$front;
    location / {
      proxy_pass http://servers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream $next_upstream;
      proxy_connect_timeout 250ms;
      proxy_send_timeout 5s;
      proxy_read_timeout 5s;
      $forward
    }
  }
}
CONF
}

count() { grep -c -- "$1" "$2" 2>/dev/null || true; }

run() { # mode drain_delay label
  local mode=$1 delay=$2 label=$3
  dir=$tmp/run$((++runs))
  mkdir -p "$dir"
  unset 'exited[a]' 'exited[b]'
  nginx_conf >"$dir/nginx.conf"
  start "$mode" a "$a" "$delay"
  start "$mode" b "$b" "$delay"
  nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
  nginx_pid=$!
  wait_ok "http://127.0.0.1:$front/" nginx
  sleep 0.5
  local script=()
  if [ "$method" = POST ]; then
    printf 'wrk.method = "POST"\nwrk.body = ""\n' >"$dir/post.lua"
    script=(-s "$dir/post.lua")
  fi
  local load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  wrk -t2 -c32 -d"${seconds}s" "${script[@]}" "http://127.0.0.1:$front/" >"$dir/wrk.txt" &
  wrk_pid=$!
  sleep 2
  restart "$mode" a "$a" "$delay"
  sleep 2
  restart "$mode" b "$b" "$delay"
  wait "$wrk_pid"
  wrk_pid=
  stop_nginx
  kill -TERM "${pid[a]}" "${pid[b]}" 2>/dev/null || true
  wait "${pid[a]}" "${pid[b]}" 2>/dev/null || true
  wrk_line "$label" "$dir/wrk.txt" "${exited[a]:-?}" "${exited[b]:-?}"
  # The servers never answer 5xx here: a 5xx in the log is nginx's own 502 or 504.
  local log=$dir/error.log retried failed
  retried=$(awk '$3 ~ /,/' "$dir/notable.log" 2>/dev/null | wc -l)
  failed=$(awk '$2 ~ /^5/' "$dir/notable.log" 2>/dev/null | wc -l)
  printf '%-11s nginx: retried %s, 5xx %s; error log: refused %s, closed before header %s, reset %s, broken pipe %s, timed out %s, no live upstreams %s, disabled %s; load %s\n' \
    "" "$retried" "$failed" "$(count 'Connection refused' "$log")" \
    "$(count 'prematurely closed' "$log")" "$(count 'reset by peer' "$log")" \
    "$(count 'Broken pipe' "$log")" "$(count 'timed out' "$log")" \
    "$(count 'no live upstreams' "$log")" "$(count 'temporarily disabled' "$log")" "$load"
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS" && cp "$dir/error.log" "$KEEP_LOGS/$runs-error.log" 2>/dev/null || true
    cp "$dir/notable.log" "$KEEP_LOGS/$runs-notable.log" 2>/dev/null || true
  fi
  pid=()
}

runs=0
echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), wrk -t2 -c32 -d${seconds}s $method /, proxy_next_upstream $next_upstream, max_fails=$max_fails fail_timeout=$fail_timeout, keepalive $keepalive, $workers workers; ports $front -> $a, $b; bench-server $(sha256sum "$bin" | cut -c1-12)"
set -- $delays
[ $# -le 10 ] || { echo "at most 10 drain delays" >&2; exit 2; }
[ "$peer" = none ] || [ -z "${PEER_FIRST:-}" ] || run "$peer" 0s "$peer"
for delay in "$@"; do
  run drain "$delay" "drain $delay"
done
[ "$peer" = none ] || [ -n "${PEER_FIRST:-}" ] || run "$peer" 0s "$peer"
