"""The pool keeper: a thread per server process that tops up every warm pool (see pool.py).

A template's pool serves test suites, whose tests take clones in bursts; making a clone (a
container, a postgres) takes far more of the machine than a take, and a burst would otherwise share
the machine with its own replacements. So once such a pool was found full, its replacements wait
while takes go on: it is topped up at the first look that finds none taken since the one before, or
after MAX_DEFERRAL_S of takes, or at once when a quarter of it (or one clone) is left; after that it
is topped up as takes come until it is full again. A backend's own warm pool serves creates as they
come, a steady stream as often as a burst, and is topped up after every take.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ..models import db
from .pool import WarmPool

log = logging.getLogger(__name__)

# The longest a burst of takes keeps the machine to itself before its pool is topped up.
MAX_DEFERRAL_S = 10.0
# A keeper looks again this often even when no create woke it: a failed fill is retried then, and
# objects another process made get what their hand-over needs held.
CHECK_INTERVAL_S = 1.0


class PoolKeeper:
    def __init__(self, pool: WarmPool, interval: float = CHECK_INTERVAL_S) -> None:
        self.pool = pool
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Per template pool (backend, template id): its count at this keeper's last look, those found
        # full since they were last topped up, and since when their replacements wait.
        self._seen: dict[tuple[str, int], int] = {}
        self._full: set[tuple[str, int]] = set()
        self._waiting_since: dict[tuple[str, int], float] = {}

    def wake(self) -> None:
        """A pooled instance was taken: look now (its replacement waits while takes go on)."""
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
            key = (template.backend, template.id)
            have = self.pool.pooled_count(*key)
            if self._wait(key, have, template.pool_size) or have >= template.pool_size:
                continue
            filled = self.pool.fill(template.backend, template.pool_size, template)
            # Takes while it filled show as a smaller count at the next look.
            self._seen[key] = have + filled
            made += filled
        return made

    def _wait(self, key: tuple[str, int], have: int, size: int) -> bool:
        """Whether the template pool's replacements wait this round (see the module's docstring)."""
        before, self._seen[key] = self._seen.get(key), have
        if have >= size:
            self._full.add(key)
            return False
        taken = before is not None and have < before
        low = have * 4 <= size or have <= 1
        if key in self._full and taken and not low:
            now = time.monotonic()
            if now - self._waiting_since.setdefault(key, now) < MAX_DEFERRAL_S:
                return True
        self._full.discard(key)
        self._waiting_since.pop(key, None)
        return False

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
