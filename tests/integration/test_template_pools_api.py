"""A template's pool of clones made ahead, and older contents replaced by a newer one, through a
real server on the real template backends: pooled clones are real objects, a create takes one and
its tenant logs in to the template's data, and what the template's removal takes is really gone."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import docker.errors
import psycopg
import pytest
import requests

from .conftest import TEMPLATE_BACKENDS, backend_config
from .servers import Server, eventually, make_token, start, stop_server

ROWS = 200
POOL_SIZE = 2


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    backends = {name: backend_config(name, request) for name in TEMPLATE_BACKENDS}
    lifecycle = {"default_ttl": "10m", "reaper_interval": 1}
    made = start(tmp_path_factory.mktemp("template-pools"), backends, lifecycle=lifecycle, auth={"mode": "token"})
    yield made
    stop_server(made)


def object_exists(request, backend: str, ref: str) -> bool:
    """Asked of the backend's own component, not of the server."""
    if backend == "local":
        return (Path(backend_config("local", request)["data_root"]) / ref).exists()
    if backend == "cluster":
        with request.getfixturevalue("pg_server").admin() as conn:
            return conn.execute("select 1 from pg_database where datname = %s", (ref,)).fetchone() is not None
    try:
        request.getfixturevalue("docker_client").containers.get(ref)
    except docker.errors.NotFound:
        return False
    return True


def pooled(server: Server, template_id: int) -> dict[int, str]:
    """The template's pooled clones, instance id -> backend ref, as the meta db has them."""
    with sqlite3.connect(server.meta_db) as meta:
        found = meta.execute(
            "select id, container_id from db_instance where template_id = ? and status = 'pooled'", (template_id,)
        ).fetchall()
    return {instance_id: ref for instance_id, ref in found if ref}


class Owner:
    def __init__(self, server: Server, name: str) -> None:
        self.url = server.url
        self.headers = {"Authorization": f"Bearer {make_token(server, name)}"}

    def call(self, method: str, path: str, **body) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", json=body, headers=self.headers, timeout=120)

    def build(self, name: str, content_hash: str, backend: str, value: str, **extra) -> dict:
        """A ready template whose table ``items`` holds ROWS rows of ``value``."""
        answer = self.call("POST", "/postgraas_templates", name=name, hash=content_hash, backend=backend, **extra)
        assert answer.status_code == 201, answer.text
        builder = answer.json()
        with psycopg.connect(builder["connection_uri"]) as conn:
            conn.execute("create table items (id serial primary key, v text not null)")
            conn.execute("insert into items (v) select %s from generate_series(1, %s)", (value, ROWS))
        path = f"/postgraas_templates/{builder['id']}/finalize"
        finalized = self.call("POST", path, instance_id=builder["instance_id"])
        assert finalized.json()["status"] == "ready", finalized.text
        return builder

    def create(self, **body) -> requests.Response:
        tag = uuid.uuid4().hex[:8]
        names = {"postgraas_instance_name": f"c-{tag}", "db_name": f"db_{tag}", "db_username": f"u_{tag}"}
        return self.call("POST", "/postgraas_instances", **names, **body)


def values_in(clone: dict) -> list[tuple]:
    with psycopg.connect(clone["connection_uri"], connect_timeout=5) as conn:
        return conn.execute("select v, count(*) from items group by v").fetchall()


@pytest.mark.parametrize("backend", TEMPLATE_BACKENDS)
def test_a_create_takes_a_pooled_clone_and_the_templates_removal_takes_the_pool(request, server, backend):
    owner = Owner(server, f"pools-{backend}")
    template = owner.build("pooled", "h1", backend, "v1", pool_size=POOL_SIZE)
    made_ahead = eventually(lambda: len(found := pooled(server, template["id"])) == POOL_SIZE and found, 60, "pool")
    assert all(object_exists(request, backend, ref) for ref in made_ahead.values())

    clone = owner.create(template="pooled")
    assert clone.status_code == 201, clone.text
    clone = clone.json()
    assert clone["id"] in made_ahead
    assert values_in(clone) == [("v1", ROWS)]
    with psycopg.connect(clone["connection_uri"]) as conn:
        # Its own (in a cluster clone as its database's owner, see test_templates_api.py).
        table_owner = conn.execute("select tableowner from pg_tables where tablename = 'items'").fetchone()[0]
        assert conn.execute("select pg_has_role(current_user, %s, 'member')", (table_owner,)).fetchone() == (True,)
        conn.execute("alter table items add column mine int")
    # The pool is made whole again.
    eventually(lambda: len(pooled(server, template["id"])) == POOL_SIZE, 60, "the pool refilled")
    left = pooled(server, template["id"]).values()

    assert owner.call("DELETE", f"/postgraas_templates/{template['id']}").status_code == 200
    assert pooled(server, template["id"]) == {}
    # Removed in a thread of the server's: the answer does not wait for as many removals as pool_size.
    eventually(lambda: not any(object_exists(request, backend, ref) for ref in left), 60, "the pool removed")
    # The clone a create took stays.
    assert values_in(clone) == [("v1", ROWS)]
    assert owner.call("DELETE", f"/postgraas_instances/{clone['id']}", force=True).status_code == 200


@pytest.mark.parametrize("backend", TEMPLATE_BACKENDS)
def test_a_newer_content_replaces_the_older_and_the_older_clones_stay(server, backend):
    owner = Owner(server, f"replace-{backend}")
    old = owner.build("shop", "h1", backend, "old")
    old_clone = owner.create(template="shop").json()
    new = owner.build("shop", "h2", backend, "new")
    assert owner.call("GET", f"/postgraas_templates/{old['id']}").status_code == 404
    refused = owner.create(template="shop@h1")
    assert refused.status_code == 404 and "template" in refused.json()["errors"]
    new_clone = owner.create(template="shop").json()
    assert values_in(new_clone) == [("new", ROWS)]
    assert values_in(old_clone) == [("old", ROWS)]
    for clone in (old_clone, new_clone):
        assert owner.call("DELETE", f"/postgraas_instances/{clone['id']}", force=True).status_code == 200
    assert owner.call("DELETE", f"/postgraas_templates/{new['id']}").status_code == 200


def test_a_tokens_max_templates_refuses_one_more(server):
    headers = {"Authorization": f"Bearer {make_token(server, 'quota', '--max-templates', '1')}"}
    url = f"{server.url}/postgraas_templates"
    first = requests.post(url, json={"name": "one", "hash": "h1"}, headers=headers, timeout=120)
    assert first.status_code == 201, first.text
    over = requests.post(url, json={"name": "two", "hash": "h1"}, headers=headers, timeout=120)
    assert over.status_code == 429 and "name" in over.json()["errors"], over.text
    assert [t["name"] for t in requests.get(url, headers=headers, timeout=30).json()] == ["one"]
    assert requests.delete(f"{url}/{first.json()['id']}", headers=headers, timeout=120).status_code == 200
