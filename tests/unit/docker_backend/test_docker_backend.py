"""DockerBackend with a fake docker SDK client: the calls it makes and how it translates failures."""

from __future__ import annotations

import base64
import dataclasses

import docker.errors
import pytest
import requests

from postgraas_server.backend_settings import DockerBackendSettings
from postgraas_server.backends import Credentials, DatabaseSpec
from postgraas_server.backends.docker import DockerBackend
from postgraas_server.backends.docker import backend as docker_backend
from postgraas_server.backends.docker.prepared_image import (
    VERIFIER_ENV,
)
from postgraas_server.errors import BackendError, BackendTimeout, BackendUnavailable, Conflict
from postgraas_server.scram import scram_keys

from .fake_engine import EXPECTED_LABELS, LIMITS, SPEC, TAG, FakeContainer, backend


def test_plain_create_asks_docker_for_a_port_and_labels_the_container(client, logins):
    made = backend(
        client,
        image="img:1",
        bind_address="127.0.0.1",
        advertised_host="db.example",
        labels={"env": "ci"},
        prepare_image=False,
    )
    provisioned = made.create(SPEC)
    assert client.builds() == []
    kwargs = client.created[0].kwargs
    assert kwargs["image"] == "img:1"
    assert kwargs["ports"] == {"5432/tcp": ("127.0.0.1", None)}
    assert kwargs["environment"] == {"POSTGRES_USER": "alice", "POSTGRES_PASSWORD": "s3cret", "POSTGRES_DB": "app"}
    assert kwargs["labels"] == EXPECTED_LABELS
    assert kwargs["name"].startswith("postgraas-demo-")
    # Hardened by default: limits, no privilege escalation, nothing mounted from the host.
    assert {key: kwargs[key] for key in LIMITS} == LIMITS
    assert kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["restart_policy"] == {"Name": "unless-stopped"}
    assert "volumes" not in kwargs and "mounts" not in kwargs
    assert (provisioned.ref, provisioned.host, provisioned.port) == (client.created[0].id, "db.example", 49153)
    # Readiness is proven against the advertised host and the published port.
    assert logins == [("db.example", 49153, Credentials("app", "alice", "s3cret"))]


def test_ephemeral_turns_the_disk_waits_off_on_the_plain_path_too(client, logins):
    made = backend(client, image="img:1", prepare_image=False)
    made.create(dataclasses.replace(SPEC, ephemeral=True))
    made.create(SPEC)
    ephemeral, durable = (c.kwargs for c in client.created)
    assert ephemeral["command"] == ["postgres", "-cfsync=off", "-csynchronous_commit=off", "-cfull_page_writes=off"]
    assert "command" not in durable


def test_create_runs_the_prepared_image_with_a_verifier_not_the_password(client, logins):
    made = backend(client, image="img:1", bind_address="127.0.0.1", advertised_host="db.example", labels={"env": "ci"})
    provisioned = made.create(SPEC)
    [instance] = client.instances()
    kwargs = instance.kwargs
    assert kwargs["image"] == TAG
    assert set(kwargs["environment"]) == {"POSTGRES_USER", "POSTGRES_DB", VERIFIER_ENV}
    assert (kwargs["environment"]["POSTGRES_USER"], kwargs["environment"]["POSTGRES_DB"]) == ("alice", "app")
    assert not any("s3cret" in value for value in kwargs["environment"].values())
    # The verifier is the password's: the same keys come out of its salt and iteration count.
    method, rest = kwargs["environment"][VERIFIER_ENV].split("$", 1)
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    assert (method, iterations) == ("SCRAM-SHA-256", "4096")
    assert scram_keys("s3cret", base64.b64decode(salt), 4096) == (stored, server)
    # Everything else as on the plain path.
    assert kwargs["labels"] == EXPECTED_LABELS
    assert kwargs["ports"] == {"5432/tcp": ("127.0.0.1", None)}
    assert {key: kwargs[key] for key in LIMITS} == LIMITS
    assert kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["restart_policy"] == {"Name": "unless-stopped"}
    assert (provisioned.ref, provisioned.port) == (instance.id, 49153)
    assert logins == [("db.example", 49153, Credentials("app", "alice", "s3cret"))]


def test_probe_host_overrides_the_advertised_one(client, logins):
    backend(client, advertised_host="db.example", probe_host="10.0.0.5").create(SPEC)
    assert logins[0][0] == "10.0.0.5"


