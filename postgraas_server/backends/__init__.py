"""Backends create the PostgreSQL databases; ``build_backend`` picks one from the settings."""

from __future__ import annotations

from ..config import DockerBackendSettings
from .base import Backend, Credentials, DatabaseSpec, ProvisionedDatabase


def build_backend(settings: DockerBackendSettings) -> Backend:
    if settings.type == "docker":
        from .docker import DockerBackend

        return DockerBackend(settings)
    raise ValueError(f"unknown backend type {settings.type!r}")


__all__ = ["Backend", "Credentials", "DatabaseSpec", "ProvisionedDatabase", "build_backend"]
