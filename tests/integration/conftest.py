"""Real components: a Docker engine, the postgres test image, and the server run as users run it."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import psycopg
import pytest
import requests

from postgraas_server.backends import Backend, build_backend
from postgraas_server.backends.cluster.shared_access import CREATEDB_GROUP
from postgraas_server.backends.local import find_bin_dir
from postgraas_server.config import settings_from_dict
from postgraas_server.errors import BackendUnavailable

from ..conftest import require
from .databases import Creator, fake_creator
from .servers import POSTGRAAS, Server, free_port, launch, start, stop_server
from .slow_start import slow_start_bin  # noqa: F401 (a fixture of several modules)
from .swarm_fleet import DB_CONSTRAINT, Fleet, script

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_IMAGE = os.environ.get("POSTGRAAS_TEST_IMAGE", "postgraas/postgres-test:15")
RUN_LABEL = "postgraas.test_run"
RUN_ID = uuid.uuid4().hex[:12]
# The real backends, each a name of the configuration that has its type. Every test "on each
# backend" takes them from here.
BACKENDS = ("docker", "cluster", "local")
# The contract suite (test_backend_contract*.py) holds the swarm backend (on the swarm of
# scripts/swarm.sh) and the fake of the unit tests to it too.
CONTRACT_BACKENDS = (*BACKENDS, "swarm", "fake")
# The real backends that keep templates (test_backend_contract_templates.py pins them, and the
# fake, whose sessions run no SQL, against why_no_template()).
TEMPLATE_BACKENDS = ("local", "cluster", "docker")
# The template contract suite holds the swarm backend (on the swarm of scripts/swarm.sh) to it too.
CONTRACT_TEMPLATE_BACKENDS = (*TEMPLATE_BACKENDS, "swarm")
DEPLOYMENT = f"contract-{RUN_ID}"


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
    # A template image still used by clones when its template went is the reaper's to remove later,
    # and a test's server stops before that: such images are removed here, not counted.
    for image in client.images.list(filters={"label": f"{RUN_LABEL}={RUN_ID}"}):
        client.images.remove(image.id, force=True)
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


@pytest.fixture(scope="session")
def swarm() -> Iterator[Fleet]:
    """The swarm of scripts/swarm.sh, brought up for the session and taken down after it."""
    try:
        script("up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        require("Docker Swarm of three engines", f"scripts/swarm.sh up failed: {getattr(e, 'stderr', '') or e}")
    fleet = Fleet.read()
    try:
        yield fleet
        services = fleet.manager_client().services.list(filters={"label": f"{RUN_LABEL}={RUN_ID}"})
        assert not services, f"swarm services left behind: {[s.name for s in services]}"
    finally:
        script("down")


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
        """The roles of the server, but for the group the cluster backend keeps for good (tenant_createdb)."""
        with self.admin() as conn:
            return {r[0] for r in conn.execute("select rolname from pg_roles")} - {CREATEDB_GROUP}

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


def backend_config(name: str, request: pytest.FixtureRequest, **overrides: object) -> dict:
    """The settings of the real backend ``name`` (one of BACKENDS) against this run's components,
    which it requests as fixtures; ``overrides``: more settings."""
    if name == "docker":
        request.getfixturevalue("docker_client")
        return {
            "type": "docker",
            "image": TEST_IMAGE,
            "advertised_host": "127.0.0.1",
            "bind_address": "127.0.0.1",
            "labels": {RUN_LABEL: RUN_ID},
            # Its warm pool needs the prepared image (the default, said here because tests rely on it).
            "prepare_image": True,
            **overrides,
        }
    if name == "cluster":
        server = request.getfixturevalue("pg_server")
        return {
            "type": "cluster",
            "host": server.host,
            "port": server.port,
            "username": server.username,
            "password": server.password,
            **overrides,
        }
    if name == "swarm":
        fleet: Fleet = request.getfixturevalue("swarm")
        return {
            "type": "swarm",
            "base_url": fleet.manager,
            "image": fleet.image,
            "registry": fleet.registry,
            "constraints": [DB_CONSTRAINT],
            "slots_resource": fleet.slots_resource,
            "memory_limit": "512m",
            "labels": {RUN_LABEL: RUN_ID},
            **overrides,
        }
    assert name == "local", f"no backend named {name!r}"
    root = request.getfixturevalue("local_data_root")
    return {"type": "local", "data_root": str(root), "advertised_host": "127.0.0.1", **overrides}


def make_backend(name: str, request: pytest.FixtureRequest, **overrides: object) -> Backend:
    """The real backend ``name``, built as the server builds it (see backend_config)."""
    settings = settings_from_dict({"backends": {name: backend_config(name, request, **overrides)}})
    return build_backend(settings.backends[name], DEPLOYMENT)


@pytest.fixture
def creator_for(request) -> Iterator[Callable[..., Creator]]:
    """``creator_for(name, **settings)``: a Creator through a new backend ``name`` (a real one, or
    "fake"); what the test left is deleted at teardown."""
    creators: list[Creator] = []

    def _for(name: str, **overrides: object) -> Creator:
        creator = fake_creator() if name == "fake" else Creator(make_backend(name, request, **overrides))
        creators.append(creator)
        return creator

    yield _for
    for creator in creators:
        creator.cleanup()


@pytest.fixture(params=CONTRACT_BACKENDS)
def contract_name(request) -> str:
    return request.param


@pytest.fixture
def create(contract_name, creator_for) -> Creator:
    """Creates through the backend under contract (each of CONTRACT_BACKENDS in turn)."""
    return creator_for(contract_name)


@pytest.fixture
def meta_db(pg_server) -> Iterator[str]:
    """The URL of a PostgreSQL meta db of the test's own, in pg_server."""
    name = f"meta_{uuid.uuid4().hex[:8]}"
    with pg_server.admin() as admin:
        admin.execute(f"create database {name}")
    yield f"postgresql://postgres:{pg_server.password}@127.0.0.1:{pg_server.port}/{name}"
    with pg_server.admin() as admin:
        admin.execute(f"drop database {name} with (force)")


@pytest.fixture
def cluster_left_as_found(pg_server) -> Iterator[None]:
    """After each test: no role and no database more than before it."""
    roles, databases = pg_server.roles(), pg_server.databases()
    yield
    assert pg_server.roles() == roles, f"roles left behind: {pg_server.roles() - roles}"
    assert pg_server.databases() == databases, f"databases left behind: {pg_server.databases() - databases}"


@pytest.fixture
def tenants(request) -> Iterator[Creator]:
    """Tenants of the shared cluster (pg_server), each deleted (force) if a test did not."""
    creator = Creator(make_backend("cluster", request, lock_timeout=2))
    yield creator
    creator.cleanup()


def start_local_server(request: pytest.FixtureRequest, tmp_path: Path, local: dict | None = None, **kwargs) -> Server:
    """A server with only the local backend (``local``: settings of it to override); a default
    ttl so that nothing a failed test left outlives it."""
    require_local_postgres()
    if not POSTGRAAS.exists():
        require("postgraas console script", f"{POSTGRAAS} is missing (pip install -e .)")
    backends = {"local": backend_config("local", request, **(local or {}))}
    return start(tmp_path, backends, lifecycle={"default_ttl": "10m"}, **kwargs)


def start_server(tmp_path: Path, backend: dict, workers: int = 2) -> Server:
    """A server configured as in 2.x, with one docker ``backend`` (its settings beyond the test run's)."""
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
    return launch(tmp_path, config, workers=workers)


@pytest.fixture(scope="module")
def server(docker_client, tmp_path_factory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("server"), {})
    yield server
    stop_server(server)
