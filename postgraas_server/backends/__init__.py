"""Backends create the PostgreSQL databases; ``BackendRegistry`` holds the configured ones by name.

- ``contract``: what every backend implements (``Backend``) and the values it takes and gives.
- ``registry``: the configured backends, built by their ``type``.
- ``local``, ``docker``, ``cluster``: one package per backend.
- ``postgres``: what several backends share (tenants, logins, the warm pool's hand-over).
"""

from __future__ import annotations

from .contract import (
    Backend,
    Credentials,
    DatabaseSpec,
    FrozenTemplate,
    ManagedObject,
    ObjectDescription,
    ObjectState,
    ProvisionedDatabase,
)
from .postgres.client import password_accepted
from .registry import BackendRegistry, build_backend

__all__ = [
    "Backend",
    "BackendRegistry",
    "Credentials",
    "DatabaseSpec",
    "FrozenTemplate",
    "ManagedObject",
    "ObjectDescription",
    "ObjectState",
    "ProvisionedDatabase",
    "build_backend",
    "password_accepted",
]
