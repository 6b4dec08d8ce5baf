"""The docker backend's prepared image against a real engine: made once, shared, and its containers'
tenants as the official image's (the requested user a superuser owning the requested database)."""

from __future__ import annotations

import io
import logging
import threading
import uuid
from collections.abc import Callable, Iterator

import docker.errors
import psycopg
import pytest

from postgraas_server.backend_settings import DockerBackendSettings
from postgraas_server.backends import DatabaseSpec, ProvisionedDatabase
from postgraas_server.backends.docker import DockerBackend
from postgraas_server.backends.docker.prepared_image import (
    BUILD_NAME_PREFIX,
    PREPARED_FROM_LABEL,
    SPARE_DATABASE,
    VERIFIER_ENV,
    prepared_tag,
)
from postgraas_server.backends.postgres.client import wait_for_login
from postgraas_server.scram import scram_sha256_verifier

from .conftest import RUN_ID, RUN_LABEL, TEST_IMAGE

DEPLOYMENT = f"prepared-{RUN_ID}"


def make_backend(image: str = TEST_IMAGE, **overrides) -> DockerBackend:
    settings = DockerBackendSettings(
        image=image,
        advertised_host="127.0.0.1",
        bind_address="127.0.0.1",
        labels={RUN_LABEL: RUN_ID},
        **overrides,
    )
    return DockerBackend(settings, DEPLOYMENT)


def new_spec(**overrides) -> DatabaseSpec:
    tag = uuid.uuid4().hex[:8]
    fields = {
        "instance_id": 800000,
        "instance_name": f"prepared-{tag}",
        "db_name": f"db_{tag}",
        "db_username": f"user_{tag}",
        "db_pwd": f"pw {tag} ü'\"$x",
        **overrides,
    }
    return DatabaseSpec(**fields)


def connect(spec: DatabaseSpec, made: ProvisionedDatabase, port: int | None = None, **overrides) -> psycopg.Connection:
    params = {
        "host": made.host,
        "port": port or made.port,
        "user": spec.db_username,
        "password": spec.db_pwd,
        "dbname": spec.db_name,
        "connect_timeout": 5,
        "autocommit": True,
        **overrides,
    }
    return psycopg.connect(**params)


Create = Callable[..., tuple[DatabaseSpec, ProvisionedDatabase]]


@pytest.fixture
def create(docker_client) -> Iterator[Create]:
    """Create through a backend; everything made is deleted (force) at teardown."""
    made: list[tuple[DockerBackend, DatabaseSpec, ProvisionedDatabase]] = []

    def _create(backend: DockerBackend | None = None, **overrides) -> tuple[DatabaseSpec, ProvisionedDatabase]:
        backend = backend or make_backend()
        spec = new_spec(**overrides)
        provisioned = backend.create(spec)
        made.append((backend, spec, provisioned))
        return spec, provisioned

    yield _create
    for backend, spec, provisioned in made:
        backend.delete(provisioned.ref, spec.credentials, instance_id=spec.instance_id, force=True)


def derived_image(docker_client, name: str, extra: str = "") -> Iterator[str]:
    """An image of its own (so of its own prepared tag) from the test image, marked with this run's
    label (inherited by its build and instance containers, which the leftover check then sees)."""
    dockerfile = f"FROM {TEST_IMAGE}\nLABEL {RUN_LABEL}={RUN_ID}\n{extra}\n"
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=name, rm=True, forcerm=True)
    try:
        yield name
    finally:
        # The prepared image made from it is this test's alone: not a cache to keep.
        for ref in (prepared_tag(image.id), name):
            try:
                docker_client.images.remove(ref, force=True)
            except docker.errors.ImageNotFound:
                pass


# Requested before ``create`` by the tests, so torn down after it: no container uses the image then.


@pytest.fixture
def fresh_image(docker_client) -> Iterator[str]:
    yield from derived_image(docker_client, f"postgraas/test-prepare-{RUN_ID}:fresh")


@pytest.fixture
def image_ignoring_pgdata(docker_client) -> Iterator[str]:
    # Its entrypoint fixes PGDATA: the cluster would live in the volume, which no commit keeps.
    extra = (
        "RUN printf '#!/bin/sh\\nexport PGDATA=/var/lib/postgresql/data\\nexec docker-entrypoint.sh \"$@\"\\n' "
        "> /usr/local/bin/fixed-pgdata.sh && chmod 0755 /usr/local/bin/fixed-pgdata.sh\n"
        'ENTRYPOINT ["fixed-pgdata.sh"]'
    )
    yield from derived_image(docker_client, f"postgraas/test-prepare-{RUN_ID}:fixed-pgdata", extra)


def test_the_tenant_is_the_requested_superuser_owning_the_requested_database(create, docker_client):
    spec, made = create()
    with connect(spec, made) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (
            spec.db_username,
            spec.db_name,
        )
        owner, superuser = conn.execute(
            "select pg_get_userbyid(datdba), (select rolsuper from pg_roles where rolname = current_user)"
            " from pg_database where datname = current_database()"
        ).fetchone()
        assert (owner, superuser) == (spec.db_username, True)
        databases = {row[0] for row in conn.execute("select datname from pg_database")}
        assert databases == {"postgres", "template0", "template1", spec.db_name}
        conn.execute("create table t (v text)")
        conn.execute("insert into t values ('kept')")

    container = docker_client.containers.get(made.ref)
    configured = docker_client.images.get(TEST_IMAGE)
    assert container.image.tags == [prepared_tag(configured.id)]
    assert container.image.labels[PREPARED_FROM_LABEL] == configured.id
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["POSTGRES_PASSWORD"] == ""
    assert env[VERIFIER_ENV].startswith("SCRAM-SHA-256$4096:")
    assert not any(spec.db_pwd in item for item in container.attrs["Config"]["Env"])
    assert spec.db_pwd not in str(container.attrs)
    # The cluster's bootstrap superuser has no password: no TCP login as it.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(spec, made, user="postgres", dbname="postgres", password="postgres")


