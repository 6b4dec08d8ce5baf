"""The cluster backend: a role and a database per instance inside an existing PostgreSQL server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ...backend_settings import ClusterBackendSettings
from ...errors import BackendError, BackendTimeout, BackendUnavailable, InvalidRequest
from .. import contract
from ..contract import Credentials, DatabaseSpec, ManagedObject, ObjectDescription, ObjectState, ProvisionedDatabase
from ..postgres.client import CONNECT_TIMEOUT_S, NotReady, wait_for_login
from ..postgres.tenants import (
    ANY_MARKER,
    adopt_template_objects,
    create_tenant,
    database_exists,
    hand_over_tenant,
    list_tenants,
    lock_down_public_schema,
    tenant_marker,
)
from .admin_connections import AdminConnections, guarded_conninfo
from .admin_steps import end_tenant_sessions_in
from .shared_access import SharedAccess, revoke_from_public
from .templates import check_frozen, drop_frozen, freeze_tenant, list_frozen, template_lock
from .tenant_removal import drop_tenant

# Of a database: owned by a tenant; open to PUBLIC; anything of a tenant's role in it.
_TEMPLATE_STATE = """
select shobj_description(d.datdba, 'pg_authid') like %(marker)s,
       has_database_privilege('public', d.oid, 'CONNECT'),
       exists (select 1 from pg_shdepend s join pg_roles r on r.oid = s.refobjid
               where s.dbid = d.oid and shobj_description(r.oid, 'pg_authid') like %(marker)s)
