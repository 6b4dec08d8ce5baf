"""Served the usual way of a Flask app, ``gunicorn 'postgraas_server.app:create_app()'``, the server is
as complete as under ``postgraas-server serve``: its workers run the reaper, which deletes an expired
instance of the local backend for real."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import requests

from .conftest import free_port, require_local_postgres

pytestmark = pytest.mark.integration


def test_plain_gunicorn_serves_a_complete_server(tmp_path: Path, local_data_root: Path) -> None:
    require_local_postgres()
    config = tmp_path / "application.cfg"
    config.write_text(
        json.dumps(
            {
                "metadb": {"url": f"sqlite:///{tmp_path / 'meta.sqlite'}"},
                "backends": {"local": {"type": "local", "data_root": str(local_data_root)}},
                "lifecycle": {"reaper_interval": 1},
            }
        )
    )
    env = {"POSTGRAAS_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "postgraas_server.cli", "init-db"], env=env, check=True, cwd=tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "postgraas_server.app:create_app()"]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", "2"]
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/postgraas_instances"
    try:
        _wait_for(lambda: requests.get(url, timeout=1).status_code == 200, 30, log_path)
        body = {"postgraas_instance_name": "expiring", "db_name": "shop", "db_username": "alice", "ttl": 3}
        created = requests.post(url, json=body, timeout=120)
        assert created.status_code == 201, created.text
        instance = created.json()
        conninfo = {
            "host": instance["host"],
            "port": instance["port"],
            "dbname": "shop",
            "user": "alice",
            "password": instance["db_pwd"],
            "connect_timeout": 5,
        }
        with psycopg.connect(**conninfo) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        data_dir = local_data_root / instance["container_id"]
        assert data_dir.exists()

        # Nobody deletes it: the reaper of one of the workers does, once the ttl is over.
        _wait_for(lambda: requests.get(f"{url}/{instance['id']}", timeout=5).status_code == 404, 60, log_path)
        assert not data_dir.exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**conninfo)
        assert "deleted expired instance expiring" in log_path.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_for(condition, seconds: float, log_path: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s; server log:\n{log_path.read_text()}")
