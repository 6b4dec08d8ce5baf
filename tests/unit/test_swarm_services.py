"""The swarm backend's reading of a manager's answers and its service spec, on answers shaped as
Docker's API gives them (the backend against a real swarm: tests/integration/test_swarm_backend.py)."""

from __future__ import annotations

from postgraas_server.backend_settings import SwarmBackendSettings
from postgraas_server.backends.swarm.service_image import _path_of
from postgraas_server.backends.swarm.services import Node, service_options, task_place, why_lost


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
    up, down = Node("n1", "worker1", "10.0.0.1", "10.0.0.1", True), Node("n2", "worker2", "10.0.0.2", "10.0.0.2", False)
    nodes = {"n1": up, "n2": down}
    assert why_lost(task_place([task("running", "t", node="n1")]), nodes) is None
    assert why_lost(task_place([task("running", "t", node="n2")]), nodes) == "its node worker2 (10.0.0.2) is down"
    ended = why_lost(task_place([task("failed", "t", node="n1", err="exit code 1")]), nodes)
    assert ended == "its task on node worker1 (10.0.0.1) ended (failed: exit code 1)"
    assert "left the swarm" in (why_lost(task_place([task("running", "t", node="gone")]), nodes) or "")
    # Not placed yet: still being made, not lost.
    assert why_lost(task_place([task("pending", "t", node=None, port=None)]), nodes) is None


def test_the_service_spec_publishes_in_host_mode_never_restarts_and_reserves_a_slot():
    settings = SwarmBackendSettings(
        type="swarm",
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
