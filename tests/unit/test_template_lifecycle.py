"""Templates over time, against the meta db and the fake backend: a template's pool of clones made
ahead, older contents replaced by a newer one, a create still cloning holding its template back,
and a token's max_templates."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from postgraas_server.backends import BackendRegistry
from postgraas_server.models import DBInstance, InstanceStatus, Template, db, utcnow
from postgraas_server.service import PoolKeeper, pool_keeper
from postgraas_server.service.reaper import Reaper
from postgraas_server.service.template_removal import retire_replaced
from postgraas_server.tokens import issue_token

from ..conftest import make_app
from ..fakes import FakeBackend
from .api_calls import create, fill, rows, wait_for
from .test_templates import ensure, finalize


@pytest.fixture
def app(tmp_path, fake_backend):
    # The tests run the keeper's rounds themselves.
    return make_app(tmp_path, fake_backend, background=False)


def reap(app) -> None:
    with app.app_context():
        state = app.extensions["postgraas"]
        Reaper(state.backends, state.settings.lifecycle).run_pass()


def built(client, content_hash: str = "h1", **overrides) -> dict:
    answer = ensure(client, hash=content_hash, **overrides)
    assert answer.status_code == 201, answer.get_json()
    finalized = finalize(client, answer.get_json())
    assert finalized.get_json()["status"] == "ready", finalized.get_json()
    return finalized.get_json()


def pooled_clones(app, template_id: int) -> list[DBInstance]:
    return [r for r in rows(app) if r.template_id == template_id and r.status == InstanceStatus.POOLED]


def test_a_templates_pool_is_filled_with_clones_and_a_create_takes_one(app, client, keeper, fake_backend):
    template = built(client, pool_size=2)
    assert fill(app, keeper) == 2
    pooled = pooled_clones(app, template["id"])
    assert len(pooled) == 2
    assert all(spec.pooled for spec in fake_backend.pooled_specs)
    assert [artifact for artifact, _ in fake_backend.cloned] == [f"fake-template-{template['id']}"] * 2

    answer = create(client, template="shop")
    assert answer.status_code == 201, answer.get_json()
    # One of the clones made ahead, handed over: no clone made on the create's path.
    assert answer.get_json()["id"] in {row.id for row in pooled}
    assert len(fake_backend.cloned) == 2 and len(fake_backend.claims) == 1
    # The keeper was woken and makes the replacement.
    assert keeper._wake.is_set()
    assert fill(app, keeper) == 1
    # The backend's own pool (none configured) takes none of them, and a plain create is made anew.
    plain = create(client, postgraas_instance_name="plain", db_name="plain", db_username="plain")
    assert plain.status_code == 201 and len(fake_backend.claims) == 1


def test_a_full_template_pools_replacements_wait_while_takes_go_on_for_a_while_unless_it_runs_low(
    app, client, keeper, fake_backend, monkeypatch
):
    template = built(client, pool_size=8)
    assert fill(app, keeper) == 8
    taken = iter(range(100))

    def take(times: int = 1) -> None:
        for _ in range(times):
            n = next(taken)
            answer = create(
                client, template="shop", postgraas_instance_name=f"t{n}", db_name=f"t{n}", db_username=f"t{n}"
            )
            assert answer.status_code == 201, answer.get_json()

    def pooled() -> int:
        return len(pooled_clones(app, template["id"]))

    def look() -> int:
        return fill(app, keeper)

    assert look() == 0  # found full
    take(2)
    # Taken since the last look, and more than a quarter left: the burst keeps the machine.
    assert look() == 0 and pooled() == 6
    take()
    assert look() == 0 and pooled() == 5
    # A look that finds none taken since the one before tops the pool up ...
    assert look() == 3 and pooled() == 8
    # ... and until it is found full again, every take is replaced at once.
    take()
    assert look() == 1
    assert look() == 0  # found full
    # Takes that go on longer than MAX_DEFERRAL_S: topped up all the same.
    take()
    assert look() == 0
    monkeypatch.setattr(pool_keeper, "MAX_DEFERRAL_S", 0.0)
    take()
    assert look() == 2 and pooled() == 8
    monkeypatch.undo()
    assert look() == 0  # found full
    take()
    assert look() == 0
    take(5)
    # A quarter or less left: made at once, whatever the takes.
    assert pooled() == 2
    assert look() == 6 and pooled() == 8


def test_a_templates_pool_goes_with_the_template_and_its_taken_clones_stay(app, client, keeper, fake_backend):
    template = built(client, pool_size=2)
    fill(app, keeper)
    taken = create(client, template="shop").get_json()
    fill(app, keeper)
    fake_backend.delete_gate = threading.Event()
    assert client.delete(f"/postgraas_templates/{template['id']}").status_code == 200
    # The answer did not wait for the clones' removal, which goes on in a thread of the server's.
    assert pooled_clones(app, template["id"]) == []
    assert sorted(r.status for r in rows(app) if r.id != taken["id"]) == ["deleting", "deleting"]
    fake_backend.delete_gate.set()
    wait_for(lambda: [r.id for r in rows(app)] == [taken["id"]])
    assert set(fake_backend.objects) == {f"fake-{taken['id']}"}
    # Nothing is made for a template that is gone.
    assert fill(app, keeper) == 0


def test_the_reaper_trims_a_templates_pool_to_its_size(app, client, keeper):
    template = built(client, pool_size=3)
    fill(app, keeper)
    with app.app_context():
        db.session.execute(
            DBInstance.__table__.update().where(DBInstance.template_id == template["id"]).values(template_id=None)
        )
        db.session.commit()
    # Those three are now pooled instances of a backend without a pool: surplus, all of them.
    reap(app)
    assert rows(app) == []


def test_a_newer_content_that_becomes_ready_replaces_the_older_one(app, client, fake_backend):
    old = built(client, "h1")
    clone = create(client, template="shop").get_json()
    new = built(client, "h2")
    assert client.get(f"/postgraas_templates/{old['id']}").status_code == 404
    assert fake_backend.list_templates() == {new["id"]: f"fake-template-{new['id']}"}
    refused = create(client, template="shop@h1", postgraas_instance_name="old", db_name="old", db_username="old")
    assert refused.status_code == 404 and "template" in refused.get_json()["errors"]
    # The clone of the older content stays.
    assert client.get(f"/postgraas_instances/{clone['id']}").get_json()["status"] == "ready"
    again = create(client, template="shop", postgraas_instance_name="new", db_name="new", db_username="new")
    assert fake_backend.cloned[-1] == (f"fake-template-{new['id']}", again.get_json()["id"])
    # Another name is not replaced by it.
    other = built(client, "h9", name="other")
    assert client.get(f"/postgraas_templates/{new['id']}").get_json()["status"] == "ready"
    assert client.get(f"/postgraas_templates/{other['id']}").get_json()["status"] == "ready"


def test_a_template_being_cloned_is_removed_only_after_the_clone(app, client, fake_backend):
    template = built(client)
    with app.app_context():
        # A create that recorded the template and is cloning it now.
        cloning = DBInstance(
            postgraas_instance_name="cloning", db_name="c", username="c", backend="fake",
            status=InstanceStatus.CREATING, template_id=template["id"],
        )  # fmt: skip
        db.session.add(cloning)
        db.session.commit()
        cloning_id = cloning.id
    answer = client.delete(f"/postgraas_templates/{template['id']}")
    assert answer.status_code == 200 and "reaper" in answer.get_json()["msg"]
    assert client.get(f"/postgraas_templates/{template['id']}").get_json()["status"] == "deleting"
    assert fake_backend.list_templates() == {template["id"]: f"fake-template-{template['id']}"}
    # No create starts from it meanwhile.
    assert create(client, template="shop").status_code == 404
    # The reaper leaves a delete that a request began to that request for a while; this one is older.
    with app.app_context():
        db.session.execute(update(Template).values(status_changed_at=utcnow() - timedelta(minutes=5)))
        db.session.commit()
    reap(app)
    assert fake_backend.list_templates() != {}
    with app.app_context():
        db.session.execute(
            DBInstance.__table__.update().where(DBInstance.id == cloning_id).values(status=InstanceStatus.READY)
        )
        db.session.commit()
    reap(app)
    assert fake_backend.list_templates() == {}
    assert client.get(f"/postgraas_templates/{template['id']}").status_code == 404


def test_a_tokens_max_templates_is_a_429_naming_the_field_and_leaves_nothing(tmp_path, fake_backend):
    app = make_app(tmp_path, fake_backend, background=False, auth={"mode": "token"})
    with app.app_context():
        token = issue_token("carol", admin=False, max_instances=None, max_ttl=None, max_templates=1)[1]
        other = issue_token("dave", admin=False, max_instances=None, max_ttl=None, max_templates=1)[1]
    carol, dave = {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {other}"}
    client = app.test_client()
    first = client.post("/postgraas_templates", json={"name": "shop", "hash": "h1"}, headers=carol)
    assert first.status_code == 201
    # The same content again is no new template: it waits for the build.
    assert client.post("/postgraas_templates", json={"name": "shop", "hash": "h1"}, headers=carol).status_code == 202
    over = client.post("/postgraas_templates", json={"name": "cart", "hash": "h1"}, headers=carol)
    assert over.status_code == 429, over.get_json()
    assert "max_templates" in over.get_json()["msg"] and "name" in over.get_json()["errors"]
    assert [t["name"] for t in client.get("/postgraas_templates", headers=carol).get_json()] == ["shop"]
    # Only the builder's database was made.
    assert len(fake_backend.objects) == 1
    # Another owner's quota is its own.
    assert client.post("/postgraas_templates", json={"name": "cart", "hash": "h1"}, headers=dave).status_code == 201
    with app.app_context():
        assert len(db.session.execute(select(DBInstance)).all()) == 2


def test_a_build_timeout_longer_than_the_server_allows_is_refused_before_anything_is_made(tmp_path, fake_backend):
    app = make_app(tmp_path, fake_backend, background=False, lifecycle={"reaper_interval": 0, "max_ttl": "1h"})
    client = app.test_client()
    refused = client.post(
        "/postgraas_templates", json={"name": "shop", "hash": "h1", "ttl": "30m", "build_timeout": 7200}
    )
    assert refused.status_code == 400, refused.get_json()
    assert "build_timeout" in refused.get_json()["errors"]
    assert client.get("/postgraas_templates").get_json() == [] and not fake_backend.objects
    assert (
        client.post(
            "/postgraas_templates", json={"name": "shop", "hash": "h1", "ttl": "30m", "build_timeout": 600}
        ).status_code
        == 201
    )


def test_a_builder_is_made_for_freezing_never_taken_from_the_backends_pool(tmp_path, fake_backend):
    registry = BackendRegistry({"fake": fake_backend}, "fake", pools={"fake": 2})
    app = make_app(tmp_path, fake_backend, registry=registry, background=False)
    pool_keeper = PoolKeeper(app.extensions["postgraas"].service.pool)
    assert fill(app, pool_keeper) == 2
    builder = ensure(app.test_client()).get_json()
    assert fake_backend.claims == []
    spec = fake_backend.objects[f"fake-{builder['instance_id']}"]
    assert spec.template_builder and not spec.pooled


def test_a_content_retires_only_the_ones_ready_before_it(app, client):
    """Two contents finalized at once: each retires only what became ready before it, so the one
    ready last stays, whichever finalize looks first."""
    built(client, "h1")
    later = built(client, "h2")
    building = ensure(client, hash="h3").get_json()
    with app.app_context():
        # As if h2's finalize had made it ready after h3's, which looks only now.
        db.session.execute(
            update(Template).where(Template.id == later["id"]).values(status_changed_at=utcnow() + timedelta(seconds=5))
        )
        db.session.commit()
    assert finalize(client, building).get_json()["status"] == "ready"
    assert client.get(f"/postgraas_templates/{later['id']}").get_json()["status"] == "ready"
    with app.app_context():
        # h2's own finalize, looking after h3's, retires h3.
        state = app.extensions["postgraas"]
        assert retire_replaced(state.backends, db.session.get(Template, later["id"])) == [building["id"]]
        db.session.remove()


def test_a_rebuild_takes_the_new_requests_ttl_and_pool_size(app, client):
    building = ensure(client, build_timeout=10, ttl="1h").get_json()
    with app.app_context():
        db.session.execute(update(Template).values(heartbeat_at=utcnow() - timedelta(seconds=11)))
        db.session.commit()
    reap(app)
    again = ensure(client, build_timeout=10, ttl="2h", pool_size=3)
    assert again.status_code == 201 and again.get_json()["id"] == building["id"]
    with app.app_context():
        row = db.session.get(Template, building["id"])
        assert row.pool_size == 3
        assert row.expires_at > utcnow() + timedelta(minutes=90)


def test_a_finalize_that_takes_longer_than_build_timeout_is_not_given_up_while_it_beats(app, client):
    building = ensure(client, build_timeout=10).get_json()
    long_ago = utcnow() - timedelta(seconds=60)
    with app.app_context():
        db.session.execute(update(Template).values(status="finalizing", heartbeat_at=long_ago))
        db.session.execute(update(DBInstance).values(heartbeat_at=utcnow()))
        db.session.commit()
    reap(app)
    assert client.get(f"/postgraas_templates/{building['id']}").get_json()["status"] == "finalizing"
    with app.app_context():
        # Its server died: the builder's row is not beaten any more.
        db.session.execute(update(DBInstance).values(heartbeat_at=long_ago))
        db.session.commit()
    reap(app)
    assert client.get(f"/postgraas_templates/{building['id']}").get_json()["status"] == "failed"


def test_an_ensure_naming_another_backend_than_the_contents_is_a_409_naming_it(tmp_path, fake_backend):
    other = FakeBackend()
    registry = BackendRegistry({"one": fake_backend, "two": other}, "one")
    app = make_app(tmp_path, fake_backend, registry=registry, background=False)
    client = app.test_client()
    building = ensure(client, backend="one").get_json()
    finalize(client, building)
    answer = ensure(client, backend="two")
    assert answer.status_code == 409 and "backend" in answer.get_json()["errors"], answer.get_json()
    assert ensure(client).status_code == 200 and not other.objects
