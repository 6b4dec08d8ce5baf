"""The HTTP figures of benchmarks/scale.py, against the server as users run it: a page of the list,
the whole list, an item GET, a warm-pool create and a delete, a /metrics scrape, and the resident
memory of each gunicorn worker after each of them.

Reads go over one keep-alive session, as a client library would; a create and a delete each go over a
fresh ``http.client`` connection, as curl would send them (see benchmarks/measure.py)."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

from .infra import PostgraasServer, say
from .measure import create_body, wait_for_pool
from .report import Series

PAGE = 100
TIMEOUT = 300


@dataclass
class Client:
    """The server and the two tokens the figures are taken with: an owner's and an admin's."""

    server: PostgraasServer
    owner_token: str
    admin_token: str
    session: requests.Session = field(default_factory=requests.Session)

    def headers(self, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token if admin else self.owner_token}"}

    def get(self, path: str, admin: bool = False) -> requests.Response:
        return self.session.get(f"{self.server.url}{path}", headers=self.headers(admin), timeout=TIMEOUT)

    def close(self) -> None:
        self.session.close()


def _timed_gets(client: Client, path: str, n: int, admin: bool = False, budget_s: float | None = None) -> tuple:
    """``n`` GETs of ``path`` after one untimed (its answer is returned to be checked); with
    ``budget_s``, fewer (at least 3) when the first took long (a whole list of 100,000 rows)."""
    started = time.perf_counter()
    first = client.get(path, admin)
    if budget_s is not None:
        n = max(3, min(n, int(budget_s / max(time.perf_counter() - started, 1e-3))))
    series = Series()
    for _ in range(n):
        started = time.perf_counter()
        answer = client.get(path, admin)
        # The body is read by then (requests reads it whole): the time is the whole answer's.
        elapsed = time.perf_counter() - started
        if answer.status_code == 200:
            series.samples.append(elapsed)
        else:
            series.errors.append(f"GET {path} answered {answer.status_code}: {answer.text[:200]}")
    return series, first


def page(client: Client, n: int, admin: bool) -> dict:
    """``GET ?limit=100``: a page where the server pages, else (``limit`` not known yet) what it answers."""
    series, first = _timed_gets(client, f"/postgraas_instances?limit={PAGE}", n, admin, budget_s=30)
    items = len(first.json()) if first.status_code == 200 else None
    return {
        **series.as_dict(),
        "items": items,
        "limit_honoured": items is not None and items <= PAGE,
        "next_link": "next" in first.links,
        "bytes": len(first.content),
    }


def whole_list(client: Client, n: int) -> dict:
    """The unpaginated list, as an admin sees it (every owner's rows)."""
    series, first = _timed_gets(client, "/postgraas_instances", n, admin=True, budget_s=30)
    items = len(first.json()) if first.status_code == 200 else None
    return {**series.as_dict(), "items": items, "bytes": len(first.content)}


def metrics(client: Client, n: int) -> dict:
    series, first = _timed_gets(client, "/metrics", n)
    return {**series.as_dict(), "bytes": len(first.content)}


def _send(url: str, method: str, path: str, body: dict | None, headers: dict[str, str]) -> tuple[int, str, float]:
    """One request over a fresh connection: (status, body, seconds from sending it to its answer)."""
    target = urlsplit(url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=TIMEOUT)
    payload = json.dumps(body).encode() if body is not None else None
    try:
        started = time.perf_counter()
        connection.request(method, path, payload, {**headers, "Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
        return response.status, text, time.perf_counter() - started
    finally:
        connection.close()


def instances(client: Client, backend: str, runs: int, gets: int, pool_size: int, pool_timeout: float) -> dict:
    """``runs`` times: wait for a full pool, a create (POST -> 201), ``gets`` item GETs of it, its delete
    (a plain one, as a user sends it: the backend checks for open sessions first)."""
    create, item, delete = Series(), Series(), Series()
    waits = Series()
    for _ in range(runs):
        reached, waited, count = wait_for_pool(client.server, backend, pool_size, pool_timeout)
        if not reached:
            waits.errors.append(f"{count:g} of {pool_size} pooled after {waited:.0f} s")
            say(f"{backend}: the pool did not fill ({waits.errors[-1]}); this create may be a cold one")
        else:
            waits.samples.append(waited)
        body = create_body("scale", backend)
        status, text, seconds = _send(client.server.url, "POST", "/postgraas_instances", body, client.headers())
        if status != 201:
            create.errors.append(f"POST answered {status}: {text[:300]}")
            continue
        create.samples.append(seconds)
        instance_id = json.loads(text)["postgraas_instance_id"]
        # The pool's replacement is made after the answer: not while the GETs and the delete are timed.
        wait_for_pool(client.server, backend, pool_size, pool_timeout)
        for _ in range(gets):
            started = time.perf_counter()
            answer = client.get(f"/postgraas_instances/{instance_id}")
            elapsed = time.perf_counter() - started
            if answer.status_code == 200:
                item.samples.append(elapsed)
            else:
                item.errors.append(f"GET answered {answer.status_code}: {answer.text[:200]}")
        path = f"/postgraas_instances/{instance_id}"
        status, text, seconds = _send(client.server.url, "DELETE", path, {}, client.headers())
        if status == 409:
            # A session still open in it (the server's hand-over, ending): as a user would, with force.
            status, text, again = _send(client.server.url, "DELETE", path, {"force": True}, client.headers())
            seconds += again
        if status == 200:
            delete.samples.append(seconds)
        else:
            delete.errors.append(f"DELETE answered {status}: {text[:300]}")
    figures = {"create": create, "item_get": item, "delete": delete, "pool_wait": waits}
    return {key: series.as_dict() for key, series in figures.items()}


# --- the workers' memory ----------------------------------------------------------------------------------------


def worker_pids(server: PostgraasServer) -> list[int]:
    """gunicorn's workers: the children of its master, the process ``serve`` runs in."""
    if server.process is None:
        return []
    master = server.process.pid
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command may hold spaces and parentheses: the fields after the last ")" are fixed.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == master:
            pids.append(int(entry.name))
    return sorted(pids)


def resident_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def workers_memory(server: PostgraasServer) -> dict[str, float | None]:
    return {str(pid): resident_mb(pid) for pid in worker_pids(server)}
