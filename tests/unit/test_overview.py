"""GET /postgraas_overview (what the console offers and shows: auth mode, the token's owner, each
backend's instances against max_instances and its pool's fill), the owner of listed instances, and
the open sessions a refused delete names."""

from __future__ import annotations

import pytest

from postgraas_server.api.errors import error_response
from postgraas_server.backends import BackendRegistry
from postgraas_server.errors import InUse
from postgraas_server.tokens import issue_token
from tests.fakes import FakeBackend

from ..conftest import make_app
from .api_calls import BODY, fill


@pytest.fixture
def app(tmp_path, fake_backend):
    other = FakeBackend()
    registry = BackendRegistry({"fake": fake_backend, "other": other}, "fake", limits={"fake": 5}, pools={"fake": 2})
    return make_app(tmp_path, fake_backend, registry=registry, background=False, auth={"mode": "token"})


@pytest.fixture
def tokens(app):
    with app.app_context():
        return {
            "alice": issue_token("alice", admin=False, max_instances=None, max_ttl=None)[1],
            "root": issue_token("root", admin=True, max_instances=None, max_ttl=None)[1],
        }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_overview_counts_every_owner_against_max_instances_and_the_pool_fill(app, client, keeper, tokens):
    assert client.get("/postgraas_overview").status_code == 401
    fill(app, keeper)
    assert client.post("/postgraas_instances", json=BODY, headers=bearer(tokens["root"])).status_code == 201
    seen = client.get("/postgraas_overview", headers=bearer(tokens["alice"]))
    assert seen.status_code == 200
    assert seen.get_json() == {
        "auth_mode": "token",
        "owner": "alice",
        "admin": False,
        "backends": [
            # The create took a pooled instance; max_instances counts pooled ones too, as a create does.
            {
                "name": "fake",
                "default": True,
                "templates": True,
                "max_instances": 5,
                "instances": 2,
                "pool_size": 2,
                "pooled": 1,
            },
            {
                "name": "other",
                "default": False,
                "templates": True,
                "max_instances": None,
                "instances": 0,
                "pool_size": 0,
                "pooled": 0,
            },
        ],
    }
    admin = client.get("/api/v2/postgraas_overview", headers=bearer(tokens["root"])).get_json()
    assert (admin["owner"], admin["admin"]) == ("root", True)


def test_an_admin_list_shows_each_instance_s_owner_and_an_owner_sees_only_its_own(client, tokens):
    for owner in ("alice", "root"):
        made = client.post("/postgraas_instances", json={**BODY, "backend": "other"}, headers=bearer(tokens[owner]))
        assert made.status_code == 201 and made.get_json()["owner"] == owner
    everyone = client.get("/postgraas_instances?limit=10", headers=bearer(tokens["root"])).get_json()
    assert [i["owner"] for i in everyone] == ["alice", "root"]
    own = client.get("/postgraas_instances?limit=10", headers=bearer(tokens["alice"])).get_json()
    assert [i["owner"] for i in own] == ["alice"]


def test_a_delete_refused_for_open_sessions_names_the_force_field(app):
    with app.test_request_context():
        body = error_response(InUse(2)).get_json()
    assert body["errors"] == {"force": "2 open session(s); true ends them"}
    assert "2 open session(s)" in body["msg"]


def test_the_openapi_document_describes_the_overview(client, tokens):
    document = client.get("/openapi.json").get_json()
    answer = document["paths"]["/postgraas_overview"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OverviewOut"}
    assert "owner" in document["components"]["schemas"]["InstanceOut"]["required"]
