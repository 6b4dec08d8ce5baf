"""The serving worker speaks HTTP/1.1 as a mature server does: environ, framing, refusals, close()."""

from __future__ import annotations

import threading
import time

import pytest
from flask import Flask, after_this_request, jsonify

from .serving_harness import FAST, echo_app, serving


def test_the_environ_follows_pep_3333():
    with serving(echo_app) as running:
        client = running.connect()
        client.send(
            b"POST /a%20b/%C3%A9?x=1&y=%20 HTTP/1.1\r\nHost: test\r\nX-Twice: one\r\nX-Twice: two\r\n"
            b"X_Twice: smuggled\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        seen = client.reply().json()
        local, peer = client.sock.getsockname(), client.sock.getpeername()
    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["SCRIPT_NAME"] == ""
    # Percent-decoded bytes as latin-1: the UTF-8 of "é" is two characters here.
    assert seen["PATH_INFO"] == "/a b/\u00c3\u00a9"
    assert seen["QUERY_STRING"] == "x=1&y=%20"
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == (peer[0], str(peer[1]))
    assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == (local[0], str(local[1]))
    assert seen["HTTP_HOST"] == "test"
    assert seen["HTTP_X_TWICE"] == "one, two"  # and not the underscored one
    assert seen["CONTENT_TYPE"] == "text/plain"
    # A chunked body arrives whole, with its length.
    assert (seen["body"], seen["CONTENT_LENGTH"]) == ("abcde", "5")
    assert "HTTP_TRANSFER_ENCODING" not in seen
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["wsgi.input_terminated"] is True
    assert seen["wsgi.multithread"] is True
    assert seen["wsgi.multiprocess"] is False
    assert seen["wsgi.run_once"] is False


def test_keep_alive_and_pipelined_requests_are_answered_in_order():
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(0.3)  # a later request must still not overtake it
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    with serving(app) as running:
        client = running.connect()
        client.send(b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in ("/slow", "/2", "/3")))
        replies = [client.reply() for _ in range(3)]
        assert [r.body for r in replies] == [b"/slow", b"/2", b"/3"]
        assert all(r.headers["connection"] == "keep-alive" for r in replies)
        assert all("date" in r.headers and "server" not in r.headers for r in replies)
        client.request(path="/4")
        assert client.reply().body == b"/4"


def test_head_answers_have_headers_and_no_body():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    with serving(app) as running:
        client = running.connect()
        client.request("HEAD", "/")
        head = client.reply(head_only=True)
        assert (head.status, head.headers["content-length"]) == (200, "5")
        # Were the body sent, it would be read as the start of the next answer.
        client.request("GET", "/")
        assert client.reply().body == b"hello"


