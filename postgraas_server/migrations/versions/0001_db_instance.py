"""The db_instance table, created anew or upgraded from postgraas_server 2.x.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import context, op

from postgraas_server.passwords import hash_password

revision = "0001"
down_revision = None

NAME_INDEX = "ux_db_instance_name"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table("db_instance"):
        _upgrade_from_2x()
        return
    op.create_table(
        "db_instance",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("postgraas_instance_name", sa.String(63), nullable=False),
        sa.Column("db_name", sa.String(63), nullable=False),
        sa.Column("username", sa.String(63), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("container_id", sa.String(255), nullable=True),
        sa.Column("creation_timestamp", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index(NAME_INDEX, "db_instance", ["postgraas_instance_name"], unique=True)


def _upgrade_from_2x() -> None:
    """2.x kept (id, postgraas_instance_name, creation_timestamp, db_name, username, password,
    hostname, port, container_id), some versions with the password in plain text. Rows keep
    everything but that text, which becomes a salted hash; an empty one stays unknown
    (delete then checks the password by a login, as 2.x did)."""
    bind = op.get_bind()
    duplicates = bind.execute(
        sa.text("select postgraas_instance_name from db_instance group by postgraas_instance_name having count(*) > 1")
    ).fetchall()
    if duplicates:
        names = ", ".join(repr(row[0]) for row in duplicates)
        raise RuntimeError(f"the 2.x meta db has several instances named {names}; rename them, then run init-db again")
    legacy_backend = context.config.attributes.get("legacy_backend", "docker")
    with op.batch_alter_table("db_instance") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(255), nullable=True))
        batch.add_column(sa.Column("backend", sa.String(32), nullable=False, server_default=legacy_backend))
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="ready"))
    table = sa.table("db_instance", sa.column("id"), sa.column("password"), sa.column("password_hash"))
    for row_id, password in bind.execute(sa.select(table.c.id, table.c.password)).fetchall():
        if password:
            bind.execute(table.update().where(table.c.id == row_id).values(password_hash=hash_password(password)))
    with op.batch_alter_table("db_instance") as batch:
        batch.drop_column("password")
        batch.create_index(NAME_INDEX, ["postgraas_instance_name"], unique=True)


def downgrade() -> None:
    op.drop_index(NAME_INDEX, table_name="db_instance")
    op.drop_table("db_instance")
