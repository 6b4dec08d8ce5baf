"""A small typed client for the Postgraas REST API (requests only), used by the ``postgraas``
CLI and the pytest plugin."""

from .api import DEFAULT_URL, PostgraasClient
from .errors import (
    AmbiguousName,
    ApiError,
    AuthenticationError,
    BackendFailedError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PostgraasClientError,
    QuotaError,
    ServerUnreachable,
    UnavailableError,
)
from .instance import Instance

__all__ = [
    "DEFAULT_URL",
    "AmbiguousName",
    "ApiError",
    "AuthenticationError",
    "BackendFailedError",
    "ConflictError",
    "Instance",
    "InvalidRequestError",
    "NotFoundError",
    "PostgraasClient",
    "PostgraasClientError",
    "QuotaError",
    "ServerUnreachable",
    "UnavailableError",
]
