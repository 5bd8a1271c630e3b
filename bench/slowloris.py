#!/usr/bin/env python3
"""Exit time after the last real response with slowloris connections open.

    python3 bench/slowloris.py [rounds=5] [connections=300]

Each round starts a fresh `serve_fixture` (release build: `cargo build --release -p lastcall
--example serve_fixture`; drain delay 0, budget 5 s, default header-read timeout 10 s), sends
one real request (`GET /slow?ms=700`), opens CONNECTIONS connections that each send one byte
of a request head every 100 ms (a single non-blocking loop, stopping on each when the server
closes it), sends SIGTERM 300 ms in, and times the process's exit (through a pidfd) from the
last byte of the real response. `serve`'s grace for a head half read is 1 s from
stop-accepting, here the signal, so the target is an exit within 1 s of the real response.
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
BIN = os.path.join(TARGET, "release", "examples", "serve_fixture")
HEAD = b"GET /hello HTTP/1.1\r\nhost: bench\r\nx-slow: "


def once(connections):
    env = dict(os.environ, LASTCALL_DRAIN_DELAY="0s", LASTCALL_BUDGET="5s", RUST_LOG="warn")
    server = subprocess.Popen([BIN], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        pidfd = os.pidfd_open(server.pid)
        host, port = server.stdout.readline().decode().split()[-1].rsplit(":", 1)
        addr = (host, int(port))
        real = socket.create_connection(addr, timeout=10)
        real.sendall(b"GET /slow?ms=700 HTTP/1.1\r\nhost: bench\r\n\r\n")
        real.setblocking(False)
        slow = []
        for _ in range(connections):
            s = socket.create_connection(addr, timeout=10)
            s.setblocking(False)
            slow.append(s)
        answer, answered_at, sent, ticks = b"", None, 0, 0
        fins = resets = 0
        exited_at = None
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(real, select.POLLIN)
        next_tick = time.perf_counter()
        deadline = time.perf_counter() + 20
        while exited_at is None and time.perf_counter() < deadline:
            now = time.perf_counter()
            if now >= next_tick:
                byte = HEAD[sent:sent + 1] or b"a"
                sent += 1
                for i, s in enumerate(slow):
                    if s is None:
                        continue
                    try:
                        if s.recv(64) == b"":
                            fins += 1
                            s.close()
                            slow[i] = None
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        resets += 1
                        s.close()
                        slow[i] = None
                        continue
                    try:
                        s.send(byte)
                    except BlockingIOError:
                        pass
                    except OSError:
                        resets += 1
                        s.close()
                        slow[i] = None
                ticks += 1
                if ticks == 3:
                    server.send_signal(signal.SIGTERM)
                next_tick += 0.1
            timeout_ms = max(0, int((next_tick - time.perf_counter()) * 1000))
            for fd, _ in poller.poll(timeout_ms):
                if fd == pidfd:
                    exited_at = time.perf_counter()
                elif answered_at is None:
                    try:
                        chunk = real.recv(65536)
                    except BlockingIOError:
                        continue
                    answer += chunk
                    if not chunk or answer.endswith(b"done"):
                        answered_at = time.perf_counter()
                        poller.unregister(real)
        os.close(pidfd)
        server.wait(timeout=30)
        # How the connections still open in the loop were closed: FIN or reset.
        for i, s in enumerate(slow):
            if s is None:
                continue
            s.settimeout(1)
            try:
                while s.recv(64):
                    pass
                fins += 1
            except socket.timeout:
                continue
            except OSError:
                resets += 1
            s.close()
            slow[i] = None
        if not answer.startswith(b"HTTP/1.1 200") or answered_at is None or exited_at is None:
            raise SystemExit(f"the real request was not answered: {answer!r}")
        left = sum(1 for s in slow if s is not None)
        return (exited_at - answered_at) * 1000, server.returncode, fins, resets, left
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} is missing: cargo build --release -p lastcall --example serve_fixture")
    times = []
    print("| round | exit after the last real response | exit code | closed (FIN) | reset | still open |")
    print("|---|---|---|---|---|---|")
    for r in range(1, rounds + 1):
        ms, code, fins, resets, left = once(connections)
        times.append(ms)
        print(f"| {r} | {ms:.0f} ms | {code} | {fins} | {resets} | {left} |", flush=True)
    print(f"median {statistics.median(times):.0f} ms, max {max(times):.0f} ms ({connections} connections)")


if __name__ == "__main__":
    main()
