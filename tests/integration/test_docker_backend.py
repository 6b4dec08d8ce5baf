"""What only the docker backend does (the contract all backends keep is test_backend_contract*.py):
containers labelled as Postgraas's, their volumes removed with them, the warm pool only with the
prepared image. Its prepared image is test_docker_prepared.py's."""

from __future__ import annotations

import uuid

import docker.errors
import pytest

from postgraas_server.backends import DatabaseSpec
from postgraas_server.errors import PostgraasError

from .conftest import make_backend


def test_the_container_is_labelled(creator_for, docker_client):
    db = creator_for("docker")()
    container = docker_client.containers.get(db.ref)
    assert container.labels["postgraas.managed"] == "true"
    assert container.labels["postgraas.name"] == db.spec.instance_name


def test_delete_removes_the_volume(creator_for, docker_client):
    create = creator_for("docker")
    db = create()
    volumes = [m["Name"] for m in docker_client.containers.get(db.ref).attrs["Mounts"] if m["Type"] == "volume"]
    assert volumes
    create.delete(db)
    for volume in volumes:
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(volume)


def test_a_failed_create_leaves_nothing(request, docker_client):
    tag = uuid.uuid4().hex[:8]
    spec = DatabaseSpec(990000, f"broken-{tag}", f"db_{tag}", f"user_{tag}", "pw")
    # The container starts, but cannot be ready in 10 ms.
    broken = make_backend("docker", request, ready_timeout=0.01)
    with pytest.raises(PostgraasError, match="not ready"):
        broken.create(spec)
    assert docker_client.containers.list(all=True, filters={"label": f"postgraas.name={spec.instance_name}"}) == []


def test_the_warm_pool_needs_the_prepared_image(request):
    # A claim acts as the image's own superuser, which only the prepared image keeps apart from the tenant.
    assert make_backend("docker", request).why_no_pool() is None
    assert "prepare_image" in make_backend("docker", request, prepare_image=False).why_no_pool()
