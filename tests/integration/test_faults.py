"""Faults the service must survive, with real components: a server killed mid-create, the
Docker engine stopped, a container removed behind our back, the meta db restarted, bursts of
parallel creates, and instances that expire."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import docker.errors
import psycopg
import pytest
import requests

from postgraas_server.backends import DatabaseSpec
from postgraas_server.backends.local import INSTANCE_PROGRAMS
from postgraas_server.backends.local.directory_processes import processes_working_in
from postgraas_server.errors import BackendError, PostgraasError

from .conftest import BACKENDS, REPO_ROOT, backend_config, make_backend
from .servers import Server, body, eventually, start, stop_server

# Fast enough for a test run; the defaults are minutes, not seconds.
# heartbeat_timeout leaves room for heartbeats that wait on SQLite's write lock under load.
FAST_REAPER = {"reaper_interval": 1, "heartbeat_timeout": 5, "orphan_grace": 5}


@pytest.fixture(scope="module")
def all_backends(request) -> dict:
    return {name: backend_config(name, request) for name in BACKENDS}


@pytest.fixture(scope="module")
def server(all_backends, tmp_path_factory):
    server = start(tmp_path_factory.mktemp("faults"), all_backends, lifecycle=FAST_REAPER)
    yield server
    stop_server(server)


def containers_named(client: docker.DockerClient, name: str) -> list:
    return client.containers.list(all=True, filters={"label": f"postgraas.name={name}"})


def local_homes_named(root: Path, name: str) -> list[Path]:
    homes = []
    for home in root.glob("*"):
        try:
            if json.loads((home / "instance.json").read_text())["name"] == name:
                homes.append(home)
        except (OSError, ValueError, KeyError):
            continue
    return homes


def kill_server(server: Server) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


@pytest.mark.parametrize("backend", ["docker", "local"])
def test_server_killed_mid_create_leaves_nothing_behind(
    backend, all_backends, docker_client, local_data_root, tmp_path, request
):
    if backend == "local":
        # A local create takes under 0.2 s, less than it takes to see it and kill the server:
        # its postgres starts 5 s late here, so that the kill lands mid-create.
        slow_bin = str(request.getfixturevalue("slow_start_bin"))
        all_backends = {**all_backends, "local": {**all_backends["local"], "bin_dir": slow_bin}}
    server = start(tmp_path, all_backends, lifecycle=FAST_REAPER)
    request = body(backend=backend)
    name = request["postgraas_instance_name"]
    threading.Thread(target=lambda: _swallow(lambda: server.post(request)), daemon=True).start()

    made: list[Path] = []

    def made_something() -> bool:
        if backend == "docker":
            return bool(containers_named(docker_client, name))
        made.extend(local_homes_named(local_data_root, name))
        return bool(made)

    eventually(made_something, 30, "the backend object appears")
    kill_server(server)

    server = start(tmp_path, all_backends, lifecycle=FAST_REAPER)
    try:

        def cleaned_up() -> bool:
            rows = [r for r in server.get().json() if r["postgraas_instance_name"] == name]
            row_ok = rows == [] or rows[0]["status"] == "failed"
            if backend == "docker":
                return row_ok and containers_named(docker_client, name) == []
            # Neither its directory nor any process working in it (initdb, postgres) is left.
            return row_ok and not made[0].exists() and _pgrep(made[0]) == []

        # A dead creation is noticed after heartbeat_timeout; the dead server's lease lapses
        # within two intervals; then one pass does it (plus a little for the removal itself).
        eventually(
            cleaned_up,
            FAST_REAPER["heartbeat_timeout"] + 3 * FAST_REAPER["reaper_interval"] + 3,
            "the killed creation is failed and its object removed",
        )
        rows = [r for r in server.get().json() if r["postgraas_instance_name"] == name]
        if rows:
            assert "creation interrupted" in rows[0]["status_detail"]
            assert server.delete(rows[0]["postgraas_instance_id"], {"db_pwd": request["db_pwd"]}).status_code == 200
    finally:
        stop_server(server)


def _swallow(call: Callable[[], object]) -> None:
    try:
        call()
    except requests.RequestException:
        pass


def test_removing_a_local_instance_ends_a_start_still_under_way(slow_start_bin, local_data_root, request):
    """A server that dies mid-create leaves its postgres starting on its own, with no
    postmaster.pid yet to stop it by: the removal ends it, so no postgres comes up afterwards in
    the directory being removed (CI saw one come up as the reaper removed it, which left it)."""
    backend = make_backend("local", request, bin_dir=str(slow_start_bin))
    tag = uuid.uuid4().hex[:8]
    spec = DatabaseSpec(990100, f"late-start-{tag}", f"db_{tag}", f"user_{tag}", "pw")
    outcome: list[BaseException | object] = []
    creating = threading.Thread(target=lambda: outcome.append(_outcome(lambda: backend.create(spec))), daemon=True)
    creating.start()

    def starting() -> bool:
        homes = local_homes_named(local_data_root, spec.instance_name)
        return bool(homes) and "postgres" in processes_working_in(homes[0], INSTANCE_PROGRAMS).values()

    eventually(starting, 30, "the (slow) start of postgres is under way")
    home = local_homes_named(local_data_root, spec.instance_name)[0]
    backend.delete(home.name, spec.credentials, instance_id=spec.instance_id, force=True)

    assert not home.exists()
    assert _pgrep(home) == []
    creating.join(15)
    # The create learns that its instance is gone, and has nothing left to clean up.
    assert isinstance(outcome[0], PostgraasError) and "directory was removed" in outcome[0].msg
    assert not home.exists()
    assert _pgrep(home) == []


def test_a_local_removal_cut_short_is_found_again_and_finished(local_data_root, request, monkeypatch):
    """A postgres that writes into the directory while it is removed cuts the removal short: the
    instance's home keeps its instance.json, so the reaper, which lists homes by it, tries again."""
    backend = make_backend("local", request)
    tag = uuid.uuid4().hex[:8]
    spec = DatabaseSpec(990101, f"cut-short-{tag}", f"db_{tag}", f"user_{tag}", "pw")
    ref = backend.create(spec).ref
    home = local_data_root / ref
    programs = backend._programs
    real_remove_tree = programs.remove_tree
    written: list[Path] = []

    def remove_tree_as_postgres_writes(path):
        real_remove_tree(path)
        if not written and Path(path) in (home, home / "data"):
            written.append(home / "data" / "postmaster.pid")
            written[0].parent.mkdir(parents=True, exist_ok=True)
            written[0].write_text("")

    monkeypatch.setattr(programs, "remove_tree", remove_tree_as_postgres_writes)
    try:
        with pytest.raises(BackendError, match="could not be removed"):
            backend.delete(ref, spec.credentials, instance_id=spec.instance_id, force=True)
        assert written and ref in [o.ref for o in backend.list_objects()]
    finally:
        monkeypatch.undo()
        backend.delete(ref, spec.credentials, instance_id=spec.instance_id, force=True)
    assert not home.exists()
    assert ref not in [o.ref for o in backend.list_objects()]
    assert _pgrep(home) == []


