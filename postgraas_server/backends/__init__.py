"""Backends create the PostgreSQL databases; ``BackendRegistry`` holds the configured ones by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import BackendSettings, ConfigError, Settings
from ..errors import BackendUnavailable, InvalidRequest
from .base import (
    Backend,
    Credentials,
    DatabaseSpec,
    ManagedObject,
    ObjectDescription,
    ObjectState,
    ProvisionedDatabase,
)


def build_backend(settings: BackendSettings, deployment: str) -> Backend:
    if settings.type == "docker":
        from .docker import DockerBackend

        return DockerBackend(settings, deployment)
    if settings.type == "cluster":
        from .cluster import ClusterBackend

        return ClusterBackend(settings, deployment)
    from .local import LocalBackend

    return LocalBackend(settings, deployment)


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
        backends = {name: build_backend(backend, deployment) for name, backend in settings.backends.items()}
        limits = {n: b.max_instances for n, b in settings.backends.items() if b.max_instances is not None}
        pools = {n: b.pool_size for n, b in settings.backends.items() if b.pool_size}
        for name in pools:
            if not backends[name].supports_pool:
                why = getattr(backends[name], "why_no_pool", f"the {backends[name].type_name} backend has no pool")
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


__all__ = [
    "Backend",
    "BackendRegistry",
    "Credentials",
    "DatabaseSpec",
    "ManagedObject",
    "ObjectDescription",
    "ObjectState",
    "ProvisionedDatabase",
    "build_backend",
]
