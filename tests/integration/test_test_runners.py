"""The test runners people already use, unchanged, against a fresh instance of each backend (issue 16).

An instance is created through the HTTP API of a real server, and its ``connection_uri`` handed over
as ``DATABASE_URL``, as a CI job does (``postgraas create --output env``), to: Django's own runner
and pytest-django on tests/django_project, an alembic migration (tests/alembic_project), and a
``CREATE EXTENSION`` of a trusted and of an untrusted extension. On ``cluster`` without
``tenant_createdb`` the runners' ``CREATE DATABASE`` gets the server's refusal, and the documented
setting (docs/test-suites.md: the given database as the test database, kept) works. After the
instance's delete, no database the tenant made survives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import psycopg
import pytest

from ..conftest import require
from .conftest import backend_config, require_local_postgres
from .servers import POSTGRAAS, Server, body, start, stop_server

TESTS = Path(__file__).resolve().parents[1]
DJANGO_PROJECT = TESTS / "django_project"
ALEMBIC_PROJECT = TESTS / "alembic_project"
REFUSED = "permission denied to create database"


@dataclass(frozen=True)
class Variant:
    backend: str
    settings: dict
    createdb: bool
    superuser: bool


VARIANTS = {
    "local": Variant("local", {}, createdb=True, superuser=False),
    "docker": Variant("docker", {}, createdb=True, superuser=True),
    "cluster-createdb": Variant("cluster", {"tenant_createdb": True}, createdb=True, superuser=False),
    "cluster-nocreatedb": Variant("cluster", {"tenant_createdb": False}, createdb=False, superuser=False),
}


@dataclass
class Instance:
    server: Server
    created: dict
    password: str
    deleted: bool = False

    @property
    def uri(self) -> str:
        return self.created["connection_uri"]

    def connect(self, **overrides: object) -> psycopg.Connection:
        return psycopg.connect(self.uri, **{"autocommit": True, "connect_timeout": 10, **overrides})

    def delete(self) -> None:
        response = self.server.delete(self.created["postgraas_instance_id"], {"db_pwd": self.password})
        assert response.status_code == 200, response.text
        self.deleted = True


@pytest.fixture(params=VARIANTS)
def variant(request) -> Variant:
    return VARIANTS[request.param]


@pytest.fixture
def instance(variant, request, tmp_path) -> Iterator[Instance]:
    """A fresh instance of ``variant``, created through the API of a server with only that backend;
    deleted (forced) at teardown if the test did not delete it."""
    if variant.backend == "local":
        require_local_postgres()
    if not POSTGRAAS.exists():
        require("postgraas console script", f"{POSTGRAAS} is missing (pip install -e .)")
    settings = backend_config(variant.backend, request, **variant.settings)
    server = start(tmp_path, {"runners": settings}, default="runners", lifecycle={"default_ttl": "10m"})
    try:
        request_body = body(prefix="runners")
        response = server.post(request_body)
        assert response.status_code == 201, response.text
        made = Instance(server, response.json(), request_body["db_pwd"])
        yield made
        if not made.deleted:
            server.delete(made.created["postgraas_instance_id"], {"db_pwd": made.password, "force": True})
    finally:
        stop_server(server)


def run(argv: list[str], cwd: Path, instance: Instance, **env: str) -> subprocess.CompletedProcess:
    """``argv`` as a CI job runs it: in ``cwd``, with the instance as DATABASE_URL (``env``: more)."""
    unset = ("PYTEST_ADDOPTS", "DJANGO_SETTINGS_MODULE", "TEST_DATABASE_NAME")
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    environment.update(DATABASE_URL=instance.uri, PYTHONDONTWRITEBYTECODE="1", **env)
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


def passed(done: subprocess.CompletedProcess) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{done.args} exited {done.returncode}:\n{output}"
    return output


def refused(done: subprocess.CompletedProcess) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0 and REFUSED in output, f"{done.args} exited {done.returncode}:\n{output}"


# Django's runner and pytest-django, as a project runs them in CI (-p no:cacheprovider only keeps
# .pytest_cache out of the checkout).
MANAGE_TEST = ["manage.py", "test", "--noinput"]
PYTEST = ["-m", "pytest", "-p", "no:cacheprovider"]


def tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("select tablename from pg_tables where schemaname = 'public'").fetchall()
    return {name for (name,) in rows}


def test_runners_migrations_and_extensions_then_nothing_is_left(variant, instance, request):
    db_name, role = instance.created["db_name"], instance.created["db_username"]
    test_db = f"test_{db_name}"

    if variant.createdb:
        # Each runner creates test_<name> beside the given database, migrates and drops it.
        assert "Ran 2 tests" in passed(run(MANAGE_TEST, DJANGO_PROJECT, instance))
        assert "2 passed" in passed(run(PYTEST, DJANGO_PROJECT, instance))
        with instance.connect() as conn:
            assert "library_book" not in tables(conn), "the runners migrated the given database"
            assert conn.execute("select 1 from pg_database where datname = %s", (test_db,)).fetchone() is None
    else:
        # The server's own refusal, unchanged, from both runners.
        refused(run(MANAGE_TEST, DJANGO_PROJECT, instance))
        refused(run(PYTEST, DJANGO_PROJECT, instance))
        # The documented setting: the given database is the test database, and it is kept (it exists,
        # so neither runner issues CREATE DATABASE, nor DROP DATABASE at the end).
        keep = {"TEST_DATABASE_NAME": db_name}
        output = passed(run([*MANAGE_TEST, "--keepdb"], DJANGO_PROJECT, instance, **keep))
        assert "Ran 2 tests" in output and "Using existing test database" in output
        assert "2 passed" in passed(run([*PYTEST, "--reuse-db"], DJANGO_PROJECT, instance, **keep))
        with instance.connect() as conn:
            assert {"library_author", "library_book", "django_migrations"} <= tables(conn)
            # TestCase rolled each test back: the kept database holds no test's rows.
            assert conn.execute("select count(*) from library_book").fetchone() == (0,)

    passed(run(["-m", "alembic", "upgrade", "head"], ALEMBIC_PROJECT, instance))
    with instance.connect() as conn:
        assert {"widgets", "alembic_version"} <= tables(conn)
        assert conn.execute("select version_num from alembic_version").fetchone() == ("0001",)
        conn.execute("insert into widgets (name) values ('sprocket')")

    with instance.connect() as conn:
        # Trusted: any owner of the database may create it, on every backend.
        conn.execute("create extension pgcrypto")
        digest = conn.execute("select encode(digest('abc', 'sha256'), 'hex')").fetchone()[0]
        assert digest.startswith("ba7816bf")
        if variant.superuser:
            conn.execute("create extension dblink")
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied to create extension"):
                conn.execute("create extension dblink")
        if variant.createdb:
            # What a runner killed mid-run leaves behind: its test database, with data.
            conn.execute(f'create database "{test_db}"')
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=REFUSED):
                conn.execute(f'create database "{test_db}"')
    if variant.createdb:
        with instance.connect(dbname=test_db) as conn:
            conn.execute("create table leftover (v int)")

    if variant.backend == "cluster":
        cluster = request.getfixturevalue("pg_server")
        with cluster.admin() as admin:
            (oid,) = admin.execute("select oid from pg_roles where rolname = %s", (role,)).fetchone()
            owned = {r[0] for r in admin.execute("select datname from pg_database where datdba = %s", (oid,))}
        assert owned == ({db_name, test_db} if variant.createdb else {db_name})

    instance.delete()

    if variant.backend == "cluster":
        with cluster.admin() as admin:
            left = admin.execute(
                "select datname from pg_database where datdba = %s or datname in (%s, %s) or datname like %s",
                (oid, db_name, test_db, f"test\\_{db_name}%"),
            ).fetchall()
            assert left == [], f"databases of the tenant left after its delete: {left}"
            assert admin.execute("select 1 from pg_roles where oid = %s", (oid,)).fetchone() is None
    elif variant.backend == "local":
        home = request.getfixturevalue("local_data_root") / instance.created["container_id"]
        assert not home.exists(), f"{home} is left after the delete"
    else:
        with pytest.raises(docker.errors.NotFound):
            request.getfixturevalue("docker_client").containers.get(instance.created["container_id"])
    with pytest.raises(psycopg.OperationalError):
        instance.connect(connect_timeout=3)
