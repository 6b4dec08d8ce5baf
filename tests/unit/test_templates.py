"""Templates through the API on the fake backend: who builds, finalize, clones, deletes and what
the reaper does with them (the backends' freeze and clone against real servers:
tests/integration/test_backend_contract_templates.py)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import update

from postgraas_server.models import Template, db, utcnow
from postgraas_server.service import Reaper

from .api_calls import create, rows

SHOP = {"name": "shop", "hash": "sha256-aaa"}


def ensure(client, **overrides):
    return client.post("/postgraas_templates", json={**SHOP, **overrides})


def finalize(client, builder: dict, **overrides):
    """The builder's finalize: its instance id, and (no token here) its db_pwd."""
    body = {"instance_id": builder["instance_id"], "db_pwd": builder["db_pwd"], **overrides}
    return client.post(f"/postgraas_templates/{builder['id']}/finalize", json=body)


def built(client) -> dict:
    """A ready template: ensured, then finalized by its builder."""
    answer = ensure(client)
    assert answer.status_code == 201, answer.get_json()
    finalized = finalize(client, answer.get_json())
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

    assert finalize(client, body).get_json()["status"] == "ready"
    # The builder's database became the template: no instance is left of it.
    assert f"fake-{body['instance_id']}" not in fake_backend.objects
    assert not rows(client.application)
    assert fake_backend.list_templates() == {body["id"]: f"fake-template-{body['id']}"}

    third = ensure(client)
    assert third.status_code == 200
    assert third.get_json()["status"] == "ready" and "db_pwd" not in third.get_json()


def test_a_waiter_wakes_up_when_the_template_is_finalized(client):
    builder = ensure(client).get_json()
    assert client.get(f"/postgraas_templates/{builder['id']}?wait=ready&timeout=0").get_json()["status"] == "building"
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(
            client.application.test_client().get, f"/postgraas_templates/{builder['id']}?wait=ready&timeout=20"
        )
        time.sleep(0.5)
        assert not waiting.done()
        finalize(client, builder)
        assert waiting.result(timeout=20).get_json()["status"] == "ready"


def test_a_create_naming_the_template_clones_its_newest_ready_content(client, fake_backend):
    template = built(client)
    answer = create(client, template="shop")
    assert answer.status_code == 201, answer.get_json()
    assert fake_backend.cloned == [(f"fake-template-{template['id']}", answer.get_json()["id"])]
    by_hash = create(client, postgraas_instance_name="other", template="shop@sha256-aaa")
    assert by_hash.status_code == 201, by_hash.get_json()


def test_a_create_naming_no_ready_template_is_a_404_naming_the_field(client):
    ensure(client)  # building, not ready
    for ref in ("shop", "shop@sha256-aaa", "nothing"):
        answer = create(client, template=ref)
        assert answer.status_code == 404, ref
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


def test_finalize_and_heartbeat_are_the_current_builders_alone(client, fake_backend):
    builder = ensure(client).get_json()
    # Without a token the builder's db_pwd is the proof.
    assert finalize(client, builder, db_pwd="wrong").status_code == 401
    assert finalize(client, builder, instance_id=builder["instance_id"] + 1).status_code == 409
    heartbeat = {"instance_id": builder["instance_id"], "db_pwd": builder["db_pwd"]}
    assert client.post(f"/postgraas_templates/{builder['id']}/heartbeat", json=heartbeat).status_code == 200
    assert client.post(f"/postgraas_templates/{builder['id']}/heartbeat", json={}).status_code == 400
    assert finalize(client, builder).status_code == 200
    # Ready: finalize again changes nothing; a heartbeat has no build to keep alive.
    assert finalize(client, builder).status_code == 200
    assert client.post(f"/postgraas_templates/{builder['id']}/heartbeat", json=heartbeat).status_code == 409
    assert client.post("/postgraas_templates/999/finalize", json=heartbeat).status_code == 404


def test_a_given_up_builders_late_finalize_cannot_freeze_its_successors_database(app, client, fake_backend):
    first = ensure(client, build_timeout=10).get_json()
    with app.app_context():
        db.session.execute(update(Template).values(heartbeat_at=utcnow() - timedelta(seconds=11)))
        db.session.commit()
    second = ensure(client, build_timeout=10).get_json()
    assert second["id"] == first["id"] and second["instance_id"] != first["instance_id"]
    # The first build's database went when the second began.
    assert f"fake-{first['instance_id']}" not in fake_backend.objects
    assert finalize(client, first).status_code in (401, 409)
    assert f"fake-{second['instance_id']}" in fake_backend.objects
    assert client.get(f"/postgraas_templates/{first['id']}").get_json()["status"] == "building"
    assert finalize(client, second).get_json()["status"] == "ready"


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


def test_the_reaper_drops_templates_no_row_holds_and_keeps_the_ones_rows_hold(app, client, fake_backend):
    template = built(client)
    fake_backend.templates[424242] = "fake-template-424242"
    with app.app_context():
        state = app.extensions["postgraas"]
        Reaper(state.backends, state.settings.lifecycle).run_pass()
        assert fake_backend.list_templates() == {template["id"]: f"fake-template-{template['id']}"}
        # A leftover under a ready template's id that is not its artifact goes too.
        fake_backend.templates[template["id"]] = "fake-template-left-over"
        Reaper(state.backends, state.settings.lifecycle).run_pass()
    assert fake_backend.list_templates() == {}
    assert client.get(f"/postgraas_templates/{template['id']}").get_json()["status"] == "ready"


def test_an_expired_template_is_removed_by_the_reaper(app, client, fake_backend):
    template = built(client)
    with app.app_context():
        db.session.execute(update(Template).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        state = app.extensions["postgraas"]
        Reaper(state.backends, state.settings.lifecycle).run_pass()
    assert client.get(f"/postgraas_templates/{template['id']}").status_code == 404
    assert fake_backend.list_templates() == {}
