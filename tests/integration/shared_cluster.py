"""Tenants of the shared cluster as the containment tests (test_tenant_containment*.py) use them:
sessions as a tenant, deletes, and whether a tenant is gone from the server."""

from __future__ import annotations

import psycopg

from .databases import Creator, Made


def tenant_session(made: Made, **overrides) -> psycopg.Connection:
    return made.connect(autocommit=True, **overrides)


def delete(tenants: Creator, made: Made, *, force: bool) -> str | None:
    return tenants.delete(made, force=force)


def gone(pg_server, made: Made) -> bool:
    return made.spec.db_username not in pg_server.roles() and made.spec.db_name not in pg_server.databases()
