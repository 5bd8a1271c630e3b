#!/usr/bin/env python3
"""Time from the last in-flight response to process exit, drain delay 0: lastcall's server
against a plain axum `with_graceful_shutdown` server, alternating in one run. lastcall's server
ends its runtime through `lastcall::runtime::block_on`: with the default `Teardown::Wait`
(which joins the runtime's threads, as dropping a runtime does) and with `Teardown::Detach`;
the axum peer drops its runtime as `#[tokio::main]` does.

    python3 bench/exit_latency.py [iterations=20]

Each iteration starts a fresh server, sends GET /slow?ms=200, sends SIGTERM while it is in
flight, reads the whole response, closes the socket (as a client does), and times how long the
process takes to exit after the response's last byte arrived.
"""
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "bench-server")


def wait_exit(server, pidfd, timeout):
    """The moment the process exits, woken by its pidfd (event-driven, no poll loop).

    Not `Popen.wait(timeout=...)`: that polls with a backoff whose first sleep is 1 ms, so it
    cannot see an exit faster than about 1.1 ms and rounds everything up to its schedule."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        if not poller.poll(timeout * 1000):
            raise SystemExit(f"server {server.pid} did not exit within {timeout} s")
        return time.perf_counter()
    finally:
        os.close(pidfd)


VARIANTS = {
    "lastcall (wait)": ("drain", {"BENCH_TEARDOWN": "wait"}),
    "lastcall (detach)": ("drain", {"BENCH_TEARDOWN": "detach"}),
    "axum": ("axum", {}),
}


def once(variant, with_pid=False):
    mode, extra = VARIANTS[variant]
    env = dict(os.environ, PORT="0", LASTCALL_DRAIN_DELAY="0s", RUST_LOG="off", **extra)
    server = subprocess.Popen([BIN, mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        pidfd = os.pidfd_open(server.pid)
        line = server.stdout.readline().decode()
        host, port = line.split()[-1].rsplit(":", 1)
        client = socket.create_connection((host, int(port)), timeout=10)
        client.sendall(b"GET /slow?ms=200 HTTP/1.1\r\nhost: bench\r\n\r\n")
        time.sleep(0.05)  # the handler takes 200 ms: the request is in flight
        server.send_signal(signal.SIGTERM)
        response = b""
        while not response.endswith(b"slow hello"):
            chunk = client.recv(65536)
            if not chunk:
                break
            response += chunk
        answered = time.perf_counter()
        client.close()
        exited = wait_exit(server, pidfd, 30)
        status = server.wait()
        if not response.startswith(b"HTTP/1.1 200") or status != 0:
            raise SystemExit(f"{variant}: bad run (status {status}): {response[:80]!r}")
        ms = (exited - answered) * 1000.0
        return (server.pid, ms) if with_pid else ms
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def main():
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "lastcall-bench"], cwd=ROOT, check=True)
    samples = {variant: [] for variant in VARIANTS}
    for _ in range(iterations):
        for variant in VARIANTS:
            samples[variant].append(once(variant))
    for variant, ms in samples.items():
        ms.sort()
        p90 = ms[int(0.9 * (len(ms) - 1))]
        print(f"{variant:>17}: median {statistics.median(ms):.3f} ms  p90 {p90:.3f} ms  max {ms[-1]:.3f} ms  (n={len(ms)})")
    peer = statistics.median(samples["axum"])
    for variant in ("lastcall (wait)", "lastcall (detach)"):
        print(f"{variant} / axum (medians) = {statistics.median(samples[variant]) / peer:.2f}")


if __name__ == "__main__":
    main()
