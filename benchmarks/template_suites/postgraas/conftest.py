"""The Postgraas suite: a template of the SQL files built once per content on a Postgraas server
through the pytest plugin (benchmarks/templates.py passes --postgraas-url, --postgraas-template,
--postgraas-template-hash-of and --postgraas-backend), and a fresh clone of it for each test, the
plugin's ``postgraas_clean_database``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from benchmarks.template_schema import load


def pytest_postgraas_build_template(database: Any) -> None:
    """Migrate and load the template's database: here, the SQL files of the schema."""
    with psycopg.connect(database.uri) as conn:
        load(conn)


@pytest.fixture
def fresh_db(postgraas_clean_database: Any) -> Iterator[psycopg.Connection]:
    with psycopg.connect(postgraas_clean_database.uri) as conn:
        yield conn
