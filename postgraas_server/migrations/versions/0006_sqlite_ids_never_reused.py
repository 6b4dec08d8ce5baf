"""SQLite: instance ids are never reused again. The table was created with AUTOINCREMENT, but the
table copies that SQLite needs for ALTER (batch mode, 0002 and 0004) dropped it, so the id of a
deleted last instance went to the next one, and a client holding the old id reached the new one.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL sequences never hand out an id twice
    with op.batch_alter_table("db_instance", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass


def downgrade() -> None:
    pass  # keeping ids unique is never wrong
