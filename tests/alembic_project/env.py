"""Alembic's environment: migrates the database of ``DATABASE_URL`` (a postgresql:// URL, as
``postgraas create --output env`` prints it) through SQLAlchemy's psycopg 3 driver."""

import os

from alembic import context
from sqlalchemy import create_engine


def sqlalchemy_url(url: str) -> str:
    """postgresql:// means psycopg2 to SQLAlchemy; name psycopg (3), the driver installed."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


engine = create_engine(sqlalchemy_url(os.environ["DATABASE_URL"]))
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
