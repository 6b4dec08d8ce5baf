"""Settings: application.cfg (JSON, laid out as in postgraas_server 2.x) plus POSTGRAAS_* overrides.

Every key can be overridden from the environment as ``POSTGRAAS_<SECTION>_<KEY>`` in upper case,
for example ``POSTGRAAS_METADB_URL`` or ``POSTGRAAS_BACKEND_READY_TIMEOUT``. Values are parsed as
strings coerced to the key's type (``"60"``, ``"true"``); objects and lists are given as JSON. Nothing is read at
import: ``load_settings`` is called by the CLI or the app factory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from sqlalchemy.engine import make_url
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class DockerBackendSettings(_Section):
    """The docker backend: one container of ``image`` per instance."""

    type: Literal["docker"] = "docker"
    image: str = "postgres:16"
    # None: the environment's Docker settings (DOCKER_HOST, else the local socket).
    base_url: str | None = None
    advertised_host: str = "localhost"
    # Where the server itself connects to prove readiness; defaults to advertised_host.
    probe_host: str | None = None
    bind_address: str = "0.0.0.0"
    ready_timeout: float = Field(default=60.0, gt=0)
    # Seconds a single Docker API call may take before the engine counts as unreachable.
    api_timeout: float = Field(default=30.0, gt=0)
    # Extra labels put on every container (e.g. to tell environments apart).
    labels: dict[str, str] = Field(default_factory=dict)


class ApplicationSettings(_Section):
    debug: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Requests larger than this are refused with 413; a create body is well under 1 KiB.
    max_body_bytes: int = Field(default=64 * 1024, gt=0)


class Settings(_Section):
    metadb: MetaDbSettings = Field(default_factory=MetaDbSettings)
    backend: DockerBackendSettings = Field(default_factory=DockerBackendSettings)
    application: ApplicationSettings = Field(default_factory=ApplicationSettings)


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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'top level'}: {_describe(err)}" for err in e.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def _describe(err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
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
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a JSON object")
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
