"""The docker backend's templates with a fake docker SDK client: what a freeze commits and what it
leaves out, the clone's container, drops that leave images in use and others' images alone; and
the clone wrapper itself, run by sh."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from postgraas_server.backends import Credentials, DatabaseSpec, FrozenTemplate
from postgraas_server.backends.docker import DockerBackend, templates
from postgraas_server.backends.docker.prepared_image import VERIFIER_ENV
from postgraas_server.backends.docker.templates import (
    CLONE_WRAPPER_PATH,
    TEMPLATE_DEPLOYMENT_LABEL,
    TEMPLATE_ID_LABEL,
    clone_wrapper_script,
    template_tag,
)
from postgraas_server.errors import BackendError, Conflict

from .fake_engine import IMAGE_ID, SPEC, FakeImage, backend

BUILDER = Credentials("app", "alice", "")
BUILDER_VERIFIER = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
CLONE = DatabaseSpec(8, "copy", "shop", "bob", "t0psecret")


@pytest.fixture
def made(client, logins):
    return backend(client, labels={"env": "ci"})


def _builder(client, made):
    ref = made.create(SPEC).ref
    # The tenant check finds alice's role and database, and reads her verifier; the seal succeeds.
    client.exec_results[:] = [(0, f"password:{BUILDER_VERIFIER}".encode()), (0, b"")]
    return client.containers.get(ref)


def test_freeze_commits_the_builder_without_its_secrets_and_removes_it(client, made):
    builder = _builder(client, made)
    frozen = made.freeze(builder.id, BUILDER, template_id=42)
    [commit] = builder.commits
    image = commit["image"]
    assert frozen == FrozenTemplate(image.id, BUILDER)
    assert image.tags == [template_tag("dep-1", 42)] == ["postgraas/template:dep-1-42"]
    config = commit["conf"]
    assert config["Entrypoint"] == [CLONE_WRAPPER_PATH] and config["Cmd"] == ["postgres"]
    env = dict(item.split("=", 1) for item in image.attrs["Config"]["Env"])
    for name in (VERIFIER_ENV, "POSTGRAAS_ADMIN_VERIFIER", "POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB"):
        assert env[name] == ""
    assert image.labels[TEMPLATE_DEPLOYMENT_LABEL] == "dep-1" and image.labels[TEMPLATE_ID_LABEL] == "42"
    assert image.labels["postgraas.deployment"] == image.labels["postgraas.instance_id"] == ""
    # The role's password is taken off, and the builder's durability settings reset, before the stop.
    check, seal = builder.execs
    assert "'alice'" in check[-1] and "'app'" in check[-1]
    assert any("set rolpassword = null where rolname = 'alice'" in part for part in seal)
    assert "alter system reset fsync" in seal
    [(path, archive)] = builder.archives
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        script = tar.extractfile(CLONE_WRAPPER_PATH.lstrip("/")).read().decode()
    assert script == clone_wrapper_script(BUILDER, 42)
    assert builder.removed == (True, True) and not made.exists(builder.id)


def test_an_ephemeral_builders_command_is_not_the_templates(client, made):
    builder = client.containers.get(made.create(dataclasses.replace(SPEC, ephemeral=True)).ref)
    assert builder.kwargs["command"][0] == "postgres" and len(builder.kwargs["command"]) > 1
    client.exec_results[:] = [(0, b"password:"), (0, b"")]
    made.freeze(builder.id, BUILDER, template_id=1)
    [commit] = builder.commits
    assert commit["conf"]["Cmd"] == ["postgres"]


def test_freeze_refuses_what_is_not_this_deployments_and_touches_nothing(client, made):
    other = DockerBackend(made.settings, "dep-2", client_factory=lambda: client)
    ref = other.create(SPEC).ref
    with pytest.raises(BackendError, match="no instance of this deployment"):
        made.freeze(ref, BUILDER, template_id=1)
    container = client.containers.get(ref)
    assert container.execs == [] and container.status == "running" and container.commits == []


def test_freeze_refuses_a_builder_without_its_tenant(client, made):
    builder = _builder(client, made)
    client.exec_results[:] = [(0, b"")]
    with pytest.raises(BackendError, match="has no tenant 'alice'"):
        made.freeze(builder.id, BUILDER, template_id=1)
    assert len(builder.execs) == 1 and builder.status == "running" and builder.commits == []


def test_a_freeze_whose_shutdown_is_not_clean_starts_the_builder_again_with_its_password(client, made):
    builder = _builder(client, made)
    client.stop_code = 137
    with pytest.raises(BackendError, match="did not shut down cleanly"):
        made.freeze(builder.id, BUILDER, template_id=1)
    assert builder.commits == [] and builder.removed is None
    assert builder.started == 2 and builder.status == "running"
    assert any(f"set rolpassword = '{BUILDER_VERIFIER}' where rolname = 'alice'" in p for p in builder.execs[-1])


def test_a_clone_is_a_container_of_the_template_image_with_its_own_names_and_verifier(client, made, logins):
    frozen = made.freeze(_builder(client, made).id, BUILDER, template_id=3)
    provisioned = made.clone(frozen, CLONE)
    container = client.containers.get(provisioned.ref)
    kwargs = container.kwargs
    assert kwargs["image"] == frozen.artifact
    assert set(kwargs["environment"]) == {"POSTGRES_USER", "POSTGRES_DB", VERIFIER_ENV}
    assert (kwargs["environment"]["POSTGRES_USER"], kwargs["environment"]["POSTGRES_DB"]) == ("bob", "shop")
    assert "t0psecret" not in str(kwargs["environment"])
    assert kwargs["labels"]["postgraas.instance_id"] == "8" and kwargs["labels"]["postgraas.deployment"] == "dep-1"
    assert kwargs["restart_policy"] == {"Name": "unless-stopped"}
    assert logins[-1][2] == Credentials("shop", "bob", "t0psecret")


def test_a_pooled_clone_gets_the_password_a_claim_derives(client, made, logins):
    frozen = made.freeze(_builder(client, made).id, BUILDER, template_id=3)
    made.clone(frozen, dataclasses.replace(CLONE, pooled=True))
    assert logins[-1][2].db_pwd == made._pool_password(8, "bob") != "t0psecret"


@pytest.mark.parametrize(("field", "value"), [("db_username", "postgres"), ("db_name", "template1")])
def test_a_clone_cannot_take_names_every_cluster_has(client, made, field, value):
    frozen = made.freeze(_builder(client, made).id, BUILDER, template_id=3)
    before = len(client.created)
    with pytest.raises(Conflict) as raised:
        made.clone(frozen, dataclasses.replace(CLONE, **{field: value}))
    assert field in raised.value.errors and len(client.created) == before


def test_a_clone_of_a_template_image_that_is_gone_fails(client, made):
    with pytest.raises(BackendError, match="does not exist"):
        made.clone(FrozenTemplate("sha256:" + "0" * 64, BUILDER), CLONE)


def test_drop_leaves_an_image_clones_use_until_they_are_gone(client, made):
    frozen = made.freeze(_builder(client, made).id, BUILDER, template_id=3)
    clone = made.clone(frozen, CLONE)
    made.drop_template(frozen.artifact)
    assert made.list_templates() == {3: frozen.artifact}
    made.delete(clone.ref, CLONE.credentials, instance_id=8, force=True)
    made.drop_template(frozen.artifact)
    assert made.list_templates() == {}
    made.drop_template(frozen.artifact)  # idempotent


def test_drop_refuses_other_images_and_references(client, made):
    client.images.add(FakeImage("sha256:" + "1" * 64, [], {TEMPLATE_DEPLOYMENT_LABEL: "dep-2", TEMPLATE_ID_LABEL: "3"}))
    for artifact in ("sha256:" + "1" * 64, IMAGE_ID):
        with pytest.raises(BackendError, match="no template of this deployment"):
            made.drop_template(artifact)
        assert client.images.has(artifact)
    with pytest.raises(BackendError, match="Invalid"):
        made.drop_template("postgres:16")


def test_list_templates_names_the_older_image_of_an_id_used_twice(client, made):
    labels = {TEMPLATE_DEPLOYMENT_LABEL: "dep-1", TEMPLATE_ID_LABEL: "5"}
    older = FakeImage("sha256:" + "a" * 64, [], labels)
    newer = FakeImage("sha256:" + "b" * 64, [template_tag("dep-1", 5)], labels)
    client.images.add(newer)
    client.images.add(older)
    older.created = newer.created - 10
    client.images.add(FakeImage("sha256:" + "c" * 64, [], {TEMPLATE_DEPLOYMENT_LABEL: "dep-2", TEMPLATE_ID_LABEL: "6"}))
    assert made.list_templates() == {5: older.id}


def test_a_deployment_id_a_tag_cannot_hold_gets_a_hash():
    assert template_tag("0d6f4c1e-9a7b-4c1e-8f00-123456789abc", 9) == (
        "postgraas/template:0d6f4c1e-9a7b-4c1e-8f00-123456789abc-9"
    )
    odd, other = template_tag("team a/b", 9), template_tag("team a:b", 9)
    assert odd.startswith("postgraas/template:team_a_b_") and odd != other


# -- the clone wrapper, run by sh with a stand-in for the prepared entrypoint ----------------------


@pytest.fixture
def wrapper(tmp_path, monkeypatch):
    """Run the clone wrapper of a template whose tenant has names that need quoting."""
    stand_in = tmp_path / "prepared.sh"
    # Records its arguments, and the SQL a single-user postgres would have read.
    stand_in.write_text('#!/bin/sh\necho "$*" >>"$OUT/args"\n[ "$2" != --single ] || cat >>"$OUT/sql"\n')
    stand_in.chmod(0o755)
    monkeypatch.setattr(templates, "WRAPPER_PATH", str(stand_in))
    script = tmp_path / "clone.sh"
    script.write_text(clone_wrapper_script(Credentials("tmpl db", "b'uilder", ""), 12))
    (tmp_path / "data").mkdir()

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        environment = {"PATH": os.environ["PATH"], "PGDATA": str(tmp_path / "data"), "OUT": str(tmp_path), **env}
        return subprocess.run(["sh", str(script), *args], env=environment, capture_output=True, text=True)

    return run


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_the_clone_wrapper_hands_the_tenant_over_once(wrapper, tmp_path):
    env = {"POSTGRES_USER": 'we"ird', "POSTGRES_DB": "it's", VERIFIER_ENV: BUILDER_VERIFIER}
    first = wrapper("postgres", "-cfsync=off", **env)
    assert first.returncode == 0, first.stderr
    sql = _read(tmp_path / "sql")
    assert "SET exit_on_error = on;\n\n" in sql
    assert 'ALTER ROLE "b\'uilder" RENAME TO "we""ird";\n\n' in sql
    assert f'ALTER ROLE "we""ird" PASSWORD \'{BUILDER_VERIFIER}\';\n\n' in sql
    assert 'ALTER DATABASE "tmpl db" RENAME TO "it\'s";\n\n' in sql
    assert "DROP DATABASE" not in sql and sql.index("BEGIN") < sql.index("RENAME") < sql.index("COMMIT")
    assert (tmp_path / "data" / "postgraas-clone-of-template-12").exists()
    assert _read(tmp_path / "args").splitlines()[-1] == "postgres -cfsync=off"
    again = wrapper("postgres", **env)
    assert again.returncode == 0 and _read(tmp_path / "sql") == sql


def test_the_clone_wrapper_gives_the_tenant_the_servers_own_database_when_asked(wrapper, tmp_path):
    done = wrapper(POSTGRES_USER="bob", POSTGRES_DB="postgres", **{VERIFIER_ENV: BUILDER_VERIFIER})
    assert done.returncode == 0, done.stderr
    sql = _read(tmp_path / "sql")
    assert sql.index("DROP DATABASE postgres;") < sql.index("BEGIN")


def test_the_clone_wrapper_refuses_to_leave_the_tenant_without_a_password(wrapper, tmp_path):
    refused = wrapper("postgres", POSTGRES_USER="bob", POSTGRES_DB="shop")
    assert refused.returncode == 1 and "POSTGRAAS_PASSWORD_VERIFIER" in refused.stderr
    assert not (tmp_path / "data" / "postgraas-clone-of-template-12").exists()


def test_the_clone_wrapper_passes_other_commands_through(wrapper, tmp_path):
    assert wrapper("bash", "-c", "true").returncode == 0
    assert _read(tmp_path / "args") == "bash -c true\n" and _read(tmp_path / "sql") == ""


def test_the_clone_wrapper_gives_the_bootstrap_superuser_the_admin_verifier_when_set(wrapper, tmp_path):
    """A swarm clone's server counts sessions as that superuser over TCP; the prepared wrapper,
    finding its tenant made already in a template image, would not set it."""
    admin = "SCRAM-SHA-256$4096:YWRtaW4=$a2V5$c2Vydg=="
    env = {"POSTGRES_USER": "bob", "POSTGRES_DB": "shop", VERIFIER_ENV: BUILDER_VERIFIER}
    done = wrapper("postgres", **env, POSTGRAAS_ADMIN_VERIFIER=admin)
    assert done.returncode == 0, done.stderr
    sql = _read(tmp_path / "sql")
    assert f"ALTER ROLE \"postgres\" PASSWORD '{admin}';\n\n" in sql
    assert sql.index("BEGIN") < sql.index('ALTER ROLE "postgres"') < sql.index("COMMIT")


def test_the_clone_wrapper_leaves_the_bootstrap_superuser_alone_without_an_admin_verifier(wrapper, tmp_path):
    done = wrapper("postgres", POSTGRES_USER="bob", POSTGRES_DB="shop", **{VERIFIER_ENV: BUILDER_VERIFIER})
    assert done.returncode == 0, done.stderr
    assert '"postgres"' not in _read(tmp_path / "sql")


def test_the_clone_wrapper_refuses_an_admin_verifier_of_two_lines(wrapper, tmp_path):
    env = {"POSTGRES_USER": "bob", "POSTGRES_DB": "shop", VERIFIER_ENV: BUILDER_VERIFIER}
    refused = wrapper("postgres", **env, POSTGRAAS_ADMIN_VERIFIER="a\nALTER ROLE x SUPERUSER")
    assert refused.returncode == 1 and "one line" in refused.stderr and _read(tmp_path / "sql") == ""