def _outcome(call: Callable[[], object]) -> BaseException | object:
    try:
        return call()
    except Exception as e:
        return e


def _pgrep(directory: Path) -> list[str]:
    return subprocess.run(["pgrep", "-f", str(directory)], capture_output=True, text=True).stdout.split()


def test_docker_engine_stopped_then_back(all_backends, docker_client, tmp_path):
    server = start(tmp_path, all_backends, lifecycle=FAST_REAPER)
    try:
        first_request = body(backend="docker")
        first = server.post(first_request).json()
        # Close the suite's own pooled engine connections first: dropped by a dying engine,
        # they would be collected unclosed.
        docker_client.close()
        _stop_dockerd()
        try:
            started = time.monotonic()
            refused = server.post(body(backend="docker"))
            elapsed = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            assert "Docker engine cannot be reached" in refused.json()["msg"]
            assert elapsed < 5, f"a create with the engine down took {elapsed:.1f} s"
            # Also a create that would go on in the background: refused now, not failed later.
            started = time.monotonic()
            no_wait = server.post(body(backend="docker", wait=False))
            assert no_wait.status_code == 503 and time.monotonic() - started < 5
            # Reads keep working and nothing is lost; other backends keep working.
            listed = server.get()
            assert listed.status_code == 200
            assert [r["postgraas_instance_id"] for r in listed.json()] == [first["postgraas_instance_id"]]
            item = server.get(f"/{first['postgraas_instance_id']}").json()
            assert (item["status"], item["backend_state"]) == ("ready", "unknown")
            local_request = body(backend="local")
            local = server.post(local_request)
            assert local.status_code == 201
            assert (
                server.delete(local.json()["postgraas_instance_id"], {"db_pwd": local_request["db_pwd"]}).status_code
                == 200
            )
            time.sleep(2 * FAST_REAPER["reaper_interval"])  # the reaper must not judge what it cannot see
            assert server.get(f"/{first['postgraas_instance_id']}").json()["status"] == "ready"
        finally:
            subprocess.run([REPO_ROOT / "scripts" / "ensure-docker.sh"], check=True, capture_output=True)

        # The engine is back: everything works again without a server restart, and the
        # instance made before the outage is back up by itself.
        # (Docker publishes it on a new port; the reaper records that.)
        def first_answers() -> bool:
            item = server.get(f"/{first['postgraas_instance_id']}").json()
            uri = f"postgresql://{item['db_username']}:{first_request['db_pwd']}@{item['host']}:{item['port']}/{item['db_name']}"
            try:
                with psycopg.connect(uri, connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return False

        eventually(first_answers, 60, "the instance made before the outage accepts logins again")
        assert server.get(f"/{first['postgraas_instance_id']}").json()["backend_state"] == "running"
        again_request = body(backend="docker")
        again = server.post(again_request)
        assert again.status_code == 201, again.text
        with psycopg.connect(again.json()["connection_uri"]) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        for created, req in ((again.json(), again_request), (first, first_request)):
            assert server.delete(created["postgraas_instance_id"], {"db_pwd": req["db_pwd"]}).status_code == 200
    finally:
        stop_server(server)


def _stop_dockerd() -> None:
    pids = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    assert pids, "no dockerd to stop"
    for pid in pids:
        os.kill(int(pid), signal.SIGTERM)

    def engine_gone() -> bool:
        # Gone as a process, not just refusing new connections: while it shuts down it still
        # answers on connections already open (the server's pooled ones).
        return subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode != 0

    eventually(engine_gone, 60, "dockerd stops")


def test_container_removed_behind_our_back_is_lost_and_still_deletable(server, docker_client):
    request = body(backend="docker")
    created = server.post(request).json()
    docker_client.containers.get(created["container_id"]).remove(force=True, v=True)
    path = f"/{created['postgraas_instance_id']}"
    eventually(lambda: server.get(path).json()["status"] == "lost", 10, "the instance shows lost")
    item = server.get(path).json()
    assert item["backend_state"] == "missing" and "vanished" in item["status_detail"]
    assert server.delete(created["postgraas_instance_id"], {"db_pwd": request["db_pwd"]}).status_code == 200


def test_meta_db_restart_costs_no_request(all_backends, pg_server, tmp_path):
    meta = f"meta_{uuid.uuid4().hex[:8]}"
    with pg_server.admin() as admin:
        admin.execute(f"create database {meta}")
    url = f"postgresql+psycopg://postgres:{pg_server.password}@127.0.0.1:{pg_server.port}/{meta}"
    server = start(tmp_path, {"local": all_backends["local"]}, metadb={"url": url}, lifecycle=FAST_REAPER)
    try:
        request = body()
        created = server.post(request)
        assert created.status_code == 201
        pg_server.restart()
        # The pooled connections died with the server; the next requests must not see it.
        listed = server.get()
        assert listed.status_code == 200 and len(listed.json()) == 1
        second_request = body()
        second = server.post(second_request)
        assert second.status_code == 201, second.text
        for response, req in ((created, request), (second, second_request)):
            assert server.delete(response.json()["postgraas_instance_id"], {"db_pwd": req["db_pwd"]}).status_code == 200
    finally:
        stop_server(server)
        with pg_server.admin() as admin:
            admin.execute(f"drop database {meta} with (force)")


def test_twenty_parallel_creates_and_deletes_across_backends(server, docker_client, local_data_root, pg_server):
    requests_ = [body(backend=BACKENDS[i % len(BACKENDS)]) for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        created = list(pool.map(server.post, requests_))
    assert [r.status_code for r in created] == [201] * 20, [r.text for r in created if r.status_code != 201]
    instances = [r.json() for r in created]
    # Every server of its own has a port of its own (cluster instances share their cluster's).
    own_servers = [(i["host"], i["port"]) for i in instances if i["backend"] != "cluster"]
    assert len(set(own_servers)) == len(own_servers)
    for instance in instances:
        with psycopg.connect(instance["connection_uri"]) as conn:
            assert conn.execute("select current_database()").fetchone() == (instance["db_name"],)
    with ThreadPoolExecutor(max_workers=20) as pool:
        deleted = list(
            pool.map(
                lambda pair: server.delete(pair[0]["postgraas_instance_id"], {"db_pwd": pair[1]["db_pwd"]}),
                zip(instances, requests_, strict=True),
            )
        )
    assert [r.status_code for r in deleted] == [200] * 20
    assert server.get().json() == []
    # Checked at once, before the reaper could tidy up a leak: nothing is left in any backend.
    for request in requests_:
        assert containers_named(docker_client, request["postgraas_instance_name"]) == []
        assert local_homes_named(local_data_root, request["postgraas_instance_name"]) == []
    assert not pg_server.roles() & {r["db_username"] for r in requests_}


def test_an_instance_with_a_ttl_goes_away_by_itself(server, docker_client):
    request = body(backend="docker", ttl=5)
    created = server.post(request).json()
    path = f"/{created['postgraas_instance_id']}"
    expires_at = datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    while datetime.now(UTC) < expires_at - timedelta(seconds=0.5):
        assert server.get(path).status_code == 200, "deleted before it expired"
        time.sleep(0.2)
    eventually(
        lambda: server.get(path).status_code == 404,
        2 * FAST_REAPER["reaper_interval"] + 3,
        "the expired instance is deleted within the reaper interval",
    )
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(created["container_id"])
