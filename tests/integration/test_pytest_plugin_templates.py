"""The plugin's templates (--postgraas-template, the pytest_postgraas_build_template hook,
postgraas_clean_database) in real pytest runs, with and without xdist, against a live server (local
backend): one build per content across workers and runs, a fresh clone per test, a failing or missing
hook that leaves nothing, and kept clones of failed tests."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from .conftest import start_local_server
from .servers import Server, stop_server

ROWS = 150

MIGRATION = f"""
create table items (id serial primary key, v text);
insert into items (v) select 'item ' || i from generate_series(1, {ROWS}) i;
"""

# The hook records which process built the template, and with which password.
BUILDS_HERE = """
import os
from pathlib import Path

import psycopg

HERE = Path(__file__).parent


def pytest_postgraas_build_template(database):
    with open(HERE / "builds.txt", "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {database.password}\\n")
    with psycopg.connect(database.uri) as conn:
        for sql in sorted((HERE / "migrations").glob("*.sql")):
            conn.execute(sql.read_text())
"""

FAILING_HOOK = """
def pytest_postgraas_build_template(database):
    raise RuntimeError("the migration this run is about broke")
"""

# Every test writes into its database: a test that saw another's write would count one row more.
USES_CLONES = f"""
import os
from pathlib import Path

import psycopg
import pytest

HERE = Path(__file__).parent


def record(kind, db):
    with open(HERE / "used.txt", "a") as f:
        f.write(f"{{kind}} {{os.environ.get('PYTEST_XDIST_WORKER', 'main')}} {{db.id}} {{db.password}}\\n")


@pytest.mark.parametrize("n", range(6))
def test_a_fresh_clone(postgraas_clean_database, n):
    record("clean", postgraas_clean_database)
    with psycopg.connect(postgraas_clean_database.uri) as conn:
        assert conn.execute("select count(*) from items").fetchone() == ({ROWS},)
        conn.execute("insert into items (v) values ('written by a test')")


def test_the_sessions_clone(postgraas_database, postgraas_template):
    record("session", postgraas_database)
    assert postgraas_template.status == "ready"
    with psycopg.connect(postgraas_database.uri) as conn:
        assert conn.execute("select count(*) from items").fetchone() == ({ROWS},)
"""

ONE_FAILS = """
import os
from pathlib import Path

HERE = Path(__file__).parent


def test_passes(postgraas_clean_database):
    with open(HERE / "used.txt", "a") as f:
        f.write(f"passes {postgraas_clean_database.id} {postgraas_clean_database.password}\\n")


def test_fails(postgraas_clean_database):
    with open(HERE / "used.txt", "a") as f:
        f.write(f"fails {postgraas_clean_database.id} {postgraas_clean_database.password}\\n")
    assert False, "the failure this run is about"
