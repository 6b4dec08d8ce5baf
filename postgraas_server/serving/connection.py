"""One client connection on the event loop: whole requests read with h11 under deadlines, then answered.

A request reaches a pool thread only once its line, headers and body have all arrived, so a client that
sends slowly, or not at all, costs a socket and a few KiB here, never a thread.
"""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from typing import TYPE_CHECKING

import h11

from .answers import INTERNAL_ERROR, Answer, Headers, refusal, too_large
from .wsgi import Endpoints

if TYPE_CHECKING:
    from .server import HttpServer

log = logging.getLogger("postgraas_server.serving")

READ_SIZE = 64 * 1024
# After refusing a request whose rest is still coming, its bytes are read and dropped for a while before
# the close: closing with unread input makes the kernel send a reset, which can destroy the answer.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
# Statuses whose answers have no body, hence no Content-Length of ours.
BODILESS = (204, 304)
CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")


class Refusal(Exception):
    """The request cannot be served: answer with ``status`` (None: just close) and end the connection."""

    def __init__(self, status: int | None, msg: str = "") -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


class Connection:
    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.ends = Endpoints.of(writer.get_extra_info("sockname"), writer.get_extra_info("peername"))
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.loop = asyncio.get_running_loop()
        self.accepted_at = self.loop.time()
        # Since when it has waited for a whole request (accept, or the end of the last answer); None while
        # a request is being served. Only waiting connections may be closed to make room for new ones.
        self.waiting_since: float | None = self.accepted_at
        # Whether a byte of the request being read has arrived: a missed deadline then answers 408.
        self.received = False
        self.eof = False
        # Bytes handed to h11 so far: what a request's head took is measured with it.
        self.fed = 0
        self.method = b""
        self.task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Waiting, and nothing of a next request has arrived."""
        return self.waiting_since is not None and not self.received

    def drop(self) -> None:
        """End it now, without an answer (eviction, a stop that cannot wait)."""
        self.writer.transport.abort()

    async def serve(self) -> None:
        try:
            await self._serve()
        except Refusal as refused:
            await self._refuse(refused)
        except (ConnectionError, TimeoutError):
            pass
        except Exception:
            log.exception("serving a connection from %s failed", self.ends.remote_addr)
        finally:
            self.writer.transport.close()
            self.server.forget(self)

    async def _serve(self) -> None:
        first = True
        while True:
            request = await self._read_head(first)
            if request is None:
                return
            first = False
            body = await self._read_body(request)
            self.waiting_since = None
            answer = await self.server.call_app(request, body, self.ends)
            try:
                kept = await self._send(answer, close=answer.final or self.server.stopping)
            finally:
                self.server.answered(answer)
            if not kept:
                return
            self.h11.start_next_cycle()
            self.waiting_since = self.loop.time()

    async def _read_head(self, first: bool) -> h11.Request | None:
        """The next request's line and headers, or None when the client left or stayed idle."""
        self.received = False
        self.method = b""
        head_starts_at = self.fed - len(self.h11.trailing_data[0])
        if first:
            deadline = self.accepted_at + self.limits.request_header_timeout
        else:
            if self.h11.trailing_data[0]:
                self.received = True  # pipelined: its first bytes are here already
            elif not await self._receive(self.loop.time() + self.limits.keepalive_timeout):
                return None
            deadline = self.loop.time() + self.limits.request_header_timeout
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                if not await self._receive(deadline):
                    if self.received:
                        raise Refusal(408, "The request's headers did not arrive in time.")
                    raise Refusal(None)
            elif isinstance(event, h11.Request):
                self.method = event.method
                # h11 limits a head only while it is incomplete; one that arrived whole in a read is measured.
                if self.fed - len(self.h11.trailing_data[0]) - head_starts_at > self.limits.max_header_bytes:
                    raise Refusal(431, self._too_large_head())
                return event
            else:  # ConnectionClosed
                return None

    async def _read_body(self, request: h11.Request) -> bytes:
        limit = self.limits.max_body_bytes
        length = _content_length(request)
        if length is not None and length > limit:
            raise Refusal(413)
        deadline = self.loop.time() + self.limits.request_body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                if self.h11.they_are_waiting_for_100_continue:
                    # The body is about to be read: tell a client that waits for our word to send it.
                    self.writer.write(self._bytes(CONTINUE))
                if not await self._receive(deadline):
                    raise Refusal(408, "The request's body did not arrive in time.")
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:  # a chunked body has no length to refuse up front
                    raise Refusal(413)
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise Refusal(None)

    async def _receive(self, deadline: float) -> bool:
        """Hand h11 the next bytes (or the end of input); False if the deadline came first."""
        try:
            async with asyncio.timeout_at(deadline):
                data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            return False
        except ConnectionError:
            data = b""
        self.fed += len(data)
        if data:
            self.received = True
        else:
            self.eof = True
        self.h11.receive_data(data)
        return True

    def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as e:
            if self.eof:
                raise Refusal(None) from None  # the client left halfway; nobody to answer
            log.debug("refusing a request from %s: %s", self.ends.remote_addr, e)
            if e.error_status_hint == 431:
                raise Refusal(431, self._too_large_head()) from None
            if e.error_status_hint == 501:
                raise Refusal(501, "Only Transfer-Encoding: chunked is supported.") from None
            # h11's own message may quote the client's bytes; ours does not.
            raise Refusal(400, "The request is not valid HTTP/1.1.") from None

    async def _send(self, answer: Answer, close: bool) -> bool:
        """Write the answer; True when the connection may carry another request."""
        head_only = self.method == b"HEAD"
        try:
            response = h11.Response(
                status_code=answer.status, reason=answer.reason, headers=_headers(answer, head_only, close)
            )
        except h11.LocalProtocolError as e:
            log.error("the app's answer cannot be sent (%s); answering 500 instead", e)
            answer = refusal(500, INTERNAL_ERROR)
            close = True
            response = h11.Response(status_code=500, reason=answer.reason, headers=_headers(answer, head_only, True))
        data = self._bytes(response)
        if answer.body and not head_only and answer.status not in BODILESS:
            data += self._bytes(h11.Data(data=answer.body))
        data += self._bytes(h11.EndOfMessage())
        self.writer.write(data)
        try:
            # The transport's write limits are 0: drain returns once the kernel has taken every byte.
            async with asyncio.timeout(self.limits.send_timeout):
                await self.writer.drain()
        except TimeoutError:
            log.info("%s did not take its answer within %ss; dropped", self.ends.remote_addr, self.limits.send_timeout)
            self.drop()
            return False
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def _refuse(self, refused: Refusal) -> None:
        if refused.status is None or self.eof or self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        if refused.status == 413:
            answer = too_large(self.limits.max_body_bytes)
        else:
            answer = refusal(refused.status, refused.msg)
        try:
            await self._send(answer, close=True)
        except (ConnectionError, h11.LocalProtocolError):
            return
        if not self.writer.transport.is_closing():
            await self._linger()

    async def _linger(self) -> None:
        """Half-close, then drop what the client still sends, so that the answer arrives before any reset."""
        try:
            self.writer.write_eof()
        except OSError:
            return
        discarded = 0
        deadline = self.loop.time() + LINGER_SECONDS
        while discarded < LINGER_BYTES:
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self.reader.read(READ_SIZE)
            except (TimeoutError, ConnectionError):
                return
            if not data:
                return
            discarded += len(data)

    def _too_large_head(self) -> str:
        return f"The request line and headers are larger than the limit of {self.limits.max_header_bytes} bytes."

    def _bytes(self, event: h11.Event) -> bytes:
        return self.h11.send(event) or b""


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked that it is digits, and the only one
    return None


def _headers(answer: Answer, head_only: bool, close: bool) -> Headers:
    """The app's headers with ours: the date, the connection's fate and the body's real length."""
    headers: Headers = []
    app_length: bytes | None = None
    length_at: int | None = None
    for name, value in answer.headers:
        lowered = name.lower()
        if lowered == b"connection":
            close = close or b"close" in value.lower()
        elif lowered == b"content-length":
            app_length, length_at = value, len(headers)
        elif lowered not in (b"transfer-encoding", b"date", b"keep-alive"):
            headers.append((name, value))
    length: bytes | None = None
    if answer.status >= 200 and answer.status not in BODILESS:
        # A HEAD answer tells the length the GET would have; others the length actually sent.
        length = app_length if head_only and app_length is not None else str(len(answer.body)).encode()
    elif answer.status == 304:
        length = app_length
    if length is not None:
        headers.insert(len(headers) if length_at is None else length_at, (b"Content-Length", length))
    # First, as gunicorn wrote them. h11 turns keep-alive into close where the client or the protocol wants that.
    connection = b"close" if close else b"keep-alive"
    return [(b"Date", formatdate(usegmt=True).encode("ascii")), (b"Connection", connection), *headers]
