#!/usr/bin/env python3
"""Where the time between the last response and the process's exit goes, per server, from
kernel tracepoints: the same scenario as `exit_latency.py` (GET /slow?ms=200 in flight at
SIGTERM, drain delay 0), run under `perf record -a` with four tracepoints, alternating the
variants in one run.

    sudo python3 bench/exit_phases.py [iterations=30]     (needs `perf`, Debian's linux-perf)

For each server it prints the medians of
- user: the response's `writev` returning to the `exit_group` call (the shutdown flow, the
  runtime's teardown, `main` returning);
- threads: `exit_group` to the last thread's exit (the kernel ending the threads still alive);
- memory: the last thread's exit to the parent's SIGCHLD (the address space torn down);
- total: as `exit_latency.py` measures it, from the client.
Tracing slows every system call a little; compare the servers, not these with the untraced run.
"""
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import exit_latency  # noqa: E402  (the scenario and the variants)

EVENTS = [
    "syscalls:sys_exit_writev",
    "syscalls:sys_enter_exit_group",
    "sched:sched_process_exit",
    "signal:signal_generate",
]


def child(iterations, out):
    """Runs the scenario; writes `variant pid total_ms` lines."""
    with open(out, "w") as f:
        for _ in range(iterations):
            for variant in exit_latency.VARIANTS:
                pid, ms = exit_latency.once(variant, with_pid=True)
                f.write(f"{variant.replace(' ', '_')} {pid} {ms:.3f}\n")


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3])
        return
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "lastcall-bench"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        data, runs = os.path.join(tmp, "perf.data"), os.path.join(tmp, "runs.txt")
        record = ["perf", "record", "-q", "-a", "-o", data]
        for event in EVENTS:
            record += ["-e", event]
        subprocess.run(record + ["--", sys.executable, __file__, "--child", str(iterations), runs],
                       check=True, stderr=subprocess.DEVNULL)
        script = subprocess.run(["perf", "script", "-i", data, "-F", "pid,time,event,trace"],
                                check=True, capture_output=True, text=True).stdout
        lines = [line.split() for line in open(runs)]
    variant_of = {int(pid): variant.replace("_", " ") for variant, pid, _ in lines}
    seen = collections.defaultdict(dict)
    exited = []  # (pid, time) of exit_group calls, for the SIGCHLD that follows each
    for line in script.splitlines():
        m = re.match(r"\s*(-?\d+)\s+([\d.]+):\s+(\S+):(.*)", line)
        if not m:
            continue
        pid, at, event, rest = int(m[1]), float(m[2]), m[3], m[4]
        if event == "signal:signal_generate" and "sig=17" in rest:
            for server, t in exited:
                if "chld" not in seen[server] and t <= at:
                    seen[server]["chld"] = at
            continue
        if pid not in variant_of:
            continue
        if event == "syscalls:sys_exit_writev":
            seen[pid]["writev"] = at
        elif event == "syscalls:sys_enter_exit_group":
            seen[pid]["exit_group"] = at
            exited.append((pid, at))
        elif event == "sched:sched_process_exit" and "group_dead=true" in rest:
            seen[pid]["dead"] = at
    phases = collections.defaultdict(lambda: collections.defaultdict(list))
    for variant, pid, total in lines:
        s = seen[int(pid)]
        if not all(k in s for k in ("writev", "exit_group", "dead", "chld")):
            continue
        name = variant.replace("_", " ")
        phases[name]["user"].append((s["exit_group"] - s["writev"]) * 1e6)
        phases[name]["threads"].append((s["dead"] - s["exit_group"]) * 1e6)
        phases[name]["memory"].append((s["chld"] - s["dead"]) * 1e6)
        phases[name]["total"].append(float(total) * 1000)
    for name, by_phase in phases.items():
        cells = "  ".join(f"{k} {statistics.median(v):4.0f} us" for k, v in by_phase.items())
        print(f"{name:>17}: {cells}  (n={len(by_phase['total'])})")


if __name__ == "__main__":
    main()
