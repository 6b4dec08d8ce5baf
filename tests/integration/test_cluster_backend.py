"""What only the cluster backend does: admin connections kept open between requests."""

from __future__ import annotations

import uuid

import psycopg

from postgraas_server.backends import DatabaseSpec

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
    backend.delete(created.ref, wanted.credentials, force=True)

    pg_server.restart()
    after = spec(2)
    created = backend.create(after)
    with psycopg.connect(
        host=pg_server.host, port=pg_server.port, user=after.db_username, password=after.db_pwd, dbname=after.db_name
    ) as conn:
        assert conn.execute("select current_user").fetchone() == (after.db_username,)
        # PostgreSQL 15: PUBLIC cannot create in the public schema, and no lock-down was needed for it.
        assert conn.execute("select has_schema_privilege('public', 'public', 'create')").fetchone() == (False,)
    backend.delete(created.ref, after.credentials, force=True)
