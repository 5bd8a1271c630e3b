#!/usr/bin/env python3
"""Zero-downtime restart, measured from outside (issue 20).

    python3 bench/restart.py [--restarts 50] [--load-restarts 20] [--rounds 2] [-- COMMAND ...]

COMMAND is the service (`{port}` in it is replaced by the port, which is also passed as PORT);
the default is `lastcall demo` from target/release (built first), on a temporary SQLite file.
Every service gets LASTCALL_DRAIN_DELAY=0s (no balancer in front) and LASTCALL_BUDGET=10s.

1. Timing: N restarts in a row (SIGHUP, or --signal): from the signal to the first response
   served by the new process, and to the old process's exit; median and p99. "Served by the
   new process": which process holds the server's end of the probe's connection, from
   /proc/net/tcp and /proc/PID/fd. The old process's exit is seen through a pidfd (the
   successor is not our child).
2. Failed requests per 1,000 through --load-restarts restarts under a bounded load (keep-alive
   and new-connection clients, each on a fixed 5 ms schedule), side by side in the same run, the order alternating by round:
   - restart: the restart signal, as in 1;
   - stop-start: SIGTERM, wait for the exit, start the command again (connections in between
     are refused);
   - holder: a small Python process binds the port once and, for each restart, SIGTERMs its
     child, waits for its exit and starts the command again with the socket as fd 3
     (LISTEN_FDS=1, LISTEN_FDNAMES, LISTEN_PID unset): what systemd socket activation does.
   A reused keep-alive connection closed before any byte of an answer is counted apart as
   "retried" (HTTP clients retry those), not as a failure.

Every load loop is bounded in count and time; every process started is killed at the end.
"""
import argparse
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
CLI = os.path.join(TARGET, "release", "lastcall")
RESTART_LIMIT = 30.0  # seconds a single restart may take before the bench gives up
KEEP_ALIVE_CLIENTS = 4
NEW_CONNECTION_CLIENTS = 4
# Each client sends on a fixed schedule, whatever the last answer was: a refusal, which comes
# back at once, does not make a client send more often, so "per 1,000" is a share of the time.
INTERVAL = 0.005
MAX_REQUESTS = 400_000

HOLDER = r"""
import os, signal, socket, subprocess, sys
port, argv = int(sys.argv[1]), sys.argv[2:]
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.listen(1024)
if sock.fileno() != 3:
    os.dup2(sock.fileno(), 3)
env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
env.update(LISTEN_FDS="1", LISTEN_FDNAMES="http")
child = None
for line in sys.stdin:
    if child is not None:
        child.send_signal(signal.SIGTERM)
        child.wait()
    if line.strip() == "stop":
        break
    child = subprocess.Popen(argv, env=env, pass_fds=(3,), stdout=subprocess.DEVNULL)
    print(child.pid, flush=True)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc: who holds which socket ------------------------------------------------------------


def tcp_sockets(keep):
    """Inodes of the TCP sockets whose (local port, remote port, state) pass keep."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote, state, inode = f[1], f[2], int(f[3], 16), int(f[9])
            if keep(int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state):
                inodes.add(inode)
    return inodes


def socket_inodes(pid):
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    found = set()
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def listener_holders(port):
    """The pids holding a listening socket on port."""
    inodes = tcp_sockets(lambda local, _, state: local == port and state == 0x0A)
    if not inodes:
        return set()
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and socket_inodes(p) & inodes}


def connection_owner(port, client_port, candidates):
    inodes = tcp_sockets(lambda l, r, s: l == port and r == client_port and s == 0x01) - {0}
    if not inodes:
        return None
    return next((pid for pid in candidates if socket_inodes(pid) & inodes), None)


# --- HTTP --------------------------------------------------------------------------------------


