"""The Python client's templates (client.templates) against a live server (local backend): one build
of concurrent ensures, clones that hold the build's rows, a failing build that leaves nothing, heartbeats
that keep a long build alive, and a waiter that builds anew after the builder died."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from postgraas_server.client import Instance, PostgraasClient, Template
from postgraas_server.client.templates import HEARTBEAT_THREAD_NAME

from .conftest import backend_config, require_local_postgres, start_local_server
from .servers import Server, start, stop_server

ROWS = 200
CALLERS = 4


def fill(database: Instance) -> None:
    with psycopg.connect(database.uri, connect_timeout=10) as conn:
        conn.execute("create table items (id serial primary key, v text)")
        conn.execute(f"insert into items (v) select 'item ' || i from generate_series(1, {ROWS}) i")


def left_on(server: Server) -> tuple[list[dict], list[dict]]:
    """The server's templates and instances (a build's builder is an instance)."""
    with PostgraasClient(server.url) as client:
        return [t.as_dict() for t in client.templates.list()], [i.as_dict() for i in client.list()]


@pytest.fixture(scope="module")
def server(request, tmp_path_factory) -> Iterator[Server]:
    server = start_local_server(request, tmp_path_factory.mktemp("client-templates"))
    yield server
    try:
        assert left_on(server) == ([], []), "templates or instances left behind"
    finally:
        stop_server(server)


@pytest.fixture
def name() -> str:
    return f"shop-{uuid.uuid4().hex[:8]}"


def test_concurrent_ensures_build_once_the_others_wait_and_clones_hold_the_rows(server, name):
    content_hash = uuid.uuid4().hex
    builds: list[Instance] = []
    waiting: set[int] = set()
    all_others_wait = threading.Event()
    lock = threading.Lock()
    start_together = threading.Barrier(CALLERS)

    def build(database: Instance) -> None:
        builds.append(database)
        # Still building while every other caller is seen waiting: they waited for this build.
        assert all_others_wait.wait(60), "the other callers did not wait"
        fill(database)

    def on_wait(template: Template) -> None:
        assert template.status == "building"
        with lock:
            waiting.add(threading.get_ident())
            if len(waiting) == CALLERS - 1:
                all_others_wait.set()

    def ensure(_: int) -> Template:
        with PostgraasClient(server.url) as client:
            start_together.wait(30)
            return client.templates.ensure_template(name, content_hash, build, build_timeout=60, on_wait=on_wait)

    with ThreadPoolExecutor(CALLERS) as pool:
        ready = list(pool.map(ensure, range(CALLERS)))

    assert len(builds) == 1
    assert len(waiting) == CALLERS - 1
    assert {(t.id, t.status, t.ref) for t in ready} == {(ready[0].id, "ready", f"{name}@{content_hash}")}
    client = PostgraasClient(server.url)
    clones = [client.create(f"{name}-clone-{n}", template=ref, ttl="10m") for n, ref in enumerate([name, ready[0].ref])]
    try:
        with psycopg.connect(clones[0].uri) as first, psycopg.connect(clones[1].uri) as second:
            assert first.execute("select current_user, count(*) from items").fetchone() == (clones[0].user, ROWS)
            first.execute("delete from items")
            first.commit()
            # A clone has its own copy.
            assert second.execute("select count(*) from items").fetchone() == (ROWS,)
        # The builder's login went with the finalize.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(builds[0].uri, connect_timeout=5).close()
    finally:
        for clone in clones:
            client.delete(clone.id, password=clone.password, force=True)
    assert "Deleted template" in client.templates.delete(ready[0].id)
    assert [t for t in client.templates.list() if t.name == name] == []


def test_a_failing_build_deletes_the_template_and_its_builders_database(server, name):
    builder: list[Instance] = []

    class MigrationFailed(Exception):
        pass

    def build(database: Instance) -> None:
        builder.append(database)
        fill(database)
        raise MigrationFailed("the migration this test is about")

    with PostgraasClient(server.url) as client:
        with pytest.raises(MigrationFailed) as raised:
            client.templates.ensure_template(name, uuid.uuid4().hex, build)
        # Deleted: the error carries no note of a delete that failed.
        assert getattr(raised.value, "__notes__", []) == []
        templates, instances = left_on(server)
        assert [t for t in templates if t["name"] == name] == []
        assert [i for i in instances if i["postgraas_instance_id"] == builder[0].id] == []
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(builder[0].uri, connect_timeout=5).close()


def test_a_build_longer_than_build_timeout_lives_on_heartbeats_and_a_dead_builders_waiter_builds_anew(
    request, tmp_path
):
    require_local_postgres()
    # The reaper every second: a build without heartbeats is given up build_timeout (10 s) after its last sign.
    backends = {"local": backend_config("local", request)}
    server = start(tmp_path, backends, lifecycle={"default_ttl": "10m", "reaper_interval": 1})
    try:
        long_name, dead_name = f"long-{uuid.uuid4().hex[:6]}", f"dead-{uuid.uuid4().hex[:6]}"

        def long_build(database: Instance) -> None:
            fill(database)
            time.sleep(14)

        def ensure_long() -> Template:
            with PostgraasClient(server.url) as client:
                return client.templates.ensure_template(long_name, "h1", long_build, build_timeout=10)

        built_by_waiter: list[Instance] = []
        waited: list[Template] = []

        def ensure_after_a_dead_builder() -> Template:
            with PostgraasClient(server.url) as client:
                # A builder that got its database and then died: no heartbeat, no finalize.
                dead = client.templates.ensure(dead_name, "h2", build_timeout=10)
                assert dead.outcome == "build"
                return client.templates.ensure_template(
                    dead_name, "h2", lambda db: (built_by_waiter.append(db), fill(db)), build_timeout=10,
                    on_wait=waited.append,
                )  # fmt: skip

        with ThreadPoolExecutor(2) as pool:
            long_future, dead_future = pool.submit(ensure_long), pool.submit(ensure_after_a_dead_builder)
            long_ready, rebuilt = long_future.result(timeout=120), dead_future.result(timeout=120)

        assert long_ready.status == "ready"
        assert HEARTBEAT_THREAD_NAME not in [t.name for t in threading.enumerate()]
        # The waiter saw the dead build fail, asked again and built it itself.
        assert waited and {t.status for t in waited} == {"building"}
        assert rebuilt.status == "ready" and len(built_by_waiter) == 1
        with PostgraasClient(server.url) as client:
            for template in (long_ready, rebuilt):
                clone = client.create(f"clone-{template.id}", template=template.ref, ttl="10m")
                with psycopg.connect(clone.uri) as conn:
                    assert conn.execute("select count(*) from items").fetchone() == (ROWS,)
                client.delete(clone.id, password=clone.password, force=True)
                client.templates.delete(template.id)
        assert left_on(server) == ([], [])
    finally:
        stop_server(server)
