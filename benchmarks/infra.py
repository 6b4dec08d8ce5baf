"""What a benchmark run starts and must take down again: a scratch directory, a throwaway PostgreSQL server,
Postgraas servers, containers and postgres processes. Everything is registered with one ``Cleanup``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import psycopg
import requests
from prometheus_client.parser import text_string_to_metric_families

from postgraas_server.backends.local.top_directory import mark_top_directory

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = os.environ.get("POSTGRAAS_TEST_IMAGE", "postgraas/postgres-test:15")
RUN_ID = uuid.uuid4().hex[:8]
# Every container of a run carries both: the run to remove its own, the pid to tell a dead run's leftovers.
RUN_LABEL = "postgraas.bench_run"
PID_LABEL = "postgraas.bench_pid"


def container_labels() -> dict[str, str]:
    return {RUN_LABEL: RUN_ID, PID_LABEL: str(os.getpid())}


def run_filter(run_id: str = RUN_ID) -> str:
    return f"{RUN_LABEL}={run_id}"


def say(message: str) -> None:
    """Progress and problems go to stderr; stdout carries only the table."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Cleanup:
    """Callbacks run last-registered-first; one that fails does not stop the others."""

    def __init__(self) -> None:
        self._callbacks: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, callback: Callable[[], object]) -> None:
        self._callbacks.append((what, callback))

    def run(self) -> list[str]:
        problems = []
        while self._callbacks:
            what, callback = self._callbacks.pop()
            try:
                callback()
            except Exception as e:  # cleanup must go on whatever one step raised
                problems.append(f"{what}: {e}")
        return problems


class CannotRun(Exception):
    """Something the benchmark needs is missing; the message says what to do."""


def guarded(
    benchmark: Callable[[], object], cleanup: Cleanup, results: dict, leftovers: Callable[[list[str]], dict]
) -> int:
    """Runs ``benchmark``, then ``cleanup`` whatever happened (a second Ctrl-C cannot cut it short),
    with what was left in ``results["cleanup"]``. The exit status: 0 done, 1 failed, 2 something
    needed is missing, 130 interrupted."""
    status = 0
    # A kill ends the run as a Ctrl-C does: cleaned up.
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        benchmark()
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        status = 130
    except CannotRun as e:
        say(f"cannot run: {e}")
        status = 2
    except Exception:
        say(f"failed; cleaning up:\n{traceback.format_exc()}")
        results["error"] = traceback.format_exc(limit=3)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        results["cleanup"] = leftovers(cleanup.run())
    return status


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def require_docker(image: str) -> docker.DockerClient:
    """A client of the engine that answers and holds ``image`` (never pulled: there is no registry
    here, and a pull would end up in the timings); CannotRun otherwise."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise CannotRun(f"no Docker engine answers ({e}); run scripts/ensure-docker.sh or drop docker") from e
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound as e:
        raise CannotRun(f"image {image} is not on the engine; run scripts/build-test-images.sh") from e
    return client


def free_port() -> int:
    # Only for our own throwaway servers; the race with other binders is acceptable in a benchmark.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres_user(argv: list) -> list[str]:
    """postgres refuses to run as root; these machines run everything as root."""
    argv = [str(a) for a in argv]
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def make_scratch_root(base: Path) -> Path:
    """Short (unix socket paths are limited to ~107 bytes) and traversable by the postgres user."""
    root = base / f"pgb-{RUN_ID}"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    return root


def run_tool(argv: list[str], what: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
    return result


# --- postgres processes -------------------------------------------------------------------------------------


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (our scratch root), except this one."""
    pids = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return pids


