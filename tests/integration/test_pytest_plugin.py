"""The postgraas_database fixture in real pytest runs (pytester, in subprocesses, with and
without xdist) against a live server (local backend)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from .conftest import start_local_server
from .servers import POSTGRAAS, Server, make_token, stop_server

# Inner tests record "id name" and the password (the outer test must check it never shows).
USES_THE_DATABASE = """
import os
from pathlib import Path

import psycopg
import pytest


def record(db):
    with open("used.txt", "a") as f:
        f.write(f"{{db.id}} {{db.name}} {{db.password}}\\n")


@pytest.mark.parametrize("n", range({count}))
def test_query(postgraas_database, n):
    db = postgraas_database
    record(db)
    with psycopg.connect(db.uri, connect_timeout=10) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (db.user, db.dbname)
    with psycopg.connect(host=db.host, port=db.port, user=db.user, password=db.password, dbname=db.dbname) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert {fail} is False or n != 0, "the failure this run is about"
"""

# The only test using the database fails in its teardown, which is reported after the session
# fixture's own teardown has run.
TEARDOWN_FAILS = """
import pytest


@pytest.fixture
def breaks_in_teardown():
    yield
    raise RuntimeError("the teardown failure this run is about")


def test_last(postgraas_database, breaks_in_teardown):
    db = postgraas_database
    with open("used.txt", "a") as f:
        f.write(f"{db.id} {db.name} {db.password}\\n")
"""

# The test deletes the database itself, so that the plugin's own delete fails.
DELETES_IT_ITSELF = """
import requests


def test_deletes_it(postgraas_database, request):
    db = postgraas_database
    with open("used.txt", "a") as f:
        f.write(f"{db.id} {db.name} {db.password}\\n")
    url = request.config.getoption("postgraas_url")
    body = {"db_pwd": db.password, "force": True}
    assert requests.delete(f"{url}/postgraas_instances/{db.id}", json=body, timeout=60).status_code == 200
"""

# A fresh database per test, the first deleted by its own test (so the plugin's background
# delete of it fails with a 404); the others written to, each in its own database.
CLEAN_DATABASES = """
import psycopg
import pytest
import requests


@pytest.mark.parametrize("n", range(4))
def test_clean(postgraas_clean_database, request, n):
    db = postgraas_clean_database
    with open("used.txt", "a") as f:
        f.write(f"{db.id} {db.name} {db.password}\\n")
    with psycopg.connect(db.uri, connect_timeout=10) as conn:
        conn.execute("create table mine (n int)")
    if n == 0:
        url = request.config.getoption("postgraas_url")
        body = {"db_pwd": db.password, "force": True}
        assert requests.delete(f"{url}/postgraas_instances/{db.id}", json=body, timeout=60).status_code == 200
"""

# What the server says about the database: its backend and expiry, and when it was asked.
SETTINGS = """
import json
from datetime import UTC, datetime

import requests


def test_settings(postgraas_database, request):
    db = postgraas_database
    with open("used.txt", "a") as f:
        f.write(f"{db.id} {db.name} {db.password}\\n")
    url = request.config.getoption("postgraas_url")
    item = requests.get(f"{url}/postgraas_instances/{db.id}", timeout=30).json()
    seen = {"backend": item["backend"], "expires_at": item["expires_at"], "asked_at": datetime.now(UTC).isoformat()}
    seen["fixture_expires_at"] = db.expires_at.isoformat()
    with open("settings.json", "w") as f:
        json.dump(seen, f)
