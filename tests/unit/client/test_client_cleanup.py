"""A create the client could not finish (a timeout, Ctrl-C, a lost server) is deleted again, with
the password it sent and nothing of anybody else's; what could not be says how to delete it."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from postgraas_server.client import (
    PostgraasClient,
    ServerUnreachable,
    api,
    leftover_of,
)

from .fake_server import FakeServer, Reply, instance_json, run

# -- an interrupted create is undone ----------------------------------------------------------


class InterruptedAfterPost(requests.Session):
    """Ctrl-C once the create went out: the server has it, its answer never reaches the caller."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().request(method, url, *args, **kwargs)
        if method == "POST":
            raise KeyboardInterrupt
        return response


def sent_password(server: FakeServer) -> str:
    return next(s.body["db_pwd"] for s in server.seen if s.method == "POST")


@pytest.fixture
def fast_cleanup(monkeypatch) -> None:
    monkeypatch.setattr(api, "CLEANUP_LOOKS", (0.0, 0.0, 0.0))


def test_a_create_timing_out_is_deleted_with_the_password_sent(server):
    server.on("POST", "/postgraas_instances", Reply(201, instance_json(), delay=5))
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json(status="creating")]))
    cancelled = {"status": "success", "msg": "Cancelled the creation of instance 'my-db' (id 7)."}
    server.on("DELETE", "/postgraas_instances/7", Reply(200, cancelled))
    with server.client(create_timeout=0.3) as client, pytest.raises(ServerUnreachable) as caught:
        client.create("my-db")
    assert leftover_of(caught.value) is None
    delete = server.seen[-1]
    assert (delete.method, delete.path) == ("DELETE", "/postgraas_instances/7")
    assert delete.body == {"force": True, "db_pwd": sent_password(server)}


def test_ctrl_c_during_a_create_deletes_it_and_stays_a_keyboard_interrupt(server):
    server.on("POST", "/postgraas_instances", Reply(201, instance_json()))
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    server.on("DELETE", "/postgraas_instances/7", Reply(200, {"status": "success", "msg": "Deleted."}))
    with (
        PostgraasClient(server.url, session=InterruptedAfterPost()) as client,
        pytest.raises(KeyboardInterrupt) as caught,
    ):
        client.create("my-db")
    assert leftover_of(caught.value) is None
    assert server.seen[-1].body == {"force": True, "db_pwd": sent_password(server)}


def test_cleanup_leaves_others_instances_of_that_name_alone(server, fast_cleanup):
    # An instance of that name that the generated password does not open is someone else's.
    server.on("POST", "/postgraas_instances", Reply(201, instance_json()))
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    wrong = {"status": "failed", "msg": "The password is wrong."}
    server.on("DELETE", "/postgraas_instances/7", Reply(401, wrong))
    with (
        PostgraasClient(server.url, session=InterruptedAfterPost()) as client,
        pytest.raises(KeyboardInterrupt) as caught,
    ):
        client.create("my-db")
    assert leftover_of(caught.value) is None
    # Nothing found at all: the server never got it; nothing to delete, nothing to report.
    server.on("GET", "/postgraas_instances", Reply(200, []))
    with (
        PostgraasClient(server.url, session=InterruptedAfterPost()) as client,
        pytest.raises(KeyboardInterrupt) as caught,
    ):
        client.create("my-db")
    assert leftover_of(caught.value) is None
    assert [s.method for s in server.seen].count("DELETE") == 1


def test_a_failed_cleanup_says_what_remains_and_how_to_delete_it_but_not_the_password(server):
    server.on("POST", "/postgraas_instances", Reply(201, instance_json()))
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    server.on("DELETE", "/postgraas_instances/7", Reply(502, {"status": "failed", "msg": "The backend failed."}))
    with (
        PostgraasClient(server.url, session=InterruptedAfterPost()) as client,
        pytest.raises(KeyboardInterrupt) as caught,
    ):
        client.create("my-db")
    leftover = leftover_of(caught.value)
    assert leftover is not None and (leftover.name, leftover.instance_id) == ("my-db", 7)
    text = leftover.describe()
    assert "'my-db' (id 7)" in text and "postgraas delete id:7 --force" in text and "The backend failed" in text
    assert sent_password(server) not in text
    assert text in caught.value.__notes__  # shown in a traceback too


def test_cli_ctrl_c_exits_130_and_names_what_it_could_not_delete(server, monkeypatch):
    server.on("POST", "/postgraas_instances", Reply(201, instance_json(db_pwd="never-shown")))
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    server.on("DELETE", "/postgraas_instances/7", Reply(503, {"status": "failed", "msg": "Try later."}))
    original = requests.Session.request

    def interrupted(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = original(self, method, url, *args, **kwargs)
        if method == "POST":
            raise KeyboardInterrupt
        return response

    monkeypatch.setattr(requests.Session, "request", interrupted)
    result = run(["--url", server.url, "create", "my-db", "-o", "env"])
    assert result.exit_code == 130
    assert result.stdout == ""
    assert "Interrupted." in result.stderr and "postgraas delete id:7 --force" in result.stderr
    assert sent_password(server) not in result.output and "never-shown" not in result.output
    # Undone: just the note.
    server.on("DELETE", "/postgraas_instances/7", Reply(200, {"status": "success", "msg": "Deleted."}))
    result = run(["--url", server.url, "create", "my-db"])
    assert result.exit_code == 130
    assert "Nothing of 'my-db' was left on the server." in result.stderr


def test_a_given_password_is_not_used_to_delete_by_name(server, monkeypatch):
    # It may well be another instance's of that name too; the caller knows it and can delete.
    server.on("POST", "/postgraas_instances", Reply(201, instance_json()))
    with (
        PostgraasClient(server.url, session=InterruptedAfterPost()) as client,
        pytest.raises(KeyboardInterrupt) as caught,
    ):
        client.create("my-db", password="mine")
    assert [s.method for s in server.seen] == ["POST"]
    leftover = leftover_of(caught.value)
    assert leftover is not None and leftover.password_given
    assert "postgraas delete name:my-db --force" in leftover.describe() and "mine" not in leftover.describe()


def test_a_create_that_never_connected_has_nothing_to_undo(closed_url):
    with PostgraasClient(closed_url) as client, pytest.raises(ServerUnreachable) as caught:
        client.create("my-db")
    assert not caught.value.maybe_received
    assert leftover_of(caught.value) is None


def test_a_create_losing_its_server_says_it_could_not_undo_it(server, fast_cleanup):
    # The connection breaks while waiting for the answer, and the server stays away: the instance may remain.
    server.on("POST", "/postgraas_instances", Reply(201, instance_json(), delay=5))

    class Broken(requests.Session):
        def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
            if method == "POST":
                super().request(method, url, *args, **{**kwargs, "timeout": 0.2})
            raise requests.ConnectionError("('Connection aborted.', RemoteDisconnected('closed'))")

    with PostgraasClient(server.url, session=Broken()) as client, pytest.raises(ServerUnreachable) as caught:
        client.create("my-db")
    leftover = leftover_of(caught.value)
    assert leftover is not None and leftover.instance_id is None
    assert "postgraas delete name:my-db --force" in leftover.describe()
