"""One admin statement in a server shared with tenants, run past whatever a tenant holds in its way.

- A tenant session that blocks the statement for PATIENCE_S (an open transaction that changed a grant
  to the role being removed, say) is ended, from a connection of its own; a tenant's prepared
  transaction that blocks it is rolled back.
- A tenant that keeps changing the same catalog rows (GRANT in a loop) makes the statement fail with
  "tuple concurrently updated" without any lock wait to see: tenants are kept out of that database
  (its connection limit 0 for the while, where a tenant owns it) and their sessions there ended,
  and the statement is tried again.
- Anybody else (the cluster's admin, another application) is waited on until the session's
  lock_timeout: BackendTimeout, and the caller (the reaper) tries again later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import psycopg
from psycopg import sql

from ...errors import BackendError, BackendTimeout, Conflict
from ..postgres.tenants import ANY_MARKER, Statement

log = logging.getLogger(__name__)

# Gives another connection to the server: to the named database, or to the admin database (None).
Connect = Callable[[str | None], AbstractContextManager[psycopg.Connection]]

# A lock wait shorter than this is left alone; after it, what a tenant holds in the way goes.
PATIENCE_S = 1.0
# Tries of a statement that a tenant's concurrent catalog updates failed, with tenants kept out.
CONCURRENT_UPDATE_ATTEMPTS = 3

_TENANT = "shobj_description(r.oid, 'pg_authid') like %(marker)s"

# Tenant sessions the given backend waits for.
_END_TENANT_BLOCKERS = (
    "select a.pid, a.usename, pg_terminate_backend(a.pid) from pg_stat_activity a"
    " join pg_roles r on r.rolname = a.usename"
    f" where a.pid = any(pg_blocking_pids(%(pid)s)) and {_TENANT}"
)

# Tenants' prepared transactions the given backend waits for: by their transaction id (a row they
# changed), or by a lock they hold on what it waits to lock (a role, a relation).
_TENANT_PREPARED_BLOCKERS = f"""
select p.gid, p.database from pg_prepared_xacts p join pg_roles r on r.rolname = p.owner
where {_TENANT} and (
    p.transaction::text in (
        select transactionid::text from pg_locks
        where pid = %(pid)s and not granted and locktype = 'transactionid')
    or p.transaction in (
        select t.transactionid from pg_locks w join pg_locks h
          on h.locktype = w.locktype and h.granted and h.pid is null
         and h.database is not distinct from w.database and h.relation is not distinct from w.relation
         and h.classid is not distinct from w.classid and h.objid is not distinct from w.objid
        -- A prepared transaction's locks keep the virtual transaction it had (-1/xid after a restart),
        -- and its transactionid lock tells which one it is.
        join pg_locks t on t.virtualtransaction = h.virtualtransaction and t.locktype = 'transactionid'
         and t.pid is null
        where w.pid = %(pid)s and not w.granted))
