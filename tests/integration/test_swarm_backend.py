"""What only the swarm backend does, on the real swarm of scripts/swarm.sh (three Docker engines in
network namespaces of their own): placement over the workers, logins from another host, a create
Swarm cannot place, a worker that dies, and the settings that cannot work. The contract suite runs
against it too (test_backend_contract*.py)."""

from __future__ import annotations

import psycopg
import pytest

from postgraas_server.backends import Credentials
from postgraas_server.config import ConfigError, settings_from_dict
from postgraas_server.errors import BackendUnavailable, CapacityExhausted, InUse

from .conftest import RUN_ID, RUN_LABEL, backend_config
from .databases import Made
from .servers import Server, body, eventually, start, stop_server
from .swarm_fleet import Fleet, running_containers, services_of

RUN = f"{RUN_LABEL}={RUN_ID}"


def test_creates_spread_over_both_workers_and_log_in_from_another_host(swarm, creator_for):
    create = creator_for("swarm")
    made: list[Made] = [create() for _ in range(4)]
    assert {swarm.worker_at(db.host) for db in made} == set(swarm.workers)
    for db in made:
        # psql in the client namespace, to the node's address and the task's published port.
        who = swarm.client_query(db.host, db.port, db.spec.db_username, db.spec.db_pwd, db.spec.db_name,
                                 "select current_user || ' ' || current_database()")  # fmt: skip
        assert who == f"{db.spec.db_username} {db.spec.db_name}"
    # What one tenant may take of its node is limited in the container itself.
    (container,) = running_containers(
        swarm.engine(swarm.worker_at(made[0].host)), f"postgraas.name={made[0].spec.instance_name}"
    )
    host_config = container.attrs["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"], host_config["PidsLimit"]) == (512 * 1024**2, 10**9, 256)


def test_a_create_swarm_cannot_place_is_a_503_with_swarms_reason_and_leaves_nothing(swarm, creator_for):
    # One slot of this resource per worker: the third instance fits nowhere.
    create = creator_for("swarm", slots_resource=swarm.tiny_resource, placement_timeout=4)
    first, second = create(), create()
    assert {swarm.worker_at(first.host), swarm.worker_at(second.host)} == set(swarm.workers)
    before = {s.id for s in swarm.manager_client().services.list(filters={"label": RUN})}
    with pytest.raises(CapacityExhausted) as refused:
        create()
    assert "insufficient resources on 2 nodes" in refused.value.msg
    assert refused.value.extra_headers["Retry-After"].isdigit()
    assert {s.id for s in swarm.manager_client().services.list(filters={"label": RUN})} == before


def test_a_delete_without_the_password_counts_the_sessions_as_the_images_superuser(creator_for):
    """A token's delete brings no db_pwd; the manager's API cannot run psql in the task."""
    create = creator_for("swarm")
    db = create()
    without_password = Credentials(db.spec.db_name, db.spec.db_username, "")
    session = db.connect()
    try:
        with pytest.raises(InUse):
            create.backend.delete(db.ref, without_password, instance_id=db.spec.instance_id)
    finally:
        session.close()
    # The superuser's password is this server's, derived: nobody else logs in as it.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        db.connect(user="postgres", password=db.spec.db_pwd, dbname="postgres")

    def deleted() -> bool:
        try:
            create.backend.delete(db.ref, without_password, instance_id=db.spec.instance_id)
        except InUse:
            return False  # the closed session's backend has not exited yet
        return True

    eventually(deleted, 10, "the delete once the session is closed")
    assert not create.backend.exists(db.ref)


def test_a_manager_that_is_not_a_manager_is_a_503_that_leaves_nothing(swarm, creator_for):
    worker = swarm.workers["worker1"]["base_url"]
    create = creator_for("swarm", base_url=worker)
    with pytest.raises(BackendUnavailable, match="not a Swarm manager"):
        create.backend.health()
    with pytest.raises(BackendUnavailable, match="not a Swarm manager"):
        create()
    assert not swarm.manager_client().services.list(filters={"label": RUN})


