#!/usr/bin/env python3
"""Time from SIGTERM to the first 503 on readiness: lastcall's server (`DrainLayer`'s
`/health/ready`, the signal heard on lastcall's own thread) against the axum peer (an
`AtomicBool` flipped by the `with_graceful_shutdown` future, the signal heard through tokio's
driver), both keeping a 1 s drain delay, alternating in one run.

    python3 bench/readiness_flip.py [processes=9]

Each process is polled on one keep-alive connection, one request every 0.5 ms until the signal
and back to back after it (so the figure's resolution is one round trip, about 0.1 ms on
loopback, not the polling interval); the figure is the time from just before `kill(SIGTERM)` to
the arrival of the first 503, median over the processes.
"""
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "bench-server")
REQUEST = b"GET /health/ready HTTP/1.1\r\nhost: bench\r\n\r\n"

VARIANTS = {
    "lastcall": ("drain", {"LASTCALL_DRAIN_DELAY": "1s"}),
    "axum": ("axum", {"BENCH_DRAIN_DELAY": "1s"}),
}


def status(client):
    """Sends one readiness request and returns its status code (the bodies are tiny)."""
    client.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(4096)
        if not chunk:
            raise SystemExit("the server closed the readiness connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += client.recv(4096)
    return int(head.split()[1])


def once(variant):
    mode, extra = VARIANTS[variant]
    env = dict(os.environ, PORT="0", RUST_LOG="off", **extra)
    server = subprocess.Popen([BIN, mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        line = server.stdout.readline().decode()
        host, port = line.split()[-1].rsplit(":", 1)
        client = socket.create_connection((host, int(port)), timeout=10)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ready_by = time.perf_counter() + 5
        while status(client) != 200:  # lastcall's is ready once `run` starts waiting
            if time.perf_counter() > ready_by:
                raise SystemExit(f"{variant}: not ready within 5 s")
            time.sleep(0.0005)
        for _ in range(20):  # warm: the connection, the route, the readiness state
            if status(client) != 200:
                raise SystemExit(f"{variant}: not ready before the signal")
            time.sleep(0.0005)
        sent = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        deadline = sent + 5
        while time.perf_counter() < deadline:
            code = status(client)
            if code == 503:
                return (time.perf_counter() - sent) * 1000.0
        raise SystemExit(f"{variant}: no 503 within 5 s of SIGTERM")
    finally:
        server.kill()
        server.wait()


def main():
    processes = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "lastcall-bench"], cwd=ROOT, check=True)
    samples = {variant: [] for variant in VARIANTS}
    for _ in range(processes):
        for variant in VARIANTS:
            samples[variant].append(once(variant))
    for variant, ms in samples.items():
        ms.sort()
        print(f"{variant:>8}: first 503 median {statistics.median(ms):.2f} ms  min {ms[0]:.2f}  max {ms[-1]:.2f}  (n={len(ms)})")
    ratio = statistics.median(samples["lastcall"]) / statistics.median(samples["axum"])
    print(f"lastcall / axum (medians) = {ratio:.2f}")


if __name__ == "__main__":
    main()