"""

# The connection limit of a database a tenant owns (none for any other database).
_TENANT_DATABASE_LIMIT = (
    "select d.datconnlimit from pg_database d join pg_roles r on r.oid = d.datdba"
    f" where d.datname = %(datname)s and {_TENANT}"
)

_END_TENANT_SESSIONS_IN = (
    "select pg_terminate_backend(a.pid) from pg_stat_activity a join pg_roles r on r.rolname = a.usename"
    f" where a.datname = %(datname)s and a.pid <> pg_backend_pid() and {_TENANT}"
)


def run_step(conn: psycopg.Connection, statement: Statement, connect: Connect, *, in_use: str = "error") -> None:
    """Run ``statement`` on the autocommit ``conn``. ``in_use="conflict"``: sessions in a database
    being dropped are the caller's 409 (a delete that was not forced), else a BackendError.
    Raises BackendTimeout (a wait on a session that is not a tenant's gave up) or BackendError."""
    try:
        try:
            _watched(conn, statement, connect)
        except psycopg.errors.InternalError_ as e:
            if not concurrently_updated(e):
                raise
            _retry_with_tenants_kept_out(conn, statement, connect)
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as e:
        raise BackendTimeout(
            f"The cluster gave up a step of the removal: {e.diag.message_primary}, waiting on a session that "
            "is not a tenant's. The removal is retried by the reaper."
        ) from e
    except psycopg.errors.ObjectInUse as e:
        if in_use == "conflict":
            raise Conflict(
                f'The cluster refused: {e.diag.message_primary}. Close the sessions or use "force": true.'
            ) from e
        raise BackendError(f"The cluster refused: {e.diag.message_primary}.") from e
    except psycopg.Error as e:
        raise BackendError(f"The cluster refused: {e.diag.message_primary or e}.") from e
    except Exception as e:
        # Whatever else (a name the client encoding cannot carry): the caller's error, never a crash.
        raise BackendError(f"A removal step failed: {type(e).__name__}: {e}.") from e


def concurrently_updated(e: psycopg.Error) -> bool:
    """PostgreSQL's \"tuple concurrently updated\": another session changed the same catalog row."""
    return "concurrently" in (e.diag.message_primary or "")


def _retry_with_tenants_kept_out(conn: psycopg.Connection, statement: Statement, connect: Connect) -> None:
    """A tenant keeps changing what ``statement`` changes: keep tenants out of the database (no new
    connection to a tenant's database, theirs ended) while it is tried again, then let them back."""
    datname = conn.info.dbname
    with connect(None) as admin:
        row = admin.execute(_TENANT_DATABASE_LIMIT, {"datname": datname, "marker": ANY_MARKER}).fetchone()
        limit = row[0] if row is not None else None
        database = sql.Identifier(datname)
        try:
            if limit is not None:
                # Checked at connect only: the sessions of ours in it stay; superusers are exempt anyway.
                admin.execute(sql.SQL("alter database {} connection limit 0").format(database))
            ended = end_tenant_sessions_in(admin, datname)
            log.warning("a tenant kept changing what a removal step changes in %s; ended %d session(s)", datname, ended)
            for attempt in range(1, CONCURRENT_UPDATE_ATTEMPTS + 1):
                try:
                    _watched(conn, statement, connect)
                    return
                except psycopg.errors.InternalError_ as e:
                    if not concurrently_updated(e) or attempt == CONCURRENT_UPDATE_ATTEMPTS:
                        raise
                    end_tenant_sessions_in(admin, datname)
        finally:
            if limit is not None:
                admin.execute(sql.SQL("alter database {} connection limit {}").format(database, limit))


def _watched(conn: psycopg.Connection, statement: Statement, connect: Connect) -> None:
    done = threading.Event()
    watcher = threading.Thread(
        target=_clear_tenant_blockers, args=(conn.info.backend_pid, done, connect), daemon=True, name="blockers"
    )
    watcher.start()
    try:
        conn.execute(statement)
    finally:
        done.set()
        watcher.join()


def _clear_tenant_blockers(pid: int, done: threading.Event, connect: Connect) -> None:
    if done.wait(PATIENCE_S):
        return
    params = {"pid": pid, "marker": ANY_MARKER}
    try:
        with connect(None) as watcher:
            while not done.is_set():
                for blocker, role, _ in watcher.execute(_END_TENANT_BLOCKERS, params).fetchall():
                    log.warning("ended session %s of tenant role %s: it held a lock a removal needed", blocker, role)
                for gid, datname in watcher.execute(_TENANT_PREPARED_BLOCKERS, params).fetchall():
                    rollback_prepared(watcher, gid, datname, connect)
                    log.warning("rolled back a tenant's prepared transaction in %s, in a removal's way", datname)
                if done.wait(0.2):
                    return
    except Exception:
        # The statement then waits until its lock_timeout, as it would without this watch.
        log.warning("could not watch a removal's lock waits", exc_info=True)


def rollback_prepared(admin: psycopg.Connection, gid: str, datname: str, connect: Connect) -> None:
    """ROLLBACK PREPARED runs in the transaction's own database (reopened for the while where its
    owner closed it); one already gone is no error."""
    with in_database(admin, datname, connect) as there:
        try:
            there.execute(sql.SQL("rollback prepared {}").format(sql.Literal(gid)))
        except psycopg.errors.UndefinedObject:
            pass


@contextmanager
def in_database(admin: psycopg.Connection, datname: str, connect: Connect) -> Iterator[psycopg.Connection]:
    """A connection to ``datname``, even where its owner disallowed connections or limited them to
    none (both undone for the while by ``admin``, then restored)."""
    row = admin.execute("select datallowconn, datconnlimit from pg_database where datname = %s", (datname,)).fetchone()
    closed, limit = (not row[0], row[1]) if row is not None else (False, -1)
    database = sql.Identifier(datname)
    if closed:
        run_step(admin, sql.SQL("alter database {} allow_connections true").format(database), connect)
    if limit >= 0:
        run_step(admin, sql.SQL("alter database {} connection limit -1").format(database), connect)
    try:
        with connect(datname) as other:
            yield other
    finally:
        if limit >= 0:
            run_step(admin, sql.SQL("alter database {} connection limit {}").format(database, limit), connect)
        if closed:
            run_step(admin, sql.SQL("alter database {} allow_connections false").format(database), connect)


def end_tenant_sessions_in(admin: psycopg.Connection, datname: str) -> int:
    """End every tenant session in ``datname``; how many there were."""
    return len(admin.execute(_END_TENANT_SESSIONS_IN, {"datname": datname, "marker": ANY_MARKER}).fetchall())
