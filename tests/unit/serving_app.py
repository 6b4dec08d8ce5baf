"""A tiny WSGI app for gunicorn runs of the serving worker (tests/unit/test_serving_worker.py)."""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path.startswith("/sleep/"):
        time.sleep(float(path.rsplit("/", 1)[1]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    body = json.dumps({"pid": os.getpid(), "nofile": [soft, hard], "multiprocess": environ["wsgi.multiprocess"]})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]
