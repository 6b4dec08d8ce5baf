"""Slow clients against `postgraas-server serve`: how /health and a create fare while hundreds of
connections send their headers slowly (slowloris) or nothing at all.

Starts its own server (a SQLite meta db, the local backend under a scratch data_root), then for each phase
(no load; N slowloris sockets; N idle sockets; both) times /health one request after another for a while,
and one create (POST -> 201, then a login to the new database), and prints a table. ``--worker gthread``
runs the same phases against gunicorn's own gthread worker, the one `serve` used before docs/serving.md.
It measures, it does not assert: the exit code is 0 whatever the figures, 2 when something is missing.

    .venv/bin/python benchmarks/slow_clients.py [--clients 300] [--seconds 10] [--worker ours|gthread|both]
"""

from __future__ import annotations

import argparse
import os
import pwd
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable, so that `benchmarks.*` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402

from benchmarks.infra import Cleanup, PostgraasServer, make_scratch_root, say, stop_postgres_under  # noqa: E402
from benchmarks.measure import Created, Durability, create_and_query, delete_instance  # noqa: E402
from postgraas_server.backends.local import find_bin_dir  # noqa: E402
from postgraas_server.errors import BackendUnavailable  # noqa: E402

PHASES = ("none", "slowloris", "idle", "both")


@dataclass
class Closed:
    kind: str
    # From our connect to the server's close.
    lifetime: float
    # The start of what the server sent before closing (b"" for a silent close).
    answer: bytes


@dataclass
class _Held:
    kind: str
    opened: float
    next_header: float
    headers_sent: int = 0
    answer: bytes = b""


class Siege:
    """Holds ``slow`` slowloris connections (a request line, then one header every ``every`` seconds, never
    the end of the headers) and ``idle`` ones (nothing sent) against host:port, from one thread. What the
    server closes is recorded and, while ``reopen`` is true, replaced at once, so the load stays."""

    def __init__(self, host: str, port: int, slow: int, idle: int, every: float = 2.0) -> None:
        self.address = (host, port)
        self.every = every
        self.reopen = True
        self.closed: list[Closed] = []
        self.failed_connects = 0
        self.open_count = 0
        self._wanted = {"slow": slow, "idle": idle}
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="siege", daemon=True)

    def start(self) -> Siege:
        for kind, count in self._wanted.items():
            for _ in range(count):
                self._open(kind)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self.open_count = 0
        self._selector.close()

    def wait_all_closed(self, timeout: float) -> bool:
        """Stop replacing; True once the server has closed every connection we held."""
        self.reopen = False
        deadline = time.monotonic() + timeout
        while self.open_count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.open_count == 0

    def _open(self, kind: str) -> None:
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.connect(self.address)
            if kind == "slow":
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: siege\r\n")
        except OSError:
            self.failed_connects += 1
            sock.close()
            return
        sock.setblocking(False)
        now = time.monotonic()
        self._selector.register(sock, selectors.EVENT_READ, _Held(kind, now, now + self.every))
        self.open_count += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                self._readable(key)
            now = time.monotonic()
            for key in list(self._selector.get_map().values()):
                held: _Held = key.data
                if held.kind == "slow" and held.next_header <= now:
                    held.next_header += self.every
                    held.headers_sent += 1
                    try:
                        key.fileobj.send(f"X-Siege-{held.headers_sent}: 1\r\n".encode())  # type: ignore[union-attr]
                    except OSError:
                        pass  # closed by the server: the read side will tell

    def _readable(self, key: selectors.SelectorKey) -> None:
        held: _Held = key.data
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            held.answer = (held.answer + data)[:200]
            return
        self._selector.unregister(sock)
        sock.close()
        self.open_count -= 1
        self.closed.append(Closed(held.kind, time.monotonic() - held.opened, held.answer.split(b"\r\n")[0]))
        if self.reopen and not self._stop.is_set():
            self._open(held.kind)


# --- the benchmark ---------------------------------------------------------------------------------------------


