"""Talking to a created database as its user: the readiness proof, the password check and the
session count."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from ...errors import BackendUnavailable
from ..contract import Credentials

# libpq treats connect_timeout below 2 as 2 seconds.
CONNECT_TIMEOUT_S = 2


# Client sessions other than the asking one.
OTHER_SESSIONS_SQL = (
    "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()"
)


# SQLSTATE invalid_password.
INVALID_PASSWORD = "28P01"


class NotReady(Exception):
    """No login succeeded before the deadline; the message is the last connection error."""


def connect_as_tenant(host: str, port: int, credentials: Credentials) -> psycopg.Connection:
    """An autocommit session as the tenant ``credentials`` name, over TCP."""
    return psycopg.connect(
        host=host,
        port=port,
        dbname=credentials.db_name,
        user=credentials.db_username,
        password=credentials.db_pwd,
        connect_timeout=CONNECT_TIMEOUT_S,
        autocommit=True,
    )


def wait_for_login(
    host: str,
    port: int,
    credentials: Credentials,
    *,
    timeout: float,
    still_starting: Callable[[], None] = lambda: None,
    interval: float = 0.05,
) -> None:
    """Return once a TCP login runs ``select 1``; raise NotReady at the deadline.

    An open port proves nothing (docker-proxy accepts before postgres listens, and the image's
    temporary init server listens on the unix socket only), so only a real login counts.
    ``still_starting`` is called between attempts and may raise to stop waiting early.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect_as_tenant(host, port, credentials) as conn:
                conn.execute("select 1")
            return
        except psycopg.Error as e:
            last_error = str(e).strip() or type(e).__name__
        still_starting()
        if time.monotonic() >= deadline:
            raise NotReady(last_error)
        time.sleep(interval)


def password_accepted(host: str, port: int, credentials: Credentials) -> bool:
    """Log in once: True when the login works, False when the server refuses the password (as it
    does for a role or database that is not there). Raises ``BackendUnavailable`` when the server
    does not answer, or fails the login for another reason."""
    try:
        with connect_as_tenant(host, port, credentials) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as e:
        # A failed connect carries no SQLSTATE in psycopg: the server's message is all there is.
        if e.sqlstate == INVALID_PASSWORD or "password authentication failed" in str(e):
            return False
        raise BackendUnavailable(f"The password cannot be checked: the database does not answer ({e}).") from e
    return True


def count_other_sessions(host: str, port: int, credentials: Credentials) -> int:
    """Client sessions on the server other than the one asking. Raises psycopg.Error."""
    with connect_as_tenant(host, port, credentials) as conn:
        row = conn.execute(OTHER_SESSIONS_SQL).fetchone()
    return int(row[0]) if row else 0
