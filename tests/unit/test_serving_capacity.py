"""At max_connections the worker makes room by closing the connection that waited longest without a
whole request; requests in flight are never the ones closed. A stop lets those finish."""

from __future__ import annotations

import asyncio
import threading
import time

from .serving_harness import echo_app, serving


def blocking_app(release: threading.Event):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/wait":
            release.wait(10)
        return echo_app(environ, start_response)

    return app


def wait_for_connections(running, count: int) -> None:
    deadline = time.monotonic() + 3
    while running.connections() != count:
        assert time.monotonic() < deadline, f"{running.connections()} connections, expected {count}"
        time.sleep(0.02)


def test_the_longest_waiting_connection_without_a_request_makes_room():
    release = threading.Event()
    with serving(blocking_app(release), threads=4, max_connections=3, request_header_timeout=10.0) as running:
        busy = running.connect()
        busy.request(path="/wait")  # oldest of all, but its request is in flight
        wait_for_connections(running, 1)
        idle = running.connect()
        wait_for_connections(running, 2)
        partial = running.connect()
        partial.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        wait_for_connections(running, 3)

        newcomer = running.connect()
        idle.wait_closed(2)
        assert not partial.closed_within(0.2)
        newest = running.connect()
        partial.wait_closed(2)  # it began waiting before the newcomer
        assert not newcomer.closed_within(0.2)

        # The survivors are served as usual.
        for client in (newcomer, newest):
            client.request()
            assert client.reply().status == 200
        release.set()
        assert busy.reply().status == 200


def test_when_every_connection_has_a_request_in_flight_a_new_one_is_closed():
    release = threading.Event()
    with serving(blocking_app(release), threads=4, max_connections=3) as running:
        busy = [running.connect() for _ in range(3)]
        for client in busy:
            client.request(path="/wait")
        wait_for_connections(running, 3)
        time.sleep(0.2)  # the requests have reached the app
        refused = running.connect()
        refused.wait_closed(2)
        release.set()
        assert [c.reply().status for c in busy] == [200, 200, 200]


def test_a_stop_closes_idle_connections_and_lets_requests_in_flight_finish_with_connection_close():
    release = threading.Event()
    with serving(blocking_app(release)) as running:
        idle = running.connect()
        busy = running.connect()
        busy.request(path="/wait")
        wait_for_connections(running, 2)
        time.sleep(0.2)
        stopped = asyncio.run_coroutine_threadsafe(running.server.shutdown(grace=5.0), running.loop)
        idle.wait_closed(2)
        assert not stopped.done()
        release.set()
        reply = busy.reply(timeout=5)
        assert (reply.status, reply.headers["connection"]) == (200, "close")
        busy.wait_closed(3)
        stopped.result(5)
        assert running.connections() == 0


def test_a_stop_drops_what_is_still_running_after_the_grace_period():
    release = threading.Event()
    with serving(blocking_app(release)) as running:
        busy = running.connect()
        busy.request(path="/wait")
        time.sleep(0.2)
        started = time.monotonic()
        running.call(running.server.shutdown(grace=0.5))
        assert 0.45 <= time.monotonic() - started < 2.0
        busy.wait_closed(2)
        release.set()
