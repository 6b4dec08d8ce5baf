"""One reaper pass of benchmarks/scale.py, timed in this process through the service's own code.

The pass is what ``postgraas-server reap --once`` runs: the app built from the server's own
configuration (no background work of its own), the lease taken, ``Reaper.run_pass``, the lease given
back. It runs against the server's meta db and backends while the server runs, as that command would
from cron; the server's own reaper loop is off (``reaper_interval`` 0) so that no pass of its lands
inside another figure. A pass reports no time of its own (only its actions, in the log and in
``postgraas_reaper_actions``), hence this.
"""

from __future__ import annotations

import cProfile
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask

from postgraas_server.app import create_app
from postgraas_server.config import settings_from_dict
from postgraas_server.models import db
from postgraas_server.service import Reaper
from postgraas_server.tokens import issue_token

LEASE_S = 300


@dataclass
class InProcess:
    app: Flask
    reaper: Reaper

    @classmethod
    def of(cls, config: dict) -> InProcess:
        settings = settings_from_dict(config)
        app = create_app(settings, background=False)
        state = app.extensions["postgraas"]
        reaper = Reaper(state.backends, settings.lifecycle, state.service.heartbeats, app.app_context)
        return cls(app, reaper)

    def issue_token(self, owner: str, admin: bool = False) -> str:
        """A token as ``postgraas-server token create`` makes one (the same function)."""
        with self.app.app_context():
            try:
                return issue_token(owner, admin=admin, max_instances=None if admin else 5000, max_ttl=None)[1]
            finally:
                db.session.remove()

    def one_pass(self, profile: Path | None = None) -> tuple[float, float, float, list[str]]:
        """Seconds of one pass, of this process's CPU during it (less moved by other load on the
        machine), seconds from its end until the removals it queued (of expired instances) had run,
        and what it did; with ``profile``, the pass's cProfile statistics go there."""
        with self.app.app_context():
            try:
                if not self.reaper.acquire(seconds=LEASE_S):
                    holder, _ = self.reaper.lease_holder()
                    raise RuntimeError(f"another reaper ({holder}) holds the lease")
                profiler = cProfile.Profile() if profile is not None else None
                started, cpu = time.perf_counter(), time.process_time()
                if profiler is not None:
                    profiler.enable()
                try:
                    report = self.reaper.run_pass(lease_seconds=LEASE_S)
                finally:
                    if profiler is not None:
                        profiler.disable()
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
                self.reaper.wait_for_removals()
                removals = time.perf_counter() - started - seconds
                self.reaper.release()
            finally:
                db.session.remove()
        if profiler is not None and profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(profile)
        return seconds, cpu, removals, report.actions

    def close(self) -> None:
        with self.app.app_context():
            db.session.remove()
            db.engine.dispose()
