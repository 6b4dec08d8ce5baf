"""Finding or making the prepared image (see prepared_image) once per engine, whatever number of
server processes and servers share it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import docker.errors

from .containers import remove_quietly
from .prepared_image import (
    BUILD_NAME_PREFIX,
    BUILD_TIMEOUT_S,
    PREPARED_FROM_LABEL,
    STOPPED_BUILD_STALE_S,
    PrepareBusy,
    PrepareFailed,
    build,
    create_build_container,
    original_entrypoint,
    prepared_tag,
)

log = logging.getLogger(__name__)


class ImagePreparer:
    """The prepared image of each configured image, found or made once per process.

    Threads of one process wait for one build; processes and servers on one engine share the tag,
    and the build container's fixed name is the engine-wide lock: a second builder waits for the
    first one's image instead of making its own.
    """

    def __init__(self, container_options: Callable[[], dict[str, Any]]) -> None:
        # Resource limits and hardening for the build container, as the instances get them.
        self._container_options = container_options
        self._lock = threading.Lock()
        # Configured image id -> prepared tag, or None when that image cannot be prepared.
        self._known: dict[str, str | None] = {}

    def tag_for(self, client: Any, image: Any) -> str | None:
        """The prepared image's tag, made now if needed; None: the image cannot be prepared (the
        reason was logged once). Raises the docker SDK's errors when the engine cannot be reached."""
        with self._lock:
            if image.id not in self._known:
                try:
                    self._known[image.id] = self._find_or_make(client, image)
                except PrepareFailed as e:
                    log.warning(
                        "cannot prepare image %s (%s), so its containers initialise on every create: %s",
                        image.tags[0] if image.tags else image.id,
                        image.id,
                        e,
                    )
                    self._known[image.id] = None
                except PrepareBusy as e:
                    log.warning("image %s is not prepared yet, so this container initialises itself: %s", image.id, e)
                    return None
            return self._known[image.id]

    def cannot_prepare(self, image_id: str) -> bool:
        """True once the image was found impossible to prepare (not merely busy elsewhere)."""
        with self._lock:
            return image_id in self._known and self._known[image_id] is None

    def forget(self, tag: str) -> None:
        """The tag went missing (an image prune, say): find or make it again next time."""
        with self._lock:
            for image_id in [image_id for image_id, known in self._known.items() if known == tag]:
                del self._known[image_id]

    def _find_or_make(self, client: Any, image: Any) -> str:
        tag = prepared_tag(image.id)
        name = BUILD_NAME_PREFIX + tag.rsplit(":", 1)[1]
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while True:
            if _image_exists(client, tag, image.id):
                return tag
            if not original_entrypoint(image):
                # The wrapper must run before the image's own start-up, which CMD alone cannot give it.
                raise PrepareFailed("the image has no ENTRYPOINT for the wrapper to run")
            try:
                build_container = create_build_container(client, image, name, self._container_options())
            except docker.errors.APIError as e:
                if e.status_code != 409:
                    raise PrepareFailed(f"the build container could not be created: {e.explanation or e}") from e
                # Another process builds it: wait for its image rather than build a second one.
                _wait_for_other_builder(client, name, tag, image.id, deadline)
                continue
            return build(client, image, build_container, tag, self._container_options())


def _image_exists(client: Any, tag: str, image_id: str) -> bool:
    try:
        found = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return (found.labels or {}).get(PREPARED_FROM_LABEL) == image_id


def _wait_for_other_builder(client: Any, name: str, tag: str, image_id: str, deadline: float) -> None:
    """Return when the other build finished (made the tag or failed) or was found stale and removed."""
    while time.monotonic() < deadline:
        if _image_exists(client, tag, image_id):
            return
        others = client.containers.list(all=True, sparse=True, filters={"name": f"^/{name}$"})
        if not others:
            return
        age = time.time() - float(others[0].attrs.get("Created") or 0)
        running = others[0].attrs.get("State") == "running"
        if age > (BUILD_TIMEOUT_S if running else STOPPED_BUILD_STALE_S):
            # Its builder is gone (a killed server, an engine restart); nobody else will remove it.
            log.warning("removing stale build container %s", name)
            remove_quietly(others[0], "left by a stale build")
            return
        time.sleep(0.25)
    raise PrepareBusy(f"another server's build of {tag} did not finish within {BUILD_TIMEOUT_S:g} s")
