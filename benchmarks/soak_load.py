"""The soak's load: a plan of create -> login -> write -> delete cycles, the bad requests and
wrong-password deletes thrown in, and the clients that run it, recording every answer.

Every request goes over a fresh ``http.client`` connection (as a CI job's client would open one) and
carries an ``X-Request-ID`` of ours, so that any answer can be found again in the server's log.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import psycopg

from .measure import create_body

# A cold docker create may wait for its container; the server's own ready_timeout is 60 s.
REQUEST_TIMEOUT = 180
# A delete right after our session closed may find it not yet gone server-side (409).
DELETE_RETRIES = 3


@dataclass(frozen=True)
class BadRequest:
    """A request that must be refused: its status, and the field ``errors`` must name (None: a
    body that is no JSON object, whose answer names no field)."""

    status: int
    field: str | None
    # What to send, given the live instance of the cycle: (method, path, body).
    build: Callable[[dict, str], tuple[str, str, bytes]]


def _create_body(backend: str, overrides: dict | None = None) -> dict:
    """A create of ``backend`` with names of its own; ``overrides`` replace fields (None: leaves one out)."""
    body = create_body("soakbad", backend)
    body.update(overrides or {})
    return {k: v for k, v in body.items() if v is not None}


def _post(**overrides: object) -> Callable[[dict, str], tuple[str, str, bytes]]:
    return lambda live, backend: (
        "POST",
        "/postgraas_instances",
        json.dumps(_create_body(backend, overrides)).encode(),
    )


# Every kind is sent against the cycle's backend while its instance lives, so that a refusal that
# did touch something (the name index, a pooled row) shows at the end.
BAD_REQUESTS: dict[str, BadRequest] = {
    "name_invalid": BadRequest(400, "postgraas_instance_name", _post(postgraas_instance_name="bad name")),
    "db_name_missing": BadRequest(400, "db_name", _post(db_name=None)),
    "db_name_reserved": BadRequest(400, "db_name", _post(db_name="template0")),
    "db_username_reserved": BadRequest(422, "db_username", _post(db_username="postgres")),
    "ttl_invalid": BadRequest(400, "ttl", _post(ttl="soon")),
    "backend_unknown": BadRequest(400, "backend", _post(backend="nosuchbackend")),
    "db_pwd_not_string": BadRequest(400, "db_pwd", _post(db_pwd=12345)),
    "secret_in_query": BadRequest(
        400,
        "db_pwd",
        lambda live, backend: (
            "POST",
            "/postgraas_instances?db_pwd=in-the-url",
            json.dumps(_create_body(backend)).encode(),
        ),
    ),
    "name_taken": BadRequest(
        409,
        "postgraas_instance_name",
        lambda live, backend: (
            "POST",
            "/postgraas_instances",
            json.dumps(_create_body(backend, {"postgraas_instance_name": live["postgraas_instance_name"]})).encode(),
        ),
    ),
    "delete_db_pwd_missing": BadRequest(
        400, "db_pwd", lambda live, backend: ("DELETE", f"/postgraas_instances/{live['postgraas_instance_id']}", b"{}")
    ),
    "body_not_json": BadRequest(400, None, lambda live, backend: ("POST", "/postgraas_instances", b'{"db_name": ')),
    "body_not_object": BadRequest(400, None, lambda live, backend: ("POST", "/postgraas_instances", b"[1, 2]")),
}


@dataclass(frozen=True)
class Cycle:
    index: int
    backend: str
    # A kind of BAD_REQUESTS sent while the instance lives, or None.
    bad: str | None = None
    # The first delete goes with a wrong password (must be 401, the instance left as it was).
    wrong_password: bool = False
    # Warm-up cycles are checked like the others but left out of the figures.
    counted: bool = True


def plan(cycles: int, warmup: int, mix: dict[str, int], bad_share: float, wrong_share: float, seed: int) -> list[Cycle]:
    """Warm-up cycles round-robin over the backends, then ``cycles`` with backends drawn by weight;
    exactly round(share x cycles) of them get a bad request (the kinds in turn) or a wrong-password
    delete, at random places. The same seed gives the same plan."""
    rng = random.Random(seed)
    names = list(mix)
    out = [Cycle(i, names[i % len(names)], counted=False) for i in range(warmup)]
    backends = rng.choices(names, weights=[mix[n] for n in names], k=cycles)
    bad_at = sorted(rng.sample(range(cycles), min(cycles, round(bad_share * cycles))))
    wrong_at = set(rng.sample(range(cycles), min(cycles, round(wrong_share * cycles))))
    kinds = list(BAD_REQUESTS)
    bad_kind = {at: kinds[n % len(kinds)] for n, at in enumerate(bad_at)}
    for i in range(cycles):
        out.append(Cycle(warmup + i, backends[i], bad_kind.get(i), i in wrong_at))
    return out


@dataclass
class Answer:
    """One HTTP answer: what was asked, what came back, how long it took."""

    what: str
    method: str
    path: str
    backend: str
    status: int | None
    seconds: float
    request_id: str
    # Relative to the start of the load.
    at: float
    body: str = ""
    error: str | None = None


@dataclass
class CycleResult:
    cycle: Cycle
    instance_id: int | None = None
    create_s: float | None = None
    login_write_s: float | None = None
    delete_s: float | None = None
    bad_ok: bool | None = None
    wrong_password_ok: bool | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {**asdict(self), "cycle": asdict(self.cycle)}


class Client:
    """One of the concurrent clients; ``answers`` is shared by all (appends are atomic)."""

    def __init__(self, url: str, answers: list[Answer], started: float) -> None:
        target = urlsplit(url)
        self.host, self.port = target.hostname or "127.0.0.1", target.port or 80
        self.answers = answers
        self.started = started

    def call(
        self, what: str, method: str, path: str, body: bytes | None, backend: str
    ) -> tuple[Answer, dict | list | None]:
        request_id = f"soak-{uuid.uuid4().hex[:16]}"
        headers = {"X-Request-ID": request_id}
        if body is not None:
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)
        begun = time.perf_counter()
        answer = Answer(what, method, path.split("?")[0], backend, None, 0.0, request_id, begun - self.started)
        try:
            connection.request(method, path, body, headers)
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
            answer.status = response.status
        except (OSError, http.client.HTTPException) as e:
            answer.error = f"{type(e).__name__}: {e}"
            text = ""
        finally:
            connection.close()
        answer.seconds = time.perf_counter() - begun
        parsed = None
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        # Bodies of refusals and failures are kept for the report; a 201 holds a password.
        if answer.status is None or answer.status >= 400:
            answer.body = text[:2000]
        self.answers.append(answer)
        return answer, parsed

    def run_cycle(self, cycle: Cycle) -> CycleResult:
        result = CycleResult(cycle)
        tag = uuid.uuid4().hex[:10]
        request = create_body(f"soak-{cycle.index}", cycle.backend, tag)
        db_pwd = request["db_pwd"]
        answer, created = self.call(
            "create", "POST", "/postgraas_instances", json.dumps(request).encode(), cycle.backend
        )
        if answer.status != 201 or not isinstance(created, dict):
            result.problems.append(f"create answered {answer.status or answer.error}: {answer.body[:300]}")
            return result
        result.create_s = answer.seconds
        result.instance_id = created["postgraas_instance_id"]
        deleted = False
        try:
            begun = time.perf_counter()
            marker = self._write(created["connection_uri"], tag)
            result.login_write_s = time.perf_counter() - begun
            if cycle.bad:
                result.bad_ok = self._bad_request(cycle, created, marker, result)
            if cycle.wrong_password:
                result.wrong_password_ok = self._wrong_password(cycle, created, marker, result)
            deleted = self._delete(cycle, result, db_pwd)
        except Exception as e:  # whatever failed is the cycle's problem, reported; the instance still goes
            result.problems.append(f"{type(e).__name__}: {str(e).strip()[:300]}")
        finally:
            if not deleted:
                # Never leave our own instance behind because a step of the cycle failed.
                self._delete(cycle, result, db_pwd, force=True)
        return result

    @staticmethod
    def _write(uri: str, tag: str) -> str:
        """Log in, create a table, insert a row and read it back."""
        with psycopg.connect(uri, connect_timeout=10) as conn:
            conn.execute("create table soak (id serial primary key, tag text not null)")
            conn.execute("insert into soak (tag) values (%s)", (tag,))
            conn.commit()
            row = conn.execute("select tag from soak").fetchone()
        if row is None or row[0] != tag:
            raise ValueError(f"read back {row!r} instead of {tag!r}")
        return tag

    def _intact(self, cycle: Cycle, created: dict, marker: str, result: CycleResult, after: str) -> bool:
        """The instance is still ready, and its row is still there behind a new login."""
        answer, shown = self.call(
            "get", "GET", f"/postgraas_instances/{created['postgraas_instance_id']}", None, cycle.backend
        )
        if answer.status != 200 or not isinstance(shown, dict) or shown.get("status") != "ready":
            result.problems.append(f"after {after}: GET answered {answer.status}: {answer.body[:300] or shown}")
            return False
        with psycopg.connect(created["connection_uri"], connect_timeout=10) as conn:
            row = conn.execute("select tag from soak").fetchone()
        if row is None or row[0] != marker:
            result.problems.append(f"after {after}: read back {row!r} instead of {marker!r}")
            return False
        return True

    def _bad_request(self, cycle: Cycle, created: dict, marker: str, result: CycleResult) -> bool:
        kind = BAD_REQUESTS[cycle.bad or ""]
        method, path, body = kind.build(created, cycle.backend)
        answer, parsed = self.call(f"bad:{cycle.bad}", method, path, body, cycle.backend)
        errors = parsed.get("errors") if isinstance(parsed, dict) else None
        named = kind.field is None or (isinstance(errors, dict) and kind.field in errors)
        shaped = isinstance(parsed, dict) and parsed.get("status") == "failed" and bool(parsed.get("msg"))
        ok = answer.status == kind.status and named and shaped
        if not ok:
            result.problems.append(
                f"bad request {cycle.bad}: expected {kind.status} naming {kind.field}, got {answer.status}: "
                f"{answer.body[:300]}"
            )
        return self._intact(cycle, created, marker, result, f"bad request {cycle.bad}") and ok

    def _wrong_password(self, cycle: Cycle, created: dict, marker: str, result: CycleResult) -> bool:
        path = f"/postgraas_instances/{created['postgraas_instance_id']}"
        body = json.dumps({"db_pwd": "not-" + secrets.token_urlsafe(8)}).encode()
        answer, parsed = self.call("delete_wrong_password", "DELETE", path, body, cycle.backend)
        errors = parsed.get("errors") if isinstance(parsed, dict) else None
        ok = answer.status == 401 and isinstance(errors, dict) and "db_pwd" in errors
        if not ok:
            result.problems.append(f"wrong-password delete: expected 401, got {answer.status}: {answer.body[:300]}")
        return self._intact(cycle, created, marker, result, "a wrong-password delete") and ok

    def _delete(self, cycle: Cycle, result: CycleResult, db_pwd: str, force: bool = False) -> bool:
        path = f"/postgraas_instances/{result.instance_id}"
        begun = time.perf_counter()
        for attempt in range(DELETE_RETRIES + 1):
            # After the retries, force: our own session may linger for a moment after its close.
            forced = force or attempt == DELETE_RETRIES
            body = json.dumps({"db_pwd": db_pwd, **({"force": True} if forced else {})}).encode()
            answer, _ = self.call("delete_forced" if forced else "delete", "DELETE", path, body, cycle.backend)
            if answer.status == 200:
                result.delete_s = time.perf_counter() - begun
                return True
            if answer.status != 409 or forced:
                result.problems.append(f"delete answered {answer.status or answer.error}: {answer.body[:300]}")
                return False
            time.sleep(0.1)
        return False


@dataclass
class Load:
    """Runs a plan with ``clients`` threads; ``done`` counts the counted cycles finished."""

    url: str
    clients: int
    cycles: list[Cycle]
    answers: list[Answer] = field(default_factory=list)
    results: list[CycleResult] = field(default_factory=list)
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[int, int], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        """Blocks until every cycle ran or ``stop`` was set; interruptible (joins with a timeout)."""
        work: queue.Queue[Cycle] = queue.Queue()
        for cycle in self.cycles:
            work.put(cycle)
        self.started = time.perf_counter()
        threads = [
            threading.Thread(target=self._client, args=(work,), name=f"soak-client-{n}", daemon=True)
            for n in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        finally:
            # On Ctrl-C the clients finish (and delete) their current cycle, and take no more.
            self.stop.set()
            for thread in threads:
                thread.join(REQUEST_TIMEOUT)

    def _client(self, work: queue.Queue[Cycle]) -> None:
        client = Client(self.url, self.answers, self.started)
        total = sum(1 for c in self.cycles if c.counted)
        while not self.stop.is_set():
            try:
                cycle = work.get_nowait()
            except queue.Empty:
                return
            try:
                result = client.run_cycle(cycle)
            except Exception as e:  # a cycle that broke must still be counted, not end its client
                result = CycleResult(cycle, problems=[f"the cycle broke: {type(e).__name__}: {e}"])
            with self._lock:
                self.results.append(result)
                if cycle.counted:
                    self.done += 1
                    if self.progress:
                        self.progress(self.done, total)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