@dataclass
class Phase:
    worker: str
    load: str
    health: list[float] = field(default_factory=list)
    failures: int = 0
    create: Created | None = None
    held_min: int = 0
    server_closed: int = 0

    def row(self) -> list[str]:
        ordered = sorted(self.health) or [float("nan")]

        def pct(q: float) -> str:
            return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"

        create = self.create
        if create is None or create.error:
            created = f"failed: {create.error[:40] if create and create.error else 'no answer'}"
        else:
            created = f"{create.post_to_201:.2f}"
        return [
            self.worker,
            self.load,
            str(self.held_min),
            str(len(self.health)),
            pct(0.5),
            pct(0.95),
            f"{ordered[-1] * 1000:.1f}",
            str(self.failures),
            created,
            str(self.server_closed),
        ]


HEADER = ["worker", "load", "held", "/health n", "p50 ms", "p95 ms", "max ms", "failed", "create s", "closed by srv"]


def measure_phase(server: PostgraasServer, worker: str, load: str, args: argparse.Namespace) -> Phase:
    port = int(server.url.rsplit(":", 1)[1])
    slow = args.clients if load in ("slowloris", "both") else 0
    idle = args.clients if load in ("idle", "both") else 0
    phase = Phase(worker, load if load == "none" else f"{load} x{args.clients}")
    result: list[Created] = []
    creating = threading.Thread(target=lambda: result.append(create_and_query(server.url, "local", Durability())))
    siege = Siege("127.0.0.1", port, slow, idle).start()
    try:
        time.sleep(1.0)  # the server has accepted them
        phase.held_min = siege.open_count
        creating.start()
        ends = time.monotonic() + args.seconds
        while time.monotonic() < ends:
            started = time.perf_counter()
            try:
                ok = requests.get(f"{server.url}/health", timeout=args.health_timeout).status_code == 200
            except requests.RequestException:
                ok = False
            phase.health.append(time.perf_counter() - started)
            phase.failures += not ok
            phase.held_min = min(phase.held_min, siege.open_count)
            time.sleep(0.05)
    finally:
        phase.server_closed = len(siege.closed)
        siege.stop()
    # Under gthread the create may be stuck behind the siege; it may finish now that the siege is gone.
    if creating.ident is not None:
        creating.join(200)
    phase.create = result[0] if result else None
    if phase.create is not None:
        problem = delete_instance(server.url, phase.create)
        if problem:
            say(problem)
    return phase


def run(args: argparse.Namespace) -> list[Phase]:
    bin_dir = find_bin_dir(None)
    cleanup = Cleanup()
    phases: list[Phase] = []
    scratch = make_scratch_root(Path(tempfile.gettempdir()))
    cleanup.add("scratch", lambda: shutil.rmtree(scratch, ignore_errors=True))
    cleanup.add("postgres processes", lambda: stop_postgres_under(scratch, bin_dir))
    try:
        for worker in ("ours", "gthread") if args.worker == "both" else (args.worker,):
            config = {
                "metadb": {"url": f"sqlite:///{scratch / worker / 'meta.sqlite'}"},
                "backends": {"local": {"type": "local", "data_root": str(scratch / f"data-{worker}")}},
                "application": {"log_level": "WARNING"},
                "lifecycle": {"default_ttl": "10m"},
            }
            serve_args = ("--threads", str(args.threads), "--worker-class", worker)
            server = PostgraasServer(scratch / worker, config, workers=args.workers, serve_args=serve_args)
            cleanup.add(f"{worker} server", server.stop)
            server.start()
            for load in PHASES:
                say(f"{worker}: {load} ...")
                phases.append(measure_phase(server, worker, load, args))
            server.stop()
    finally:
        for problem in cleanup.run():
            say(f"cleanup: {problem}")
    return phases


def table(phases: list[Phase]) -> str:
    rows = [HEADER, ["---"] * len(HEADER), *(p.row() for p in phases)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=300, help="slowloris and idle sockets per phase (N)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long /health is timed per phase")
    parser.add_argument("--worker", choices=("ours", "gthread", "both"), default="both")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker")
    parser.add_argument("--health-timeout", type=float, default=5.0, help="a slower /health counts as failed")
    args = parser.parse_args(argv)
    try:
        find_bin_dir(None)
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")
    except (BackendUnavailable, KeyError) as e:
        say(f"PostgreSQL server binaries (and, as root, the postgres user) are needed: {e}")
        return 2
    started = datetime.now(UTC)
    phases = run(args)
    print(f"{started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, workers={args.workers} threads={args.threads}")
    print(table(phases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
