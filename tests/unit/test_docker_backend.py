"""DockerBackend with a fake docker SDK client: the calls it makes and how it translates failures."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import logging
import subprocess
import time

import docker.errors
import pytest
import requests

from postgraas_server.backends import Credentials, DatabaseSpec
from postgraas_server.backends.docker import DockerBackend, image_preparer, prepared_image
from postgraas_server.backends.docker import backend as docker_backend
from postgraas_server.backends.docker.prepared_image import (
    BUILD_NAME_PREFIX,
    DATA_DIR,
    PREPARED_FROM_LABEL,
    VERIFIER_ENV,
    WRAPPER_PATH,
    prepared_tag,
    wrapper_script,
)
from postgraas_server.config import DockerBackendSettings
from postgraas_server.errors import BackendError, BackendTimeout, BackendUnavailable, Conflict
from postgraas_server.scram import scram_keys

SPEC = DatabaseSpec(7, "demo", "app", "alice", "s3cret")
IMAGE_ID = "sha256:" + "ab" * 32
TAG = prepared_tag(IMAGE_ID)


class FakeImage:
    def __init__(self, image_id: str, tags: list[str], labels: dict | None = None, config: dict | None = None):
        self.id = image_id
        self.tags = tags
        self.labels = labels or {}
        self.attrs = {"Config": config or {}}
        self.images: FakeImages | None = None

    def tag(self, repository, tag):
        self.tags.append(f"{repository}:{tag}")
        self.images.add(self)


class FakeContainer:
    def __init__(self, client, **kwargs):
        self.client = client
        self.kwargs = kwargs
        self.id = f"c0ffee{next(client.ids)}"
        self.name = kwargs["name"]
        self.labels = kwargs.get("labels") or {}
        self.status = "created"
        self.attrs = {"NetworkSettings": {"Ports": {}}, "State": {"ExitCode": 0}, "Created": time.time()}
        self.removed = None
        self.execs: list[list[str]] = []
        self.archives: list[tuple[str, bytes]] = []
        self.commits: list[dict] = []

    def start(self):
        self.status = "running"
        self.attrs["NetworkSettings"]["Ports"] = {"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]}

    def reload(self):
        self.client.reloads += 1
        self.status = self.client.next_status or self.status
        if self.client.check_fails and "-check-" in self.name:
            self.status = "exited"

    def logs(self, tail):
        verifier = (self.kwargs.get("environment") or {}).get(VERIFIER_ENV, "")
        return f"FATAL: password s3cret rejected\nSTATEMENT: alter role x password '{verifier}'\nbye\n".encode()

    def remove(self, force, v):
        self.removed = (force, v)
        self.client.containers.by_id.pop(self.id, None)

    # The prepared image's build container:

    def exec_run(self, command, environment=None):
        self.execs.append(command)
        if "-h" in command:  # the wait for a TCP login
            return self.client.login_result
        return self.client.socket_result

    def put_archive(self, path, data):
        self.archives.append((path, data))
        return True

    def stop(self, timeout):
        self.status = "exited"

    def wait(self, timeout):
        return {"StatusCode": self.client.stop_code}

    def commit(self, message, changes):
        if self.client.commit_error:
            raise self.client.commit_error
        image = FakeImage(f"sha256:prepared{next(self.client.ids)}", [], dict(self.labels))
        self.commits.append({"changes": changes, "image": image})
        self.client.images.add(image)
        return image


class FakeContainers:
    def __init__(self, client):
        self.client = client
        self.by_id: dict[str, FakeContainer] = {}
        self.create_error: Exception | None = None

    def create(self, image, **kwargs):
        if self.create_error and not kwargs["name"].startswith(BUILD_NAME_PREFIX):
            error, self.create_error = self.create_error, None
            raise error
        if not self.client.images.has(image):
            raise docker.errors.ImageNotFound(f"no such image: {image}")
        if any(c.name == kwargs["name"] for c in self.by_id.values()):
            response = requests.Response()
            response.status_code = 409
            raise docker.errors.APIError("Conflict", response, explanation="name in use")
        container = FakeContainer(self.client, image=image, **kwargs)
        self.by_id[container.id] = container
        self.client.created.append(container)
        return container

    def get(self, ref):
        if ref not in self.by_id:
            raise docker.errors.NotFound("no such container")
        return self.by_id[ref]

    def list(self, all, sparse, filters):
        self.client.on_list()
        name = filters["name"].removeprefix("^/").removesuffix("$")
        return [c for c in self.by_id.values() if c.name == name]


class FakeImages:
    def __init__(self):
        self.by_ref: dict[str, FakeImage] = {}
        self.pulled = []
        self.error: Exception | None = None
        config = {"Entrypoint": ["docker-entrypoint.sh"], "Cmd": ["postgres"], "Env": ["PATH=/usr/bin"]}
        self.add(FakeImage(IMAGE_ID, ["postgres:16", "img:1"], config=config))

    def add(self, image: FakeImage) -> None:
        image.images = self
        self.by_ref[image.id] = image
        for tag in image.tags:
            self.by_ref[tag] = image

    def has(self, ref: str) -> bool:
        return ref in self.by_ref

    def get(self, ref):
        if ref not in self.by_ref:
            raise docker.errors.ImageNotFound(f"no such image: {ref}")
        return self.by_ref[ref]

    def remove(self, ref, force=False):
        image = self.by_ref[ref]
        for key in [key for key, value in self.by_ref.items() if value is image]:
            del self.by_ref[key]

    def pull(self, image):
        if self.error:
            raise self.error
        self.pulled.append(image)
        self.add(FakeImage(IMAGE_ID, [image], config={"Entrypoint": ["docker-entrypoint.sh"], "Cmd": ["postgres"]}))


class FakeClient:
    def __init__(self):
        self.ids = itertools.count()
        self.containers = FakeContainers(self)
        self.images = FakeImages()
        self.created: list[FakeContainer] = []
        self.next_status: str | None = None
        self.reloads = 0
        # What the build container's psql answers: the TCP login, then the local socket.
        self.login_result: tuple[int, bytes] = (0, b"")
        self.socket_result: tuple[int, bytes] = (0, DATA_DIR.encode())
        self.stop_code = 0
        self.commit_error: Exception | None = None
        # The wrapper does not work with the image: the check of the prepared image exits.
        self.check_fails = False
        self.on_list = lambda: None

    def builds(self) -> list[FakeContainer]:
        """The build containers, not the checks of what they made."""
        return [c for c in self.created if c.name.startswith(BUILD_NAME_PREFIX) and "-check-" not in c.name]

    def checks(self) -> list[FakeContainer]:
        return [c for c in self.created if c.name.startswith(BUILD_NAME_PREFIX + "check-")]

    def instances(self) -> list[FakeContainer]:
        return [c for c in self.created if not c.name.startswith(BUILD_NAME_PREFIX)]


@pytest.fixture
def client():
    return FakeClient()


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(prepared_image.time, "sleep", lambda seconds: None)


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


EXPECTED_LABELS = {
    "env": "ci",
    "postgraas.managed": "true",
    "postgraas.deployment": "dep-1",
    "postgraas.name": "demo",
    "postgraas.instance_id": "7",
}
LIMITS = {"mem_limit": "1g", "nano_cpus": 1_000_000_000, "pids_limit": 256, "shm_size": "256m"}


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


def test_the_prepared_image_is_made_from_the_configured_one(client, logins):
    backend(client, labels={"env": "ci"}).create(SPEC)
    [build] = client.builds()
    kwargs = build.kwargs
    assert kwargs["image"] == IMAGE_ID
    assert kwargs["name"] == BUILD_NAME_PREFIX + TAG.split(":")[1]
    # Marked as a build, not an instance: no deployment or instance labels, so never listed or reaped.
    assert kwargs["labels"] == {PREPARED_FROM_LABEL: IMAGE_ID}
    assert kwargs["network_mode"] == "none"
    assert {key: kwargs[key] for key in LIMITS} == LIMITS
    assert kwargs["security_opt"] == ["no-new-privileges"]
    env = kwargs["environment"]
    assert env["PGDATA"] == DATA_DIR and env["POSTGRES_USER"] == "postgres"
    assert env["POSTGRES_PASSWORD"] and env["POSTGRES_PASSWORD"] != "s3cret"
    # The build's password is removed from the cluster before the commit, over the local socket.
    assert "ALTER ROLE postgres PASSWORD NULL" in build.execs[-1]
    [(path, archive)] = build.archives
    assert path == "/" and b"exec docker-entrypoint.sh" in archive
    [commit] = build.commits
    assert client.images.get(TAG) is commit["image"]
    assert commit["image"].labels == {PREPARED_FROM_LABEL: IMAGE_ID}
    assert 'ENV POSTGRES_PASSWORD=""' in commit["changes"]
    assert f"ENV PGDATA={DATA_DIR}" in commit["changes"]
    assert f'ENTRYPOINT ["{WRAPPER_PATH}"]' in commit["changes"]
    assert 'CMD ["postgres"]' in commit["changes"]
    assert build.removed == (True, True)
    # Tagged only once a container of it made a tenant and took a login.
    [check] = client.checks()
    assert check.kwargs["image"] == commit["image"].id
    assert set(check.kwargs["environment"]) == {"POSTGRES_USER", "POSTGRES_DB", VERIFIER_ENV}
    assert check.kwargs["network_mode"] == "none"
    assert check.removed == (True, True)


def test_the_prepared_image_is_made_once_and_shared(client, logins):
    first = backend(client)
    first.create(SPEC)
    first.create(SPEC)
    # Another backend (a second worker, server or deployment on the engine) finds the tag.
    backend(client).create(SPEC)
    assert len(client.builds()) == 1
    assert [c.kwargs["image"] for c in client.instances()] == [TAG] * 3


def test_an_image_without_psql_falls_back_to_the_plain_path_and_warns_once(client, logins, caplog):
    client.login_result = (126, b'OCI runtime exec failed: exec: "psql": executable file not found in $PATH')
    made = backend(client)
    with caplog.at_level(logging.WARNING):
        made.create(SPEC)
        made.create(SPEC)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot prepare image postgres:16" in warnings[0] and "no usable psql" in warnings[0]
    [build] = client.builds()
    assert build.removed == (True, True) and build.commits == []
    for instance in client.instances():
        assert instance.kwargs["image"] == "postgres:16"
        assert instance.kwargs["environment"]["POSTGRES_PASSWORD"] == "s3cret"


@pytest.mark.parametrize(
    "break_it, reason",
    [
        (lambda c: setattr(c, "socket_result", (2, b"psql: error: FATAL: password required")), "local socket"),
        (lambda c: setattr(c, "socket_result", (0, b"/var/lib/postgresql/data")), "ignores PGDATA"),
        (lambda c: setattr(c, "stop_code", 137), "did not shut down cleanly"),
        (lambda c: setattr(c, "commit_error", docker.errors.APIError("no space left")), "no space left"),
    ],
)
def test_a_failed_preparation_removes_its_container_and_falls_back(client, logins, caplog, break_it, reason):
    break_it(client)
    with caplog.at_level(logging.WARNING):
        backend(client).create(SPEC)
    assert reason in caplog.text
    [build] = client.builds()
    assert build.removed == (True, True)
    assert client.instances()[0].kwargs["image"] == "postgres:16"
    assert not client.images.has(TAG)


def test_a_prepared_image_whose_check_fails_is_removed_and_not_used(client, logins, caplog):
    client.check_fails = True
    with caplog.at_level(logging.WARNING):
        backend(client).create(SPEC)
    assert "stopped during initialisation" in caplog.text
    [build] = client.builds()
    [check] = client.checks()
    assert build.removed == check.removed == (True, True)
    assert not client.images.has(build.commits[0]["image"].id)
    assert not client.images.has(TAG)
    assert client.instances()[0].kwargs["image"] == "postgres:16"


def test_an_image_without_entrypoint_is_not_prepared(client, logins, caplog):
    client.images.get("postgres:16").attrs["Config"]["Entrypoint"] = None
    with caplog.at_level(logging.WARNING):
        backend(client).create(SPEC)
    assert "no ENTRYPOINT" in caplog.text
    assert client.builds() == []
    assert client.instances()[0].kwargs["image"] == "postgres:16"


def test_another_builder_is_waited_for_not_raced(client, logins):
    # A build of the same tag runs elsewhere (another worker); it finishes while this one waits.
    other = client.containers.create(image=IMAGE_ID, name=BUILD_NAME_PREFIX + TAG.split(":")[1])
    client.on_list = lambda: client.images.add(FakeImage("sha256:theirs", [TAG], {PREPARED_FROM_LABEL: IMAGE_ID}))
    backend(client).create(SPEC)
    assert client.builds() == [other]
    assert client.instances()[0].kwargs["image"] == TAG


def test_a_build_container_running_for_too_long_is_removed_and_the_image_made(client, logins):
    stale = client.containers.create(image=IMAGE_ID, name=BUILD_NAME_PREFIX + TAG.split(":")[1])
    stale.attrs.update(State="running", Created=time.time() - 3600)
    backend(client).create(SPEC)
    assert stale.removed == (True, True)
    assert len(client.builds()) == 2
    assert client.instances()[0].kwargs["image"] == TAG


def test_a_build_elsewhere_that_takes_too_long_means_the_plain_path_this_once(client, logins, monkeypatch):
    other = client.containers.create(image=IMAGE_ID, name=BUILD_NAME_PREFIX + TAG.split(":")[1])
    monkeypatch.setattr(image_preparer, "BUILD_TIMEOUT_S", 0)
    made = backend(client)
    made.create(SPEC)
    assert client.instances()[0].kwargs["image"] == "postgres:16"
    # Not remembered as "cannot be prepared": once the other build is done, its image is used.
    other.remove(True, True)
    client.images.add(FakeImage("sha256:theirs", [TAG], {PREPARED_FROM_LABEL: IMAGE_ID}))
    made.create(SPEC)
    assert client.instances()[1].kwargs["image"] == TAG


def test_a_stopped_build_container_left_by_an_engine_restart_is_stale_sooner(client, logins):
    left = client.containers.create(image=IMAGE_ID, name=BUILD_NAME_PREFIX + TAG.split(":")[1])
    left.attrs.update(State="exited", Created=time.time() - 60)
    backend(client).create(SPEC)
    assert left.removed == (True, True)
    assert client.instances()[0].kwargs["image"] == TAG


def test_a_prepared_image_removed_meanwhile_is_made_again(client, logins):
    made = backend(client)
    made.create(SPEC)
    client.images.remove(TAG)
    made.create(SPEC)
    assert len(client.builds()) == 2
    assert [c.kwargs["image"] for c in client.instances()] == [TAG, TAG]
    assert client.images.has(TAG)


def test_a_tag_of_another_image_is_not_used(client, logins):
    # Same tag, but made from something else: never trusted.
    client.images.add(FakeImage("sha256:other", [TAG], {PREPARED_FROM_LABEL: "sha256:elsewhere"}))
    backend(client).create(SPEC)
    assert len(client.builds()) == 1


def test_a_missing_configured_image_is_pulled_then_prepared(client, logins):
    client.images.remove("postgres:16")
    backend(client).create(SPEC)
    assert client.images.pulled == ["postgres:16"]
    assert client.instances()[0].kwargs["image"] == TAG


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


def test_prepared_tag_follows_the_image_id():
    assert prepared_tag(IMAGE_ID) == TAG
    assert prepared_tag("sha256:" + "cd" * 32) != TAG
    assert TAG.startswith("postgraas/prepared:")


def test_wrapper_runs_other_commands_through_the_original_entrypoint(tmp_path):
    script = tmp_path / "wrapper.sh"
    script.write_text(wrapper_script(["echo", "it's", "a $HOME"]))
    subprocess.run(["sh", "-n", script], check=True)
    result = subprocess.run(["sh", script, "bash", "-c"], capture_output=True, text=True, check=True)
    assert result.stdout == "it's a $HOME bash -c\n"


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
