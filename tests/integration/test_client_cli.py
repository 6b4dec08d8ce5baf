"""The postgraas console script, run as users run it, against a live server (local backend)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import requests

from .conftest import start_local_server
from .servers import POSTGRAAS, Server, eventually, make_token, stop_server

ENV_LINE = re.compile(r"[A-Z_]+=\S+")


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the console script with a clean environment: only what the test gives, plus PATH."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRAAS_", "PG"))}
    return subprocess.run([str(POSTGRAAS), *args], capture_output=True, text=True, env={**clean, **env}, timeout=180)


def evaluated(env_output: str) -> dict[str, str]:
    """What `eval "$(postgraas create ... --output env)"` leaves in a shell."""
    script = 'eval "$1"; for k in DATABASE_URL PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE POSTGRAAS_INSTANCE_ID; '
    script += 'do printf "%s=%s\\0" "$k" "${!k}"; done'
    out = subprocess.run(["bash", "-c", script, "_", env_output], capture_output=True, text=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory) -> Iterator[Server]:
    server = start_local_server(request, tmp_path_factory.mktemp("client-cli"))
    yield server
    try:
        assert server.get().json() == [], "instances left behind"
    finally:
        stop_server(server)


@pytest.fixture
def name() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def test_create_use_list_show_extend_wait_delete(server, name):
    url = {"POSTGRAAS_URL": server.url}
    made = cli("create", name, "--ttl", "10m", "--output", "env", **url)
    assert made.returncode == 0, made.stderr
    # Piped: nothing but the KEY=value lines on stdout, no progress on stderr.
    lines = made.stdout.splitlines()
    assert [line.split("=")[0] for line in lines] == [
        "DATABASE_URL",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "POSTGRAAS_INSTANCE_ID",
    ]
    assert all(ENV_LINE.fullmatch(line) for line in lines), lines
    assert made.stderr == ""
    env = evaluated(made.stdout)
    instance_id, password = env["POSTGRAAS_INSTANCE_ID"], env["PGPASSWORD"]
    try:
        with psycopg.connect(env["DATABASE_URL"], connect_timeout=10) as conn:
            assert conn.execute("select current_user, current_database()").fetchone() == (
                env["PGUSER"],
                env["PGDATABASE"],
            )
        assert env["PGDATABASE"] == name.replace("-", "_")

        listed = cli("list", **url)
        assert listed.returncode == 0
        row = next(line.split() for line in listed.stdout.splitlines() if name in line)
        assert row[:5] == [instance_id, name, "local", "ready", f"{env['PGHOST']}:{env['PGPORT']}"]
        assert row[-2] == "in" and row[-1].startswith(("9m", "10m"))

        shown = cli("show", name, **url)
        assert shown.returncode == 0
        item = json.loads(shown.stdout)
        assert (item["postgraas_instance_id"], item["status"], item["backend_state"]) == (
            int(instance_id),
            "ready",
            "running",
        )
        assert password not in shown.stdout
        shown_env = cli("show", instance_id, "--output", "env", **url)
        assert "PGPASSWORD" not in shown_env.stdout and password not in shown_env.stdout
        assert "password is not included" in shown_env.stderr

        extended = cli("extend", instance_id, "--ttl", "2h", PGPASSWORD=password, **url)
        assert extended.returncode == 0, extended.stderr
        expires = datetime.fromisoformat(json.loads(cli("show", instance_id, **url).stdout)["expires_at"])
        assert abs(expires - datetime.now(UTC) - timedelta(hours=2)) < timedelta(minutes=1)

        waited = cli("wait", name, "--timeout", "5", **url)
        assert (waited.returncode, waited.stdout) == (0, f"{name} (id {instance_id}) is ready.\n")

        # The server's own message, exit 1.
        again = cli("create", name, **url)
        assert again.returncode == 1
        assert f"An instance named {name!r} already exists. (HTTP 409)" in again.stderr
        assert "postgraas_instance_name: already exists" in again.stderr
        wrong = cli("delete", instance_id, PGPASSWORD="wrong", **url)
        assert wrong.returncode == 1 and "(HTTP 401)" in wrong.stderr

        # As after eval "$(postgraas create ... --output env)": the password comes from $PGPASSWORD.
        deleted = cli("delete", instance_id, **{**url, **env})
        assert deleted.returncode == 0, deleted.stderr
        assert f"(id {instance_id})" in deleted.stdout
    finally:
        server.delete(int(instance_id), {"db_pwd": password, "force": True})
    gone = cli("show", instance_id, **url)
    assert gone.returncode == 1 and "(HTTP 404)" in gone.stderr
    assert name not in cli("list", **url).stdout


def test_usage_errors_exit_2_and_unreachable_exits_1(server):
    assert cli("create", "--bogus", "x", POSTGRAAS_URL=server.url).returncode == 2
    assert cli("create", POSTGRAAS_URL=server.url).returncode == 2
    unreachable = cli("--url", "http://127.0.0.1:9", "list")
    assert unreachable.returncode == 1
    assert "Cannot reach the Postgraas server at http://127.0.0.1:9" in unreachable.stderr
    assert server.get().json() == []


def test_create_without_waiting_then_wait(server, name):
    made = cli("create", name, "--no-wait", "--ttl", "10m", "--output", "env", POSTGRAAS_URL=server.url)
    assert made.returncode == 0, made.stderr
    env = evaluated(made.stdout)
    try:
        assert env["PGPASSWORD"] and not env["PGHOST"]
        waited = cli("wait", env["POSTGRAAS_INSTANCE_ID"], "--timeout", "60", POSTGRAAS_URL=server.url)
        assert waited.returncode == 0, waited.stderr
        uri = json.loads(cli("show", name, POSTGRAAS_URL=server.url).stdout)["connection_uri"]
        with psycopg.connect(uri, password=env["PGPASSWORD"], connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        deleted = cli("delete", name, "--force", PGPASSWORD=env["PGPASSWORD"], POSTGRAAS_URL=server.url)
    assert deleted.returncode == 0, deleted.stderr


def test_with_a_token(request, tmp_path, name):
    server = start_local_server(request, tmp_path, auth={"mode": "token"})
    try:
        token = make_token(server, "carol")
        refused = cli("list", POSTGRAAS_URL=server.url)
        assert refused.returncode == 1 and "needs a token" in refused.stderr and "(HTTP 401)" in refused.stderr

        auth = {"POSTGRAAS_URL": server.url, "POSTGRAAS_TOKEN": token}
        made = cli("create", name, "--ttl", "10m", "--output", "uri", **auth)
        assert made.returncode == 0, made.stderr
        with psycopg.connect(made.stdout.strip(), connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert name in cli("list", **auth).stdout
        # The token's owner deletes without the password; an unrelated $PGPASSWORD is not sent.
        deleted = cli("delete", name, PGPASSWORD="unrelated", **auth)
        assert deleted.returncode == 0, deleted.stderr
        outputs = made.stdout + made.stderr + deleted.stdout + deleted.stderr
        assert token not in outputs
        admin = requests.get(
            f"{server.url}/postgraas_instances", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert admin.json() == []
    finally:
        stop_server(server)


def test_ctrl_c_during_create_leaves_no_instance(request, tmp_path, name, slow_start_bin):
    # Without a token only the generated password deletes the instance, and it was never printed:
    # the CLI must delete it itself (the server cancels a creation still running).
    server = start_local_server(request, tmp_path, local={"bin_dir": str(slow_start_bin)})
    try:

        def rows() -> list[dict]:
            return [r for r in server.get().json() if r["postgraas_instance_name"] == name]

        clean = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRAAS_", "PG"))}
        process = subprocess.Popen(
            [str(POSTGRAAS), "create", name, "--output", "env"],
            env={**clean, "POSTGRAAS_URL": server.url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            eventually(lambda: [r["status"] for r in rows()] == ["creating"], 30, "the instance is creating")
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        eventually(lambda: rows() == [], 30, "the interrupted creation is deleted")
        assert process.returncode in (130, 1), stderr
        assert stdout == ""
        assert "Interrupted." in stderr and "Traceback" not in stderr
    finally:
        stop_server(server)
