"""Slow and idle clients meet deadlines; none of them holds one of the pool's threads meanwhile."""

from __future__ import annotations

import select
import time

from .serving_harness import echo_app, serving

# Upper bounds leave room for a busy machine. Lower ones allow only for this thread noting the time a
# little after the server did (the GIL, a busy core): the server must not close early.
SLACK = 1.5
EARLY = 0.05


def test_trickled_headers_get_408_at_the_header_deadline_counted_from_accept():
    with serving(echo_app, request_header_timeout=1.0) as running:
        client = running.connect()
        started = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\n")
        for n in range(20):  # a header every 0.3 s, never the end of them, until the server answers
            if select.select([client.sock], [], [], 0.3)[0]:
                break
            client.send(f"X-Slow-{n}: 1\r\n".encode())
        elapsed = time.monotonic() - started
        reply = client.reply(timeout=5)
        assert reply.status == 408
        assert reply.json()["status"] == "failed"
        assert reply.headers["connection"] == "close"
        assert 1.0 - EARLY <= elapsed < 1.0 + SLACK
        client.wait_closed(3)


def test_a_connection_that_sends_nothing_is_closed_without_an_answer():
    with serving(echo_app, request_header_timeout=0.8) as running:
        client = running.connect()
        started = time.monotonic()
        client.wait_closed(0.8 + SLACK)
        assert time.monotonic() - started >= 0.8 - EARLY


def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout():
    with serving(echo_app, keepalive_timeout=0.6, request_header_timeout=5.0) as running:
        client = running.connect()
        client.request()
        assert client.reply().status == 200
        answered = time.monotonic()
        client.wait_closed(0.6 + SLACK)
        assert time.monotonic() - answered >= 0.6 - EARLY


def test_a_later_requests_header_deadline_counts_from_its_first_byte():
    with serving(echo_app, keepalive_timeout=1.5, request_header_timeout=1.5) as running:
        client = running.connect()
        client.request()
        assert client.reply().status == 200
        time.sleep(0.8)  # idle, within keepalive_timeout
        client.send(b"GET /second HTTP/1.1\r\n")
        time.sleep(0.9)  # past the keep-alive deadline, within the header deadline from the first byte
        client.send(b"Host: t\r\n\r\n")
        assert client.reply().json()["PATH_INFO"] == "/second"

        client.send(b"GET /third HTTP/1.1\r\n")
        first_byte = time.monotonic()
        reply = client.reply(timeout=5)
        assert reply.status == 408
        assert 1.5 - EARLY <= time.monotonic() - first_byte < 1.5 + SLACK


def test_a_body_that_does_not_arrive_in_time_gets_408():
    with serving(echo_app, request_body_timeout=1.0) as running:
        client = running.connect()
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        reply = client.reply(timeout=5)
        assert reply.status == 408
        assert "body" in reply.json()["msg"]
        assert 1.0 - EARLY <= time.monotonic() - started < 1.0 + SLACK
        client.wait_closed(3)


def test_slow_clients_hold_no_thread():
    # One thread, and many more slow clients than that: a complete request is still answered at once.
    with serving(echo_app, threads=1, request_header_timeout=5.0, request_body_timeout=5.0) as running:
        slow = [running.connect() for _ in range(30)]
        for n, client in enumerate(slow):  # half stuck in their headers, half in their bodies
            client.send(
                b"GET / HTTP/1.1\r\nX-Slow: 1\r\n" if n % 2 else b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n"
            )
        idle = [running.connect() for _ in range(30)]
        time.sleep(0.2)
        for _ in range(5):
            client = running.connect()
            started = time.monotonic()
            client.request()
            assert client.reply(timeout=3).status == 200
            assert time.monotonic() - started < 0.5
        assert running.connections() >= len(slow) + len(idle)


def test_a_client_that_does_not_read_its_answer_is_dropped_after_send_timeout():
    size = 32 * 1024 * 1024  # more than both ends' socket buffers can hold

    def app(environ, start_response):
        body = b"x" * size if environ["PATH_INFO"] == "/big" else b"ok"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    with serving(app, threads=1, send_timeout=1.0, keepalive_timeout=10.0) as running:
        stuck = running.connect(rcvbuf=4096)
        stuck.request(path="/big")
        time.sleep(0.3)  # the app has built the answer; the loop is writing it to a client that does not read
        # The only thread is free again: another client is answered at once.
        other = running.connect()
        started = time.monotonic()
        other.request()
        assert other.reply(timeout=3).body == b"ok"
        assert time.monotonic() - started < 0.5
        # The non-reader is dropped once send_timeout has passed: what it can still read is cut short.
        deadline = time.monotonic() + 1.0 + SLACK
        while running.connections() > 1:  # the other one is kept alive
            assert time.monotonic() < deadline, "the client that does not read is still connected"
            time.sleep(0.05)
        received = 0
        stuck.sock.settimeout(5)
        try:
            while chunk := stuck.sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < size
