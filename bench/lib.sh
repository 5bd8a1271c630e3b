# Shell functions shared by the bench scripts; sourced, not run.

# wrk_line LABEL WRK_OUTPUT EXIT_A EXIT_B: one line with wrk's requests, rate, non-2xx answers
# and socket errors, and both instances' exit statuses. bench/rolling.sh sums its third field.
wrk_line() {
  local total non2xx errors rps
  total=$(awk '/requests in/ {print $1}' "$2")
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$2")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$2")
  errors=$(awk '/Socket errors/ {print $3, $4, $5, $6, $7, $8, $9, $10}' "$2")
  printf '%-11s requests %s (%s/s), non-2xx %s, socket errors: %s, exit A %s, exit B %s\n' \
    "$1" "$total" "$rps" "${non2xx:-0}" "${errors:-none}" "$3" "$4"
}

# listening_addr FILE TRIES PAUSE: waits for bench-server's `listening on ADDR` line in FILE,
# looking TRIES times PAUSE seconds apart, and prints ADDR; fails if it never comes. Remove
# FILE before starting the server: the child truncates it only once it runs, so a look before
# then would read the previous server's address.
listening_addr() {
  local addr
  for _ in $(seq 1 "$2"); do
    addr=$(sed -n 's/^listening on //p' "$1" 2>/dev/null || true)
    if [ -n "$addr" ]; then
      echo "$addr"
      return 0
    fi
    sleep "$3"
  done
  return 1
}
