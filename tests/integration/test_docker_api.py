"""The REST API against a real Docker engine and real postgres containers."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from urllib.parse import quote

import docker.errors
import psycopg
import pytest
import requests

from .conftest import RUN_ID, RUN_LABEL, start_server
from .servers import stop_server

PASSWORD = "p@ss:w/rd %?#é"


def assert_never_logged(log: str, secret: str) -> None:
    """The secret in none of the forms a log line could carry it."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        repr(secret)[1:-1],
    }
    for form in forms:
        assert form not in log, f"password found in the log as {form!r}"


def new_body(**overrides) -> dict:
    return {
        "postgraas_instance_name": f"it-{uuid.uuid4().hex[:8]}",
        "db_name": "app_db",
        "db_username": "app_user",
        "db_pwd": PASSWORD,
        **overrides,
    }


def containers_named(docker_client, name: str) -> list:
    return docker_client.containers.list(
        all=True, filters={"label": [f"postgraas.name={name}", f"{RUN_LABEL}={RUN_ID}"]}
    )


def test_lifecycle_create_use_list_get_delete(server, docker_client):
    body = new_body()
    response = server.post(body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["host"] == "127.0.0.1"
    assert isinstance(created["port"], int)
    assert created["db_pwd"] == PASSWORD

    # The 201 means a real login works at once, with the URI exactly as returned.
    with psycopg.connect(created["connection_uri"]) as conn:
        conn.execute("create table notes (id serial primary key, body text)")
        conn.execute("insert into notes (body) values ('hello')")
        conn.commit()
        assert conn.execute("select body from notes").fetchone() == ("hello",)
        assert conn.execute("select current_user, current_database()").fetchone() == ("app_user", "app_db")

    container = docker_client.containers.get(created["container_id"])
    assert container.labels["postgraas.managed"] == "true"
    assert container.labels["postgraas.name"] == body["postgraas_instance_name"]
    assert container.labels["postgraas.instance_id"] == str(created["postgraas_instance_id"])
    assert container.name.startswith(f"postgraas-{body['postgraas_instance_name']}-")
    binding = container.attrs["NetworkSettings"]["Ports"]["5432/tcp"][0]
    assert (binding["HostIp"], int(binding["HostPort"])) == ("127.0.0.1", created["port"])
    volumes = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
    assert volumes, "the image's data volume should exist while the instance lives"
    assert all(m["Type"] == "volume" for m in container.attrs["Mounts"]), "nothing is mounted from the host"
    host_config = container.attrs["HostConfig"]
    assert host_config["Memory"] == 1024**3 and host_config["PidsLimit"] == 256
    assert host_config["NanoCpus"] == 1_000_000_000 and host_config["ShmSize"] == 256 * 1024**2
    assert host_config["SecurityOpt"] == ["no-new-privileges"]

    instance_id = created["postgraas_instance_id"]
    listed = server.get().json()
    assert instance_id in [item["postgraas_instance_id"] for item in listed]
    item = server.get(f"/{instance_id}").json()
    assert item["port"] == created["port"] and item["password"] == ""
    assert PASSWORD not in server.get().text and "p%40ss" not in server.get(f"/{instance_id}").text

    wrong = server.delete(instance_id, {"db_pwd": "not it"})
    assert wrong.status_code == 401
    assert docker_client.containers.get(created["container_id"]).status == "running"

    gone = server.delete(instance_id, {"db_pwd": PASSWORD})
    assert gone.status_code == 200, gone.text
    assert gone.json()["status"] == "success"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(created["container_id"])
    for volume in volumes:
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(volume)
    assert server.get(f"/{instance_id}").status_code == 404
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(created["connection_uri"], connect_timeout=3)
    assert_never_logged(server.log(), PASSWORD)


def test_duplicate_name_is_409_and_one_container(server, docker_client):
    body = new_body()
    first = server.post(body)
    assert first.status_code == 201
    second = server.post({**body, "db_pwd": "other"})
    assert second.status_code == 409
    assert second.json()["errors"] == {"postgraas_instance_name": "already exists"}
    assert len(containers_named(docker_client, body["postgraas_instance_name"])) == 1
    assert server.delete(first.json()["postgraas_instance_id"], {"db_pwd": PASSWORD}).status_code == 200


def test_concurrent_creates_of_one_name_have_exactly_one_winner(server, docker_client):
    body = new_body()
    barrier = threading.Barrier(8)
    responses = []

    def post():
        barrier.wait()
        responses.append(server.post(body))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 7, [r.text for r in responses]
    assert len(containers_named(docker_client, body["postgraas_instance_name"])) == 1
    winner = next(r.json() for r in responses if r.status_code == 201)
    assert server.delete(winner["postgraas_instance_id"], {"db_pwd": PASSWORD}).status_code == 200


def test_instances_cannot_open_each_other(server):
    a = server.post(new_body(db_name="db_a", db_username="user_a", db_pwd="pw-a")).json()
    b = server.post(new_body(db_name="db_b", db_username="user_b", db_pwd="pw-b")).json()
    try:
        assert a["port"] != b["port"]
        # A's credentials against B's server, and A's user with B's password: both refused.
        with pytest.raises(psycopg.OperationalError, match="password authentication failed|does not exist"):
            psycopg.connect(host="127.0.0.1", port=b["port"], user="user_a", password="pw-a", dbname="db_a")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=b["port"], user="user_b", password="pw-a", dbname="db_b")
    finally:
        assert server.delete(a["postgraas_instance_id"], {"db_pwd": "pw-a"}).status_code == 200
        assert server.delete(b["postgraas_instance_id"], {"db_pwd": "pw-b"}).status_code == 200


