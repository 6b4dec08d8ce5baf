"""The client's list as an iterator over pages, following rel="next" by its ``after`` only; and
a 2.x server that answers everything at once."""

from __future__ import annotations

import pytest

from postgraas_server.client import PostgraasClientError

from .fake_server import Reply, instance_json

PATH = "/postgraas_instances"


def page(*ids: int, after: int | None = None, link: str | None = None) -> Reply:
    headers = {}
    if after is not None:
        headers["Link"] = f'<{link or PATH}?limit=2&after={after}>; rel="next"'
    items = [instance_json(postgraas_instance_id=i, id=i, postgraas_instance_name=f"n{i}") for i in ids]
    return Reply(200, items, headers=headers)


def test_pages_are_read_as_the_iterator_goes(server):
    server.on("GET", PATH, page(1, 2, after=2), page(3, 4, after=4), page(5))
    with server.client() as client:
        instances = client.instances(page_size=2, status=["ready", "failed"], backend="docker", name="n")
        assert [next(instances).id for _ in range(2)] == [1, 2]
        assert len(server.seen) == 1  # the second page only when it is needed
        assert [i.id for i in instances] == [3, 4, 5]
    assert [s.query.get("after") for s in server.seen] == [None, ["2"], ["4"]]
    for seen in server.seen:
        assert seen.query["limit"] == ["2"]
        assert seen.query["status"] == ["ready,failed"]
        assert (seen.query["backend"], seen.query["name"]) == (["docker"], ["n"])


def test_a_link_elsewhere_is_followed_only_for_its_after(server):
    server.on("GET", PATH, page(1, after=1, link="http://elsewhere.example/steal"), page(2))
    with server.client() as client:
        assert [i.id for i in client.list(page_size=1)] == [1, 2]
    assert [(s.path, s.query.get("after")) for s in server.seen] == [(PATH, None), (PATH, ["1"])]


def test_a_2x_server_answers_everything_in_one_page(server):
    server.on("GET", PATH, page(1, 2, 3))
    with server.client() as client:
        assert [i.id for i in client.list()] == [1, 2, 3]
    assert len(server.seen) == 1


@pytest.mark.parametrize("size", [0, 1001])
def test_a_page_size_out_of_range_is_refused_before_any_request(server, size):
    with server.client() as client, pytest.raises(PostgraasClientError, match="page_size"):
        client.list(page_size=size)
    assert server.seen == []


def test_a_name_lookup_asks_for_the_name_as_a_prefix(server):
    server.on("GET", PATH, page(7, 8))
    with server.client() as client:
        # n7 only: the server's prefix match may bring longer names.
        assert client.resolve("name:n7") == 7
        assert server.seen[-1].query["name"] == ["n7"]
        with pytest.raises(PostgraasClientError, match="no instance named"):
            client.resolve("name:not a name")
