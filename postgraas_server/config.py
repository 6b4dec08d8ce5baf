"""Settings: application.cfg (JSON, laid out as in postgraas_server 2.x) plus POSTGRAAS_* overrides.

Every key can be overridden from the environment as ``POSTGRAAS_<SECTION>_<KEY>`` in upper case,
for example ``POSTGRAAS_METADB_URL`` or ``POSTGRAAS_BACKEND_READY_TIMEOUT``; a named backend's
keys are ``POSTGRAAS_BACKENDS_<NAME>_<KEY>`` (``POSTGRAAS_BACKENDS_LOCAL_DATA_ROOT``). Values are parsed as
strings coerced to the key's type (``"60"``, ``"true"``); objects and lists are given as JSON. Nothing is read at
import: ``load_settings`` is called by the CLI or the app factory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.engine import make_url

from .durations import parse_duration

ENV_PREFIX = "POSTGRAAS_"
CONFIG_PATH_ENV = "POSTGRAAS_CONFIG"
DEFAULT_CONFIG_PATH = "application.cfg"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetaDbSettings(_Section):
    """Where instance metadata lives: a SQLAlchemy URL, or the 2.x PostgreSQL keys."""

    url: str | None = None
    # postgraas_server 2.x keys: a PostgreSQL meta db.
    db_name: str | None = None
    db_username: str | None = None
    db_pwd: str | None = None
    host: str | None = None
    port: int | None = None
    # Run the alembic upgrade when the server starts, so a fresh checkout serves at once.
    auto_migrate: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> MetaDbSettings:
        legacy = [self.db_name, self.db_username, self.host]
        if self.url is None and not all(legacy):
            if any(legacy):
                raise ValueError("give either 'url' or all of 'db_name', 'db_username' and 'host'")
            self.url = "sqlite:///postgraas.sqlite"
        return self

    def sqlalchemy_url(self) -> str:
        if self.url is not None:
            return _absolute_sqlite(self.url)
        user = quote(self.db_username or "", safe="")
        password = f":{quote(self.db_pwd, safe='')}" if self.db_pwd else ""
        port = f":{self.port}" if self.port else ""
        return f"postgresql+psycopg://{user}{password}@{self.host}{port}/{quote(self.db_name or '', safe='')}"


def _absolute_sqlite(url: str) -> str:
    # A relative SQLite path means the working directory (flask-sqlalchemy would otherwise
    # put it in the app's instance folder, and init-db would migrate a different file).
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    if parsed.database.startswith("file:") or os.path.isabs(parsed.database):
        return url
    return parsed.set(database=os.path.abspath(parsed.database)).render_as_string(hide_password=False)


class _BackendSection(_Section):
    # Seconds to wait for the first real login to a new database.
    ready_timeout: float = Field(default=60.0, gt=0)
    # At most this many instances in the backend (all owners); None: no limit. Beyond: 503.
    max_instances: int | None = Field(default=None, ge=0)
    # Instances kept made ahead, with throwaway names and passwords; a create takes one and only
    # renames it and sets its password. They count towards max_instances.
    pool_size: int = Field(default=0, ge=0, le=100)
    advertised_host: str = "localhost"
    # Where the server itself connects to prove readiness; defaults to advertised_host.
    probe_host: str | None = None


class DockerBackendSettings(_BackendSection):
    """The docker backend: one container of ``image`` per instance."""

    type: Literal["docker"] = "docker"
    image: str = "postgres:16"
    # None: the environment's Docker settings (DOCKER_HOST, else the local socket).
    base_url: str | None = None
    bind_address: str = "0.0.0.0"
    # Seconds a single Docker API call may take before the engine counts as unreachable.
    api_timeout: float = Field(default=30.0, gt=0)
    # Extra labels put on every container (e.g. to tell environments apart).
    labels: dict[str, str] = Field(default_factory=dict)
    # Per container: memory (docker units: 512m, 2g), CPUs, processes, /dev/shm (postgres
    # uses it for parallel queries; Docker's 64m default is too small for them).
    memory_limit: str = Field(default="1g", pattern=r"^[0-9]+[bkmg]?$")
    cpu_limit: float = Field(default=1.0, gt=0, le=256)
    pids_limit: int = Field(default=256, ge=32)
    shm_size: str = Field(default="256m", pattern=r"^[0-9]+[bkmg]?$")
    # Run instances from an image made once per engine from ``image`` with its cluster initialised, so a
    # create skips initdb and the entrypoint's restart. False, or an image that cannot be prepared: ``image``
    # as it is, initialised by every container.
    prepare_image: bool = True


class ClusterBackendSettings(_BackendSection):
    """The cluster backend: a role and a database per instance inside an existing server."""

    type: Literal["cluster"]
    # A libpq connection string or URI for the admin login; or the 2.x keys below.
    dsn: str | None = None
    host: str | None = None
    port: int = 5432
    database: str = "postgres"
    username: str | None = None
    password: str | None = None
    # 2.x: Azure-style logins as user@server.
    server: str | None = None
    # What clients are told; default: the admin connection's host and port.
    advertised_host: str | None = None  # type: ignore[assignment]
    advertised_port: int | None = None
    ready_timeout: float = Field(default=10.0, gt=0)
    # "first": a tenant login proves the server lets tenants in on the backend's first create in
    # a process; "every": on each create, for a pg_hba that decides per database or role.
    login_proof: Literal["first", "every"] = "first"
    # The databases a request's "template" may name, designated by the cluster's admin: never
    # template1 (open to every role) nor a tenant's database (a tenant can flag its own as a template).
    templates: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]] = Field(default_factory=list)
    # Seconds an admin statement may wait for a lock, and run, before it is given up (a delete is
    # then retried by the reaper): a tenant's open transaction must not stall deletes and the reaper.
    lock_timeout: float = Field(default=5.0, gt=0)
    statement_timeout: float = Field(default=300.0, gt=0)
    # Revoke CONNECT and TEMPORARY from PUBLIC on the cluster's postgres and template1 databases
    # (and the admin database), so a tenant reaches only its own. False where other users of the
    # cluster rely on PUBLIC's default rights there (see docs/tenants.md).
    close_shared_databases: bool = True
    # Tenants may create databases of their own (CREATEDB), as test runners do beside the given one.
    # Off by default: on a shared server the admin decides. The databases a tenant made are dropped
    # with its instance (docs/test-suites.md).
    tenant_createdb: bool = False

    @model_validator(mode="after")
    def _admin_login(self) -> ClusterBackendSettings:
        if self.dsn is None and not (self.host and self.username):
            raise ValueError("give either 'dsn' or 'host' and 'username' for the admin connection")
        if any(name.lower() == "template1" for name in self.templates):
            raise ValueError(
                "templates: template1 is open to every role of the cluster; name a database of the admin's"
            )
        return self


class LocalBackendSettings(_BackendSection):
    """The local backend: a postgres cluster per instance, run as processes on this host."""

    type: Literal["local"]
    # None: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
    bin_dir: str | None = None
    # None: /var/lib/postgraas when the server runs as root (run_as_user must reach it; a
    # checkout under /root would not do), else ./postgraas-data.
    data_root: str | None = None
    listen_address: str = "127.0.0.1"
    # The OS user postgres runs as when the server runs as root (postgres refuses root).
    run_as_user: str = "postgres"
    port_min: int = Field(default=20000, ge=1024, le=65535)
    port_max: int = Field(default=29999, ge=1024, le=65535)
    ready_timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _port_range(self) -> LocalBackendSettings:
        if self.port_min > self.port_max:
            raise ValueError("port_min must not be above port_max")
        return self


BackendSettings = Annotated[
    DockerBackendSettings | ClusterBackendSettings | LocalBackendSettings, Field(discriminator="type")
]
BACKEND_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,31}")


class ApplicationSettings(_Section):
    debug: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json: one JSON object per line, for log shippers.
    log_format: Literal["text", "json"] = "text"
    # Requests larger than this are refused with 413; a create body is well under 1 KiB.
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    # The backend used when a request names none; default: the only one configured.
    default_backend: str | None = None
    # How `serve` treats clients (see docs/serving.md): a request's line and headers must arrive
    # within request_header_timeout seconds, its body within request_body_timeout, and its answer
    # be read within send_timeout; an idle kept-alive connection is closed after keepalive_timeout.
    # No thread serves a request before all of it has arrived.
    request_header_timeout: float = Field(default=10.0, gt=0)
    request_body_timeout: float = Field(default=30.0, gt=0)
    send_timeout: float = Field(default=30.0, gt=0)
    keepalive_timeout: float = Field(default=5.0, gt=0)
    # Open client connections per worker process; beyond it, the longest-waiting connection that
    # has not sent a whole request is closed to make room.
    max_connections: int = Field(default=1000, ge=16)


def _duration(value: object) -> object:
    return None if value is None else parse_duration(value)


# Seconds, or a string such as "30m"; null is not one.
Duration = Annotated[int, BeforeValidator(_duration)]
# A Duration, or null for "none".
OptionalDuration = Annotated[int | None, BeforeValidator(_duration)]


class LifecycleSettings(_Section):
    """Time to live and the reaper that cleans up after everyone."""

    # Instances without a ttl of their own expire after this; None: never.
    default_ttl: OptionalDuration = None
    # No ttl (asked for, or extended to) may exceed this; None: no limit.
    max_ttl: OptionalDuration = None
    # Seconds between reaper passes in each server process; 0 turns the loop off (use `reap --once`).
    reaper_interval: float = Field(default=30.0, ge=0)
    # A backend object of ours without a meta row is removed once it is this old.
    orphan_grace: Duration = 60
    # A creation whose server stopped sending heartbeats for this long has died with it.
    heartbeat_timeout: Duration = 20
    # How long rows of lost and failed instances stay visible before the reaper removes them.
    lost_retention: Duration = 86400
    failed_retention: Duration = 86400

    @model_validator(mode="after")
    def _default_within_max(self) -> LifecycleSettings:
        if self.default_ttl and self.max_ttl and self.default_ttl > self.max_ttl:
            raise ValueError("default_ttl must not exceed max_ttl")
        return self


class AuthSettings(_Section):
    # none: anyone may do anything (postgraas_server 2.x); token: Authorization: Bearer tokens
    # made with `postgraas-server token create`, each instance belonging to its token's owner.
    mode: Literal["none", "token"] = "none"


class Settings(_Section):
    metadb: MetaDbSettings = Field(default_factory=MetaDbSettings)
    # The single backend section of postgraas_server 2.x; it is named after its type.
    backend: BackendSettings | None = None
    # Several backends by name (lower-case letters and digits).
    backends: dict[str, BackendSettings] = Field(default_factory=dict)
    application: ApplicationSettings = Field(default_factory=ApplicationSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @model_validator(mode="after")
    def _named_backends(self) -> Settings:
        for name in self.backends:
            if not BACKEND_NAME_RE.fullmatch(name):
                raise ValueError(f"backends.{name}: a backend name is 1 to 32 lower-case letters and digits")
        if self.backend is not None:
            if self.backend.type in self.backends:
                raise ValueError(f"backend: its name {self.backend.type!r} is also a key of 'backends'")
            self.backends = {self.backend.type: self.backend, **self.backends}
        if not self.backends:
            self.backends = {"local": LocalBackendSettings(type="local")}
        default = self.application.default_backend
        if default is None:
            if self.backend is not None:
                default = self.backend.type
            elif len(self.backends) == 1:
                default = next(iter(self.backends))
            else:
                raise ValueError("application.default_backend: required when several backends are configured")
        if default not in self.backends:
            raise ValueError(
                f"application.default_backend: {default!r} is not a configured backend ({', '.join(self.backends)})"
            )
        self.application.default_backend = default
        return self


SECTIONS = tuple(Settings.model_fields)


def resolve_config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """--config, else $POSTGRAAS_CONFIG, else ./application.cfg."""
    environ = os.environ if environ is None else environ
    return Path(explicit or environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (a missing default file means all defaults) and apply env overrides."""
    environ = os.environ if environ is None else environ
    config_path = resolve_config_path(str(path) if path else None, environ)
    raw: dict[str, Any] = {}
    if config_path.exists():
        try:
            raw = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config_path}: not valid JSON: {e}") from e
        except OSError as e:
            raise ConfigError(f"{config_path}: cannot be read: {e.strerror}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_path}: the top level must be a JSON object")
    elif path or CONFIG_PATH_ENV in environ:
        raise ConfigError(f"{config_path}: config file not found")
    return settings_from_dict(_apply_env(raw, environ), source=str(config_path))


