"""A token's limits on templates: max_templates (what the owner holds, not failed builds nor the
content a newer one replaces) and max_instances (which also bounds the clones its templates keep
made ahead, since pooled clones belong to no owner)."""

from __future__ import annotations

import pytest

from postgraas_server.errors import BackendError
from postgraas_server.models import db
from postgraas_server.tokens import issue_token

from ..conftest import make_app


@pytest.fixture
def token_app(tmp_path, fake_backend):
    return make_app(tmp_path, fake_backend, background=False, auth={"mode": "token"})


def bearer(app, **limits) -> dict[str, str]:
    with app.app_context():
        secret = issue_token("carol", admin=False, **{"max_instances": None, "max_ttl": None, **limits})[1]
        db.session.remove()
    return {"Authorization": f"Bearer {secret}"}


def build(client, headers, name: str, content_hash: str, **body) -> dict:
    answer = client.post("/postgraas_templates", json={"name": name, "hash": content_hash, **body}, headers=headers)
    assert answer.status_code == 201, answer.get_json()
    builder = answer.get_json()
    finalized = client.post(
        f"/postgraas_templates/{builder['id']}/finalize", json={"instance_id": builder["instance_id"]}, headers=headers
    )
    assert finalized.get_json()["status"] == "ready", finalized.get_json()
    return builder


def test_a_newer_content_of_a_name_is_not_over_max_templates_and_failed_builds_do_not_count(token_app, fake_backend):
    client, headers = token_app.test_client(), bearer(token_app, max_templates=1)
    old = build(client, headers, "shop", "h1")
    # The content it is to replace is not counted: at the limit, a name can still move on.
    new = build(client, headers, "shop", "h2")
    assert client.get(f"/postgraas_templates/{old['id']}", headers=headers).status_code == 404
    assert client.post("/postgraas_templates", json={"name": "cart", "hash": "h1"}, headers=headers).status_code == 429
    # A failed build holds nothing.
    client.delete(f"/postgraas_templates/{new['id']}", headers=headers)
    fake_backend.fail_create = BackendError("no room")
    assert client.post("/postgraas_templates", json={"name": "cart", "hash": "h1"}, headers=headers).status_code == 502
    fake_backend.fail_create = None
    assert client.post("/postgraas_templates", json={"name": "till", "hash": "h1"}, headers=headers).status_code == 201


def test_the_pools_of_an_owners_templates_are_held_within_its_max_instances(token_app, fake_backend):
    client, headers = token_app.test_client(), bearer(token_app, max_instances=3)
    over = client.post("/postgraas_templates", json={"name": "shop", "hash": "h1", "pool_size": 4}, headers=headers)
    assert over.status_code == 429 and "pool_size" in over.get_json()["errors"], over.get_json()
    assert client.get("/postgraas_templates", headers=headers).get_json() == [] and not fake_backend.objects
    build(client, headers, "shop", "h1", pool_size=2)
    more = client.post("/postgraas_templates", json={"name": "cart", "hash": "h1", "pool_size": 2}, headers=headers)
    assert more.status_code == 429 and "pool_size" in more.get_json()["errors"]
    # A newer content of the name replaces the older pool, so it counts alone.
    build(client, headers, "shop", "h2", pool_size=3)