def test_expect_100_continue_is_answered_before_the_body_is_read():
    with serving(echo_app) as running:
        client = running.connect()
        client.send(b"PUT / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        interim = client.reply(timeout=2)
        assert interim.status == 100
        client.send(b"hello")
        assert client.reply().json()["body"] == "hello"

        # Too large: refused at once, without inviting the body.
        client = running.connect()
        client.send(b"PUT / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
        assert client.reply(timeout=2).status == 413


def test_a_body_over_max_body_bytes_is_413_by_its_length_without_reading_it():
    calls = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return echo_app(environ, start_response)

    with serving(app) as running:
        client = running.connect()
        started = time.monotonic()
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
        reply = client.reply(timeout=2)
        assert time.monotonic() - started < 0.8  # not after the body deadline
        assert reply.status == 413
        assert reply.json() == {"status": "failed", "msg": "The request body is larger than the limit of 1000 bytes."}
        assert reply.headers["connection"] == "close"
        client.wait_closed(3)
        # Exactly the limit is fine.
        client = running.connect()
        client.request("POST", "/fits", body=b"x" * FAST.max_body_bytes)
        assert client.reply().status == 200
    assert calls == ["/fits"]


def test_a_chunked_body_growing_past_max_body_bytes_is_413():
    with serving(echo_app) as running:
        client = running.connect()
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            client.send(b"190\r\n" + b"x" * 400 + b"\r\n")  # 3 x 400 > 1000
        reply = client.reply(timeout=3)
        assert reply.status == 413
        assert "1000 bytes" in reply.json()["msg"]
        client.wait_closed(4)


def test_malformed_requests_get_400_and_the_connection_closes():
    with serving(echo_app) as running:
        for bad in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n"):
            client = running.connect()
            client.send(bad)
            reply = client.reply(timeout=2)
            assert reply.status == 400
            assert reply.json() == {"status": "failed", "msg": "The request is not valid HTTP/1.1."}
            client.wait_closed(3)


def test_a_transfer_coding_other_than_chunked_is_501():
    with serving(echo_app) as running:
        client = running.connect()
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n")
        reply = client.reply(timeout=2)
        assert reply.status == 501
        assert reply.json() == {"status": "failed", "msg": "Only Transfer-Encoding: chunked is supported."}
        client.wait_closed(3)


@pytest.mark.parametrize("pieces", [1, 20], ids=["whole", "in-pieces"])
def test_headers_over_16_kib_get_431(pieces):
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    with serving(echo_app) as running:
        client = running.connect()
        size = len(head) // pieces + 1
        for start in range(0, len(head), size):
            client.send(head[start : start + size])
            time.sleep(0.01 if pieces > 1 else 0)
        reply = client.reply(timeout=2)
        assert reply.status == 431
        assert "16384 bytes" in reply.json()["msg"]
        client.wait_closed(3)


def test_an_exception_in_the_app_is_500_and_closes():
    def app(environ, start_response):
        raise RuntimeError("boom")

    with serving(app) as running:
        client = running.connect()
        client.request()
        reply = client.reply()
        assert reply.status == 500
        assert reply.json()["status"] == "failed"
        assert reply.headers["connection"] == "close"
        client.wait_closed(3)


def test_http_1_0_is_answered_and_closed():
    with serving(echo_app) as running:
        client = running.connect()
        client.send(b"GET /old HTTP/1.0\r\n\r\n")
        reply = client.reply()
        assert (reply.status, reply.json()["SERVER_PROTOCOL"]) == (200, "HTTP/1.0")
        client.wait_closed(3)


def test_close_runs_in_a_pool_thread_after_the_client_has_the_answer():
    answer_received = threading.Event()
    closes = []

    class Body:
        def __iter__(self):
            yield b"done"

        def close(self):
            # Were close() run before the answer is written, the answer could not arrive while it waits.
            closes.append((threading.current_thread().name, answer_received.wait(5)))

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "4")])
        return Body()

    with serving(app) as running:
        client = running.connect()
        client.request()
        assert client.reply(timeout=3).body == b"done"
        answer_received.set()
        deadline = time.monotonic() + 5
        while not closes and time.monotonic() < deadline:
            time.sleep(0.02)
    ((thread, after_answer),) = closes
    assert thread.startswith("postgraas-request") and thread != running.thread.name
    assert after_answer


def test_flask_call_on_close_work_does_not_delay_the_answer():
    # What postgraas_server.api.instances._after_response does: work in response.call_on_close.
    app = Flask(__name__)
    worked = []

    @app.get("/")
    def index():
        @after_this_request
        def later(response):
            response.call_on_close(lambda: (time.sleep(1.0), worked.append(threading.current_thread().name)))
            return response

        return jsonify(ok=True)

    with serving(app) as running:
        client = running.connect()
        started = time.monotonic()
        client.request()
        assert client.reply().json() == {"ok": True}
        assert time.monotonic() - started < 0.8
        assert not worked
        deadline = time.monotonic() + 5
        while not worked and time.monotonic() < deadline:
            time.sleep(0.05)
    assert worked and worked[0].startswith("postgraas-request")
