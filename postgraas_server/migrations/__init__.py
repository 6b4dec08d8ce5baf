"""Meta-db schema migrations (alembic). ``upgrade`` creates or upgrades; it never drops data."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

HERE = Path(__file__).parent


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def upgrade(url: str, legacy_backend: str = "docker") -> None:
    """Bring the meta db at ``url`` to the newest schema. Safe to run again.

    ``legacy_backend``: the backend name given to instances found in a postgraas_server 2.x meta db.
    """
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            config.attributes["legacy_backend"] = legacy_backend
            command.upgrade(config, "head")
    finally:
        engine.dispose()
