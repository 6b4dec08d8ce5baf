"""The cluster backend's templates: a builder's database frozen inside the shared server, and clones of it.

At the freeze, every object in the builder's database is handed to ``pg_database_owner``: in each
copy that role's one member is the copy's owner, so ``CREATE DATABASE ... TEMPLATE ... OWNER``
alone makes the new tenant the owner of everything in its clone, without a session in the copy
(the first session in a new database costs more than the copy of a small one). No other tenant is
that role's member there: membership follows the database one is in.

A frozen template is a database named ``postgraas_tpl_...`` that
- the admin owns;
- nobody can connect to (ALLOW_CONNECTIONS false, CONNECT revoked from everyone; CREATE DATABASE
  ... TEMPLATE copies it without a connection, and refuses while anybody is connected to it);
- is not flagged IS_TEMPLATE, which would let every role with CREATEDB (tenant_createdb) copy it.
The builder's role, NOLOGIN from now on and owning nothing, carries the template's marker
(``template_marker``), as an instance's role carries the instance's: a comment only the admin can
set, by which list_templates finds the template and list_objects no longer takes the role for an
instance's. The database carries the same marker; only the admin can comment a database it owns.
Nothing is dropped or copied as a template without both.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from ...errors import BackendError, BackendTimeout, PostgraasError
from ..contract import FrozenTemplate
from ..postgres.tenants import MARKED_ROLES, Statement, lock_down_public_schema, marked_instance
from .admin_steps import Connect, run_step
from .tenant_removal import (
    SESSION_EXIT_WAIT_MS,
    close_and_drop_database,
    drop_databases_owned_by,
    drop_role,
    end_sessions_of,
    rollback_prepared_of,
)

log = logging.getLogger(__name__)

# Starts as every marker does (ANY_MARKER): the builder's role stays a tenant's for admin_steps.
_TEMPLATE_MARKER_RE = re.compile(r"postgraas deployment=(\S+) template=(\d+) db=(\S+) created=(\S+)")

# The builder: its role's oid and marker, its database's oid (where the role owns it).
_BUILDER = """
select r.oid, shobj_description(r.oid, 'pg_authid'), d.oid
from pg_roles r left join pg_database d on d.datname = %(db)s and d.datdba = r.oid
where r.rolname = %(role)s
"""

# A template of ours: role and database carry the same marker, the admin owns the database, and
# the role owns no database.
_FROZEN = """
select shobj_description(r.oid, 'pg_authid'),
       shobj_description(d.oid, 'pg_database') = shobj_description(r.oid, 'pg_authid')
       and d.datdba = (select oid from pg_roles where rolname = current_user)
       and not exists (select 1 from pg_database o where o.datdba = r.oid)
