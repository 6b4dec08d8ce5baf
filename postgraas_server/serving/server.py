"""The connections of one worker process: accepted on an event loop, served by a small thread pool."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import h11

from .answers import Answer
from .connection import Connection
from .limits import Limits
from .wsgi import Endpoints, close_quietly, run_app

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger("postgraas_server.serving")

THREAD_PREFIX = "postgraas-request"
# At capacity with every request in flight, each newcomer is closed: say so once a minute, not per connection.
FULL_WARNING_EVERY = 60.0


class HttpServer:
    """Serves ``app`` on listening sockets; ``threads`` requests run at once, whatever the clients do."""

    def __init__(
        self,
        app: WSGIApplication,
        limits: Limits,
        threads: int,
        *,
        multiprocess: bool = False,
        on_answer: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.multiprocess = multiprocess
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=THREAD_PREFIX)
        # Insertion order is accept order: the oldest of equals is the one evicted.
        self.connections: dict[Connection, None] = {}
        self.servers: list[asyncio.Server] = []
        self.stopping = False
        # Requests answered so far (gunicorn's max_requests counts them).
        self.handled = 0
        self._on_answer = on_answer
        # App calls and response closes not finished yet; a stop waits for them.
        self._jobs: set[Future[Any]] = set()
        self._warned_full = -FULL_WARNING_EVERY

    async def start(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self.servers.append(await asyncio.start_server(self._accept, sock=sock))

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.stopping:
            writer.transport.abort()
            return
        if len(self.connections) >= self.limits.max_connections and not self._make_room():
            # Every connection has a request in flight: those are worth more than a newcomer.
            now = time.monotonic()
            if now - self._warned_full > FULL_WARNING_EVERY:
                self._warned_full = now
                log.warning("%d connections, each with a request in flight: new ones are closed", len(self.connections))
            writer.transport.abort()
            return
        # Zero write limits: drain() then waits until the kernel has taken the whole answer (send_timeout).
        writer.transport.set_write_buffer_limits(high=0)
        connection = Connection(self, reader, writer)
        self.connections[connection] = None
        connection.task = asyncio.get_running_loop().create_task(connection.serve())

    def _make_room(self) -> bool:
        waiting = [c for c in self.connections if c.waiting_since is not None]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.waiting_since or 0.0)
        log.debug("at %d connections: closing %s's, which waited longest", len(self.connections), victim.ends)
        self.forget(victim)
        victim.drop()
        return True

    def forget(self, connection: Connection) -> None:
        self.connections.pop(connection, None)

    async def call_app(self, request: h11.Request, body: bytes, ends: Endpoints) -> Answer:
        future = self.executor.submit(run_app, self.app, request, body, ends, self.multiprocess)
        self._track(future)
        return await asyncio.wrap_future(future)

    def answered(self, answer: Answer) -> None:
        """The answer is written (or the client is gone): count it and run its close() in a thread."""
        self.handled += 1
        if answer.close is not None:
            try:
                self._track(self.executor.submit(close_quietly, answer.close))
            except RuntimeError:  # the pool is shut down: still never on the loop
                threading.Thread(target=close_quietly, args=(answer.close,), name=f"{THREAD_PREFIX}-close").start()
        if self._on_answer is not None:
            self._on_answer()

    @property
    def busy(self) -> int:
        """App calls and response closes still running."""
        return len(self._jobs)

    def _track(self, future: Future[Any]) -> None:
        self._jobs.add(future)
        future.add_done_callback(self._jobs.discard)

    async def shutdown(self, grace: float, tick: Callable[[], None] | None = None) -> None:
        """Stop accepting; let requests in flight finish for up to ``grace`` seconds, then drop the rest.

        Idle connections are closed at once; answers written from now on say Connection: close.
        ``tick`` is called about every 0.1 s meanwhile (the worker's heartbeat).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.stopping = True
        for server in self.servers:
            server.close()
        while (self.connections or self._jobs) and loop.time() < deadline:
            for connection in [c for c in self.connections if c.idle]:
                self.forget(connection)
                connection.drop()
            if tick is not None:
                tick()
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
        left = list(self.connections)
        if left:
            log.warning("stopping: %d connection(s) still busy after %ss are dropped", len(left), grace)
        for connection in left:
            self.forget(connection)
            connection.drop()
            if connection.task is not None:
                connection.task.cancel()
        tasks = [c.task for c in left if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        # A request still running in a thread is abandoned; the caller decides whether to wait for it.
        self.executor.shutdown(wait=False, cancel_futures=True)
