"""Work the service starts that outlives the request asking for it (a create with wait false)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ..logs import request_id
from ..models import db

# Where the meta-db session lives, e.g. a Flask app's app_context: the app factory provides it.
Context = Callable[[], AbstractContextManager[Any]]


class Background:
    def __init__(self, context: Context) -> None:
        self.context = context

    def run(self, name: str, task: Callable[[], None]) -> threading.Thread:
        """Run ``task`` in a thread of its own, inside ``context()``, logging under the id of the
        request that started it (and holding nothing else of it)."""
        started_by = request_id.get()

        def _task() -> None:
            request_id.set(started_by)
            with self.context():
                try:
                    task()
                finally:
                    db.session.remove()

        thread = threading.Thread(target=_task, daemon=True, name=name)
        thread.start()
        return thread
