"""The limits the serving worker puts on each client, taken from application.cfg."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ApplicationSettings

# A request line and headers larger than this are refused with 431; ours are well under 2 KiB.
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class Limits:
    """Deadlines in seconds, sizes in bytes. See docs/serving.md for what a client gets at each."""

    # The request line and headers: from accept for a connection's first request, else from its first byte.
    request_header_timeout: float
    # An idle kept-alive connection is closed after this.
    keepalive_timeout: float
    # The whole body, from the end of the headers.
    request_body_timeout: float
    # The whole answer must be taken by the client within this, else the connection is dropped.
    send_timeout: float
    # Open connections per worker process.
    max_connections: int
    max_body_bytes: int
    max_header_bytes: int = MAX_HEADER_BYTES

    @classmethod
    def from_settings(cls, settings: ApplicationSettings) -> Limits:
        return cls(
            request_header_timeout=settings.request_header_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            request_body_timeout=settings.request_body_timeout,
            send_timeout=settings.send_timeout,
            max_connections=settings.max_connections,
            max_body_bytes=settings.max_body_bytes,
        )
