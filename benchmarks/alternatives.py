"""The peers: what a user would do instead of Postgraas (docker run, testcontainers, initdb and
pg_ctl, CREATE DATABASE), each timed from the first request to the first successful query."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import psycopg
from psycopg import sql

from .infra import (
    as_postgres_user,
    container_labels,
    free_port,
    give_to_postgres,
    run_tool,
    say,
)
from .machine import settle_machine
from .report import Series

# How often the plain `docker run` peer tries to log in, as a hand-written wait loop would.
DOCKER_RUN_POLL = 0.02


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


def time_create_database(admin: psycopg.Connection, host: str, port: int, n: int, template: str = "template0") -> float:
    """What a person does by hand in an existing cluster, over an admin connection already open:
    CREATE ROLE and CREATE DATABASE (from template0, as the cluster backend does, or from
    ``template``), then a login."""
    name, password = f"bench_peer_{n}_{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    started = time.perf_counter()
    try:
        admin.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(name), sql.Literal(password)))
        admin.execute(
            sql.SQL("create database {} owner {} template {}").format(
                sql.Identifier(name), sql.Identifier(name), sql.Identifier(template)
            )
        )
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


def peers_for(
    backends: Sequence[str],
    client: docker.DockerClient | None,
    image: str,
    pg: Any,
    admin: psycopg.Connection | None,
    bin_dir: Path | None,
    homes: Path | None,
) -> dict[str, dict[str, Peer]]:
    """Per backend, the peers its figures are compared with, keyed as in the JSON's ``peers``:
    ``pg`` and ``admin``, the cluster peer's server and its admin connection; ``homes``, where the
    initdb peer makes its clusters."""
    peers: dict[str, dict[str, Peer]] = {}
    if "docker" in backends and client is not None:
        peers["docker"] = {
            "docker_run": Peer("docker run", lambda _: time_docker_run(client, image)),
            "testcontainers": Peer("testcontainers", lambda _: time_testcontainers(image)),
        }
    if "cluster" in backends and admin is not None:
        peers["cluster"] = {
            "create_database": Peer("CREATE DATABASE", lambda i: time_create_database(admin, pg.host, pg.port, i))
        }
    if "local" in backends and bin_dir is not None and homes is not None:
        peers["local"] = {"initdb_pg_ctl": Peer("initdb+pg_ctl", lambda i: time_initdb(bin_dir, homes / str(i)))}
    return peers
