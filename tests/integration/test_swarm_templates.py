"""What only the swarm backend's templates do, on the real swarm of scripts/swarm.sh (the contract
all template backends keep is test_backend_contract_templates.py): a builder that is a container on
the manager's own engine, frozen into an image pushed to the registry, clones that are services of
it on the workers (which pull it by digest), drops that reach the registry, and nothing left by a
builder whose server is gone or by a push the registry refuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import docker.errors
import psycopg
import pytest
import requests

from postgraas_server.backends import Backend, Credentials, FrozenTemplate, build_backend
from postgraas_server.backends.docker.templates import TEMPLATE_DEPLOYMENT_LABEL, TEMPLATE_ID_LABEL
from postgraas_server.backends.swarm.templates import BUILDER_LABEL
from postgraas_server.config import settings_from_dict
from postgraas_server.errors import BackendError, InUse

from .conftest import DEPLOYMENT, RUN_ID, RUN_LABEL, backend_config, make_backend
from .databases import Creator, Made
from .servers import eventually
from .swarm_fleet import STATE_FILE, Fleet, services_of
from .template_builds import TemplateBuilds, next_template_id

ROWS = 500
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass
class Built:
    frozen: FrozenTemplate
    template_id: int
    builder: Made


def build(create: Creator) -> Built:
    """A builder made as the service makes one, filled, and frozen as the service freezes it."""
    frozen, template_id, builder = TemplateBuilds(create, ROWS).build()
    return Built(frozen, template_id, builder)


def manifest_status(fleet: Fleet, artifact: str) -> int:
    name, digest = artifact.split("/", 1)[1].split("@")
    answer = requests.get(
        f"http://{fleet.registry}/v2/{name}/manifests/{digest}", headers={"Accept": MANIFEST}, timeout=10
    )
    return answer.status_code


def manager_address() -> str:
    return str(json.loads(STATE_FILE.read_text())["manager_address"])


@pytest.fixture(scope="module")
def swarm_backend(swarm, request) -> Backend:
    return make_backend("swarm", request)


@pytest.fixture(scope="module")
def template(swarm_backend) -> Iterator[Built]:
    """One template for the module's clones (a build and a first pull on each worker take seconds)."""
    built = build(Creator(swarm_backend))
    yield built
    swarm_backend.drop_template(built.frozen.artifact)


@pytest.fixture
def create(swarm_backend, swarm) -> Iterator[Creator]:
    creator = Creator(swarm_backend)
    yield creator
    creator.cleanup()
    builders = swarm.manager_client().containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"})
    assert not builders, f"builder containers left on the manager: {[c.name for c in builders]}"


def test_the_builder_is_a_container_on_the_manager_that_goes_into_the_pushed_image(swarm, template):
    assert template.builder.ref.startswith("container:")
    assert template.builder.host == manager_address()
    artifact = template.frozen.artifact
    assert artifact.startswith(f"{swarm.registry}/postgraas/template@sha256:")
    assert manifest_status(swarm, artifact) == 200
    image = swarm.manager_client().images.get(artifact)
    assert image.labels[TEMPLATE_DEPLOYMENT_LABEL] == DEPLOYMENT
    assert image.labels[TEMPLATE_ID_LABEL] == str(template.template_id)
    # Emptied, with the instance labels: a clone's container, which inherits them, is no builder.
    assert image.labels[BUILDER_LABEL] == image.labels["postgraas.instance_id"] == ""
    with pytest.raises(docker.errors.NotFound):
        swarm.manager_client().containers.get(template.builder.ref.removeprefix("container:"))


def test_clones_run_on_both_workers_from_the_pushed_digest_and_their_tenants_own_the_data(swarm, template, create):
    on: dict[str, Made] = {}
    for _ in range(4):
        clone = create.clone(template.frozen)
        on.setdefault(swarm.worker_at(clone.host), clone)
        if len(on) == len(swarm.workers):
            break
    assert set(on) == set(swarm.workers)
    builder = template.builder.spec
    for clone in on.values():
        (service,) = services_of(swarm, clone.spec.instance_name)
        assert service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == template.frozen.artifact
        with clone.connect() as conn:
            owner = "select pg_get_userbyid(relowner) from pg_class where relname = 'items'"
            assert conn.execute(f"select count(*), ({owner}) from items").fetchone() == (ROWS, clone.spec.db_username)
            conn.execute("drop table items")
            conn.commit()
        # From another host, as a client would.
        who = swarm.client_query(clone.host, clone.port, clone.spec.db_username, clone.spec.db_pwd,
                                 clone.spec.db_name, "select current_user || ' ' || current_database()")  # fmt: skip
        assert who == f"{clone.spec.db_username} {clone.spec.db_name}"
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            clone.connect(user=builder.db_username, password=builder.db_pwd, dbname=builder.db_name)