def test_a_restarted_container_keeps_its_tenant_without_a_second_setup(create, docker_client):
    spec, made = create()
    with connect(spec, made) as conn:
        conn.execute("create table t (v text)")
        conn.execute("insert into t values ('before the restart')")
    container = docker_client.containers.get(made.ref)
    container.restart(timeout=30)
    container.reload()
    port = int(container.attrs["NetworkSettings"]["Ports"]["5432/tcp"][0]["HostPort"])
    wait_for_login(made.host, port, spec.credentials, timeout=30)
    with connect(spec, made, port=port) as conn:
        assert conn.execute("select v from t").fetchone() == ("before the restart",)
    logs = container.logs().decode()
    assert logs.count("created the tenant") == 1
    assert logs.count("ready to accept connections") == 2


@pytest.mark.parametrize(
    "user, db",
    [("postgres", "postgres"), ("postgres", None), (None, "postgres"), (None, SPARE_DATABASE)],
)
def test_postgres_as_user_or_database_name(create, user, db):
    overrides = {key: value for key, value in (("db_username", user), ("db_name", db)) if value}
    spec, made = create(**overrides)
    with connect(spec, made) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (spec.db_username, spec.db_name)
        owner, superuser = conn.execute(
            "select pg_get_userbyid(datdba), (select rolsuper from pg_roles where rolname = current_user)"
            " from pg_database where datname = current_database()"
        ).fetchone()
        assert (owner, superuser) == (spec.db_username, True)
        databases = {row[0] for row in conn.execute("select datname from pg_database")}
    assert databases == {"postgres", "template0", "template1", spec.db_name}


def test_the_prepared_image_is_made_once_even_by_concurrent_backends(fresh_image, create, docker_client, caplog):
    configured = docker_client.images.get(fresh_image)
    tag = prepared_tag(configured.id)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)
    # Two backends, as two gunicorn workers would be, create at once on first use.
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def first_use() -> None:
        barrier.wait()
        try:
            create(make_backend(fresh_image))
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    with caplog.at_level(logging.INFO, logger="postgraas_server.backends.docker.prepared_image"):
        threads = [threading.Thread(target=first_use) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        prepared = docker_client.images.get(tag)
        # A later backend (a restarted server) reuses the tag.
        spec, made = create(make_backend(fresh_image))
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("preparing image") for m in messages) == 1
    assert sum(m.startswith("prepared image") for m in messages) == 1
    assert docker_client.images.get(tag).id == prepared.id
    assert prepared.labels[PREPARED_FROM_LABEL] == configured.id
    assert docker_client.containers.get(made.ref).image.id == prepared.id
    # The build container is gone.
    assert docker_client.containers.list(all=True, filters={"name": BUILD_NAME_PREFIX}) == []
    with connect(spec, made) as conn:
        assert conn.execute("select current_user").fetchone() == (spec.db_username,)


def test_an_image_that_cannot_be_prepared_is_used_as_it_is(image_ignoring_pgdata, create, docker_client, caplog):
    backend = make_backend(image_ignoring_pgdata)
    with caplog.at_level(logging.WARNING):
        spec, made = create(backend)
        create(backend)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignores PGDATA" in warnings[0]
    with connect(spec, made) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (spec.db_username, spec.db_name)
    container = docker_client.containers.get(made.ref)
    assert container.image.tags == [image_ignoring_pgdata]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(prepared_tag(container.image.id))


def test_prepare_image_false_runs_the_configured_image(create, docker_client):
    spec, made = create(make_backend(prepare_image=False))
    container = docker_client.containers.get(made.ref)
    assert container.image.tags == [TEST_IMAGE]
    with connect(spec, made) as conn:
        assert conn.execute("select current_user").fetchone() == (spec.db_username,)


@pytest.mark.parametrize(
    "password",
    ["plain", "with space and 'quotes\"", "ü", "a\u00a0b", "soft\u00adhyphen", "\ufb01", "\u0221 unassigned", "x" * 99],
)
def test_postgres_accepts_the_verifier(pg_server, password):
    role = f"scram_{uuid.uuid4().hex[:8]}"
    with pg_server.admin() as admin:
        admin.execute(f"create role {role} login password '{scram_sha256_verifier(password)}'")
        # The cluster backend closes "postgres" to PUBLIC in this server.
        admin.execute(f"grant connect on database postgres to {role}")
    try:
        with psycopg.connect(
            host=pg_server.host, port=pg_server.port, user=role, password=password, dbname="postgres"
        ) as conn:
            assert conn.execute("select current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host=pg_server.host, port=pg_server.port, user=role, password="wrong", dbname="postgres")
    finally:
        with pg_server.admin() as admin:
            admin.execute(f"revoke connect on database postgres from {role}")
            admin.execute(f"drop role {role}")