"""


@pytest.fixture(scope="module")
def server(request, tmp_path_factory) -> Iterator[Server]:
    server = start_local_server(request, tmp_path_factory.mktemp("plugin"))
    yield server
    try:
        assert server.get().json() == [], "instances left behind"
    finally:
        stop_server(server)


def used(pytester: pytest.Pytester) -> dict[int, tuple[str, str]]:
    lines = (pytester.path / "used.txt").read_text().split("\n")
    return {int(i): (name, password) for i, name, password in (line.split() for line in lines if line)}


def inner_run(pytester: pytest.Pytester, server: Server, *args: str) -> pytest.RunResult:
    # -W error: the plugin must not warn in projects that have filterwarnings = error.
    return pytester.runpytest_subprocess("--postgraas-url", server.url, "--postgraas-ttl", "10m", "-W", "error", *args)


def delete_all(server: Server, seen: dict[int, tuple[str, str]]) -> None:
    for instance_id, (_, password) in seen.items():
        server.delete(instance_id, {"db_pwd": password, "force": True})


def test_a_database_per_session_used_then_deleted(pytester, server):
    pytester.makepyfile(USES_THE_DATABASE.format(count=3, fail=False))
    result = inner_run(pytester, server)
    seen = used(pytester)
    try:
        result.assert_outcomes(passed=3)
        assert len(seen) == 1
        ((name, _),) = seen.values()
        assert re.fullmatch(r"pytest-main-[0-9a-f]{8}", name)
    finally:
        delete_all(server, seen)
    for instance_id in seen:
        assert server.get(f"/{instance_id}").status_code == 404


def test_one_database_per_xdist_worker(pytester, server):
    pytester.makepyfile(USES_THE_DATABASE.format(count=6, fail=False))
    result = inner_run(pytester, server, "-n", "2")
    seen = used(pytester)
    try:
        result.assert_outcomes(passed=6)
        assert len(seen) == 2
        assert {name.split("-")[1] for name, _ in seen.values()} == {"gw0", "gw1"}
    finally:
        delete_all(server, seen)
    for instance_id in seen:
        assert server.get(f"/{instance_id}").status_code == 404


@pytest.mark.parametrize(
    "args", [[], ["-n", "2"], ["-p", "no:cacheprovider"]], ids=["plain", "xdist", "no-cacheprovider"]
)
def test_kept_on_failure_with_a_report_and_no_password(pytester, server, args):
    # Two tests; with -n 2 each worker runs one, so one database is kept and the other deleted.
    pytester.makepyfile(USES_THE_DATABASE.format(count=2, fail=True))
    result = inner_run(pytester, server, "--postgraas-keep-on-failure", *args)
    seen = used(pytester)
    try:
        result.assert_outcomes(passed=1, failed=1)
        output = result.stdout.str() + result.stderr.str()
        kept = [int(i) for i in re.findall(r"kept instance (\d+) ", output)]
        assert len(kept) == 1 and kept[0] in seen
        kept_id = kept[0]
        name, password = seen[kept_id]
        assert f"kept instance {kept_id} {name!r}: postgresql://" in output
        for _, secret in seen.values():
            assert secret not in output
        assert server.get(f"/{kept_id}").json()["status"] == "ready"
        for other in set(seen) - {kept_id}:
            assert server.get(f"/{other}").status_code == 404

        env_file = Path(re.search(r"\(mode 0600\): (\S+)", output).group(1))
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        if "no:cacheprovider" in args:
            # A fresh private directory, not a fixed name in /tmp that another user could have made first.
            kept_dir = env_file.parent
            assert kept_dir.parent == Path(tempfile.gettempdir()) and kept_dir.name.startswith("postgraas-kept-")
            assert kept_dir.name != f"postgraas-kept-{os.getuid()}"
            assert stat.S_IMODE(kept_dir.stat().st_mode) == 0o700 and kept_dir.stat().st_uid == os.getuid()
        else:
            assert pytester.path / ".pytest_cache" in env_file.parents
        assert f"PGPASSWORD={password}" in env_file.read_text().splitlines()
        # The delete command the report gives works as printed.
        command = re.search(r"delete:  (\(.*\))", output).group(1)
        path = f"{POSTGRAAS.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRAAS_", "PG"))}
        deleted = subprocess.run(
            [shutil.which("bash") or "bash", "-c", command], env={**env, "PATH": path}, capture_output=True, text=True
        )
        assert deleted.returncode == 0, deleted.stderr
        assert server.get(f"/{kept_id}").status_code == 404
    finally:
        delete_all(server, seen)
        if "no:cacheprovider" in args and "env_file" in locals():
            shutil.rmtree(env_file.parent)


def test_kept_when_the_last_tests_teardown_fails(pytester, server):
    pytester.makepyfile(TEARDOWN_FAILS)
    result = inner_run(pytester, server, "--postgraas-keep-on-failure")
    seen = used(pytester)
    try:
        result.assert_outcomes(passed=1, errors=1)
        ((kept_id, (name, password)),) = seen.items()
        output = result.stdout.str() + result.stderr.str()
        assert f"kept instance {kept_id} {name!r}: postgresql://" in output
        assert password not in output
        assert server.get(f"/{kept_id}").json()["status"] == "ready"
    finally:
        delete_all(server, seen)


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_a_failed_delete_fails_the_run_without_a_warning(pytester, server, xdist):
    pytester.makepyfile(DELETES_IT_ITSELF)
    # -W error (in inner_run): a Python warning would be an error in projects with filterwarnings = error.
    result = inner_run(pytester, server, *xdist)
    seen = used(pytester)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    ((instance_id, (name, password)),) = seen.items()
    output = result.stdout.str() + result.stderr.str()
    assert "postgraas: cleaning up failed" in output
    assert re.search(rf"postgraas_database: deleting {name} \(id {instance_id}\) failed: .*\(HTTP 404\)", output)
    assert password not in output and "Warning" not in output


def test_per_test_databases_are_deleted_in_the_background_and_a_failed_delete_is_reported(pytester, server):
    pytester.makepyfile(CLEAN_DATABASES)
    result = inner_run(pytester, server)
    seen = used(pytester)
    result.assert_outcomes(passed=4)
    # Each test had a database of its own (each created the same table), and the session waited
    # for every delete: the one that failed fails the run, the others are gone.
    assert len(seen) == 4
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    output = result.stdout.str() + result.stderr.str()
    first_id = min(seen)
    name = seen[first_id][0]
    assert re.search(rf"postgraas_clean_database: deleting {name} \(id {first_id}\) failed: .*\(HTTP 404\)", output)
    assert all(password not in output for _, password in seen.values())
    for instance_id in seen:
        assert server.get(f"/{instance_id}").status_code == 404


# Each test records its database and how many of its owner's databases exist while it runs.
HELD_DATABASES = """
import os

