"""`postgraas template ...` and `postgraas create --template`, run as users run them, against a live
server (local backend): concurrent ensures that build once with a psql command, a clone that holds
the rows, a failing command that leaves nothing, and usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from .conftest import start_local_server
from .servers import POSTGRAAS, Server, stop_server

ROWS = 120
# Records the build, then loads every migration; a failing one stops it (psql exits 3).
BUILD = (
    'echo "$PGUSER $PGPASSWORD" >> builds.txt && '
    'for f in migrations/*.sql; do psql -v ON_ERROR_STOP=1 -q -f "$f" || exit; done'
)


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The console script in ``cwd``, with a clean environment: only what the test gives, plus PATH."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRAAS_", "PG"))}
    return subprocess.run(
        [str(POSTGRAAS), *args], capture_output=True, text=True, cwd=cwd, env={**clean, **env}, timeout=180
    )


def evaluated(env_output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in env_output.splitlines())


@pytest.fixture(scope="module")
def server(request, tmp_path_factory) -> Iterator[Server]:
    server = start_local_server(request, tmp_path_factory.mktemp("template-cli"))
    yield server
    try:
        assert requests_json(server, "/postgraas_templates") == [], "templates left behind"
        assert server.get().json() == [], "instances left behind"
    finally:
        stop_server(server)


def requests_json(server: Server, path: str) -> list[dict]:
    return requests.get(f"{server.url}{path}", timeout=30).json()


@pytest.fixture
def project(tmp_path) -> Path:
    """A project with migrations, in a directory of its own."""
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_items.sql").write_text(
        "create table items (id serial primary key, v text);\n"
        f"insert into items (v) select 'item ' || i from generate_series(1, {ROWS}) i;\n"
    )
    return tmp_path


@pytest.fixture
def name() -> str:
    return f"shop-{uuid.uuid4().hex[:8]}"


def test_concurrent_ensures_build_once_and_a_create_clones_it(server, project, name):
    url = {"POSTGRAAS_URL": server.url}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRAAS_", "PG"))}
    # Three at once, as three CI jobs would: one builds (slowly), two wait.
    command = [str(POSTGRAAS), "template", "ensure", name, "--hash-of", "migrations", "--build", f"sleep 2; {BUILD}"]
    processes = [
        subprocess.Popen(command, cwd=project, env={**clean, **url}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=180) for p in processes]
    results = [(p.returncode, out.decode(), err.decode()) for p, (out, err) in zip(processes, outputs, strict=True)]
    assert [code for code, _, _ in results] == [0, 0, 0], results
    refs = {stdout for _, stdout, _ in results}
    assert len(refs) == 1
    ref = refs.pop().strip()
    assert ref.startswith(f"{name}@") and len(ref.split("@")[1]) == 64
    builds = (project / "builds.txt").read_text().splitlines()
    assert len(builds) == 1
    builder_user, builder_password = builds[0].split()
    notes = sorted(stderr for _, _, stderr in results)
    assert sum("Building template" in n for n in notes) == 1
    assert sum("Another caller builds template" in n for n in notes) == 2
    everything = "".join(out + err for _, out, err in results)
    assert builder_password not in everything

    # Again, the same content: ready, no build.
    again = cli(project, "template", "ensure", name, "--hash-of", "migrations/", "--build", BUILD, **url)
    assert (again.returncode, again.stdout.strip()) == (0, ref), again.stderr
    assert "Building" not in again.stderr and len((project / "builds.txt").read_text().splitlines()) == 1

    listed = cli(project, "template", "list", **url)
    row = next(line.split() for line in listed.stdout.splitlines() if name in line)
    template_id = row[0]
    assert row[1:5] == [name, ref.split("@")[1][:12], "local", "ready"]
    shown = json.loads(cli(project, "template", "list", "--output", "json", **url).stdout)
    assert {t["hash"] for t in shown if t["name"] == name} == {ref.split("@")[1]}

    made = cli(project, "create", f"{name}-clone", "--template", ref, "--ttl", "10m", "--output", "env", **url)
    assert made.returncode == 0, made.stderr
    env = evaluated(made.stdout)
    try:
        with psycopg.connect(env["DATABASE_URL"], connect_timeout=10) as conn:
            assert conn.execute("select current_user, count(*) from items").fetchone() == (env["PGUSER"], ROWS)
        assert env["PGUSER"] != builder_user
    finally:
        deleted = cli(project, "delete", env["POSTGRAAS_INSTANCE_ID"], "--force", PGPASSWORD=env["PGPASSWORD"], **url)
        assert deleted.returncode == 0, deleted.stderr

    # Other content, another template: built anew.
    (project / "migrations" / "002_more.sql").write_text("insert into items (v) values ('one more');\n")
    changed = cli(project, "template", "ensure", name, "--hash-of", "migrations", "--build", BUILD, **url)
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() != ref and len((project / "builds.txt").read_text().splitlines()) == 2
    for template in requests_json(server, "/postgraas_templates"):
        removed = cli(project, "template", "delete", str(template["id"]), **url)
        assert removed.returncode == 0 and "Deleted template" in removed.stdout, removed.stderr
    assert template_id not in cli(project, "template", "list", **url).stdout


def test_a_failing_build_command_deletes_the_template_and_exits_1(server, project, name):
    (project / "migrations" / "002_broken.sql").write_text("select * from no_such_table;\n")
    failed = cli(
        project, "template", "ensure", name, "--hash-of", "migrations", "--build", f"echo loading; {BUILD}",
        POSTGRAAS_URL=server.url,
    )  # fmt: skip
    assert failed.returncode == 1
    # The command's output (stdout included) is on stderr, followed by what became of the template.
    assert "loading" in failed.stderr and 'relation "no_such_table" does not exist' in failed.stderr
    assert "Error: The build command failed (exit status 3; its output is above)." in failed.stderr
    assert "was deleted, with its builder's database." in failed.stderr
    assert failed.stdout == ""
    _, builder_password = (project / "builds.txt").read_text().split()
    assert builder_password not in failed.stderr
    assert [t for t in requests_json(server, "/postgraas_templates") if t["name"] == name] == []
    assert server.get().json() == []


def test_usage_errors(server, project, name):
    url = {"POSTGRAAS_URL": server.url}
    missing = cli(project, "template", "ensure", name, "--hash-of", "migrations", "--hash-of", "nope", "--build", BUILD)
    assert missing.returncode == 2
    assert "Invalid value for '--hash-of': 'nope' does not exist." in missing.stderr
    assert cli(project, "template", "ensure", name, "--build", BUILD, **url).returncode == 2
    assert cli(project, "template", "ensure", name, "--hash-of", "migrations", **url).returncode == 2
    unknown = cli(project, "template", "delete", "999999", **url)
    assert unknown.returncode == 1 and "(HTTP 404)" in unknown.stderr
    no_template = cli(project, "create", f"{name}-clone", "--template", name, **url)
    assert no_template.returncode == 1 and "template" in no_template.stderr and "(HTTP 404)" in no_template.stderr
    assert not (project / "builds.txt").exists()
    assert requests_json(server, "/postgraas_templates") == []
