"""The client and the postgraas CLI against a small real HTTP server that answers as told:
output formats, error mapping, exit codes. The live server is in tests/integration."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from click.testing import CliRunner

from postgraas_server.client import (
    AmbiguousName,
    ApiError,
    AuthenticationError,
    BackendFailedError,
    ConfigurationError,
    ConflictError,
    Instance,
    InvalidRequestError,
    NotFoundError,
    PostgraasClient,
    PostgraasClientError,
    QuotaError,
    ServerUnreachable,
    UnavailableError,
    api,
    leftover_of,
)
from postgraas_server.client.api import display_url
from postgraas_server.client.cli import main
from postgraas_server.client.instance import default_db_name, default_username
from postgraas_server.client.output import UnsafeEnvValue, format_env, format_expires, format_span, format_table
from postgraas_server.schemas import IDENTIFIER_RE

TOKEN = "pgr_1_s3cr3t-token-value-abcdefghijkl"


def instance_json(**overrides: Any) -> dict[str, Any]:
    body = {
        "postgraas_instance_id": 7,
        "postgraas_instance_name": "my-db",
        "db_name": "my_db",
        "db_username": "my_db",
        "host": "127.0.0.1",
        "port": 20001,
        "container_id": "abc",
        "backend": "local",
        "status": "ready",
        "status_detail": None,
        "expires_at": "2030-01-01T02:00:00Z",
        "connection_uri": "postgresql://my_db@127.0.0.1:20001/my_db",
        "creation_timestamp": "2030-01-01T00:00:00Z",
        "id": 7,
        "username": "my_db",
        "hostname": "127.0.0.1",
        "password": "",
    }
    return {**body, **overrides}


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakeServer:
    """Answers each (method, path) with the replies queued for it; the last one repeats."""

    def __init__(self) -> None:
        self.replies: dict[tuple[str, str], list[Reply]] = {}
        self.seen: list[Seen] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                fake.seen.append(
                    Seen(
                        self.command,
                        parts.path,
                        parse_qs(parts.query),
                        dict(self.headers),
                        json.loads(data) if data else None,
                    )
                )
                queue = fake.replies.get((self.command, parts.path)) or [Reply(404, {"status": "failed", "msg": "?"})]
                reply = queue.pop(0) if len(queue) > 1 else queue[0]
                if reply.delay:
                    fake.release.wait(reply.delay)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                content_type = "text/html" if reply.raw is not None else "application/json"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left: nothing to report

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def on(self, method: str, path: str, *replies: Reply) -> None:
        self.replies[(method, path)] = list(replies)

    def client(self, **kwargs: Any) -> PostgraasClient:
        return PostgraasClient(self.url, **kwargs)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    fake.thread.start()
    yield fake
    fake.release.set()
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture
def closed_url() -> Iterator[str]:
    # Bound but not listening: connecting is refused, and no one else can take the port meanwhile.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def run(args: list[str], **env: str | None) -> Any:
    base: dict[str, str | None] = {"POSTGRAAS_URL": None, "POSTGRAAS_TOKEN": None, "PGPASSWORD": None}
    return CliRunner().invoke(main, args, env={**base, **env})


# -- output ---------------------------------------------------------------------------------


def created(password: str = "Zq3-_generated_url_safe_password_", **overrides: Any) -> Instance:
    return Instance.from_json(instance_json(db_pwd=password, **overrides), password=password)


def test_env_lines_are_unquoted_when_nothing_needs_quoting():
    assert format_env(created()).splitlines() == [
        "DATABASE_URL=postgresql://my_db:Zq3-_generated_url_safe_password_@127.0.0.1:20001/my_db",
        "PGHOST=127.0.0.1",
        "PGPORT=20001",
        "PGUSER=my_db",
        "PGPASSWORD=Zq3-_generated_url_safe_password_",
        "PGDATABASE=my_db",
        "POSTGRAAS_INSTANCE_ID=7",
    ]


def test_env_lines_quote_what_a_shell_would_misread():
    password = 'it\'s $HOME `id` "x" ;&|'
    env = format_env(created(password))
    assert f"PGPASSWORD={password}" not in env
    # What bash reads back is exactly what was created.
    script = 'eval "$(cat)"; printf "%s\\n%s" "$PGPASSWORD" "$DATABASE_URL"'
    back = subprocess.run(["bash", "-c", script], input=env, capture_output=True, text=True, check=True).stdout
    assert back.split("\n") == [password, created(password).uri]


def test_env_without_password_and_without_address():
    shown = Instance.from_json(instance_json())
    assert format_env(shown, with_password=False).splitlines()[0] == (
        "DATABASE_URL=postgresql://my_db@127.0.0.1:20001/my_db"
    )
    assert "PGPASSWORD" not in format_env(created(), with_password=False)
    creating = created(host=None, port=None, status="creating", connection_uri=None)
    assert [line.split("=")[0] for line in format_env(creating).splitlines()] == [
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "POSTGRAAS_INSTANCE_ID",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (300, "5m"),
        (7380, "2h3m"),
        (7200, "2h"),
        (7199, "1h59m"),
        (90061, "1d1h"),
        (86400, "1d"),
    ],
)
def test_spans_read_like_people_write_them(seconds, text):
    assert format_span(seconds) == text


def test_table():
    now = datetime(2030, 1, 1, 0, 5, 0, tzinfo=UTC)
    rows = [
        Instance.from_json(instance_json()),
        Instance.from_json(
            instance_json(
                postgraas_instance_id=12,
                postgraas_instance_name="a-much-longer-name",
                host=None,
                port=None,
                status="creating",
                expires_at=None,
                creation_timestamp="2030-01-01T00:04:15",
            )
        ),
    ]
    assert format_table(rows, now).splitlines() == [
        "ID  NAME                BACKEND  STATUS    HOST:PORT        AGE  EXPIRES",
        "7   my-db               local    ready     127.0.0.1:20001  5m   in 1h55m",
        "12  a-much-longer-name  local    creating  -                45s  -",
    ]
    assert format_expires(now - timedelta(seconds=1), now) == "expired"


# -- the instance ---------------------------------------------------------------------------


def test_instance_parses_times_and_keeps_the_password_out_of_repr():
    instance = created("hunter2-secret")
    assert instance.expires_at == datetime(2030, 1, 1, 2, tzinfo=UTC)
    assert (instance.host, instance.port, instance.user, instance.dbname) == ("127.0.0.1", 20001, "my_db", "my_db")
    assert instance.uri == "postgresql://my_db:hunter2-secret@127.0.0.1:20001/my_db"
    assert instance.uri_without_password == "postgresql://my_db@127.0.0.1:20001/my_db"
    assert "hunter2-secret" not in repr(instance)
    naive = Instance.from_json(instance_json(creation_timestamp="2030-01-01T00:00:00"))
    assert naive.created_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert Instance.from_json(instance_json()).password is None


@pytest.mark.parametrize(
    "name",
    ["my-ci.db", "9lives", "postgres", "pg_stat", "template1", "Upper-Case", "x" * 63, "a" + "-" * 62],
)
def test_default_identifiers_are_valid(name):
    for ident in (default_db_name(name), default_username(name)):
        assert IDENTIFIER_RE.fullmatch(ident) and len(ident) <= 63, ident
    assert default_username(name).lower() != "postgres" and not default_username(name).startswith("pg_")
    assert default_db_name(name) not in ("template0", "template1")
    assert default_db_name("my-ci.db") == "my_ci_db"


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


# -- the CLI --------------------------------------------------------------------------------


def test_cli_usage_errors_exit_2(server):
    assert run(["--url", server.url, "create"]).exit_code == 2
    assert run(["--url", server.url, "list", "--output", "yaml"]).exit_code == 2
    assert run(["--url", server.url, "create", "x", "--no-wait", "--output", "uri"]).exit_code == 2
    assert run(["--url", server.url, "extend", "7"]).exit_code == 2
    assert server.seen == []


def test_cli_api_error_exits_1_with_the_servers_message_and_fields(server):
    body = {"status": "failed", "msg": "An instance named 'x' exists.", "errors": {"postgraas_instance_name": "taken"}}
    server.on("POST", "/postgraas_instances", Reply(409, body))
    result = run(["--url", server.url, "--token", TOKEN, "create", "x", "--output", "env"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Error: An instance named 'x' exists. (HTTP 409)" in result.stderr
    assert "postgraas_instance_name: taken" in result.stderr
    assert TOKEN not in result.output


def test_cli_unreachable_exits_1(closed_url):
    result = run(["list"], POSTGRAAS_URL=closed_url)
    assert result.exit_code == 1
    assert f"Cannot reach the Postgraas server at {closed_url}" in result.stderr


def test_cli_create_env_prints_only_the_lines(server):
    server.on("POST", "/postgraas_instances", Reply(201, instance_json(db_pwd="generated-pw")))
    result = run(["--url", server.url, "create", "my-db", "--ttl", "30m", "--output", "env"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.splitlines()[4] == "PGPASSWORD=generated-pw"
    assert all("=" in line for line in result.stdout.splitlines())
    assert server.seen[-1].body["ttl"] == "30m"


def test_cli_create_uri_and_json(server):
    server.on("POST", "/postgraas_instances", Reply(201, instance_json(db_pwd="generated-pw")))
    assert run(["--url", server.url, "create", "my-db", "-o", "uri"]).stdout == (
        "postgresql://my_db:generated-pw@127.0.0.1:20001/my_db\n"
    )
    assert json.loads(run(["--url", server.url, "create", "my-db"]).stdout)["db_pwd"] == "generated-pw"


def test_cli_no_wait_prints_what_is_known(server):
    answer = instance_json(db_pwd="pw", status="creating", host=None, port=None, connection_uri=None)
    server.on("POST", "/postgraas_instances", Reply(202, answer, headers={"Location": "/postgraas_instances/7"}))
    result = run(["--url", server.url, "create", "my-db", "--no-wait", "--output", "env"])
    assert result.exit_code == 0
    assert "PGPASSWORD=pw" in result.stdout and "PGHOST" not in result.stdout
    assert "postgraas wait id:7" in result.stderr
    assert server.seen[-1].body["wait"] is False


def test_cli_show_never_has_a_password(server):
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    server.on("GET", "/postgraas_instances/7", Reply(200, instance_json()))
    result = run(["--url", server.url, "show", "7", "--output", "env"])
    assert result.exit_code == 0
    assert "PGPASSWORD" not in result.stdout
    assert "password is not included" in result.stderr
    assert run(["--url", server.url, "show", "7", "-o", "uri"]).stdout == "postgresql://my_db@127.0.0.1:20001/my_db\n"


def test_cli_delete_takes_the_password_from_pgpassword(server):
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    server.on("GET", "/postgraas_instances/7", Reply(200, instance_json()))
    server.on("DELETE", "/postgraas_instances/7", Reply(200, {"status": "success", "msg": "Deleted instance 7."}))
    result = run(["--url", server.url, "delete", "my-db"], PGPASSWORD="from-env")
    assert (result.exit_code, result.stdout) == (0, "Deleted instance 7.\n")
    assert server.seen[-1].body == {"force": False, "db_pwd": "from-env"}
    # With a token an unrelated $PGPASSWORD would only be a 401; an explicit one is still sent.
    run(["--url", server.url, "delete", "7", "--force"], PGPASSWORD="from-env", POSTGRAAS_TOKEN=TOKEN)
    assert server.seen[-1].body == {"force": True}
    run(["--url", server.url, "--token", TOKEN, "delete", "7", "--password", "given"])
    assert server.seen[-1].body == {"force": False, "db_pwd": "given"}


def test_cli_extend(server):
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    server.on("GET", "/postgraas_instances/7", Reply(200, instance_json()))
    server.on("PATCH", "/postgraas_instances/7", Reply(200, instance_json(expires_at="2999-01-01T00:00:00Z")))
    result = run(["--url", server.url, "extend", "7", "--ttl", "2h"], PGPASSWORD="pw")
    assert result.exit_code == 0
    assert "expires 2999-01-01T00:00:00+00:00" in result.stdout
    assert server.seen[-1].body == {"ttl": "2h", "db_pwd": "pw"}


def test_cli_wait_exit_codes(server):
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    path = "/postgraas_instances/7"
    server.on("GET", path, Reply(200, instance_json(status="creating")), Reply(200, instance_json()))
    assert run(["--url", server.url, "wait", "7"]).exit_code == 0
    server.on("GET", path, Reply(200, instance_json(status="creating")), Reply(200, instance_json(status="creating")))
    result = run(["--url", server.url, "wait", "7", "--timeout", "0"])
    assert result.exit_code == 1 and "still creating" in result.stderr
    failed = instance_json(status="failed", status_detail="postgres did not start: FATAL ...")
    server.on("GET", path, Reply(200, failed))
    result = run(["--url", server.url, "wait", "7"])
    assert result.exit_code == 1 and "is failed: postgres did not start" in result.stderr


def test_cli_list_table_and_json(server):
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    table = run(["--url", server.url, "list"]).stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "BACKEND", "STATUS", "HOST:PORT", "AGE", "EXPIRES"]
    assert table[1].split()[:5] == ["7", "my-db", "local", "ready", "127.0.0.1:20001"]
    assert json.loads(run(["--url", server.url, "list", "-o", "json"]).stdout)[0]["postgraas_instance_id"] == 7


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


# -- env output cannot inject variables -------------------------------------------------------


@pytest.mark.parametrize("password", ["x\nNODE_OPTIONS=--require=/tmp/evil.js", "x\rY=1", "x\x1b[2J", "x\u2028Y=1"])
def test_env_output_refuses_control_characters_naming_only_the_variable(server, password):
    with pytest.raises(UnsafeEnvValue) as caught:
        format_env(created(password))
    assert "PGPASSWORD" in str(caught.value) and password not in str(caught.value)
    # The CLI refuses before it creates anything: the instance would exist with nothing printed.
    result = run(["--url", server.url, "create", "my-db", "--password", password, "--output", "env"])
    assert result.exit_code == 1
    assert "PGPASSWORD holds a line break or another control character" in result.stderr
    assert result.stdout == "" and "NODE_OPTIONS" not in result.output and "Y=1" not in result.output
    assert server.seen == []
    # What the server sends is checked as well (the host is in DATABASE_URL, the first line).
    server.on("GET", "/postgraas_instances", Reply(200, [instance_json()]))
    server.on("GET", "/postgraas_instances/7", Reply(200, instance_json(host=f"h{password}")))
    result = run(["--url", server.url, "show", "id:7", "--output", "env"])
    assert result.exit_code == 1 and "DATABASE_URL holds" in result.stderr and result.stdout == ""
    server.seen.clear()
