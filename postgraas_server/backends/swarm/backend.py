"""The swarm backend: each instance is a Docker Swarm service of one task, of the (prepared)
image, on a node Swarm chooses, published in host mode on a port Swarm picks. Everything is
done through one manager's API."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import docker
import docker.errors
import psycopg
import requests

from ...backend_settings import SwarmBackendSettings
from ...errors import BackendError, BackendTimeout, BackendUnavailable, CapacityExhausted, Conflict, InUse
from ...scram import scram_sha256_verifier
from ..contract import Credentials, DatabaseSpec, ManagedObject, ObjectDescription, ObjectState, ProvisionedDatabase
from ..docker.containers import created_at, environment_of
from ..docker.prepared_backend import DEPLOYMENT_LABEL, INSTANCE_ID_LABEL, NAME_LABEL, ImageBackend
from ..docker.prepared_image import ADMIN_VERIFIER_ENV, BOOTSTRAP_USER, VERIFIER_ENV
from ..postgres.client import NotReady, count_other_sessions, wait_for_login
from .service_image import ServiceImage
from .services import ENDED_STATES, Node, NodeBook, TaskPlace, service_options, task_place, why_lost

log = logging.getLogger(__name__)

TASK_POLL_S = 0.2
# Between login attempts, whether the task ended (a failed start) is asked at most this often.
TASK_CHECK_S = 0.5
# What a 503 for a create Swarm cannot place tells clients to wait.
PLACEMENT_RETRY_AFTER_S = 30
# A removed service's task gets the image's stop signal (SIGINT: postgres's fast shutdown), then SIGKILL
# after Swarm's grace period.
STOP_TIMEOUT_S = 15.0


class TaskEnded(Exception):
    """The service's task stopped while we waited for its database."""