from pg_roles r, pg_database d
where r.rolname = %(role)s and d.datname = %(db)s
"""


def template_marker(deployment: str, template_id: int, db_name: str, created_at: datetime) -> str:
    return f"postgraas deployment={deployment} template={template_id} db={db_name} created={created_at.isoformat()}"


def marked_template(comment: str | None, deployment: str) -> tuple[int, str] | None:
    """The template id and database a marker names, where it is a template marker of ``deployment``."""
    match = _TEMPLATE_MARKER_RE.fullmatch(comment or "")
    return (int(match.group(2)), match.group(3)) if match and match.group(1) == deployment else None


def template_database_name(deployment: str, template_id: int) -> str:
    """Random at the end: a tenant that may create databases cannot take the name ahead of a freeze."""
    short = hashlib.sha256(deployment.encode()).hexdigest()[:8]
    return f"postgraas_tpl_{short}_{template_id}_{secrets.token_hex(4)}"


def freeze_tenant(
    conn: psycopg.Connection, ref: str, role: str, *, deployment: str, template_id: int, connect: Connect
) -> str:
    """Turn the instance database ``ref`` of ``role`` into template ``template_id``; its new name.

    The role can no longer log in and every session of it, or in ``ref``, ends; the databases it
    created beside (tenant_createdb) are dropped. Refused while another role owns anything in ``ref``
    (the builder let it in): clones would carry that role's objects. On any failure the instance
    can be logged in to again; what was revoked on its database from other roles stays revoked, and
    the databases it created are gone where the failure came after them (in the last step)."""
    row = conn.execute(_BUILDER, {"db": ref, "role": role}).fetchone()
    if row is None or row[2] is None or marked_instance(row[1], deployment) is None:
        raise BackendError(f"The database {ref!r} is no instance of this deployment owned by {role!r}.")
    role_oid, _, db_oid = row
    artifact = template_database_name(deployment, template_id)
    try:
        _lock_out(conn, ref, role, connect)
        # Once nobody can add any: a refusal leaves what the builder created beside.
        _refuse_foreign_objects(conn, ref, db_oid, role_oid)
        drop_databases_owned_by(conn, role_oid, keep=ref, connect=connect)
        # Before the REASSIGN OWNED, which hands over the databases the role owns too.
        run_step(conn, sql.SQL("alter database {} owner to current_user").format(sql.Identifier(ref)), connect)
        _hand_objects_to_database_owner(ref, role, connect)
        _close(conn, ref, role, connect)
        marker = template_marker(deployment, template_id, artifact, datetime.now(UTC))
        _become_template(conn, ref, role, role_oid, artifact, marker, connect)
    except BaseException:
        _reopen(conn, ref, role, connect)
        raise
    return artifact


def _lock_out(conn: psycopg.Connection, ref: str, role: str, connect: Connect) -> None:
    """Nobody but the admin gets into ``ref`` any more, and nobody is in it or logged in as ``role``."""
    database = sql.Identifier(ref)
    run_step(conn, sql.SQL("alter role {} nologin").format(sql.Identifier(role)), connect)
    # First: an open transaction of the builder's may hold its database's catalog row.
    end_sessions_of(conn, role)
    # Whoever the builder let in (CONNECT, with grant option or not): in_database may open the
    # database for a moment below, to the admin alone.
    grantees = conn.execute(
        "select distinct r.rolname from pg_database d cross join lateral aclexplode(d.datacl) a"
        " join pg_roles r on r.oid = a.grantee where d.datname = %s and a.grantee <> d.datdba",
        (ref,),
    ).fetchall()
    names = sql.SQL(", ").join([sql.SQL("public"), *(sql.Identifier(name) for (name,) in grantees)])
    run_step(conn, sql.SQL("revoke all on database {} from {} cascade").format(database, names), connect)


def _hand_objects_to_database_owner(ref: str, role: str, connect: Connect) -> None:
    """In ``ref``, still open to the admin alone: what the builder's role owns becomes
    pg_database_owner's, and whatever else names the role there (default privileges, policies,
    grants) goes, so no clone depends on it."""
    builder = sql.Identifier(role)
    with connect(ref) as inside:
        run_step(inside, sql.SQL("reassign owned by {} to pg_database_owner").format(builder), connect)
        run_step(inside, sql.SQL("drop owned by {}").format(builder), connect)
        lock_down_public_schema(inside)


def _close(conn: psycopg.Connection, ref: str, role: str, connect: Connect) -> None:
    """Nobody gets into ``ref`` any more, the admin included, and nothing holds it in use."""
    database = sql.Identifier(ref)
    run_step(
        conn, sql.SQL("alter database {} with allow_connections false is_template false").format(database), connect
    )
    conn.execute(
        "select pg_terminate_backend(pid, %s) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
        (SESSION_EXIT_WAIT_MS, ref),
    )
    # A prepared transaction keeps a database in use, which CREATE DATABASE ... TEMPLATE refuses.
    rollback_prepared_of(conn, [ref], role, connect)


def _refuse_foreign_objects(conn: psycopg.Connection, ref: str, db_oid: int, role_oid: int) -> None:
    # Dropping them (DROP OWNED BY) would also revoke what that role holds in other databases.
    owners = conn.execute(
        "select distinct r.rolname from pg_shdepend s join pg_roles r on r.oid = s.refobjid"
        " where s.dbid = %s and s.deptype = 'o' and s.refclassid = 'pg_authid'::regclass and s.refobjid <> %s"
        " order by 1",
        (db_oid, role_oid),
    ).fetchall()
    if owners:
        names = ", ".join(repr(name) for (name,) in owners)
        raise BackendError(
            f"The database {ref!r} holds objects of other roles ({names}): a template may hold its builder's alone."
        )


def _become_template(
    conn: psycopg.Connection, ref: str, role: str, role_oid: int, artifact: str, marker: str, connect: Connect
) -> None:
    """One transaction: a crash leaves either the instance (its marker, its name) or the template.
    Its commit waits for the disk, and with it whatever the builder committed asynchronously before
    (an ephemeral builder): the WAL is flushed up to it."""
    database, owner = sql.Identifier(artifact), sql.Identifier(role)
    # Members of the role would have its rights on the template (a role could grant itself to
    # others on servers before PostgreSQL 16). The admin's own membership is create_tenant's.
    members = conn.execute(
        "select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.member"
        " where m.roleid = %s and r.rolname <> current_user",
        (role_oid,),
    ).fetchall()
    statements: list[Statement] = [
        sql.SQL("alter database {} rename to {}").format(sql.Identifier(ref), database),
        sql.SQL("comment on database {} is {}").format(database, sql.Literal(marker)),
        sql.SQL("comment on role {} is {}").format(owner, sql.Literal(marker)),
        # The builder's credentials were shown, and its role stays with the template.
        sql.SQL("alter role {} password null").format(owner),
        *(sql.SQL("revoke {} from {}").format(owner, sql.Identifier(name)) for (name,) in members),
    ]
    with conn.transaction():
        for statement in statements:
            run_step(conn, statement, connect)


def _reopen(conn: psycopg.Connection, ref: str, role: str, connect: Connect) -> None:
    """After a failed freeze: the instance as it was, for its tenant (or its delete); what was
    handed to pg_database_owner is the tenant's again as its database's owner."""
    for statement in (
        sql.SQL("alter role {} login").format(sql.Identifier(role)),
        sql.SQL("alter database {} allow_connections true").format(sql.Identifier(ref)),
        sql.SQL("alter database {} owner to {}").format(sql.Identifier(ref), sql.Identifier(role)),
    ):
        try:
            run_step(conn, statement, connect)
        except PostgraasError as e:
            log.warning("could not undo a failed freeze of %s: %s", ref, e.msg)


def check_frozen(conn: psycopg.Connection, template: FrozenTemplate, deployment: str) -> None:
    """Clone only a template of this deployment, never a database that merely has such a name."""
    row = conn.execute(_FROZEN, {"role": template.tenant.db_username, "db": template.artifact}).fetchone()
    marked = marked_template(row[0], deployment) if row is not None else None
    if row is None or not row[1] or marked is None or marked[1] != template.artifact:
        raise BackendError(f"There is no template {template.artifact!r} of this deployment in the cluster.")


_SHARED = (
    "select pg_advisory_lock_shared(hashtextextended(%s, 0))",
    "select pg_advisory_unlock_shared(hashtextextended(%s, 0))",
)
_EXCLUSIVE = ("select pg_advisory_lock(hashtextextended(%s, 0))", "select pg_advisory_unlock(hashtextextended(%s, 0))")


@contextmanager
def template_lock(conn: psycopg.Connection, artifact: str, *, exclusive: bool) -> Iterator[None]:
    """Held by a clone (shared) while it copies the template, and by a drop (exclusive): a drop
    waits for the copies under way, and a clone that comes after it finds no template.
    A session lock on the kept admin connection ``conn``; lock_timeout bounds the wait."""
    lock, unlock = _EXCLUSIVE if exclusive else _SHARED
    key = (f"postgraas template {artifact}",)
    try:
        conn.execute(lock, key)
    except psycopg.errors.LockNotAvailable as e:
        raise BackendTimeout(f"The template {artifact!r} is being dropped or cloned; try again later.") from e
    try:
        yield
    finally:
        try:
            conn.execute(unlock, key)
        except psycopg.Error:
            conn.close()  # never back among the kept connections with the lock held


def drop_frozen(conn: psycopg.Connection, artifact: str, *, deployment: str, connect: Connect) -> None:
    """Drop the template database ``artifact`` and its role, each only where it carries this
    deployment's template marker naming ``artifact``; whatever is gone already is no error."""
    roles = [
        (name, oid)
        for name, oid, comment in conn.execute(MARKED_ROLES, (f"postgraas deployment={deployment} template=%",))
        if (marked_template(comment, deployment) or (0, ""))[1] == artifact
    ]
    database = conn.execute(
        "select shobj_description(oid, 'pg_database'),"
        " datdba = (select oid from pg_roles where rolname = current_user) from pg_database where datname = %s",
        (artifact,),
    ).fetchone()
    if database is not None:
        if database[1] and (marked_template(database[0], deployment) or (0, ""))[1] == artifact:
            close_and_drop_database(conn, artifact, is_template=False, connect=connect)
        else:
            log.warning("database %s is not a template of this deployment; left alone", artifact)
    # The role goes last: until then list_templates lists the template, and a drop cut short is done again.
    for name, oid in roles:
        # NOLOGIN since the freeze, which dropped what it had created: nothing, unless an admin gave it some.
        drop_databases_owned_by(conn, oid, keep=None, connect=connect)
        drop_role(conn, name, oid, deployment, connect)


def list_frozen(conn: psycopg.Connection, deployment: str) -> dict[int, str]:
    """Template id -> database, from the markers of the templates' roles (each dropped last).
    Where one id has several (a build frozen again after the server lost its first freeze), the
    oldest: the newer may be its row's, so the older goes first, and the newer is seen after."""
    rows = conn.execute(MARKED_ROLES, (f"postgraas deployment={deployment} template=%",)).fetchall()
    oldest: dict[int, tuple[str, str]] = {}
    for _, _, comment in rows:
        match = _TEMPLATE_MARKER_RE.fullmatch(comment or "")
        if match is None or match.group(1) != deployment:
            continue
        template_id, database, created = int(match.group(2)), match.group(3), match.group(4)
        if template_id not in oldest or created < oldest[template_id][0]:
            oldest[template_id] = (created, database)
    return {template_id: database for template_id, (_, database) in oldest.items()}
