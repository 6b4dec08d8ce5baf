"""One exception tree. Each class carries its HTTP status; the API maps them to JSON in one place.

They subclass werkzeug's HTTPException so that flask-restful, which bypasses Flask's error
handlers outside TESTING mode, still sees a status code rather than answering 500.
"""

from __future__ import annotations

from werkzeug.exceptions import HTTPException


class PostgraasError(HTTPException):
    """Base of every error the service raises on purpose."""

    code = 500

    def __init__(self, msg: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(description=msg)
        self.msg = msg
        self.errors = errors or {}


class InvalidRequest(PostgraasError):
    """The request is malformed: missing, ill-typed or invalid fields (all listed at once)."""

    code = 400


class WrongPassword(PostgraasError):
    code = 401


class NotFound(PostgraasError):
    code = 404


class Conflict(PostgraasError):
    """The name is taken, or the instance is in use."""

    code = 409


class Unprocessable(PostgraasError):
    """Well-formed, but a value the service will not accept (e.g. a reserved user name)."""

    code = 422


class BackendError(PostgraasError):
    """The backend failed to provide what was asked; it cleaned up after itself."""

    code = 502


class BackendUnavailable(PostgraasError):
    """The backend (e.g. the Docker engine) cannot be reached or lacks something it needs."""

    code = 503


class BackendTimeout(PostgraasError):
    """The database did not become ready in time; it was removed again."""

    code = 504
