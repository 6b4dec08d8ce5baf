"""What the worker writes back: the app's answer as collected, or one of its own JSON refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

Headers = list[tuple[bytes, bytes]]


@dataclass
class Answer:
    """A whole answer, ready to be written by the event loop."""

    status: int
    reason: bytes
    headers: Headers
    body: bytes
    # The response iterable's close(): run in a pool thread once the answer is written, because Flask's
    # call_on_close callbacks do real work there (a warm-pool replacement) that must not delay the answer.
    close: Callable[[], None] | None = None
    # The connection ends after this answer (an error of the app, or of the request).
    final: bool = False


def refusal(status: int, msg: str) -> Answer:
    """An answer of the worker itself, shaped like the API's errors: {"status": "failed", "msg": ...}."""
    # Written as flask.jsonify and werkzeug write the API's own errors (compact, a newline, the reason in capitals).
    body = json.dumps({"status": "failed", "msg": msg}, separators=(",", ":")).encode() + b"\n"
    return Answer(
        status=status,
        reason=HTTPStatus(status).phrase.upper().encode("ascii"),
        headers=[(b"Content-Type", b"application/json")],
        body=body,
        final=True,
    )


def too_large(limit: int) -> Answer:
    # The API's own wording for MAX_CONTENT_LENGTH (postgraas_server/api/errors.py).
    return refusal(413, f"The request body is larger than the limit of {limit} bytes.")


INTERNAL_ERROR = "Internal server error; the server log has the details."