def test_a_clones_delete_without_the_password_counts_sessions_as_the_bootstrap_superuser(template, create):
    clone = create.clone(template.frozen)
    without_password = Credentials(clone.spec.db_name, clone.spec.db_username, "")
    session = clone.connect()
    try:
        with pytest.raises(InUse):
            create.backend.delete(clone.ref, without_password, instance_id=clone.spec.instance_id)
    finally:
        session.close()

    def deleted() -> bool:
        try:
            create.backend.delete(clone.ref, without_password, instance_id=clone.spec.instance_id)
        except InUse:
            return False  # the closed session's backend has not exited yet
        return True

    eventually(deleted, 10, "the delete once the session is closed")
    assert not create.backend.exists(clone.ref)


def test_drop_removes_the_managers_image_and_the_registry_manifest_and_clones_stay(swarm, create):
    built = build(create)
    clone = create.clone(built.frozen)
    assert create.backend.list_templates()[built.template_id] == built.frozen.artifact
    create.backend.drop_template(built.frozen.artifact)
    assert built.template_id not in create.backend.list_templates()
    with pytest.raises(docker.errors.ImageNotFound):
        swarm.manager_client().images.get(built.frozen.artifact)
    assert manifest_status(swarm, built.frozen.artifact) == 404
    create.backend.drop_template(built.frozen.artifact)  # idempotent
    assert clone.whoami() == clone.tenant
    # A clone of it now fails (no node can pull it), and leaves nothing.
    run = {"label": f"{RUN_LABEL}={RUN_ID}"}
    before = {s.id for s in swarm.manager_client().services.list(filters=run)}
    with pytest.raises(BackendError, match="stopped before its database was ready"):
        create.clone(built.frozen)
    assert {s.id for s in swarm.manager_client().services.list(filters=run)} == before


def test_another_deployments_pushed_template_is_left_alone(swarm, request, create):
    settings = settings_from_dict({"backends": {"swarm": backend_config("swarm", request)}})
    theirs = Creator(build_backend(settings.backends["swarm"], f"other-{RUN_ID}"))
    built = build(theirs)
    try:
        assert built.template_id not in create.backend.list_templates()
        with pytest.raises(BackendError, match="no template of this deployment"):
            create.backend.drop_template(built.frozen.artifact)
        # Without the manager's copy, the registry's own labels tell whose it is.
        swarm.manager_client().images.remove(built.frozen.artifact, force=True)
        with pytest.raises(BackendError, match="no template of this deployment"):
            create.backend.drop_template(built.frozen.artifact)
        assert manifest_status(swarm, built.frozen.artifact) == 200
    finally:
        theirs.backend.drop_template(built.frozen.artifact)
    assert manifest_status(swarm, built.frozen.artifact) == 404


def test_an_orphaned_builder_is_found_by_list_objects_and_removed_by_its_ref(request, create):
    builder = create(template_builder=True)
    # Another server process, which knows nothing of it but what the manager's engine tells.
    reaper = make_backend("swarm", request)
    (found,) = [o for o in reaper.list_objects() if o.ref == builder.ref]
    assert (found.instance_id, found.name, found.port) == (builder.spec.instance_id, builder.spec.instance_name,
                                                          builder.port)  # fmt: skip
    described = reaper.describe(builder.ref)
    assert (described.state, described.host, described.port) == ("running", builder.host, builder.port)
    reaper.delete(found.ref, found.credentials, instance_id=found.instance_id, force=True)
    assert not reaper.exists(builder.ref) and reaper.describe(builder.ref).state == "missing"
    assert builder.ref not in {o.ref for o in reaper.list_objects()}
    create.made.remove(builder)


def test_a_service_cannot_be_frozen(create):
    db = create()
    with pytest.raises(BackendError, match="only a template's builder can"):
        create.backend.freeze(db.ref, replace(db.spec.credentials, db_pwd=""), template_id=next_template_id())
    assert db.whoami() == db.tenant


def test_a_push_the_registry_refuses_leaves_no_image_and_the_builder_running(swarm, request, create):
    builder = create(template_builder=True)
    nothing_listens = swarm.registry.rsplit(":", 1)[0] + ":5999"
    refused = make_backend("swarm", request, registry=nothing_listens)
    template_id = next_template_id()
    with pytest.raises(BackendError, match=f"registry {nothing_listens} .*refused the push"):
        refused.freeze(builder.ref, replace(builder.spec.credentials, db_pwd=""), template_id=template_id)
    labelled = f"{TEMPLATE_ID_LABEL}={template_id}"
    assert swarm.manager_client().images.list(filters={"label": labelled}) == []
    assert template_id not in create.backend.list_templates()
    # The builder runs again, its password back (on a new port, as a restarted container is).
    where = create.backend.describe(builder.ref)
    assert where.state == "running" and where.host == builder.host
    resumed = replace(builder, port=where.port)
    assert resumed.whoami() == resumed.tenant
