"""The image a swarm backend's services run: found or made once per process on the manager's
engine, and, where a registry is configured, pushed there and named by digest, so every node
pulls the same image."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import docker.errors

from ...backend_settings import SwarmBackendSettings
from ...errors import BackendUnavailable
from ..docker.image_preparer import ImagePreparer

log = logging.getLogger(__name__)

PREPARED_REPOSITORY = "postgraas/prepared"


class PushRefused(Exception):
    """The registry (or the engine pushing to it) refused a push; the message is their word."""


def push_image(client: Any, repository: str, tag: str) -> str:
    """Push ``repository:tag`` from the engine of ``client``; the pushed reference by digest
    (``repository@sha256:...``), which names exactly this image on every node. Raises PushRefused,
    and the docker SDK's errors when the engine cannot be reached."""
    try:
        for line in client.api.push(repository, tag, stream=True, decode=True):
            if "error" in line:
                raise PushRefused(line["error"])
    except docker.errors.APIError as e:
        raise PushRefused(e.explanation or str(e)) from e
    digests = client.images.get(f"{repository}:{tag}").attrs.get("RepoDigests") or []
    reference = next((d for d in digests if d.startswith(f"{repository}@")), None)
    if reference is None:
        raise PushRefused("the push reported no digest")
    return reference


class ServiceImage:
    def __init__(self, settings: SwarmBackendSettings, build_options: Callable[[], dict[str, Any]]) -> None:
        self.settings = settings
        self._preparer = ImagePreparer(build_options)
        self._lock = threading.Lock()
        # (reference services name, whether it is the prepared image), once known.
        self._resolved: tuple[str, bool] | None = None

    def resolve(self, client: Any) -> tuple[str, bool]:
        """The image reference for services, and whether it is the prepared image. Raises
        BackendUnavailable when the image cannot be had or the registry refuses it, and the docker
        SDK's errors when the manager cannot be reached."""
        registry = self.settings.registry
        if registry is None:
            # Nothing to push to: the nodes have the configured image, or pull it themselves.
            return self.settings.image, False
        with self._lock:
            if self._resolved is not None:
                return self._resolved
            resolved, final = self._push(client, registry)
            if final:
                self._resolved = resolved
            return resolved

    def forget(self) -> None:
        """A service could not use it (removed from the registry, say): push it again next time."""
        with self._lock:
            self._resolved = None

    def _push(self, client: Any, registry: str) -> tuple[tuple[str, bool], bool]:
        """The reference and whether it is the prepared image; and whether that is final (not the
        image as it is only because another server's build of the prepared one is still busy)."""
        image = self._local_image(client)
        prepared = self._preparer.tag_for(client, image) if self.settings.prepare_image else None
        if prepared is not None:
            source = client.images.get(prepared)
            repository, tag = f"{registry}/{PREPARED_REPOSITORY}", prepared.rsplit(":", 1)[1]
        else:
            source = image
            repository, tag = f"{registry}/{_path_of(self.settings.image)}", image.id.split(":")[-1][:16]
        source.tag(repository, tag)
        try:
            reference = push_image(client, repository, tag)
        except PushRefused as e:
            raise BackendUnavailable(self._refused(repository, tag, str(e))) from e
        log.info("pushed %s as %s", self.settings.image if prepared is None else prepared, reference)
        final = prepared is not None or not self.settings.prepare_image or self._preparer.cannot_prepare(image.id)
        return (reference, prepared is not None), final

    def _local_image(self, client: Any) -> Any:
        try:
            return client.images.get(self.settings.image)
        except docker.errors.ImageNotFound:
            pass
        log.info("image %s not on the manager's engine; pulling it", self.settings.image)
        try:
            client.images.pull(self.settings.image)
            return client.images.get(self.settings.image)
        except docker.errors.APIError as e:
            raise BackendUnavailable(
                f"The image {self.settings.image} (image) is not on the manager's Docker engine and could not "
                f"be pulled: {e.explanation or e}"
            ) from e

    def _refused(self, repository: str, tag: str, error: str) -> str:
        return (
            f"The registry {self.settings.registry} (registry) refused the push of {repository}:{tag}, which "
            f"every node pulls instances from: {error}"
        )


def _path_of(image: str) -> str:
    """The repository path of ``image`` without its registry host and tag ("library/postgres")."""
    name = image.split("@", 1)[0]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest
    last_slash = name.rfind("/")
    if ":" in name[last_slash + 1 :]:
        name = name.rsplit(":", 1)[0]
    return name if "/" in name else f"library/{name}"
