#!/usr/bin/env bash
# Tracker guard enter+drop against tokio_util's TaskTracker::token() + drop, single-threaded and
# with two threads contending (wall time, and each thread's CPU time), and the control (two
# threads, each on a tracker of its own), side by side in one criterion run; prints the
# ratios and the load average around the run.
#   bash bench/tracker.sh [runs]     (default 1 run; each run is one full criterion pass)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
target=${CARGO_TARGET_DIR:-target}
for ((run = 1; run <= runs; run++)); do
  before=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')
  cargo bench -q -p lastcall --bench tracker >/dev/null 2>&1
  echo "run $run: load average $before before, $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?') after"
  python3 - "$target/criterion" "$run" <<'PY'
import json, sys, os
root, run = sys.argv[1], sys.argv[2]
def mean(group, name):
    path = os.path.join(root, group, name, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["mean"]["point_estimate"]
figures = {}
for threads in ("1_thread", "2_threads", "2_threads_cpu", "2_threads_own"):
    group = "guard_enter_drop_" + threads
    ours = mean(group, "lastcall__Tracker")
    peer = mean(group, "tokio_util__TaskTracker")
    figures[threads] = ours
    print(f"run {run} {threads:>13}: lastcall {ours:6.1f} ns   TaskTracker {peer:6.1f} ns   "
          f"lastcall/peer {ours / peer:4.2f}")
one, shared, own = figures["1_thread"], figures["2_threads"], figures["2_threads_own"]
print(f"run {run} lastcall: 2 threads sharing / 1 thread {shared / one:4.2f}; "
      f"2 threads on own trackers / 1 thread {own / one:4.2f} (the machine); "
      f"sharing / own {shared / own:4.2f} (the tracker's contention)")
PY
done
