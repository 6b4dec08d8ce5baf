"""The server run as users run it (``postgraas-server serve`` in a process of its own), for the
integration tests: start it with a configuration, talk to it, stop it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families

# The console script of the client, installed beside this interpreter (pip install -e .).
POSTGRAAS = Path(sys.executable).with_name("postgraas")
T = TypeVar("T")


def free_port() -> int:
    # Only for the test server's own port; the service itself never picks ports this way.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def meta_db(self) -> Path:
        return self.log_path.parent / "meta.sqlite"

    @property
    def config_path(self) -> Path:
        return self.log_path.parent / "application.cfg"

    def post(self, body: dict, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}/postgraas_instances", json=body, timeout=120, **kwargs)

    def delete(self, instance_id: int, body: dict) -> requests.Response:
        return requests.delete(f"{self.url}/postgraas_instances/{instance_id}", json=body, timeout=120)

    def get(self, path: str = "") -> requests.Response:
        return requests.get(f"{self.url}/postgraas_instances{path}", timeout=30)

    def log(self) -> str:
        return self.log_path.read_text()


def launch(tmp_path: Path, config: dict, workers: int = 2, env: dict[str, str] | None = None) -> Server:
    """``serve`` with ``config`` (written to tmp_path/application.cfg), once it answers /health.
    In a session of its own, so that a test can kill it with its workers; its log is appended to
    tmp_path/server.log, across restarts."""
    config_path = tmp_path / "application.cfg"
    config_path.write_text(json.dumps(config))
    port = free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "postgraas_server.cli", "--config", str(config_path), "serve"]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    with log_path.open("a") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{server.url}/health", timeout=1).ok:
                return server
        # Refused until it listens; a read timeout while its workers boot on a busy machine.
        except requests.RequestException:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not start:\n{server.log()}")


def start(
    tmp_path: Path,
    backends: dict,
    default: str = "local",
    lifecycle: dict | None = None,
    metadb: dict | None = None,
    auth: dict | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """A server with these ``backends`` (name: settings, e.g. from conftest's backend_config)."""
    config = {
        "metadb": metadb or {"url": f"sqlite:///{tmp_path / 'meta.sqlite'}"},
        "backends": backends,
        "application": {"default_backend": default, "log_level": "DEBUG"},
        "lifecycle": lifecycle or {},
        "auth": auth or {},
    }
    return launch(tmp_path, config, env=env)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


def body(prefix: str = "multi", **overrides: Any) -> dict:
    """A create request whose names and password no other request shares."""
    tag = uuid.uuid4().hex[:8]
    return {
        "postgraas_instance_name": f"{prefix}-{tag}",
        "db_name": f"db_{tag}",
        "db_username": f"user_{tag}",
        "db_pwd": f"pw-{tag}",
        **overrides,
    }


def make_token(server: Server, owner: str, *extra: str) -> str:
    """A bearer token for ``owner`` (``extra``: more options of `token create`), made with the server's config."""
    made = subprocess.run(
        [sys.executable, "-m", "postgraas_server.cli", "--config", str(server.config_path), "token", "create"]
        + ["--owner", owner, *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip()


def eventually(condition: Callable[[], T], within: float, what: str) -> T:
    """What condition() gave once it was truthy; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (found := condition()):
        assert time.monotonic() < deadline, f"not within {within:g} s: {what}"
        time.sleep(0.2)
    return found


def metric(server: Server, name: str, labels: dict[str, str]) -> float:
    """One sample of the server's /metrics; 0 when it has none yet."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return next(
        (
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and s.labels == labels
        ),
        0.0,
    )


def pooled(server: Server, backend: str) -> float:
    return metric(server, "postgraas_instances", {"backend": backend, "status": "pooled"})


def drain_pools(home: Path) -> str:
    """After the server of ``home`` stopped: remove what is left in its pools, as an operator would by
    configuring them away, with one reaper pass. Returns what the pass printed."""
    config = home / "application.cfg"
    settings = json.loads(config.read_text())
    for backend in settings["backends"].values():
        backend["pool_size"] = 0
    # A pooled instance the stopped server was still making is a dead creation after a second.
    settings["lifecycle"] = {"heartbeat_timeout": 1}
    config.write_text(json.dumps(settings))
    time.sleep(1.5)
    reap = subprocess.run(
        [sys.executable, "-m", "postgraas_server.cli", "--config", str(config), "reap", "--once"],
        capture_output=True,
        text=True,
        cwd=home,
    )
    assert reap.returncode == 0, reap.stderr
    return reap.stdout
