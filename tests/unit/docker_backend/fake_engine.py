"""A fake docker SDK client for DockerBackend's unit tests, and the fixtures that hand it over."""

from __future__ import annotations

import itertools
import time

import docker.errors
import requests

from postgraas_server.backend_settings import DockerBackendSettings
from postgraas_server.backends import DatabaseSpec
from postgraas_server.backends.docker import DockerBackend
from postgraas_server.backends.docker.prepared_image import (
    BUILD_NAME_PREFIX,
    DATA_DIR,
    VERIFIER_ENV,
    prepared_tag,
)

_created = itertools.count(1_700_000_000)
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
        self.created = next(_created)

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
        # As inspect shows them: the image's environment and labels under the container's own.
        image = client.images.by_ref.get(kwargs.get("image", ""))
        image_env = dict(item.split("=", 1) for item in (image.attrs["Config"].get("Env") or [])) if image else {}
        env = {**image_env, **(kwargs.get("environment") or {})}
        self.attrs["Config"] = {
            "Env": [f"{key}={value}" for key, value in env.items()],
            "Labels": {**(image.labels if image else {}), **self.labels},
        }
        self.attrs["Image"] = image.id if image else kwargs.get("image")
        self.started = 0
        self.removed = None
        self.execs: list[list[str]] = []
        self.archives: list[tuple[str, bytes]] = []
        self.commits: list[dict] = []

    def start(self):
        self.started += 1
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
        if self.client.exec_results:
            return self.client.exec_results.pop(0)
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

    def commit(self, repository=None, tag=None, message=None, changes=None, conf=None, pause=True):
        if self.client.commit_error:
            raise self.client.commit_error
        conf = conf or {}
        # The container's config, what conf gives overriding it (as the engine merges them).
        labels = {**self.attrs["Config"]["Labels"], **(conf.get("Labels") or {})}
        env = dict(item.split("=", 1) for item in self.attrs["Config"]["Env"])
        env.update(item.split("=", 1) for item in conf.get("Env") or [])
        config = {key: value for key, value in conf.items() if key not in ("Labels", "Env")}
        config["Env"] = [f"{key}={value}" for key, value in env.items()]
        image_id = f"sha256:{next(self.client.ids):064x}"
        image = FakeImage(image_id, [f"{repository}:{tag}"] if repository else [], labels, config)
        self.commits.append({"changes": changes, "image": image, "conf": conf, "message": message})
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
    def __init__(self, client):
        self.client = client
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
        if ref not in self.by_ref:
            raise docker.errors.ImageNotFound(f"no such image: {ref}")
        image = self.by_ref[ref]
        # By id, as the docker backend removes template images: refused while a container uses it.
        in_use = any(c.attrs["Image"] == image.id for c in self.client.containers.by_id.values())
        if not force and ref == image.id and in_use:
            response = requests.Response()
            response.status_code = 409
            raise docker.errors.APIError("Conflict", response, explanation="image is being used by a container")
        for key in [key for key, value in self.by_ref.items() if value is image]:
            del self.by_ref[key]

    def pull(self, image):
        if self.error:
            raise self.error
        self.pulled.append(image)
        self.add(FakeImage(IMAGE_ID, [image], config={"Entrypoint": ["docker-entrypoint.sh"], "Cmd": ["postgres"]}))


class FakeLowLevelApi:
    def __init__(self, client):
        self.client = client

    def images(self, filters):
        key, value = filters["label"].split("=", 1)
        unique = {image.id: image for image in self.client.images.by_ref.values()}
        return [
            {"Id": image.id, "Labels": image.labels, "Created": image.created}
            for image in unique.values()
            if image.labels.get(key) == value
        ]


class FakeClient:
    def __init__(self):
        self.ids = itertools.count()
        self.containers = FakeContainers(self)
        self.images = FakeImages(self)
        self.api = FakeLowLevelApi(self)
        # What the next exec_run calls answer, first to last, before the defaults below.
        self.exec_results: list[tuple[int, bytes]] = []
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
