"""The postgraas CLI against a small real HTTP server that answers as told: output formats and exit
codes. The live server is in tests/integration/test_client_cli.py."""

from __future__ import annotations

import json

from .fake_server import TOKEN, Reply, instance_json, run

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
