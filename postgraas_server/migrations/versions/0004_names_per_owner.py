"""Instance names are unique per owner, not server-wide (a 409 must not tell one owner that
another owner's name exists). Rows without an owner get the empty owner.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute("update db_instance set owner = '' where owner is null")
    with op.batch_alter_table("db_instance") as batch:
        batch.alter_column("owner", existing_type=sa.String(63), nullable=False, server_default="")
        batch.drop_index("ux_db_instance_name")
        batch.create_index("ux_db_instance_owner_name", ["owner", "postgraas_instance_name"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("db_instance") as batch:
        batch.drop_index("ux_db_instance_owner_name")
        batch.create_index("ux_db_instance_name", ["postgraas_instance_name"], unique=True)
        batch.alter_column("owner", existing_type=sa.String(63), nullable=True, server_default=None)