def test_delete_with_open_sessions_is_409_unless_forced(server, docker_client):
    created = server.post(new_body()).json()
    conn = psycopg.connect(created["connection_uri"])
    try:
        busy = server.delete(created["postgraas_instance_id"], {"db_pwd": PASSWORD})
        assert busy.status_code == 409
        assert "1 open session" in busy.json()["msg"]
        assert docker_client.containers.get(created["container_id"]).status == "running"
        forced = server.delete(created["postgraas_instance_id"], {"db_pwd": PASSWORD, "force": True})
        assert forced.status_code == 200
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(created["container_id"])


def test_delete_after_container_vanished_still_succeeds(server, docker_client):
    created = server.post(new_body()).json()
    docker_client.containers.get(created["container_id"]).remove(force=True, v=True)
    response = server.delete(created["postgraas_instance_id"], {"db_pwd": PASSWORD})
    assert response.status_code == 200
    assert server.get(f"/{created['postgraas_instance_id']}").status_code == 404


def test_bad_input_creates_nothing(server, docker_client):
    before = len(docker_client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"}))
    response = server.post(new_body(db_name='x"; drop', db_username="postgres"))
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"db_name", "db_username"}
    assert server.post(new_body(db_username="postgres")).status_code == 422
    after = len(docker_client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"}))
    assert before == after


def test_not_ready_in_time_removes_the_container_and_row(docker_client, tmp_path):
    server = start_server(tmp_path, {"ready_timeout": 0.01}, workers=1)
    try:
        body = new_body()
        response = server.post(body)
        assert response.status_code == 504, response.text
        assert "was not ready within 0.01 s" in response.json()["msg"]
        assert "Last log lines" in response.json()["msg"]
        assert PASSWORD not in response.text
        assert containers_named(docker_client, body["postgraas_instance_name"]) == []
        assert server.get().json() == []
    finally:
        stop_server(server)


def test_missing_image_is_503_and_leaves_nothing(docker_client, tmp_path):
    server = start_server(tmp_path, {"image": "postgraas/no-such-image:1"}, workers=1)
    try:
        response = server.post(new_body())
        assert response.status_code == 503
        assert "postgraas/no-such-image:1" in response.json()["msg"]
        assert server.get().json() == []
    finally:
        stop_server(server)


def test_unreachable_engine_is_503_and_leaves_no_row(docker_client, tmp_path):
    server = start_server(tmp_path, {"base_url": f"unix://{tmp_path}/no-docker.sock"}, workers=1)
    try:
        response = server.post(new_body())
        assert response.status_code == 503
        assert "Docker engine cannot be reached" in response.json()["msg"]
        listed = server.get()
        assert listed.status_code == 200 and listed.json() == []
    finally:
        stop_server(server)


def test_oversized_chunked_body_is_413(server):
    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    # A generator body goes out chunked: no Content-Length for the server to check up front.
    response = requests.post(f"{server.url}/postgraas_instances", data=chunks(), timeout=30)
    assert response.status_code == 413
    assert response.json()["msg"] == "The request body is larger than the limit of 65536 bytes."


def test_row_from_a_2x_meta_db_without_password_is_checked_by_login(server):
    created = server.post(new_body()).json()
    instance_id = created["postgraas_instance_id"]
    # 2.x kept no password (later versions) or plain text (earlier ones); init-db leaves no hash then.
    with sqlite3.connect(server.meta_db) as meta:
        meta.execute("update db_instance set password_hash = null where id = ?", (instance_id,))
    assert server.delete(instance_id, {"db_pwd": "wrong"}).status_code == 401
    assert server.delete(instance_id, {"db_pwd": PASSWORD}).status_code == 200
