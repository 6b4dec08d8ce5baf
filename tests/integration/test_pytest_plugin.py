"""The postgraas_database fixture in real pytest runs (pytester, in subprocesses, with and
without xdist) against a live server (local backend)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Server, stop_server
from .test_client_cli import POSTGRAAS, start_local_server

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


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_kept_on_failure_with_a_report_and_no_password(pytester, server, xdist):
    # Two tests; with -n 2 each worker runs one, so one database is kept and the other deleted.
    pytester.makepyfile(USES_THE_DATABASE.format(count=2, fail=True))
    result = inner_run(pytester, server, "--postgraas-keep-on-failure", *xdist)
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
