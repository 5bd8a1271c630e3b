#!/usr/bin/env python3
"""Idle keep-alive connections at SIGTERM: how fast and how each is closed.

    python3 bench/idle.py [rounds=3] [connections=5000]

For each round, lastcall's stack (`bench-server drain`: `http::serve` + `DrainLayer`, drain
delay 0) and `axum::serve` under `with_graceful_shutdown` (`bench-server axum`), in
alternating order, each a fresh process (release build: `cargo build --release -p
lastcall-bench`): CONNECTIONS connections each send one `GET /` and read its answer, so every
one is an idle HTTP/1.1 keep-alive connection; then SIGTERM, and the script waits for each
connection to end: `fin` (the server closed it: a read returns end of file), `rst` (reset), or
`open` (still open 10 s after the signal). `all closed` is the time from the signal to the
last connection's end, `exit` to the server process's exit. The file-descriptor limit is
raised to fit (the servers inherit it). Loopback only; each side is bounded by 10 s after the
signal.
"""
import errno
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "bench-server")
REQUEST = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n"
BOUND = 10.0


def raise_fd_limit(connections):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + 1000
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"the hard file-descriptor limit {hard} is below {need}: ulimit -Hn {need}")
    if soft == resource.RLIM_INFINITY or soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def open_idle(addr, connections):
    """CONNECTIONS connections that each had one request answered."""
    socks = []
    for _ in range(connections):
        s = socket.create_connection(addr, timeout=10)
        s.sendall(REQUEST)
        socks.append(s)
    for s in socks:
        got = b""
        while b"\r\n\r\n" not in got or not got.endswith(b"hello"):
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("the server closed a connection before its answer")
            got += chunk
        if not got.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected answer: {got[:80]!r}")
        s.setblocking(False)
    return socks


def once(mode, connections):
    env = dict(os.environ, LASTCALL_DRAIN_DELAY="0s", LASTCALL_BUDGET="10s", RUST_LOG="warn")
    server = subprocess.Popen(
        [BIN, mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        line = server.stdout.readline().decode()
        host, port = line.split()[-1].rsplit(":", 1)
        socks = open_idle((host, int(port)), connections)
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        counts = {"fin": 0, "rst": 0, "open": 0}
        left = len(socks)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        last = None
        while left and time.monotonic() < signalled + BOUND:
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    chunk = None
                except OSError as err:
                    if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                        continue
                    chunk = None
                if chunk:
                    continue  # bytes after the answer: not expected, but not an end either
                counts["fin" if chunk == b"" else "rst"] += 1
                last = time.monotonic()
                sel.unregister(s)
                s.close()
                left -= 1
        counts["open"] = left
        try:
            server.wait(timeout=max(0.1, signalled + BOUND - time.monotonic()))
            exited = time.monotonic()
        except subprocess.TimeoutExpired:
            exited = None
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        all_closed = (last - signalled) * 1000 if last is not None and not left else None
        exit_ms = (exited - signalled) * 1000 if exited is not None else None
        return counts, all_closed, exit_ms, server.returncode
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def fmt(ms):
    return "-" if ms is None else f"{ms:.0f} ms"


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} is missing: cargo build --release -p lastcall-bench")
    raise_fd_limit(connections)
    print(f"{connections} idle keep-alive connections at SIGTERM, fresh server per side and round")
    print("| round | server | all closed | exit | exit code | fin | rst | open |")
    print("|---|---|---|---|---|---|---|---|")
    results = {"drain": [], "axum": []}
    for r in range(1, rounds + 1):
        order = ("drain", "axum") if r % 2 else ("axum", "drain")
        for mode in order:
            counts, closed, exit_ms, code = once(mode, connections)
            results[mode].append(closed)
            name = "lastcall serve" if mode == "drain" else "axum::serve"
            print(
                f"| {r} | {name} | {fmt(closed)} | {fmt(exit_ms)} | {code} "
                f"| {counts['fin']} | {counts['rst']} | {counts['open']} |",
                flush=True,
            )
    for mode, name in (("drain", "lastcall serve"), ("axum", "axum::serve")):
        done = sorted(v for v in results[mode] if v is not None)
        if done:
            print(f"{name}: median all closed {done[len(done) // 2]:.0f} ms over {len(done)} rounds")


if __name__ == "__main__":
    main()
