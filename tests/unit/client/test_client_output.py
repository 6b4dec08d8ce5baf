"""What the client prints (env lines, spans, tables) and its Instance: unquoted where nothing needs
quoting, refused where a shell or a terminal would misread it."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from postgraas_server.client import Instance
from postgraas_server.client.instance import default_db_name, default_username
from postgraas_server.client.output import UnsafeEnvValue, format_env, format_expires, format_span, format_table
from postgraas_server.schemas import IDENTIFIER_RE

from .fake_server import Reply, created, instance_json, run

# -- output ---------------------------------------------------------------------------------


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
