"""The local backend: a PostgreSQL cluster per instance, run as processes on the server's host.

Each instance lives in a directory of its own under the data root (see data_directories), as a
copy of a template cluster, run by its own postgres (see server_processes). Inside a cluster the
requested user is an ordinary LOGIN role owning its database; the superuser ``postgres`` can only
log in through the private socket (local trust), so a tenant never gets superuser powers (which
would run programs as the OS user owning every data dir).

A template is an instance's directory frozen (its server shut down, moved aside; see templates);
a clone is made as an instance is, from the template's cluster instead of the initdb one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from ...backend_settings import LocalBackendSettings
from ...errors import BackendError, BackendTimeout, InUse
from ..contract import (
    Credentials,
    DatabaseSpec,
    FrozenTemplate,
    ManagedObject,
    ObjectDescription,
    ObjectState,
    ProvisionedDatabase,
)
from ..postgres.client import NotReady, wait_for_login
from ..postgres.own_server import OwnServerBackend
from ..postgres.tenants import (
    count_sessions,
    create_tenant,
    database_exists,
    hand_over_tenant,
    require_pooled_database,
    role_exists,
)
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
from .templates import TemplateStore

log = logging.getLogger(__name__)


class LocalBackend(OwnServerBackend):
    type_name = "local"

    def __init__(self, settings: LocalBackendSettings, deployment: str) -> None:
        super().__init__(settings, deployment)
        self.settings = settings
        self.data_root = Path(settings.data_root or default_data_root()).resolve()
        self._programs = ServerPrograms(settings, self.data_root)
        self._templates = TemplateStore(self.data_root, deployment)
        # The clusters (the initdb one, templates) whose copies a tenant's login was proven into.
        self._logins_proven: set[Path] = set()

    def why_no_pool(self) -> str | None:
        return None

    def why_no_template(self) -> str | None:
        return None

    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        if spec.template is not None:
            # A database an admin designated is the cluster backend's; here templates are clones.
            raise BackendError("The local backend makes instances from its own templates only (clone).")
        run_as = self._run_as()
        self._ensure_data_root(run_as)
        template = self._programs.template(run_as)

        def make_tenant(conn: psycopg.Connection) -> None:
            # CREATEDB, as test runners need, but no superuser: every local instance runs as the
            # same OS user, and a superuser's server-side file access would reach the others'.
            create_tenant(conn, spec, existing_database=self._existing_database(conn, spec), createdb=True)

        return self._provision(spec, run_as, template / "data", make_tenant)

    def clone(self, template: FrozenTemplate, spec: DatabaseSpec) -> ProvisionedDatabase:
        run_as = self._run_as()
        self._ensure_data_root(run_as)
        source = self._templates.data_of(template.artifact)

        def take_over_tenant(conn: psycopg.Connection) -> None:
            if spec.db_name == SUPERUSER and template.tenant.db_name != SUPERUSER:
                # As in create: the server's own "postgres" goes, and the tenant's takes its name.
                conn.execute(sql.SQL("drop database {}").format(sql.Identifier(SUPERUSER)))
            # From the admin database, the only session: the tenant's database can be renamed.
            hand_over_tenant(conn, template.tenant, spec, own_server=True)

        return self._provision(spec, run_as, source, take_over_tenant, f" from template {template.artifact}")

    def _provision(
        self,
        spec: DatabaseSpec,
        run_as: RunAs | None,
        source: Path,
        set_up_tenant: Callable[[psycopg.Connection], None],
        origin: str = "",
    ) -> ProvisionedDatabase:
        """A new instance as a copy of the cluster ``source``, started, its tenant set up by
        ``set_up_tenant`` on the superuser's connection; on any failure everything is removed."""
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
            self._programs.run(["cp", "-a", source, home / "data"], None, f"copying {source.parent.name}")
            configure(home, self.settings.listen_address, spec.ephemeral)
            port = self._programs.start(home, run_as)
            write_meta(home, {**meta, "port": port})
            with self._superuser(home, port) as conn:
                set_up_tenant(conn)
            if self.settings.login_proof == "every" or source not in self._logins_proven:
                # Every copy of one cluster, configured and started alike, lets its tenant in alike
                # (pg_hba, listen address, probe host; a template's settings of the database and the
                # role): proven once per copied cluster and process. A login is a good part of a create.
                wait_for_login(self._probe_host, port, spec.credentials, timeout=self.settings.ready_timeout)
                self._logins_proven.add(source)
        except BaseException as e:
            try:
                self._destroy(home, run_as)
            except BackendError:
                log.exception("could not clean up after the failed creation of %s", ref)
            if isinstance(e, NotReady):
                raise BackendTimeout(f"The new cluster did not accept a login in time ({e}); it was removed.") from e
            raise
        log.info("started local cluster %s%s for instance %s on port %s", ref, origin, spec.instance_name, port)
        return ProvisionedDatabase(ref=ref, host=self.settings.advertised_host, port=port)

    def freeze(self, ref: str, credentials: Credentials, *, template_id: int) -> FrozenTemplate:
        home = home_of(self.data_root, ref)
        if read_meta(home).get("deployment") != self.deployment:
            raise BackendError(f"The local cluster {ref} does not exist.")
        artifact = self._templates.artifact_for(template_id)
        if self._templates.exists(artifact):
            raise BackendError(f"The local template {artifact} exists already.")
        run_as = self._run_as()
        port = port_of(home)
        with self._superuser(home, port) as conn:
            # A template without its tenant would only make clones that fail.
            if not (role_exists(conn, credentials.db_username) and database_exists(conn, credentials.db_name)):
                raise BackendError(f"The local cluster {ref} has no tenant {credentials.db_username!r}.")
        try:
            # Fast: every session ends. Clean: the clones' copies start without recovery.
            self._programs.shut_down(home, run_as)
            self._templates.move_in(home, template_id, credentials, run_as)
        except BaseException as e:
            self._restart(home, run_as, port)
            if isinstance(e, OSError):
                raise BackendError(f"The local cluster {ref} could not become a template: {e}") from e
            raise
        try:
            frozen = self._templates.path_of(artifact)
            # A builder may have run ephemeral: its clones are durable unless they ask otherwise.
            configure_durability(frozen, durable=True)
            # What an ephemeral builder wrote may not be on disk yet, nor is the rename.
            self._programs.run(["sync", "-f", frozen / "data"], None, "syncing the template")
        except BaseException as e:
            self._templates.remove(artifact)
            if isinstance(e, OSError):
                raise BackendError(f"The local template {artifact} could not be configured: {e}") from e
            raise
        log.info("froze local cluster %s into template %s", ref, artifact)
        return FrozenTemplate(artifact, Credentials(credentials.db_name, credentials.db_username, ""))

    def drop_template(self, artifact: str) -> None:
        self._templates.remove(artifact)
        log.info("removed local template %s", artifact)

    def list_templates(self) -> dict[int, str]:
        return self._templates.list()

    def _restart(self, home: Path, run_as: RunAs | None, port: int | None) -> None:
        """After a freeze failed: the instance runs again, on its port where it is free."""
        try:
            if home.is_dir() and not self._programs.running(home, run_as):
                started = self._programs.start(home, run_as, prefer=port)
                write_meta(home, {**read_meta(home), "port": started})
        except (BackendError, NotReady, OSError):
            log.exception("the local cluster %s could not be started again after a failed freeze", home.name)

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
                if home.name.startswith("."):
                    continue  # the backend's own: the template cluster, the templates (no instance.json either)
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
        """End the server and whatever else still works in the instance's directory, and remove
        everything of the instance."""
        self._programs.discard(home)
        # Thousands of files: removed by a program below the API, not in the API's thread (ServerPrograms.run).
        remove_home(home, remove_tree=self._programs.remove_tree)

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
