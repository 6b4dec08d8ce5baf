"""The two pytest suites of benchmarks/templates.py (benchmarks/template_suites/), each run as a user
runs it, in a pytest process of its own; every test's time comes back through $BENCH_TIMINGS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from . import template_schema
from .infra import REPO_ROOT, PostgraasServer, give_to_postgres, say
from .machine import settle_machine
from .measure import wait_for_instances, wait_for_pool
from .report import Series

SUITES = REPO_ROOT / "benchmarks" / "template_suites"
PEER_PG_CTL = SUITES / "pytest_postgresql" / "pg_ctl_as_postgres"
SUITE_TIMEOUT = 1800


def run_suite(suite: str, home: Path, tests: int, options: list[str], env: dict[str, str]) -> dict:
    """Runs one suite; its figures: wall time, the first test (which pays for the session's fixtures),
    and the tests between the first and the last (whose teardown pays for them) as a series."""
    home.mkdir(parents=True, exist_ok=True)
    timings = home / "timings.json"
    command = [sys.executable, "-m", "pytest", "-c", str(SUITES / "pytest.ini"), "--rootdir", str(SUITES)]
    command += [str(SUITES / suite), "--basetemp", str(home / "basetemp"), *options]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "BENCH_SUITE_TESTS": str(tests),
        "BENCH_TIMINGS": str(timings),
        **env,
    }
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=home, timeout=SUITE_TIMEOUT)
    wall = time.perf_counter() - started
    result: dict = {"tests": tests, "wall_s": wall, "exitstatus": process.returncode, "error": None}
    if process.returncode != 0 or not timings.exists():
        result["error"] = f"pytest exited {process.returncode}: {(process.stdout + process.stderr)[-1500:]}"
        say(f"suite {suite} failed: {result['error']}")
        return result
    document = json.loads(timings.read_text())
    seconds = [test["seconds"] for test in document["tests"]]
    middle = seconds[1:-1] if len(seconds) > 2 else seconds
    middle_tests = document["tests"][1:-1] if len(seconds) > 2 else document["tests"]
    phases = {
        when: Series([test["phases"].get(when, 0.0) for test in middle_tests]).as_dict()["p50"]
        for when in ("setup", "call", "teardown")
    }
    result.update(
        session_s=document["session_s"],
        first_s=seconds[0],
        last_s=seconds[-1],
        per_test=Series(middle).as_dict(),
        phases_p50=phases,
        all_tests_s=seconds,
    )
    say(
        f"suite {suite}: {len(seconds)} tests, per test p50 {result['per_test']['p50'] * 1000:.1f} ms, "
        f"wall {wall:.1f} s"
    )
    return result


def run_peer_suite(home: Path, bin_dir: Path, tests: int) -> dict:
    """pytest-postgresql: its postgresql_proc on this machine's pg_ctl (run as the postgres OS user by
    pg_ctl_as_postgres, postgres refusing root), --postgresql-load of the SQL files, ``postgresql`` per test."""
    home.mkdir(parents=True, exist_ok=True)
    sockets = home / "sockets"
    sockets.mkdir()
    give_to_postgres(sockets)
    options = [f"--postgresql-exec={PEER_PG_CTL}", f"--postgresql-unixsocketdir={sockets}"]
    options += [f"--postgresql-load={path}" for path in template_schema.SQL_FILES]
    env = {"BENCH_OPEN_BELOW": str(home), "BENCH_PG_BIN": str(bin_dir)}
    return run_suite("pytest_postgresql", home, tests, options, env)


def run_postgraas_suite(
    server: PostgraasServer,
    home: Path,
    backend: str,
    tests: int,
    pool_size: int,
    pool_timeout: float,
    defer_deletes: int = 0,
) -> dict:
    """The Postgraas suite on one backend, through the pytest plugin: a first run of one test builds
    the template (through the plugin's hook), its pool fills, then the timed run finds it ready
    (200), as a CI job after the first would. ``defer_deletes``: --postgraas-defer-deletes."""
    # One per suite: the template of the one before may still be being deleted.
    name = home.name
    options = [f"--postgraas-url={server.url}", f"--postgraas-template={name}", f"--postgraas-backend={backend}"]
    # Relative to the suite's rootdir, as the plugin takes it.
    options.append(f"--postgraas-template-hash-of={os.path.relpath(template_schema.GLOB, SUITES)}")
    options.append(f"--postgraas-template-pool-size={pool_size}")
    options.append(f"--postgraas-defer-deletes={defer_deletes}")
    env: dict[str, str] = {}
    # The suite before's pooled clones, still being removed, would count as this pool's.
    wait_until_removed(server, backend, 300)
    build = run_suite("postgraas", home / "build", 1, options, env)
    result: dict = {"via": "pytest plugin", "pool_size": pool_size, "defer_deletes": defer_deletes, "build_run": build}
    if build["error"]:
        result["error"] = build["error"]
        return result
    if pool_size:
        reached, waited, count = wait_for_pool(server, backend, pool_size, pool_timeout)
        result["pool_filled"] = {"reached": reached, "waited_s": waited, "pooled": count}
        if not reached:
            say(f"suite {backend}: {count:g} of {pool_size} pooled after {waited:.0f} s; the suite runs anyway")
        # The last clones' writes: not in the first tests' time.
        settle_machine()
    timed = run_suite("postgraas", home / "timed", tests, options, env)
    result.update(timed)
    delete_templates_named(server.url, name)
    return result


def delete_templates_named(url: str, name: str) -> None:
    for template in requests.get(f"{url}/postgraas_templates", timeout=60).json():
        if template["name"] == name:
            answer = requests.delete(f"{url}/postgraas_templates/{template['id']}", timeout=600)
            if answer.status_code not in (200, 404):
                say(f"DELETE template {template['id']}: {answer.status_code} {answer.text[:200]}")


def wait_until_removed(server: PostgraasServer, backend: str, timeout: float) -> None:
    """Until /metrics shows no pooled or deleting instance of ``backend``: the pool of the suite
    before, removed in the background once its template was deleted."""
    deadline = time.monotonic() + timeout
    for status in ("pooled", "deleting"):
        left = max(deadline - time.monotonic(), 0.0)
        removed, _, count = wait_for_instances(server, backend, status, lambda n: n == 0, left)
        if not removed:
            say(f"{backend}: {count:g} instances {status} after {timeout:.0f} s; the suite runs anyway")
            return
