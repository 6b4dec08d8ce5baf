"""What the soak checks besides the answers: what every backend holds against the meta db's rows,
the workers' resident memory, the server's own counts in /metrics, and its log."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import psycopg
import requests
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import dict_row

from postgraas_server.backends.cluster.shared_access import CREATEDB_GROUP

from .infra import PostgraasServer, ThrowawayPostgres, pids_mentioning, run_filter

POOL_OWNER = "@pool"
# Logged by the service when a row becomes ready, pooled ones under their pool-<hex> names.
READY_LINE = re.compile(r"instance (\S+) \(id (\d+)\) is ready in backend (\w+)")


# --- the meta db and the backends' objects --------------------------------------------------------------------


_ROWS = (
    "select id, postgraas_instance_name, backend, status, status_detail, owner, container_id, db_name, "
    "username from db_instance order by id"
)


def meta_rows(meta_db: Path | ThrowawayPostgres) -> list[dict]:
    """Every instance row, read-only (the server goes on writing): of a SQLite file, or of the
    database "postgraas" of a throwaway server."""
    if isinstance(meta_db, Path):
        with sqlite3.connect(f"file:{meta_db}?mode=ro", uri=True, timeout=30) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(_ROWS).fetchall()]
    pg = meta_db
    with (
        psycopg.connect(host=pg.host, port=pg.port, user=pg.username, password=pg.password, dbname="postgraas") as conn,
        conn.cursor(row_factory=dict_row) as cursor,
    ):
        return list(cursor.execute(_ROWS).fetchall())


@dataclass
class ClusterBaseline:
    """The cluster's roles and databases before the run: only they may remain after it."""

    pg: ThrowawayPostgres
    roles: set[str] = field(default_factory=set)
    databases: set[str] = field(default_factory=set)

    def _admin(self) -> psycopg.Connection:
        pg = self.pg
        return psycopg.connect(
            host=pg.host, port=pg.port, user=pg.username, password=pg.password, dbname="postgres", autocommit=True
        )

    def read(self) -> tuple[set[str], set[str]]:
        with self._admin() as conn:
            roles = {r[0] for r in conn.execute("select rolname from pg_roles")}
            databases = {r[0] for r in conn.execute("select datname from pg_database")}
        # The group the backend keeps for good (tenant_createdb) is the backend's, not an instance's.
        return roles - {CREATEDB_GROUP}, databases

    def take(self) -> ClusterBaseline:
        self.roles, self.databases = self.read()
        return self

    def extra(self) -> tuple[set[str], set[str]]:
        roles, databases = self.read()
        return roles - self.roles, databases - self.databases


@dataclass
class Backends:
    """Where each configured backend keeps its objects, to count them."""

    types: dict[str, str]
    local_roots: dict[str, Path]
    docker_client: docker.DockerClient | None
    cluster: ClusterBaseline | None

    def objects(self) -> dict[str, dict[str, list[str]]]:
        """Per backend, what it holds now: refs (local directories, containers, databases) and more."""
        found: dict[str, dict[str, list[str]]] = {}
        for name, kind in self.types.items():
            if kind == "local":
                root = self.local_roots[name]
                refs = sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []
                found[name] = {"refs": refs, "postmasters": sorted(_postmaster_refs(root))}
            elif kind == "docker" and self.docker_client is not None:
                containers = self.docker_client.containers.list(all=True, filters={"label": run_filter()})
                found[name] = {"refs": sorted(c.id for c in containers)}
            elif kind == "cluster" and self.cluster is not None:
                roles, databases = self.cluster.extra()
                found[name] = {"refs": sorted(databases), "roles": sorted(roles)}
        return found


