"""benchmarks/bench.py in --quick mode, run as a user runs it: it measures every path and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from postgraas_server.backends.local import find_bin_dir
from postgraas_server.errors import BackendUnavailable

from ..conftest import require
from .conftest import BACKENDS, REPO_ROOT, TEST_IMAGE

PEERS = ("docker_run", "testcontainers", "initdb_pg_ctl", "create_database")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class QuickRun:
    process: subprocess.CompletedProcess
    results: dict
    png: Path


@pytest.fixture(scope="module")
def quick_run(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    try:
        find_bin_dir(None)
    except BackendUnavailable as e:
        require("PostgreSQL server binaries", str(e))
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench.py"), "--quick", "--image", TEST_IMAGE]
    command += ["--json", str(out / "results.json"), "--png", str(out / "chart.png")]
    # Generous: about a minute here; a loaded CI machine may take several.
    process = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert process.returncode == 0, f"stdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    return QuickRun(process, json.loads((out / "results.json").read_text()), out / "chart.png")


def assert_measured(figures: dict, where: str) -> None:
    assert isinstance(figures["p50"], float) and figures["p50"] > 0, f"{where}: {figures}"
    assert isinstance(figures["p95"], float), f"{where}: {figures}"
    assert figures["failures"] == 0, f"{where}: {figures['errors']}"
    assert figures["n"] == len(figures["samples"]) > 0, where


def test_prints_the_table_with_targets(quick_run):
    out = quick_run.process.stdout
    for path in ("postgraas docker cold POST->query", "peer testcontainers", "burst local cold x3", "GET list"):
        assert path in out
    assert "targets (issue 7):" in out


def test_cold_creates_and_bursts_of_every_backend(quick_run):
    cold = quick_run.results["postgraas"]["cold"]
    assert cold["status"] == "ok", cold["error"]
    for backend in BACKENDS:
        assert_measured(cold["backends"][backend]["post_to_query"], f"cold {backend}")
        assert_measured(cold["backends"][backend]["post_to_201"], f"cold {backend} 201")
        assert not cold["backends"][backend]["delete_errors"]
        burst = quick_run.results["burst"]["cold"][backend]
        assert (burst["size"], burst["failures"]) == (3, 0), burst
        assert_measured(burst["per_instance"], f"burst {backend}")


def test_warm_pools_are_measured(quick_run):
    warm = quick_run.results["postgraas"]["warm"]
    assert warm["status"] == "ok", warm["error"]
    # Every backend keeps a warm pool.
    assert set(warm["backends"]) == set(BACKENDS)
    for backend in warm["backends"]:
        assert_measured(warm["backends"][backend]["post_to_query"], f"warm {backend}")
        assert_measured(warm["backends"][backend]["post_to_201"], f"warm {backend} 201")
        assert warm["backends"][backend]["pool_wait"]["failures"] == 0


def test_peers_and_list(quick_run):
    for peer in PEERS:
        assert_measured(quick_run.results["peers"][peer], peer)
        assert quick_run.results["peers"][peer]["n"] == 2
    listing = quick_run.results["list"]
    assert listing["rows"] == 100
    assert_measured(listing["get"], "list")
    assert listing["get"]["n"] == 20


def test_each_cold_path_alternates_with_its_peers(quick_run):
    progress = [line for line in quick_run.process.stderr.splitlines() if " 1/2" in line or " 2/2" in line]
    steps = [line.split(": ", 1)[1].split(":", 1)[0] for line in progress]
    for path, peers in (
        ("cold docker", ["peer docker run", "peer testcontainers"]),
        ("cold cluster", ["peer CREATE DATABASE"]),
        ("cold local", ["peer initdb+pg_ctl"]),
    ):
        first = steps.index(f"{path} 1/2")
        expected = [f"{path} 1/2", *(f"{p} 1/2" for p in peers), f"{path} 2/2", *(f"{p} 2/2" for p in peers)]
        assert steps[first : first + len(expected)] == expected, progress


def test_targets_and_machine(quick_run):
    targets = {t["id"]: t for t in quick_run.results["targets"]}
    assert len(targets) == 7
    assert all(t["passed"] in (True, False, None) for t in targets.values())
    # The quick sizes are not the targets' sizes: those two are not judged.
    assert targets["burst_docker"]["passed"] is None and targets["list_p50"]["passed"] is None
    machine = quick_run.results["machine"]
    assert machine["cpu_count"] >= 1 and machine["date"] and len(machine["git_commit"]) == 40


def test_draws_a_png(quick_run):
    data = quick_run.png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_leaves_nothing_behind(quick_run, docker_client):
    results = quick_run.results
    assert results["cleanup"]["problems"] == []
    label = f"postgraas.bench_run={results['run_id']}"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
    scratch = results["cleanup"]["scratch_dir"]
    assert scratch and not Path(scratch).exists()
    left = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and scratch.encode() in (entry / "cmdline").read_bytes():
                left.append(entry.name)
        except OSError:
            continue
    assert not left, f"processes of the benchmark still running: {left}"
