"""The client's exception tree: one class per kind of answer, each knowing the HTTP status it stands for.

Messages carry what the server said, never a password or a token: they end up in CI logs.
"""

from __future__ import annotations


class PostgraasClientError(Exception):
    """Anything the client could not do."""


class ServerUnreachable(PostgraasClientError):
    """No answer at all: connection refused, DNS failure, a timeout."""


class AmbiguousName(PostgraasClientError):
    """A name that more than one visible instance has (an admin token sees every owner's)."""


class ApiError(PostgraasClientError):
    """The server answered with an error: its status, its message and its per-field reasons."""

    status: int

    def __init__(
        self,
        status: int,
        message: str,
        errors: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors or {})
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})"


class InvalidRequestError(ApiError):
    """400, 413, 422: the request itself is wrong; sending it again will not help."""


class AuthenticationError(ApiError):
    """401: a missing or invalid token, or a wrong db_pwd."""


class NotFoundError(ApiError):
    """404: no such instance (or not one this token may see)."""


class ConflictError(ApiError):
    """409: the name is taken, or the database has open sessions (delete with force)."""


class QuotaError(ApiError):
    """429: over a quota of the token (max_instances, max_ttl)."""


class BackendFailedError(ApiError):
    """502, 504: the backend failed or did not get the database ready in time."""


class UnavailableError(ApiError):
    """503: the backend cannot be reached or is full; retry_after says when to try again, if known."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: QuotaError,
    502: BackendFailedError,
    503: UnavailableError,
    504: BackendFailedError,
}


def error_for_status(status: int) -> type[ApiError]:
    return _BY_STATUS.get(status, ApiError)
