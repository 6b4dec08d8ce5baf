"""The API against its own OpenAPI document: schemathesis fuzzes a live server (local backend,
auth.mode token). No 5xx, every answer conforms, and nothing is left behind afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from .conftest import backend_config
from .servers import make_token, start, stop_server

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
HERE = Path(__file__).resolve().parent


def test_schemathesis_finds_nothing_and_nothing_leaks(request, local_data_root, tmp_path):
    backends = {"local": backend_config("local", request)}
    # A default ttl, so that even an instance this test failed to delete goes away by itself.
    server = start(tmp_path, backends, lifecycle={"default_ttl": "10m", "reaper_interval": 5}, auth={"mode": "token"})
    try:
        fuzzer = make_token(server, "fuzzer", "--max-instances", "20", "--max-ttl", "1h")
        admin = make_token(server, "ops", "--admin")
        run = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "10",
                "--request-timeout",
                "60",
                "-H",
                f"Authorization: Bearer {fuzzer}",
                "--seed",
                "20261125",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(HERE)},
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "generated" in run.stdout
        # The server did demand the token it was given (so the fuzzer reached past the 401s).
        assert requests.get(f"{server.url}/postgraas_instances", timeout=30).status_code == 401

        # Whatever the fuzzer left is removed through the API, backend objects included.
        headers = {"Authorization": f"Bearer {admin}"}
        # Templates first: a build in progress takes its builder's instance with it.
        for template in requests.get(f"{server.url}/postgraas_templates", headers=headers, timeout=30).json():
            deleted = requests.delete(
                f"{server.url}/postgraas_templates/{template['id']}", headers=headers, timeout=120
            )
            assert deleted.status_code in (200, 404), deleted.text
        for instance in requests.get(f"{server.url}/postgraas_instances", headers=headers, timeout=30).json():
            url = f"{server.url}/postgraas_instances/{instance['postgraas_instance_id']}"
            deleted = requests.delete(url, json={"force": True}, headers=headers, timeout=120)
            assert deleted.status_code in (200, 404), deleted.text
        assert requests.get(f"{server.url}/postgraas_instances", headers=headers, timeout=30).json() == []
        assert requests.get(f"{server.url}/postgraas_templates", headers=headers, timeout=30).json() == []
        # Instances have an instance.json; the template cluster (".t-*") is a cache of the backend.
        homes = [home for home in local_data_root.glob("*") if (home / "instance.json").exists()]
        assert all("fuzzer" not in (home / "instance.json").read_text() for home in homes)
        # Tokens appear in no log line.
        log = server.log()
        for token in (fuzzer, admin):
            assert token.split("_", 2)[2] not in log
    finally:
        stop_server(server)
