"""The warm pool with real backends: a pooled cluster, container or database taken over through the API."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
import requests

from postgraas_server.backends import Credentials, DatabaseSpec
from postgraas_server.backends.postgres import handover_connections
from postgraas_server.backends.postgres.handover_connections import NotClaimable
from postgraas_server.errors import PostgraasError

from .conftest import BACKENDS, backend_config, make_backend
from .servers import body as unique_create_body
from .servers import drain_pools, metric, pooled, start, stop_server

POOL = 2


def request_body(prefix: str, backend: str, **fields: str) -> dict:
    return unique_create_body(prefix, backend=backend, ttl="10m", **fields)


def pool_claims(server, backend: str) -> float:
    return metric(server, "postgraas_create_duration_seconds_count", {"backend": backend, "source": "pool"})


def other_sessions_settle_at_zero(uri: str, within: float = 2.0) -> bool:
    with psycopg.connect(uri, autocommit=True) as conn:
        deadline = time.monotonic() + within
        while True:
            (others,) = conn.execute(
                # Sessions of other roles show only some columns to a tenant: these two, not backend_type.
                "select count(*) from pg_stat_activity"
                " where datname is not null and usename is not null and pid <> pg_backend_pid()"
            ).fetchone()
            if others == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


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
    # What is left in the pools goes once they are configured away: the run must leave nothing (the
    # pg_server and local_data_root fixtures check).
    assert "removed surplus pooled instance" in drain_pools(tmp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pooled_instance_is_taken_over_with_the_requested_names_and_password(server, backend):
    wait_for_pool(server, backend)
    body = request_body("warm", backend)
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
        # A server of its own: nothing of the pool's is left in it, and no session of the server's
        # processes (each keeps one to every pooled object; test_a_claim_ends_every_other_session_of_ours).
        assert names == set() and databases == set()
        assert other_sessions_settle_at_zero(created["connection_uri"])
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


def test_the_docker_images_own_database_is_made_anew_not_claimed(server, docker_client):
    wait_for_pool(server, "docker")
    body = request_body("own", "docker", db_name="postgres")
    response = server.post(body)
    assert response.status_code == 201, response.text
    created = response.json()
    with psycopg.connect(created["connection_uri"]) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (body["db_username"], "postgres")
    # A container of its own (a claimed one keeps the pool's name label), and the pool is whole.
    container = docker_client.containers.get(created["container_id"])
    assert container.labels["postgraas.name"] == body["postgraas_instance_name"]
    assert pooled(server, "docker") == POOL
    assert server.delete(created["postgraas_instance_id"], {"db_pwd": body["db_pwd"]}).status_code == 200


@pytest.mark.parametrize("backend", ["local", "docker"])
def test_an_ephemeral_claim_turns_durability_off(server, backend):
    wait_for_pool(server, backend)
    body = request_body("fast", backend, durability="ephemeral")
    claims_before = pool_claims(server, backend)
    response = server.post(body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["durability"] == "ephemeral"
    # Taken from the pool, not made anew after a failed claim.
    assert pool_claims(server, backend) == claims_before + 1
    # The claim reloads the server's configuration; the reload is the postmaster's, a moment later.
    deadline = time.monotonic() + 10
    with psycopg.connect(created["connection_uri"], autocommit=True) as conn:
        while True:
            settings = {
                name: conn.execute(f"show {name}").fetchone()[0]
                for name in ("fsync", "synchronous_commit", "full_page_writes")
            }
            if set(settings.values()) == {"off"} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert settings == {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    assert server.delete(created["postgraas_instance_id"], {"db_pwd": body["db_pwd"]}).status_code == 200


@pytest.mark.parametrize("backend_name", ["local", "docker"])
def test_a_claim_ends_every_other_session_of_ours_and_none_of_the_tenants(request, backend_name, monkeypatch):
    """Another server process's kept connection (opened as a keeper opens it) does not survive a
    claim, and a keeper connecting after the claim is refused. The tenant's session, opened as
    soon as the claim answered and before our sessions are ended (on a thread), survives."""
    backend = make_backend(backend_name, request)
    tag = uuid.uuid4().hex[:8]
    instance_id = 980000 + int(tag[:4], 16)
    pooled = DatabaseSpec(instance_id, f"pool-{tag}", f"pool_{tag}", f"pool_{tag}", "throwaway", pooled=True)
    ref = backend.create(pooled).ref
    try:
        other_process = backend._connect_pooled(ref)  # what another process's keeper holds
        spec = DatabaseSpec(instance_id, f"warm-{tag}", f"db_{tag}", f"user_{tag}", f"pw-{tag}")
        ending = []
        monkeypatch.setattr(handover_connections, "end_others_then_close", lambda *args: ending.append(args))
        provisioned = backend.claim(ref, Credentials(pooled.db_name, pooled.db_username, ""), spec)
        with psycopg.connect(
            host="127.0.0.1", port=provisioned.port, user=spec.db_username, password=spec.db_pwd, dbname=spec.db_name
        ) as tenant:
            monkeypatch.undo()
            handover_connections.end_others_then_close(*ending[0])
            try:
                with pytest.raises(psycopg.OperationalError):
                    for _ in range(50):  # the termination is a signal: a moment later at most
                        other_process.execute("select 1")
                        time.sleep(0.02)
            finally:
                other_process.close()
            assert tenant.execute("select current_user").fetchone() == (spec.db_username,)
        # local: the pool's database is gone; docker: the pool's role too (NotClaimable, which the
        # service ignores for a row no longer pooled).
        with pytest.raises((PostgraasError, NotClaimable)):
            backend._connect_pooled(ref).close()
        with psycopg.connect(
            host="127.0.0.1", port=provisioned.port, user=spec.db_username, password=spec.db_pwd, dbname=spec.db_name
        ) as conn:
            assert conn.execute("select current_user").fetchone() == (spec.db_username,)
    finally:
        backend.delete(ref, Credentials(pooled.db_name, pooled.db_username, ""), instance_id=instance_id, force=True)
