"""The configured backends by name, built from the settings by their ``type``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from ..config import BackendSettings, ConfigError, Settings, unknown_backend_type
from ..errors import BackendUnavailable, InvalidRequest
from .contract import Backend

# Each backend type of the configuration and its class (module, name), imported only when a
# backend of the type is configured: the docker SDK is loaded for docker backends only.
BACKEND_CLASSES: dict[str, tuple[str, str]] = {
    "local": (".local", "LocalBackend"),
    "docker": (".docker", "DockerBackend"),
    "cluster": (".cluster", "ClusterBackend"),
    "swarm": (".swarm", "SwarmBackend"),
}


def backend_class(type_name: str, key: str = "backend") -> type[Backend]:
    """The class of the backend type ``type_name``; ConfigError naming ``key.type`` when there is none."""
    if type_name not in BACKEND_CLASSES:
        raise ConfigError(f"{unknown_backend_type(key)} (not {type_name!r})")
    module, name = BACKEND_CLASSES[type_name]
    found: type[Backend] = getattr(importlib.import_module(module, __package__), name)
    return found


def build_backend(settings: BackendSettings, deployment: str, name: str | None = None) -> Backend:
    """The backend ``settings`` describe (the section ``backends.<name>``)."""
    key = "backend" if name is None else f"backends.{name}"
    # Each class takes the settings of its own type, which is what settings.type picked.
    make = cast(Callable[[BackendSettings, str], Backend], backend_class(settings.type, key))
    return make(settings, deployment)


@dataclass
class BackendRegistry:
    backends: dict[str, Backend]
    default: str
    # max_instances per backend name, where one is configured.
    limits: dict[str, int] = field(default_factory=dict)
    # pool_size per backend name, where one is configured.
    pools: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, deployment: str) -> BackendRegistry:
        backends = {name: build_backend(backend, deployment, name) for name, backend in settings.backends.items()}
        limits = {n: b.max_instances for n, b in settings.backends.items() if b.max_instances is not None}
        pools = {n: b.pool_size for n, b in settings.backends.items() if b.pool_size}
        for name in pools:
            if (why := backends[name].why_no_pool()) is not None:
                raise ConfigError(f"backends.{name}.pool_size: {why}")
        return cls(backends, settings.application.default_backend or next(iter(backends)), limits, pools)

    def choose(self, name: str | None) -> tuple[str, Backend]:
        """The backend a request names (400 listing the configured ones if unknown), else the default."""
        name = self.default if name is None else name
        if name not in self.backends:
            configured = ", ".join(self.backends)
            raise InvalidRequest(
                f"There is no backend named {name!r}; configured backends: {configured}.",
                {"backend": f"must be one of: {configured}"},
            )
        return name, self.backends[name]

    def holding(self, name: str) -> Backend:
        """The backend an existing instance lives in."""
        try:
            return self.backends[name]
        except KeyError:
            raise BackendUnavailable(
                f"The instance lives in backend {name!r}, which is no longer configured."
            ) from None
