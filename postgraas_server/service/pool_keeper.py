"""The pool keeper: a thread per server process that tops up every warm pool (see pool.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ..models import db
from .pool import WarmPool

log = logging.getLogger(__name__)

# A keeper looks again this often even when no create woke it: a failed fill is retried then, and
# objects another process made get what their hand-over needs held.
CHECK_INTERVAL_S = 1.0


class PoolKeeper:
    def __init__(self, pool: WarmPool, interval: float = CHECK_INTERVAL_S) -> None:
        self.pool = pool
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()

    def wake(self) -> None:
        """A pooled instance was taken: make its replacement now."""
        self._wake.set()

    def fill(self) -> int:
        """One round: top up every pool; returns how many instances were made."""
        made = 0
        templates = self.pool.pooled_templates()
        pooling = {*self.pool.backends.pools, *(template.backend for template in templates)}
        # First, for every pooled object, whoever made it (any process may claim it): a fill can
        # take seconds, and a failing one must not stop this.
        for backend_name in pooling:
            self.pool.keep_ready(backend_name)
        for backend_name, size in self.pool.backends.pools.items():
            made += self.pool.fill(backend_name, size)
        for template in templates:
            made += self.pool.fill(template.backend, template.pool_size, template)
        return made

    def start(self, context: Callable[[], AbstractContextManager[Any]]) -> threading.Thread:
        """Run rounds in a thread, each inside ``context()`` (where the meta-db session lives)."""
        self.pool.taken = self.wake
        thread = threading.Thread(target=self._run, args=(context,), daemon=True, name="pool-keeper")
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self, context: Callable[[], AbstractContextManager[Any]]) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with context():
                try:
                    self.fill()
                except Exception:
                    # The meta db or a backend is down: the next round tries again.
                    log.warning("filling the warm pool failed", exc_info=True)
                finally:
                    db.session.remove()
            self._wake.wait(self.interval)
