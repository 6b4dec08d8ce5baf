"""Tenant containment as owners see it through the API of a real server: two tokens of one shared
cluster, one attacking the other; reserved role names on every backend; the reaper beside a
delete that takes its time."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import requests

from .conftest import BACKENDS, RUN_ID, RUN_LABEL, AdminHeldLock, backend_config
from .servers import Server, body, make_token, start, stop_server


class Owner:
    def __init__(self, server: Server, token: str) -> None:
        self.server = server
        self.headers = {"Authorization": f"Bearer {token}"}

    def post(self, request: dict) -> requests.Response:
        return requests.post(f"{self.server.url}/postgraas_instances", json=request, headers=self.headers, timeout=60)

    def delete(self, instance_id: int, force: bool = False) -> requests.Response:
        url = f"{self.server.url}/postgraas_instances/{instance_id}"
        return requests.delete(url, json={"force": force}, headers=self.headers, timeout=60)

    def get(self, instance_id: int) -> requests.Response:
        return requests.get(f"{self.server.url}/postgraas_instances/{instance_id}", headers=self.headers, timeout=30)


@pytest.fixture(scope="module")
def shared(request, tmp_path_factory) -> Iterator[Server]:
    """A server with one shared cluster, tokens, and a quick reaper."""
    backends = {"cluster": backend_config("cluster", request, lock_timeout=2)}
    lifecycle = {"reaper_interval": 0.5, "heartbeat_timeout": 1, "lost_retention": 2}
    auth = {"mode": "token"}
    server = start(tmp_path_factory.mktemp("shared"), backends, default="cluster", lifecycle=lifecycle, auth=auth)
    yield server
    stop_server(server)


def test_another_owner_cannot_block_my_delete_nor_eat_my_quota(shared, pg_server):
    tag = uuid.uuid4().hex[:6]
    alice = Owner(shared, make_token(shared, f"alice-{tag}"))
    bob = Owner(shared, make_token(shared, f"bob-{tag}", "--max-instances", "1"))
    theirs = alice.post(body("alice")).json()
    mine_request = body("bob")
    mine = bob.post(mine_request).json()
    # Alice names Bob's role (visible in pg_roles) in her database, every way she can.
    with psycopg.connect(theirs["connection_uri"], autocommit=True) as a:
        a.execute("create table loot (v int)")
        b = mine_request["db_username"]
        a.execute(f"grant select on loot to {b}")
        a.execute(f"alter default privileges grant select on tables to {b}")
        a.execute(f"alter table loot enable row level security; create policy p on loot to {b} using (true)")
        a.execute(f"alter database {theirs['db_name']} is_template true")
    answer = bob.delete(mine["postgraas_instance_id"], force=True)
    assert answer.status_code == 200, answer.text
    assert b not in pg_server.roles()
    # Nothing of Bob's counts against his one instance any more.
    again = bob.post(body("bob"))
    assert again.status_code == 201, again.text
    assert bob.delete(again.json()["postgraas_instance_id"]).status_code == 200
    # Alice made her own database a template: her delete undoes it and succeeds too.
    assert alice.delete(theirs["postgraas_instance_id"], force=True).status_code == 200
    assert theirs["db_name"] not in pg_server.databases()


def test_a_delete_stuck_on_a_lock_answers_at_once_and_the_reaper_finishes_it(shared, pg_server):
    tag = uuid.uuid4().hex[:6]
    bob = Owner(shared, make_token(shared, f"bob-{tag}", "--max-instances", "1"))
    request = body("bob")
    mine = bob.post(request).json()
    lock = AdminHeldLock(pg_server, request["db_username"])
    try:
        started = time.monotonic()
        answer = bob.delete(mine["postgraas_instance_id"], force=True)
        assert answer.status_code == 504, answer.text
        assert "retried by the reaper" in answer.json()["msg"]
        assert time.monotonic() - started < 10
        # What he asked to delete no longer counts against his quota.
        again = bob.post(body("bob"))
        assert again.status_code == 201, again.text
        assert bob.delete(again.json()["postgraas_instance_id"]).status_code == 200
        lock.release()
        deadline = time.monotonic() + 30
        while bob.get(mine["postgraas_instance_id"]).status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert bob.get(mine["postgraas_instance_id"]).status_code == 404
        assert request["db_username"] not in pg_server.roles()
    finally:
        lock.drop()


def test_the_reaper_does_not_retry_a_delete_its_request_is_still_at(shared, pg_server):
    """The request's delete waits on a lock past heartbeat_timeout (1 s) while the reaper passes
    every 0.5 s: it beats, so the reaper leaves it to its request."""
    tag = uuid.uuid4().hex[:6]
    owner = Owner(shared, make_token(shared, f"carol-{tag}"))
    request = body("carol")
    mine = owner.post(request).json()
    lock = AdminHeldLock(pg_server, request["db_username"])
    # Released within lock_timeout (2 s) of the first wait, after heartbeat_timeout has passed.
    releaser = threading.Timer(1.6, lock.release)
    releaser.start()
    try:
        answer = owner.delete(mine["postgraas_instance_id"], force=True)
        releaser.join()
        assert answer.status_code == 200, answer.text
        assert request["db_username"] not in pg_server.roles()
        assert f"finished deleting instance {request['postgraas_instance_name']}" not in shared.log()
    finally:
        releaser.join()
        lock.drop()


def test_a_lost_instance_past_its_retention_leaves_whoever_took_its_names(shared, pg_server):
    tag = uuid.uuid4().hex[:6]
    alice = Owner(shared, make_token(shared, f"alice-{tag}"))
    bob = Owner(shared, make_token(shared, f"bob-{tag}"))
    names = body("names")
    lost = alice.post({**names, "postgraas_instance_name": f"alice-{tag}"}).json()
    with pg_server.admin() as admin:
        admin.execute(f"drop database {names['db_name']} with (force)")
        admin.execute(f"drop role {names['db_username']}")
    taken = bob.post({**names, "postgraas_instance_name": f"bob-{tag}", "db_pwd": f"bob-{tag}-pw"})
    assert taken.status_code == 201, taken.text
    # The reaper marks Alice's lost, and forgets it after lost_retention: Bob's objects stay.
    deadline = time.monotonic() + 30
    while alice.get(lost["postgraas_instance_id"]).status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert alice.get(lost["postgraas_instance_id"]).status_code == 404
    with psycopg.connect(taken.json()["connection_uri"]) as conn:
        assert conn.execute("select current_user").fetchone() == (names["db_username"],)
    assert bob.delete(taken.json()["postgraas_instance_id"]).status_code == 200
    assert names["db_username"] not in pg_server.roles()


def test_a_taken_name_does_not_tell_one_owner_about_another(shared):
    tag = uuid.uuid4().hex[:6]
    alice = Owner(shared, make_token(shared, f"alice-{tag}"))
    bob = Owner(shared, make_token(shared, f"bob-{tag}"))
    theirs_request = body("alice")
    theirs = alice.post(theirs_request).json()
    refused = bob.post(body("bob", db_username=theirs_request["db_username"]))
    assert refused.status_code == 409
    message = refused.json()["msg"]
    # Names the role he asked for (which any tenant of the cluster can list), nothing of Alice's.
    assert theirs_request["db_name"] not in message and f"alice-{tag}" not in message
    assert not re.search(r"\binstance\b|\bid\b", message)
    assert alice.delete(theirs["postgraas_instance_id"]).status_code == 200


@pytest.fixture(scope="module")
def every_backend(request, tmp_path_factory) -> Iterator[Server]:
    backends = {name: backend_config(name, request) for name in BACKENDS}
    server = start(tmp_path_factory.mktemp("every"), backends)
    yield server
    stop_server(server)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("username", ["public", "none", "current_user", "SESSION_USER", "current_role", "pg_x"])
def test_reserved_role_names_are_400_before_anything_is_made(
    every_backend, backend, username, pg_server, docker_client, local_data_root
):
    roles = pg_server.roles()
    containers = docker_client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"})
    homes = sorted(local_data_root.iterdir()) if local_data_root.exists() else []
    answer = every_backend.post(body("reserved", backend=backend, db_username=username))
    assert answer.status_code == 400, answer.text
    assert list(answer.json()["errors"]) == ["db_username"]
    assert pg_server.roles() == roles
    assert docker_client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"}) == containers
    assert (sorted(local_data_root.iterdir()) if local_data_root.exists() else []) == homes
    assert every_backend.get().json() == []
