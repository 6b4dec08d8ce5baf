"""The client (postgraas_server.client) against a small real HTTP server that answers as told:
error mapping, waiting, finding by id or name, and no secret in any message. The live server is in
tests/integration."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests

from postgraas_server.client import (
    AmbiguousName,
    ApiError,
    AuthenticationError,
    BackendFailedError,
    ConfigurationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PostgraasClient,
    PostgraasClientError,
    QuotaError,
    ServerUnreachable,
    UnavailableError,
)
from postgraas_server.client.addresses import display_url

from .fake_server import TOKEN, Reply, instance_json, run

# -- the client -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, InvalidRequestError),
        (422, InvalidRequestError),
        (429, QuotaError),
        (502, BackendFailedError),
        (503, UnavailableError),
        (504, BackendFailedError),
        (418, ApiError),
    ],
)
def test_errors_map_to_classes_with_the_servers_message(server, status, cls):
    body = {"status": "failed", "msg": "The server says no.", "errors": {"db_name": "is required"}}
    server.on("GET", "/postgraas_instances", Reply(status, body, headers={"Retry-After": "17"}))
    with server.client() as client, pytest.raises(cls) as caught:
        client.list()
    error = caught.value
    assert isinstance(error, ApiError) and isinstance(error, PostgraasClientError)
    assert (error.status, error.message, error.errors, error.retry_after) == (
        status,
        "The server says no.",
        {"db_name": "is required"},
        17.0,
    )
    assert str(error) == f"The server says no. (HTTP {status})"


def test_a_non_json_error_still_says_what_came_back(server):
    server.on("GET", "/postgraas_instances", Reply(502, raw=b"<html><h1>502 Bad Gateway</h1>\n</html>"))
    with server.client() as client, pytest.raises(BackendFailedError) as caught:
        client.list()
    assert "Not a Postgraas answer" in str(caught.value)
    assert "502 Bad Gateway" in str(caught.value)
    server.on("GET", "/health", Reply(200, raw=b"<html>hello</html>"))
    with server.client() as client, pytest.raises(PostgraasClientError, match="not JSON"):
        client.health()


def test_secrets_are_redacted_even_when_the_server_echoes_them(server):
    echo = {"status": "failed", "msg": f"bad token {TOKEN} and pw hunter2", "errors": {"db_pwd": "hunter2?"}}
    server.on("POST", "/postgraas_instances", Reply(400, echo))
    with server.client(token=TOKEN) as client, pytest.raises(InvalidRequestError) as caught:
        client.create("x", password="hunter2")
    assert TOKEN not in str(caught.value) and "hunter2" not in str(caught.value)
    assert "hunter2" not in json.dumps(caught.value.errors)
    assert TOKEN not in repr(client)


def test_unreachable_and_timeouts(server, closed_url):
    with PostgraasClient(closed_url) as client, pytest.raises(ServerUnreachable, match="Connection refused"):
        client.list()
    server.on("GET", "/health", Reply(200, {"status": "ok"}, delay=5))
    with server.client(timeout=0.2) as client, pytest.raises(ServerUnreachable, match="did not answer within 0.2 s"):
        client.health()


def test_create_sends_what_the_api_expects_and_keeps_the_password(server):
    server.on("POST", "/postgraas_instances", Reply(201, instance_json(db_pwd="generated-pw")))
    with server.client(token=TOKEN) as client:
        instance = client.create("my-ci.db", ttl="2h")
    request = server.seen[-1]
    generated = request.body.pop("db_pwd")
    assert request.body == {
        "postgraas_instance_name": "my-ci.db",
        "db_name": "my_ci_db",
        "db_username": "my_ci_db",
        "wait": True,
        "ttl": "2h",
    }
    # Generated here, so that an answer that never comes cannot take it along; URL-safe, no quoting.
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", generated)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert instance.password == "generated-pw"
    assert instance.uri == "postgresql://my_db:generated-pw@127.0.0.1:20001/my_db"


def test_no_token_no_authorization_header(server):
    server.on("GET", "/postgraas_instances", Reply(200, []))
    with server.client() as client:
        assert client.list() == []
    assert "Authorization" not in server.seen[-1].headers


def test_wait_polls_in_chunks_until_settled(server):
    server.on(
        "GET",
        "/postgraas_instances/7",
        Reply(200, instance_json(status="creating")),
        Reply(200, instance_json(status="creating")),
        Reply(200, instance_json(status="failed", status_detail="postgres did not start")),
    )
    progress: list[str] = []
    with server.client() as client:
        instance = client.wait(7, 100, on_progress=lambda i: progress.append(i.status))
    assert (instance.status, instance.status_detail) == ("failed", "postgres did not start")
    assert progress == ["creating", "creating"]
    assert all(s.query["wait"] == ["ready"] and float(s.query["timeout"][0]) <= 30 for s in server.seen)


def test_wait_returns_what_it_saw_at_the_deadline(server):
    server.on("GET", "/postgraas_instances/7", Reply(200, instance_json(status="creating")))
    with server.client() as client:
        assert client.wait(7, 0).status == "creating"
    assert server.seen[-1].query["timeout"] == ["0.0"]


def test_find_by_id_or_unique_name(server):
    listing = [instance_json(), instance_json(postgraas_instance_id=8, postgraas_instance_name="twin")]
    listing.append(instance_json(postgraas_instance_id=9, postgraas_instance_name="twin"))
    server.on("GET", "/postgraas_instances", Reply(200, listing))
    server.on("GET", "/postgraas_instances/42", Reply(200, instance_json(postgraas_instance_id=42)))
    server.on("GET", "/postgraas_instances/7", Reply(200, instance_json(backend_state="running")))
    with server.client() as client:
        assert client.resolve(42) == client.resolve("id:42") == 42
        assert server.seen == []  # an id needs no request
        assert client.resolve("42") == 42  # digits: one list, to see that no instance is named so
        assert len(server.seen) == 1
        assert client.find("42").id == 42
        assert client.resolve("name:my-db") == 7
        # By name: the item as its GET shows it, backend_state included.
        assert (client.resolve("my-db"), client.find("my-db").backend_state) == (7, "running")
        with pytest.raises(NotFoundError, match="no instance named 'nope'"):
            client.find("nope")
        with pytest.raises(AmbiguousName, match="ids 8, 9"):
            client.find("twin")


def test_ready_returns_the_checks_even_when_not_ready(server):
    checks = {"status": "failed", "checks": {"metadb": "ok", "docker": "unreachable"}}
    server.on("GET", "/ready", Reply(503, checks))
    with server.client() as client:
        assert client.ready() == checks


# -- no secret in a message -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "htp://user:s3cretpw@host",
        "http://user:s3cretpw@127.0.0.1:99999",
        "http://user:s3cretpw@[::1",
        "http://user:s3cretpw@",
        "http://user:s3cretpw@ho st",
        "user:s3cretpw@host:8080",
    ],
)
def test_a_bad_url_is_refused_without_repeating_it(url):
    with pytest.raises(ConfigurationError) as caught:
        PostgraasClient(url)
    assert isinstance(caught.value, ValueError)
    assert "s3cretpw" not in str(caught.value) and "URL" in str(caught.value)
    result = run(["--url", url, "list"])
    assert result.exit_code == 2
    assert "--url" in result.stderr and "s3cretpw" not in result.output
    result = run(["list"], POSTGRAAS_URL=url)
    assert result.exit_code == 2 and "s3cretpw" not in result.output


@pytest.mark.parametrize("token", ["tok3n-s3cret\n", "tok3n s3cret", "tok3n-s3cret\x00", "tok3n-s3cret\u00e9"])
def test_a_bad_token_is_refused_without_repeating_it(server, token):
    with pytest.raises(ConfigurationError) as caught:
        PostgraasClient(server.url, token=token)
    assert "s3cret" not in str(caught.value) and "token" in str(caught.value)
    if "\x00" not in token:  # the OS refuses NUL in arguments and the environment alike
        result = run(["--url", server.url, "--token", token, "list"])
        assert result.exit_code == 2
        assert "--token" in result.stderr and "s3cret" not in result.output
        result = run(["--url", server.url, "list"], POSTGRAAS_TOKEN=token)
        assert result.exit_code == 2 and "s3cret" not in result.output
    assert server.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://u:s3cretpw@127.0.0.1:99999",
        "http://u:s3cretpw@[::1",
        "http://u:s3c@retpw@host/x",
        "https://u:s3cretpw@h",
    ],
)
def test_display_url_never_raises_and_never_shows_the_password(url):
    shown = display_url(url)
    assert "s3c" not in shown and "retpw" not in shown
    assert shown.startswith(url.split("//")[0] + "//")


def test_requests_error_text_never_reaches_a_message(server):
    # Whatever requests says may quote the URL with its password or a header with the token.
    class Failing(requests.Session):
        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

        def request(self, *args: Any, **kwargs: Any) -> requests.Response:
            raise self.error

    errors = [
        requests.exceptions.InvalidHeader(f"Invalid header value 'Bearer {TOKEN}\\n'"),
        requests.exceptions.InvalidURL(f"Failed to parse: http://u:{TOKEN}@host"),
        requests.ConnectionError(f"HTTPConnectionPool(host='u:{TOKEN}@host'): Max retries exceeded"),
        requests.exceptions.ReadTimeout(f"Read timed out (http://u:{TOKEN}@host)"),
    ]
    for error in errors:
        with (
            PostgraasClient(server.url, token=TOKEN, session=Failing(error)) as client,
            pytest.raises(PostgraasClientError) as caught,
        ):
            client.list()
        assert TOKEN not in str(caught.value)
        assert type(error).__name__ in str(caught.value) or "did not answer" in str(caught.value)


def test_unreachable_names_the_os_reason(closed_url):
    with PostgraasClient(closed_url.replace("http://", "http://u:s3cretpw@")) as client:
        with pytest.raises(ServerUnreachable) as caught:
            client.list()
    reason = "Connection refused (ConnectionError)"
    assert str(caught.value) == f"Cannot reach the Postgraas server at {closed_url}: {reason}."


# -- names made of digits ---------------------------------------------------------------------


def digit_named_listing() -> list[dict[str, Any]]:
    # Instance 2, and instance 5 named "2".
    return [instance_json(postgraas_instance_id=2), instance_json(postgraas_instance_id=5, postgraas_instance_name="2")]


def test_a_name_of_digits_is_never_taken_for_an_id(server):
    listing = digit_named_listing()
    server.on("GET", "/postgraas_instances", Reply(200, listing))
    with server.client() as client:
        ambiguous = r"'2' is an id, and also the name of instance\(s\) 5: say id:2 or name:2"
        with pytest.raises(AmbiguousName, match=ambiguous):
            client.resolve("2")
        assert client.resolve("id:2") == 2
        assert client.resolve("name:2") == 5
        # Instance 5 named "5" is no ambiguity; a digit name alone is still read as the id.
        five = instance_json(postgraas_instance_id=5, postgraas_instance_name="5")
        server.on("GET", "/postgraas_instances", Reply(200, [five]))
        assert client.resolve("5") == 5
        with pytest.raises(PostgraasClientError, match="digits only"):
            client.resolve("id:two")
        with pytest.raises(NotFoundError):
            client.resolve("name:nope")


def test_cli_delete_of_an_ambiguous_number_deletes_nothing(server):
    listing = digit_named_listing()
    server.on("GET", "/postgraas_instances", Reply(200, listing))
    server.on("DELETE", "/postgraas_instances/5", Reply(200, {"status": "success", "msg": "Deleted instance 5."}))
    result = run(["--url", server.url, "delete", "2"], PGPASSWORD="pw")
    assert result.exit_code == 1 and "say id:2 or name:2" in result.stderr
    assert all(s.method == "GET" for s in server.seen)
    result = run(["--url", server.url, "delete", "name:2"], PGPASSWORD="pw")
    assert (result.exit_code, result.stdout) == (0, "Deleted instance 5.\n")
    assert "id:2" in run(["--url", server.url, "delete", "--help"]).stdout
