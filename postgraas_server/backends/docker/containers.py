"""What the docker backend reads from and does to containers, the instances' and the prepared
image's build containers alike, through the docker SDK."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import requests

from ...backend_settings import DockerBackendSettings, SwarmBackendSettings
from ...errors import BackendError

log = logging.getLogger(__name__)

POSTGRES_PORT = "5432/tcp"
LOG_TAIL_LINES = 20


def engine_client_factory(
    settings: DockerBackendSettings | SwarmBackendSettings,
) -> Callable[[], docker.DockerClient]:
    """A new docker SDK client for the configured engine (or Swarm manager), at each call."""

    def connect() -> docker.DockerClient:
        if settings.base_url:
            return docker.DockerClient(base_url=settings.base_url, timeout=int(settings.api_timeout))
        return docker.from_env(timeout=int(settings.api_timeout))

    return connect


def limits(settings: DockerBackendSettings) -> dict[str, Any]:
    """For every container made, the prepared image's build containers too."""
    return dict(
        # One tenant must not starve the host or the others; nothing is mounted from it.
        mem_limit=settings.memory_limit,
        nano_cpus=int(settings.cpu_limit * 1e9),
        pids_limit=settings.pids_limit,
        shm_size=settings.shm_size,
        security_opt=["no-new-privileges"],
    )


def environment_of(config: dict[str, Any]) -> dict[str, str]:
    """The environment in a container's or an image's Config, as a dict."""
    return dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)


def published_port(container: Any) -> int:
    """The host port PostgreSQL's port is published on (of an inspected container)."""
    bindings = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in bindings.get(POSTGRES_PORT) or []:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    raise BackendError(f"Docker published no host port for container {container.name}")


def log_tail(container: Any, secrets: tuple[str, ...]) -> str:
    """The container's last log lines, each of ``secrets`` in them replaced by ***."""
    try:
        text = container.logs(tail=LOG_TAIL_LINES).decode("utf-8", "replace")
    except (docker.errors.DockerException, requests.RequestException):
        return "(logs unavailable)"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def remove_quietly(container: Any, why: str) -> None:
    """Remove the container and its anonymous volumes; one gone already is fine, a failure is logged."""
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except (docker.errors.DockerException, requests.RequestException):
        log.exception("could not remove container %s %s", getattr(container, "name", "?"), why)


def created_at(value: object) -> datetime:
    # The list answer gives epoch seconds; inspect gives RFC 3339.
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return _parse_docker_time(str(value or ""))


def _parse_docker_time(value: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds, which datetime does not take."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", value)
    if not match:
        return datetime.now(UTC)
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}{fraction}{zone}")
