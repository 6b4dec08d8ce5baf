"""Templates through a real server (auth.mode token) on the real local and cluster backends: one
build of eight concurrent ensures, the builder's database filled with psycopg, clones that hold its
data apart from each other, another owner kept out, a builder that dies, and nothing left after."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from .conftest import TEMPLATE_BACKENDS, backend_config
from .servers import Server, eventually, make_token, start, stop_server

ROWS = 500


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    backends = {name: backend_config(name, request) for name in TEMPLATE_BACKENDS}
    lifecycle = {"default_ttl": "10m", "reaper_interval": 1}
    made = start(tmp_path_factory.mktemp("templates"), backends, lifecycle=lifecycle, auth={"mode": "token"})
    yield made
    stop_server(made)


class Owner:
    def __init__(self, server: Server, name: str) -> None:
        self.url = server.url
        self.headers = {"Authorization": f"Bearer {make_token(server, name)}"}

    def ensure(self, **body) -> requests.Response:
        return requests.post(f"{self.url}/postgraas_templates", json=body, headers=self.headers, timeout=120)

    def template(self, template_id: int, query: str = "") -> requests.Response:
        return requests.get(f"{self.url}/postgraas_templates/{template_id}{query}", headers=self.headers, timeout=60)

    def finalize(self, builder: dict) -> requests.Response:
        url = f"{self.url}/postgraas_templates/{builder['id']}/finalize"
        return requests.post(url, json={"instance_id": builder["instance_id"]}, headers=self.headers, timeout=120)

    def delete_template(self, template_id: int) -> requests.Response:
        return requests.delete(f"{self.url}/postgraas_templates/{template_id}", headers=self.headers, timeout=120)

    def create(self, **body) -> requests.Response:
        tag = uuid.uuid4().hex[:8]
        names = {"postgraas_instance_name": f"clone-{tag}", "db_name": f"db_{tag}", "db_username": f"u_{tag}"}
        return requests.post(
            f"{self.url}/postgraas_instances", json={**names, **body}, headers=self.headers, timeout=120
        )

    def delete_instance(self, instance_id: int) -> None:
        answer = requests.delete(
            f"{self.url}/postgraas_instances/{instance_id}", json={"force": True}, headers=self.headers, timeout=120
        )
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("backend", TEMPLATE_BACKENDS)
def test_eight_ensures_build_once_and_clones_hold_the_data_apart(server, backend):
    owner = Owner(server, f"team-{backend}")
    content = {"name": "shop", "hash": f"h-{uuid.uuid4().hex[:12]}", "backend": backend}
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: owner.ensure(**content), range(8)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [202] * 7, [a.text for a in answers]
    (builder,) = [a.json() for a in answers if a.status_code == 201]
    with psycopg.connect(builder["connection_uri"]) as conn:
        conn.execute("create table items (id serial primary key, v text)")
        conn.execute(f"insert into items (v) select 'item ' || i from generate_series(1, {ROWS}) i")
    # A waiter sees it building, then ready once finalized.
    assert owner.template(builder["id"]).json()["status"] == "building"
    # Another owner can neither finalize it nor see it.
    stranger = Owner(server, f"stranger-{backend}")
    assert stranger.finalize(builder).status_code == 404
    assert stranger.template(builder["id"]).status_code == 404
    finalized = owner.finalize(builder)
    assert finalized.json()["status"] == "ready", finalized.text
    assert owner.template(builder["id"], "?wait=ready&timeout=10").json()["status"] == "ready"
    assert owner.ensure(**content).status_code == 200

    first, second = owner.create(template="shop").json(), owner.create(template=f"shop@{content['hash']}").json()
    assert first["backend"] == second["backend"] == backend
    with psycopg.connect(first["connection_uri"]) as conn:
        assert conn.execute("select count(*) from items").fetchone() == (ROWS,)
        conn.execute("delete from items")
    with psycopg.connect(second["connection_uri"]) as conn:
        assert conn.execute("select count(*) from items").fetchone() == (ROWS,)
        # The tenant owns it: by name (local, docker), or as its database's owner, the one member of
        # the pg_database_owner that owns everything in a cluster clone.
        table_owner = conn.execute("select tableowner from pg_tables where tablename = 'items'").fetchone()[0]
        assert table_owner == (second["db_username"] if backend != "cluster" else "pg_database_owner")
        assert conn.execute("select pg_has_role(current_user, %s, 'member')", (table_owner,)).fetchone() == (True,)
        conn.execute("alter table items add column mine int")
    # The builder's login went with its database: not even to a clone, where its database is
    # the clone's and its role is gone.
    for clone in (first, second):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(
                host=clone["host"], port=clone["port"], dbname=clone["db_name"], user=builder["db_username"],
                password=builder["db_pwd"], connect_timeout=5,
            )  # fmt: skip

    # Another owner neither sees, deletes nor uses it.
    assert stranger.template(builder["id"]).status_code == 404
    assert stranger.delete_template(builder["id"]).status_code == 404
    refused = stranger.create(template="shop")
    assert refused.status_code == 404 and "template" in refused.json()["errors"]

    assert owner.delete_template(builder["id"]).status_code == 200
    # The clones stay.
    with psycopg.connect(second["connection_uri"]) as conn:
        assert conn.execute("select count(*) from items").fetchone() == (ROWS,)
    for clone in (first, second):
        owner.delete_instance(clone["id"])


def test_a_builder_that_dies_leaves_a_failed_template_the_next_ensure_builds_anew(server):
    owner = Owner(server, "team-silent")
    content = {"name": "silent", "hash": "h1", "backend": "local", "build_timeout": 10}
    first = owner.ensure(**content)
    assert first.status_code == 201
    template_id = first.json()["id"]
    # No heartbeat, no finalize: the reaper (every second) gives the build up after 10 s.
    failed = eventually(
        lambda: (got := owner.template(template_id).json())["status"] == "failed" and got, 30, "the build given up"
    )
    assert "heartbeat" in failed["status_detail"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(first.json()["connection_uri"], connect_timeout=5)
    again = owner.ensure(**content)
    assert again.status_code == 201 and again.json()["id"] == template_id
    assert owner.delete_template(template_id).status_code == 200