def test_a_registry_that_refuses_the_push_is_a_503_that_leaves_nothing(swarm, creator_for):
    nothing_listens = swarm.registry.rsplit(":", 1)[0] + ":5999"
    create = creator_for("swarm", registry=nothing_listens)
    with pytest.raises(BackendUnavailable, match=f"registry {nothing_listens} .*refused the push"):
        create()
    assert not swarm.manager_client().services.list(filters={"label": RUN})


def test_without_a_registry_the_image_is_used_as_it_is_and_there_is_no_pool(swarm, creator_for):
    # The nodes pull this image by its name themselves: it is what "already on each node" needs.
    create = creator_for("swarm", registry=None, prepare_image=False)
    assert "registry" in (create.backend.why_no_pool() or "")
    db = create()
    assert db.whoami() == db.tenant
    (service,) = swarm.manager_client().services.list(filters={"label": f"postgraas.name={db.spec.instance_name}"})
    assert service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith(swarm.image)


def test_a_constraint_swarm_would_not_take_is_refused_at_start(swarm, request):
    config = backend_config("swarm", request, constraints=["labels.postgraas = db"])
    with pytest.raises(ConfigError, match=r"backends.swarm.constraints.0: 'labels.postgraas = db' is not a Swarm"):
        settings_from_dict({"backends": {"swarm": config}})


@pytest.fixture
def swarm_server(swarm, request, tmp_path):
    backends = {"swarm": backend_config("swarm", request)}
    # A reaper every second, and a node down is noticed by Swarm in about 17 s.
    server = start(tmp_path, backends, default="swarm", lifecycle={"reaper_interval": 1, "default_ttl": "10m"})
    yield server
    stop_server(server)


def create_on_each_worker(server: Server, fleet: Fleet) -> dict[str, dict]:
    """An instance on each worker (Swarm spreads them; a few more creates if it has not yet)."""
    on: dict[str, dict] = {}
    for _ in range(6):
        asked = body("swarm")
        answer = server.post(asked)
        assert answer.status_code == 201, answer.text
        on.setdefault(fleet.worker_at(answer.json()["host"]), {**asked, **answer.json()})
        if len(on) == len(fleet.workers):
            return on
    raise AssertionError(f"Swarm placed six instances on {sorted(on)} only")


def test_a_worker_that_dies_makes_its_instances_lost_and_nothing_of_them_runs_when_it_returns(swarm, swarm_server):
    on = create_on_each_worker(swarm_server, swarm)
    doomed, survivor = on["worker1"], on["worker2"]
    swarm.kill_engine("worker1")
    try:
        lost = eventually(
            lambda: (got := swarm_server.get(f"/{doomed['id']}").json())["status"] == "lost" and got,
            90,
            "the instance on the dead worker marked lost",
        )
        assert "worker1" in lost["status_detail"] and "down" in lost["status_detail"]
        eventually(lambda: not services_of(swarm, doomed["postgraas_instance_name"]), 30, "its service removed")
        # The other worker's instance works on.
        kept = swarm_server.get(f"/{survivor['id']}").json()
        assert kept["status"] == "ready" and kept["backend_state"] == "running"
        answer = swarm.client_query(survivor["host"], survivor["port"], survivor["db_username"],
                                    survivor["db_pwd"], survivor["db_name"], "select 1")  # fmt: skip
        assert answer == "1"
    finally:
        swarm.start_engine("worker1")
    eventually(lambda: swarm.node_state("worker1") == "ready", 60, "worker1 back in the swarm")
    worker1 = swarm.engine("worker1")
    name = f"postgraas.name={doomed['postgraas_instance_name']}"
    # Not only stopped (an engine without live-restore stops its containers as it starts): removed,
    # storage and all, by its agent once it learnt the service is gone.
    eventually(lambda: not worker1.containers.list(all=True, filters={"label": name}), 60, "its container removed")
    for instance in on.values():
        assert swarm_server.delete(instance["id"], {"db_pwd": instance["db_pwd"], "force": True}).status_code == 200
