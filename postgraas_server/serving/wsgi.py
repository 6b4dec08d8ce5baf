"""PEP 3333 for a request read whole: its environ, and the app's answer collected in a pool thread."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

import h11

from .answers import INTERNAL_ERROR, Answer, Headers, refusal

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger("postgraas_server.serving")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


@dataclass(frozen=True)
class Endpoints:
    """The two ends of a connection, as the socket reports them."""

    server_name: str
    server_port: int
    remote_addr: str
    remote_port: int

    @classmethod
    def of(cls, sockname: Any, peername: Any) -> Endpoints:
        # A unix socket has a path (or "") where a TCP socket has (host, port).
        server = sockname if isinstance(sockname, tuple) else ("localhost", 0)
        peer = peername if isinstance(peername, tuple) else ("", 0)
        return cls(str(server[0]), int(server[1]), str(peer[0]), int(peer[1]))


def environ_for(request: h11.Request, body: bytes, ends: Endpoints, multiprocess: bool) -> dict[str, Any]:
    target = request.target.partition(b"#")[0]
    if target.startswith(b"/") or target == b"*":
        path, _, query = target.partition(b"?")
    else:  # absolute-form, as sent to proxies: http://host/path?query
        parts = urlsplit(target)
        path, query = parts.path or b"/", parts.query
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "SCRIPT_NAME": "",
        # PEP 3333: the percent-decoded bytes, as a latin-1 "native string".
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": ends.server_name,
        "SERVER_PORT": str(ends.server_port),
        "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "REMOTE_ADDR": ends.remote_addr,
        "REMOTE_PORT": str(ends.remote_port),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        # The body is already whole and de-chunked: the app may read to its end.
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
    }
    framed = False
    for name, value in request.headers:
        if name in (b"content-length", b"transfer-encoding"):
            framed = True  # the body's framing is ours; the app gets CONTENT_LENGTH of what was read
            continue
        if b"_" in name:
            # X_Forwarded_For would become HTTP_X_FORWARDED_FOR like X-Forwarded-For: drop, as gunicorn does.
            continue
        text = value.decode("latin-1")
        if name == b"content-type":
            environ["CONTENT_TYPE"] = text
            continue
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        environ[key] = f"{environ[key]}, {text}" if key in environ else text
    if framed or body:
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def run_app(app: WSGIApplication, request: h11.Request, body: bytes, ends: Endpoints, multiprocess: bool) -> Answer:
    """Call the app and collect its whole answer (the API's are small). Runs in a pool thread."""
    environ = environ_for(request, body, ends, multiprocess)
    started: list[tuple[str, list[tuple[str, str]]]] = []
    chunks: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        # Nothing is written before the app returns, so a later call (with exc_info) simply replaces.
        if started and exc_info is None:
            raise RuntimeError("start_response called a second time without exc_info")
        started[:] = [(status, headers)]
        return chunks.append  # the legacy write() callable

    result: Iterable[bytes] | None = None
    try:
        result = app(environ, start_response)
        for chunk in result:
            chunks.append(bytes(chunk))
        if not started:
            raise RuntimeError("the app returned without calling start_response")
        status, headers = started[0]
        code, _, reason = status.partition(" ")
        return Answer(
            status=int(code),
            reason=reason.encode("latin-1"),
            headers=_encoded(headers),
            body=b"".join(chunks),
            close=getattr(result, "close", None),
        )
    except Exception:
        log.exception("the app failed on %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
        close = getattr(result, "close", None)
        if close is not None:
            close_quietly(close)
        return refusal(500, INTERNAL_ERROR)


def close_quietly(close: Any) -> None:
    """Run a response's close(); what it raises is logged, never passed on."""
    try:
        close()
    except Exception:
        log.exception("closing a response failed")


def _encoded(headers: list[tuple[str, str]]) -> Headers:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
