"""One exception tree. Each class carries its HTTP status; the API maps them to JSON in one place.

They subclass werkzeug's HTTPException so that flask-restful, which bypasses Flask's error
handlers outside TESTING mode, still sees a status code rather than answering 500.
"""

from __future__ import annotations

from werkzeug.exceptions import HTTPException


class PostgraasError(HTTPException):
    """Base of every error the service raises on purpose."""

    code = 500

    def __init__(self, msg: str, errors: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(description=msg)
        self.msg = msg
        self.errors = errors or {}
        self.extra_headers = headers or {}


class InvalidRequest(PostgraasError):
    """The request is malformed: missing, ill-typed or invalid fields (all listed at once)."""

    code = 400


class WrongPassword(PostgraasError):
    code = 401


class Unauthenticated(PostgraasError):
    """No valid bearer token (auth.mode token)."""

    code = 401

    def __init__(self, msg: str) -> None:
        super().__init__(msg, headers={"WWW-Authenticate": 'Bearer realm="postgraas"'})


class Forbidden(PostgraasError):
    """The token may not do this (an admin's filter, say)."""

    code = 403


class NotFound(PostgraasError):
    code = 404


class Conflict(PostgraasError):
    """The name is taken, or the instance is in use."""

    code = 409


class InUse(Conflict):
    """Other sessions are connected and the delete was not forced."""

    def __init__(self, sessions: int) -> None:
        # errors names "force": a client (the console) offers to end them without reading the message.
        super().__init__(
            f'The instance has {sessions} open session(s); close them or delete with "force": true to terminate them.',
            {"force": f"{sessions} open session(s); true ends them"},
        )


class Unprocessable(PostgraasError):
    """Well-formed, but a value the service will not accept (e.g. a reserved user name)."""

    code = 422


class QuotaExceeded(PostgraasError):
    """The owner's token allows no more (instances, ttl)."""

    code = 429


class BackendError(PostgraasError):
    """The backend failed to provide what was asked; it cleaned up after itself."""

    code = 502


class BackendUnavailable(PostgraasError):
    """The backend (e.g. the Docker engine) cannot be reached or lacks something it needs."""

    code = 503


class CapacityExhausted(PostgraasError):
    """The backend holds as many instances as it may; try again later."""

    code = 503

    def __init__(self, msg: str, retry_after: int = 60) -> None:
        super().__init__(msg, headers={"Retry-After": str(retry_after)})


class ServiceBusy(PostgraasError):
    """This server process answers as much of this kind as it may at once; try again shortly."""

    code = 503

    def __init__(self, msg: str, retry_after: int = 1) -> None:
        super().__init__(msg, headers={"Retry-After": str(retry_after)})


class BackendTimeout(PostgraasError):
    """The database did not become ready in time; it was removed again."""

    code = 504
