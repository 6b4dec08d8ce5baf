"""An instance as the client sees it: parsed once from the server's JSON, immutable afterwards."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

IDENTIFIER_MAX_BYTES = 63


def connection_uri(user: str, password: str | None, host: str, port: int, db_name: str) -> str:
    # The same shape the server renders (postgraas_server.schemas), without importing the server.
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    host_part = f"[{host}]" if ":" in host else host
    return f"postgresql://{auth}@{host_part}:{port}/{quote(db_name, safe='')}"


def _identifier_from(name: str, prefix: str) -> str:
    # Instance names allow '.' and '-', identifiers do not; lower case so psql needs no quotes either.
    ident = re.sub(r"[^a-z0-9_]", "_", name.lower()) or prefix
    if ident[0].isdigit():
        ident = f"{prefix}_{ident}"
    return ident[:IDENTIFIER_MAX_BYTES]


def default_db_name(name: str) -> str:
    ident = _identifier_from(name, "db")
    return f"db_{ident}"[:IDENTIFIER_MAX_BYTES] if ident in ("template0", "template1") else ident


def default_username(name: str) -> str:
    ident = _identifier_from(name, "u")
    # The server refuses the superuser's name and PostgreSQL's reserved pg_ prefix.
    return f"u_{ident}"[:IDENTIFIER_MAX_BYTES] if ident == "postgres" or ident.startswith("pg_") else ident


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    # The server speaks UTC; a value without an offset is UTC all the same.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Instance:
    id: int
    name: str
    db_name: str
    db_username: str
    host: str | None
    port: int | None
    backend: str
    status: str
    status_detail: str | None
    expires_at: datetime | None
    created_at: datetime | None
    container_id: str | None = None
    # Item GET only: what the backend reports now (running, stopped, missing, unknown).
    backend_state: str | None = None
    # Known only from the answer to a create: the server never returns it again.
    password: str | None = field(default=None, repr=False)
    # The server's JSON as received (a create's has db_pwd): kept out of repr, which lands in logs.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], password: str | None = None) -> Instance:
        return cls(
            id=int(data["postgraas_instance_id"]),
            name=str(data["postgraas_instance_name"]),
            db_name=str(data["db_name"]),
            db_username=str(data["db_username"]),
            host=data.get("host"),
            port=int(data["port"]) if data.get("port") is not None else None,
            backend=str(data.get("backend", "")),
            status=str(data.get("status", "")),
            status_detail=data.get("status_detail"),
            expires_at=parse_time(data.get("expires_at")),
            created_at=parse_time(data.get("creation_timestamp")),
            container_id=data.get("container_id"),
            backend_state=data.get("backend_state"),
            password=password,
            raw=dict(data),
        )

    @property
    def user(self) -> str:
        return self.db_username

    @property
    def dbname(self) -> str:
        return self.db_name

    @property
    def uri(self) -> str | None:
        """postgresql://... with the password when it is known; None until the instance has an address."""
        if not self.host or not self.port:
            return None
        return connection_uri(self.db_username, self.password, self.host, self.port, self.db_name)

    @property
    def uri_without_password(self) -> str | None:
        """The URI for logs and reports."""
        if not self.host or not self.port:
            return None
        return connection_uri(self.db_username, None, self.host, self.port, self.db_name)

    @property
    def settled(self) -> bool:
        return self.status != "creating"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.raw)
