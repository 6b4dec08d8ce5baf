"""Listing instances: pages by id (a cursor that no create or delete can shift), filters, and the
whole list read in batches, so that no list holds more than a batch of rows at a time.

Rows are read-only snapshots with the listed columns as attributes (what InstanceOut.fields_of
reads): not ORM objects, nor Rows, whose attribute access is slow. Queries run on the session's
connection as Core: the ORM's result handling costs more than the rest of a long list.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Select, func, select

from ..models import ALL_STATUSES, INSTANCES, POOL_OWNER, InstanceStatus, db
from ..tokens import Principal

# The most instances a page holds.
MAX_LIMIT = 1000
# The largest id there can be (a 64-bit integer column), so the largest cursor.
MAX_ID = 2**63 - 1
# Pooled rows are nobody's to see.
LISTED_STATUSES = tuple(status for status in ALL_STATUSES if status != InstanceStatus.POOLED)

# What a list shows, and nothing else: no password hash, and fewer datetimes to convert, which
# are most of the Python a long list costs.
_LISTED = select(
    INSTANCES.c.id,
    INSTANCES.c.postgraas_instance_name,
    INSTANCES.c.db_name,
    INSTANCES.c.username,
    INSTANCES.c.hostname,
    INSTANCES.c.port,
    INSTANCES.c.container_id,
    INSTANCES.c.backend,
    INSTANCES.c.status,
    INSTANCES.c.status_detail,
    INSTANCES.c.durability,
    INSTANCES.c.owner,
    INSTANCES.c.expires_at,
    INSTANCES.c.creation_timestamp,
).where(INSTANCES.c.owner != POOL_OWNER)


@dataclass(frozen=True)
class ListFilter:
    """Which instances a list shows; None (or empty) is no filter. ``name`` is a prefix."""

    statuses: tuple[str, ...] = ()
    backend: str | None = None
    name: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    # The id to continue after, where more rows follow (a cursor, not an offset).
    next_after: int | None


def page(principal: Principal | None, shown: ListFilter, *, after: int, limit: int) -> Page:
    """Up to ``limit`` rows with an id above ``after``, in id order; one more is read to tell
    whether another page follows."""
    rows = _read(_query(principal, shown, after).limit(limit + 1))
    if len(rows) > limit:
        return Page(rows[:limit], rows[limit - 1].id)
    return Page(rows, None)


def batches(principal: Principal | None, shown: ListFilter, size: int, *, after: int = 0) -> Iterator[list[Any]]:
    """The whole list (past ``after``), ``size`` rows at a time, each batch read when the last one
    was used: a row made or deleted meanwhile appears or not, as when paging; none appears twice."""
    while True:
        rows = _read(_query(principal, shown, after).limit(size))
        if rows:
            yield rows
        if len(rows) < size:
            return
        after = rows[-1].id


def _query(principal: Principal | None, shown: ListFilter, after: int) -> Select:
    query = _LISTED.where(INSTANCES.c.id > after).order_by(INSTANCES.c.id)
    if principal is not None and not principal.admin:
        query = query.where(INSTANCES.c.owner == principal.owner)
    if shown.owner is not None:
        query = query.where(INSTANCES.c.owner == shown.owner)
    if shown.statuses:
        query = query.where(INSTANCES.c.status.in_(shown.statuses))
    if shown.backend is not None:
        query = query.where(INSTANCES.c.backend == shown.backend)
    if shown.name:
        # Not LIKE: SQLite's ignores case (PostgreSQL's does not), and "_" would be a wildcard.
        name = INSTANCES.c.postgraas_instance_name
        query = query.where(func.substr(name, 1, len(shown.name)) == shown.name)
    return query


def _read(query: Select) -> list[Any]:
    result = db.session.connection().execute(query)
    # Keys zipped once per row: a mapping's ``**`` builds a key view for every row.
    keys = tuple(result.keys())
    return [SimpleNamespace(**dict(zip(keys, row, strict=True))) for row in result]
