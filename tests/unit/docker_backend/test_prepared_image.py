"""The prepared image, with a fake docker SDK client: made once per engine from the configured image,
checked, shared, and given up for the plain path when it cannot be made."""

from __future__ import annotations

import logging
import subprocess
import time

import docker.errors
import pytest

from postgraas_server.backends.docker import image_preparer
from postgraas_server.backends.docker.prepared_image import (
    BUILD_NAME_PREFIX,
    DATA_DIR,
    PREPARED_FROM_LABEL,
    VERIFIER_ENV,
    WRAPPER_PATH,
    prepared_tag,
    wrapper_script,
)

from .fake_engine import IMAGE_ID, LIMITS, SPEC, TAG, FakeImage, backend


def test_the_prepared_image_is_made_from_the_configured_one(client, logins):
    backend(client, labels={"env": "ci"}).create(SPEC)
    [build] = client.builds()
    kwargs = build.kwargs
    assert kwargs["image"] == IMAGE_ID
    assert kwargs["name"] == BUILD_NAME_PREFIX + TAG.split(":")[1]
    # Marked as a build, not an instance: no deployment or instance labels, so never listed or reaped.
    assert kwargs["labels"] == {PREPARED_FROM_LABEL: IMAGE_ID}
    assert kwargs["network_mode"] == "none"
    assert {key: kwargs[key] for key in LIMITS} == LIMITS
    assert kwargs["security_opt"] == ["no-new-privileges"]
    env = kwargs["environment"]
    assert env["PGDATA"] == DATA_DIR and env["POSTGRES_USER"] == "postgres"
    assert env["POSTGRES_PASSWORD"] and env["POSTGRES_PASSWORD"] != "s3cret"
    # The build's password is removed from the cluster before the commit, over the local socket.
    assert "ALTER ROLE postgres PASSWORD NULL" in build.execs[-1]
    [(path, archive)] = build.archives
    assert path == "/" and b"exec docker-entrypoint.sh" in archive
    [commit] = build.commits
    assert client.images.get(TAG) is commit["image"]
    assert commit["image"].labels == {PREPARED_FROM_LABEL: IMAGE_ID}
    assert 'ENV POSTGRES_PASSWORD=""' in commit["changes"]
    assert f"ENV PGDATA={DATA_DIR}" in commit["changes"]
    assert f'ENTRYPOINT ["{WRAPPER_PATH}"]' in commit["changes"]
    assert 'CMD ["postgres"]' in commit["changes"]
    assert build.removed == (True, True)
    # Tagged only once a container of it made a tenant and took a login.
    [check] = client.checks()
    assert check.kwargs["image"] == commit["image"].id
    assert set(check.kwargs["environment"]) == {"POSTGRES_USER", "POSTGRES_DB", VERIFIER_ENV}
    assert check.kwargs["network_mode"] == "none"
    assert check.removed == (True, True)


def test_the_prepared_image_is_made_once_and_shared(client, logins):
    first = backend(client)
    first.create(SPEC)
    first.create(SPEC)
    # Another backend (a second worker, server or deployment on the engine) finds the tag.
    backend(client).create(SPEC)
    assert len(client.builds()) == 1
    assert [c.kwargs["image"] for c in client.instances()] == [TAG] * 3


def test_an_image_without_psql_falls_back_to_the_plain_path_and_warns_once(client, logins, caplog):
    client.login_result = (126, b'OCI runtime exec failed: exec: "psql": executable file not found in $PATH')
    made = backend(client)
    with caplog.at_level(logging.WARNING):
        made.create(SPEC)
        made.create(SPEC)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot prepare image postgres:16" in warnings[0] and "no usable psql" in warnings[0]
    [build] = client.builds()
    assert build.removed == (True, True) and build.commits == []
    for instance in client.instances():
        assert instance.kwargs["image"] == "postgres:16"
        assert instance.kwargs["environment"]["POSTGRES_PASSWORD"] == "s3cret"


@pytest.mark.parametrize(
    "break_it, reason",
    [
        (lambda c: setattr(c, "socket_result", (2, b"psql: error: FATAL: password required")), "local socket"),
        (lambda c: setattr(c, "socket_result", (0, b"/var/lib/postgresql/data")), "ignores PGDATA"),
        (lambda c: setattr(c, "stop_code", 137), "did not shut down cleanly"),
        (lambda c: setattr(c, "commit_error", docker.errors.APIError("no space left")), "no space left"),
    ],
)
def test_a_failed_preparation_removes_its_container_and_falls_back(client, logins, caplog, break_it, reason):
    break_it(client)
    with caplog.at_level(logging.WARNING):
        backend(client).create(SPEC)
    assert reason in caplog.text
    [build] = client.builds()
    assert build.removed == (True, True)
    assert client.instances()[0].kwargs["image"] == "postgres:16"
    assert not client.images.has(TAG)