class SwarmBackend(ImageBackend):
    type_name = "swarm"
    api_name = "The Swarm manager"
    api_host_name = "The Swarm manager"

    def __init__(
        self, settings: SwarmBackendSettings, deployment: str, client_factory: Callable[[], Any] | None = None
    ) -> None:
        super().__init__(settings, deployment, client_factory)
        self.settings = settings
        self._image = ServiceImage(settings, self._build_options)
        self._nodes = NodeBook(settings.advertise_label)
        # Pooled services' client-facing addresses, found when their hand-over connection was made.
        self._advertised: dict[str, str] = {}
        self._manager_seen = False

    def why_no_pool(self) -> str | None:
        # A claim acts as the image's own superuser, which only the prepared image keeps apart from
        # the tenant; and every node must run that one image, so it comes from the registry.
        if self.settings.prepare_image and self.settings.registry:
            return None
        return "the swarm backend keeps a warm pool of the prepared image only, which needs registry and prepare_image"

    def why_no_template(self) -> str | None:
        return (
            "a template is an instance's container committed into an image, and the Swarm manager's API cannot "
            "commit a task's container (only the engine of the node running it can)"
        )

    def create(self, spec: DatabaseSpec) -> ProvisionedDatabase:
        if spec.pooled:
            spec = replace(spec, db_pwd=self._pool_password(spec.instance_id, spec.db_username), db_pwd_verifier=None)
        if not self._manager_seen:
            # Before an image is made and pushed for nothing: base_url must name a manager.
            self.health()
            self._manager_seen = True
        with self._api("find the image"):
            image, prepared = self._image.resolve(self.client)
        if spec.pooled and not prepared:
            raise BackendError(
                f"The warm pool needs the prepared image of {self.settings.image}, which is not available."
            )
        if prepared:
            # No plaintext password: the prepared wrapper creates the tenant with its SCRAM verifier.
            env = {
                "POSTGRES_USER": spec.db_username,
                "POSTGRES_DB": spec.db_name,
                VERIFIER_ENV: spec.scram_verifier(),
                # So that a delete without db_pwd (a token's) can count the open sessions over TCP.
                ADMIN_VERIFIER_ENV: scram_sha256_verifier(self._admin_password(spec.instance_id)),
            }
        else:
            env = {"POSTGRES_USER": spec.db_username, "POSTGRES_PASSWORD": spec.db_pwd, "POSTGRES_DB": spec.db_name}
        options = service_options(
            self.settings,
            name=f"postgraas-{_service_safe(spec.instance_name)[:45]}-{secrets.token_hex(3)}",
            image=image,
            env=env,
            labels=self._labels(self.settings.labels, spec.instance_id, spec.instance_name),
            ephemeral=spec.ephemeral,
        )
        with self._api("create the service"):
            service_id = self.client.services.create(**options).id
        try:
            node, port = self._wait_until_running(service_id)
            wait_for_login(
                node.address,
                port,
                spec.credentials,
                timeout=self.settings.ready_timeout,
                still_starting=self._task_watch(service_id),
            )
        except BaseException as e:
            self._remove_quietly(service_id, "after a failed create")
            if isinstance(e, NotReady):
                raise BackendTimeout(
                    f"The database of swarm service {service_id[:12]} was not ready within "
                    f"{self.settings.ready_timeout:g} s (last error: {e}); the service was removed."
                ) from e
            if isinstance(e, TaskEnded):
                if "rejected" in str(e):
                    # A node could not start it: the image may be gone from the registry; push it again.
                    self._image.forget()
                raise BackendError(
                    f"The task of swarm service {service_id[:12]} stopped before its database was ready ({e}); "
                    "the service was removed."
                ) from e
            raise
        log.info(
            "created swarm service %s for %s on node %s, port %s",
            service_id[:12],
            spec.instance_name,
            node.hostname,
            port,
        )
        return ProvisionedDatabase(ref=service_id, host=node.advertised, port=port)

    def delete(self, ref: str, credentials: Credentials, *, instance_id: int, force: bool = False) -> None:
        # A service id is never reused: the ref is this instance's service or none at all.
        with self._api("remove the service"):
            try:
                service = self.client.services.get(ref)
            except docker.errors.NotFound:
                return None
            if not force:
                self._refuse_if_in_use(ref, credentials, instance_id)
            self._advertised.pop(ref, None)
            try:
                service.remove()
            except docker.errors.NotFound:
                return None
            self._wait_until_stopped(ref)
        log.info("removed swarm service %s (force=%s)", ref[:12], force)
        return None

    def exists(self, ref: str) -> bool:
        with self._api("look up the service"):
            try:
                self.client.api.inspect_service(ref)
            except docker.errors.NotFound:
                return False
        return True

    def describe(self, ref: str) -> ObjectDescription:
        with self._api("look up the service"):
            try:
                self.client.api.inspect_service(ref)
            except docker.errors.NotFound:
                return ObjectDescription(ObjectState.MISSING)
            where = self._running_at(ref)
        if where is None:
            return ObjectDescription(ObjectState.STOPPED)
        node, port = where
        return ObjectDescription(ObjectState.RUNNING, node.advertised, port)

    def health(self) -> None:
        with self._api("reach the manager"):
            swarm = self.client.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise BackendUnavailable(
                f"The Docker engine at {self.settings.base_url or 'DOCKER_HOST'} (base_url) is not a Swarm manager "
                f"(its swarm state is {swarm.get('LocalNodeState') or 'unknown'}); point base_url at a manager."
            )

    def list_objects(self) -> list[ManagedObject]:
        with self._api("list the services"):
            services = self.client.api.services(filters={"label": f"{DEPLOYMENT_LABEL}={self.deployment}"})
            tasks: dict[str, list[dict[str, Any]]] = {}
            ids = [s["ID"] for s in services]
            for start in range(0, len(ids), 100):
                for task in self._tasks(ids[start : start + 100]):
                    tasks.setdefault(task.get("ServiceID", ""), []).append(task)
            nodes = self._nodes.refresh(self.client)
        objects = []
        for service in services:
            labels = (service.get("Spec") or {}).get("Labels") or {}
            try:
                instance_id = int(labels[INSTANCE_ID_LABEL])
            except (KeyError, ValueError):
                continue
            place = task_place(tasks.get(service["ID"], []))
            objects.append(
                ManagedObject(
                    service["ID"],
                    instance_id,
                    created_at(service.get("CreatedAt")),
                    Credentials("", "", ""),
                    port=place.port if place and place.state == "running" else None,
                    name=labels.get(NAME_LABEL),
                    lost=why_lost(place, nodes),
                )
            )
        return objects

    # -- the pool's hand-over ----------------------------------------------------------------

    def _connect_pooled(self, ref: str) -> psycopg.Connection:
        with self._api("look up the pooled service"):
            spec = self.client.api.inspect_service(ref).get("Spec") or {}
            where = self._running_at(ref)
        if where is None:
            raise BackendError(f"The task of pooled swarm service {ref[:12]} does not run")
        node, port = where
        self._advertised[ref] = node.advertised
        env = environment_of((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {})
        instance_id = int((spec.get("Labels") or {}).get(INSTANCE_ID_LABEL, "0"))
        return self._login_pooled(ref, node.address, port, instance_id, env)

    def _client_host(self, ref: str) -> str:
        host = self._advertised.pop(ref, None)
        return host if host is not None else self.describe(ref).host or ""

    def _label(self, ref: str) -> str:
        return f"swarm service {ref[:12]}"

    # -- helpers ------------------------------------------------------------------------------

    def _wait_until_running(self, service_id: str) -> tuple[Node, int]:
        """The node and port of the service's task once it runs. Raises CapacityExhausted (with
        Swarm's reason) when no node takes it within placement_timeout, TaskEnded when it stops."""
        started = time.monotonic()
        placed_at: float | None = None
        while True:
            place = self._place(service_id)
            now = time.monotonic()
            if place is not None and place.ended:
                raise TaskEnded(f"{place.state}: {place.reason}")
            if place is None or not place.placed:
                if now - started > self.settings.placement_timeout:
                    reason = (place.reason if place else "") or "Swarm made no task for it"
                    raise CapacityExhausted(
                        f"Swarm could not place the instance on any node within "
                        f"{self.settings.placement_timeout:g} s: {reason}. Nothing was left behind.",
                        retry_after=PLACEMENT_RETRY_AFTER_S,
                    )
            else:
                placed_at = placed_at or now
                if place.state == "running" and place.port and place.node_id:
                    with self._api("look up the node"):
                        node = self._nodes.get(self.client, place.node_id)
                    if node is None:
                        raise TaskEnded(f"its node {place.node_id[:12]} left the swarm")
                    return node, place.port
                if now - placed_at > self.settings.ready_timeout:
                    raise NotReady(f"the task was still {place.state} ({place.reason})")
            time.sleep(TASK_POLL_S)

    def _wait_until_stopped(self, service_id: str) -> None:
        """Return once the removed service's task stopped on its node (the node's agent stops it
        after the removal is answered), or its node is down (it stops when the node returns)."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            # Listed whole: filtered by a service removed already, the manager answers 404.
            tasks = self._tasks_listed_whole([service_id])
            live = [t for t in tasks if (t.get("Status") or {}).get("State") not in ENDED_STATES]
            if not any(self._on_node_not_down(t) for t in live):
                return
            time.sleep(TASK_POLL_S)
        log.warning("the task of removed swarm service %s did not stop within %g s", service_id[:12], STOP_TIMEOUT_S)

    def _on_node_not_down(self, task: dict[str, Any]) -> bool:
        node = self._nodes.get(self.client, task.get("NodeID") or "")
        return node is not None and not node.down

    def _tasks(self, service_ids: list[str]) -> list[dict[str, Any]]:
        """The tasks of these services. Filtered by service, the manager answers 404 when one of
        them was removed meanwhile (by another request or replica): then all tasks, filtered here."""
        try:
            return list(self.client.api.tasks(filters={"service": service_ids}))
        except docker.errors.NotFound:
            return self._tasks_listed_whole(service_ids)

    def _tasks_listed_whole(self, service_ids: list[str]) -> list[dict[str, Any]]:
        wanted = set(service_ids)
        return [t for t in self.client.api.tasks() if t.get("ServiceID") in wanted]

    def _place(self, service_id: str) -> TaskPlace | None:
        with self._api("look up the service's task"):
            return task_place(self._tasks([service_id]))

    def _running_at(self, ref: str) -> tuple[Node, int] | None:
        """The node and port of the service's task while it runs on a node that is not down (one
        out of touch for a moment, unknown or disconnected, still runs it)."""
        place = self._place(ref)
        if place is None or place.state != "running" or not place.node_id or not place.port:
            return None
        with self._api("look up the node"):
            node = self._nodes.get(self.client, place.node_id)
        return (node, place.port) if node is not None and not node.down else None

    def _task_watch(self, service_id: str) -> Callable[[], None]:
        last_check = time.monotonic()

        def check() -> None:
            nonlocal last_check
            if time.monotonic() - last_check >= TASK_CHECK_S:
                last_check = time.monotonic()
                place = self._place(service_id)
                if place is not None and place.ended:
                    raise TaskEnded(f"{place.state}: {place.reason}")

        return check

    def _refuse_if_in_use(self, ref: str, credentials: Credentials, instance_id: int) -> None:
        where = self._running_at(ref)
        if where is None:
            return  # nothing runs, so nobody is connected
        node, port = where
        if credentials.db_pwd:
            login, how = credentials, "with its credentials"
        else:
            # A token's delete brings no password: the image's superuser, whose password this
            # server derives (the manager's API cannot run a command in the task).
            admin_password = self._admin_password(instance_id)
            login, how = Credentials(BOOTSTRAP_USER, BOOTSTRAP_USER, admin_password), "as its superuser"
        try:
            sessions = count_other_sessions(node.address, port, login)
        except psycopg.Error as e:
            raise Conflict(
                f"Could not check the instance for open sessions {how} ({str(e).strip()}); "
                'delete with "force": true to remove it anyway.'
            ) from e
        if sessions:
            raise InUse(sessions)

    def _admin_password(self, instance_id: int) -> str:
        return self._pool_password(instance_id, BOOTSTRAP_USER)

    def _remove_quietly(self, service_id: str, why: str) -> None:
        try:
            self.client.services.get(service_id).remove()
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, requests.RequestException):
            log.exception("could not remove swarm service %s %s", service_id[:12], why)

    def _build_options(self) -> dict[str, Any]:
        """For the prepared image's build container on the manager's engine."""
        return dict(
            mem_limit=self.settings.memory_limit,
            nano_cpus=int(self.settings.cpu_limit * 1e9),
            security_opt=["no-new-privileges"],
        )


def _service_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", name)
