"""What a tenant of the shared server may reach outside its own database, and what our admin
login may do there: settled once per server process, on the first create's admin connection."""

from __future__ import annotations

import logging
import threading

import psycopg
from psycopg import sql

from ..postgres.tenants import REVOKE_FROM_PUBLIC, is_superuser
from .admin_steps import Connect, concurrently_updated, run_step

# The NOLOGIN role whose members (tenants, with tenant_createdb) may connect to "postgres".
CREATEDB_GROUP = "postgraas_createdb"
# Databases every role may connect to by default, which no tenant needs (see close_shared_databases).
SHARED_DATABASES = ("postgres", "template1")
# Tries of a revoke that other server processes, revoking the same at the same moment, fail.
REVOKE_ATTEMPTS = 5

log = logging.getLogger(__name__)


class SharedAccess:
    def __init__(self, *, close_shared: bool, tenant_createdb: bool, admin: Connect) -> None:
        self._tenant_createdb = tenant_createdb
        self._admin = admin
        self._shared_closed = not close_shared
        self._createdb_group_ready = False
        self._superuser: bool | None = None
        # The first creates of a process come in together: one of them closes.
        self._settling = threading.Lock()

    def admin_is_superuser(self, conn: psycopg.Connection) -> bool:
        """Asked once per process; a login that loses it meanwhile fails a statement, and
        ``forget_superuser`` makes the next call ask again."""
        if self._superuser is None:
            self._superuser = is_superuser(conn)
        return self._superuser

    def forget_superuser(self) -> None:
        self._superuser = None

    def close_shared_databases(self, conn: psycopg.Connection) -> None:
        """Once per process: tenants may not connect to the databases every role could open by
        default, where they could hold locks or own objects outside their own database."""
        if self._shared_closed:
            return
        with self._settling:
            if not self._shared_closed:
                self._close_now(conn)
                self._shared_closed = True

    def _close_now(self, conn: psycopg.Connection) -> None:
        if not self.admin_is_superuser(conn):
            log.warning(
                "the cluster's admin login is not a superuser: CONNECT on %s stays open to PUBLIC; "
                "revoke it by hand (see docs/tenants.md)",
                ", ".join(SHARED_DATABASES),
            )
            return
        names = sorted({*SHARED_DATABASES, conn.info.dbname})
        present = [r[0] for r in conn.execute("select datname from pg_database where datname = any(%s)", (names,))]
        for name in present:
            revoke_from_public(conn, name)
        log.info("tenants cannot connect to %s (CONNECT revoked from PUBLIC)", ", ".join(present))

    def postgres_database_rights(self, conn: psycopg.Connection, role: str) -> list[sql.Composed]:
        """With tenant_createdb, the tenant may connect to the "postgres" database, where test
        runners connect to create and drop theirs (Django's drops its own from nowhere else); without
        it, not (a pooled role made before the setting changed). Through membership of one group that
        holds CONNECT there: granting it per tenant would rewrite the postgres database's row on every
        create, which any tenant could then hold up with a GRANT of its own left open."""
        group = sql.Identifier(CREATEDB_GROUP)
        if not self._tenant_createdb:
            if not self._createdb_group_exists(conn):
                return []
            return [sql.SQL("revoke {} from {}").format(group, sql.Identifier(role))]
        self._ensure_createdb_group(conn)
        return [sql.SQL("grant {} to {}").format(group, sql.Identifier(role))]

    def _createdb_group_exists(self, conn: psycopg.Connection) -> bool:
        if self._createdb_group_ready:
            return True
        return conn.execute("select 1 from pg_roles where rolname = %s", (CREATEDB_GROUP,)).fetchone() is not None

    def _ensure_createdb_group(self, conn: psycopg.Connection) -> None:
        """Once per process: the group exists and may connect to "postgres", changed only where not so
        already (any change here rewrites a shared catalog row, which a tenant may hold locked)."""
        if self._createdb_group_ready:
            return
        with self._settling:
            if self._createdb_group_ready:
                return
            group = sql.Identifier(CREATEDB_GROUP)
            if not self._createdb_group_exists(conn):
                try:
                    conn.execute(sql.SQL("create role {} nologin").format(group))
                except psycopg.errors.DuplicateObject:
                    pass  # another server process made it meanwhile
            allowed = conn.execute(
                "select has_database_privilege(%s, 'postgres', 'connect') from pg_database where datname = 'postgres'",
                (CREATEDB_GROUP,),
            ).fetchone()
            if allowed is not None and not allowed[0]:
                run_step(conn, sql.SQL("grant connect on database postgres to {}").format(group), self._admin)
            self._createdb_group_ready = True


def revoke_from_public(conn: psycopg.Connection, database: str) -> None:
    """Another server process (a worker, a replica) may revoke the same at once; "tuple concurrently
    updated" then means it is done or about to be, and ours is tried again."""
    open_to_public = conn.execute(
        "select has_database_privilege('public', %s, 'CONNECT') or has_database_privilege('public', %s, 'TEMPORARY')",
        (database, database),
    ).fetchone()
    if open_to_public is not None and not open_to_public[0]:
        # Closed already: no REVOKE, which would rewrite the row (and wait on whoever holds it).
        return
    statement = sql.SQL(REVOKE_FROM_PUBLIC).format(sql.Identifier(database))
    for attempt in range(1, REVOKE_ATTEMPTS + 1):
        try:
            conn.execute(statement)
            return
        except psycopg.errors.InternalError_ as e:
            if not concurrently_updated(e) or attempt == REVOKE_ATTEMPTS:
                raise
