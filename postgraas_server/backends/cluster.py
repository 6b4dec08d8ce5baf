"""The cluster backend: a role and a database per instance inside an existing PostgreSQL server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..config import ClusterBackendSettings
from ..errors import BackendError, BackendTimeout, BackendUnavailable
from .admin_connections import AdminConnections
from .base import Credentials, DatabaseSpec, ManagedObject, ObjectDescription, ObjectState, ProvisionedDatabase
from .postgres_client import CONNECT_TIMEOUT_S, NotReady, wait_for_login
from .tenants import (
    adopt_template_objects,
    create_tenant,
    database_exists,
    drop_tenant,
    hand_over_tenant,
    list_tenants,
    lock_down_public_schema,
    tenant_marker,
)

log = logging.getLogger(__name__)


class ClusterBackend:
    type_name = "cluster"
    supports_template = True
    supports_pool = True

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
        params = conninfo_to_dict(self._conninfo)
        admin_host = str(params.get("host") or "localhost")
        admin_port = int(params.get("port") or 5432)
        self.host = settings.advertised_host or admin_host
        self.port = settings.advertised_port or admin_port
        self._probe = (settings.probe_host or self.host, self.port)
        self._login_proven = False
        self._connections = AdminConnections(self._conninfo)

    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        marker = tenant_marker(self.deployment, spec, datetime.now(UTC))
        with self._admin() as conn:
            create_tenant(conn, spec, marker=marker)
            # PostgreSQL 15 and later no longer let PUBLIC create in the public schema: a copy of
            # template0 needs no connection of its own to lock it down.
            locked_down = spec.template is None and conn.info.server_version >= 150000
        try:
            if spec.ephemeral:
                # fsync and full_page_writes belong to the whole server, which is not ours to weaken.
                with self._admin() as conn:
                    conn.execute(
                        sql.SQL("alter database {} set synchronous_commit = off").format(sql.Identifier(spec.db_name))
                    )
            if not locked_down:
                with self._admin(spec.db_name) as conn:
                    lock_down_public_schema(conn)
                    if spec.template is not None:
                        adopt_template_objects(conn, spec.db_username)
            if self.settings.login_proof == "every" or not self._login_proven:
                # The server runs already: what a login could still find wrong (pg_hba, the listen
                # address, the probe host) is the same for every tenant unless pg_hba decides per
                # database or role. One login is a fifth of a create here (about 10 ms).
                wait_for_login(*self._probe, spec.credentials, timeout=self.settings.ready_timeout)
                self._login_proven = True
        except BaseException as e:
            with self._admin() as conn:
                drop_tenant(conn, spec.db_name, spec.db_username, force=True, connect=self._admin)
            if isinstance(e, NotReady):
                raise BackendTimeout(
                    f"The new role could not log in to its database within {self.settings.ready_timeout:g} s "
                    f"({e}); role and database were dropped."
                ) from e
            raise
        log.info("created database %s and role %s for instance %s", spec.db_name, spec.db_username, spec.instance_name)
        return ProvisionedDatabase(ref=spec.db_name, host=self.host, port=self.port)

    def claim(self, ref: str, pooled: Credentials, spec: DatabaseSpec) -> ProvisionedDatabase:
        # The marker names the database, which list_objects reports as the object's ref.
        marker = tenant_marker(self.deployment, spec, datetime.now(UTC))
        with self._admin() as conn:
            # One transaction: when it fails, nothing changed and the object is still the pool's.
            hand_over_tenant(conn, pooled, spec, marker=marker)
        try:
            if spec.ephemeral:
                with self._admin() as conn:
                    conn.execute(
                        sql.SQL("alter database {} set synchronous_commit = off").format(sql.Identifier(spec.db_name))
                    )
        except BaseException:
            # Handed over already: the names are this instance's now, so they are dropped here
            # (the caller only ever names the pool's).
            with self._admin() as conn:
                drop_tenant(conn, spec.db_name, spec.db_username, force=True, connect=self._admin)
            raise
        log.info("claimed database %s as %s for instance %s", spec.db_name, spec.db_username, spec.instance_name)
        return ProvisionedDatabase(ref=spec.db_name, host=self.host, port=self.port)

    def can_claim(self, db_name: str, db_username: str) -> bool:
        return True

    def keep_ready(self, refs: list[str]) -> list[str]:
        """Nothing per pooled object: claims use the kept admin connections."""
        return []

    def delete(self, ref: str, credentials: Credentials, *, force: bool = False) -> None:
        with self._admin() as conn:
            drop_tenant(conn, ref, credentials.db_username, force=force, connect=self._admin)
        log.info("dropped database %s and role %s (force=%s)", ref, credentials.db_username, force)

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