def stop_postgres_under(root: Path, bin_dir: Path | None) -> None:
    """Stop every postgres whose data directory lies under ``root``, then kill what is still there."""
    if bin_dir is not None and root.exists():
        for pid_file in root.rglob("postmaster.pid"):
            subprocess.run(
                as_postgres_user([bin_dir / "pg_ctl", "-D", pid_file.parent, "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
    for pid in pids_mentioning(str(root)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- docker ---------------------------------------------------------------------------------------------------


def remove_run_containers(client: docker.DockerClient, run_id: str = RUN_ID) -> list[str]:
    containers = client.containers.list(all=True, filters={"label": run_filter(run_id)})
    for container in containers:
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
    return [c.name for c in containers]


def remove_run_images(client: docker.DockerClient, run_id: str = RUN_ID) -> list[str]:
    """Template images this run made (a builder's labels go with its commit): Docker keeps one while
    its clones exist, and the server that would remove it later is gone with the run."""
    images = client.images.list(filters={"label": run_filter(run_id)})
    for image in images:
        try:
            client.images.remove(image.id, force=True)
        except docker.errors.NotFound:
            pass
    return [image.id for image in images]


def remove_dead_runs_containers(client: docker.DockerClient) -> list[str]:
    """Leftovers of earlier runs that were killed too hard to clean up (SIGKILL, power loss)."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": RUN_LABEL}):
        labels = container.labels
        if labels.get(RUN_LABEL) == RUN_ID:
            continue
        try:
            os.kill(int(labels.get(PID_LABEL, "0")), 0)
            continue  # that run is still going
        except (ProcessLookupError, ValueError):
            pass
        except PermissionError:
            continue
        container.remove(force=True, v=True)
        removed.append(container.name)
    return removed


# --- a throwaway PostgreSQL server for the cluster backend -----------------------------------------------------


@dataclass
class ThrowawayPostgres:
    """Like tests/integration/conftest.py's pg_server: initdb with a superuser password, own port and socket dir."""

    home: Path
    bin_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    username: str = "postgres"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    base_marked: bool = False

    @property
    def data(self) -> Path:
        return self.home / "data"

    def start(self) -> ThrowawayPostgres:
        self.home.mkdir(mode=0o700)
        give_to_postgres(self.home)
        pwfile = self.home / "pw"
        pwfile.write_text(self.password)
        give_to_postgres(pwfile)
        initdb = [self.bin_dir / "initdb", "-D", self.data, "-U", self.username, f"--pwfile={pwfile}"]
        run_tool(as_postgres_user([*initdb, "--auth=scram-sha-256", "--no-instructions"]), "initdb")
        pwfile.unlink()
        # As docs/backends.md advises for a cluster serving Postgraas: each database's directory in block
        # groups of its own. On this journal-less ext4, CREATE DATABASE took ~230 ms instead of ~18 ms
        # without it once a few hundred files had been deleted (see top_directory).
        self.base_marked = mark_top_directory(self.data / "base")
        self.port = free_port()
        with (self.data / "postgresql.conf").open("a") as conf:
            # Enough connections for a burst of creates plus pooled instances plus the server's own.
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.home}'\n"
                "max_connections = 300\n"
            )
        run_tool(
            as_postgres_user([self.bin_dir / "pg_ctl", "-D", self.data, "-l", self.home / "log", "-w", "start"]),
            "pg_ctl start",
            start_new_session=True,
        )
        return self

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                as_postgres_user([self.bin_dir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.home, ignore_errors=True)

    def backend_config(self) -> dict:
        return {
            "type": "cluster",
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
        }

    def check(self) -> None:
        with psycopg.connect(
            host=self.host, port=self.port, user=self.username, password=self.password, dbname="postgres"
        ) as conn:
            conn.execute("select 1")


# --- Postgraas servers ----------------------------------------------------------------------------------------


class ConfigRefused(Exception):
    """``init-db`` rejected the configuration (e.g. a key this server version does not know yet)."""


@dataclass
class PostgraasServer:
    """The server as users start it: ``init-db``, then ``serve`` under gunicorn, each in a subprocess."""

    home: Path
    config: dict
    workers: int = 2
    # More options of `serve`, e.g. ("--worker-class", "gthread") for benchmarks/slow_clients.py.
    serve_args: tuple[str, ...] = ()
    url: str = ""
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    @property
    def config_path(self) -> Path:
        return self.home / "application.cfg"

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "postgraas_server.cli", "--config", str(self.config_path), *args]

    def start(self) -> PostgraasServer:
        self.init_db()
        return self.serve()

    def init_db(self) -> None:
        """Creates the meta db's schema; a config the server does not accept fails here, before any serving."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        init = subprocess.run(self._cli("init-db"), capture_output=True, text=True, cwd=self.home, timeout=120)
        if init.returncode != 0:
            raise ConfigRefused((init.stderr or init.stdout).strip())

    def serve(self) -> PostgraasServer:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = self._cli("serve", "--bind", f"127.0.0.1:{port}", "--workers", str(self.workers), *self.serve_args)
        with self.log_path.open("a") as log:
            # Own session: a Ctrl-C at the terminal reaches only us, and we stop the server in order.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.home, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or a loaded machine answering late: ask again
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        if "bad configuration" in tail:
            raise ConfigRefused(tail)
        raise RuntimeError(f"the Postgraas server did not start; its log ends with:\n{tail}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # gunicorn's master stops its workers on SIGTERM; the group also reaches a worker whose master died.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def gauge(self, name: str, **labels: str) -> float:
        """One sample of /metrics; 0 when the gauge has no such sample (nothing counted)."""
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name != name:
                continue
            for sample in family.samples:
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0


def leftovers(client: docker.DockerClient | None, root: Path | None, problems: list[str]) -> dict:
    """After a run's cleanup: what of it remains (nothing may), for its JSON; said when anything does."""
    containers = []
    if client is not None:
        try:
            containers = [c.name for c in client.containers.list(all=True, filters={"label": run_filter()})]
        except (docker.errors.DockerException, requests.RequestException) as e:
            problems.append(f"could not list containers: {e}")
    processes = pids_mentioning(str(root)) if root else []
    left = {
        "scratch_dir": str(root) if root else None,
        "containers_left": containers,
        "processes_left": processes,
        "scratch_dir_left": bool(root and root.exists()),
        "problems": problems,
    }
    if containers or processes or left["scratch_dir_left"] or problems:
        say(f"cleanup incomplete: {left}")
    return left
