"""What the docker and swarm backends share: instances are containers of the (prepared) image, each
its own server, whose pooled ones are logged in to with a password derived from the pool secret
and handed over as the image's bootstrap superuser."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import docker.errors
import psycopg
import requests
from psycopg import sql

from ...backend_settings import DockerBackendSettings, SwarmBackendSettings
from ...errors import BackendError, BackendUnavailable, Conflict
from ..contract import DatabaseSpec
from ..postgres.client import connect_as_tenant
from ..postgres.handover_connections import NotClaimable
from ..postgres.own_server import EPHEMERAL_SETTINGS, OwnServerBackend
from ..postgres.pool_secret import pool_secret
from ..postgres.tenants import OUR_SESSIONS, Statement, require_pooled_database
from .containers import engine_client_factory
from .prepared_image import BOOTSTRAP_USER

log = logging.getLogger(__name__)

# Opens the files of every table and of its indexes once: planning a query of a table opens them and
# reads no rows (pg_relation_size and the like only stat the files).
_OPEN_EVERY_RELATION = """
do $$
declare
    relation regclass;
begin
    for relation in
        select c.oid::regclass from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'm', 'p') and c.relpersistence <> 't'
          and n.nspname not in ('pg_catalog', 'information_schema')
    loop
        execute format('explain select 1 from %s', relation);
    end loop;
end
$$
"""

MANAGED_LABEL = "postgraas.managed"
NAME_LABEL = "postgraas.name"
INSTANCE_ID_LABEL = "postgraas.instance_id"
DEPLOYMENT_LABEL = "postgraas.deployment"


class ImageBackend(OwnServerBackend):
    """An OwnServerBackend whose instances are containers of the configured image, made through a
    Docker API (an engine's, a Swarm manager's) with an injected docker SDK client (a fake one in
    unit tests)."""

    # Who answers the API calls, in messages: "Docker", "The Swarm manager".
    api_name: ClassVar[str]
    # What cannot be reached, in messages: "The Docker engine", "The Swarm manager".
    api_host_name: ClassVar[str]

    def __init__(
        self,
        settings: DockerBackendSettings | SwarmBackendSettings,
        deployment: str,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(settings, deployment)
        self._pool_secret = pool_secret()
        self._client_factory = client_factory or engine_client_factory(settings)
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        # Created on first use, and again after a failure: the engine may be down when the
        # server starts (docker-py asks the engine for its API version on construction).
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    @contextmanager
    def _api(self, action: str) -> Iterator[None]:
        """Translate docker SDK failures into the service's errors, naming what was tried."""
        try:
            yield
        except docker.errors.APIError as e:
            if e.status_code == 409:
                raise Conflict(f"{self.api_name} refused to {action}: {e.explanation}") from e
            if e.status_code == 503:
                # A swarm call to a node that is no manager, or to a manager without a quorum.
                raise BackendUnavailable(f"{self.api_name} could not {action}: {e.explanation}") from e
            raise BackendError(f"{self.api_name} failed to {action}: {e.explanation or e}") from e
        except (docker.errors.DockerException, requests.RequestException) as e:
            with self._client_lock:
                self._client = None
            raise BackendUnavailable(
                f"{self.api_host_name} cannot be reached, so the server could not {action}. "
                f"Check that it is running and that base_url is right ({e})."
            ) from e

    def _labels(self, extra: dict[str, str], instance_id: int, instance_name: str) -> dict[str, str]:
        """The labels of an instance's object: what list_objects finds it by."""
        return {
            **extra,
            MANAGED_LABEL: "true",
            DEPLOYMENT_LABEL: self.deployment,
            NAME_LABEL: instance_name,
            INSTANCE_ID_LABEL: str(instance_id),
        }

    # claim and keep_ready: OwnServerBackend's, acting as the image's bootstrap superuser so that
    # the tenant's own role (the pooled login, a superuser) can be renamed.

    def _before_hand_over(self) -> Sequence[Statement]:
        return [sql.SQL("set session authorization {}").format(sql.Identifier(BOOTSTRAP_USER))]

    def _make_ephemeral(self, conn: psycopg.Connection, ref: str) -> None:
        # ALTER SYSTEM, each outside a transaction, so one statement at a time.
        for setting in EPHEMERAL_SETTINGS:
            conn.execute(sql.SQL("alter system set {} = off").format(sql.Identifier(setting)))

    def can_claim(self, db_name: str, db_username: str) -> bool:
        # The image's superuser and its database: a create asking for them is made anew (the
        # prepared wrapper then hands them to it, as the official image would).
        return BOOTSTRAP_USER not in (db_name, db_username)

    def _pool_password(self, instance_id: int, username: str) -> str:
        """A pooled instance's password, which every process with the same pool secret derives again."""
        message = f"{self.deployment}:{instance_id}:{username}".encode()
        return base64.urlsafe_b64encode(hmac.new(self._pool_secret, message, hashlib.sha256).digest()).decode()

    def _open_every_relation(self, host: str, port: int, spec: DatabaseSpec) -> None:
        """For a pooled clone of a template, made ahead: every table's and index's files opened once.
        The template's files are in an image layer, and the first open of each in a container
        (PostgreSQL opens them for writing) copies it up into the container's own layer: done now,
        that takes the pool's time instead of the first queries' of the test that claims the clone.
        A failure only leaves it to those queries."""
        try:
            with connect_as_tenant(host, port, spec.credentials) as conn:
                conn.execute(_OPEN_EVERY_RELATION)
        except psycopg.Error as e:
            log.warning("could not open the relations of pooled clone %s ahead: %s", spec.instance_name, e)

    def _login_pooled(
        self, ref: str, host: str, port: int, instance_id: int, env: dict[str, str]
    ) -> psycopg.Connection:
        """A login as the pooled instance's tenant, to the image's own database. Raises
        NotClaimable when the password is refused while the instance is still pooled: it was
        made under another POSTGRAAS_POOL_SECRET (by this server before a restart, say)."""
        username = env.get("POSTGRES_USER", "")
        try:
            conn = psycopg.connect(
                host=host,
                port=port,
                user=username,
                password=self._pool_password(instance_id, username),
                dbname=BOOTSTRAP_USER,
                autocommit=True,
                connect_timeout=5,
                application_name=OUR_SESSIONS,
            )
        except psycopg.OperationalError as e:
            if "password authentication failed" in str(e):
                raise NotClaimable(f"pooled {self._label(ref)} refuses this server's pool password") from e
            raise
        return require_pooled_database(conn, env.get("POSTGRES_DB", ""), f"Pooled {self._label(ref)}")
