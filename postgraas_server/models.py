"""The meta db: one row per instance, whatever backend holds it."""

from __future__ import annotations

from datetime import UTC, datetime

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class InstanceStatus:
    CREATING = "creating"
    READY = "ready"
    DELETING = "deleting"


def utcnow() -> datetime:
    return datetime.now(UTC)


class DBInstance(db.Model):  # type: ignore[name-defined,misc]
    """An instance's metadata. The column names of postgraas_server 2.x are kept where they exist."""

    __tablename__ = "db_instance"
    __table_args__ = (
        # One winner per name under concurrent creates: the index decides, not a prior SELECT.
        Index("ux_db_instance_name", "postgraas_instance_name", unique=True),
        # Never reuse the id of a deleted instance on SQLite: a stale id must not reach a new one.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    postgraas_instance_name: Mapped[str] = mapped_column(String(63))
    db_name: Mapped[str] = mapped_column(String(63))
    username: Mapped[str] = mapped_column(String(63))
    # A salted hash of db_pwd, so delete can check the password even when the container is gone.
    # None only for rows from a 2.x meta db that kept no password.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    backend: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=InstanceStatus.CREATING)
    hostname: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None]
    # The backend's reference to its object; for docker, the container id.
    container_id: Mapped[str | None] = mapped_column(String(255))
    creation_timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def created_at_utc(self) -> datetime:
        # SQLite hands back naive datetimes; every value stored is UTC.
        ts = self.creation_timestamp
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
