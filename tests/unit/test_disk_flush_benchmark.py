"""benchmarks/disk_flush.py, run as its README says, at a size that takes a second: the table of both
phases, the command's exit code, and nothing left in the probe's directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, during: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmarks/disk_flush.py", "--dir", str(tmp_path), "--idle", "0.3", "--every", "0.02"]
        + ["--during", during],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_flushes_are_timed_idle_and_under_the_command(tmp_path):
    result = run(tmp_path, "sleep 0.5")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["8", "KiB", "fdatasync", "p50", "p95", "p99", "max", "n"]
    idle = next(line for line in lines if line.startswith("idle "))
    during = next(line for line in lines if line.startswith("during the command (exit 0)"))
    for row in (idle, during):
        assert int(row.split()[-1]) >= 3
    assert list(tmp_path.iterdir()) == []


def test_a_failing_command_fails_the_run(tmp_path):
    result = run(tmp_path, "false")

    assert result.returncode == 1
    assert "during the command (exit 1)" in result.stdout
    assert list(tmp_path.iterdir()) == []
