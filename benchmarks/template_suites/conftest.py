"""Shared by both suites of benchmarks/templates.py: each test's time (setup + call + teardown), written
as JSON to $BENCH_TIMINGS at the end of the session for the benchmark to read."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

_durations: dict[str, float] = {}
_phases: dict[str, dict[str, float]] = {}
_outcomes: dict[str, str] = {}
_started = time.perf_counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    _phases.setdefault(report.nodeid, {})[report.when] = report.duration
    if report.failed or report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("BENCH_TIMINGS")
    if not target:
        return
    # In run order: the first test's setup also pays for the session's fixtures (a server, a template).
    tests = [
        {"nodeid": k, "seconds": v, "phases": _phases.get(k, {}), "outcome": _outcomes.get(k, "?")}
        for k, v in _durations.items()
    ]
    document = {"tests": tests, "session_s": time.perf_counter() - _started, "exitstatus": int(exitstatus)}
    Path(target).write_text(json.dumps(document, indent=1))
