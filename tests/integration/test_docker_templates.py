"""What only the docker backend's templates do (the contract all template backends keep is
test_backend_contract_templates.py): a committed image that holds no secret of its builder, clones
whose tenant is the builder's role renamed, images that stay while clones use them, and nothing of
another deployment's touched."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker.errors
import psycopg
import pytest

from postgraas_server.backends import Backend, Credentials, FrozenTemplate, build_backend
from postgraas_server.backends.docker.prepared_image import ADMIN_VERIFIER_ENV, VERIFIER_ENV
from postgraas_server.backends.docker.templates import (
    TEMPLATE_DEPLOYMENT_LABEL,
    TEMPLATE_ID_LABEL,
    template_tag,
)
from postgraas_server.config import settings_from_dict
from postgraas_server.errors import BackendError, BackendTimeout

from .conftest import DEPLOYMENT, RUN_ID, RUN_LABEL, TEST_IMAGE, backend_config, make_backend
from .databases import Creator, Made
from .template_builds import TemplateBuilds, next_template_id

ROWS = 100
# Beside the table: a view and a function, which clones must carry too.
EXTRAS = (
    "create view item_count as select count(*) as n from items",
    "create function item_total() returns bigint language sql as 'select count(*) from items'",
)


class Builds(TemplateBuilds):
    """Templates built through one docker backend; its clones go first at teardown, so that each
    image (which Docker keeps while a container uses it) is removed with its template."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(Creator(backend), ROWS)

    def build(self, *statements: str) -> tuple[FrozenTemplate, int, Made]:
        return super().build(*EXTRAS, *statements)


@pytest.fixture
def builds(request) -> Iterator[Builds]:
    made = Builds(make_backend("docker", request))
    yield made
    made.cleanup()


@pytest.fixture
def elsewhere(request) -> Iterator[Builds]:
    """Builds through a docker backend of another deployment on the same engine."""
    settings = settings_from_dict({"backends": {"docker": backend_config("docker", request)}})
    made = Builds(build_backend(settings.backends["docker"], f"other-{RUN_ID}"))
    yield made
    made.cleanup()


def env_of(config: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config.get("Env") or [])


def test_the_template_image_holds_no_secret_of_the_builder(builds, docker_client):
    builder_container = builds.create()
    builder_env = env_of(docker_client.containers.get(builder_container.ref).attrs["Config"])
    builder_secrets = {builder_container.spec.db_pwd, builder_env[VERIFIER_ENV]}
    template_id = next_template_id()
    frozen = builds.freeze(builder_container, template_id, credentials=builder_container.spec.credentials)

    image = docker_client.images.get(frozen.artifact)
    assert image.id == frozen.artifact
    assert template_tag(DEPLOYMENT, template_id) in image.tags
    env = env_of(image.attrs["Config"])
    for name in (VERIFIER_ENV, ADMIN_VERIFIER_ENV, "POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB"):
        assert env.get(name) == "", name
    assert not any(secret in item for item in image.attrs["Config"]["Env"] for secret in builder_secrets)
    labels = image.labels
    assert labels[TEMPLATE_DEPLOYMENT_LABEL] == DEPLOYMENT and labels[TEMPLATE_ID_LABEL] == str(template_id)
    # The builder's instance labels are emptied: no container of the image passes for it.
    assert labels["postgraas.deployment"] == labels["postgraas.instance_id"] == ""
    # The builder's container went into the image, and a container of the image made by anyone
    # but the backend passes for no instance.
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(builder_container.ref)
    bystander = docker_client.containers.create(frozen.artifact, labels={RUN_LABEL: RUN_ID})
    try:
        assert bystander.id not in {o.ref for o in builds.backend.list_objects()}
    finally:
        bystander.remove(force=True)

    clone = builds.create.clone(frozen)
    clone_config = docker_client.containers.get(clone.ref).attrs["Config"]
    assert not any(secret in item for item in clone_config["Env"] for secret in builder_secrets)
    assert clone_config["Labels"]["postgraas.instance_id"] == str(clone.spec.instance_id)
    # Nor does the template's catalog keep a password for its role (which every clone sets anew).
    with clone.connect() as conn:
        rows = conn.execute("select rolname from pg_authid where rolpassword is not null").fetchall()
    assert rows == [(clone.spec.db_username,)]


def test_a_clones_tenant_is_the_builders_role_renamed_and_owns_everything(builds):
    frozen, _, builder = builds.build()
    clone = builds.create.clone(frozen)
    with clone.connect() as conn:
        owners = conn.execute(
            "select pg_get_userbyid(c.relowner) from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'public'"
            " union select pg_get_userbyid(proowner) from pg_proc where proname = 'item_total'"
            " union select pg_get_userbyid(datdba) from pg_database where datname = current_database()"
        ).fetchall()
        assert owners == [(clone.spec.db_username,)]
        assert conn.execute("select item_total()").fetchone() == (ROWS,)
        roles = {row[0] for row in conn.execute("select rolname from pg_roles where rolname !~ '^pg_'")}
        assert roles == {"postgres", clone.spec.db_username}
        databases = {row[0] for row in conn.execute("select datname from pg_database")}
        assert databases == {"postgres", "template0", "template1", clone.spec.db_name}
    with pytest.raises(psycopg.OperationalError):
        clone.connect(user=builder.spec.db_username, password=builder.spec.db_pwd, dbname=builder.spec.db_name)


def test_an_ephemeral_builder_leaves_durable_clones_and_a_clone_may_ask_for_ephemeral(builds):
    builder = builds.create(ephemeral=True)
    frozen = builds.freeze(builder, credentials=builder.spec.credentials)
    durable, ephemeral = builds.create.clone(frozen), builds.create.clone(frozen, ephemeral=True)
    with durable.connect() as conn:
        assert conn.execute("show fsync").fetchone() == ("on",)
    with ephemeral.connect() as conn:
        assert conn.execute("show fsync").fetchone() == ("off",)


