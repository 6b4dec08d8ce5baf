"""benchmarks/templates.py with tiny sizes on the local and cluster backends, run as a user runs it:
it prints its table, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from postgraas_server.backends.local import find_bin_dir
from postgraas_server.errors import BackendUnavailable

from ..conftest import require
from .conftest import REPO_ROOT, TEST_IMAGE

# Docker's figures come from the same code as the others'; left out here, it would double the time.
SIZES = ["--quick", "--tests", "3", "--runs", "1", "--race", "3", "--pool-size", "1", "--backends", "local,cluster"]


@pytest.fixture(scope="module")
def tiny_run(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    try:
        find_bin_dir(None)
    except BackendUnavailable as e:
        require("PostgreSQL server binaries", str(e))
    out = tmp_path_factory.mktemp("templates-bench") / "results.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "templates.py"), *SIZES, "--image", TEST_IMAGE]
    # About a minute here; a loaded CI machine may take several.
    process = subprocess.run(command + ["--json", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert process.returncode == 0, f"stdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    return process.stdout, json.loads(out.read_text())


def test_prints_the_table_with_targets(tiny_run):
    out, results = tiny_run
    assert out.startswith("schema: 50 tables (primary keys, foreign keys, indexes), 10000 rows")
    for figure in (
        "per test: pytest-postgresql (postgresql_proc + load)",
        "per test: Postgraas local (pytest plugin, pool 1)",
        "per test: Postgraas local (pytest plugin, pool 3, deletes held to the end)",
        "clone local pool 1 POST->201",
        "clone cluster cold POST->query",
        "hand-made CREATE ROLE + CREATE DATABASE TEMPLATE -> query (cluster)",
        "3 concurrent ensures cluster: all ready",
    ):
        assert figure in out, figure
    assert "<= 0.5x pytest-postgresql" in out and "one build" in out
    # A backend without templates is n/a, never a failure.
    for backend in results["unavailable"]:
        assert f"per test: Postgraas {backend}" in out


def test_both_suites_ran_every_test(tiny_run):
    _, results = tiny_run
    for name, suite in results["suites"].items():
        assert suite["error"] is None, f"{name}: {suite['error']}"
        assert suite["tests"] == 3 and len(suite["all_tests_s"]) == 3, name
        assert suite["per_test"]["n"] == 1 and suite["per_test"]["p50"] > 0, name
    assert {"pytest-postgresql", "postgraas local", "postgraas cluster"} <= set(results["suites"])
    assert {"postgraas local held", "postgraas cluster held"} <= set(results["suites"])
    held = results["suites"]["postgraas local held"]
    assert (held["pool_size"], held["defer_deletes"]) == (3, 3)


def test_clones_and_one_build(tiny_run):
    _, results = tiny_run
    assert {"local", "cluster"} <= set(results["clones"])
    for backend, clones in results["clones"].items():
        for mode in ("cold", "pool"):
            assert clones[mode]["post_to_query"]["failures"] == 0, clones[mode]["post_to_query"]["errors"]
            assert clones[mode]["post_to_query"]["n"] == 1, backend
    assert results["clones"]["cluster"]["hand_made"]["n"] == 1
    for backend, race in results["race"].items():
        assert (race["size"], race["builds"], race["errors"]) == (3, 1, []), (backend, race)


def test_leaves_nothing_behind(tiny_run, docker_client):
    _, results = tiny_run
    cleanup = results["cleanup"]
    assert cleanup["problems"] == [] and not cleanup["processes_left"] and not cleanup["containers_left"]
    scratch = cleanup["scratch_dir"]
    assert scratch and not Path(scratch).exists()
    label = f"postgraas.bench_run={results['run_id']}"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