def _postmaster_refs(root: Path) -> list[str]:
    """The instance directory of each process naming ``root`` (a postmaster's -D, a copy, a pg_ctl)."""
    refs = []
    for pid in pids_mentioning(str(root)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for arg in argv:
            if arg.startswith(f"{root}/"):
                refs.append(arg[len(str(root)) + 1 :].split("/")[0])
                break
        else:
            refs.append(f"pid {pid}: {' '.join(argv)[:200]}")
    return refs


def compare(
    rows: list[dict], objects: dict[str, dict[str, list[str]]], types: dict[str, str], pooled_allowed: bool = True
) -> dict:
    """Rows and objects must match: every row a pooled one whose object exists, every object a
    pooled row's. Anything else is a leak (an object, a row) or a loss (a row without its object).
    Without ``pooled_allowed`` (the pools drained) nothing may be left at all."""
    problems: list[str] = []
    unexpected_rows = [r for r in rows if not (pooled_allowed and r["owner"] == POOL_OWNER and r["status"] == "pooled")]
    for row in unexpected_rows:
        problems.append(
            f"row left: id {row['id']} {row['postgraas_instance_name']} backend {row['backend']} "
            f"status {row['status']} ({row['status_detail'] or ''})"
        )
    pooled = [r for r in rows if r not in unexpected_rows]
    for name, held in objects.items():
        mine = [r for r in pooled if r["backend"] == name]
        if types[name] == "cluster":
            expected = {r["db_name"] for r in mine}
            roles = {r["username"] for r in mine}
            for role in sorted(set(held.get("roles", [])) - roles):
                problems.append(f"{name}: role left in the cluster: {role}")
            for role in sorted(roles - set(held.get("roles", []))):
                problems.append(f"{name}: pooled row's role missing: {role}")
        else:
            expected = {r["container_id"] for r in mine if r["container_id"]}
        refs = set(held["refs"])
        for ref in sorted(refs - expected):
            problems.append(f"{name}: object without a pooled row: {ref}")
        for ref in sorted(expected - refs):
            problems.append(f"{name}: pooled row's object missing: {ref}")
        if "postmasters" in held:
            for ref in sorted(set(held["postmasters"]) - expected):
                problems.append(f"{name}: process of no pooled instance: {ref}")
    return {
        "rows": len(rows),
        "pooled_rows": len(pooled),
        "objects": {name: len(held["refs"]) for name, held in objects.items()},
        "problems": problems,
    }


def settle(meta_db: Path | ThrowawayPostgres, pools: dict[str, int], timeout: float) -> tuple[bool, float]:
    """Wait until no row is creating or deleting and every pool holds its size: the state the
    comparison expects once the load stopped (replacements are made after the answers)."""
    started = time.monotonic()
    while True:
        rows = meta_rows(meta_db)
        busy = [r for r in rows if r["status"] in ("creating", "deleting")]
        counts = {name: sum(1 for r in rows if r["backend"] == name and r["status"] == "pooled") for name in pools}
        if not busy and all(counts[name] >= size for name, size in pools.items()):
            return True, time.monotonic() - started
        if time.monotonic() - started > timeout:
            return False, time.monotonic() - started
        time.sleep(0.5)


def drain(server: PostgraasServer, lease_seconds: float) -> tuple[int, str]:
    """After the server stopped: what its pools hold is removed as an operator would, by configuring
    them away and running one reaper pass (a creation the stopped server left is dead after 1 s)."""
    config = json.loads(server.config_path.read_text())
    for backend in config["backends"].values():
        backend["pool_size"] = 0
    config["lifecycle"] = {**config.get("lifecycle", {}), "heartbeat_timeout": 1, "orphan_grace": 1}
    server.config_path.write_text(json.dumps(config, indent=2))
    time.sleep(1.5)
    # A server stopped gracefully gives its reaper's lease back; one killed keeps it until it runs
    # out (1.5 reaper intervals): until then a pass says so and does nothing.
    deadline = time.monotonic() + lease_seconds + 30
    while True:
        reap = subprocess.run(
            [sys.executable, "-m", "postgraas_server.cli", "--config", str(server.config_path), "reap", "--once"],
            capture_output=True,
            text=True,
            cwd=server.home,
            timeout=600,
        )
        output = (reap.stdout + reap.stderr).strip()
        if reap.returncode != 0 or "holds the lease" not in output or time.monotonic() > deadline:
            return reap.returncode, output
        time.sleep(1)


# --- the workers' memory --------------------------------------------------------------------------------------


def worker_pids(master: int) -> list[int]:
    """gunicorn's workers: the children of its master."""
    children: list[int] = []
    for task in Path(f"/proc/{master}/task").glob("*"):
        try:
            children += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(children)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Every ``interval`` seconds, each worker's VmRSS with the number of counted cycles done."""

    def __init__(self, master: int, progress: Callable[[], int], interval: float = 0.5) -> None:
        self.master = master
        self.progress = progress
        self.interval = interval
        self.samples: list[dict] = []
        self.workers_seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            pids = worker_pids(self.master)
            for pid in pids:
                if pid not in self.workers_seen:
                    self.workers_seen.append(pid)
            rss = {str(pid): kb for pid in pids if (kb := rss_kb(pid)) is not None}
            self.samples.append({"t": time.perf_counter() - started, "done": self.progress(), "rss_kb": rss})
            self._stop.wait(self.interval)


def rss_growth(samples: list[dict], total: int) -> dict[str, dict]:
    """Per worker: mean VmRSS over the first and the last quarter of the counted cycles, and the growth."""
    per_worker: dict[str, dict] = {}
    pids = {pid for sample in samples for pid in sample["rss_kb"]}
    for pid in sorted(pids):
        first = [s["rss_kb"][pid] for s in samples if pid in s["rss_kb"] and s["done"] < total / 4]
        last = [s["rss_kb"][pid] for s in samples if pid in s["rss_kb"] and s["done"] >= total * 3 / 4]
        every = [s["rss_kb"][pid] for s in samples if pid in s["rss_kb"]]
        entry: dict = {"samples": len(every), "max_kb": max(every), "first_quarter_kb": None, "last_quarter_kb": None}
        if first and last:
            entry["first_quarter_kb"] = sum(first) / len(first)
            entry["last_quarter_kb"] = sum(last) / len(last)
            entry["growth"] = entry["last_quarter_kb"] / entry["first_quarter_kb"] - 1
        per_worker[pid] = entry
    return per_worker


# --- what the server says of itself ---------------------------------------------------------------------------


def metrics(server: PostgraasServer) -> dict:
    """From /metrics: answers by status, reaper actions, creates by backend and source (all workers)."""
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    out: dict[str, dict[str, float]] = {"http_by_status": {}, "reaper_actions": {}, "creates": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "postgraas_http_requests_total":
                key = labels.get("status", "?")
                out["http_by_status"][key] = out["http_by_status"].get(key, 0) + sample.value
            elif sample.name == "postgraas_reaper_actions_total" and sample.value:
                out["reaper_actions"][f"{labels.get('action')}/{labels.get('backend')}"] = sample.value
            elif sample.name == "postgraas_create_duration_seconds_count":
                out["creates"][f"{labels.get('backend')}/{labels.get('source')}"] = sample.value
    return out


def metrics_delta(before: dict, after: dict) -> dict:
    return {
        section: {
            key: value - before.get(section, {}).get(key, 0)
            for key, value in values.items()
            if value - before.get(section, {}).get(key, 0)
        }
        for section, values in after.items()
    }


def pool_made_ids(log_text: str) -> set[int]:
    """Ids of rows made ready for a pool (under pool-<hex> names): a create answered with one took it over."""
    return {int(match.group(2)) for match in READY_LINE.finditer(log_text) if match.group(1).startswith("pool-")}


def log_lines_of(log_text: str, request_id: str, limit: int = 40) -> list[str]:
    return [line for line in log_text.splitlines() if f"[{request_id}]" in line][:limit]


def log_problems(log_text: str, limit: int = 40) -> list[str]:
    """Tracebacks and ERROR lines: each worth reading even when every answer was right."""
    lines = log_text.splitlines()
    found = [n for n, line in enumerate(lines) if " ERROR " in line or line.startswith("Traceback")]
    return ["\n".join(lines[n : n + 12]) for n in found[:limit]]
