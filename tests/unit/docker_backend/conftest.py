"""Fixtures of DockerBackend's unit tests: the fake engine, no real sleeps, recorded logins."""

from __future__ import annotations

import pytest

from postgraas_server.backends.docker import backend as docker_backend
from postgraas_server.backends.docker import prepared_image

from .fake_engine import FakeClient


@pytest.fixture
def client():
    return FakeClient()


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(prepared_image.time, "sleep", lambda seconds: None)


@pytest.fixture
def logins(monkeypatch):
    """Replace the TCP login with a recorder; integration tests do the real one."""
    calls = []

    def fake_wait(host, port, credentials, *, timeout, still_starting, interval=0.05):
        calls.append((host, port, credentials))
        still_starting()

    monkeypatch.setattr(docker_backend, "wait_for_login", fake_wait)
    return calls
