"""The hook a project implements in its conftest.py to build its template (--postgraas-template)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..client import Instance


@pytest.hookspec
def pytest_postgraas_build_template(database: Instance) -> None:
    """Migrate and load the template's database: run once per template content, by whichever
    process (xdist worker, CI job) the server picks to build it; every other one waits for it.

    ``database`` is the builder's database, shaped as ``postgraas_database`` is (``uri``, ``host``,
    ``port``, ``user``, ``password``, ``dbname``). Once every implementation returned, the template
    is frozen; when one raises, the template is deleted and the tests using it error."""