def settings_from_dict(raw: dict[str, Any], source: str = "config") -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(_problem(err) for err in e.errors())
        raise ConfigError(f"{source}: {problems}") from None


BACKEND_TYPES = ("docker", "cluster", "local")


def unknown_backend_type(key: str) -> str:
    """What is said of the backend section ``key`` whose type is none of BACKEND_TYPES (here and
    by backends.build_backend)."""
    return f"{key}.type: must be one of: {', '.join(BACKEND_TYPES)}"


def _problem(err: Mapping[str, Any]) -> str:
    if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
        return unknown_backend_type(_key(err["loc"]))
    return f"{_key(err['loc'])}: {_describe(err)}" if err["loc"] else _describe(err)


def _key(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union member's tag into the path (backend.docker.image); users wrote backend.image.
    parts = [str(p) for p in loc]
    tag_at = 1 if parts[0] == "backend" else 2 if parts[0] == "backends" else None
    if tag_at is not None and len(parts) > tag_at and parts[tag_at] in BACKEND_TYPES:
        del parts[tag_at]
    return ".".join(parts)


def _describe(err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    return str(err["msg"])


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        # Only POSTGRAAS_<SECTION>_<KEY> is config; other POSTGRAAS_* variables belong to clients.
        if section not in SECTIONS or not key:
            continue
        target = merged.setdefault(section, {})
        if section == "backends":
            # POSTGRAAS_BACKENDS_<NAME>_<KEY>: backend names have no underscore.
            backend_name, _, key = key.partition("_")
            if not key:
                raise ConfigError(f"{name}: expected POSTGRAAS_BACKENDS_<NAME>_<KEY>")
            target = target.setdefault(backend_name, {}) if isinstance(target, dict) else target
        if not isinstance(target, dict):
            raise ConfigError(f"{name}: {section} must be a JSON object")
        target[key] = _parse_env_value(name, value)
    return merged


def _parse_env_value(name: str, value: str) -> Any:
    # Scalars stay strings for pydantic to coerce ("60" -> 60.0, "true" -> True), so a
    # numeric password is not turned into an int; objects such as labels are JSON.
    if value.lstrip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: not valid JSON: {e}") from e
    return value
