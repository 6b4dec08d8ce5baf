"""The backend types: one class each, declaring the whole contract; an unknown type is a config error."""

from __future__ import annotations

import inspect

import pytest

from postgraas_server.backend_settings import BACKEND_TYPES, LocalBackendSettings
from postgraas_server.backends import Backend, BackendRegistry, build_backend
from postgraas_server.backends.registry import BACKEND_CLASSES, backend_class
from postgraas_server.config import ConfigError, settings_from_dict

from ..fakes import FakeBackend


def test_every_configurable_type_has_a_backend_class_and_no_other():
    assert set(BACKEND_CLASSES) == set(BACKEND_TYPES)


@pytest.mark.parametrize("type_name", BACKEND_TYPES)
def test_each_backend_class_implements_the_whole_contract(type_name):
    found = backend_class(type_name)
    assert issubclass(found, Backend)
    assert found.type_name == type_name
    assert not inspect.isabstract(found), found.__abstractmethods__


def test_the_fake_backend_implements_the_whole_contract():
    assert isinstance(FakeBackend(), Backend)


def test_a_backend_leaving_out_a_method_cannot_be_made():
    class Partial(Backend):
        type_name = "partial"

        def why_no_pool(self) -> str | None:
            return None

    with pytest.raises(TypeError, match="abstract"):
        Partial()  # type: ignore[abstract]  # what the test is about


def test_an_unknown_type_is_the_same_config_error_in_the_settings_and_in_build_backend():
    with pytest.raises(ConfigError, match=r"backends\.pg\.type: must be one of: docker, cluster, local, swarm"):
        settings_from_dict({"backends": {"pg": {"type": "nomad"}}})
    # Settings made without validation (by code, not from a file) are not built as a local backend.
    unchecked = LocalBackendSettings.model_construct(type="nomad")
    with pytest.raises(
        ConfigError, match=r"^backends\.pg\.type: must be one of: docker, cluster, local, swarm \(not 'nomad'\)"
    ):
        build_backend(unchecked, "deployment", "pg")


def test_a_pool_where_the_backend_has_none_names_the_key_and_the_reason():
    settings = settings_from_dict(
        {"backends": {"d": {"type": "docker", "pool_size": 1, "prepare_image": False}}, "metadb": {"url": "sqlite://"}}
    )
    with pytest.raises(ConfigError, match=r"^backends\.d\.pool_size: the docker backend keeps a warm pool"):
        BackendRegistry.from_settings(settings, "deployment")
