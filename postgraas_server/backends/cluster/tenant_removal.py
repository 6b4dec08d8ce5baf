"""Removing a tenant from a PostgreSQL server it shares with others: its database, every trace of
its role in every database of the server, then the role.

Two rules hold whatever other tenants do:
- only what is provably this instance's is removed: a role carrying this instance's marker
  (a comment no tenant can set), and the databases that role owns (its instance's, and those it
  created where tenant_createdb lets it). Names alone prove nothing: after
  an admin dropped an instance's objects, another instance may have taken the same names.
- nothing another tenant did can stop the removal for good: grants to the role, default
  privileges and policies naming it, objects it made where another tenant let it (with what
  others built on them), in any database, go by DROP OWNED ... CASCADE there (found in the shared
  catalog pg_shdepend, so databases the role could not even connect to are covered); flags an
  owner may set on a database are undone first; what a tenant holds in a step's way is ended
  (admin_steps); any other wait ends at the session's lock_timeout with BackendTimeout, and the
  caller (the reaper) tries again.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from ...errors import BackendError, Conflict, InUse
from ..postgres.tenants import REVOKE_FROM_PUBLIC, count_sessions, marked_instance
from .admin_steps import Connect, in_database, rollback_prepared, run_step

log = logging.getLogger(__name__)


def drop_tenant(
    conn: psycopg.Connection,
    db_name: str,
    role: str,
    *,
    deployment: str,
    instance_id: int,
    force: bool,
    connect: Connect,
) -> str | None:
    """Drop the instance's database and every other database its role created (refusing while
    sessions are open in any, unless ``force``), whatever the role owns or was granted anywhere in
    the server, then the role. ``conn`` is an autocommit admin connection; ``connect`` gives
    others. Returns None when just the instance's objects were there and all are gone, else
    sentences saying which databases the role had created went with it, and what was left in
    place because it is not this instance's.

    Raises InUse (sessions open, not forced), BackendTimeout (a lock wait gave up; nothing is
    half done that a later call cannot finish) or BackendError."""
    found = conn.execute(
        "select oid, shobj_description(oid, 'pg_authid') from pg_roles where rolname = %s", (role,)
    ).fetchone()
    role_oid = found[0] if found else None
    database = conn.execute(
        "select oid, datdba, datistemplate from pg_database where datname = %s", (db_name,)
    ).fetchone()
    if found is not None and not _marks(found[1], deployment, instance_id):
        log.warning("instance %s: role %s is not this instance's (no marker of it); left alone", instance_id, role)
        role_oid = None
    left = [f"role {role!r}"] if found is not None and role_oid is None else []
    if database is not None and (role_oid is None or database[1] != role_oid):
        # Owned by another role: made after this instance's database vanished, not ours to drop.
        left.append(f"database {db_name!r}")
        database = None
    if not force:
        # Open sessions in the instance's database (anybody's), and the tenant's own anywhere: a
        # session elsewhere (in "postgres", with tenant_createdb) may be creating databases.
        sessions = (count_sessions(conn, db_name) if database is not None else 0) + (
            _role_sessions_elsewhere(conn, role, db_name) if role_oid is not None else 0
        )
        if sessions:
            raise InUse(sessions)
    login = sql.SQL("alter role {} login").format(sql.Identifier(role))
    if role_oid is not None:
        # First: the tenant can neither log in nor act any more while its objects go (a session it
        # kept would go on creating databases), so what is listed below is all there is.
        run_step(conn, sql.SQL("alter role {} nologin").format(sql.Identifier(role)), connect)
        end_sessions_of(conn, role)
    # Those in the databases it created go with them, after those are closed (close_and_drop_database).
    rollback_prepared_of(
        conn, [db_name] if database is not None else [], role if role_oid is not None else None, connect
    )
    # The tenant's own first: the instance's database, dropped after them, is the one a plain delete
    # keeps when a session of somebody else's is opened in it meanwhile.
    created = drop_databases_owned_by(conn, role_oid, keep=db_name, connect=connect) if role_oid is not None else []
    if database is not None:
        try:
            _drop_database(conn, db_name, is_template=database[2], force=force, connect=connect)
        except Conflict:
            if role_oid is not None:
                run_step(conn, login, connect)  # the instance works on, as with any in use
            raise
    if role_oid is not None:
        drop_role(conn, role, role_oid, deployment, connect)
    notes = []
    if created:
        names = ", ".join(repr(name) for name in created)
        notes.append(f"The {len(created)} database(s) its role had created went with it: {names}.")
    if left:
        notes.append(
            f"Its {' and '.join(left)} were left as they are: the names are no longer this instance's (its "
            "objects were removed behind Postgraas's back and the names taken since)."
        )
    return " ".join(notes) or None


def drop_databases_owned_by(
    conn: psycopg.Connection, role_oid: int, *, keep: str | None, connect: Connect
) -> list[str]:
    """Drop every database the role owns but ``keep`` (those its tenant created, tenant_createdb), as
    close_and_drop_database does; their names. The role can no longer log in: the list is final."""
    created = _databases_created_by(conn, role_oid, keep)
    for name, is_template in created:
        close_and_drop_database(conn, name, is_template=is_template, connect=connect)
    return [name for name, _ in created]


def _databases_created_by(conn: psycopg.Connection, role_oid: int, db_name: str | None) -> list[tuple[str, bool]]:
    """The databases the role owns besides its instance's: it created them (a role of ours owns
    only its own database otherwise, and no tenant can give a database to another role)."""
    rows = conn.execute(
        "select datname, datistemplate from pg_database where datdba = %s and datname is distinct from %s"
        " order by datname",
        (role_oid, db_name),
    ).fetchall()
    return [(name, bool(is_template)) for name, is_template in rows]


def _marks(comment: str | None, deployment: str, instance_id: int) -> bool:
    return marked_instance(comment, deployment) == instance_id


def _drop_database(conn: psycopg.Connection, db_name: str, *, is_template: bool, force: bool, connect: Connect) -> None:
    database = sql.Identifier(db_name)
    if is_template:
        # An owner may flag its database a template, which DROP DATABASE refuses.
        run_step(conn, sql.SQL("alter database {} is_template false").format(database), connect)
    drop = sql.SQL("drop database if exists {}").format(database)
    if force:
        run_step(conn, drop + sql.SQL(" with (force)"), connect)
    else:
        # Sessions opened between the count and the drop: the instance stays, as with any in use.
        run_step(conn, drop, connect, in_use="conflict")


def _drop_invalid(
    conn: psycopg.Connection, datname: str, owner_comment: str | None, deployment: str, connect: Connect
) -> None:
    """A database left invalid by a DROP DATABASE cut short can only be dropped; nobody can connect
    to it for DROP OWNED. One of a tenant of this deployment goes (its owner was dropping it; it may
    hold another tenant's grants to keep that one's role alive); anybody else's stays, and the role
    with it, until its owner drops it."""
    if marked_instance(owner_comment, deployment) is None:
        log.warning("database %s is invalid and not a tenant's: a role named in it cannot be dropped", datname)
        return
    log.warning("dropping database %s, left invalid by its tenant owner, which names a role being removed", datname)
    run_step(conn, sql.SQL("drop database if exists {}").format(sql.Identifier(datname)), connect)


def end_sessions_of(conn: psycopg.Connection, role: str) -> None:
    """The role's sessions, everywhere, waited for until they are gone (it cannot log in again: it
    is NOLOGIN now)."""
    conn.execute(
        "select pg_terminate_backend(pid, %s) from pg_stat_activity where usename = %s and pid <> pg_backend_pid()",
        (SESSION_EXIT_WAIT_MS, role),
    )


def _role_sessions_elsewhere(conn: psycopg.Connection, role: str, db_name: str) -> int:
    row = conn.execute(
        "select count(*) from pg_stat_activity where usename = %s and datname is distinct from %s", (role, db_name)
    ).fetchone()
    return int(row[0]) if row else 0


def close_and_drop_database(conn: psycopg.Connection, name: str, *, is_template: bool, connect: Connect) -> None:
    """A database the tenant created: closed to PUBLIC first (PostgreSQL opens a new database to
    every role, and another tenant there could keep preparing transactions that a drop refuses),
    then everyone in it ended, its prepared transactions rolled back, and dropped."""
    run_step(conn, sql.SQL(REVOKE_FROM_PUBLIC).format(sql.Identifier(name)), connect)
    conn.execute(
        "select pg_terminate_backend(pid, %s) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
        (SESSION_EXIT_WAIT_MS, name),
    )
    for (gid,) in conn.execute("select gid from pg_prepared_xacts where database = %s", (name,)).fetchall():
        rollback_prepared(conn, gid, name, connect)
    _drop_database(conn, name, is_template=is_template, force=True, connect=connect)


def rollback_prepared_of(conn: psycopg.Connection, databases: list[str], role: str | None, connect: Connect) -> None:
    """A prepared transaction keeps its database in use with no session left, and its owner alive.
    Only those in this instance's databases or of its role (None: not this instance's)."""
    if not databases and role is None:
        return
    prepared = conn.execute(
        "select gid, database from pg_prepared_xacts where database = any(%s) or owner = %s", (databases, role)
    ).fetchall()
    for gid, datname in prepared:
        rollback_prepared(conn, gid, datname, connect)


# How long ending a session waits for it to exit.
SESSION_EXIT_WAIT_MS = 5000

# How often DROP OWNED and DROP ROLE are tried when another tenant keeps granting the role something.
DROP_ATTEMPTS = 5


def drop_role(conn: psycopg.Connection, role: str, role_oid: int, deployment: str, connect: Connect) -> None:
    drop = sql.SQL("drop role if exists {}").format(sql.Identifier(role))
    for attempt in range(1, DROP_ATTEMPTS + 1):
        _drop_everything_of(conn, role, role_oid, deployment, connect)
        try:
            run_step(conn, drop, connect)
            return
        except BackendError as e:
            # Another tenant granted the role something again meanwhile: revoke that too.
            if attempt == DROP_ATTEMPTS or not isinstance(e.__cause__, psycopg.errors.DependentObjectsStillExist):
                raise


def _drop_everything_of(conn: psycopg.Connection, role: str, role_oid: int, deployment: str, connect: Connect) -> None:
    """DROP OWNED in every database where the role owns something or is named by a grant, a
    default privilege or a policy; then once more here for what it holds on shared objects.
    CASCADE: what another tenant built on the role's objects (a view on its table) goes with them,
    or that tenant could keep the role alive for good."""
    databases = conn.execute(
        "select distinct d.datname, d.datconnlimit = -2, shobj_description(d.datdba, 'pg_authid')"
        " from pg_shdepend s join pg_database d on d.oid = s.dbid"
        " where s.refclassid = 'pg_authid'::regclass and s.refobjid = %s",
        (role_oid,),
    ).fetchall()
    statement = sql.SQL("drop owned by {} cascade").format(sql.Identifier(role))
    for datname, invalid, owner_comment in databases:
        if invalid:
            _drop_invalid(conn, datname, owner_comment, deployment, connect)
            continue
        with in_database(conn, datname, connect) as other:
            run_step(other, statement, connect)
    shared = conn.execute(
        "select 1 from pg_shdepend where dbid = 0 and refclassid = 'pg_authid'::regclass and refobjid = %s limit 1",
        (role_oid,),
    ).fetchone()
    if shared:
        run_step(conn, statement, connect)
