"""The serving worker under gunicorn's real arbiter: signals, max_requests, the open files limit."""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = "postgraas_server.serving.worker.Worker"


@dataclass
class Gunicorn:
    process: subprocess.Popen
    log: Path
    url: str = ""

    def get(self, path: str = "/", timeout: float = 10) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=timeout)


@contextmanager
def gunicorn(tmp_path: Path, *args: str, soft_nofile: int | None = None) -> Iterator[Gunicorn]:
    log = tmp_path / "gunicorn.log"

    def lower_limit() -> None:
        if soft_nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    command = [sys.executable, "-m", "gunicorn", "-k", WORKER, "-b", "127.0.0.1:0", "--workers", "1", *args]
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "tests.unit.serving_app:app"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            preexec_fn=lower_limit,
        )
    server = Gunicorn(process, log)
    try:
        deadline = time.monotonic() + 20
        while not server.url:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            if found := re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log.read_text()):
                server.url = found.group(1)
            time.sleep(0.05)
        while True:  # until the worker has booted
            try:
                server.get(timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_the_worker_is_replaced_after_max_requests(tmp_path):
    with gunicorn(tmp_path, "--max-requests", "5") as server:
        first = server.get().json()["pid"]
        pids = [server.get().json()["pid"] for _ in range(3)]  # with the boot check: 5
        assert pids == [first] * 3
        deadline = time.monotonic() + 15
        while True:
            try:
                if server.get(timeout=2).json()["pid"] != first:
                    break
            except requests.RequestException:
                pass  # between the old worker and its replacement
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.1)
        assert "Autorestarting worker after current request." in server.log.read_text()


def test_sigterm_lets_a_request_in_flight_finish(tmp_path):
    with gunicorn(tmp_path, "--graceful-timeout", "10") as server:
        answers: list[requests.Response] = []
        slow = threading.Thread(target=lambda: answers.append(server.get("/sleep/1.5")))
        slow.start()
        time.sleep(0.4)
        server.process.send_signal(signal.SIGTERM)
        slow.join(10)
        assert answers and answers[0].status_code == 200
        assert answers[0].headers["Connection"] == "close"
        assert server.process.wait(10) == 0
        assert "Traceback" not in server.log.read_text()


def test_sigquit_leaves_without_waiting_for_requests(tmp_path):
    with gunicorn(tmp_path, "--graceful-timeout", "30") as server:
        failures: list[Exception] = []

        def call() -> None:
            try:
                server.get("/sleep/20", timeout=30)
            except requests.RequestException as e:
                failures.append(e)

        slow = threading.Thread(target=call)
        slow.start()
        time.sleep(0.4)
        started = time.monotonic()
        server.process.send_signal(signal.SIGQUIT)
        server.process.wait(10)
        assert time.monotonic() - started < 5
        slow.join(10)
        assert failures, "the request in flight was answered"


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 512, "this machine's hard limit is too low to tell"
    with gunicorn(tmp_path, soft_nofile=512) as server:
        assert server.get().json()["nofile"] == [hard, hard]
