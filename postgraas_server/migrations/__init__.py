"""Meta-db schema migrations (alembic). ``upgrade`` creates or upgrades; it never drops data."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from ..sqlite_file import keep_private

HERE = Path(__file__).parent


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def upgrade(url: str, legacy_backend: str = "docker") -> None:
    """Bring the meta db at ``url`` to the newest schema. Safe to run again.

    ``legacy_backend``: the backend name given to instances found in a postgraas_server 2.x meta db.
    """
    keep_private(url)
    engine = create_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            # WAL lets readers go on while a create commits from another thread or worker; it is
            # a property of the file, set here once rather than by every connection.
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            config.attributes["legacy_backend"] = legacy_backend
            command.upgrade(config, "head")
    finally:
        engine.dispose()
