"""The server's Dockerfile: built from a locally made base, run as users run it, and used."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import docker.errors
import psycopg
import pytest
import requests

from .conftest import RUN_ID, RUN_LABEL, TEST_IMAGE, free_port

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("POSTGRAAS_SERVER_BASE_IMAGE", "postgraas/server-base:local")
SERVER_IMAGE = f"postgraas/server-test:{RUN_ID}"


@pytest.fixture(scope="module")
def server_container(docker_client):
    docker_client.images.build(path=str(REPO), buildargs={"BASE_IMAGE": BASE_IMAGE}, tag=SERVER_IMAGE, rm=True)
    port = free_port()
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    container = docker_client.containers.run(
        SERVER_IMAGE,
        ["serve", "--bind", f"127.0.0.1:{port}"],
        detach=True,
        # Host networking: the published ports of the databases are on the host's loopback.
        network_mode="host",
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        group_add=[str(socket_gid)],
        labels={RUN_LABEL: RUN_ID},
        environment={
            # The image's own application.cfg, with the docker backend pointed at the test image.
            "POSTGRAAS_BACKENDS_DOCKER_IMAGE": TEST_IMAGE,
            "POSTGRAAS_BACKENDS_DOCKER_ADVERTISED_HOST": "127.0.0.1",
            "POSTGRAAS_BACKENDS_DOCKER_BIND_ADDRESS": "127.0.0.1",
            "POSTGRAAS_BACKENDS_DOCKER_LABELS": f'{{"{RUN_LABEL}": "{RUN_ID}"}}',
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            # Refused until it listens; a read timeout while it boots on a busy machine.
            except requests.RequestException:
                pass
            container.reload()
            assert container.status == "running" and time.monotonic() < deadline, container.logs().decode()
            time.sleep(0.2)
        yield container, url
    finally:
        container.remove(force=True)
        try:
            docker_client.images.remove(SERVER_IMAGE, force=True)
        except docker.errors.APIError:
            pass


def test_image_runs_as_non_root_under_gunicorn(server_container):
    container, _ = server_container
    exit_code, output = container.exec_run(["id", "-u"])
    assert exit_code == 0 and output.decode().strip() != "0"
    assert b"gunicorn" in container.logs()


def test_image_serves_databases_through_the_mounted_socket(server_container):
    container, url = server_container
    body = {
        "postgraas_instance_name": f"img-{uuid.uuid4().hex[:8]}",
        "db_name": "app",
        "db_username": "app_user",
        "db_pwd": "from-the-image",
    }
    response = requests.post(f"{url}/postgraas_instances", json=body, timeout=120)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["backend"] == "docker"
    with psycopg.connect(created["connection_uri"]) as conn:
        assert conn.execute("select current_database()").fetchone() == ("app",)
    deleted = requests.delete(
        f"{url}/postgraas_instances/{created['postgraas_instance_id']}", json={"db_pwd": "from-the-image"}, timeout=60
    )
    assert deleted.status_code == 200
    assert b"from-the-image" not in container.logs()
