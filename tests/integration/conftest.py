"""Real components: a Docker engine, the postgres test image, and the server run as users run it."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import psycopg
import pytest
import requests

from postgraas_server.backends.local import find_bin_dir
from postgraas_server.errors import BackendUnavailable

from ..conftest import require

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_IMAGE = os.environ.get("POSTGRAAS_TEST_IMAGE", "postgraas/postgres-test:15")
RUN_LABEL = "postgraas.test_run"
RUN_ID = uuid.uuid4().hex[:12]


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as e:
        require("Docker engine", f"{e} (run scripts/ensure-docker.sh)")
    try:
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        require("postgres test image", f"{TEST_IMAGE} is not built (run scripts/build-test-images.sh)")
    yield client
    # Nothing this run created may survive it; report, then clean up so the next run starts clean.
    leftovers = client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"})
    for container in leftovers:
        container.remove(force=True, v=True)
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


@pytest.fixture(scope="session")
def local_data_root() -> Iterator[Path]:
    """data_root of the local backend; short (unix socket paths) and reachable by the postgres user."""
    root = Path(f"/tmp/postgraas-test-{RUN_ID}")
    yield root
    # ".t-*" is the backend's template cluster, a cache kept on purpose.
    leftovers = sorted(p.name for p in root.iterdir() if not p.name.startswith(".t-")) if root.exists() else []
    running = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout.split()
    for pid in running:
        os.kill(int(pid), 9)
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"local instances left behind: {leftovers}"
    assert not running, f"postgres processes left behind: {running}"


@dataclass
class PostgresServer:
    host: str
    port: int
    username: str
    password: str
    bin_dir: Path
    data: Path

    def restart(self) -> None:
        subprocess.run(
            # -l again: without it the server would write to (and hold open) our capture pipe.
            as_postgres_user(
                [
                    self.bin_dir / "pg_ctl",
                    "-D",
                    self.data,
                    "-l",
                    self.data.parent / "log",
                    "-m",
                    "fast",
                    "-w",
                    "restart",
                ]
            ),
            check=True,
            capture_output=True,
            start_new_session=True,
        )

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.username, password=self.password, dbname=dbname, autocommit=True
        )

    def roles(self) -> set[str]:
        with self.admin() as conn:
            return {r[0] for r in conn.execute("select rolname from pg_roles")}

    def databases(self) -> set[str]:
        with self.admin() as conn:
            return {r[0] for r in conn.execute("select datname from pg_database")}


def as_postgres_user(argv: list) -> list[str]:
    argv = [str(a) for a in argv]
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def require_local_postgres(component: str = "PostgreSQL server binaries") -> Path:
    """The PostgreSQL binaries' directory, and (as root) the postgres OS user to run them as."""
    try:
        bin_dir = find_bin_dir(None)
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")
    except (BackendUnavailable, KeyError) as e:
        require(component, str(e))
    return bin_dir


class AdminHeldLock:
    """The cluster's own admin (no tenant, so never ended by Postgraas) in an open transaction that
    changed a grant to ``role``: removing the role waits on it until ``release``."""

    def __init__(self, server: PostgresServer, role: str) -> None:
        self.server = server
        self.table = f"public.held_{uuid.uuid4().hex[:8]}"
        with server.admin() as admin:
            admin.execute(f"create table {self.table} (v int)")
            admin.execute(f"grant select on {self.table} to {role}")
        self.holder = server.admin()
        self.holder.autocommit = False
        self.holder.execute(f"grant insert on {self.table} to {role}")

    def release(self) -> None:
        if not self.holder.closed:
            self.holder.rollback()
            self.holder.close()

    def drop(self) -> None:
        self.release()
        with self.server.admin() as admin:
            admin.execute(f"drop table if exists {self.table}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server (the cluster backend's "existing cluster"), with a superuser."""
    bin_dir = require_local_postgres("PostgreSQL server")
    home = Path(f"/tmp/postgraas-test-pg-{RUN_ID}")
    home.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    password = secrets.token_urlsafe(16)
    (home / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(home / "pw", "postgres", "postgres")
    port = free_port()
    data = home / "data"
    subprocess.run(
        as_postgres_user(
            [
                bin_dir / "initdb",
                "-D",
                data,
                "-U",
                "postgres",
                f"--pwfile={home / 'pw'}",
                "--auth=scram-sha-256",
                "--no-instructions",
            ]
        ),
        check=True,
        capture_output=True,
    )
    (home / "pw").unlink()
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{home}'\n"
            "max_connections = 300\n"
            # A tenant's prepared transaction is one of the things a delete must get past.
            "max_prepared_transactions = 10\n"
        )
    subprocess.run(
        as_postgres_user([bin_dir / "pg_ctl", "-D", data, "-l", home / "log", "-w", "start"]),
        check=True,
        capture_output=True,
        start_new_session=True,
    )
    server = PostgresServer("127.0.0.1", port, "postgres", password, bin_dir, data)
    roles, databases = server.roles(), server.databases()
    try:
        yield server
        assert server.roles() == roles, f"roles left behind: {server.roles() - roles}"
        assert server.databases() == databases, f"databases left behind: {server.databases() - databases}"
    finally:
        subprocess.run(
            as_postgres_user([bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(home, ignore_errors=True)


def free_port() -> int:
    # Only for the test server's own port; the service itself never picks ports this way.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def meta_db(self) -> Path:
        return self.log_path.parent / "meta.sqlite"

    def post(self, body: dict, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/postgraas_instances", json=body, timeout=120, **kwargs)

    def delete(self, instance_id: int, body: dict) -> requests.Response:
        return requests.delete(f"{self.url}/postgraas_instances/{instance_id}", json=body, timeout=120)

    def get(self, path: str = "") -> requests.Response:
        return requests.get(f"{self.url}/postgraas_instances{path}", timeout=30)

    def log(self) -> str:
        return self.log_path.read_text()


def start_server(tmp_path: Path, backend: dict, workers: int = 2) -> Server:
    config = {
        "metadb": {"url": f"sqlite:///{tmp_path / 'meta.sqlite'}"},
        "backend": {
            "type": "docker",
            "image": TEST_IMAGE,
            "advertised_host": "127.0.0.1",
            "bind_address": "127.0.0.1",
            "ready_timeout": 60,
            "labels": {RUN_LABEL: RUN_ID},
            **backend,
        },
        "application": {"log_level": "DEBUG"},
    }
    config_path = tmp_path / "application.cfg"
    config_path.write_text(json.dumps(config))
    port = free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "postgraas_server.cli", "--config", str(config_path), "serve"]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        # Refused until it listens; a read timeout while its workers boot on a busy machine.
        except requests.RequestException:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not start:\n{server.log()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def server(docker_client, tmp_path_factory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("server"), {})
    yield server
    stop_server(server)
