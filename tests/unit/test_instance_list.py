"""GET /postgraas_instances: pages by id with Link headers, filters, bad parameters, and the whole
list read in batches, one at a time per process."""

from __future__ import annotations

import re

import pytest

from postgraas_server.api import instance_list
from postgraas_server.backends import BackendRegistry
from postgraas_server.tokens import issue_token

from ..conftest import make_app
from ..fakes import FakeBackend
from .api_calls import BODY

NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


def make(client, name: str, **fields) -> int:
    tag = name.replace(".", "_")
    body = {**BODY, "postgraas_instance_name": name, "db_name": f"db_{tag}", "db_username": f"u_{tag}", **fields}
    created = client.post("/postgraas_instances", json=body)
    assert created.status_code == 201, created.get_json()
    return created.get_json()["postgraas_instance_id"]


def ids(answer) -> list[int]:
    assert answer.status_code == 200, answer.get_json()
    return [item["postgraas_instance_id"] for item in answer.get_json()]


def pages(client, url: str, **headers) -> list[list[int]]:
    """Every page from ``url`` on, following rel="next"."""
    seen = []
    while url:
        answer = client.get(url, headers=headers)
        seen.append(ids(answer))
        link = answer.headers.get("Link")
        url = NEXT.match(link).group(1) if link else ""
    return seen


def test_pages_follow_the_link_until_the_last(client):
    made = [make(client, f"n{i}") for i in range(7)]
    assert pages(client, "/postgraas_instances?limit=3") == [made[:3], made[3:6], made[6:]]
    # Exactly a page's worth: no Link after it (one more row is read to know).
    assert pages(client, "/postgraas_instances?limit=7") == [made]
    assert ids(client.get(f"/postgraas_instances?limit=2&after={made[4]}")) == made[5:7]
    assert ids(client.get("/postgraas_instances?limit=2&after=9223372036854775807")) == []


def test_the_link_keeps_the_path_and_the_filters(client):
    for i in range(3):
        make(client, f"keep{i}")
    answer = client.get("/api/v2/postgraas_instances?limit=1&status=ready&name=keep")
    link = NEXT.match(answer.headers["Link"]).group(1)
    assert link.startswith("/api/v2/postgraas_instances?")
    assert "status=ready" in link and "name=keep" in link and "limit=1" in link and "after=" in link


def test_paging_by_id_skips_and_repeats_nothing_while_rows_come_and_go(client):
    made = [make(client, f"m{i}") for i in range(6)]
    first = client.get("/postgraas_instances?limit=2")
    url = NEXT.match(first.headers["Link"]).group(1)
    # Meanwhile: one not seen yet goes, one already seen goes, a new one comes.
    assert client.delete(f"/postgraas_instances/{made[3]}", json={"db_pwd": BODY["db_pwd"]}).status_code == 200
    assert client.delete(f"/postgraas_instances/{made[0]}", json={"db_pwd": BODY["db_pwd"]}).status_code == 200
    late = make(client, "late")
    rest = [i for page in pages(client, url) for i in page]
    assert ids(first) == made[:2]
    assert rest == [made[2], made[4], made[5], late]


