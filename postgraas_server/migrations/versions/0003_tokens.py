"""Tokens and owners.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "postgraas_token",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(63), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("max_instances", sa.Integer(), nullable=True),
        sa.Column("max_ttl", sa.Integer(), nullable=True),
        sa.Column("salt", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("db_instance") as batch:
        batch.add_column(sa.Column("owner", sa.String(63), nullable=True))
        batch.create_index("ix_db_instance_owner", ["owner"])


def downgrade() -> None:
    with op.batch_alter_table("db_instance") as batch:
        batch.drop_index("ix_db_instance_owner")
        batch.drop_column("owner")
    op.drop_table("postgraas_token")