from pg_database d where d.datname = %(name)s
"""

log = logging.getLogger(__name__)


class ClusterBackend(contract.Backend):
    type_name = "cluster"
    takes_designated_templates = True

    def __init__(self, settings: ClusterBackendSettings, deployment: str) -> None:
        self.settings = settings
        self.deployment = deployment
        if settings.dsn is not None:
            self._conninfo = make_conninfo(settings.dsn, connect_timeout=CONNECT_TIMEOUT_S)
        else:
            user = f"{settings.username}@{settings.server}" if settings.server else settings.username
            self._conninfo = make_conninfo(
                host=settings.host,
                port=settings.port,
                dbname=settings.database,
                user=user,
                password=settings.password,
                connect_timeout=CONNECT_TIMEOUT_S,
            )
        self._conninfo = guarded_conninfo(
            self._conninfo, lock_timeout=settings.lock_timeout, statement_timeout=settings.statement_timeout
        )
        params = conninfo_to_dict(self._conninfo)
        admin_host = str(params.get("host") or "localhost")
        admin_port = int(params.get("port") or 5432)
        self.host = settings.advertised_host or admin_host
        self.port = settings.advertised_port or admin_port
        self._probe = (settings.probe_host or self.host, self.port)
        self._login_proven = False
        self._shared = SharedAccess(
            close_shared=settings.close_shared_databases, tenant_createdb=settings.tenant_createdb, admin=self._admin
        )
        self._connections = AdminConnections(self._conninfo)

    def why_no_pool(self) -> str | None:
        return None

    def why_no_template(self) -> str | None:
        return None

    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        marker = tenant_marker(self.deployment, spec, datetime.now(UTC))
        with self._admin() as conn:
            self._shared.close_shared_databases(conn)
            if spec.template is not None:
                self._check_template(conn, spec.template)
            create_tenant(conn, spec, marker=marker, createdb=self.settings.tenant_createdb)
            # PostgreSQL 15 and later no longer let PUBLIC create in the public schema: a copy of
            # template0 needs no connection of its own to lock it down.
            locked_down = spec.template is None and conn.info.server_version >= 150000
        made = self._finish(spec, None if locked_down else partial(_lock_down, spec))
        log.info("created database %s and role %s for instance %s", spec.db_name, spec.db_username, spec.instance_name)
        return made

    def _finish(self, spec: DatabaseSpec, inside: Callable[[psycopg.Connection], None] | None) -> ProvisionedDatabase:
        """What a create (or a clone) does once role and database are made: ``inside`` runs on an admin
        connection to the new database. On any failure both are dropped."""
        try:
            if self.settings.tenant_createdb:
                with self._admin() as conn:
                    for statement in self._shared.postgres_database_rights(conn, spec.db_username):
                        conn.execute(statement)
            if spec.ephemeral:
                # fsync and full_page_writes belong to the whole server, which is not ours to weaken.
                with self._admin() as conn:
                    conn.execute(
                        sql.SQL("alter database {} set synchronous_commit = off").format(sql.Identifier(spec.db_name))
                    )
            if inside is not None:
                with self._admin(spec.db_name) as conn:
                    inside(conn)
            if self.settings.login_proof == "every" or not self._login_proven:
                # The server runs already: what a login could still find wrong (pg_hba, the listen
                # address, the probe host) is the same for every tenant unless pg_hba decides per
                # database or role. A login is a good part of a create's own time.
                wait_for_login(*self._probe, spec.credentials, timeout=self.settings.ready_timeout)
                self._login_proven = True
        except BaseException as e:
            self._drop(spec.db_name, spec.db_username, spec.instance_id, force=True)
            if isinstance(e, NotReady):
                raise BackendTimeout(
                    f"The new role could not log in to its database within {self.settings.ready_timeout:g} s "
                    f"({e}); role and database were dropped."
                ) from e
            raise
        return ProvisionedDatabase(ref=spec.db_name, host=self.host, port=self.port)

    def freeze(self, ref: str, credentials: Credentials, *, template_id: int) -> contract.FrozenTemplate:
        role = credentials.db_username
        with self._admin() as conn:
            frozen = freeze_tenant(
                conn, ref, role, deployment=self.deployment, template_id=template_id, connect=self._admin
            )
        log.info("froze database %s of role %s into template %s (%s)", ref, role, template_id, frozen)
        # The clones hand over the objects of the builder's role, which stays (NOLOGIN) with the template.
        return contract.FrozenTemplate(frozen, Credentials(ref, role, ""))

    def clone(self, template: contract.FrozenTemplate, spec: DatabaseSpec) -> ProvisionedDatabase:
        marker = tenant_marker(self.deployment, spec, datetime.now(UTC))
        with self._admin() as conn, template_lock(conn, template.artifact, exclusive=False):
            self._shared.close_shared_databases(conn)
            check_frozen(conn, template, self.deployment)
            # Nobody can connect to the template: its copy does not wait, nor fail on a session in it.
            copy = replace(spec, template=template.artifact)
            create_tenant(conn, copy, marker=marker, createdb=self.settings.tenant_createdb)
            made = self._finish(spec, None)
        log.info(
            "cloned template %s into database %s for instance %s", template.artifact, spec.db_name, spec.instance_name
        )
        return made

    def drop_template(self, artifact: str) -> None:
        with self._admin() as conn, template_lock(conn, artifact, exclusive=True):
            drop_frozen(conn, artifact, deployment=self.deployment, connect=self._admin)
        log.info("dropped template %s", artifact)

    def list_templates(self) -> dict[int, str]:
        with self._admin() as conn:
            return list_frozen(conn, self.deployment)

    def claim(self, ref: str, pooled: Credentials, spec: DatabaseSpec) -> ProvisionedDatabase:
        # The marker names the database, which list_objects reports as the object's ref.
        marker = tenant_marker(self.deployment, spec, datetime.now(UTC))
        with self._admin() as conn:
            self._shared.close_shared_databases(conn)
            # One transaction: when it fails, nothing changed and the object is still the pool's.
            # The role may create databases as configured now, like a cold create's (the setting may
            # have changed since the pool made it).
            createdb = sql.SQL("alter role {} {}").format(
                sql.Identifier(pooled.db_username),
                sql.SQL("createdb" if self.settings.tenant_createdb else "nocreatedb"),
            )
            before = [createdb, *self._shared.postgres_database_rights(conn, pooled.db_username)]
            superuser = self._shared.admin_is_superuser(conn)
            try:
                hand_over_tenant(conn, pooled, spec, marker=marker, before=before, superuser=superuser)
            except BackendError:
                # A login that is no superuser any more among the causes: asked again next time.
                self._shared.forget_superuser()
                raise
        try:
            if spec.ephemeral:
                with self._admin() as conn:
                    conn.execute(
                        sql.SQL("alter database {} set synchronous_commit = off").format(sql.Identifier(spec.db_name))
                    )
        except BaseException:
            # Handed over already: the names are this instance's now, so they are dropped here
            # (the caller only ever names the pool's).
            self._drop(spec.db_name, spec.db_username, spec.instance_id, force=True)
            raise
        log.info("claimed database %s as %s for instance %s", spec.db_name, spec.db_username, spec.instance_name)
        return ProvisionedDatabase(ref=spec.db_name, host=self.host, port=self.port)

    def can_claim(self, db_name: str, db_username: str) -> bool:
        return True

    def keep_ready(self, refs: list[str]) -> list[str]:
        """Nothing per pooled object: claims use the kept admin connections."""
        return []

    def delete(self, ref: str, credentials: Credentials, *, instance_id: int, force: bool = False) -> str | None:
        left = self._drop(ref, credentials.db_username, instance_id, force=force)
        log.info("dropped database %s and role %s (force=%s)", ref, credentials.db_username, force)
        return left

    def _drop(self, db_name: str, role: str, instance_id: int, *, force: bool) -> str | None:
        with self._admin() as conn:
            return drop_tenant(
                conn,
                db_name,
                role,
                deployment=self.deployment,
                instance_id=instance_id,
                force=force,
                connect=self._admin,
            )

    def _check_template(self, conn: psycopg.Connection, template: str) -> None:
        """Only what the cluster's admin designated: copying any other database (another tenant's,
        flagged a template by its owner; template1, open to every role) hands its contents over.
        A designated one is closed to PUBLIC here, and refused while a tenant holds anything in it:
        what a tenant planted there would be copied into every database made from it."""
        designated = ", ".join(self.settings.templates) or "none"
        if template not in self.settings.templates:
            raise InvalidRequest(
                f"{template!r} is not a template of this backend (designated by the cluster's admin: {designated}).",
                {"template": "is not one of this backend's templates"},
            )
        row = conn.execute(_TEMPLATE_STATE, {"name": template, "marker": ANY_MARKER}).fetchone()
        if row is not None and row[1] and not row[0]:
            # Open to every role: close it, and end the tenants' sessions that got in meanwhile.
            revoke_from_public(conn, template)
            end_tenant_sessions_in(conn, template)
            row = conn.execute(_TEMPLATE_STATE, {"name": template, "marker": ANY_MARKER}).fetchone()
        why = _unavailable(row)
        if why is not None:
            log.warning("template %s is designated but %s; refusing it", template, why)
            raise InvalidRequest(
                f"The template {template!r} is not available in the cluster.", {"template": "is not available"}
            )

    def exists(self, ref: str) -> bool:
        with self._admin() as conn:
            return database_exists(conn, ref)

    def describe(self, ref: str) -> ObjectDescription:
        if not self.exists(ref):
            return ObjectDescription(ObjectState.MISSING)
        return ObjectDescription(ObjectState.RUNNING, self.host, self.port)

    def list_objects(self) -> list[ManagedObject]:
        with self._admin() as conn:
            return list_tenants(conn, self.deployment)

    def health(self) -> None:
        with self._admin() as conn:
            conn.execute("select 1")

    @contextmanager
    def _admin(self, dbname: str | None = None) -> Iterator[psycopg.Connection]:
        """An autocommit admin connection: a kept one to the admin database, a new one to ``dbname``."""
        with ExitStack() as stack:
            try:
                if dbname:
                    conninfo = make_conninfo(self._conninfo, dbname=dbname)
                    conn = stack.enter_context(psycopg.connect(conninfo, autocommit=True))
                else:
                    conn = stack.enter_context(self._connections.connection())
            except psycopg.OperationalError as e:
                raise BackendUnavailable(
                    f"The PostgreSQL cluster at {self.host}:{self.port} cannot be reached with the admin login "
                    f"({str(e).strip()})."
                ) from e
            try:
                yield conn
            except psycopg.OperationalError as e:
                raise BackendUnavailable(f"The connection to the PostgreSQL cluster failed: {str(e).strip()}") from e
            except psycopg.Error as e:
                raise BackendError(f"The PostgreSQL cluster refused: {str(e).strip()}") from e


def _lock_down(spec: DatabaseSpec, conn: psycopg.Connection) -> None:
    """A new database, on an admin connection to it: as template0's copy on PostgreSQL 15."""
    lock_down_public_schema(conn)
    if spec.template is not None:
        adopt_template_objects(conn, spec.db_username)


def _unavailable(state: tuple[bool, bool, bool] | None) -> str | None:
    """Why a designated template (its _TEMPLATE_STATE) may not be copied, or None."""
    if state is None:
        return "missing"
    owned_by_tenant, open_to_public, holds_tenant_objects = state
    if owned_by_tenant:
        return "a tenant's database"
    if open_to_public:
        return "open to PUBLIC (the admin login cannot revoke that)"
    if holds_tenant_objects:
        return "holding objects or grants of a tenant's role"
    return None
