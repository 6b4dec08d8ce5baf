"""The swarm backend's templates without a swarm: builder refs, the artifacts a listing maps images to,
the references a drop accepts, pushes a registry refuses, and the registry's HTTP answers (the real
thing: tests/integration/test_swarm_templates.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests

from postgraas_server.backend_settings import SwarmBackendSettings
from postgraas_server.backends import Credentials
from postgraas_server.backends.swarm import SwarmBackend, registry_api
from postgraas_server.backends.swarm.registry_api import RegistryApi
from postgraas_server.backends.swarm.templates import PushedTemplateImages, builder_container
from postgraas_server.errors import BackendError, BackendUnavailable

REGISTRY = "registry.internal:5000"
DIGEST = "sha256:" + "ab" * 32


def pushed() -> PushedTemplateImages:
    return PushedTemplateImages("dep-1", RegistryApi(REGISTRY, timeout=5))


def test_a_builders_ref_names_its_container_and_a_services_does_not():
    assert builder_container("container:0123abcd") == "0123abcd"
    assert builder_container("x1y2z3servicesid") is None


def test_a_listed_template_image_is_its_pushed_reference_or_else_its_id():
    images = pushed()
    listed = {"Id": "sha256:" + "1" * 64, "RepoDigests": [f"elsewhere/postgraas/template@{DIGEST}"]}
    assert images._artifact(listed) == listed["Id"]
    listed["RepoDigests"].append(f"{REGISTRY}/postgraas/template@{DIGEST}")
    assert images._artifact(listed) == f"{REGISTRY}/postgraas/template@{DIGEST}"


@pytest.mark.parametrize(
    "artifact",
    [
        f"other:5000/postgraas/template@{DIGEST}",
        f"{REGISTRY}/postgraas/prepared@{DIGEST}",
        f"{REGISTRY}/postgraas/template:t",
    ],
)
def test_drop_takes_only_references_in_the_registrys_template_repository(artifact):
    with pytest.raises(BackendError, match="no template of this deployment"):
        pushed().pushed_parts(artifact)
    assert pushed().pushed_parts(f"{REGISTRY}/postgraas/template@{DIGEST}") == ("postgraas/template", DIGEST)


class PushingClient:
    """A docker SDK client whose push streams the given lines."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.api = self
        self.lines = lines

    def push(self, repository: str, tag: str, stream: bool, decode: bool) -> list[dict[str, Any]]:
        return self.lines


def test_a_push_the_registry_refuses_is_a_backend_error_naming_the_registry():
    client = PushingClient([{"status": "Preparing"}, {"error": "connection refused"}])
    with pytest.raises(BackendError, match=f"registry {REGISTRY} .*refused the push.*connection refused"):
        pushed()._publish(client, image=None, template_id=7)


def test_the_swarm_backend_keeps_templates_with_the_prepared_image_and_a_registry_only():
    def never() -> Any:
        raise AssertionError("no API call")

    with_registry = SwarmBackend(SwarmBackendSettings(type="swarm", registry=REGISTRY), "dep-1", never)
    assert with_registry.why_no_template() is None
    plain = SwarmBackend(SwarmBackendSettings(type="swarm", prepare_image=False), "dep-1", never)
    assert "registry" in (plain.why_no_template() or "") and plain.list_templates() == {}
    with pytest.raises(BackendError, match="prepare_image"):
        plain.freeze("container:0123", Credentials("db", "user", ""), template_id=1)
    # A service is no builder: refused before any call to the manager.
    with pytest.raises(BackendError, match="only a template's builder can"):
        with_registry.freeze("x1y2z3servicesid", Credentials("db", "user", ""), template_id=1)


class Answer:
    def __init__(self, status: int, body: bytes = b"{}") -> None:
        self.status_code, self.content, self.text = status, body, body.decode()


class Registry:
    """requests.request of a registry that speaks HTTP only; answers by (method, path)."""

    def __init__(self, answers: dict[tuple[str, str], Answer]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, method: str, url: str, **_: Any) -> Answer:
        self.asked.append(f"{method} {url}")
        if url.startswith("https://"):
            raise requests.exceptions.SSLError("wrong version number")
        return self.answers.get((method, url.split(REGISTRY, 1)[1]), Answer(404))


@pytest.fixture
def registry(monkeypatch) -> Registry:
    fake = Registry({})
    monkeypatch.setattr(registry_api.requests, "request", fake)
    return fake


def test_labels_are_read_from_the_manifests_config_over_http_once_https_fails(registry):
    manifest = f"/v2/postgraas/template/manifests/{DIGEST}"
    registry.answers[("GET", manifest)] = Answer(200, b'{"config": {"digest": "sha256:c0"}}')
    registry.answers[("GET", "/v2/postgraas/template/blobs/sha256:c0")] = Answer(
        200, b'{"config": {"Labels": {"postgraas.template.deployment": "dep-1"}}}'
    )
    api = RegistryApi(REGISTRY, timeout=5)
    assert api.image_labels("postgraas/template", DIGEST) == {"postgraas.template.deployment": "dep-1"}
    assert api.image_labels("postgraas/template", "sha256:" + "0" * 64) is None
    # HTTPS once; the registry's scheme is kept.
    assert sum(url.startswith("GET https") for url in registry.asked) == 1


def test_a_registry_that_refuses_deletes_is_logged_and_left(registry, caplog):
    manifest = f"/v2/postgraas/template/manifests/{DIGEST}"
    api = RegistryApi(REGISTRY, timeout=5)
    api.delete_manifest("postgraas/template", DIGEST)  # 404: gone already
    registry.answers[("DELETE", manifest)] = Answer(405, b'{"errors": [{"code": "UNSUPPORTED"}]}')
    with caplog.at_level(logging.WARNING):
        api.delete_manifest("postgraas/template", DIGEST)
    assert "refused to delete" in caplog.text and "storage.delete" in caplog.text
    registry.answers[("DELETE", manifest)] = Answer(500, b"boom")
    with pytest.raises(BackendUnavailable, match="HTTP 500"):
        api.delete_manifest("postgraas/template", DIGEST)


def test_a_registry_out_of_reach_is_unavailable(monkeypatch):
    def refused(method: str, url: str, **_: Any) -> Answer:
        raise requests.ConnectionError("connection refused")

    monkeypatch.setattr(registry_api.requests, "request", refused)
    with pytest.raises(BackendUnavailable, match=f"registry {REGISTRY} .*cannot be reached"):
        RegistryApi(REGISTRY, timeout=5).delete_manifest("postgraas/template", DIGEST)
