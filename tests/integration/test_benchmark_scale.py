"""benchmarks/scale.py in --quick mode, run as a user runs it: every figure at both sizes on both
meta dbs, a reaper pass that finds nothing to do where nothing is to be done, and nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from postgraas_server.backends.local import find_bin_dir
from postgraas_server.errors import BackendUnavailable

from ..conftest import require
from .conftest import REPO_ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMED = ("page_owner", "page_admin", "list", "metrics", "create", "item_get", "delete", "reaper_idle", "reaper_expired")


@dataclass
class QuickRun:
    process: subprocess.CompletedProcess
    results: dict
    png: Path


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    try:
        find_bin_dir(None)
    except BackendUnavailable as e:
        require("PostgreSQL server binaries", str(e))
    out = tmp_path_factory.mktemp("scale")
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "scale.py"), "--quick"]
    command += ["--json", str(out / "scale.json"), "--png", str(out / "scale.png")]
    # About a minute here; a loaded CI machine may take several.
    process = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert process.returncode == 0, f"stdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    return QuickRun(process, json.loads((out / "scale.json").read_text()), out / "scale.png")


def test_prints_the_table_with_targets(quick_run):
    out = quick_run.process.stdout
    assert out.startswith("figure ")
    for figure in ("item GET", "warm create POST->201", "/metrics scrape", "reaper pass, nothing to do",
                   "reaper pass, 1% expired", "worker RSS, highest"):  # fmt: skip
        assert figure in out, figure
    for target in ("<= 1.5x 100-row p50", "<= 50 ms", "<= 2 s;", "<= 300 MB"):
        assert target in out, target
    assert "sqlite" in out and "postgresql" in out
    assert quick_run.png.read_bytes().startswith(PNG_SIGNATURE)


def test_every_figure_at_every_size_on_both_meta_dbs(quick_run):
    runs = quick_run.results["runs"]
    assert set(runs) == {"sqlite", "postgresql"}
    for kind, run in runs.items():
        assert run["error"] is None, f"{kind}: {run['error']}"
        assert set(run["sizes"]) == {"100", "1000"}, kind
        for size, figures in run["sizes"].items():
            # The fleet's rows, the pool's and at most one instance being measured.
            assert int(size) <= figures["rows"] <= int(size) + 3, (kind, size, figures["rows"])
            for key in TIMED:
                measured = figures[key]
                where = f"{kind} {size} {key}"
                assert measured["failures"] == 0, f"{where}: {measured['errors']}"
                assert measured["n"] >= 1 and measured["p50"] > 0, where
            # An admin lists every owner's rows; the pool's are nobody's.
            assert figures["list"]["items"] >= int(size) - 3, (kind, size)
            for workers in figures["memory"].values():
                assert len(workers) == 2 and all(mb and mb > 10 for mb in workers.values()), workers


def test_a_pass_with_nothing_to_do_does_nothing_and_expired_instances_go(quick_run):
    for kind, run in quick_run.results["runs"].items():
        for size, figures in run["sizes"].items():
            idle, expired = figures["reaper_idle"], figures["reaper_expired"]
            assert idle["actions"] == 0, f"{kind} {size}: {idle['first_actions']}"
            assert expired["expired"] == int(size) // 100, (kind, size)
            assert expired["actions"] == expired["expired"], (kind, size)


def test_leaves_nothing_behind(quick_run):
    cleanup = quick_run.results["cleanup"]
    assert cleanup["problems"] == [] and not cleanup["processes_left"], cleanup
    assert cleanup["scratch_dir"] and not Path(cleanup["scratch_dir"]).exists()
    for run in quick_run.results["runs"].values():
        assert not run.get("cleanup_problems"), run["cleanup_problems"]
