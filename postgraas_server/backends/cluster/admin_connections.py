"""Admin connections kept open between requests, so that a create costs no connect and login.

A connection is checked with a round trip before it is handed out: one broken by a server
restart is dropped and the next (or a new one) is used, so a restart costs no failed request.
Connect errors reach the caller as psycopg raised them, naming the reason.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

# What a database's owner may set on it (ALTER DATABASE ... SET) and that would otherwise reach the
# admin's sessions there: become the owner's role, read-only transactions, a search_path with the
# owner's functions ahead of pg_catalog's, a library that refuses every login, an encoding the
# driver has no codec for, backslashes as escapes. Options given at connect outrank per-database
# settings.
_PINNED = (
    "role=none",
    "client_encoding=UTF8",
    "standard_conforming_strings=on",
    "DateStyle=ISO",
    "search_path=pg_catalog,pg_temp",
    "default_transaction_read_only=off",
    "local_preload_libraries=",
    "idle_session_timeout=0",
    "idle_in_transaction_session_timeout=0",
)


def guarded_conninfo(conninfo: str, *, lock_timeout: float, statement_timeout: float) -> str:
    """``conninfo`` for admin sessions that no database owner can steer, and that give up a lock
    wait after ``lock_timeout`` seconds and a statement after ``statement_timeout``, rather than
    wait on whatever a tenant holds."""
    settings = (
        *_PINNED,
        f"lock_timeout={round(lock_timeout * 1000)}",
        f"statement_timeout={round(statement_timeout * 1000)}",
    )
    given = str(conninfo_to_dict(conninfo).get("options") or "")
    options = " ".join([given, *(f"-c {setting}" for setting in settings)]).strip()
    return make_conninfo(conninfo, options=options)


class AdminConnections:
    def __init__(self, conninfo: str, keep: int = 4) -> None:
        self.conninfo = conninfo
        # At most this many idle connections are kept; busier moments open (and close) more.
        self.keep = keep
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        # Closed when this object goes (a backend of a test, an app built twice), not left to the GC.
        weakref.finalize(self, _close_all, self._idle)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection to the admin database, returned to the idle ones afterwards."""
        conn = self._checkout()
        try:
            yield conn
        finally:
            self._checkin(conn)

    def _checkout(self) -> psycopg.Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return psycopg.connect(self.conninfo, autocommit=True)
            try:
                conn.execute("select 1")
                return conn
            except psycopg.Error:
                conn.close()

    def _checkin(self, conn: psycopg.Connection) -> None:
        # Only a connection at rest goes back: one broken or mid-transaction is closed.
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            with self._lock:
                if len(self._idle) < self.keep:
                    self._idle.append(conn)
                    return
        conn.close()


def _close_all(idle: list[psycopg.Connection]) -> None:
    while idle:
        idle.pop().close()