def test_filters_by_status_backend_and_name_prefix(tmp_path):
    one, two = FakeBackend(), FakeBackend()
    app = make_app(tmp_path, one, registry=BackendRegistry({"one": one, "two": two}, "one"))
    client = app.test_client()
    a = make(client, "web_1")
    b = make(client, "webx2", backend="two")
    c = make(client, "web.3", backend="two")
    assert ids(client.get("/postgraas_instances?backend=two")) == [b, c]
    # "_" is itself in a prefix, not LIKE's any character.
    assert ids(client.get("/postgraas_instances?name=web_")) == [a]
    assert ids(client.get("/postgraas_instances?name=web.")) == [c]
    assert ids(client.get("/postgraas_instances?name=WEB")) == []  # names are case-sensitive
    assert ids(client.get("/postgraas_instances?name=web&backend=two&limit=1")) == [b]
    assert ids(client.get("/postgraas_instances?status=ready,failed")) == [a, b, c]
    assert ids(client.get("/postgraas_instances?status=failed&status=lost")) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=%EF%BC%91", "limit"),  # a fullwidth digit is no digit here
        ("after=-1", "after"),
        ("after=1e3", "after"),
        ("after=9223372036854775808", "after"),
        ("status=pooled", "status"),
        ("status=ready,bogus", "status"),
        ("backend=elsewhere", "backend"),
        ("name=a%20b", "name"),
        ("name=web%25", "name"),
        ("name=", "name"),
        ("owner=", "owner"),
        ("limit=1&limit=2", "limit"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(client, query, field):
    make(client, "only")
    answer = client.get(f"/postgraas_instances?{query}")
    assert answer.status_code == 400
    assert field in answer.get_json()["errors"], answer.get_json()


def test_all_bad_parameters_are_named_at_once(client):
    answer = client.get("/postgraas_instances?limit=0&after=x&status=nope")
    assert answer.status_code == 400
    assert set(answer.get_json()["errors"]) == {"limit", "after", "status"}


def test_only_admin_tokens_filter_by_owner(tmp_path, fake_backend):
    app = make_app(tmp_path, fake_backend, auth={"mode": "token"})
    with app.app_context():
        alice = {"Authorization": f"Bearer {issue_token('alice', admin=False, max_instances=None, max_ttl=None)[1]}"}
        bob = {"Authorization": f"Bearer {issue_token('bob', admin=False, max_instances=None, max_ttl=None)[1]}"}
        root = {"Authorization": f"Bearer {issue_token('root', admin=True, max_instances=None, max_ttl=None)[1]}"}
    client = app.test_client()
    body = {**BODY, "ttl": 60}
    mine = client.post("/postgraas_instances", json=body, headers=alice).get_json()["postgraas_instance_id"]
    other = {**body, "postgraas_instance_name": "b", "db_name": "b", "db_username": "b"}
    theirs_id = client.post("/postgraas_instances", json=other, headers=bob).get_json()["postgraas_instance_id"]
    assert ids(client.get("/postgraas_instances?owner=alice", headers=root)) == [mine]
    assert ids(client.get("/postgraas_instances?owner=bob&limit=5", headers=root)) == [theirs_id]
    refused = client.get("/postgraas_instances?owner=bob", headers=alice)
    assert refused.status_code == 403
    assert set(refused.get_json()["errors"]) == {"owner"}
    # A token's own list is its own, paged or not.
    assert ids(client.get("/postgraas_instances?limit=10", headers=bob)) == [theirs_id]
    assert ids(client.get("/postgraas_instances", headers=bob)) == [theirs_id]


def test_the_whole_list_is_read_in_batches_and_is_one_array(client, monkeypatch):
    monkeypatch.setattr(instance_list, "BATCH", 2)
    made = [make(client, f"w{i}") for i in range(5)]
    assert ids(client.get("/postgraas_instances")) == made
    assert ids(client.get(f"/postgraas_instances?after={made[1]}")) == made[2:]
    assert ids(client.get("/postgraas_instances?name=w4")) == [made[4]]
    assert client.get("/postgraas_instances?name=none").get_json() == []


def test_a_whole_list_waits_its_turn_then_is_told_to_come_back_while_pages_go_on(app, client, monkeypatch):
    monkeypatch.setattr(instance_list, "WHOLE_LIST_WAIT_S", 0.1)
    made = make(client, "busy")
    assert ids(client.get("/postgraas_instances")) == [made]  # its turn came back with its close
    turns = app.extensions[instance_list._TURNS]
    assert turns.acquire(timeout=1)
    try:
        busy = client.get("/postgraas_instances")
        assert busy.status_code == 503
        assert busy.headers["Retry-After"] == "1"
        assert "limit" in busy.get_json()["msg"]
        assert ids(client.get("/postgraas_instances?limit=10")) == [made]
    finally:
        turns.release()
    assert ids(client.get("/postgraas_instances")) == [made]
