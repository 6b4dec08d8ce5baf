"""The warm pool with real backends: a pooled cluster, container or database taken over through the API."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import stop_server
from .test_backend_contract import backend_config
from .test_backends_api import start

POOL = 2
BACKENDS = ("local", "cluster", "docker")


def pooled(server, backend: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return next(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "postgraas_instances" and s.labels == {"backend": backend, "status": "pooled"}
    )


def wait_for_pool(server, backend: str, size: int = POOL) -> None:
    deadline = time.monotonic() + 60
    while pooled(server, backend) < size:
        assert time.monotonic() < deadline, f"the {backend} pool did not fill:\n{server.log()[-3000:]}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    backends = {name: backend_config(name, request, pool_size=POOL) for name in BACKENDS}
    server = start(tmp, backends)
    yield server
    stop_server(server)
    # What is left in the pools goes once they are configured away: the run must leave nothing.
    config = tmp / "application.cfg"
    settings = json.loads(config.read_text())
    for backend in settings["backends"].values():
        backend["pool_size"] = 0
    # A pooled instance the stopped server was still making is a dead creation after a second.
    settings["lifecycle"] = {"heartbeat_timeout": 1}
    config.write_text(json.dumps(settings))
    time.sleep(1.5)
    reap = subprocess.run(
        [sys.executable, "-m", "postgraas_server.cli", "--config", str(config), "reap", "--once"],
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    # The pg_server and local_data_root fixtures check that nothing is left.
    assert reap.returncode == 0, reap.stderr
    assert "removed surplus pooled instance" in reap.stdout, reap.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pooled_instance_is_taken_over_with_the_requested_names_and_password(server, backend):
    wait_for_pool(server, backend)
    tag = uuid.uuid4().hex[:8]
    body = {
        "postgraas_instance_name": f"warm-{tag}",
        "db_name": f"db_{tag}",
        "db_username": f"user_{tag}",
        "db_pwd": f"pw-{tag}",
        "backend": backend,
        "ttl": "10m",
    }
    response = server.post(body)
    assert response.status_code == 201, response.text
    created = response.json()
    with psycopg.connect(created["connection_uri"]) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (
            body["db_username"],
            body["db_name"],
        )
        # The throwaway role of the pool is gone: no one logs in as it any more.
        names = {r[0] for r in conn.execute("select rolname from pg_roles where rolname like 'pool_%'")}
        assert not names & {body["db_username"]}
        databases = {r[0] for r in conn.execute("select datname from pg_database where datname like 'pool_%'")}
    if backend in ("local", "docker"):
        # A server of its own: nothing of the pool's is left in it.
        assert names == set() and databases == set()
    else:
        # Other pooled databases of the shared cluster are there, but closed to this tenant.
        for other in databases:
            with pytest.raises(psycopg.OperationalError, match="permission denied"):
                psycopg.connect(
                    host=created["host"],
                    port=created["port"],
                    user=body["db_username"],
                    password=body["db_pwd"],
                    dbname=other,
                    connect_timeout=5,
                )
    listed = [i["postgraas_instance_name"] for i in server.get().json()]
    assert listed == [body["postgraas_instance_name"]]
    assert server.delete(created["postgraas_instance_id"], {"db_pwd": body["db_pwd"]}).status_code == 200
    # The keeper made a replacement.
    wait_for_pool(server, backend)
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    assert f'postgraas_create_duration_seconds_count{{backend="{backend}",source="pool"}}' in text


def test_two_creates_racing_for_one_role_name_leave_the_winner_intact(server, pg_server):
    wait_for_pool(server, "cluster")
    tag = uuid.uuid4().hex[:8]
    user = f"shared_{tag}"
    bodies = [
        {
            "postgraas_instance_name": f"race-{tag}-{n}",
            "db_name": f"db_{tag}_{n}",
            "db_username": user,
            "db_pwd": f"pw-{tag}-{n}",
            "backend": "cluster",
            "ttl": "10m",
        }
        for n in range(2)
    ]
    answers: list[requests.Response] = []
    threads = [threading.Thread(target=lambda b=b: answers.append(server.post(b))) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One role name in one cluster: one create wins, the other is told so; nothing else.
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    (won,) = [a.json() for a in answers if a.status_code == 201]
    body = next(b for b in bodies if b["postgraas_instance_name"] == won["postgraas_instance_name"])
    with psycopg.connect(won["connection_uri"]) as conn:
        conn.execute("create table precious (v int)")
        conn.commit()
    # The loser's cleanup did not touch the winner's role or database.
    with psycopg.connect(won["connection_uri"]) as conn:
        assert conn.execute("select count(*) from precious").fetchone() == (0,)
    assert server.delete(won["postgraas_instance_id"], {"db_pwd": body["db_pwd"]}).status_code == 200
    assert user not in pg_server.roles()
