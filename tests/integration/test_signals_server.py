"""/metrics and the request log of a real server with several gunicorn workers."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import backend_config
from .servers import body, eventually, start, stop_server

REQUESTS = 40


@pytest.fixture
def metrics_dir(tmp_path):
    path = tmp_path / "metrics"
    path.mkdir()
    # As an earlier run of the server leaves it: its counts must not be added to this run's.
    (path / "counter_1.db").write_bytes(b"stale")
    return path


@pytest.fixture
def server(request, tmp_path, metrics_dir):
    server = start(
        tmp_path,
        {"local": backend_config("local", request)},
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "POSTGRAAS_APPLICATION_LOG_FORMAT": "json"},
    )
    yield server
    stop_server(server)


def samples(server, name: str, **labels: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_are_summed_over_the_workers(server, metrics_dir):
    assert not (metrics_dir / "counter_1.db").exists()
    # start() polled /health until the server answered.
    health = {"method": "GET", "route": "/health", "status": "200"}
    before = samples(server, "postgraas_http_requests_total", **health)
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        # Bursts (a connection per request) until both workers have answered some: which worker
        # accepts a connection is the kernel's choice.
        while len(list(metrics_dir.glob("counter_*.db"))) < 2 and sent < 50 * REQUESTS:
            statuses = list(
                pool.map(lambda _: requests.get(f"{server.url}/health", timeout=10).status_code, range(REQUESTS))
            )
            assert statuses == [200] * REQUESTS
            sent += REQUESTS
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2
    assert samples(server, "postgraas_http_requests_total", **health) == before + sent

    request = body(ttl="10m")
    created = server.post(request)
    assert created.status_code == 201, created.text
    instance = created.json()
    with psycopg.connect(instance["connection_uri"]) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert samples(server, "postgraas_instances", backend="local", status="ready") == 1
    assert samples(server, "postgraas_create_duration_seconds_count", backend="local") == 1
    assert samples(server, "postgraas_create_duration_seconds_sum", backend="local") > 0
    assert server.delete(instance["postgraas_instance_id"], {"db_pwd": request["db_pwd"]}).status_code == 200
    assert samples(server, "postgraas_instances", backend="local", status="ready") == 0

    # One JSON line per request, under the id the answer carried, and never the password.
    # Every line, gunicorn's own included, is one JSON object.
    entries = [json.loads(line) for line in server.log().splitlines()]
    assert any(e["logger"] == "gunicorn.error" and "Booting worker" in e["message"] for e in entries)
    access = [e for e in entries if e["logger"] == "postgraas_server.access"]
    (line,) = [e for e in access if e["request_id"] == created.headers["X-Request-ID"]]
    assert (line["method"], line["route"], line["status"]) == ("POST", "/postgraas_instances", 201)
    assert any(e["request_id"] == line["request_id"] and "is ready" in e["message"] for e in entries)
    assert len([e for e in access if e["route"] == "/health"]) == before + sent
    assert request["db_pwd"] not in server.log()


def test_metrics_survive_a_worker_restart(request, tmp_path):
    # No PROMETHEUS_MULTIPROC_DIR given: the server makes its own and removes it when it stops.
    server = start(tmp_path, {"local": backend_config("local", request)})
    try:
        (metrics_dir,) = {Path(m) for m in re.findall(r"the workers count metrics in (\S+)", server.log())}
        health = {"method": "GET", "route": "/health", "status": "200"}
        # /health answered from the first worker; on a busy machine the second may still be forking.
        workers = eventually(
            lambda: len(pids := [int(pid) for pid in children(server.process.pid)]) == 2 and pids, 30, "two workers"
        )
        sent = 0
        # Until the worker to be stopped has counted some.
        while not (metrics_dir / f"counter_{workers[0]}.db").exists():
            assert requests.get(f"{server.url}/health", timeout=10).ok
            sent += 1
            assert sent < 2000
        counted = samples(server, "postgraas_http_requests_total", **health)
        # A worker that exits (max_requests, a crash) is replaced; what it counted stays counted,
        # and its exit does not remove the directory the others count in.
        os.kill(workers[0], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while set(children(server.process.pid)) & {workers[0]} or len(children(server.process.pid)) < 2:
            assert time.monotonic() < deadline, "the worker was not replaced"
            time.sleep(0.2)
        assert metrics_dir.is_dir()
        assert samples(server, "postgraas_http_requests_total", **health) == counted
        assert "Traceback" not in server.log()
    finally:
        stop_server(server)
    assert not metrics_dir.exists()


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in found]


def test_a_stopped_server_gives_the_reaper_lease_back(request, tmp_path):
    """SIGTERM: the worker holding the lease gives it back as it leaves, so that another server's
    reaper takes over at once rather than 1.5 reaper intervals later."""
    server = start(tmp_path, {"local": backend_config("local", request)}, lifecycle={"reaper_interval": 2})
    meta = tmp_path / "meta.sqlite"

    def lease() -> tuple:
        with sqlite3.connect(meta) as conn:
            return conn.execute("select holder, expires_at from postgraas_lease where name = 'reaper'").fetchone()

    try:
        holder, _ = eventually(lambda: lease() if lease()[0] else None, within=30, what="a reaper holding the lease")
    finally:
        stop_server(server)
    assert server.process.returncode == 0
    assert lease() == (None, None), f"{holder} kept the lease after the server stopped"
