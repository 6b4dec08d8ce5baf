"""The timed paths of Postgraas: creates (single, burst) and listing (the peers are in peers.py).

Every path is timed from the first request to the first successful ``select 1`` on the new database,
with ``time.perf_counter``; whatever a run made is removed after it, untimed.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psycopg
import requests
from sqlalchemy import create_engine, insert

from .alternatives import Peer
from .infra import (
    PostgraasServer,
    say,
)
from .machine import settle_machine
from .report import Series

# A create may wait for a container's first start; the server's own docker ready_timeout is 60 s.
CREATE_TIMEOUT = 180


# --- Postgraas -------------------------------------------------------------------------------------------------


@dataclass
class Durability:
    """The opt-in ``durability`` field of a create, and what the server made of it."""

    requested: str | None = None
    # The server's 400 answer when it refuses the field; creates then go on without it.
    refused: str | None = None
    # Whether a 201 answer carried the field back (None: no answer yet, or not asked for).
    echoed: bool | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fields(self) -> dict:
        return {"durability": self.requested} if self.requested and not self.refused else {}

    def refuse(self, answer: str) -> None:
        with self._lock:
            if not self.refused:
                self.refused = answer
                say(f"the server refuses durability={self.requested!r}; measuring without it: {answer}")

    def saw(self, created: dict) -> None:
        if self.requested and not self.refused and self.echoed is None:
            self.echoed = created.get("durability") == self.requested
            if not self.echoed:
                say(
                    f"the server accepted durability={self.requested!r} but did not echo it back "
                    "(unknown fields are ignored): it is probably not honoured yet"
                )

    def as_dict(self) -> dict:
        return {"requested": self.requested, "refused": self.refused, "echoed": self.echoed}


@dataclass
class Created:
    started: float
    answered: float | None = None
    queried: float | None = None
    instance_id: int | None = None
    db_pwd: str = ""
    error: str | None = None
    # Where the instance runs (for a split over swarm nodes).
    host: str | None = None

    @property
    def post_to_201(self) -> float | None:
        return None if self.answered is None or self.error else self.answered - self.started

    @property
    def post_to_query(self) -> float | None:
        return None if self.queried is None or self.error else self.queried - self.started

    @property
    def finished(self) -> float:
        return self.queried or self.answered or self.started


def create_body(prefix: str, backend: str, tag: str | None = None) -> dict:
    """A create of ``backend`` whose names (``prefix``-``tag``, db_``tag``, u_``tag``; ``tag`` random
    when not given) and password no other request shares."""
    tag = tag or uuid.uuid4().hex[:10]
    return {
        "postgraas_instance_name": f"{prefix}-{tag}",
        "db_name": f"db_{tag}",
        "db_username": f"u_{tag}",
        "db_pwd": secrets.token_urlsafe(18),
        "backend": backend,
    }


def create_and_query(
    url: str,
    backend: str,
    durability: Durability,
    start: threading.Barrier | None = None,
    fields: dict | None = None,
) -> Created:
    """POST a create (with ``fields`` added to its body, e.g. a ``template``), then log in to what it
    returned and run ``select 1``; the caller deletes it."""
    body = create_body("bench", backend)
    db_pwd = body["db_pwd"]
    body.update(durability.fields(), **(fields or {}))
    payload = json.dumps(body).encode()
    target = urlsplit(url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=CREATE_TIMEOUT)
    if start is not None:
        start.wait(timeout=120)
    # From sending the POST to its answer, on a connection of its own as curl would open: a plain
    # http.client, whose own work is a few lines (requests.post added 0.6 to 2 ms here).
    started = time.perf_counter()
    try:
        connection.request("POST", "/postgraas_instances", payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return Created(started, error=f"POST failed: {e}")
    finally:
        connection.close()
    answered = time.perf_counter()
    if response.status == 400 and "durability" in body and "durability" in text:
        durability.refuse(text.strip())
        return create_and_query(url, backend, durability, fields=fields)
    if response.status != 201:
        return Created(started, answered, error=f"POST answered {response.status}: {text[:300]}")
    created = json.loads(text)
    durability.saw(created)
    result = Created(
        started, answered, instance_id=created["postgraas_instance_id"], db_pwd=db_pwd, host=created.get("host")
    )
    try:
        with psycopg.connect(created["connection_uri"], connect_timeout=10) as conn:
            conn.execute("select 1").fetchone()
    except psycopg.Error as e:
        result.error = f"first query failed: {e}"
        return result
    result.queried = time.perf_counter()
    return result


def delete_instance(url: str, created: Created) -> str | None:
    """Untimed. A 409 (a session still open, e.g. our own not yet gone server-side) is retried with force."""
    if created.instance_id is None:
        return None
    try:
        target = f"{url}/postgraas_instances/{created.instance_id}"
        response = requests.delete(target, json={"db_pwd": created.db_pwd}, timeout=CREATE_TIMEOUT)
        if response.status_code == 409:
            response = requests.delete(target, json={"db_pwd": created.db_pwd, "force": True}, timeout=CREATE_TIMEOUT)
    except requests.RequestException as e:
        return f"DELETE {created.instance_id} failed: {e}"
    return (
        None if response.ok else f"DELETE {created.instance_id} answered {response.status_code}: {response.text[:200]}"
    )


def wait_for_pool(server: PostgraasServer, backend: str, size: int, timeout: float) -> tuple[bool, float, float]:
    """Poll /metrics until the backend has ``size`` pooled instances: (reached, seconds waited, last count)."""
    return wait_for_instances(server, backend, "pooled", lambda count: count >= size, timeout)


def wait_for_instances(
    server: PostgraasServer, backend: str, status: str, reached: Callable[[float], bool], timeout: float
) -> tuple[bool, float, float]:
    """Poll /metrics until the backend's count of instances in ``status`` is ``reached``: (reached,
    seconds waited, last count). An unanswered poll counts as nothing seen yet."""
    started = time.perf_counter()
    count: float | None = None
    while True:
        try:
            count = server.gauge("postgraas_instances", backend=backend, status=status)
        except requests.RequestException:
            pass  # a busy server answering late: ask again
        if count is not None and reached(count):
            return True, time.perf_counter() - started, count
        if time.perf_counter() - started > timeout:
            return False, time.perf_counter() - started, count or 0.0
        time.sleep(0.05)


def measure_creates(
    server: PostgraasServer,
    backend: str,
    runs: int,
    durability: Durability,
    label: str,
    pool_size: int | None = None,
    pool_timeout: float = 120,
    alongside: Sequence[Peer] = (),
    fields: dict | None = None,
) -> dict:
    """``runs`` creates one after another, each deleted before the next; with a pool, each waits for it to be full.

    ``alongside``: peers taking one attempt after each run, so that a path and its peers meet the
    machine in the same state (on this disk, file creation slows down for a minute after many deletes)."""
    settle_machine()
    to_201, to_query, pool_waits = Series(), Series(), Series()
    delete_errors: list[str] = []
    # Once the pool did not fill, waiting again would only cost pool_timeout per run.
    wait_for_it = bool(pool_size)
    for i in range(runs):
        if pool_size and wait_for_it:
            reached, waited, count = wait_for_pool(server, backend, pool_size, pool_timeout)
            if reached:
                pool_waits.samples.append(waited)
            else:
                wait_for_it = False
                pool_waits.errors.append(
                    f"{backend}: {count:g} of {pool_size} pooled after {waited:.0f} s; later runs do not wait"
                )
                say(pool_waits.errors[-1])
        if i:
            settle_machine(max_wait=3.0)
        created = create_and_query(server.url, backend, durability, fields=fields)
        if created.error:
            to_201.errors.append(created.error)
            to_query.errors.append(created.error)
            say(f"{label} {i + 1}/{runs}: {created.error}")
        else:
            to_201.samples.append(created.post_to_201)
            to_query.samples.append(created.post_to_query)
            say(
                f"{label} {i + 1}/{runs}: 201 after {created.post_to_201:.3f} s, "
                f"query after {created.post_to_query:.3f} s"
            )
        if error := delete_instance(server.url, created):
            delete_errors.append(error)
        for peer in alongside:
            peer.take(i, runs)
    result = {"post_to_201": to_201.as_dict(), "post_to_query": to_query.as_dict(), "delete_errors": delete_errors}
    if pool_size:
        result["pool_wait"] = pool_waits.as_dict()
    return result


def measure_burst(server: PostgraasServer, backend: str, size: int, durability: Durability) -> dict:
    """``size`` creates at once (threads released together); wall time until the last is ready or failed."""
    settle_machine()
    barrier = threading.Barrier(size)
    pool = ThreadPoolExecutor(max_workers=size)
    try:
        results = list(pool.map(lambda _: create_and_query(server.url, backend, durability, barrier), range(size)))
    finally:
        # On Ctrl-C do not wait here for creates in flight: the cleanup stops their server, which ends them.
        pool.shutdown(wait=False, cancel_futures=True)
    per_instance = Series()
    for created in results:
        if created.error:
            per_instance.errors.append(created.error)
        else:
            per_instance.samples.append(created.post_to_query)
    wall = max(r.finished for r in results) - min(r.started for r in results)
    with ThreadPoolExecutor(max_workers=size) as pool:
        delete_errors = [e for e in pool.map(lambda c: delete_instance(server.url, c), results) if e]
    return {
        "size": size,
        "wall_s": wall,
        "failures": len(per_instance.errors),
        "per_instance": per_instance.as_dict(),
        "delete_errors": delete_errors,
    }


def fill_meta_db(sqlalchemy_url: str, backend: str, rows: int) -> None:
    """Fake ready rows straight into the meta db; no backend object exists behind them."""
    from postgraas_server.models import DBInstance

    engine = create_engine(sqlalchemy_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(DBInstance),
                [
                    {
                        "postgraas_instance_name": f"fake-{i}",
                        "db_name": f"db_{i}",
                        "username": f"user_{i}",
                        "password_hash": "not-a-hash",
                        "backend": backend,
                        "status": "ready",
                        "hostname": "127.0.0.1",
                        "port": 20000 + i % 10000,
                        "container_id": f"fake-{i}",
                    }
                    for i in range(rows)
                ],
            )
    finally:
        engine.dispose()


def measure_list(server: PostgraasServer, requests_n: int, expected_rows: int, warmup: int = 5) -> dict:
    """GET /postgraas_instances over one keep-alive session, as a client library would."""
    series = Series()
    with requests.Session() as session:
        for _ in range(max(warmup, 1)):
            answer = session.get(f"{server.url}/postgraas_instances", timeout=60)
        if answer.status_code != 200 or len(answer.json()) != expected_rows:
            raise RuntimeError(f"GET /postgraas_instances did not list {expected_rows} instances: {answer.text[:300]}")
        for _ in range(requests_n):
            started = time.perf_counter()
            answer = session.get(f"{server.url}/postgraas_instances", timeout=60)
            elapsed = time.perf_counter() - started
            if answer.status_code == 200:
                series.samples.append(elapsed)
            else:
                series.errors.append(f"GET answered {answer.status_code}: {answer.text[:200]}")
    return {"rows": expected_rows, "warmup_requests": warmup, "get": series.as_dict()}


# --- peers ----------------------------------------------------------------------------------------------------
