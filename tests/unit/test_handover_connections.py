"""Connections kept for the pool's hand-overs (claims): one per pooled object, handed out once, replaced when broken."""

import socket
import threading
import time

import psycopg
import pytest

from postgraas_server.backends.postgres.handover_connections import (
    HandOverConnections,
    NotClaimable,
    end_others_then_close,
)


class FakeConnection:
    """What HandOverConnections uses of a psycopg connection, on a socket pair: the far end is the server."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.sock, self.server = socket.socketpair()
        self.closed = False
        self.broken = False
        self.executed: list[str] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def execute(self, query: str) -> None:
        self.executed.append(query)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.server.close()


@pytest.fixture
def connect():
    connector = Connector()
    yield connector
    for conn in connector.made:
        conn.close()


class Connector:
    def __init__(self) -> None:
        self.made: list[FakeConnection] = []
        self.down: set[str] = set()
        self.refusing: set[str] = set()

    def __call__(self, ref: str) -> FakeConnection:
        if ref in self.down:
            raise OSError(f"{ref} is down")
        if ref in self.refusing:
            raise NotClaimable(f"{ref} refuses our password")
        conn = FakeConnection(ref)
        self.made.append(conn)
        return conn


def test_keep_opens_warms_and_closes_to_match_the_pool(connect):
    kept = HandOverConnections(connect, warm_up="select 1")
    kept.keep(["a", "b"])
    kept.keep(["a", "b"])
    assert sorted(c.ref for c in connect.made) == ["a", "b"]
    assert all(c.executed == ["select 1"] for c in connect.made)
    kept.keep(["b", "c"])
    by_ref = {c.ref: c for c in connect.made}
    assert by_ref["a"].closed and not by_ref["b"].closed and not by_ref["c"].closed


def test_take_hands_a_kept_connection_out_once(connect):
    kept = HandOverConnections(connect)
    kept.keep(["a"])
    first = kept.take("a")
    assert first is connect.made[0]
    # Taken: the next take of it connects anew, and keeping connects to it no more (a claim
    # of this process is handing it over; a kept session must not outlive that).
    second = kept.take("a")
    assert second is not first and len(connect.made) == 2
    kept.keep(["a"])
    assert len(connect.made) == 2


def test_a_connection_its_server_closed_is_replaced(connect):
    kept = HandOverConnections(connect)
    kept.keep(["a"])
    stale = connect.made[0]
    stale.server.close()  # the server ended the session (a restart, a termination)
    fresh = kept.take("a")
    assert fresh is not stale and stale.closed


def test_a_server_that_cannot_be_reached_is_skipped_until_it_can(connect):
    connect.down = {"a"}
    kept = HandOverConnections(connect)
    kept.keep(["a", "b"])
    assert [c.ref for c in connect.made] == ["b"]
    connect.down = set()
    kept.keep(["a", "b"])
    assert [c.ref for c in connect.made] == ["b", "a"]


def test_objects_that_refuse_our_login_are_reported(connect):
    connect.refusing = {"old"}
    kept = HandOverConnections(connect)
    assert kept.keep(["old", "new"]) == ["old"]
    assert [c.ref for c in connect.made] == ["new"]


def wait_closed(conn: FakeConnection, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not conn.closed and time.monotonic() < deadline:
        time.sleep(0.005)
    return conn.closed


def test_after_a_claim_the_other_sessions_are_ended_then_the_connection_closed_without_waiting():
    conn = FakeConnection("a")
    release = threading.Event()
    conn.execute = lambda query: (release.wait(5), conn.executed.append(query))  # a slow server
    end_others_then_close(conn, "end the others", "a")
    # Back at once, before the statement ran.
    assert conn.executed == [] and not conn.closed
    release.set()
    assert wait_closed(conn)
    assert conn.executed == ["end the others"]


def test_a_failure_to_end_the_other_sessions_still_closes_the_connection(caplog):
    conn = FakeConnection("a")

    def fail(query: str) -> None:
        raise psycopg.OperationalError("server closed the connection")

    conn.execute = fail
    end_others_then_close(conn, "end the others", "a")
    assert wait_closed(conn)
    deadline = time.monotonic() + 5
    while "could not end the other sessions" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.005)
    assert "could not end the other sessions in claimed object a" in caplog.text


def test_a_claim_that_fails_closes_its_connection_and_ends_nothing(connect):
    kept = HandOverConnections(connect, end_others="end the others")
    kept.keep(["a"])
    with pytest.raises(RuntimeError), kept.claiming("a") as conn:
        raise RuntimeError("the hand-over failed")
    assert conn.closed and conn.executed == []


def test_a_claim_that_succeeds_ends_the_other_sessions_then_closes(connect):
    kept = HandOverConnections(connect, end_others="end the others")
    kept.keep(["a"])
    with kept.claiming("a") as conn:
        conn.execute("hand over")
    assert wait_closed(conn)
    assert conn.executed == ["hand over", "end the others"]
