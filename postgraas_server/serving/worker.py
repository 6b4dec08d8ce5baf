"""The gunicorn worker of `postgraas-server serve`: an event loop reads requests, a thread pool runs them.

gunicorn's gthread worker gives each new connection a thread that then reads the request blocking, with
no deadline, so a few dozen slow or idle clients stop the API. Here a request reaches a thread only once
all of it has arrived (see server.py and connection.py; docs/serving.md for what clients get).

The gunicorn application may carry ``serving_limits`` (a Limits); without it the defaults of
application.cfg apply. ``--threads`` is the size of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
from typing import Any

from gunicorn.workers import base

from ..config import ApplicationSettings
from .limits import Limits
from .server import HttpServer

# Descriptors kept for everything that is not a client: the meta db, logs, a backend's sockets.
SPARE_FILES = 256


class Worker(base.Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: HttpServer | None = None
        self.limits = self._limits()
        self._wake: asyncio.Event | None = None
        self._quick = False

    def init_process(self) -> None:
        # The loop first: gunicorn's init_process installs the signal handlers, ours go through the loop.
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._wake = asyncio.Event()
        raise_open_files_limit(self.limits.max_connections, self.log)
        super().init_process()

    def init_signals(self) -> None:
        assert self.loop is not None
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self.loop.add_signal_handler(signal.SIGTERM, self._stop, False)
        self.loop.add_signal_handler(signal.SIGQUIT, self._stop, True)
        self.loop.add_signal_handler(signal.SIGINT, self._stop, True)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        self.loop.add_signal_handler(signal.SIGWINCH, lambda: None)
        self.loop.add_signal_handler(signal.SIGABRT, self._abort)

    def _stop(self, quick: bool) -> None:
        """SIGTERM: finish what is in flight (graceful_timeout); SIGQUIT, SIGINT: leave at once."""
        if quick and not self._quick:
            self._quick = True
            self.cfg.worker_int(self)
        self.alive = False
        self._wake_up()

    def _abort(self) -> None:
        # The arbiter found us silent past its timeout.
        self.alive = False
        self.cfg.worker_abort(self)
        sys.exit(1)

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _answered(self) -> None:
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
            self._wake_up()

    def _limits(self) -> Limits:
        limits = getattr(self.app, "serving_limits", None)
        return limits if isinstance(limits, Limits) else Limits.from_settings(ApplicationSettings())

    def run(self) -> None:
        assert self.loop is not None
        self.server = HttpServer(
            self.wsgi,
            self.limits,
            threads=self.cfg.threads,
            multiprocess=self.cfg.workers > 1,
            on_answer=self._answered,
        )
        try:
            self.loop.run_until_complete(self._serve(self.server))
        finally:
            self.loop.close()
        if self.server.busy:
            # Pool threads are joined at interpreter exit: a create still running there would keep the
            # process alive after a quick stop, or after graceful_timeout, until the arbiter kills it.
            self.log.warning("leaving %d unfinished request(s) behind", self.server.busy)
            logging.shutdown()
            os._exit(0)

    async def _serve(self, server: HttpServer) -> None:
        assert self._wake is not None
        await server.start([listener.sock for listener in self.sockets])
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
        self.alive = False
        grace = 0.0 if self._quick else float(self.cfg.graceful_timeout)
        await server.shutdown(grace, tick=self.notify)


def raise_open_files_limit(connections: int, log: Any) -> None:
    """Raise the soft limit of open files to the hard one, so that a few thousand clients fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, connections + SPARE_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, wanted, e)
    if soft != resource.RLIM_INFINITY and soft < connections + SPARE_FILES:
        log.warning(
            "open files limit %d is below max_connections (%d) + %d: new clients may be refused",
            soft,
            connections,
            SPARE_FILES,
        )
