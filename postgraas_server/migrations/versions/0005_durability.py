"""Each instance records its durability: "durable" (every existing row) or "ephemeral".

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("db_instance") as batch:
        batch.add_column(sa.Column("durability", sa.String(16), nullable=False, server_default="durable"))


def downgrade() -> None:
    with op.batch_alter_table("db_instance") as batch:
        batch.drop_column("durability")