"""


@pytest.fixture(scope="module")
def server(request, tmp_path_factory) -> Iterator[Server]:
    server = start_local_server(request, tmp_path_factory.mktemp("plugin-templates"))
    yield server
    try:
        assert templates(server) == [], "templates left behind"
        assert server.get().json() == [], "instances left behind"
    finally:
        stop_server(server)


def templates(server: Server) -> list[dict]:
    return requests.get(f"{server.url}/postgraas_templates", timeout=30).json()


def delete_templates(server: Server) -> None:
    for template in templates(server):
        assert requests.delete(f"{server.url}/postgraas_templates/{template['id']}", timeout=120).status_code == 200


def used(pytester: pytest.Pytester) -> list[list[str]]:
    return [line.split() for line in (pytester.path / "used.txt").read_text().splitlines()]


def inner_run(pytester: pytest.Pytester, server: Server, *args: str) -> pytest.RunResult:
    # -W error: the plugin must not warn in projects that have filterwarnings = error.
    options = ["--postgraas-url", server.url, "--postgraas-ttl", "10m", "-W", "error"]
    options += ["--postgraas-template", "shop", "--postgraas-template-hash-of", "migrations/*.sql"]
    return pytester.runpytest_subprocess(*options, *args)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    (pytester.path / "migrations").mkdir()
    (pytester.path / "migrations" / "001_items.sql").write_text(MIGRATION)
    return pytester


def test_xdist_workers_share_one_build_and_every_test_gets_a_fresh_clone(project, server):
    project.makeconftest(BUILDS_HERE)
    project.makepyfile(USES_CLONES)
    try:
        result = inner_run(project, server, "-n", "2")
        result.assert_outcomes(passed=7)
        # Two workers ensured the template; one of them built it.
        builds = (project.path / "builds.txt").read_text().splitlines()
        assert len(builds) == 1 and builds[0].split()[0] in ("gw0", "gw1")
        records = used(project)
        assert {worker for _, worker, _, _ in records} == {"gw0", "gw1"}
        clean_ids = [instance_id for kind, _, instance_id, _ in records if kind == "clean"]
        assert len(set(clean_ids)) == 6
        output = result.stdout.str() + result.stderr.str()
        for secret in [builds[0].split()[1], *(password for *_, password in records)]:
            assert secret not in output
        for _, _, instance_id, _ in records:
            assert server.get(f"/{instance_id}").status_code == 404

        # The next run (say, another CI job) finds it ready: no build.
        (project.path / "used.txt").unlink()
        inner_run(project, server).assert_outcomes(passed=7)
        assert len((project.path / "builds.txt").read_text().splitlines()) == 1
        ((template,),) = [templates(server)]
        assert (template["name"], template["status"]) == ("shop", "ready")

        # New content: built anew, once.
        (project.path / "migrations" / "002_more.sql").write_text("create table more_items (id int);\n")
        inner_run(project, server, "-n", "2").assert_outcomes(passed=7)
        assert len((project.path / "builds.txt").read_text().splitlines()) == 2
        assert {t["hash"] for t in templates(server)} - {template["hash"]}
    finally:
        delete_templates(server)


@pytest.mark.parametrize("hook", [FAILING_HOOK, None], ids=["failing-hook", "no-hook"])
def test_a_build_that_fails_leaves_nothing(project, server, hook):
    if hook:
        project.makeconftest(hook)
    project.makepyfile(USES_CLONES)
    result = inner_run(project, server)
    result.assert_outcomes(errors=7)
    output = result.stdout.str()
    if hook:
        assert "RuntimeError: the migration this run is about broke" in output
        assert "postgraas_template: raised by pytest_postgraas_build_template while building template shop" in output
    else:
        assert (
            "postgraas_template: --postgraas-template shop: this process is to build the template, but no "
            "pytest_postgraas_build_template(database) hook is implemented (in conftest.py)"
        ) in output
        assert "The template it was to build is deleted." in output
    assert templates(server) == []
    assert server.get().json() == []


def test_a_failed_tests_clone_is_kept_the_others_deleted(project, server):
    project.makeconftest(BUILDS_HERE)
    project.makepyfile(ONE_FAILS)
    by_test: dict[str, tuple[int, str]] = {}
    try:
        result = inner_run(project, server, "--postgraas-keep-on-failure")
        result.assert_outcomes(passed=1, failed=1)
        by_test.update((test, (int(instance_id), password)) for test, instance_id, password in used(project))
        output = result.stdout.str()
        kept_id, kept_password = by_test["fails"]
        assert re.search(rf"kept instance {kept_id} 'pytest-main-[0-9a-f]{{8}}': postgresql://", output)
        assert kept_password not in output
        assert server.get(f"/{kept_id}").json()["status"] == "ready"
        assert server.get(f"/{by_test['passes'][0]}").status_code == 404
    finally:
        for instance_id, password in by_test.values():
            server.delete(instance_id, {"db_pwd": password, "force": True})
        delete_templates(server)


def test_template_options_that_cannot_work_are_usage_errors(project, server):
    project.makeconftest(BUILDS_HERE)
    project.makepyfile(USES_CLONES)
    without_hash = project.runpytest_subprocess("--postgraas-url", server.url, "--postgraas-template", "shop")
    assert without_hash.ret == pytest.ExitCode.USAGE_ERROR
    without_hash.stderr.fnmatch_lines(["ERROR: --postgraas-template needs --postgraas-template-hash-of GLOB*"])
    no_match = inner_run(project, server, "--postgraas-template-hash-of", "schema/**/*.sql")
    assert no_match.ret == pytest.ExitCode.USAGE_ERROR
    no_match.stderr.fnmatch_lines(["ERROR: --postgraas-template-hash-of 'schema/**/*.sql' matches no file under *"])
    assert templates(server) == []
