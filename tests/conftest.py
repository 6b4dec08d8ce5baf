"""Shared fixtures. In CI (CI=true) a missing real component fails the test instead of skipping it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from postgraas_server.app import create_app
from postgraas_server.backends import Backend, BackendRegistry
from postgraas_server.config import settings_from_dict
from postgraas_server.migrations import upgrade
from postgraas_server.service import PoolKeeper

from .fakes import FakeBackend

pytest_plugins = ("pytester",)


def require(component: str, why: str) -> None:
    """Skip locally, fail in CI: a CI run must never pass by skipping the real thing."""
    message = f"{component} is not available: {why}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class ClosingClient(FlaskClient):
    """Reads each answer whole and closes it, as a WSGI server does: what an answer's close
    releases (the turn of a whole list, say) is released, whether the test reads the body or not."""

    def open(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def make_app(
    tmp_path, backend: Backend, *, registry: BackendRegistry | None = None, background: bool = True, **sections: dict
) -> Flask:
    """An app on a SQLite meta db in ``tmp_path`` with ``backend`` as "fake" (or ``registry``);
    ``background=False``: no pool keeper nor reaper threads (the test runs their rounds)."""
    raw = {"metadb": {"url": f"sqlite:///{tmp_path / 'meta.sqlite'}"}, "lifecycle": {"reaper_interval": 0}, **sections}
    settings = settings_from_dict(raw)
    upgrade(settings.metadb.sqlalchemy_url())
    backends = registry or BackendRegistry({"fake": backend}, "fake")
    app = create_app(settings, backends=backends, background=background)
    # Error paths must be proven as production runs them: flask-restful behaves differently in TESTING.
    app.config["TESTING"] = False
    app.test_client_class = ClosingClient
    return app


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def app(tmp_path, fake_backend: FakeBackend) -> Flask:
    return make_app(tmp_path, fake_backend)


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as client:
        yield client


@pytest.fixture
def keeper(app: Flask) -> PoolKeeper:
    """A pool keeper of ``app`` whose rounds the test runs itself (api_calls.fill)."""
    pool = app.extensions["postgraas"].service.pool
    keeper = PoolKeeper(pool)
    # What start() does, without its thread: a create that takes a pooled instance wakes it.
    pool.taken = keeper.wake
    return keeper
