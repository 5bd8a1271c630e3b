#!/usr/bin/env python3
"""Chaos run for lastcall's workers: restart two worker processes with SIGTERM and SIGKILL
at random moments while they drain a queue, then count what was lost or applied twice.

    python3 bench/chaos.py [sqlite postgres nats] [--jobs 5000] [--term 20] [--kill 5] [--seed N]

Each backend first drains the same number of jobs without restarts (the `calm` row), so the
chaos row's rate can be read as a ratio against it, measured in the same run.

Each job's effect is one row keyed by the job, written in the same transaction as the job's
deduplication key (`mark_processed`); NATS jobs record their effects in PostgreSQL. Needs
`cargo build --release -p lastcall-bench --bin chaos-worker` first. Every loop is bounded in
count and time; only loopback traffic.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "chaos-worker")

ENV = dict(
    os.environ,
    LASTCALL_BUDGET="6s",
    LASTCALL_DRAIN_DELAY="0s",
    LASTCALL_STOP_TIMEOUT="500ms",
    LASTCALL_FLUSH_TIMEOUT="500ms",
    LASTCALL_CLOSE_TIMEOUT="2s",
    CHAOS_LEASE_MS="2000",
    RUST_LOG="error",
)


def tool(backend, queue, *args, timeout=300):
    out = subprocess.run(
        [BIN, backend, queue, *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        sys.exit(f"chaos-worker {backend} {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def status(backend, queue):
    return json.loads(tool(backend, queue, "status").strip().splitlines()[-1])


def start(backend, queue):
    proc = subprocess.Popen(
        [BIN, backend, queue, "work"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()  # "ready", or EOF if it failed to start
    if line.strip() != "ready":
        sys.exit(f"a {backend} worker failed to start (status {proc.wait()})")
    return proc


def stop(proc, sig, limit=20):
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "hung"


def run(backend, jobs, terms, kills, rng):
    queue = f"chaos_{backend}_{int(time.time())}"
    if backend == "sqlite":
        ENV["CHAOS_SQLITE"] = f"/tmp/lastcall-chaos-{queue}.sqlite3"
    tool(backend, queue, "setup", str(jobs))
    events = ["TERM"] * terms + ["KILL"] * kills
    rng.shuffle(events)
    codes = {}
    busy = 0  # restarts while jobs were still waiting or running
    started = time.monotonic()
    workers = [start(backend, queue), start(backend, queue)]
    for event in events:
        time.sleep(rng.uniform(0.1, 0.6))
        if status(backend, queue)["pending"] > 0:
            busy += 1
        i = rng.randrange(len(workers))
        sig = signal.SIGTERM if event == "TERM" else signal.SIGKILL
        code = stop(workers[i], sig)
        if event == "TERM":
            codes[code] = codes.get(code, 0) + 1
        workers[i] = start(backend, queue)
    drained = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        s = status(backend, queue)
        if s["pending"] == 0:
            drained = time.monotonic() - started
            break
        time.sleep(0.25)
    for w in workers:
        stop(w, signal.SIGTERM)
    s = status(backend, queue)
    tool(backend, queue, "cleanup")
    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(ENV["CHAOS_SQLITE"] + suffix)
            except FileNotFoundError:
                pass
    lost = jobs - s["distinct"]
    duplicates = s["effects"] - s["distinct"]
    redeliveries = s["deliveries"] - s["distinct"]
    return {
        "backend": backend,
        "enqueued": jobs,
        "effects": s["effects"],
        "lost": lost,
        "duplicates": duplicates,
        "dead": s["dead"],
        "redeliveries": redeliveries,
        "seconds": drained,
        "jobs_per_s": jobs / drained if drained else None,
        "sigterm_exit_codes": codes,
        "restarts": f"{busy}/{len(events)}",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backends", nargs="*", default=["sqlite", "postgres", "nats"])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--term", type=int, default=20)
    parser.add_argument("--kill", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p lastcall-bench --bin chaos-worker")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed {seed}: {args.jobs} jobs per run, 2 workers x 4, {args.term} SIGTERM + {args.kill} SIGKILL restarts")
    print("| backend | run | enqueued | effects | lost | duplicates | dead | redeliveries | time | jobs/s | chaos / calm | restarts with work left | SIGTERM exit codes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    bad = False
    for backend in args.backends:
        calm_rate = None
        for label, terms, kills in (("calm", 0, 0), ("chaos", args.term, args.kill)):
            r = run(backend, args.jobs, terms, kills, rng)
            secs = f"{r['seconds']:.1f} s" if r["seconds"] else "not drained in 300 s"
            rate = f"{r['jobs_per_s']:.0f}" if r["jobs_per_s"] else "-"
            ratio = "-"
            if label == "calm":
                calm_rate = r["jobs_per_s"]
            elif calm_rate and r["jobs_per_s"]:
                ratio = f"{r['jobs_per_s'] / calm_rate:.2f}"
            codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["sigterm_exit_codes"].items(), key=str))
            print(
                f"| {backend} | {label} | {r['enqueued']} | {r['effects']} | {r['lost']} | "
                f"{r['duplicates']} | {r['dead']} | {r['redeliveries']} | {secs} | {rate} | "
                f"{ratio} | {r['restarts']} | {codes or '-'} |",
                flush=True,
            )
            bad |= r["lost"] != 0 or r["duplicates"] != 0 or not r["seconds"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
