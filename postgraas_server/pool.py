"""The warm pool: keeps each backend's ``pool_size`` instances made ahead, so a create only
renames one (see InstanceService.fill_pool and _create_from_pool).

Every server process runs a keeper; each counts what the meta db holds before it makes more, so
several workers overshoot by a few at most, and the reaper removes the surplus.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask

from .models import db
from .service import InstanceService

log = logging.getLogger(__name__)

# A keeper looks again this often even when no claim woke it: a failed fill is retried then, and
# objects another process made get their kept connection (a round costs two COUNTs when all is well).
CHECK_INTERVAL_S = 1.0


class PoolKeeper:
    def __init__(self, service: InstanceService, interval: float = CHECK_INTERVAL_S) -> None:
        self.service = service
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()

    def wake(self) -> None:
        """A pooled instance was taken: make its replacement now."""
        self._wake.set()

    def fill(self) -> int:
        """One round: top up every pool; returns how many instances were made."""
        made = 0
        for backend_name, size in self.service.backends.pools.items():
            # First, for every pooled object, whoever made it (any process may claim it): a fill
            # can take seconds, and a failing one must not stop this.
            self.service.keep_pool_ready(backend_name)
            made += self.service.fill_pool(backend_name, size)
        return made

    def start(self, app: Flask) -> threading.Thread:
        self.service.pool_keeper = self
        thread = threading.Thread(target=self._run, args=(app,), daemon=True, name="pool-keeper")
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self, app: Flask) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with app.app_context():
                try:
                    self.fill()
                except Exception:
                    # The meta db or a backend is down: the next round tries again.
                    log.warning("filling the warm pool failed", exc_info=True)
                finally:
                    db.session.remove()
            self._wake.wait(self.interval)
