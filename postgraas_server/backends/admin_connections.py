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
from psycopg.pq import TransactionStatus


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
