"""The client's exception tree: one class per kind of answer, each knowing the HTTP status it stands for.

Messages carry what the server said, never a password or a token: they end up in CI logs.
"""

from __future__ import annotations

from dataclasses import dataclass

LEFTOVER_ATTRIBUTE = "postgraas_leftover"


class PostgraasClientError(Exception):
    """Anything the client could not do."""


class ConfigurationError(PostgraasClientError, ValueError):
    """A server URL or token the client cannot use; the message never repeats the value (it may hold a secret)."""


class ServerUnreachable(PostgraasClientError):
    """No answer at all: connection refused, DNS failure, a timeout.

    ``maybe_received``: the request may have reached the server (a timeout or a connection lost
    while waiting for the answer), as opposed to a connection that was never made."""

    def __init__(self, message: str, maybe_received: bool = False) -> None:
        super().__init__(message)
        self.maybe_received = maybe_received


class AmbiguousName(PostgraasClientError):
    """A name that more than one visible instance has (an admin token sees every owner's)."""


class TemplateFailedError(PostgraasClientError):
    """A template that did not get ready: its build failed (twice), or it took too long."""


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


@dataclass(frozen=True)
class Leftover:
    """An instance an interrupted create may have left behind, which the client could not delete."""

    name: str
    instance_id: int | None
    reason: str
    # A password the caller chose can delete it; a generated one was never shown to anybody.
    password_given: bool

    def describe(self) -> str:
        what = f"{self.name!r} (id {self.instance_id})" if self.instance_id is not None else repr(self.name)
        ref = f"id:{self.instance_id}" if self.instance_id is not None else f"name:{self.name}"
        if self.password_given:
            how = f"`postgraas delete {ref} --force` with the password you gave (or the token that created it)"
        else:
            how = (
                f"`postgraas delete {ref} --force` with the token that created it; without a token only its "
                "password deletes it, which was never shown, so the server deletes it when its ttl runs out"
            )
        reason = self.reason.rstrip(".")
        return f"The interrupted creation of {what} was not undone ({reason}); it may remain. Delete it with {how}."


def attach_leftover(error: BaseException, leftover: Leftover) -> None:
    # On the exception itself, so that a KeyboardInterrupt stays one; the note shows in tracebacks.
    setattr(error, LEFTOVER_ATTRIBUTE, leftover)
    error.add_note(leftover.describe())


def leftover_of(error: BaseException) -> Leftover | None:
    leftover = getattr(error, LEFTOVER_ATTRIBUTE, None)
    return leftover if isinstance(leftover, Leftover) else None


def explain(error: BaseException) -> str:
    """The error's message, and what an interrupted create left behind, if anything."""
    leftover = leftover_of(error)
    return f"{error}\n{leftover.describe()}" if leftover else str(error)
