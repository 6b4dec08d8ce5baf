"""The timed paths: Postgraas creates (single, burst), listing, and the peers users would pick instead.

Every path is timed from the first request to the first successful ``select 1`` on the new database,
with ``time.perf_counter``; whatever a run made is removed after it, untimed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import docker
import psycopg
import requests
from psycopg import sql
from sqlalchemy import create_engine, insert

from .infra import (
    PostgraasServer,
    as_postgres_user,
    container_labels,
    free_port,
    give_to_postgres,
    run_tool,
    say,
)
from .report import Series

# A create may wait for a container's first start; the server's own docker ready_timeout is 60 s.
CREATE_TIMEOUT = 180
# How often the plain `docker run` peer tries to log in, as a hand-written wait loop would.
DOCKER_RUN_POLL = 0.02


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

    @property
    def post_to_201(self) -> float | None:
        return None if self.answered is None or self.error else self.answered - self.started

    @property
    def post_to_query(self) -> float | None:
        return None if self.queried is None or self.error else self.queried - self.started

    @property
    def finished(self) -> float:
        return self.queried or self.answered or self.started


def create_and_query(url: str, backend: str, durability: Durability, start: threading.Barrier | None = None) -> Created:
    """POST a create, then log in to what it returned and run ``select 1``; the caller deletes it."""
    tag = uuid.uuid4().hex[:10]
    db_pwd = secrets.token_urlsafe(18)
    body = {
        "postgraas_instance_name": f"bench-{tag}",
        "db_name": f"db_{tag}",
        "db_username": f"u_{tag}",
        "db_pwd": db_pwd,
        "backend": backend,
        **durability.fields(),
    }
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
        return create_and_query(url, backend, durability)
    if response.status != 201:
        return Created(started, answered, error=f"POST answered {response.status}: {text[:300]}")
    created = json.loads(text)
    durability.saw(created)
    result = Created(started, answered, instance_id=created["postgraas_instance_id"], db_pwd=db_pwd)
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
    started = time.perf_counter()
    count = 0.0
    while True:
        try:
            count = server.gauge("postgraas_instances", backend=backend, status="pooled")
        except requests.RequestException:
            pass
        if count >= size:
            return True, time.perf_counter() - started, count
        if time.perf_counter() - started > timeout:
            return False, time.perf_counter() - started, count
        time.sleep(0.05)


# The machine is quiet when, in each of two windows in a row, its block devices wrote less than
# QUIET_BYTES and its CPUs were busy less than QUIET_CPU of the time.
QUIET_BYTES = 1 << 20
QUIET_CPU = 0.3
QUIET_WINDOW_S = 0.25


def settle_machine(max_wait: float = 20.0) -> None:
    """Each path, and each run of one, starts on a quiet machine: what came before left to write
    back or to clean up (20 removed containers the engine still collects, the previous run's
    delete, a pool's refill) would otherwise slow what is timed, on 2 cores. A sync, then a wait
    (``max_wait`` at most) until the block devices stop writing and the CPUs are mostly idle."""
    os.sync()
    deadline = time.monotonic() + max_wait
    quiet, last_bytes, last_cpu = 0, _bytes_written(), _cpu_times()
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(QUIET_WINDOW_S)
        now_bytes, now_cpu = _bytes_written(), _cpu_times()
        busy = now_cpu[0] - last_cpu[0]
        total = busy + now_cpu[1] - last_cpu[1]
        calm = now_bytes - last_bytes < QUIET_BYTES and (total == 0 or busy / total < QUIET_CPU)
        quiet = quiet + 1 if calm else 0
        last_bytes, last_cpu = now_bytes, now_cpu


def time_file_creates(root: Path, count: int = 500) -> float:
    """Seconds to create ``count`` small files in ``root`` (then removed, untimed): how fast this
    disk's file system makes files now. A local instance is a copy of about 1,270 files, so this moves the
    local backend's cold path; on a virtual disk it varies with what was written before."""
    scratch = root / f"file-probe-{secrets.token_hex(3)}"
    scratch.mkdir()
    try:
        started = time.perf_counter()
        for n in range(count):
            (scratch / str(n)).write_bytes(b"x")
        return time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def time_cpu(rounds: int = 20) -> float:
    """Seconds one PBKDF2-SHA256 of 4096 iterations takes now (median of ``rounds``): one SCRAM
    derivation, a yardstick of how fast this shared machine's CPU is at the moment."""
    taken = []
    for _ in range(rounds):
        started = time.perf_counter()
        hashlib.pbkdf2_hmac("sha256", b"yardstick", b"0123456789abcdef", 4096)
        taken.append(time.perf_counter() - started)
    return statistics.median(taken)


def _cpu_times() -> tuple[int, int]:
    """(busy, idle) jiffies of all CPUs since boot, from /proc/stat; (0, 0) where unreadable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, idle


def _bytes_written() -> int:
    """Sectors written by whole block devices since boot (/proc/diskstats), in bytes; 0 where unreadable."""
    total = 0
    try:
        lines = Path("/proc/diskstats").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        # Whole devices only (vda, sda, nvme0n1), not their partitions; no loop or ram devices.
        if len(fields) > 9 and not fields[2].startswith(("loop", "ram", "dm-")) and not _is_partition(fields[2]):
            total += int(fields[9]) * 512
    return total


def _is_partition(name: str) -> bool:
    return Path(f"/sys/class/block/{name}/partition").exists()


def measure_creates(
    server: PostgraasServer,
    backend: str,
    runs: int,
    durability: Durability,
    label: str,
    pool_size: int | None = None,
    pool_timeout: float = 120,
    alongside: Sequence[Peer] = (),
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
        created = create_and_query(server.url, backend, durability)
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


def query_as_superuser(port: int, password: str) -> None:
    """Log in as postgres on 127.0.0.1:port and run a query; OperationalError until that works."""
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", password=password, dbname="postgres", connect_timeout=5
    ) as conn:
        conn.execute("select 1").fetchone()


def time_docker_run(client: docker.DockerClient, image: str, timeout: float = 120) -> float:
    """``docker run -d -p 127.0.0.1::5432 -e POSTGRES_PASSWORD=... image``, then log in every 20 ms."""
    password = secrets.token_urlsafe(16)
    started = time.perf_counter()
    container = client.containers.run(
        image,
        detach=True,
        ports={"5432/tcp": ("127.0.0.1", None)},
        environment={"POSTGRES_PASSWORD": password},
        labels=container_labels(),
    )
    try:
        container.reload()
        port = int(container.ports["5432/tcp"][0]["HostPort"])
        last_status_check = time.perf_counter()
        while True:
            try:
                query_as_superuser(port, password)
                return time.perf_counter() - started
            except psycopg.OperationalError as e:
                now = time.perf_counter()
                if now - started > timeout:
                    raise RuntimeError(f"no login within {timeout:.0f} s: {e}") from e
                # An API call per attempt would slow the loop down; a dead container is checked twice a second.
                if now - last_status_check > 0.5:
                    container.reload()
                    last_status_check = now
                    if container.status not in ("created", "running"):
                        raise RuntimeError(f"container {container.status}: {container.logs(tail=10)!r}") from e
            time.sleep(DOCKER_RUN_POLL)
    finally:
        container.remove(force=True, v=True)


def time_testcontainers(image: str) -> float:
    """testcontainers-python's PostgresContainer with its defaults (its own exec + psql wait), then a login."""
    from testcontainers.community.postgres import PostgresContainer

    password = secrets.token_urlsafe(16)
    started = time.perf_counter()
    container = PostgresContainer(image, username="bench", password=password, dbname="bench", driver=None)
    container.with_kwargs(labels=container_labels())
    try:
        container.start()
        host, port = container.get_container_host_ip(), int(container.get_exposed_port(5432))
        with psycopg.connect(
            host=host, port=port, user="bench", password=password, dbname="bench", connect_timeout=10
        ) as conn:
            conn.execute("select 1").fetchone()
        return time.perf_counter() - started
    finally:
        container.stop()


def time_initdb(bin_dir: Path, home: Path, timeout: float = 60) -> float:
    """A bare ``initdb`` + ``pg_ctl start -w`` on its own port and socket dir, then a TCP login."""
    password = secrets.token_urlsafe(16)
    data = home / "data"
    started = time.perf_counter()
    try:
        home.mkdir(mode=0o700)
        give_to_postgres(home)
        pwfile = home / "pw"
        pwfile.write_text(password)
        give_to_postgres(pwfile)
        run_tool(
            as_postgres_user(
                [bin_dir / "initdb", "-D", data, "-U", "postgres", f"--pwfile={pwfile}", "--auth=scram-sha-256"]
            ),
            "initdb",
        )
        port = free_port()
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
        run_tool(
            as_postgres_user([bin_dir / "pg_ctl", "-D", data, "-l", home / "log", "-o", options, "-w", "start"]),
            "pg_ctl start",
            start_new_session=True,
        )
        while True:
            try:
                query_as_superuser(port, password)
                return time.perf_counter() - started
            except psycopg.OperationalError as e:
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(f"no login within {timeout:.0f} s: {e}") from e
                time.sleep(0.02)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                as_postgres_user([bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(home, ignore_errors=True)


def time_create_database(admin: psycopg.Connection, host: str, port: int, n: int) -> float:
    """What a person does by hand in an existing cluster, over an admin connection already open:
    CREATE ROLE and CREATE DATABASE (from template0, as the cluster backend does), then a login."""
    name, password = f"bench_peer_{n}_{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    started = time.perf_counter()
    try:
        admin.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(name), sql.Literal(password)))
        admin.execute(sql.SQL("create database {} owner {} template template0").format(*[sql.Identifier(name)] * 2))
        with psycopg.connect(
            host=host, port=port, user=name, password=password, dbname=name, connect_timeout=5
        ) as conn:
            conn.execute("select 1").fetchone()
        return time.perf_counter() - started
    finally:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


@dataclass
class Peer:
    """What a user would do instead of a Postgraas path, one attempt at a time."""

    name: str
    attempt: Callable[[int], float]
    series: Series = field(default_factory=Series)

    @property
    def measured(self) -> bool:
        return bool(self.series.samples or self.series.errors)

    def take(self, i: int, runs: int) -> None:
        settle_machine(max_wait=3.0)
        try:
            self.series.samples.append(self.attempt(i))
            say(f"peer {self.name} {i + 1}/{runs}: {self.series.samples[-1]:.3f} s")
        except Exception as e:  # one failed run is a failure to count, not the end of the benchmark
            self.series.errors.append(f"{type(e).__name__}: {e}")
            say(f"peer {self.name} {i + 1}/{runs}: {self.series.errors[-1]}")


def measure_peer(peer: Peer, runs: int) -> dict:
    settle_machine()
    for i in range(runs):
        peer.take(i, runs)
    return peer.series.as_dict()
