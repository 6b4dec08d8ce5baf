"""Heartbeats of the creations and deletes running in this process, so the reaper can tell a live
one from one whose server died (see Reaper and LifecycleSettings.heartbeat_timeout).

One thread per process renews ``heartbeat_at`` of every row being worked on here, in one UPDATE
per beat: a create costs a set insertion, not a thread of its own, which would be a noticeable
part of a warm-pool create.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, update
from sqlalchemy.pool import NullPool

from ..models import DBInstance, InstanceStatus, db, utcnow

log = logging.getLogger(__name__)


class Heartbeats:
    @classmethod
    def of_meta_db(cls, heartbeat_timeout: float) -> Heartbeats:
        """Beats often enough that a live row is never heartbeat_timeout old, on connections of
        their own (unpooled): a beat must get through when the request pool is busy, or the reaper
        would give up work that is alive."""
        lock = threading.Lock()
        engines: list[Engine] = []

        def engine() -> Engine:
            with lock:
                if not engines:
                    url = db.engine.url
                    # SQLite: wait for a competing writer like the main engine does (see app.py).
                    connect_args = {"timeout": 30} if url.get_backend_name() == "sqlite" else {}
                    engines.append(
                        create_engine(url, poolclass=NullPool, hide_parameters=True, connect_args=connect_args)
                    )
                return engines[0]

        return cls(engine, every=max(0.5, heartbeat_timeout / 4))

    def __init__(self, engine: Callable[[], Engine], every: float) -> None:
        # engine(): its own connections, so a beat gets through when the request pool is busy.
        self._engine = engine
        self.every = every
        self._beating: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def beating(self, instance_id: int) -> Iterator[None]:
        """Renew the row's heartbeat_at while the block runs (the row was reserved with a fresh one)."""
        self.hold([instance_id])
        try:
            yield
        finally:
            self.release([instance_id])

    def hold(self, instance_ids: Iterable[int]) -> None:
        """Renew these rows' heartbeat_at from now until ``release``: work queued here beats as work
        running does, so no reaper takes it over while it waits its turn."""
        engine = self._engine()
        with self._lock:
            self._beating.update(instance_ids)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, args=(engine,), daemon=True, name="heartbeats")
                self._thread.start()

    def release(self, instance_ids: Iterable[int]) -> None:
        with self._lock:
            self._beating.difference_update(instance_ids)

    def _run(self, engine: Engine) -> None:
        stop = threading.Event()  # never set: the thread lives as long as the process
        while not stop.wait(self.every):
            with self._lock:
                ids = list(self._beating)
            if not ids:
                continue
            try:
                with engine.begin() as conn:
                    conn.execute(
                        update(DBInstance)
                        .where(
                            DBInstance.id.in_(ids),
                            DBInstance.status.in_((InstanceStatus.CREATING, InstanceStatus.DELETING)),
                        )
                        .values(heartbeat_at=utcnow())
                    )
            except Exception:
                log.warning("renewing the heartbeats of instances %s failed", ids, exc_info=True)
