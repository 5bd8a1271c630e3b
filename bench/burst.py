#!/usr/bin/env python3
"""A burst of connections at the moment of SIGTERM: what becomes of each.

    python3 bench/burst.py [rounds=3] [connections=1000]

For each round and each variant (backlog 128 or the system's largest through
`lastcall::http::listen`; drain delay 0 or 1 s) a fresh `serve_fixture` (release build:
`cargo build --release -p lastcall --example serve_fixture`) is started; the script starts
CONNECTIONS non-blocking connects, sends SIGTERM at once, then on every connection that
completes sends `GET /hello` and reads until the server closes. Each connection ends as
`answered` (a 200), `refused` (the connect was refused: the listener had closed), `reset` (the
connection was established and then reset, or closed without an answer) or `timeout` (nothing
within 15 s). Loopback only; each round is bounded by 15 s.
"""
import errno
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "examples", "serve_fixture")
REQUEST = b"GET /hello HTTP/1.1\r\nhost: bench\r\n\r\n"


def once(backlog, drain, connections):
    env = dict(os.environ, LASTCALL_DRAIN_DELAY=drain, LASTCALL_BUDGET="10s", RUST_LOG="warn")
    server = subprocess.Popen(
        [BIN, f"backlog={backlog}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        line = server.stdout.readline().decode()
        host, port = line.split()[-1].rsplit(":", 1)
        addr = (host, int(port))
        sel = selectors.DefaultSelector()
        outcome = {}
        state = {}
        for i in range(connections):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex(addr)
            if rc not in (0, errno.EINPROGRESS):
                outcome[i] = "refused" if rc == errno.ECONNREFUSED else "reset"
                s.close()
                continue
            state[s] = [i, "connecting", b""]
            sel.register(s, selectors.EVENT_WRITE)
        server.send_signal(signal.SIGTERM)
        until = time.monotonic() + 15
        while state and time.monotonic() < until:
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                i, phase, got = state[s]
                done = None
                if phase == "connecting":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err == errno.ECONNREFUSED:
                        done = "refused"
                    elif err:
                        done = "reset"
                    else:
                        try:
                            s.send(REQUEST)
                            state[s][1] = "reading"
                            sel.modify(s, selectors.EVENT_READ)
                        except OSError:
                            done = "reset"
                else:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        chunk = None
                    if chunk:
                        state[s][2] = got + chunk
                    else:
                        done = "answered" if got.startswith(b"HTTP/1.1 200") else "reset"
                if done:
                    outcome[i] = done
                    sel.unregister(s)
                    s.close()
                    del state[s]
        for s, (i, _, _) in list(state.items()):
            outcome[i] = "timeout"
            s.close()
        server.wait(timeout=30)
        counts = {k: 0 for k in ("answered", "refused", "reset", "timeout")}
        for v in outcome.values():
            counts[v] += 1
        return counts, server.returncode
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} is missing: cargo build --release -p lastcall --example serve_fixture")
    variants = [(b, d) for d in ("0s", "1s") for b in ("128", "max")]
    print(f"{connections} connections per burst, SIGTERM right after the connects")
    print("| round | backlog | drain delay | answered | refused | reset | timeout | exit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(1, rounds + 1):
        for backlog, drain in variants:
            counts, code = once(backlog, drain, connections)
            shown = "somaxconn" if backlog == "max" else backlog
            print(
                f"| {r} | {shown} | {drain} | {counts['answered']} | {counts['refused']} "
                f"| {counts['reset']} | {counts['timeout']} | {code} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
