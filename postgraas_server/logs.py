"""Logging: one format for the whole process (text or JSON), each line tagged with its request id.

The request id lives in a context variable rather than in flask.g so that a creation going on in a
background thread logs under the id of the request that started it.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

# "-": not part of a request (the reaper, start-up).
request_id: ContextVar[str] = ContextVar("postgraas_request_id", default="-")

# A caller's X-Request-ID is kept if it is this plain; anything else could forge log lines.
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Attributes that callers pass with extra={...} and the JSON format writes out as fields.
FIELDS = ("method", "path", "route", "status", "duration_ms", "remote_addr", "instance_id")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def request_id_for(incoming: str | None) -> str:
    """The caller's id when it is a plain token, else a new one."""
    if incoming and _ACCEPTED_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any known fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        entry.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``fmt`` ("text" or "json") lines with the request id (stderr by default)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: str, fmt: str = "text") -> None:
    logging.basicConfig(level=level, handlers=[log_handler(fmt)], force=True)
