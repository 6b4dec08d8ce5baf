"""Templates: built once per content, cloned by creates; an instance records the template it is a
clone of, and a token may limit its owner's templates.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "postgraas_template",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_detail", sa.Text(), nullable=True),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("build_timeout", sa.Integer(), nullable=False),
        sa.Column("pool_size", sa.Integer(), nullable=False),
        sa.Column("build_id", sa.String(32), nullable=True),
        sa.Column("builder_instance_id", sa.Integer(), nullable=True),
        sa.Column("artifact", sa.String(255), nullable=True),
        sa.Column("tenant_db_name", sa.String(63), nullable=True),
        sa.Column("tenant_username", sa.String(63), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ux_postgraas_template_content", "postgraas_template", ["owner", "name", "content_hash"], unique=True
    )
    with op.batch_alter_table("db_instance") as batch:
        batch.add_column(sa.Column("template_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("postgraas_token") as batch:
        batch.add_column(sa.Column("max_templates", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("postgraas_token") as batch:
        batch.drop_column("max_templates")
    with op.batch_alter_table("db_instance") as batch:
        batch.drop_column("template_id")
    op.drop_index("ux_postgraas_template_content", "postgraas_template")
    op.drop_table("postgraas_template")
