"""The db_instance table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "db_instance",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("postgraas_instance_name", sa.String(63), nullable=False),
        sa.Column("db_name", sa.String(63), nullable=False),
        sa.Column("username", sa.String(63), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("container_id", sa.String(255), nullable=True),
        sa.Column("creation_timestamp", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ux_db_instance_name", "db_instance", ["postgraas_instance_name"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_db_instance_name", table_name="db_instance")
    op.drop_table("db_instance")
