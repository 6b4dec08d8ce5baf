"""Each test takes a fresh database (pytest-postgresql's ``postgresql``: a copy of the loaded template)."""

from __future__ import annotations

import os

import psycopg
import pytest

from benchmarks.template_schema import COUNT_SQL, ROWS_TOTAL, table


@pytest.mark.parametrize("n", range(int(os.environ.get("BENCH_SUITE_TESTS", "50"))))
def test_a_fresh_database_holds_every_row(postgresql: psycopg.Connection, n: int) -> None:
    assert postgresql.execute(COUNT_SQL).fetchone() == (ROWS_TOTAL,)
    # Left behind on purpose: the next test must not see it.
    postgresql.execute(
        f"insert into {table(1)} (id, code, name, amount, created_on) values (%s, %s, 'x', 0, now())",
        (100_000 + n, f"added-{n}"),
    )
    postgresql.commit()