@pytest.mark.parametrize("prepare", [True, False])
def test_container_that_exits_is_removed_and_its_logs_reported_without_secrets(client, logins, prepare):
    made = backend(client, prepare_image=prepare)
    if prepare:
        made.create(DatabaseSpec(1, "warm", "db", "user", "pw"))
    client.next_status = "exited"
    with pytest.raises(BackendError) as info:
        made.create(SPEC)
    assert "stopped before its database was ready" in info.value.msg
    assert "FATAL: password *** rejected" in info.value.msg
    assert "s3cret" not in info.value.msg
    verifier = client.instances()[-1].kwargs["environment"].get(VERIFIER_ENV)
    if prepare:
        assert verifier and verifier not in info.value.msg
        assert "password '***'" in info.value.msg
    assert client.instances()[-1].removed == (True, True)


def test_the_engine_is_asked_whether_the_container_exited_at_most_twice_a_second(client):
    made = backend(client)
    container = FakeContainer(client, name="x")
    check = made._exit_watch(container)
    for _ in range(5):
        check()
    assert client.reloads == 1


def test_timeout_removes_the_container(client, monkeypatch):
    def never_ready(*args, **kwargs):
        raise docker_backend.NotReady("connection refused")

    monkeypatch.setattr(docker_backend, "wait_for_login", never_ready)
    with pytest.raises(BackendTimeout, match="not ready within 60 s"):
        backend(client).create(SPEC)
    assert client.instances()[0].removed == (True, True)


def test_missing_image_is_pulled_once(client, logins):
    client.containers.create_error = docker.errors.ImageNotFound("no such image")
    backend(client, image="postgres:16", prepare_image=False).create(SPEC)
    assert client.images.pulled == ["postgres:16"]


@pytest.mark.parametrize("prepare", [True, False])
def test_image_that_cannot_be_pulled_is_503(client, prepare):
    client.images.remove("postgres:16")
    client.containers.create_error = docker.errors.ImageNotFound("no such image")
    client.images.error = docker.errors.APIError("pull access denied")
    with pytest.raises(BackendUnavailable, match="postgres:16"):
        backend(client, prepare_image=prepare).create(SPEC)
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
    made.delete(ref, Credentials("app", "alice", "s3cret"), instance_id=SPEC.instance_id, force=True)
    assert not made.exists(ref)
    made.delete(ref, Credentials("app", "alice", "s3cret"), instance_id=SPEC.instance_id, force=True)


# -- the prepared image's parts --------------------------------------------------------------


def test_a_pooled_container_gets_a_password_any_process_of_the_server_derives(client, logins, monkeypatch):
    monkeypatch.setenv("POSTGRAAS_POOL_SECRET", "one secret")
    made = backend(client)
    pooled = dataclasses.replace(SPEC, pooled=True, db_pwd="throwaway from the service")
    made.create(pooled)
    [(_, _, credentials)] = logins
    # Not the service's throwaway password: one derived from the secret, the deployment, the row.
    assert credentials.db_pwd != "throwaway from the service"
    assert credentials.db_pwd == backend(client)._pool_password(SPEC.instance_id, SPEC.db_username)
    assert credentials.db_pwd != made._pool_password(SPEC.instance_id + 1, SPEC.db_username)
    monkeypatch.setenv("POSTGRAAS_POOL_SECRET", "another secret")
    assert credentials.db_pwd != backend(client)._pool_password(SPEC.instance_id, SPEC.db_username)


def test_no_pooled_container_without_the_prepared_image(client, logins):
    client.login_result = (126, b'OCI runtime exec failed: exec: "psql": executable file not found in $PATH')
    made = backend(client)
    # The plain path makes the tenant the image's bootstrap superuser: no claim could rename it.
    with pytest.raises(BackendError, match="needs the prepared image"):
        made.create(dataclasses.replace(SPEC, pooled=True))
    assert client.instances() == []
    assert made.create(SPEC).port == 49153


def test_the_images_own_role_and_database_are_not_claimed():
    made = DockerBackend(DockerBackendSettings(type="docker"), "deployment", client_factory=lambda: None)
    assert made.why_no_pool() is None
    assert made.can_claim("app", "alice")
    assert not made.can_claim("postgres", "alice") and not made.can_claim("app", "postgres")
    assert "prepare_image" in (
        DockerBackend(
            DockerBackendSettings(type="docker", prepare_image=False), "deployment", client_factory=lambda: None
        ).why_no_pool()
        or ""
    )
