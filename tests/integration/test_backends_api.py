"""The API with all three backends configured at once, each chosen per request."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from .conftest import BACKENDS, backend_config
from .servers import body, make_token, start, stop_server


@pytest.fixture(scope="module")
def all_backends(request) -> dict:
    return {name: backend_config(name, request) for name in BACKENDS}


@pytest.fixture(scope="module")
def server(all_backends, tmp_path_factory):
    server = start(tmp_path_factory.mktemp("backends"), all_backends)
    yield server
    stop_server(server)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_through_the_api(server, backend):
    request = body(backend=backend)
    response = server.post(request)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["backend"] == backend
    with psycopg.connect(created["connection_uri"]) as conn:
        conn.execute("create table t (v int)")
        conn.execute("insert into t values (1)")
        conn.commit()
        assert conn.execute("select sum(v) from t").fetchone() == (1,)
    instance_id = created["postgraas_instance_id"]
    item = server.get(f"/{instance_id}").json()
    assert (item["backend"], item["backend_state"], item["status"]) == (backend, "running", "ready")
    assert any(i["postgraas_instance_id"] == instance_id and i["backend"] == backend for i in server.get().json())

    assert server.post({**request, "db_pwd": "x"}).status_code == 409
    assert server.delete(instance_id, {"db_pwd": "wrong"}).status_code == 401
    with psycopg.connect(created["connection_uri"]):
        assert server.delete(instance_id, {"db_pwd": request["db_pwd"]}).status_code == 409
    assert server.delete(instance_id, {"db_pwd": request["db_pwd"]}).status_code == 200
    assert server.get(f"/{instance_id}").status_code == 404
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(created["connection_uri"], connect_timeout=3)


def test_default_backend_is_used_when_none_is_named(server):
    request = body()
    created = server.post(request).json()
    assert created["backend"] == "local"
    assert server.delete(created["postgraas_instance_id"], {"db_pwd": request["db_pwd"]}).status_code == 200


def test_unknown_backend_is_400_listing_the_configured_ones(server):
    response = server.post(body(backend="kubernetes"))
    assert response.status_code == 400
    assert response.json()["errors"] == {"backend": "must be one of: docker, cluster, local"}
    assert server.get().json() == []


def test_a_template_that_is_none_is_refused_naming_the_field(server):
    # The local backend clones Postgraas templates only: a name that is none of them is a 404.
    response = server.post(body(backend="local", template="template1"))
    assert response.status_code == 404
    assert "template" in response.json()["errors"]
    # The cluster backend also takes a database its admin designated, and no other.
    response = server.post(body(backend="cluster", template="no_such_template"))
    assert response.status_code == 400
    assert response.json()["errors"] == {"template": "is not one of this backend's templates"}
    assert server.get().json() == []


def test_cluster_name_taken_in_the_cluster_is_409_naming_it(server, pg_server):
    tag = uuid.uuid4().hex[:8]
    with pg_server.admin() as admin:
        admin.execute(f"create role taken_{tag}")
    try:
        response = server.post(body(backend="cluster", db_username=f"taken_{tag}"))
        assert response.status_code == 409
        assert response.json()["errors"] == {"db_username": "already exists"}
        assert server.get().json() == []
    finally:
        with pg_server.admin() as admin:
            admin.execute(f"drop role taken_{tag}")


def test_local_instances_survive_a_server_restart_and_deaths_are_reported(all_backends, tmp_path):
    backends = {"local": all_backends["local"]}
    server = start(tmp_path, backends)
    request = body()
    alive = server.post(request).json()
    doomed_request = body()
    doomed = server.post(doomed_request).json()
    # A crash of the server: its postgres processes are in sessions of their own and stay up.
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()

    server = start(tmp_path, backends)
    try:
        item = server.get(f"/{alive['postgraas_instance_id']}").json()
        assert item["backend_state"] == "running"
        with psycopg.connect(alive["connection_uri"]) as conn:
            assert conn.execute("select 1").fetchone() == (1,)

        # The postmaster of the other instance dies: it is reported, not silently lost.
        data_dir = Path(backends["local"]["data_root"], doomed["container_id"], "data")
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.get(f"/{doomed['postgraas_instance_id']}").json()["backend_state"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.1)

        for created, req in ((alive, request), (doomed, doomed_request)):
            response = server.delete(created["postgraas_instance_id"], {"db_pwd": req["db_pwd"]})
            assert response.status_code == 200, response.text
        assert server.get().json() == []
    finally:
        stop_server(server)


def test_an_owners_token_deletes_a_docker_instance_without_its_password(all_backends, tmp_path):
    server = start(tmp_path, {"docker": all_backends["docker"]}, default="docker", auth={"mode": "token"})
    try:
        headers = {"Authorization": f"Bearer {make_token(server, 'erin')}"}
        created = requests.post(f"{server.url}/postgraas_instances", json=body(), headers=headers, timeout=120).json()
        url = f"{server.url}/postgraas_instances/{created['postgraas_instance_id']}"
        # The open-session check still works without the password: it asks inside the container.
        with psycopg.connect(created["connection_uri"]):
            busy = requests.delete(url, json={}, headers=headers, timeout=60)
            assert busy.status_code == 409 and "1 open session" in busy.json()["msg"]
        assert requests.delete(url, headers=headers, timeout=60).status_code == 200
    finally:
        stop_server(server)
