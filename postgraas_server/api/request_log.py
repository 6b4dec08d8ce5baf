"""Per request: an id (taken from or returned as X-Request-ID), one log line, one count in /metrics.

The line has the method, the path without its query string (where secrets could be), the status
and the duration; never a header or a body.
"""

from __future__ import annotations

import json
import logging
import time

from flask import Flask, Response, g, request

from ..logs import request_id, request_id_for
from ..metrics import HTTP_REQUESTS, method_label, route_label

HEADER = "X-Request-ID"

log = logging.getLogger("postgraas_server.access")


def _begin() -> None:
    g.request_started = time.perf_counter()
    g.request_id_token = request_id.set(request_id_for(request.headers.get(HEADER)))


def _finish(response: Response) -> Response:
    response.headers[HEADER] = request_id.get()
    elapsed_ms = round((time.perf_counter() - g.get("request_started", time.perf_counter())) * 1000, 1)
    route = route_label(request.url_rule.rule if request.url_rule else None)
    HTTP_REQUESTS.labels(method_label(request.method), route, str(response.status_code)).inc()
    # json.dumps escapes control characters: a path cannot forge a second log line.
    path = json.dumps(request.path)[1:-1]
    log.info(
        "%s %s %s %.1fms",
        request.method,
        path,
        response.status_code,
        elapsed_ms,
        extra={
            "method": request.method,
            "path": path,
            "route": route,
            "status": response.status_code,
            "duration_ms": elapsed_ms,
            "remote_addr": request.remote_addr,
        },
    )
    return response


def _end(_error: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id.reset(token)


def install(app: Flask) -> None:
    """Register first, so that every other hook and handler runs with the request id set."""
    app.before_request_funcs.setdefault(None, []).insert(0, _begin)
    app.after_request(_finish)
    app.teardown_request(_end)
