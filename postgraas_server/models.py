"""The meta db: one row per instance, whatever backend holds it, and one per template."""

from __future__ import annotations

from datetime import UTC, datetime

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, Index, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class InstanceStatus:
    CREATING = "creating"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"
    # Its backend object vanished behind our back.
    LOST = "lost"
    # Made ahead for a backend's warm pool, with throwaway credentials; a create takes it over.
    POOLED = "pooled"


ALL_STATUSES = (
    InstanceStatus.CREATING,
    InstanceStatus.READY,
    InstanceStatus.FAILED,
    InstanceStatus.DELETING,
    InstanceStatus.LOST,
    InstanceStatus.POOLED,
)

# The owner of pooled instances (and of their creations): no token owner can be called this
# (owners start with a letter or digit), and no request ever sees its rows.
POOL_OWNER = "@pool"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite (which keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DBInstance(db.Model):  # type: ignore[name-defined]  # flask-sqlalchemy makes db.Model at run time
    """An instance's metadata. The column names of postgraas_server 2.x are kept where they exist."""

    __tablename__ = "db_instance"
    __table_args__ = (
        # One winner per name (and owner) under concurrent creates: the index decides, not a
        # prior SELECT. Per owner, so that a 409 tells nobody about another owner's names.
        Index("ux_db_instance_owner_name", "owner", "postgraas_instance_name", unique=True),
        # What lists, /metrics and the reaper look up, through an index at any size (migration 0008):
        # an owner's instances in id order (pages after an id), counts by backend and status,
        # the expired, and lost and failed rows past their retention.
        Index("ix_db_instance_owner_id", "owner", "id"),
        Index("ix_db_instance_backend_status", "backend", "status"),
        Index("ix_db_instance_status_expires_at", "status", "expires_at"),
        Index("ix_db_instance_status_changed_at", "status", "status_changed_at"),
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
    status: Mapped[str] = mapped_column(String(16), default=InstanceStatus.CREATING, index=True)
    hostname: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None]
    # The backend's reference to its object; for docker, the container id.
    container_id: Mapped[str | None] = mapped_column(String(255))
    creation_timestamp: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Why the status is what it is (the error of a failed creation, what vanished).
    status_detail: Mapped[str | None] = mapped_column(Text)
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    # Renewed by the process creating the instance; a stale one means that process died.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # "ephemeral": created with fsync, synchronous_commit and full_page_writes off (see Durability).
    durability: Mapped[str] = mapped_column(String(16), default="durable", server_default="durable")
    # The token owner that created it (auth.mode token); "" without authentication.
    owner: Mapped[str] = mapped_column(String(63), default="", server_default="")
    # The template it is a clone of, while that matters: a pooled clone waits for a create naming
    # that template, and a create still cloning holds its template back from removal.
    template_id: Mapped[int | None]

    def set_status(self, status: str, detail: str | None = None) -> None:
        self.status = status
        self.status_detail = detail
        self.status_changed_at = utcnow()


# The instances' table, for Core statements.
INSTANCES = DBInstance.__table__


class Token(db.Model):  # type: ignore[name-defined]  # flask-sqlalchemy makes db.Model at run time
    """An API token. Only a salted hash of its secret is kept; the secret is shown once."""

    __tablename__ = "postgraas_token"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(63))
    admin: Mapped[bool] = mapped_column(default=False)
    max_instances: Mapped[int | None]
    max_ttl: Mapped[int | None]
    max_templates: Mapped[int | None]
    salt: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Deployment(db.Model):  # type: ignore[name-defined]  # flask-sqlalchemy makes db.Model at run time
    """One row: the id this meta db stamps on every backend object it makes."""

    __tablename__ = "postgraas_deployment"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Lease(db.Model):  # type: ignore[name-defined]  # flask-sqlalchemy makes db.Model at run time
    """A named lease in the meta db: whoever holds it unexpired may act (one reaper at a time)."""

    __tablename__ = "postgraas_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TemplateStatus:
    # A builder is filling its database (the builder instance, template.builder_instance_id).
    BUILDING = "building"
    # Its finalize is freezing the builder's database: nobody else touches build or builder.
    FINALIZING = "finalizing"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"


class Template(db.Model):  # type: ignore[name-defined]  # flask-sqlalchemy makes db.Model at run time
    """A template: built once per content (name and hash) and owner, cloned by creates naming it."""

    __tablename__ = "postgraas_template"
    __table_args__ = (
        # One builder per content: of concurrent identical requests the index lets one insert.
        Index("ux_postgraas_template_content", "owner", "name", "content_hash", unique=True),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    content_hash: Mapped[str] = mapped_column(String(128))
    backend: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(63), default="")
    status: Mapped[str] = mapped_column(String(16), default=TemplateStatus.BUILDING)
    status_detail: Mapped[str | None] = mapped_column(Text)
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # While building: renewed by the builder; older than build_timeout, the build is given up.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    build_timeout: Mapped[int] = mapped_column(default=1800)
    pool_size: Mapped[int] = mapped_column(default=0)
    # Which build this is (a new one each time a build starts): every change a build makes is
    # conditional on it, so that a given-up build's late calls cannot touch its successor.
    build_id: Mapped[str | None] = mapped_column(String(32))
    # The instance the builder fills, until finalize freezes it into the template.
    builder_instance_id: Mapped[int | None]
    # What the backend made of it (FrozenTemplate): its reference, and the tenant inside by name.
    artifact: Mapped[str | None] = mapped_column(String(255))
    tenant_db_name: Mapped[str | None] = mapped_column(String(63))
    tenant_username: Mapped[str | None] = mapped_column(String(63))


TEMPLATES = Template.__table__
