"""The swarm backend's reading of a manager's answers and its service spec, on answers shaped as
Docker's API gives them (the backend against a real swarm: tests/integration/test_swarm_backend.py)."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from postgraas_server.backend_settings import SwarmBackendSettings
from postgraas_server.backends.swarm import services
from postgraas_server.backends.swarm.service_image import _path_of
from postgraas_server.backends.swarm.services import Node, NodeBook, service_options, task_place, why_lost


def task(state: str, created: str, node: str | None = "n1", port: int | None = 30001, err: str = "") -> dict:
    status: dict = {"State": state, "Message": state, "Err": err}
    if port is not None:
        status["PortStatus"] = {"Ports": [{"Protocol": "tcp", "TargetPort": 5432, "PublishedPort": port}]}
    return {"ID": created, "NodeID": node or "", "CreatedAt": created, "Status": status}


def test_the_newest_task_tells_where_the_instance_runs():
    place = task_place([task("shutdown", "2026-12-05T00:00:01Z", port=1), task("running", "2026-12-05T00:00:02Z")])
    assert place is not None
    assert (place.state, place.node_id, place.port, place.placed, place.ended) == ("running", "n1", 30001, True, False)
    assert task_place([]) is None


def test_a_pending_task_carries_swarms_reason():
    reason = "no suitable node (insufficient resources on 2 nodes)"
    place = task_place([task("pending", "2026-12-05T00:00:01Z", node=None, port=None, err=reason)])
    assert place is not None and not place.placed and place.reason == reason


def test_lost_names_the_node_that_is_down_or_where_the_task_ended():
    up, down = (
        Node("n1", "worker1", "10.0.0.1", "10.0.0.1", "ready"),
        Node("n2", "worker2", "10.0.0.2", "10.0.0.2", "down"),
    )
    nodes = {"n1": up, "n2": down}
    assert why_lost(task_place([task("running", "t", node="n1")]), nodes) is None
    assert why_lost(task_place([task("running", "t", node="n2")]), nodes) == "its node worker2 (10.0.0.2) is down"
    ended = why_lost(task_place([task("failed", "t", node="n1", err="exit code 1")]), nodes)
    assert ended == "its task on node worker1 (10.0.0.1) ended (failed: exit code 1)"
    assert "left the swarm" in (why_lost(task_place([task("running", "t", node="gone")]), nodes) or "")
    # Out of touch for a moment (a manager's leader change, a missed heartbeat): not lost.
    for state in ("unknown", "disconnected"):
        nodes["n3"] = Node("n3", "worker3", "10.0.0.3", "10.0.0.3", state)
        assert why_lost(task_place([task("running", "t", node="n3")]), nodes) is None
    # Not placed yet: still being made, not lost.
    assert why_lost(task_place([task("pending", "t", node=None, port=None)]), nodes) is None


def test_the_service_spec_publishes_in_host_mode_never_restarts_and_reserves_a_slot():
    settings = SwarmBackendSettings(
        type="swarm",
        registry="registry.internal:5000",
        constraints=["node.labels.postgraas==db"],
        placement_preferences=["node.labels.zone"],
        slots_resource="pgslots",
        memory_reservation="256m",
        cpu_reservation=0.5,
    )
    options = service_options(settings, name="n", image="i", env={"A": "1"}, labels={"l": "v"}, ephemeral=True)
    assert options["endpoint_spec"]["Ports"] == [{"Protocol": "tcp", "TargetPort": 5432, "PublishMode": "host"}]
    assert options["restart_policy"]["Condition"] == "none"
    assert options["resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "pgslots", "Value": 1}}
    ]
    assert options["resources"]["Reservations"]["MemoryBytes"] == 256 * 1024**2
    assert options["resources"]["Limits"] == {"NanoCPUs": 1_000_000_000, "MemoryBytes": 1024**3, "Pids": 256}
    assert options["constraints"] == ["node.labels.postgraas==db"]
    assert options["preferences"] == [("spread", "node.labels.zone")]
    assert options["args"] == ["postgres", "-cfsync=off", "-csynchronous_commit=off", "-cfull_page_writes=off"]
    assert options["env"] == ["A=1"]


def test_an_image_is_pushed_under_its_path_without_registry_and_tag():
    assert _path_of("postgres:16") == "library/postgres"
    assert _path_of("10.77.0.5:5000/postgraas/postgres-test:15") == "postgraas/postgres-test"
    assert _path_of("registry.internal/team/pg@sha256:abc") == "team/pg"
    assert _path_of("team/pg") == "team/pg"


class Nodes:
    def __init__(self, answer: list[dict]) -> None:
        self.answer, self.calls = answer, 0

    def nodes(self) -> list[dict]:
        self.calls += 1
        return self.answer


def test_a_manager_reporting_0_0_0_0_is_found_at_its_manager_address_and_labels_override():
    manager = {"ID": "m", "Status": {"State": "ready", "Addr": "0.0.0.0"}, "ManagerStatus": {"Addr": "10.0.0.9:2377"}}
    natted = {
        "ID": "w",
        "Status": {"State": "ready", "Addr": "10.0.0.1"},
        "Spec": {"Labels": {"postgraas.advertise": "db1.example"}},
    }
    api = Nodes([manager, natted])
    book = NodeBook("postgraas.advertise")
    found = book.refresh(type("Client", (), {"api": api})())
    assert (found["m"].address, found["m"].advertised) == ("10.0.0.9", "10.0.0.9")
    assert (found["w"].address, found["w"].advertised) == ("10.0.0.1", "db1.example")


def test_node_states_are_read_again_once_they_are_old(monkeypatch):
    api = Nodes([{"ID": "w", "Status": {"State": "ready", "Addr": "10.0.0.1"}}])
    client = type("Client", (), {"api": api})()
    book = NodeBook("postgraas.advertise")
    assert book.get(client, "w").up and api.calls == 1
    assert book.get(client, "w").up and api.calls == 1
    api.answer = [{"ID": "w", "Status": {"State": "down", "Addr": "10.0.0.1"}}]
    later = time.monotonic() + services.NODE_TTL_S + 1
    monkeypatch.setattr(services.time, "monotonic", lambda: later)
    assert book.get(client, "w").down and api.calls == 2


def test_the_prepared_image_needs_a_registry():
    with pytest.raises(ValidationError, match="prepare_image needs registry"):
        SwarmBackendSettings(type="swarm")
    assert SwarmBackendSettings(type="swarm", prepare_image=False).registry is None
