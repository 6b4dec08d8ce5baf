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

from .backend_settings import BACKEND_TYPES, BackendSettings, LocalBackendSettings
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
            return _absolute_sqlite(_with_psycopg(self.url))
        user = quote(self.db_username or "", safe="")
        password = f":{quote(self.db_pwd, safe='')}" if self.db_pwd else ""
        port = f":{self.port}" if self.port else ""
        return f"postgresql+psycopg://{user}{password}@{self.host}{port}/{quote(self.db_name or '', safe='')}"


def _with_psycopg(url: str) -> str:
    """postgresql://... means psycopg 3, the driver installed with us (SQLAlchemy's default is psycopg2)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _absolute_sqlite(url: str) -> str:
    # A relative SQLite path means the working directory (flask-sqlalchemy would otherwise
    # put it in the app's instance folder, and init-db would migrate a different file).
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    if parsed.database.startswith("file:") or os.path.isabs(parsed.database):
        return url
    return parsed.set(database=os.path.abspath(parsed.database)).render_as_string(hide_password=False)


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
    # How many backend removals of expired instances the reaper runs at once, after the pass.
    reaper_removals: int = Field(default=4, ge=1, le=64)
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
