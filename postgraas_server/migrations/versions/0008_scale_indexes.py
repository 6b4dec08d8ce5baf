"""Indexes for a meta db of 100,000 instances: what a list page, /metrics, a create's capacity
count and a reaper pass ask for is found through an index, not by reading every row.

- (owner, id): an owner's list in id order, a page after an id (keyset); it replaces (owner).
- (backend, status): /metrics counts by both and a create counts a backend's, from the index alone.
- (status, expires_at): the expired instances; it replaces (expires_at), which SQLite left unused
  for the status index.
- (status, status_changed_at): lost and failed rows past their retention.

Plain CREATE and DROP INDEX, no batch mode: a table copy would drop SQLite's AUTOINCREMENT (see 0006).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_index("ix_db_instance_owner_id", "db_instance", ["owner", "id"])
    op.drop_index("ix_db_instance_owner", table_name="db_instance")
    op.create_index("ix_db_instance_backend_status", "db_instance", ["backend", "status"])
    op.create_index("ix_db_instance_status_expires_at", "db_instance", ["status", "expires_at"])
    op.drop_index("ix_db_instance_expires_at", table_name="db_instance")
    op.create_index("ix_db_instance_status_changed_at", "db_instance", ["status", "status_changed_at"])


def downgrade() -> None:
    op.drop_index("ix_db_instance_status_changed_at", table_name="db_instance")
    op.create_index("ix_db_instance_expires_at", "db_instance", ["expires_at"])
    op.drop_index("ix_db_instance_status_expires_at", table_name="db_instance")
    op.drop_index("ix_db_instance_backend_status", table_name="db_instance")
    op.create_index("ix_db_instance_owner", "db_instance", ["owner"])
    op.drop_index("ix_db_instance_owner_id", table_name="db_instance")
