"""The serving worker's HttpServer run in-process on a 127.0.0.1 socket, and a raw HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from postgraas_server.config import ApplicationSettings
from postgraas_server.serving import HttpServer, Limits

# Short deadlines, so that the files run in seconds; each test states the ones it relies on.
FAST = replace(
    Limits.from_settings(ApplicationSettings()),
    request_header_timeout=1.0,
    keepalive_timeout=1.0,
    request_body_timeout=1.0,
    send_timeout=1.0,
    max_body_bytes=1000,
)


@dataclass
class Running:
    server: HttpServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    port: int
    # Closed when serving() ends, so that no test leaks a socket.
    clients: list[socket.socket] = field(default_factory=list)

    def connect(self, rcvbuf: int | None = None) -> Client:
        sock = socket.socket()
        self.clients.append(sock)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        return Client(sock)

    def call(self, coroutine: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def connections(self) -> int:
        return self.call(_count(self.server))


async def _count(server: HttpServer) -> int:
    return len(server.connections)


@contextmanager
def serving(app: Any, threads: int = 4, **limits: Any) -> Iterator[Running]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="serving-loop", daemon=True)
    thread.start()
    server = HttpServer(app, replace(FAST, **limits), threads)
    running = Running(server, loop, thread, listener.getsockname()[1])
    running.call(server.start([listener]))
    try:
        yield running
    finally:
        for sock in running.clients:
            sock.close()
        running.call(server.shutdown(grace=2.0), timeout=20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        listener.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    """Sends bytes as given and parses answers by hand: bad requests and pipelining need that."""

    sock: socket.socket
    buffer: bytes = field(default=b"")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", path: str = "/", headers: str = "", body: bytes = b"") -> None:
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        self.send(f"{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}{length}\r\n".encode() + body)

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def reply(self, timeout: float = 10, head_only: bool = False) -> Reply:
        """The next answer; raises EOFError when the server closed first."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(max(0.01, deadline - time.monotonic())):
                raise EOFError(self.buffer)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        status = int(status_line.split(" ")[1])
        length = 0 if head_only or status < 200 else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill(max(0.01, deadline - time.monotonic())):
                raise EOFError(self.buffer)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(status, headers, body, head)

    def closed_within(self, timeout: float) -> bool:
        """True when the server closes (EOF or reset) within ``timeout`` with nothing more sent."""
        try:
            return not self._fill(timeout) and not self.buffer
        except ConnectionResetError:
            return not self.buffer
        except TimeoutError:
            return False

    def wait_closed(self, timeout: float) -> float:
        """Seconds until the server closed; fails if it sent anything or stayed open."""
        started = time.monotonic()
        assert self.closed_within(timeout), f"still open after {timeout}s (or it sent {self.buffer!r})"
        return time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def echo_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answers what it was given: the environ's strings and the body's length."""
    body = environ["wsgi.input"].read()
    seen = {k: v for k, v in environ.items() if isinstance(v, str | bool | int)}
    seen["body"] = body.decode("latin-1")
    data = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
