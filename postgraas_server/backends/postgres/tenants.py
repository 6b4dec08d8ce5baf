"""A tenant inside a PostgreSQL server: a LOGIN role and a database it owns, nobody else may open.

Used by the cluster backend (a shared server) and the local backend (a server per instance),
always over an autocommit admin connection: CREATE/DROP DATABASE cannot run in a transaction.
Identifiers are composed with ``sql.Identifier``, never with string formatting.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import psycopg
from psycopg import sql

from ...errors import BackendError, Conflict, InvalidRequest
from ...scram import SCRAM_ITERATIONS, scram_sha256_verifier
from ..contract import Credentials, DatabaseSpec, ManagedObject

# A statement composed with psycopg.sql, as Connection.execute takes it.
Statement = sql.SQL | sql.Composed

# Every role may connect to a new database, and make temporary tables in it, until this.
REVOKE_FROM_PUBLIC = "revoke connect, temporary on database {} from public"

# The roles whose marker (their comment) is LIKE a pattern: name, oid, marker. A join, not a filter
# on shobj_description(), which runs a query of its own for every role of the server.
MARKED_ROLES = (
    "select r.rolname, r.oid, c.description from pg_roles r join pg_shdescription c"
    " on c.objoid = r.oid and c.classoid = 'pg_catalog.pg_authid'::regclass where c.description like %s"
)


def role_exists(conn: psycopg.Connection, role: str) -> bool:
    return conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone() is not None


def database_exists(conn: psycopg.Connection, db_name: str) -> bool:
    return conn.execute("select 1 from pg_database where datname = %s", (db_name,)).fetchone() is not None


def create_tenant(
    conn: psycopg.Connection,
    spec: DatabaseSpec,
    *,
    existing_database: str | None = None,
    marker: str | None = None,
    createdb: bool = False,
) -> None:
    """Create role and database; on any failure drop what this call created, then raise.

    ``existing_database``: in a cluster of the tenant's own, a database made ahead of time (or
    its ``postgres`` database) that is renamed to ``spec.db_name`` and handed to the role
    instead: a rename costs nothing, a CREATE DATABASE copies and syncs a whole template.
    ``marker``: a comment put on the role at once, by which list_tenants finds it again.
    ``createdb``: the role may create databases (never superuser, roles or replication)."""
    role, db_name = sql.Identifier(spec.db_username), sql.Identifier(spec.db_name)
    if role_exists(conn, spec.db_username):
        raise Conflict(
            f"A role named {spec.db_username!r} already exists in the cluster.", {"db_username": "already exists"}
        )
    existing = existing_database is not None
    if existing_database != spec.db_name and database_exists(conn, spec.db_name):
        raise Conflict(
            f"A database named {spec.db_name!r} already exists in the cluster.", {"db_name": "already exists"}
        )
    # The server only ever sees a SCRAM verifier, so the password cannot reach its log.
    verifier = _verifier_for(conn, spec)
    # Role and marker in one transaction: no crash can leave a role list_tenants cannot find.
    with conn.transaction():
        _run(
            conn,
            sql.SQL("create role {} login nosuperuser {} nocreaterole noreplication password {}").format(
                role, sql.SQL("createdb" if createdb else "nocreatedb"), sql.Literal(verifier)
            ),
            sets_password=True,
        )
        if marker is not None:
            _run(conn, sql.SQL("comment on role {} is {}").format(role, sql.Literal(marker)))
    try:
        if not is_superuser(conn):
            # A non-superuser admin may only give a database to a role it is a member of.
            _run(conn, sql.SQL("grant {} to current_user").format(role))
        # template0 by default: template1 is open to every role of the cluster, so anything a
        # tenant left there (large objects, say) must not be copied into other tenants' databases.
        template = sql.Identifier(spec.template or "template0")
        if existing_database is not None:
            if existing_database != spec.db_name:
                _run(conn, sql.SQL("alter database {} rename to {}").format(sql.Identifier(existing_database), db_name))
            _run(conn, sql.SQL("alter database {} owner to {}").format(db_name, role))
        else:
            _run(conn, sql.SQL("create database {} owner {} template {}").format(db_name, role, template))
        try:
            # Other tenants cannot even connect; the owner keeps its implicit right to.
            _run(conn, sql.SQL(REVOKE_FROM_PUBLIC).format(db_name))
        except BaseException:
            if not existing:
                _run(conn, sql.SQL("drop database if exists {} with (force)").format(db_name))
            raise
    except BaseException:
        _run(conn, sql.SQL("drop role if exists {}").format(role))
        raise


# ALTER ROLE ... PASSWORD first derives the empty password with the verifier's salt and iterations,
# to refuse it (ours never is empty): most of a pooled claim's time on the server. Only where no
# library is loaded into the session, so that no password hook (passwordcheck, say) is skipped; the
# caller sets it with ALTER ROLE where this changes no row.
_WRITE_VERIFIER = """
update pg_authid set rolpassword = %(verifier)s where rolname = %(role)s
and current_setting('shared_preload_libraries') = '' and current_setting('session_preload_libraries') = ''
and current_setting('local_preload_libraries') = '' returning 1
"""


def hand_over_tenant(
    conn: psycopg.Connection,
    pooled: Credentials,
    spec: DatabaseSpec,
    *,
    marker: str | None = None,
    before: Sequence[Statement] = (),
    own_server: bool = False,
    superuser: bool = False,
) -> None:
    """Rename a tenant made ahead (role and database ``pooled``) to ``spec``'s names and set
    spec's password, in one transaction (``before``, the backend's own statements, included): a
    failure changes nothing. The database keeps its owner and its revoked PUBLIC rights; no
    session may be open in it (none is, in a pooled one). A name taken is told by the error of the
    rename itself (a check ahead would cost a round trip each, and could not close the race anyway).

    One round trip either way. ``own_server``: the server is one Postgraas made for this tenant
    alone, where the statements go as one simple query (one implicit transaction) and
    - a failing statement is not logged: a multi-statement query is logged whole, verifier included;
    - the verifier is written into pg_authid directly. ALTER ROLE ... PASSWORD first hashes the
      empty password with the verifier's salt and iterations, to refuse it as the new one: a whole
      SCRAM derivation of the server's CPU on the claim's path, for a password that never is empty
      (and no password hook of anybody's runs there).
    Elsewhere (a shared cluster) they are pipelined one by one, the password last, so a failing
    rename never logs it. ``superuser``: the admin is one, and writes the verifier itself
    (_WRITE_VERIFIER) where that skips nobody's password hook."""
    role = sql.Identifier(spec.db_username)
    # First: a failure of any later statement must not log the query, which holds the verifier.
    statements: list[Statement] = [sql.SQL("set local log_min_error_statement = panic")] if own_server else []
    statements.extend(before)
    if spec.ephemeral:
        # Asked to be fast rather than safe: the commit does not wait for the disk either.
        statements.append(sql.SQL("set local synchronous_commit = off"))
    if spec.db_username != pooled.db_username:
        statements.append(sql.SQL("alter role {} rename to {}").format(sql.Identifier(pooled.db_username), role))
    if marker is not None:
        statements.append(sql.SQL("comment on role {} is {}").format(role, sql.Literal(marker)))
    if spec.db_name != pooled.db_name:
        statements.append(
            sql.SQL("alter database {} rename to {}").format(
                sql.Identifier(pooled.db_name), sql.Identifier(spec.db_name)
            )
        )
    verifier_text = _verifier_for(conn, spec)
    verifier = sql.Literal(verifier_text)
    try:
        if own_server:
            statements.append(
                sql.SQL("update pg_authid set rolpassword = {} where rolname = {}").format(
                    verifier, sql.Literal(spec.db_username)
                )
            )
            # No parameters: psycopg sends it with the simple query protocol, several statements allowed.
            conn.execute(sql.SQL("; ").join(statements))
        else:
            with conn.pipeline(), conn.transaction():
                for statement in statements:
                    conn.execute(statement)
                written = superuser and conn.execute(
                    _WRITE_VERIFIER, {"verifier": verifier_text, "role": spec.db_username}
                )
                if not (written and written.fetchone()):
                    conn.execute(sql.SQL("alter role {} password {}").format(role, verifier))
    except psycopg.errors.DuplicateObject as e:
        raise Conflict(
            f"A role named {spec.db_username!r} already exists in the cluster.", {"db_username": "already exists"}
        ) from e
    except psycopg.errors.DuplicateDatabase as e:
        raise Conflict(
            f"A database named {spec.db_name!r} already exists in the cluster.", {"db_name": "already exists"}
        ) from e
    except psycopg.errors.UniqueViolation as e:
        # A concurrent request took the name between the catalog's check and our insert.
        raise Conflict(f"The cluster refused: {e.diag.message_primary}.") from e
    except psycopg.errors.InvalidParameterValue as e:
        # Nothing else of the hand-over takes a value that could be invalid.
        raise password_refused(e) from e
    except psycopg.errors.ObjectInUse as e:
        # Someone (a monitoring login) is in the pooled database: the pool's problem, not a
        # conflict of the request's; the caller creates anew.
        raise BackendError(f"The pooled database is in use: {e.diag.message_primary}.") from e
    except psycopg.Error as e:
        raise BackendError(f"The cluster refused: {e.diag.message_primary or e}.") from e


def password_refused(e: psycopg.Error) -> InvalidRequest:
    """A password hook of the cluster's admin (passwordcheck, say) refused db_pwd."""
    why = e.diag.message_primary or str(e)
    return InvalidRequest(f"The cluster's password policy refused db_pwd: {why}.", {"db_pwd": why})


def _verifier_for(conn: psycopg.Connection, spec: DatabaseSpec) -> str:
    """spec's verifier, made again with the server's own iteration count where it reports one
    other than the default (scram_iterations, PostgreSQL 16 on): a cluster set to a higher count
    does not get weaker verifiers from us."""
    reported = conn.info.parameter_status("scram_iterations")
    if reported and reported.isdigit() and int(reported) > SCRAM_ITERATIONS:
        return scram_sha256_verifier(spec.db_pwd, iterations=int(reported))
    return spec.scram_verifier()


# The application_name of the sessions Postgraas opens in a server that becomes a tenant's.
OUR_SESSIONS = "postgraas"

# Run by a claim after the hand-over's commit, on a server that is the tenant's alone: ends our
# sessions there (a kept one of another server process, one that logged in while the hand-over
# ran), none of which may stay. It runs after the answer is sent, by when the tenant may have
# logged in already: its sessions are told from ours by their application_name. (A session of a
# server too old to name it is closed by its own keeper, which sees the object claimed.)
END_OTHER_SESSIONS = sql.SQL(
    "select pg_terminate_backend(pid) from pg_stat_activity"
    " where backend_type = 'client backend' and pid <> pg_backend_pid() and application_name = {}"
).format(sql.Literal(OUR_SESSIONS))


def require_pooled_database(conn: psycopg.Connection, pooled_db: str, what: str) -> psycopg.Connection:
    """``conn``, when the pooled database ``pooled_db`` still exists; else ``conn`` is closed and
    BackendError raised. A claim renames that database, so a login racing a claim is not kept."""
    try:
        still_pooled = database_exists(conn, pooled_db)
    except BaseException:
        conn.close()
        raise
    if not still_pooled:
        conn.close()
        raise BackendError(f"{what} was claimed already.")
    return conn


# What hand_over_tenant's statements read, looked up once by a session kept for a claim (see
# HandOverConnections): the roles, the databases and the sessions.
HAND_OVER_WARM_UP = (
    "select 1 from pg_authid where rolname = ''; select 1 from pg_database where datname = '';"
    " select 1 from pg_stat_activity where false"
)


def tenant_marker(deployment: str, spec: DatabaseSpec, created_at: datetime) -> str:
    return (
        f"postgraas deployment={deployment} instance={spec.instance_id} db={spec.db_name} "
        f"created={created_at.isoformat()}"
    )


_MARKER_RE = re.compile(r"postgraas deployment=(\S+) instance=(\d+) db=(\S+) created=(\S+)")
# The start of every deployment's markers: a role carrying one is a tenant's, whichever Postgraas made it.
ANY_MARKER = "postgraas deployment=%"


def marked_instance(comment: str | None, deployment: str) -> int | None:
    """The instance id a role's marker names, where it is a marker of ``deployment``."""
    match = _MARKER_RE.fullmatch(comment or "")
    return int(match.group(2)) if match and match.group(1) == deployment else None


def list_tenants(conn: psycopg.Connection, deployment: str) -> list[ManagedObject]:
    """The roles this deployment made (each names its database), from their markers."""
    rows = conn.execute(MARKED_ROLES, (f"postgraas deployment={deployment} %",)).fetchall()
    tenants = []
    # One call per marker where there can be a hundred thousand (a reaper pass lists them all).
    match, made = _MARKER_RE.fullmatch, datetime.fromisoformat
    for role, _, comment in rows:
        found = match(comment or "")
        if found is None:
            continue
        of_deployment, instance_id, db_name, created = found.groups()
        if of_deployment == deployment:
            tenants.append(ManagedObject(db_name, int(instance_id), made(created), Credentials(db_name, role, "")))
    return tenants


def count_sessions(conn: psycopg.Connection, db_name: str) -> int:
    row = conn.execute(
        "select count(*) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()", (db_name,)
    ).fetchone()
    return int(row[0]) if row else 0


def is_superuser(conn: psycopg.Connection) -> bool:
    row = conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()
    return bool(row and row[0])


def _run(conn: psycopg.Connection, statement: Statement, *, sets_password: bool = False) -> None:
    """Run DDL; a name taken or an object in use meanwhile is a 409, a password the cluster's policy
    refuses a 400, anything else a 502."""
    try:
        conn.execute(statement)
    except (psycopg.errors.DuplicateObject, psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation) as e:
        # UniqueViolation: a concurrent request took the name between our check and our rename.
        raise Conflict(f"The cluster refused: {e.diag.message_primary}.") from e
    except psycopg.errors.ObjectInUse as e:
        # A create whose template has a session in it: nothing was made; another try may succeed.
        raise Conflict(f"The cluster refused: {e.diag.message_primary}. Try again later.") from e
    except psycopg.Error as e:
        if sets_password and isinstance(e, psycopg.errors.InvalidParameterValue):
            raise password_refused(e) from e
        raise BackendError(f"The cluster refused: {e.diag.message_primary or e}.") from e


# Objects a template brings along, outside system schemas and extensions, each with the start
# of the statement that gives it to the tenant ("... owner to"). Sequences owned by a column follow their table.
_ADOPTABLE = """
with user_ns as (
    select oid, nspname from pg_namespace
    where nspname not in ('pg_catalog', 'information_schema')
      and nspname not like 'pg\\_toast%' and nspname not like 'pg\\_temp%'
),
from_extension as (select objid from pg_depend where deptype = 'e')
select format('alter schema %I owner to', nspname)
from user_ns where oid not in (select objid from from_extension)
union all
select format('alter %s %I.%I owner to',
              case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                             when 'f' then 'foreign table' when 'S' then 'sequence' else 'table' end,
              n.nspname, c.relname)
from pg_class c join user_ns n on n.oid = c.relnamespace
where c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
  and c.oid not in (select objid from from_extension)
  and not (c.relkind = 'S' and exists (
      select 1 from pg_depend d where d.objid = c.oid and d.deptype in ('a', 'i')))
union all
select format('alter routine %s owner to', p.oid::regprocedure)
from pg_proc p join user_ns n on n.oid = p.pronamespace
where p.oid not in (select objid from from_extension)
union all
select format('alter %s %s owner to', case t.typtype when 'd' then 'domain' else 'type' end,
              t.oid::regtype)
from pg_type t join user_ns n on n.oid = t.typnamespace
where t.typtype in ('e', 'd', 'r')
  and t.oid not in (select objid from from_extension)
"""


def lock_down_public_schema(conn: psycopg.Connection) -> None:
    """PUBLIC may not create in the new database's public schema (PostgreSQL 15 does this by
    default; older servers granted it). ``conn`` is an admin connection to the new database."""
    if conn.execute("select 1 from pg_namespace where nspname = 'public'").fetchone():
        _run(conn, sql.SQL("revoke create on schema public from public"))


def adopt_template_objects(conn: psycopg.Connection, role: str) -> None:
    """Give the tenant what a template copied in (tables, views, sequences, routines, types),
    so it can use and alter its database like one it built itself. ``conn`` is an admin
    connection to the new database."""
    # The query runs without parameters, so its LIKE patterns keep their % signs.
    prefixes = [row[0] for row in conn.execute(_ADOPTABLE)]
    for prefix in prefixes:
        _run(conn, sql.SQL(prefix + " ") + sql.Identifier(role))
