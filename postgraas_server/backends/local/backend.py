"""The local backend: a PostgreSQL cluster per instance, run as processes on the server's host.

Each instance lives in a directory of its own under the data root (see data_directories), as a
copy of a template cluster, run by its own postgres (see server_processes). Inside a cluster the
requested user is an ordinary LOGIN role owning its database; the superuser ``postgres`` can only
log in through the private socket (local trust), so a tenant never gets superuser powers (which
would run programs as the OS user owning every data dir).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from ...backend_settings import LocalBackendSettings
from ...errors import BackendError, BackendTimeout, InUse
from ..contract import Credentials, DatabaseSpec, ManagedObject, ObjectDescription, ObjectState, ProvisionedDatabase
from ..postgres.client import NotReady, wait_for_login
from ..postgres.own_server import OwnServerBackend
from ..postgres.tenants import count_sessions, create_tenant, require_pooled_database
from .data_directories import (
    RunAs,
    configure,
    configure_durability,
    default_data_root,
    home_of,
    port_of,
    prepare_data_root,
    read_meta,
    remove_home,
    run_as_user,
    write_meta,
)
from .server_processes import ADMIN_DATABASE, SUPERUSER, TENANT_DATABASE, ServerPrograms, connect_superuser

log = logging.getLogger(__name__)


class LocalBackend(OwnServerBackend):
    type_name = "local"

    def __init__(self, settings: LocalBackendSettings, deployment: str) -> None:
        super().__init__(settings, deployment)
        self.settings = settings
        self.data_root = Path(settings.data_root or default_data_root()).resolve()
        self._programs = ServerPrograms(settings, self.data_root)

    def why_no_pool(self) -> str | None:
        return None

    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        run_as = self._run_as()
        self._ensure_data_root(run_as)
        # Short and unique: the socket path must fit in sun_path; the name is in instance.json.
        ref = f"{spec.instance_id}-{secrets.token_hex(4)}"
        home = self.data_root / ref
        home.mkdir(mode=0o700)
        meta = {
            "deployment": self.deployment,
            "instance_id": spec.instance_id,
            "name": spec.instance_name,
            "db_name": spec.db_name,
            "db_username": spec.db_username,
            "port": None,
            "created_at": datetime.now(UTC).isoformat(),
        }
        try:
            # First of all, so that list_objects finds even a creation cut short.
            write_meta(home, meta)
            (home / "run").mkdir(mode=0o700)
            if run_as:
                for path in (home, home / "run"):
                    os.chown(path, run_as.uid, run_as.gid)
            # cp -a keeps the owner (the postgres user) and modes, and a copy is far quicker than initdb.
            template = self._programs.template(run_as)
            self._programs.run(["cp", "-a", template / "data", home / "data"], None, "copying the template")
            configure(home, self.settings.listen_address, spec.ephemeral)
            port = self._programs.start(home, run_as)
            write_meta(home, {**meta, "port": port})
            with self._superuser(home, port) as conn:
                # CREATEDB, as test runners need, but no superuser: every local instance runs as the
                # same OS user, and a superuser's server-side file access would reach the others'.
                create_tenant(conn, spec, existing_database=self._existing_database(conn, spec), createdb=True)
            wait_for_login(self._probe_host, port, spec.credentials, timeout=self.settings.ready_timeout)
        except BaseException as e:
            try:
                self._destroy(home, run_as)
            except BackendError:
                log.exception("could not clean up after the failed creation of %s", ref)
            if isinstance(e, NotReady):
                raise BackendTimeout(f"The new cluster did not accept a login in time ({e}); it was removed.") from e
            raise
        log.info("started local cluster %s for instance %s on port %s", ref, spec.instance_name, port)
        return ProvisionedDatabase(ref=ref, host=self.settings.advertised_host, port=port)

    # claim and keep_ready: OwnServerBackend's, through _connect_pooled and _make_ephemeral.

    def can_claim(self, db_name: str, db_username: str) -> bool:
        # A pooled database cannot be renamed to one the server has: made anew, it takes that one.
        return db_name not in (SUPERUSER, ADMIN_DATABASE, "template0")

    @staticmethod
    def _existing_database(conn: psycopg.Connection, spec: DatabaseSpec) -> str:
        """The database of the template that becomes the tenant's: the one made for it, or the one
        of the asked name where the server has it already (``postgres``; the other then goes)."""
        if spec.db_name in (SUPERUSER, TENANT_DATABASE):
            if spec.db_name == SUPERUSER:
                conn.execute(sql.SQL("drop database {}").format(sql.Identifier(TENANT_DATABASE)))
            return spec.db_name
        return TENANT_DATABASE

    def delete(self, ref: str, credentials: Credentials, *, instance_id: int, force: bool = False) -> None:
        # The ref starts with the instance id and ends with random bytes: it is never another's.
        home = home_of(self.data_root, ref)
        if not home.exists():
            return None
        run_as = self._run_as()
        if not force and self._programs.running(home, run_as):
            port = port_of(home)
            try:
                with self._superuser(home, port) as conn:
                    sessions = count_sessions(conn, credentials.db_name)
            except BackendError:
                sessions = 0  # it stopped meanwhile
            if sessions:
                raise InUse(sessions)
        self._destroy(home, run_as)
        log.info("removed local cluster %s (force=%s)", ref, force)
        return None

    def exists(self, ref: str) -> bool:
        return home_of(self.data_root, ref).is_dir()

    def describe(self, ref: str) -> ObjectDescription:
        home = home_of(self.data_root, ref)
        if not home.is_dir():
            return ObjectDescription(ObjectState.MISSING)
        port = port_of(home)
        state = ObjectState.RUNNING if self._programs.running(home, self._run_as()) else ObjectState.STOPPED
        return ObjectDescription(state, self.settings.advertised_host, port)

    def list_objects(self) -> list[ManagedObject]:
        objects = []
        with contextlib.suppress(FileNotFoundError):
            for home in self.data_root.iterdir():
                meta = read_meta(home)
                if meta.get("deployment") != self.deployment:
                    continue
                try:
                    created = datetime.fromisoformat(meta["created_at"])
                    credentials = Credentials(meta["db_name"], meta["db_username"], "")
                    instance_id = int(meta["instance_id"])
                    port = meta.get("port")
                    objects.append(ManagedObject(home.name, instance_id, created, credentials, port, meta.get("name")))
                except (KeyError, ValueError, TypeError):
                    log.warning("unreadable %s/instance.json; leaving it alone", home)
        return objects

    def health(self) -> None:
        self.bin_dir  # noqa: B018 - raises when the binaries are missing
        self._run_as()
        self._ensure_data_root(self._run_as())

    @property
    def bin_dir(self) -> Path:
        return self._programs.bin_dir

    # -- helpers ---------------------------------------------------------------------------

    def _run_as(self) -> RunAs | None:
        return run_as_user(self.settings.run_as_user)

    def _ensure_data_root(self, run_as: RunAs | None) -> None:
        prepare_data_root(self.data_root, run_as, self.settings.run_as_user)

    def _destroy(self, home: Path, run_as: RunAs | None) -> None:
        """Stop the server, end whatever else still works in the instance's directory, and remove
        everything of the instance."""
        self._programs.stop(home, run_as)
        remove_home(home)

    def _label(self, ref: str) -> str:
        return f"local cluster {ref}"

    def _connect_pooled(self, ref: str) -> psycopg.Connection:
        """The superuser, to a cluster still pooled. instance.json keeps the pool's names (the meta
        db has the instance's, and a claim does not rewrite the file on its way): a claim renames
        the pool's database, so a login that raced a claim does not stay in the tenant's cluster.
        A session of ours there would make the tenant's CREATE DATABASE fail (from template1)."""
        home = home_of(self.data_root, ref)
        conn = connect_superuser(home, port_of(home), connect_timeout=5)
        return require_pooled_database(conn, read_meta(home).get("db_name", ""), f"The local cluster {ref}")

    def _make_ephemeral(self, conn: psycopg.Connection, ref: str) -> None:
        # Into the file configure writes: ALTER SYSTEM would cost a statement and an fsync each.
        try:
            configure_durability(home_of(self.data_root, ref))
        except OSError as e:
            raise BackendError(f"The local cluster {ref} could not be configured: {e}") from e

    @contextlib.contextmanager
    def _superuser(self, home: Path, port: int | None) -> Iterator[psycopg.Connection]:
        """The superuser through the private socket; psycopg errors become BackendError."""
        try:
            conn = connect_superuser(home, port, connect_timeout=5)
            with conn:
                yield conn
        except psycopg.Error as e:
            raise BackendError(f"The local cluster {home.name} failed: {str(e).strip()}") from e
