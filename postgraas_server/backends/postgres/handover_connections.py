"""Superuser connections opened ahead to pooled objects, so that a hand-over (a claim of a pooled
object) costs no connect.

Each server process keeps one connection to every pooled object of a backend (the pool keeper
tells which those are), and a claim takes its object's connection, uses it once and closes it:
the claimed server then holds no connection of ours. A kept connection that has anything to read
was closed by its server (a restart, a termination) and is replaced by a new one: an idle session
is sent nothing, so a look at its socket does what a round trip would, without the round trip.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator

import psycopg

from .tenants import Statement

log = logging.getLogger(__name__)


class NotClaimable(Exception):
    """Raised by a backend's connect: this pooled object can never be claimed by this process (it
    refuses our login while still pooled), so it should be removed rather than kept."""


class HandOverConnections:
    def __init__(
        self,
        connect: Callable[[str], psycopg.Connection],
        warm_up: str | None = None,
        end_others: Statement | None = None,
    ) -> None:
        # connect(ref): a new autocommit superuser connection to that object's server, refused
        # (with an error) once the object is claimed.
        self._connect = connect
        # Run on each kept connection once: a new session reads the catalogs a claim needs from
        # disk into its caches, which would otherwise be a good part of the claim's own time.
        self._warm_up = warm_up
        # Run after a claim (see claiming): ends every other session of ours in the claimed server.
        self._end_others = end_others
        self._kept: dict[str, psycopg.Connection] = {}
        # Taken by a claim of this process: never connected to again.
        self._taken: set[str] = set()
        self._lock = threading.Lock()
        # Closed when the backend goes (a test's, an app built twice), not left to the GC.
        weakref.finalize(self, _close_all, self._kept)

    def keep(self, refs: Iterable[str]) -> list[str]:
        """Hold a connection to each of ``refs`` (the pooled objects now) and none to any other;
        returns the refs whose connect raised NotClaimable."""
        wanted = set(refs)
        with self._lock:
            gone = [self._kept.pop(ref) for ref in list(self._kept) if ref not in wanted]
            self._taken &= wanted
            missing = wanted - self._kept.keys() - self._taken
        for conn in gone:
            conn.close()
        unclaimable = []
        for ref in missing:
            try:
                conn = self._connect(ref)
            except NotClaimable as e:
                log.warning("%s; it is removed", e)
                unclaimable.append(ref)
                continue
            except Exception as e:
                # Starting, removed or claimed meanwhile, its engine down: best effort only. A
                # claim connects itself, and the next round tries again.
                log.debug("no connection kept to pooled object %s: %s", ref, e)
                continue
            try:
                if self._warm_up:
                    conn.execute(self._warm_up)
            except psycopg.Error as e:
                log.debug("warming up the connection to pooled object %s failed: %s", ref, e)
                conn.close()
                continue
            with self._lock:
                if ref in self._kept or ref in self._taken:
                    conn.close()
                else:
                    self._kept[ref] = conn
        return unclaimable

    def take(self, ref: str) -> psycopg.Connection:
        """A working connection to ``ref``'s server, for the caller to close: the kept one, else a new one."""
        with self._lock:
            conn = self._kept.pop(ref, None)
            self._taken.add(ref)
        if conn is not None:
            if _idle_and_open(conn):
                return conn
            conn.close()
        return self._connect(ref)

    @contextlib.contextmanager
    def claiming(self, ref: str) -> Iterator[psycopg.Connection]:
        """``ref``'s connection (see take) for one claim. If the block fails it is closed; else
        ``end_others`` runs on it and it is closed, without the claim waiting (end_others_then_close)."""
        conn = self.take(ref)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        if self._end_others is None:
            conn.close()
        else:
            end_others_then_close(conn, self._end_others, ref)


def end_others_then_close(conn: psycopg.Connection, end_others: Statement, ref: str) -> None:
    """After a claim's commit: run ``end_others`` (which ends every other session of ours in the
    claimed server: other processes' kept connections; not the tenant's, who may have logged in by
    then) on ``conn``, then close it; on a thread of its own, so that the claim answers without
    waiting for it. Ending sessions is signals and exits that would compete with the answer for
    the CPU; they are gone a moment after the answer, and a keeper's login meanwhile is refused."""

    def finish() -> None:
        try:
            conn.execute(end_others)
        except psycopg.Error as e:
            # Their processes close them anyway once they see the object is no longer pooled.
            log.warning("could not end the other sessions in claimed object %s: %s", ref, e)
        finally:
            conn.close()

    threading.Thread(target=finish, daemon=True, name=f"end-sessions-{ref}").start()


def _idle_and_open(conn: psycopg.Connection) -> bool:
    if conn.closed or conn.broken:
        return False
    # poll, not select: select fails on descriptors past 1023, which a busy worker may have.
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return not poller.poll(0)


def _close_all(kept: dict[str, psycopg.Connection]) -> None:
    while kept:
        kept.popitem()[1].close()
