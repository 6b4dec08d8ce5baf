"""Tenants of the shared cluster as the containment tests (test_tenant_containment*.py) use them:
sessions as a tenant, deletes, and whether a tenant is gone from the server."""

from __future__ import annotations

import psycopg
from psycopg import sql

from .databases import Creator, Made


def tenant_session(made: Made, **overrides) -> psycopg.Connection:
    return made.connect(autocommit=True, **overrides)


def delete(tenants: Creator, made: Made, *, force: bool) -> str | None:
    return tenants.delete(made, force=force)


def gone(pg_server, made: Made) -> bool:
    return made.spec.db_username not in pg_server.roles() and made.spec.db_name not in pg_server.databases()


def create_database(made: Made, name: str, **overrides) -> None:
    """As a tenant with tenant_createdb: CREATE DATABASE ``name`` from a session of its own
    (``overrides``: of that session, e.g. dbname="postgres" as test runners do)."""
    with made.connect(autocommit=True, **overrides) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def owned_by(pg_server, role: str) -> set[str]:
    """The databases ``role`` owns (none once the role is gone)."""
    with pg_server.admin() as admin:
        rows = admin.execute(
            "select datname from pg_database d join pg_roles r on r.oid = d.datdba where r.rolname = %s", (role,)
        ).fetchall()
    return {name for (name,) in rows}
