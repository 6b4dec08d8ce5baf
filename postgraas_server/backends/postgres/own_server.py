"""What the backends share whose every instance has a PostgreSQL server of its own (local, docker):
the pool's hand-over over a kept superuser connection, and the durability an ephemeral instance
turns off."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence

import psycopg

from ...backend_settings import DockerBackendSettings, LocalBackendSettings, SwarmBackendSettings
from ...errors import BackendError
from ..contract import Backend, Credentials, DatabaseSpec, ProvisionedDatabase
from .handover_connections import HandOverConnections
from .tenants import END_OTHER_SESSIONS, HAND_OVER_WARM_UP, Statement, hand_over_tenant

log = logging.getLogger(__name__)

# What "durability": "ephemeral" turns off: the server is the instance's own, so a crash may lose
# or corrupt only what asked for it.
EPHEMERAL_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")


class OwnServerBackend(Backend):
    """A backend that runs a PostgreSQL server per instance, whose pooled instances are handed over
    through a superuser connection each server process keeps to them (see HandOverConnections)."""

    def __init__(
        self, settings: LocalBackendSettings | DockerBackendSettings | SwarmBackendSettings, deployment: str
    ) -> None:
        self.deployment = deployment
        # Where this server connects to the databases it made, to prove a login.
        self._probe_host = settings.probe_host or settings.advertised_host
        self._advertised_host = settings.advertised_host
        self._handover = HandOverConnections(
            self._connect_pooled, warm_up=HAND_OVER_WARM_UP, end_others=END_OTHER_SESSIONS
        )

    @abstractmethod
    def _connect_pooled(self, ref: str) -> psycopg.Connection:
        """A new autocommit superuser connection to the pooled object ``ref``'s server, refused
        (with an error) once the object is claimed; raises NotClaimable when this process can
        never claim it."""

    @abstractmethod
    def _make_ephemeral(self, conn: psycopg.Connection, ref: str) -> None:
        """Turn EPHEMERAL_SETTINGS off in ``ref``'s server, on its next configuration reload."""

    @abstractmethod
    def _label(self, ref: str) -> str:
        """``ref``'s object for messages ("local cluster 7-0a1b2c3d")."""

    def _client_host(self, ref: str) -> str:
        """Where clients reach ``ref``'s server (a swarm instance: its node's address)."""
        return self._advertised_host

    def _before_hand_over(self) -> Sequence[Statement]:
        """Statements the hand-over's transaction starts with."""
        return ()

    def why_no_template(self) -> str | None:
        return (
            "every instance is a server of its own, with no database to copy from (templates are the cluster backend's)"
        )

    def claim(self, ref: str, pooled: Credentials, spec: DatabaseSpec) -> ProvisionedDatabase:
        """Hand over role and database in one transaction on the kept connection. Every other
        session of ours (another server process's kept one) is ended after it."""
        try:
            # After the commit every other session of ours ends, a login that raced the hand-over
            # too (a later one fails: _connect_pooled refuses a claimed object).
            with self._handover.claiming(ref) as conn:
                port = conn.info.port
                hand_over_tenant(conn, pooled, spec, before=self._before_hand_over(), own_server=True)
                if spec.ephemeral:
                    # The server was started durable; all three settings take effect on a reload.
                    self._make_ephemeral(conn, ref)
                    conn.execute("select pg_reload_conf()")
        except psycopg.Error as e:
            raise BackendError(f"Handing over the pooled {self._label(ref)} failed: {str(e).strip()}") from e
        log.info("claimed %s for instance %s on port %s", self._label(ref), spec.instance_name, port)
        return ProvisionedDatabase(ref=ref, host=self._client_host(ref), port=port)

    def keep_ready(self, refs: list[str]) -> list[str]:
        """Hold a superuser connection to each of the pooled ``refs``, for their claims; returns
        those that refuse this process's login."""
        return self._handover.keep(refs)
