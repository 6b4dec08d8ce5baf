"""The secret from which backends derive the throwaway passwords of pooled objects they must log in
to again to claim them (docker: the pooled container's tenant).

Every process of one server must derive the same passwords: ``serve`` puts a fresh secret in
``POSTGRAAS_POOL_SECRET`` before its workers start, unless it is set already. Servers that share a
meta db (replicas) set the same value there; otherwise each one's claims of the others' pooled
objects fail, and those objects are removed and made anew. The secret never leaves the process
environment: containers only ever see a SCRAM verifier of a derived password.
"""

from __future__ import annotations

import os
import secrets

ENV = "POSTGRAAS_POOL_SECRET"


def ensure_pool_secret() -> None:
    """For ``serve``, before it forks its workers."""
    os.environ.setdefault(ENV, secrets.token_hex(32))


def pool_secret() -> bytes:
    """This process's secret (a process started without one, a one-off command say, makes its own)."""
    ensure_pool_secret()
    return os.environ[ENV].encode()