def read_response(sock):
    """(status, close) of one response on sock; raises EOFError if closed before any byte."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            if not buf:
                raise EOFError("closed before a response")
            raise ConnectionResetError("truncated")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").lower().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("truncated")
        body += chunk
    return status, "close" in headers.get("connection", "")


def request(sock, path):
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
    return read_response(sock)


def get(port, path, timeout=2.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return request(sock, path)[0]


def wait_ready(port, ready_path, limit=30.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            if get(port, ready_path) == 200:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise SystemExit(f"the service on port {port} was not ready within {limit} s")


# --- processes ---------------------------------------------------------------------------------


class Processes:
    """Every process the bench caused, killed (with its process group) at the end."""

    def __init__(self):
        self.pids = set()

    def add(self, pid):
        self.pids.add(pid)

    def kill_all(self):
        for pid in self.pids:
            for kill in (lambda: os.killpg(os.getpgid(pid), signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    kill()
                except OSError:
                    pass


def exit_watcher(pid):
    """A thread that records when pid exits (pidfd: works for a process that is not our child)."""
    result = {}
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        result["at"] = time.perf_counter()
        return None, result

    def watch():
        select.select([fd], [], [], RESTART_LIMIT * 2)
        result["at"] = time.perf_counter()
        os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, result


class Service:
    def __init__(self, args, procs, port=None):
        self.args, self.procs = args, procs
        self.port = port or free_port()
        self.env = dict(os.environ, PORT=str(self.port), **args.env)

    def command(self):
        return [a.replace("{port}", str(self.port)) for a in self.args.command]

    def start(self):
        child = subprocess.Popen(
            self.command(), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.add(child.pid)
        self.child = child
        self.pid = child.pid
        wait_ready(self.port, self.args.ready_path)


def restart_once(service, sig):
    """Signals service.pid; returns (ms to the first answer from a new process, ms to the old
    process's exit) and makes the new process current."""
    old = service.pid
    thread, exited = exit_watcher(old)
    before = listener_holders(service.port)
    new = None
    t0 = time.perf_counter()
    os.kill(old, sig)
    served = None
    while time.perf_counter() - t0 < RESTART_LIMIT:
        if new is None:
            fresh = listener_holders(service.port) - before
            if fresh:
                new = min(fresh)
                service.procs.add(new)
        if served is None:
            try:
                with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
                    status, _ = request(sock, service.args.path)
                    answered = time.perf_counter()
                    if status == 200 and new is not None:
                        owner = connection_owner(service.port, sock.getsockname()[1], (new, old))
                        if owner == new or (owner is None and "at" in exited):
                            served = answered
            except (OSError, EOFError):
                pass
        if "at" in exited and served is None and new is None and time.perf_counter() - exited["at"] > 5:
            raise SystemExit(f"pid {old} exited on {sig.name} and nothing new served: the restart is a stop")
        if served is not None and "at" in exited:
            break
        time.sleep(0.001)
    else:
        raise SystemExit(f"restart of pid {old} not over within {RESTART_LIMIT} s (new: {new})")
    if thread is not None:
        thread.join()
    if isinstance(service.child, subprocess.Popen) and service.child.pid == old:
        service.child.wait()
    service.pid = new
    return (served - t0) * 1000, (exited["at"] - t0) * 1000


def timing(args, procs):
    service = Service(args, procs)
    service.start()
    to_serving, to_exit = [], []
    deadline = time.monotonic() + args.max_seconds
    for _ in range(args.restarts):
        if time.monotonic() > deadline:
            print(f"timing: stopped after {len(to_serving)} restarts (--max-seconds)")
            break
        serving, exit_ = restart_once(service, args.signal)
        to_serving.append(serving)
        to_exit.append(exit_)
    os.kill(service.pid, signal.SIGTERM)

    def summary(name, ms):
        ms = sorted(ms)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        return f"{name}: median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"

    print(f"timing over {len(to_serving)} restarts ({args.signal.name}):")
    print("  signal -> first answer from the new process: " + summary("", to_serving)[2:])
    print("  signal -> old process exit:                  " + summary("", to_exit)[2:])


# --- load --------------------------------------------------------------------------------------


class Load:
    """Keep-alive and new-connection clients, bounded in count and time, counting outcomes."""

    KINDS = ("ok", "refused", "reset", "closed", "timeout", "non-200", "retried")

    def __init__(self, port, path, limit):
        self.port, self.path = port, path
        self.until = time.monotonic() + limit
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(self.KINDS, 0)
        # Seconds each answered request took: a request held in a backlog is slow, not failed.
        self.latencies = []
        # The status codes of the non-200 answers.
        self.statuses = {}
        self.threads = [
            threading.Thread(target=self.client, args=(i < KEEP_ALIVE_CLIENTS,), daemon=True)
            for i in range(KEEP_ALIVE_CLIENTS + NEW_CONNECTION_CLIENTS)
        ]
        for t in self.threads:
            t.start()

    def count(self, kind, took):
        with self.lock:
            self.counts[kind] += 1
            if kind == "ok":
                self.latencies.append(took)
            return sum(self.counts.values())

    def client(self, keep_alive):
        sock = None
        due = time.monotonic()
        while not self.stop.is_set() and time.monotonic() < self.until:
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            # No catching up after a slow answer: the next request is one interval later.
            due = max(due, time.monotonic()) + INTERVAL
            reused = sock is not None
            sent = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                status, close = request(sock, self.path)
                kind = "ok" if status == 200 else "non-200"
                if kind != "ok":
                    with self.lock:
                        self.statuses[status] = self.statuses.get(status, 0) + 1
                if close or not keep_alive:
                    sock.close()
                    sock = None
            except ConnectionRefusedError:
                kind, sock = "refused", None
            except EOFError:
                kind = "retried" if reused else "closed"
            except socket.timeout:
                kind = "timeout"
            except OSError:
                kind = "reset"
            if kind != "ok" and sock is not None:
                sock.close()
                sock = None
            if self.count(kind, time.monotonic() - sent) >= MAX_REQUESTS:
                break
        if sock is not None:
            sock.close()

    def finish(self):
        """The counts of each outcome, and the latencies of the answered requests."""
        self.stop.set()
        for t in self.threads:
            t.join()
        counts = dict(self.counts)
        counts["statuses"] = dict(self.statuses)
        return counts, list(self.latencies)


def through_restarts(mode, args, procs):
    """Counts of each outcome through args.load_restarts restarts done the mode's way."""
    service = Service(args, procs)
    holder = None
    if mode == "holder":
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(service.port)] + service.command(),
            env=service.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        procs.add(holder.pid)

        def spawn():
            holder.stdin.write("start\n")
            holder.stdin.flush()
            pid = int(holder.stdout.readline())
            procs.add(pid)
            service.pid = pid
            wait_ready(service.port, args.ready_path)

        spawn()
    else:
        service.start()
    load = Load(service.port, args.path, args.load_restarts * RESTART_LIMIT)
    time.sleep(0.3)  # the load is running: a fixed lead, not a synchronisation
    for _ in range(args.load_restarts):
        if mode == "restart":
            restart_once(service, args.signal)
        elif mode == "stop-start":
            service.child.send_signal(signal.SIGTERM)
            service.child.wait()
            service.start()
        else:
            spawn()
        time.sleep(0.2)  # the same pause after every restart, whatever the mode
    counts, latencies = load.finish()
    if holder is not None:
        holder.stdin.write("stop\n")
        holder.stdin.flush()
        holder.wait(timeout=RESTART_LIMIT)
    else:
        try:
            os.kill(service.pid, signal.SIGTERM)
        except OSError:
            pass
    return counts, latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=50, help="restarts timed in part 1 (at most 500)")
    parser.add_argument("--load-restarts", type=int, default=20, help="restarts per mode under load (at most 200)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three modes, order alternating")
    parser.add_argument("--signal", default="SIGHUP", help="the restart signal")
    parser.add_argument("--path", default="/orders/1")
    parser.add_argument("--ready-path", default="/health/ready")
    parser.add_argument("--max-seconds", type=float, default=300, help="bound on part 1")
    parser.add_argument("--skip-timing", action="store_true", help="skip part 1")
    parser.add_argument("--modes", default="restart,stop-start,holder", help="part 2's modes, comma-separated")
    parser.add_argument("command", nargs="*", help="the service (after --)")
    args = parser.parse_args()
    args.restarts = min(args.restarts, 500)
    args.load_restarts = min(args.load_restarts, 200)
    args.signal = signal.Signals[args.signal if args.signal.startswith("SIG") else "SIG" + args.signal]
    db = None
    if not args.command:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "lastcall-cli"], cwd=ROOT, check=True)
        db = tempfile.NamedTemporaryFile(prefix="lastcall-restart-bench-", suffix=".sqlite3", delete=False)
        args.command = [CLI, "demo"]
    args.env = {"LASTCALL_DRAIN_DELAY": "0s", "LASTCALL_BUDGET": "10s", "RUST_LOG": "off"}
    if db is not None:
        args.env["LASTCALL_DEMO_DB"] = db.name
    print("service: " + " ".join(args.command))
    procs = Processes()
    try:
        if not args.skip_timing:
            timing(args, procs)
        modes = [m for m in args.modes.split(",") if m]
        unknown = set(modes) - {"restart", "stop-start", "holder"}
        if unknown:
            raise SystemExit(f"--modes: unknown {sorted(unknown)}; the modes are restart, stop-start, holder")
        totals = {mode: dict.fromkeys(Load.KINDS, 0) for mode in modes}
        waits = {mode: [] for mode in modes}
        statuses = {mode: {} for mode in modes}
        for round_ in range(args.rounds):
            order = modes if round_ % 2 == 0 else modes[::-1]
            for mode in order:
                counts, latencies = through_restarts(mode, args, procs)
                print(f"round {round_ + 1} {mode:>10}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
                for k, v in counts.items():
                    if k == "statuses":
                        for code, n in v.items():
                            statuses[mode][code] = statuses[mode].get(code, 0) + n
                    else:
                        totals[mode][k] += v
                waits[mode].extend(latencies)
        print(f"\nfailed requests per 1,000 through {args.load_restarts} restarts x {args.rounds} rounds:")
        for mode in modes:
            c = totals[mode]
            total = sum(c.values())
            failed = total - c["ok"] - c["retried"]
            print(
                f"  {mode:>10}: {1000 * failed / max(total, 1):7.2f} per 1,000 ({failed} of {total}: "
                f"refused {c['refused']}, reset {c['reset']}, closed {c['closed']}, timeout {c['timeout']}, "
                f"non-200 {c['non-200']} {statuses[mode] or ''}; retried {c['retried']})"
            )
        print("latency of the answered requests (a backlog makes requests wait, not fail):")
        for mode in modes:
            ms = sorted(1000 * t for t in waits[mode]) or [0.0]
            p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
            print(f"  {mode:>10}: median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")
    finally:
        procs.kill_all()
        if db is not None:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(db.name + suffix)
                except OSError:
                    pass


if __name__ == "__main__":
    main()
