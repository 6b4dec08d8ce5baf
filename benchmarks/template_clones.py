"""The template paths of benchmarks/templates.py that talk to the API directly: a template made ready
(built from the schema's SQL files when this caller is the builder), clones of it timed cold and
from its pool, the hand-made ``CREATE DATABASE ... TEMPLATE`` on the cluster, and concurrent ensures."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import requests

from . import template_schema
from .alternatives import Peer, time_create_database
from .infra import PostgraasServer, ThrowawayPostgres, say
from .measure import Durability, measure_creates

WAIT_S = 600


class NoTemplates(Exception):
    """The backend answered the ensure with 400 "cannot keep templates": its rows are n/a."""


@dataclass
class Template:
    id: int
    name: str
    backend: str
    # The ensure's answer: 201 (built here), 200 (was ready) or 202 (waited for another builder).
    answered: int
    # Seconds from the ensure to ready: the build, or the wait for another's.
    seconds: float


def ensure(url: str, name: str, backend: str, pool_size: int, content_hash: str) -> requests.Response:
    body = {"name": name, "hash": content_hash, "backend": backend, "pool_size": pool_size}
    return requests.post(f"{url}/postgraas_templates", json=body, timeout=WAIT_S)


def settle(url: str, answer: requests.Response) -> dict:
    """After an ensure: build and finalize on a 201, wait on a 202; the template's last state."""
    template = answer.json()
    if answer.status_code == 201:
        try:
            with psycopg.connect(template["connection_uri"], connect_timeout=30) as conn:
                template_schema.load(conn)
        except BaseException:
            delete_template(url, template["id"])
            raise
        builder = {"instance_id": template["instance_id"], "db_pwd": template["db_pwd"]}
        answer = requests.post(f"{url}/postgraas_templates/{template['id']}/finalize", json=builder, timeout=WAIT_S)
    elif answer.status_code == 202:
        answer = wait_until_settled(url, template["id"])
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"template {template.get('name')}: {answer.status_code} {answer.text[:300].strip()}")
    return answer.json()


def wait_until_settled(url: str, template_id: int) -> requests.Response:
    """GET ?wait=ready (the server waits 300 s at most per request) until it is no longer building."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = requests.get(
            f"{url}/postgraas_templates/{template_id}", params={"wait": "ready", "timeout": 300}, timeout=WAIT_S
        )
        if answer.status_code != 200 or answer.json()["status"] not in ("building", "finalizing"):
            return answer
        if time.monotonic() > deadline:
            return answer


def make_template(url: str, name: str, backend: str, pool_size: int) -> Template:
    """A ready template of the schema; NoTemplates where the backend keeps none."""
    started = time.perf_counter()
    answer = ensure(url, name, backend, pool_size, template_schema.content_hash())
    if answer.status_code == 400 and "cannot keep templates" in answer.text:
        raise NoTemplates(answer.json().get("msg") or answer.text[:300])
    if answer.status_code not in (200, 201, 202):
        raise RuntimeError(f"ensure {name} on {backend}: {answer.status_code} {answer.text[:300]}")
    state = settle(url, answer)
    if state.get("status") != "ready":
        raise RuntimeError(f"template {name} on {backend} is {state.get('status')}: {state.get('status_detail')}")
    return Template(state["id"], name, backend, answer.status_code, time.perf_counter() - started)


def delete_template(url: str, template_id: int) -> None:
    answer = requests.delete(f"{url}/postgraas_templates/{template_id}", timeout=WAIT_S)
    if answer.status_code not in (200, 404):
        say(f"DELETE template {template_id}: {answer.status_code} {answer.text[:200]}")


def measure_clones(
    server: PostgraasServer,
    template: Template,
    runs: int,
    pool_size: int,
    pool_timeout: float,
    alongside: list[Peer] | None = None,
) -> dict:
    """Creates naming the template, one after another (each deleted before the next); with a pool,
    each waits until the backend has ``pool_size`` pooled instances (measure.wait_for_pool)."""
    label = f"{template.backend} {'pool' if pool_size else 'cold'} clone"
    return measure_creates(
        server,
        template.backend,
        runs,
        Durability(),
        label,
        pool_size=pool_size or None,
        pool_timeout=pool_timeout,
        alongside=alongside or [],
        fields={"template": template.name},
    )


def template_database(pg: ThrowawayPostgres, template_id: int) -> str:
    """The database the cluster backend froze the template into (its marker names the template's id)."""
    with psycopg.connect(host=pg.host, port=pg.port, user=pg.username, password=pg.password, dbname="postgres") as conn:
        row = conn.execute(
            "select datname from pg_database where shobj_description(oid, 'pg_database') like %s",
            (f"% template={template_id} db=%",),
        ).fetchone()
    if row is None:
        raise RuntimeError(f"no database of template {template_id} in the cluster")
    return row[0]


def hand_made_peer(pg: ThrowawayPostgres, admin: psycopg.Connection, database: str) -> Peer:
    """CREATE ROLE + CREATE DATABASE ... TEMPLATE <the template's database>, then a login."""
    return Peer(
        "CREATE DATABASE TEMPLATE",
        lambda i: time_create_database(admin, pg.host, pg.port, 1000 + i, template=database),
    )


def race(url: str, backend: str, size: int, name: str, content_hash: str) -> dict:
    """``size`` identical ensures released together; the builder builds and finalizes, the others
    wait on their template's ?wait=ready. Wall time until the last of them saw it ready."""
    barrier = threading.Barrier(size)

    def one(_: int) -> tuple[int, float, str | None]:
        barrier.wait(timeout=120)
        started = time.perf_counter()
        try:
            answer = ensure(url, name, backend, 0, content_hash)
            code = answer.status_code
            state = settle(url, answer) if code in (200, 201, 202) else {"status": answer.text[:200]}
            error = None if state.get("status") == "ready" else f"{code}: {state.get('status')}"
        except (requests.RequestException, psycopg.Error, RuntimeError) as e:
            code, error = 0, f"{type(e).__name__}: {e}"
        return code, time.perf_counter() - started, error

    with ThreadPoolExecutor(max_workers=size) as pool:
        outcomes = list(pool.map(one, range(size)))
    codes = [code for code, _, _ in outcomes]
    result = {
        "size": size,
        "answers": {str(code): codes.count(code) for code in sorted(set(codes))},
        "builds": codes.count(201),
        "all_ready_s": max(seconds for _, seconds, _ in outcomes),
        "errors": [error for _, _, error in outcomes if error],
    }
    listed = requests.get(f"{url}/postgraas_templates", timeout=WAIT_S).json()
    for template in listed:
        if template["name"] == name:
            delete_template(url, template["id"])
    say(f"{backend}: {size} concurrent ensures: {result['answers']}, all ready in {result['all_ready_s']:.2f} s")
    return result