import pytest
import requests


@pytest.mark.parametrize("n", range(5))
def test_clean(postgraas_clean_database, request, n):
    db = postgraas_clean_database
    with open("used.txt", "a") as f:
        f.write(f"{db.id} {db.name} {db.password}\\n")
    url = request.config.getoption("postgraas_url")
    headers = {"Authorization": f"Bearer {os.environ['POSTGRAAS_TOKEN']}"}
    live = requests.get(f"{url}/postgraas_instances", headers=headers, timeout=30).json()
    with open("live.txt", "a") as f:
        f.write(f"{len(live)}\\n")
"""


def test_deferred_deletes_are_held_until_the_end_or_until_a_quota_needs_them(
    pytester, request, tmp_path_factory, monkeypatch
):
    server = start_local_server(request, tmp_path_factory.mktemp("quota-server"), auth={"mode": "token"})
    try:
        monkeypatch.setenv("POSTGRAAS_TOKEN", make_token(server, "ci", "--max-instances", "2"))
        pytester.makepyfile(HELD_DATABASES)
        result = inner_run(pytester, server, "--postgraas-defer-deletes", "10")
        result.assert_outcomes(passed=5)
        assert result.ret == pytest.ExitCode.OK
        # Held while the session ran: the second test saw the first's too. The third create was
        # refused for the quota of 2, the two held were deleted, and it was made again.
        live = [int(n) for n in (pytester.path / "live.txt").read_text().split()]
        assert live == [1, 2, 1, 2, 1]
        seen = used(pytester)
        assert len(seen) == 5
        # The last one held is deleted when the session ends.
        headers = {"Authorization": f"Bearer {os.environ['POSTGRAAS_TOKEN']}"}
        for instance_id in seen:
            answer = requests.get(f"{server.url}/postgraas_instances/{instance_id}", headers=headers, timeout=30)
            assert answer.status_code == 404
        bad = inner_run(pytester, server, "--postgraas-defer-deletes", "-1")
        assert bad.ret == pytest.ExitCode.USAGE_ERROR
        bad.stderr.fnmatch_lines(["*--postgraas-defer-deletes*'-1' is not a count*"])
    finally:
        stop_server(server)


def test_backend_and_ttl_reach_the_server(pytester, server):
    pytester.makepyfile(SETTINGS)
    unknown = inner_run(pytester, server, "--postgraas-backend", "nope")
    unknown.assert_outcomes(errors=1)
    unknown.stdout.fnmatch_lines(["*There is no backend named 'nope'*(HTTP 400)*"])
    # After inner_run's --postgraas-ttl 10m (the server's default too): the last one counts.
    result = inner_run(pytester, server, "--postgraas-backend", "local", "--postgraas-ttl", "37m")
    seen = used(pytester)
    try:
        result.assert_outcomes(passed=1)
        settings = json.loads((pytester.path / "settings.json").read_text())
        assert settings["backend"] == "local"
        expires_at = datetime.fromisoformat(settings["expires_at"])
        expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
        asked_at = datetime.fromisoformat(settings["asked_at"])
        assert abs(expires_at - asked_at - timedelta(minutes=37)) < timedelta(minutes=1)
        assert datetime.fromisoformat(settings["fixture_expires_at"]) == expires_at
    finally:
        delete_all(server, seen)
    for instance_id in seen:
        assert server.get(f"/{instance_id}").status_code == 404


def test_with_a_token(pytester, request, tmp_path_factory, monkeypatch):
    monkeypatch.delenv("POSTGRAAS_TOKEN", raising=False)
    server = start_local_server(request, tmp_path_factory.mktemp("token-server"), auth={"mode": "token"})
    try:
        token = make_token(server, "ci")
        pytester.makepyfile(USES_THE_DATABASE.format(count=2, fail=False))
        refused = inner_run(pytester, server)
        refused.assert_outcomes(errors=2)
        refused.stdout.fnmatch_lines(["*postgraas_database: creating pytest-main-* failed: *needs a token*(HTTP 401)*"])

        result = inner_run(pytester, server, "--postgraas-token", token)
        result.assert_outcomes(passed=2)
        assert len(used(pytester)) == 1
        assert token not in result.stdout.str() + result.stderr.str()
        listing = requests.get(
            f"{server.url}/postgraas_instances", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert listing.json() == []
    finally:
        stop_server(server)


def test_without_a_url_the_fixture_says_what_to_set_and_other_runs_are_untouched(pytester, monkeypatch):
    monkeypatch.delenv("POSTGRAAS_URL", raising=False)
    pytester.makepyfile(
        """
        def test_uses(postgraas_database):
            pass

        def test_does_not_use():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-W", "error")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*postgraas_database needs a Postgraas server: pass --postgraas-url URL or set*"])
    assert "POSTGRAAS_URL" in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--postgraas-url", "htp://user:s3cretpw@host"], "URL must start with http:// or https://"),
        (["--postgraas-url", "http://user:s3cretpw@127.0.0.1:99999"], "URL cannot be parsed"),
        (["--postgraas-url", "http://127.0.0.1:9", "--postgraas-token", "tok-s3cretpw\n"], "token may hold only"),
        (
            ["--postgraas-url", "http://user:s3cretpw@127.0.0.1:9"],
            "Cannot reach the Postgraas server at http://127.0.0.1:9:",
        ),
    ],
    ids=["scheme", "port", "token", "unreachable"],
)
def test_no_secret_in_what_the_fixture_reports(pytester, monkeypatch, args, says):
    monkeypatch.delenv("POSTGRAAS_URL", raising=False)
    monkeypatch.delenv("POSTGRAAS_TOKEN", raising=False)
    pytester.makepyfile("def test_uses(postgraas_database):\n    pass\n")
    result = pytester.runpytest_subprocess("-W", "error", *args)
    result.assert_outcomes(errors=1)
    output = result.stdout.str() + result.stderr.str()
    assert says in output
    assert "s3cretpw" not in output and "Traceback" not in output
