"""Where a swarm service's one task is, through the manager's API: waiting for it to run, to
stop, and watching it while its database starts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import docker.errors

from ...backend_settings import SwarmBackendSettings
from ...errors import CapacityExhausted
from ..postgres.client import NotReady
from .services import ENDED_STATES, Node, NodeBook, TaskPlace, task_place

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


class ServiceTasks:
    """The tasks of the backend's services. ``api`` is the backend's translation of the docker
    SDK's errors."""

    def __init__(
        self,
        settings: SwarmBackendSettings,
        client: Callable[[], Any],
        nodes: NodeBook,
        api: Callable[[str], AbstractContextManager[None]],
    ) -> None:
        self.settings = settings
        self._client = client
        self._nodes = nodes
        self._api = api

    def wait_until_running(self, service_id: str) -> tuple[Node, int]:
        """The node and port of the service's task once it runs. Raises CapacityExhausted (with
        Swarm's reason) when no node takes it within placement_timeout, TaskEnded when it stops."""
        started = time.monotonic()
        placed_at: float | None = None
        while True:
            place = self.place(service_id)
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
                        node = self._nodes.get(self._client(), place.node_id)
                    if node is None:
                        raise TaskEnded(f"its node {place.node_id[:12]} left the swarm")
                    return node, place.port
                if now - placed_at > self.settings.ready_timeout:
                    raise NotReady(f"the task was still {place.state} ({place.reason})")
            time.sleep(TASK_POLL_S)

    def wait_until_stopped(self, service_id: str) -> None:
        """Return once the removed service's task stopped on its node (the node's agent stops it
        after the removal is answered), or its node is down (it stops when the node returns)."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            # Listed whole: filtered by a service removed already, the manager answers 404.
            tasks = self._listed_whole([service_id])
            live = [t for t in tasks if (t.get("Status") or {}).get("State") not in ENDED_STATES]
            if not any(self._on_node_not_down(t) for t in live):
                return
            time.sleep(TASK_POLL_S)
        log.warning("the task of removed swarm service %s did not stop within %g s", service_id[:12], STOP_TIMEOUT_S)

    def _on_node_not_down(self, task: dict[str, Any]) -> bool:
        node = self._nodes.get(self._client(), task.get("NodeID") or "")
        return node is not None and not node.down

    def of(self, service_ids: list[str]) -> list[dict[str, Any]]:
        """The tasks of these services. Filtered by service, the manager answers 404 when one of
        them was removed meanwhile (by another request or replica): then all tasks, filtered here."""
        try:
            return list(self._client().api.tasks(filters={"service": service_ids}))
        except docker.errors.NotFound:
            return self._listed_whole(service_ids)

    def _listed_whole(self, service_ids: list[str]) -> list[dict[str, Any]]:
        wanted = set(service_ids)
        return [t for t in self._client().api.tasks() if t.get("ServiceID") in wanted]

    def place(self, service_id: str) -> TaskPlace | None:
        with self._api("look up the service's task"):
            return task_place(self.of([service_id]))

    def running_at(self, ref: str) -> tuple[Node, int] | None:
        """The node and port of the service's task while it runs on a node that is not down (one
        out of touch for a moment, unknown or disconnected, still runs it)."""
        place = self.place(ref)
        if place is None or place.state != "running" or not place.node_id or not place.port:
            return None
        with self._api("look up the node"):
            node = self._nodes.get(self._client(), place.node_id)
        return (node, place.port) if node is not None and not node.down else None

    def watch(self, service_id: str) -> Callable[[], None]:
        last_check = time.monotonic()

        def check() -> None:
            nonlocal last_check
            if time.monotonic() - last_check >= TASK_CHECK_S:
                last_check = time.monotonic()
                place = self.place(service_id)
                if place is not None and place.ended:
                    raise TaskEnded(f"{place.state}: {place.reason}")

        return check