def test_a_pooled_clone_is_claimed_like_any_pooled_instance(builds):
    frozen, _, _ = builds.build()
    tag = uuid.uuid4().hex[:8]
    pooled = builds.create.clone(
        frozen, instance_name=f"pool-{tag}", db_name=f"pool_{tag}", db_username=f"pool_{tag}", pooled=True
    )
    builds.backend.keep_ready([pooled.ref])
    claimed = builds.create.claim(pooled)
    assert claimed.whoami() == claimed.tenant
    with claimed.connect() as conn:
        assert conn.execute("select n from item_count").fetchone() == (ROWS,)
    builds.backend.keep_ready([])


def copied_up(docker_client, made, path: str) -> bool:
    """Whether the container's own layer (overlay2's upper directory, on this host) has the file at
    ``path`` (relative to PGDATA) yet. docker diff does not list a file copied up for an open alone."""
    upper = Path(docker_client.containers.get(made.ref).attrs["GraphDriver"]["Data"]["UpperDir"])
    return (upper / "var/lib/postgraas/data" / path).exists()


def test_a_pooled_clone_has_its_relations_in_its_own_layer_before_it_is_claimed(builds, docker_client):
    """The template's files are in an image layer, and the first open of each in a container copies
    it up: a clone made ahead does that then, not on the first queries of the test that claims it."""
    frozen, _, _ = builds.build()
    tag = uuid.uuid4().hex[:8]
    cold = builds.create.clone(frozen)
    with cold.connect() as conn:
        path = conn.execute("select pg_relation_filepath('items')").fetchone()[0]
    pooled = builds.create.clone(
        frozen, instance_name=f"pool-{tag}", db_name=f"pool_{tag}", db_username=f"pool_{tag}", pooled=True
    )
    assert copied_up(docker_client, pooled, path)
    # A clone made for a create opens them when its first queries do, not for the login alone.
    fresh = builds.create.clone(frozen)
    assert not copied_up(docker_client, fresh, path)


def test_a_dropped_template_stays_while_a_clone_uses_it_and_goes_once_the_clone_is_gone(builds, docker_client):
    frozen, template_id, _ = builds.build()
    clone = builds.create.clone(frozen)
    builds.backend.drop_template(frozen.artifact)
    # Docker keeps the image of a container: the clone works, and the reaper sees the image still.
    assert docker_client.images.get(frozen.artifact)
    assert builds.backend.list_templates()[template_id] == frozen.artifact
    assert clone.whoami() == clone.tenant
    builds.create.delete(clone, force=True)
    builds.create.made.remove(clone)
    builds.backend.drop_template(frozen.artifact)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(frozen.artifact)
    assert template_id not in builds.backend.list_templates()
    # A clone of a template that is gone fails, and leaves nothing.
    with pytest.raises(BackendError, match="does not exist"):
        builds.create.clone(frozen)


def test_another_deployments_templates_are_neither_listed_nor_dropped(builds, elsewhere, docker_client):
    theirs, their_id, _ = elsewhere.build()
    assert their_id not in builds.backend.list_templates()
    assert elsewhere.backend.list_templates()[their_id] == theirs.artifact
    with pytest.raises(BackendError, match="no template of this deployment"):
        builds.backend.drop_template(theirs.artifact)
    assert docker_client.images.get(theirs.artifact)
    # Nor any other image.
    with pytest.raises(BackendError, match="no template of this deployment"):
        builds.backend.drop_template(docker_client.images.get(TEST_IMAGE).id)


def test_freeze_refuses_a_container_that_is_not_this_deployments(builds, elsewhere, docker_client):
    theirs = elsewhere.create()
    with pytest.raises(BackendError, match="no instance of this deployment"):
        builds.backend.freeze(theirs.ref, theirs.spec.credentials, template_id=next_template_id())
    assert docker_client.containers.get(theirs.ref).status == "running"
    assert theirs.whoami() == theirs.tenant
    stranger = docker_client.containers.create(TEST_IMAGE, labels={RUN_LABEL: RUN_ID})
    try:
        with pytest.raises(BackendError, match="no instance of this deployment"):
            builds.backend.freeze(stranger.id, theirs.spec.credentials, template_id=next_template_id())
    finally:
        stranger.remove(force=True)
    with pytest.raises(BackendError, match="does not exist"):
        builds.backend.freeze("0" * 64, theirs.spec.credentials, template_id=next_template_id())


def test_freeze_refuses_a_builder_without_its_tenant_and_leaves_it_running(builds):
    builder = builds.create()
    missing = replace(builder.spec.credentials, db_username="nobody_here", db_pwd="")
    with pytest.raises(BackendError, match="has no tenant"):
        builds.backend.freeze(builder.ref, missing, template_id=next_template_id())
    assert builder.whoami() == builder.tenant


def test_a_failed_clone_leaves_nothing(request, builds, docker_client):
    frozen, _, _ = builds.build()
    impatient = make_backend("docker", request, ready_timeout=0.01)
    name = f"failed-{uuid.uuid4().hex[:8]}"
    with pytest.raises(BackendTimeout, match="not ready"):
        Creator(impatient).clone(frozen, instance_name=name)
    assert docker_client.containers.list(all=True, filters={"label": f"postgraas.name={name}"}) == []


def test_a_docker_backend_without_the_prepared_image_has_no_templates(request):
    plain = make_backend("docker", request, prepare_image=False)
    assert "prepare_image" in plain.why_no_template()
    with pytest.raises(BackendError, match="prepare_image"):
        plain.freeze("0" * 64, Credentials("db", "user", ""), template_id=1)
