"""Two API replicas (``serve`` processes) that share nothing but a PostgreSQL meta db and the pool
secret, in front of the swarm of scripts/swarm.sh: any replica answers for any instance, one
reaper acts at a time, another takes over when it dies, and a replica killed mid-create leaves
nothing for long."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests

from .conftest import backend_config
from .servers import Server, body, drain_pools, eventually, pooled, start, stop_server
from .swarm_fleet import Fleet, services_of

# Long enough that a pass with a swarm delete in it (2-3 s) keeps the lease (1.5 intervals).
INTERVAL = 3.0
POOL = 2


class Replicas:
    def __init__(self, fleet: Fleet, tmp_path: Path, request: pytest.FixtureRequest, meta_db: str) -> None:
        self.fleet, self.tmp_path, self.meta_db = fleet, tmp_path, meta_db
        self.backends = {
            "swarm": backend_config("swarm", request),
            # Nothing matches this constraint: a create there waits for a placement that never comes.
            "nowhere": backend_config(
                "swarm", request, constraints=["node.labels.postgraas==nowhere"], placement_timeout=120
            ),  # fmt: skip
        }
        # What replicas must share (docs/scaling.md): the pool secret.
        self.env = {"POSTGRAAS_POOL_SECRET": uuid.uuid4().hex}
        self.servers: list[Server] = []

    def start(self, name: str) -> Server:
        home = self.tmp_path / name
        home.mkdir()
        lifecycle = {"reaper_interval": INTERVAL, "heartbeat_timeout": 4, "default_ttl": "10m"}
        server = start(
            home, self.backends, default="swarm", lifecycle=lifecycle, metadb={"url": self.meta_db}, env=self.env
        )
        self.servers.append(server)
        return server

    def pooled_refs(self) -> set[str]:
        with psycopg.connect(self.meta_db) as conn:
            return {r[0] for r in conn.execute("select container_id from db_instance where status = 'pooled'")}

    def lease_holder_group(self) -> int | None:
        """The process group (a replica's serve process) of the reaper that holds the lease."""
        with psycopg.connect(self.meta_db) as conn:
            row = conn.execute("select holder, expires_at > now() at time zone 'utc' from postgraas_lease").fetchone()
        if not row or not row[0] or not row[1]:
            return None
        try:
            return os.getpgid(int(row[0].split(":")[1]))
        except ProcessLookupError:
            return None


@pytest.fixture
def replicas(swarm: Fleet, request, tmp_path, meta_db) -> Iterator[Replicas]:
    made = Replicas(swarm, tmp_path, request, meta_db)
    yield made
    for server in made.servers:
        stop_server(server)
    if made.servers:
        # Pooled instances outlive their servers on purpose; the run must leave none.
        drain_pools(made.servers[0].log_path.parent)


def test_any_replica_answers_for_any_instance(replicas):
    a, b = replicas.start("a"), replicas.start("b")
    asked = body("replica")
    created = a.post(asked)
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    seen = requests.get(f"{b.url}/postgraas_instances/{instance_id}?wait=ready&timeout=10", timeout=30)
    assert seen.status_code == 200 and seen.json()["status"] == "ready"
    extended = requests.patch(
        f"{b.url}/postgraas_instances/{instance_id}", json={"db_pwd": asked["db_pwd"], "ttl": "1h"}, timeout=30
    )
    assert extended.status_code == 200, extended.text
    assert a.get(f"/{instance_id}").json()["expires_at"] == extended.json()["expires_at"]
    assert b.delete(instance_id, {"db_pwd": asked["db_pwd"]}).status_code == 200
    assert a.get(f"/{instance_id}").status_code == 404
    assert not services_of(replicas.fleet, asked["postgraas_instance_name"])


def test_warm_pools_of_two_replicas_never_hand_one_instance_out_twice(replicas):
    replicas.backends["swarm"]["pool_size"] = POOL
    a, b = replicas.start("a"), replicas.start("b")
    eventually(lambda: pooled(a, "swarm") >= POOL, 120, "the pool filled")
    # Both replicas' keepers fill the one pool; what is pooled now is what the creates below take.
    pooled_before = replicas.pooled_refs()
    asked = [body("pooled") for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: (a, b)[i % 2].post(asked[i]), range(8)))
    assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers]
    refs = [r.json()["container_id"] for r in answers]
    assert len(set(refs)) == 8
    # Oldest first: at least POOL of them (more were pooled when both keepers overshot, and the
    # reaper may have trimmed those meanwhile).
    assert len(pooled_before & set(refs)) >= POOL, (pooled_before, refs)
    fleet = replicas.fleet
    for request_body, answer in zip(asked, answers, strict=True):
        got = answer.json()
        who = fleet.client_query(got["host"], got["port"], request_body["db_username"], request_body["db_pwd"],
                                 request_body["db_name"], "select current_user")  # fmt: skip
        assert who == request_body["db_username"]
        assert b.delete(got["id"], {"db_pwd": request_body["db_pwd"], "force": True}).status_code == 200


def test_a_replica_killed_mid_create_leaves_nothing_and_another_reaper_takes_over(replicas):
    a = replicas.start("a")
    eventually(lambda: replicas.lease_holder_group() == a.process.pid, 3 * INTERVAL + 5, "replica A holds the lease")
    b = replicas.start("b")
    asked = body("killed", backend="nowhere")
    threading.Thread(target=lambda: _quietly(a.post, asked), daemon=True).start()
    fleet = replicas.fleet
    eventually(lambda: services_of(fleet, asked["postgraas_instance_name"]), 30, "A's half-made service")
    assert replicas.lease_holder_group() == a.process.pid
    os.killpg(a.process.pid, signal.SIGKILL)
    a.process.wait()
    # The lease lapses and B's reaper takes it within two intervals (a second more for a busy machine).
    eventually(lambda: replicas.lease_holder_group() == b.process.pid, 2 * INTERVAL + 1, "B's reaper takes over")
    eventually(lambda: not services_of(fleet, asked["postgraas_instance_name"]), 60, "B's reaper removes the service")
    (row,) = [i for i in b.get().json() if i["postgraas_instance_name"] == asked["postgraas_instance_name"]]
    assert row["status"] == "failed" and "creation interrupted" in row["status_detail"]


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except requests.RequestException:
        pass  # its server was killed
