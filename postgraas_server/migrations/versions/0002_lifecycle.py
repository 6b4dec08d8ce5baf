"""Lifecycle: status detail, expiry, heartbeats; the deployment id and the reaper lease.

Revision ID: 0002
Revises: 0001
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("db_instance") as batch:
        batch.add_column(sa.Column("status_detail", sa.Text(), nullable=True))
        batch.add_column(sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_db_instance_expires_at", ["expires_at"])
        batch.create_index("ix_db_instance_status", ["status"])
    deployment = op.create_table(
        "postgraas_deployment",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Labels every backend object of this meta db, so a reaper never touches another
    # deployment's containers, clusters or databases on a shared engine or server.
    op.bulk_insert(deployment, [{"id": str(uuid.uuid4()), "created_at": datetime.now(UTC)}])
    lease = op.create_table(
        "postgraas_lease",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.bulk_insert(lease, [{"name": "reaper", "holder": None, "expires_at": None}])


def downgrade() -> None:
    op.drop_table("postgraas_lease")
    op.drop_table("postgraas_deployment")
    with op.batch_alter_table("db_instance") as batch:
        batch.drop_index("ix_db_instance_status")
        batch.drop_index("ix_db_instance_expires_at")
        batch.drop_column("expires_at")
        batch.drop_column("heartbeat_at")
        batch.drop_column("status_changed_at")
        batch.drop_column("status_detail")
