"""Backend removals the reaper queues, run by a few threads of its own after the pass that decided them.

A pass moves every expired row to deleting in one statement. Removing their backend objects one
after another inside the pass made it as long as all of them together (a container's stop takes
seconds), and while it ran nothing else was reconciled: no dead creation failed, no vanished object
marked lost. Here they run a few at a time, beside the next pass.

A queued row beats from the moment it is queued, as a request's delete does, so no reaper takes it
over while it waits or runs; a removal that fails stops beating, and Reaper._retry_deletes tries it
again once it is silent. If this process dies, its queued rows go silent the same way.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from ..models import INSTANCES, InstanceStatus, db
from .background import Context
from .heartbeats import Heartbeats
from .transitions import transition_many

log = logging.getLogger(__name__)

Removal = Callable[[Row], None]

# Rows moved to deleting per statement (and lease renewal).
BATCH = 500
EXPIRABLE = (InstanceStatus.READY, InstanceStatus.FAILED, InstanceStatus.LOST)


def expired_at(now: datetime) -> tuple[Any, ...]:
    """The conditions of a row past its expiry at ``now`` (its status is the caller's to check)."""
    return INSTANCES.c.expires_at.is_not(None), INSTANCES.c.expires_at <= now


def move_expired(ids: Sequence[int], now: datetime, keep_lease: Callable[[], None], moved: list[Row]) -> None:
    """Move the instances of ``ids`` still expired at ``now`` (a PATCH meanwhile wins) to deleting,
    a batch per statement, each after ``keep_lease()``; the rows moved go to ``moved`` as they move,
    so that a pass stopped half way still has their removals run."""
    for start in range(0, len(ids), BATCH):
        keep_lease()
        moved += transition_many(
            ids[start : start + BATCH], EXPIRABLE, InstanceStatus.DELETING, "expired", *expired_at(now)
        )


class Removals:
    def __init__(self, context: Context, heartbeats: Heartbeats, workers: int) -> None:
        # context(): where a removal's meta-db session lives, as for the reaper's own thread.
        self._context = context
        self._heartbeats = heartbeats
        self._workers = workers
        self._queue: deque[tuple[Row, Removal]] = deque()
        self._pending: set[int] = set()
        self._running = 0
        self._stopped = False
        self._changed = threading.Condition()

    def submit(self, rows: Sequence[Row], remove: Removal) -> None:
        """Run ``remove(row)`` for each row (in deleting), at most ``workers`` at once."""
        if not rows:
            return
        with self._changed:
            if self._stopped:
                return  # the rows go silent; the next reaper's pass finishes them
            self._heartbeats.hold(row.id for row in rows)
            self._queue.extend((row, remove) for row in rows)
            self._pending.update(row.id for row in rows)
            while self._running < min(self._workers, len(self._queue)):
                self._running += 1
                threading.Thread(target=self._work, daemon=True, name="reaper-removals").start()

    def pending(self) -> frozenset[int]:
        """The ids queued or being removed."""
        with self._changed:
            return frozenset(self._pending)

    def wait(self, timeout: float | None = None) -> bool:
        """Until every queued removal has run; False when ``timeout`` came first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending, timeout)

    def stop(self) -> None:
        """Run no more: what is queued is dropped and stops beating (the next pass, of whichever
        reaper, takes it over once it is silent); what runs finishes."""
        with self._changed:
            self._stopped = True
            dropped = [row.id for row, _ in self._queue]
            self._queue.clear()
            self._pending.difference_update(dropped)
            self._heartbeats.release(dropped)
            self._changed.notify_all()

    def _work(self) -> None:
        while True:
            with self._changed:
                if not self._queue:
                    self._running -= 1
                    return
                row, remove = self._queue.popleft()
            try:
                with self._context():
                    try:
                        remove(row)
                    finally:
                        db.session.remove()
            except Exception:
                # One removal must not stop the others; the row stays deleting and is retried.
                log.exception("reaper: removing instance id %s failed", row.id)
            finally:
                with self._changed:
                    self._heartbeats.release([row.id])
                    self._pending.discard(row.id)
                    self._changed.notify_all()
