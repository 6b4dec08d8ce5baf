"""The fake server of the client tests, and a URL where nothing answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from .fake_server import FakeServer


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    fake.thread.start()
    yield fake
    fake.release.set()
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture
def closed_url() -> Iterator[str]:
    # Bound but not listening: connecting is refused, and no one else can take the port meanwhile.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
