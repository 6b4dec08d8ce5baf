"""The one place where exceptions become HTTP responses: {"status": "failed", "msg": ...}."""

from __future__ import annotations

import logging

from flask import Response, current_app, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..errors import PostgraasError

log = logging.getLogger(__name__)


def error_response(e: BaseException) -> Response:
    if isinstance(e, PostgraasError):
        body: dict[str, object] = {"status": "failed", "msg": e.msg}
        if e.errors:
            body["errors"] = e.errors
        status = e.code
    elif isinstance(e, RequestEntityTooLarge):
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        body = {"status": "failed", "msg": f"The request body is larger than the limit of {limit} bytes."}
        status = 413
    elif isinstance(e, HTTPException):
        body = {"status": "failed", "msg": e.description or e.name}
        status = e.code or 500
    else:
        log.exception("unexpected error while handling a request")
        body = {"status": "failed", "msg": "Internal server error; the server log has the details."}
        status = 500
    response = jsonify(body)
    response.status_code = status
    if isinstance(e, PostgraasError):
        response.headers.update(e.extra_headers)
    if isinstance(e, HTTPException) and not isinstance(e, PostgraasError):
        # Keep headers such as Allow on 405.
        for name, value in e.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
    return response
