"""A small typed client for the Postgraas REST API (requests only), used by the ``postgraas``
CLI and the pytest plugin."""

from .addresses import DEFAULT_URL
from .api import PostgraasClient
from .errors import (
    AmbiguousName,
    ApiError,
    AuthenticationError,
    BackendFailedError,
    ConfigurationError,
    ConflictError,
    InvalidRequestError,
    Leftover,
    NotFoundError,
    PostgraasClientError,
    QuotaError,
    ServerUnreachable,
    TemplateFailedError,
    UnavailableError,
    leftover_of,
)
from .instance import Instance
from .templates import Ensured, Template, TemplateApi

__all__ = [
    "DEFAULT_URL",
    "AmbiguousName",
    "ApiError",
    "AuthenticationError",
    "BackendFailedError",
    "ConfigurationError",
    "ConflictError",
    "Ensured",
    "Instance",
    "InvalidRequestError",
    "Leftover",
    "NotFoundError",
    "PostgraasClient",
    "PostgraasClientError",
    "QuotaError",
    "ServerUnreachable",
    "Template",
    "TemplateApi",
    "TemplateFailedError",
    "UnavailableError",
    "leftover_of",
]
