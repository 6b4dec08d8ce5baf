"""Counts a backend's tenant logins (its login proof), each a real one; ``refuse`` fails the next
as a closed port would."""

from __future__ import annotations

from types import ModuleType

import pytest

from postgraas_server.backends.postgres.client import NotReady


class LoginSpy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, backend_module: ModuleType) -> None:
        """Spies on ``wait_for_login`` as ``backend_module`` (the backend's module) calls it."""
        self.calls = 0
        self.refuse = False
        real = backend_module.wait_for_login

        def spy(*args, **kwargs):
            self.calls += 1
            if self.refuse:
                self.refuse = False
                raise NotReady("connection refused")
            return real(*args, **kwargs)

        monkeypatch.setattr(backend_module, "wait_for_login", spy)
