"""What only the cluster backend does: admin connections kept open between requests."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from postgraas_server.backends import DatabaseSpec, cluster
from postgraas_server.backends.postgres_client import NotReady
from postgraas_server.errors import BackendTimeout

from .test_backend_contract import make_backend


def spec(instance_id: int) -> DatabaseSpec:
    tag = uuid.uuid4().hex[:8]
    return DatabaseSpec(instance_id, f"kept-{tag}", f"db_{tag}", f"user_{tag}", f"pw-{tag}")


def test_the_admin_connection_is_kept_and_a_server_restart_costs_no_request(request, pg_server):
    backend = make_backend("cluster", request)
    with backend._admin() as conn:
        first = conn.info.backend_pid
    wanted = spec(1)
    created = backend.create(wanted)
    with backend._admin() as conn:
        # The same session served the create: no connect, no login on the request path.
        assert conn.info.backend_pid == first
    backend.delete(created.ref, wanted.credentials, instance_id=wanted.instance_id, force=True)

    pg_server.restart()
    after = spec(2)
    created = backend.create(after)
    with psycopg.connect(
        host=pg_server.host, port=pg_server.port, user=after.db_username, password=after.db_pwd, dbname=after.db_name
    ) as conn:
        assert conn.execute("select current_user").fetchone() == (after.db_username,)
        # PostgreSQL 15: PUBLIC cannot create in the public schema, and no lock-down was needed for it.
        assert conn.execute("select has_schema_privilege('public', 'public', 'create')").fetchone() == (False,)
    backend.delete(created.ref, after.credentials, instance_id=after.instance_id, force=True)


class LoginSpy:
    """Counts the backend's tenant logins, each a real one; ``refuse`` fails the next as a closed port would."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        self.refuse = False
        real = cluster.wait_for_login

        def spy(*args, **kwargs):
            self.calls += 1
            if self.refuse:
                self.refuse = False
                raise NotReady("connection refused")
            return real(*args, **kwargs)

        monkeypatch.setattr(cluster, "wait_for_login", spy)


def log_in(pg_server, wanted: DatabaseSpec) -> None:
    with psycopg.connect(
        host=pg_server.host, port=pg_server.port, user=wanted.db_username, password=wanted.db_pwd, dbname=wanted.db_name
    ) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (
            wanted.db_username,
            wanted.db_name,
        )


def leftovers(backend, wanted: DatabaseSpec) -> tuple:
    with backend._admin() as conn:
        return conn.execute(
            "select (select count(*) from pg_roles where rolname = %s), "
            "(select count(*) from pg_database where datname = %s)",
            (wanted.db_username, wanted.db_name),
        ).fetchone()


def test_the_first_create_proves_a_tenant_login_and_the_later_ones_rely_on_it(request, pg_server, monkeypatch):
    logins = LoginSpy(monkeypatch)
    backend = make_backend("cluster", request)
    made = [spec(10 + i) for i in range(3)]
    for wanted in made:
        backend.create(wanted)
    try:
        assert logins.calls == 1
        for wanted in made:
            log_in(pg_server, wanted)
    finally:
        for wanted in made:
            backend.delete(wanted.db_name, wanted.credentials, instance_id=wanted.instance_id, force=True)


def test_login_proof_every_proves_each_create(request, pg_server, monkeypatch):
    logins = LoginSpy(monkeypatch)
    backend = make_backend("cluster", request, login_proof="every")
    made = [spec(20 + i) for i in range(2)]
    for wanted in made:
        backend.create(wanted)
    try:
        assert logins.calls == 2
    finally:
        for wanted in made:
            backend.delete(wanted.db_name, wanted.credentials, instance_id=wanted.instance_id, force=True)


def test_a_first_create_whose_login_fails_leaves_nothing_and_the_next_create_proves_again(
    request, pg_server, monkeypatch
):
    logins = LoginSpy(monkeypatch)
    backend = make_backend("cluster", request)
    logins.refuse = True
    refused = spec(30)
    with pytest.raises(BackendTimeout):
        backend.create(refused)
    assert leftovers(backend, refused) == (0, 0)

    second, third = spec(31), spec(32)
    backend.create(second)
    backend.create(third)
    try:
        # The refused login proved nothing: the second create proved it, the third relied on it.
        assert logins.calls == 2
        log_in(pg_server, third)
    finally:
        for wanted in (second, third):
            backend.delete(wanted.db_name, wanted.credentials, instance_id=wanted.instance_id, force=True)
