"""durability "ephemeral": what each backend turns off, proven on the server it made."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from postgraas_server.backends import DatabaseSpec

from .conftest import BACKENDS, make_backend


def settings_of(backend_name: str, request, ephemeral: bool) -> dict[str, str]:
    backend = make_backend(backend_name, request)
    tag = uuid.uuid4().hex[:8]
    spec = DatabaseSpec(1, f"d-{tag}", f"db_{tag}", f"user_{tag}", f"pw-{tag}", ephemeral=ephemeral)
    created = backend.create(spec)
    try:
        with psycopg.connect(
            host="127.0.0.1", port=created.port, user=spec.db_username, password=spec.db_pwd, dbname=spec.db_name
        ) as conn:
            return {
                name: conn.execute(f"show {name}").fetchone()[0]
                for name in ("fsync", "synchronous_commit", "full_page_writes")
            }
    finally:
        backend.delete(created.ref, spec.credentials, instance_id=spec.instance_id, force=True)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_durable_is_the_default(request, backend_name):
    assert settings_of(backend_name, request, ephemeral=False) == {
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
    }


@pytest.mark.parametrize("backend_name", ["local", "docker"])
def test_an_instance_of_its_own_server_skips_the_disk_when_ephemeral(request, backend_name):
    assert settings_of(backend_name, request, ephemeral=True) == {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }


def test_an_ephemeral_cluster_database_commits_without_waiting_but_leaves_the_server_alone(request):
    # fsync and full_page_writes are the shared server's: not weakened for one tenant.
    assert settings_of("cluster", request, ephemeral=True) == {
        "fsync": "on",
        "synchronous_commit": "off",
        "full_page_writes": "on",
    }
