"""Paging through a real server (local backend, real postgres): the Link header as the serving
layer writes it, the client's iterator and the CLI's list following it, and the filters end to end."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from postgraas_server.client import PostgraasClient

from .conftest import start_local_server
from .servers import stop_server
from .test_client_cli import cli


@pytest.mark.parametrize("meta", ["sqlite", "postgresql"])
def test_the_client_and_the_cli_page_through_a_real_server(request, tmp_path, meta):
    metadb = {"url": request.getfixturevalue("meta_db")} if meta == "postgresql" else None
    server = start_local_server(request, tmp_path, metadb=metadb)
    tag = uuid.uuid4().hex[:6]
    created: list = []
    try:
        with PostgraasClient(server.url) as client:
            for suffix in ("0", "1", "2"):
                created.append(client.create(f"page-{tag}-{suffix}", f"db_{tag}_{suffix}", f"u_{tag}_{suffix}"))
            other = client.create(f"other-{tag}", f"db_{tag}_x", f"u_{tag}_x")
            created.append(other)
            made = [instance.id for instance in created]
            first = requests.get(f"{server.url}/api/v2/postgraas_instances", params={"limit": 2}, timeout=30)
            assert first.status_code == 200 and len(first.json()) == 2
            assert first.links["next"]["url"] == f"/api/v2/postgraas_instances?limit=2&after={made[1]}"
            assert [i.id for i in client.instances(page_size=1, name=f"page-{tag}")] == made[:3]
            assert [i.id for i in client.instances(page_size=2, status="ready")] == made
            assert client.resolve(f"other-{tag}") == other.id
            assert [i.id for i in client.instances(name=f"PAGE-{tag}")] == []  # names are case-sensitive
        listed = cli("list", "--page-size", "1", "--name", f"page-{tag}", "--output", "json", POSTGRAAS_URL=server.url)
        assert listed.returncode == 0, listed.stderr
        assert [i["postgraas_instance_id"] for i in json.loads(listed.stdout)] == made[:3]
        refused = cli("list", "--status", "bogus", POSTGRAAS_URL=server.url)
        assert refused.returncode == 1 and "status" in refused.stderr
        # The whole list, as 2.x clients read it.
        assert [i["postgraas_instance_id"] for i in server.get().json()] == made
    finally:
        with PostgraasClient(server.url) as client:
            for instance in created:
                client.delete(instance.id, password=instance.password, force=True)
        stop_server(server)
