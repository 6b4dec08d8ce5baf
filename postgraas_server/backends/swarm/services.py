"""What the swarm backend asks a manager for and reads from its answers: an instance's service
spec, where its one task runs, and the nodes' addresses."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from docker import types
from docker.utils import parse_bytes

from ...backend_settings import SwarmBackendSettings
from ..postgres.own_server import EPHEMERAL_SETTINGS

POSTGRES_PORT = 5432
# Node states change (a node goes down); every process reads them again at least this often.
NODE_TTL_S = 5.0
# Task states after which nothing runs any more (restart_policy none: no new task follows).
ENDED_STATES = frozenset({"complete", "shutdown", "failed", "rejected", "orphaned", "remove"})
# Before these Swarm has not chosen a node.
UNPLACED_STATES = frozenset({"new", "pending", "allocated"})


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    # Where this server connects (the address Swarm reports) and what clients are told.
    address: str
    advertised: str
    # Swarm's word: ready, down, or the transient unknown (after a manager's leader change) and
    # disconnected (a heartbeat missed), which say nothing about the node's tasks.
    state: str

    @property
    def up(self) -> bool:
        return self.state == "ready"

    @property
    def down(self) -> bool:
        return self.state == "down"


@dataclass(frozen=True)
class TaskPlace:
    """The state of a service's newest task, and where it runs once placed."""

    state: str
    node_id: str | None
    port: int | None
    # Swarm's own words: "no suitable node (insufficient resources on 2 nodes)", an exit code ...
    reason: str

    @property
    def placed(self) -> bool:
        return self.state not in UNPLACED_STATES

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


def task_place(tasks: list[dict[str, Any]]) -> TaskPlace | None:
    """The newest of a service's tasks, None when Swarm made none yet."""
    if not tasks:
        return None
    task = max(tasks, key=lambda t: (t.get("CreatedAt") or "", (t.get("Version") or {}).get("Index", 0)))
    status = task.get("Status") or {}
    ports = ((status.get("PortStatus") or {}).get("Ports")) or []
    port = next((int(p["PublishedPort"]) for p in ports if p.get("TargetPort") == POSTGRES_PORT), None)
    reason = status.get("Err") or status.get("Message") or ""
    return TaskPlace(str(status.get("State") or "new"), task.get("NodeID") or None, port, reason)


def why_lost(place: TaskPlace | None, nodes: dict[str, Node]) -> str | None:
    """Why the service's database is gone for good, None while it runs, is being made, or its node
    is only out of touch for a while (unknown, disconnected)."""
    if place is None or place.node_id is None:
        return None
    node = nodes.get(place.node_id)
    where = f"node {node.hostname} ({node.address})" if node else f"node {place.node_id[:12]}"
    if node is None:
        return f"its {where} left the swarm"
    if node.down:
        return f"its {where} is down"
    if place.ended:
        return f"its task on {where} ended ({place.state}: {place.reason})"
    return None


def service_options(
    settings: SwarmBackendSettings,
    *,
    name: str,
    image: str,
    env: dict[str, str],
    labels: dict[str, str],
    ephemeral: bool,
) -> dict[str, Any]:
    """Keyword arguments of the docker SDK's services.create for one instance."""
    reservations = {}
    if settings.slots_resource:
        reservations[settings.slots_resource] = 1
    resources = types.Resources(
        cpu_limit=int(settings.cpu_limit * 1e9),
        mem_limit=parse_bytes(settings.memory_limit),
        cpu_reservation=int(settings.cpu_reservation * 1e9) if settings.cpu_reservation else None,
        mem_reservation=parse_bytes(settings.memory_reservation) if settings.memory_reservation else None,
        generic_resources=reservations or None,
    )
    # Not in the SDK's Resources, in the API since 1.41: a tenant's fork bomb stays in its task.
    resources["Limits"]["Pids"] = settings.pids_limit
    options: dict[str, Any] = dict(
        image=image,
        name=name,
        env=[f"{key}={value}" for key, value in env.items()],
        labels=labels,
        container_labels=labels,
        constraints=list(settings.constraints),
        preferences=[("spread", label) for label in settings.placement_preferences],
        resources=resources,
        # A database must never come back empty on another node behind its user's back.
        restart_policy=types.RestartPolicy(condition="none"),
        # Host-mode, on a port Swarm picks: no routing mesh (which needs IPVS) and no fixed ports.
        endpoint_spec=types.EndpointSpec(
            mode="dnsrr", ports=[{"Protocol": "tcp", "TargetPort": POSTGRES_PORT, "PublishMode": "host"}]
        ),
        mode=types.ServiceMode("replicated", replicas=1),
        # postgres's fast shutdown: a removal takes 2-3 s instead of SIGTERM's wait for clients.
        stop_signal="SIGINT",
    )
    if ephemeral:
        # Replaces the image's CMD; the official entrypoint and the prepared wrapper pass it on.
        options["args"] = ["postgres", *(f"-c{setting}=off" for setting in EPHEMERAL_SETTINGS)]
    return options


class NodeBook:
    """The swarm's nodes by id, read again when older than NODE_TTL_S, when a node is asked for that
    it does not know, or when ``refresh`` is called."""

    def __init__(self, advertise_label: str) -> None:
        self._advertise_label = advertise_label
        self._nodes: dict[str, Node] = {}
        self._read_at = -NODE_TTL_S
        self._lock = threading.Lock()

    def refresh(self, client: Any) -> dict[str, Node]:
        nodes = {}
        for attrs in client.api.nodes():
            status = attrs.get("Status") or {}
            labels = (attrs.get("Spec") or {}).get("Labels") or {}
            address = _address(attrs)
            nodes[attrs["ID"]] = Node(
                id=attrs["ID"],
                hostname=str((attrs.get("Description") or {}).get("Hostname") or attrs["ID"][:12]),
                address=address,
                advertised=labels.get(self._advertise_label) or address,
                state=str(status.get("State") or "unknown"),
            )
        with self._lock:
            self._nodes, self._read_at = nodes, time.monotonic()
        return nodes

    def get(self, client: Any, node_id: str) -> Node | None:
        with self._lock:
            node = self._nodes.get(node_id)
            fresh = time.monotonic() - self._read_at < NODE_TTL_S
        if node is None or not fresh:
            node = self.refresh(client).get(node_id)
        return node


def _address(attrs: dict[str, Any]) -> str:
    """The node's address. A manager may report 0.0.0.0 or 127.0.0.1 as its Status.Addr (moby#35437):
    its manager address, which the other nodes reach it at, says where it is."""
    address = str((attrs.get("Status") or {}).get("Addr") or "")
    if address in ("", "0.0.0.0", "127.0.0.1"):
        manager = str((attrs.get("ManagerStatus") or {}).get("Addr") or "")
        if manager:
            return manager.rsplit(":", 1)[0].strip("[]")
    return address
