"""What a failed request says, in words safe for logs: why a connection failed, whether the server
can have received the request, and how long a Retry-After asks to wait."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import requests
import urllib3.exceptions


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _causes(e: BaseException) -> list[BaseException]:
    """The exception and what it wraps: requests nests urllib3's (MaxRetryError -> NewConnectionError
    -> ConnectionRefusedError) in args, .reason, __cause__ and __context__."""
    seen: list[BaseException] = []
    todo: list[object] = [e]
    while todo and len(seen) < 20:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
    return seen


def connection_reason(e: requests.RequestException) -> str:
    # The OS's words for the errno ("Connection refused"), never the exception's text: that can hold
    # the URL with its password, or a header with the token.
    for cause in _causes(e):
        if isinstance(cause, OSError) and isinstance(cause.errno, int) and isinstance(cause.strerror, str):
            return f"{cause.strerror.strip().rstrip('.')} ({type(e).__name__})"
    return type(e).__name__


def never_connected(e: requests.RequestException) -> bool:
    """True when no byte of the request can have reached the server: the connection was never made."""
    if isinstance(e, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    return any(isinstance(cause, urllib3.exceptions.NewConnectionError) for cause in _causes(e))
