"""Row transitions: every change of an instance's status, for the service and the reaper alike.

An instance moves creating -> ready, or creating -> failed; pooled -> creating when a create takes
it; deleting while it is removed; lost when its backend object vanished. Changes that can race (two
deletes, a delete during a create, a request and the reaper) are conditional UPDATEs: exactly one
wins, and the others learn it from the row count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import CursorResult, Row, Update, delete, func, select, update

from ..models import INSTANCES, DBInstance, db, utcnow

log = logging.getLogger(__name__)


def transition(
    instance_id: int,
    expected: str | tuple[str, ...],
    new: str,
    detail: str | None = None,
    *conditions: Any,
    **values: Any,
) -> bool:
    """Move an instance from ``expected`` status(es) to ``new`` and commit; False when it was not in
    ``expected`` (or ``conditions`` no longer held)."""
    result = execute_dml(_move(instance_id, expected, new, detail, conditions, values))
    db.session.commit()
    return result.rowcount == 1


def transition_returning(
    instance_id: int, expected: str | tuple[str, ...], new: str, **values: Any
) -> SimpleNamespace | None:
    """A transition that gives back the row as it is now (its columns as attributes, what
    InstanceOut reads), or None; with RETURNING where the database has it, saving a SELECT."""
    statement = _move(instance_id, expected, new, None, (), values)
    if not db.session.get_bind().dialect.update_returning:  # SQLite before 3.35
        moved = execute_dml(statement).rowcount == 1
        row = db.session.execute(select(INSTANCES).where(INSTANCES.c.id == instance_id)).mappings().first()
    else:
        row = db.session.execute(statement.returning(*INSTANCES.columns)).mappings().first()
        moved = row is not None
    db.session.commit()
    return SimpleNamespace(**row) if moved and row is not None else None


def transition_many(
    instance_ids: Sequence[int], expected: tuple[str, ...], new: str, detail: str, *conditions: Any
) -> list[Row]:
    """``transition`` for many rows in one statement (where the database has RETURNING) and one
    commit; the rows that moved, as they are now."""
    if not instance_ids:
        return []
    moving = (
        update(INSTANCES)
        .where(INSTANCES.c.id.in_(instance_ids), INSTANCES.c.status.in_(expected), *conditions)
        .values(status=new, status_detail=detail, status_changed_at=utcnow())
    )
    if db.session.get_bind().dialect.update_returning:
        moved = list(db.session.execute(moving.returning(*INSTANCES.columns)).all())
    else:  # SQLite before 3.35: one at a time, so that each row read is one this statement moved
        moved = []
        for instance_id in instance_ids:
            if execute_dml(moving.where(INSTANCES.c.id == instance_id)).rowcount == 1:
                moved.append(db.session.execute(select(INSTANCES).where(INSTANCES.c.id == instance_id)).one())
    db.session.commit()
    return moved


def update_row(instance_id: int, *conditions: Any, **values: Any) -> bool:
    """Set ``values`` on the row if ``conditions`` hold, without changing its status; commits."""
    result = execute_dml(update(INSTANCES).where(INSTANCES.c.id == instance_id, *conditions).values(**values))
    db.session.commit()
    return result.rowcount == 1


def forget(instance_id: int, status: str | None = None) -> bool:
    """Remove the row (only while it is ``status``, when given: a request or the reaper may have
    moved it meanwhile); commits. True when it was removed."""
    statement = delete(INSTANCES).where(INSTANCES.c.id == instance_id)
    if status is not None:
        statement = statement.where(INSTANCES.c.status == status)
    result = execute_dml(statement)
    db.session.commit()
    return result.rowcount == 1


def release(instance_id: int) -> None:
    """Drop a reserved row after a failed create. Its own failure must not hide the first one."""
    try:
        db.session.rollback()
        forget(instance_id)
    except Exception:
        db.session.rollback()
        log.exception("could not remove the meta row of failed instance id %s", instance_id)


def count(condition: Any) -> int:
    return db.session.execute(select(func.count()).select_from(DBInstance).where(condition)).scalar_one()


def execute_dml(statement: Any, params: dict[str, Any] | None = None) -> CursorResult[Any]:
    """Run an UPDATE or DELETE in the session; its CursorResult has the row count."""
    return cast(CursorResult[Any], db.session.execute(statement, params))


def _move(
    instance_id: int,
    expected: str | tuple[str, ...],
    new: str,
    detail: str | None,
    conditions: tuple[Any, ...],
    values: dict[str, Any],
) -> Update:
    # On the table, not the mapped class: an ORM-enabled UPDATE costs more Python for nothing
    # here (the session's objects are expired by the commit anyway).
    expected = (expected,) if isinstance(expected, str) else expected
    return (
        update(INSTANCES)
        .where(INSTANCES.c.id == instance_id, INSTANCES.c.status.in_(expected), *conditions)
        .values(status=new, status_detail=detail, status_changed_at=utcnow(), **values)
    )