def test_a_prepared_image_whose_check_fails_is_removed_and_not_used(client, logins, caplog):
    client.check_fails = True
    with caplog.at_level(logging.WARNING):
        backend(client).create(SPEC)
    assert "stopped during initialisation" in caplog.text
    [build] = client.builds()
    [check] = client.checks()
    assert build.removed == check.removed == (True, True)
    assert not client.images.has(build.commits[0]["image"].id)
    assert not client.images.has(TAG)
    assert client.instances()[0].kwargs["image"] == "postgres:16"


def test_an_image_without_entrypoint_is_not_prepared(client, logins, caplog):
    client.images.get("postgres:16").attrs["Config"]["Entrypoint"] = None
    with caplog.at_level(logging.WARNING):
        backend(client).create(SPEC)
    assert "no ENTRYPOINT" in caplog.text
    assert client.builds() == []
    assert client.instances()[0].kwargs["image"] == "postgres:16"


def test_another_builder_is_waited_for_not_raced(client, logins):
    # A build of the same tag runs elsewhere (another worker); it finishes while this one waits.
    other = client.containers.create(image=IMAGE_ID, name=BUILD_NAME_PREFIX + TAG.split(":")[1])
    client.on_list = lambda: client.images.add(FakeImage("sha256:theirs", [TAG], {PREPARED_FROM_LABEL: IMAGE_ID}))
    backend(client).create(SPEC)
    assert client.builds() == [other]
    assert client.instances()[0].kwargs["image"] == TAG


def test_a_build_container_running_for_too_long_is_removed_and_the_image_made(client, logins):
    stale = client.containers.create(image=IMAGE_ID, name=BUILD_NAME_PREFIX + TAG.split(":")[1])
    stale.attrs.update(State="running", Created=time.time() - 3600)
    backend(client).create(SPEC)
    assert stale.removed == (True, True)
    assert len(client.builds()) == 2
    assert client.instances()[0].kwargs["image"] == TAG


def test_a_build_elsewhere_that_takes_too_long_means_the_plain_path_this_once(client, logins, monkeypatch):
    other = client.containers.create(image=IMAGE_ID, name=BUILD_NAME_PREFIX + TAG.split(":")[1])
    monkeypatch.setattr(image_preparer, "BUILD_TIMEOUT_S", 0)
    made = backend(client)
    made.create(SPEC)
    assert client.instances()[0].kwargs["image"] == "postgres:16"
    # Not remembered as "cannot be prepared": once the other build is done, its image is used.
    other.remove(True, True)
    client.images.add(FakeImage("sha256:theirs", [TAG], {PREPARED_FROM_LABEL: IMAGE_ID}))
    made.create(SPEC)
    assert client.instances()[1].kwargs["image"] == TAG


def test_a_stopped_build_container_left_by_an_engine_restart_is_stale_sooner(client, logins):
    left = client.containers.create(image=IMAGE_ID, name=BUILD_NAME_PREFIX + TAG.split(":")[1])
    left.attrs.update(State="exited", Created=time.time() - 60)
    backend(client).create(SPEC)
    assert left.removed == (True, True)
    assert client.instances()[0].kwargs["image"] == TAG


def test_a_prepared_image_removed_meanwhile_is_made_again(client, logins):
    made = backend(client)
    made.create(SPEC)
    client.images.remove(TAG)
    made.create(SPEC)
    assert len(client.builds()) == 2
    assert [c.kwargs["image"] for c in client.instances()] == [TAG, TAG]
    assert client.images.has(TAG)


def test_a_tag_of_another_image_is_not_used(client, logins):
    # Same tag, but made from something else: never trusted.
    client.images.add(FakeImage("sha256:other", [TAG], {PREPARED_FROM_LABEL: "sha256:elsewhere"}))
    backend(client).create(SPEC)
    assert len(client.builds()) == 1


def test_a_missing_configured_image_is_pulled_then_prepared(client, logins):
    client.images.remove("postgres:16")
    backend(client).create(SPEC)
    assert client.images.pulled == ["postgres:16"]
    assert client.instances()[0].kwargs["image"] == TAG


def test_prepared_tag_follows_the_image_id():
    assert prepared_tag(IMAGE_ID) == TAG
    assert prepared_tag("sha256:" + "cd" * 32) != TAG
    assert TAG.startswith("postgraas/prepared:")


def test_wrapper_runs_other_commands_through_the_original_entrypoint(tmp_path):
    script = tmp_path / "wrapper.sh"
    script.write_text(wrapper_script(["echo", "it's", "a $HOME"]))
    subprocess.run(["sh", "-n", script], check=True)
    result = subprocess.run(["sh", script, "bash", "-c"], capture_output=True, text=True, check=True)
    assert result.stdout == "it's a $HOME bash -c\n"
