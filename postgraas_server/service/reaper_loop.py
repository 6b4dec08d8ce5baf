"""The reaper's loop: a pass every ``lifecycle.reaper_interval`` seconds in a thread of every server
process (and of ``reap``), by whichever of them holds the meta db's lease."""

from __future__ import annotations

import logging
import threading

from ..models import db
from .background import Context
from .reaper import Reaper
from .reaper_lease import LeaseLost

log = logging.getLogger(__name__)


class ReaperLoop:
    def __init__(self, reaper: Reaper, context: Context) -> None:
        # context(): where each pass's meta-db session lives (the reaper's removals have the same).
        self.reaper = reaper
        self.context = context
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run_forever, daemon=True, name="reaper")
        self._thread.start()
        return self._thread

    def stop(self, wait: float = 0) -> None:
        """No pass starts any more (one under way runs to its end); then the lease is given back, so
        that another process's reaper takes over at once rather than when it runs out. ``wait``:
        seconds to wait for that (a process about to exit)."""
        self._stop.set()
        self.reaper.stop()
        if wait and self._thread is not None:
            self._thread.join(wait)

    def run_forever(self) -> None:
        interval = self.reaper.lifecycle.reaper_interval
        # Renewed before every action, so it only has to outlast one. A holder that died frees it
        # within 1.5 intervals, and the others ask for it every half interval: one of them takes
        # over within two.
        lease_seconds = 1.5 * interval
        wait = interval
        while not self._stop.wait(wait):
            wait = interval / 2
            with self.context():
                try:
                    if self.reaper.acquire(lease_seconds):
                        wait = interval
                        self.reaper.run_pass(lease_seconds)
                except LeaseLost:
                    log.info("reaper: another reaper took the lease over; pass stopped")
                except Exception:
                    log.exception("reaper pass failed")
                finally:
                    db.session.remove()
        self._give_back_lease()

    def _give_back_lease(self) -> None:
        with self.context():
            try:
                self.reaper.release()
            except Exception:
                log.warning("reaper: could not give the lease back; it runs out by itself", exc_info=True)
            finally:
                db.session.remove()
