"""Templates through the API on the fake backend: who builds, finalize, clones, deletes and what
the reaper does with them (the backends' freeze and clone against real servers:
tests/integration/test_backend_contract_templates.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from postgraas_server.models import Template, db, utcnow
from postgraas_server.service import Reaper

from .api_calls import create, rows

SHOP = {"name": "shop", "hash": "sha256-aaa"}


def ensure(client, **overrides):
    return client.post("/postgraas_templates", json={**SHOP, **overrides})


def built(client) -> dict:
    """A ready template: ensured, then finalized by its builder."""
    answer = ensure(client)
    assert answer.status_code == 201, answer.get_json()
    finalized = client.post(f"/postgraas_templates/{answer.get_json()['id']}/finalize")
    assert finalized.status_code == 200, finalized.get_json()
    return finalized.get_json()


def test_the_first_ensure_builds_with_credentials_the_next_waits_and_then_finds_it_ready(client, fake_backend):
    first = ensure(client)
    assert first.status_code == 201
    body = first.get_json()
    assert body["status"] == "building" and body["name"] == "shop" and body["hash"] == "sha256-aaa"
    assert body["db_pwd"] and body["connection_uri"].startswith("postgresql://")
    # The builder's database is an instance of the backend.
    assert f"fake-{body['instance_id']}" in fake_backend.objects

    second = ensure(client)
    assert second.status_code == 202
    assert second.headers["Location"].endswith(f"/postgraas_templates/{body['id']}")
    assert "db_pwd" not in second.get_json()

    assert client.post(f"/postgraas_templates/{body['id']}/finalize").get_json()["status"] == "ready"
    # The builder's database became the template: no instance is left of it.
    assert f"fake-{body['instance_id']}" not in fake_backend.objects
    assert not rows(client.application)
    assert fake_backend.list_templates() == {body["id"]: f"fake-template-{body['id']}"}

    third = ensure(client)
    assert third.status_code == 200
    assert third.get_json()["status"] == "ready" and "db_pwd" not in third.get_json()


def test_a_waiter_sees_ready_once_finalized(client):
    template_id = ensure(client).get_json()["id"]
    waited = client.get(f"/postgraas_templates/{template_id}?wait=ready&timeout=0")
    assert waited.get_json()["status"] == "building"
    client.post(f"/postgraas_templates/{template_id}/finalize")
    assert client.get(f"/postgraas_templates/{template_id}?wait=ready&timeout=5").get_json()["status"] == "ready"


def test_a_create_naming_the_template_clones_its_newest_ready_content(client, fake_backend):
    template = built(client)
    answer = create(client, template="shop")
    assert answer.status_code == 201, answer.get_json()
    assert fake_backend.cloned == [(f"fake-template-{template['id']}", answer.get_json()["id"])]
    by_hash = create(client, postgraas_instance_name="other", template="shop@sha256-aaa")
    assert by_hash.status_code == 201, by_hash.get_json()


def test_a_create_naming_no_ready_template_is_a_400_naming_the_field(client):
    ensure(client)  # building, not ready
    for ref in ("shop", "shop@sha256-aaa", "nothing"):
        answer = create(client, template=ref)
        assert answer.status_code == 400, ref
        assert "template" in answer.get_json()["errors"]
    assert create(client, template="not a name!").status_code == 400
    assert not rows(client.application)[1:]  # only the builder's instance


def test_bad_ensures_are_400s_naming_the_field_and_make_nothing(client, fake_backend):
    for body, field in (
        ({"name": "shop"}, "hash"),
        ({"hash": "h"}, "name"),
        ({**SHOP, "hash": "no spaces"}, "hash"),
        ({**SHOP, "backend": "nosuch"}, "backend"),
        ({**SHOP, "pool_size": -1}, "pool_size"),
        ({**SHOP, "ttl": "soon"}, "ttl"),
    ):
        answer = client.post("/postgraas_templates", json=body)
        assert answer.status_code == 400, body
        assert field in answer.get_json()["errors"], answer.get_json()
    assert client.get("/postgraas_templates").get_json() == []
    assert not fake_backend.objects


def test_finalize_of_a_template_that_is_not_building_is_a_409(client):
    template = built(client)
    # Ready already: finalize again changes nothing.
    assert client.post(f"/postgraas_templates/{template['id']}/finalize").status_code == 200
    assert client.post(f"/postgraas_templates/{template['id']}/heartbeat").status_code == 409
    assert client.post("/postgraas_templates/999/finalize").status_code == 404


def test_delete_removes_the_template_and_leaves_its_clones(client, fake_backend):
    template = built(client)
    clone = create(client, template="shop").get_json()
    assert client.delete(f"/postgraas_templates/{template['id']}").status_code == 200
    assert fake_backend.list_templates() == {}
    assert client.get(f"/postgraas_templates/{template['id']}").status_code == 404
    assert client.get(f"/postgraas_instances/{clone['id']}").get_json()["status"] == "ready"


def test_a_build_in_progress_deleted_takes_its_builders_database_with_it(client, fake_backend):
    building = ensure(client).get_json()
    assert client.delete(f"/postgraas_templates/{building['id']}").status_code == 200
    assert not fake_backend.objects and not rows(client.application)


def test_a_silent_builder_fails_the_build_and_the_next_ensure_builds_anew(app, client, fake_backend):
    building = ensure(client, build_timeout=10).get_json()
    with app.app_context():
        db.session.execute(update(Template).values(heartbeat_at=utcnow() - timedelta(seconds=11)))
        db.session.commit()
        state = app.extensions["postgraas"]
        Reaper(state.backends, state.settings.lifecycle).run_pass()
    failed = client.get(f"/postgraas_templates/{building['id']}").get_json()
    assert failed["status"] == "failed" and "heartbeat" in failed["status_detail"]
    assert not fake_backend.objects  # the builder's database went
    again = ensure(client)
    assert again.status_code == 201 and again.get_json()["id"] == building["id"]


def test_the_reaper_drops_templates_no_row_holds(app, fake_backend):
    fake_backend.templates[424242] = "fake-template-424242"
    with app.app_context():
        state = app.extensions["postgraas"]
        Reaper(state.backends, state.settings.lifecycle).run_pass()
    assert fake_backend.list_templates() == {}


def test_an_expired_template_is_removed_by_the_reaper(app, client, fake_backend):
    template = built(client)
    with app.app_context():
        db.session.execute(update(Template).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        state = app.extensions["postgraas"]
        Reaper(state.backends, state.settings.lifecycle).run_pass()
    assert client.get(f"/postgraas_templates/{template['id']}").status_code == 404
    assert fake_backend.list_templates() == {}
