"""DockerBackend with a fake docker SDK client: the calls it makes and how it translates failures."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from postgraas_server.backends import Credentials, DatabaseSpec
from postgraas_server.backends import docker as docker_backend
from postgraas_server.backends.docker import DockerBackend
from postgraas_server.config import DockerBackendSettings
from postgraas_server.errors import BackendError, BackendTimeout, BackendUnavailable, Conflict

SPEC = DatabaseSpec(7, "demo", "app", "alice", "s3cret")


class FakeContainer:
    def __init__(self, client, **kwargs):
        self.client = client
        self.kwargs = kwargs
        self.id = "c0ffee"
        self.name = kwargs["name"]
        self.status = "created"
        self.attrs = {"NetworkSettings": {"Ports": {}}, "State": {"ExitCode": 0}}
        self.removed = None

    def start(self):
        self.status = "running"
        self.attrs["NetworkSettings"]["Ports"] = {"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]}

    def reload(self):
        self.status = self.client.next_status or self.status

    def logs(self, tail):
        return b"FATAL: password s3cret rejected\nbye\n"

    def remove(self, force, v):
        self.removed = (force, v)
        self.client.containers.by_id.pop(self.id, None)


class FakeContainers:
    def __init__(self, client):
        self.client = client
        self.by_id: dict[str, FakeContainer] = {}
        self.create_error: Exception | None = None

    def create(self, **kwargs):
        if self.create_error:
            error, self.create_error = self.create_error, None
            raise error
        container = FakeContainer(self.client, **kwargs)
        self.by_id[container.id] = container
        self.client.created.append(container)
        return container

    def get(self, ref):
        if ref not in self.by_id:
            raise docker.errors.NotFound("no such container")
        return self.by_id[ref]


class FakeImages:
    def __init__(self):
        self.pulled = []
        self.error: Exception | None = None

    def pull(self, image):
        if self.error:
            raise self.error
        self.pulled.append(image)


class FakeClient:
    def __init__(self):
        self.containers = FakeContainers(self)
        self.images = FakeImages()
        self.created: list[FakeContainer] = []
        self.next_status: str | None = None


@pytest.fixture
def client():
    return FakeClient()


@pytest.fixture
def logins(monkeypatch):
    """Replace the TCP login with a recorder; integration tests do the real one."""
    calls = []

    def fake_wait(host, port, credentials, *, timeout, still_starting, interval=0.05):
        calls.append((host, port, credentials))
        still_starting()

    monkeypatch.setattr(docker_backend, "wait_for_login", fake_wait)
    return calls


def backend(client, **settings) -> DockerBackend:
    return DockerBackend(DockerBackendSettings(**settings), "dep-1", client_factory=lambda: client)


def test_create_asks_docker_for_a_port_and_labels_the_container(client, logins):
    made = backend(client, image="img:1", bind_address="127.0.0.1", advertised_host="db.example", labels={"env": "ci"})
    provisioned = made.create(SPEC)
    kwargs = client.created[0].kwargs
    assert kwargs["image"] == "img:1"
    assert kwargs["ports"] == {"5432/tcp": ("127.0.0.1", None)}
    assert kwargs["environment"] == {"POSTGRES_USER": "alice", "POSTGRES_PASSWORD": "s3cret", "POSTGRES_DB": "app"}
    assert kwargs["labels"] == {
        "env": "ci",
        "postgraas.managed": "true",
        "postgraas.deployment": "dep-1",
        "postgraas.name": "demo",
        "postgraas.instance_id": "7",
    }
    assert kwargs["name"].startswith("postgraas-demo-")
    # Hardened by default: limits, no privilege escalation, nothing mounted from the host.
    assert (kwargs["mem_limit"], kwargs["nano_cpus"], kwargs["pids_limit"], kwargs["shm_size"]) == (
        "1g",
        1_000_000_000,
        256,
        "256m",
    )
    assert kwargs["security_opt"] == ["no-new-privileges"]
    assert "volumes" not in kwargs and "mounts" not in kwargs
    assert (provisioned.ref, provisioned.host, provisioned.port) == ("c0ffee", "db.example", 49153)
    # Readiness is proven against the advertised host and the published port.
    assert logins == [("db.example", 49153, Credentials("app", "alice", "s3cret"))]


def test_probe_host_overrides_the_advertised_one(client, logins):
    backend(client, advertised_host="db.example", probe_host="10.0.0.5").create(SPEC)
    assert logins[0][0] == "10.0.0.5"


def test_container_that_exits_is_removed_and_its_logs_reported_without_the_password(client, logins):
    client.next_status = "exited"
    with pytest.raises(BackendError) as info:
        backend(client).create(SPEC)
    assert "stopped before its database was ready" in info.value.msg
    assert "FATAL: password *** rejected" in info.value.msg
    assert "s3cret" not in info.value.msg
    assert client.created[0].removed == (True, True)


def test_timeout_removes_the_container(client, monkeypatch):
    def never_ready(*args, **kwargs):
        raise docker_backend.NotReady("connection refused")

    monkeypatch.setattr(docker_backend, "wait_for_login", never_ready)
    with pytest.raises(BackendTimeout, match="not ready within 60 s"):
        backend(client).create(SPEC)
    assert client.created[0].removed == (True, True)


def test_missing_image_is_pulled_once(client, logins):
    client.containers.create_error = docker.errors.ImageNotFound("no such image")
    backend(client, image="postgres:16").create(SPEC)
    assert client.images.pulled == ["postgres:16"]


def test_image_that_cannot_be_pulled_is_503(client):
    client.containers.create_error = docker.errors.ImageNotFound("no such image")
    client.images.error = docker.errors.APIError("pull access denied")
    with pytest.raises(BackendUnavailable, match="postgres:16"):
        backend(client).create(SPEC)
    assert client.created == []


def test_name_conflict_is_409(client):
    response = requests.Response()
    response.status_code = 409
    client.containers.create_error = docker.errors.APIError("Conflict", response, explanation="name in use")
    with pytest.raises(Conflict, match="name in use"):
        backend(client).create(SPEC)


def test_unreachable_engine_is_503_and_the_client_is_rebuilt(client, logins):
    attempts = []

    def factory():
        attempts.append(1)
        if len(attempts) == 1:
            raise docker.errors.DockerException("Error while fetching server API version")
        return client

    made = DockerBackend(DockerBackendSettings(), "dep-1", client_factory=factory)
    with pytest.raises(BackendUnavailable, match="cannot be reached"):
        made.create(SPEC)
    # The engine is back: the next call connects again without a restart.
    assert made.create(SPEC).port == 49153


def test_delete_is_idempotent(client, logins):
    made = backend(client)
    ref = made.create(SPEC).ref
    assert made.exists(ref)
    made.delete(ref, Credentials("app", "alice", "s3cret"), force=True)
    assert not made.exists(ref)
    made.delete(ref, Credentials("app", "alice", "s3cret"), force=True)
