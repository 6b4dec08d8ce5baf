"""The warm pool, against the meta db and an in-memory backend."""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from postgraas_server.backends import BackendRegistry
from postgraas_server.config import settings_from_dict
from postgraas_server.errors import BackendError, Conflict, InvalidRequest
from postgraas_server.models import DBInstance, db
from postgraas_server.service.reaper import Reaper

from ..conftest import make_app
from .api_calls import create, fill

POOL_SIZE = 2


@pytest.fixture
def app(tmp_path, fake_backend):
    registry = BackendRegistry({"fake": fake_backend}, "fake", pools={"fake": POOL_SIZE})
    # The tests run the keeper's rounds themselves.
    return make_app(
        tmp_path, fake_backend, registry=registry, background=False, lifecycle={"reaper_interval": 0, "orphan_grace": 1}
    )


def statuses(app) -> list[str]:
    with app.app_context():
        return sorted(db.session.execute(select(DBInstance.status)).scalars())


def test_pooled_instances_are_made_ahead_and_hidden(app, client, keeper, fake_backend):
    assert fill(app, keeper) == POOL_SIZE
    assert fill(app, keeper) == 0
    assert statuses(app) == ["pooled", "pooled"]
    assert len(fake_backend.objects) == POOL_SIZE
    assert client.get("/postgraas_instances").get_json() == []
    for instance_id in (1, 2):
        assert client.get(f"/postgraas_instances/{instance_id}").status_code == 404
        assert client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": "x"}).status_code == 404
    assert 'postgraas_instances{backend="fake",status="pooled"} 2.0' in client.get("/metrics").get_data(as_text=True)


def test_a_create_takes_over_a_pooled_instance_and_it_is_replaced(app, client, keeper, fake_backend):
    fill(app, keeper)
    created = create(client, durability="ephemeral")
    assert created.status_code == 201
    body = created.get_json()
    assert (body["postgraas_instance_name"], body["db_name"], body["db_username"]) == ("demo", "app", "alice")
    assert body["status"] == "ready" and body["durability"] == "ephemeral"
    (claim,) = fake_backend.claims
    assert claim[0] == body["container_id"] and claim[1].startswith("pool_") and claim[2] == "alice"
    assert fake_backend.objects[body["container_id"]].ephemeral is True
    assert [i["postgraas_instance_id"] for i in client.get("/postgraas_instances").get_json()] == [
        body["postgraas_instance_id"]
    ]
    # The request's password, not the pool's, opens it now.
    assert (
        client.delete(f"/postgraas_instances/{body['postgraas_instance_id']}", json={"db_pwd": "x"}).status_code == 401
    )
    assert statuses(app) == ["pooled", "ready"]
    assert fill(app, keeper) == 1
    assert statuses(app) == ["pooled", "pooled", "ready"]
    text = client.get("/metrics").get_data(as_text=True)
    assert 'postgraas_create_duration_seconds_count{backend="fake",source="pool"}' in text


def test_no_pooled_instance_is_handed_out_twice(app, keeper, fake_backend):
    fill(app, keeper)
    answers: list = []

    def create_one(n: int) -> None:
        with app.test_client() as c:
            answers.append(create(c, postgraas_instance_name=f"race-{n}", db_username=f"user_{n}").get_json())

    threads = [threading.Thread(target=create_one, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a["status"] == "ready" for a in answers)
    refs = [a["container_id"] for a in answers]
    assert len(set(refs)) == 6
    assert len(fake_backend.claims) == POOL_SIZE
    assert len({ref for ref, _, _ in fake_backend.claims}) == POOL_SIZE


def test_a_failing_pooled_object_is_removed_and_the_create_made_anew(app, client, keeper, fake_backend):
    fill(app, keeper)
    fake_backend.fail_claim = BackendError("broken")
    created = create(client)
    assert created.status_code == 201
    assert fake_backend.claims == []
    assert statuses(app) == ["pooled", "ready"]
    assert len(fake_backend.objects) == POOL_SIZE


def test_a_taken_name_leaves_the_pool_alone(app, client, keeper, fake_backend):
    assert create(client).status_code == 201
    fill(app, keeper)
    assert create(client).status_code == 409
    assert statuses(app).count("pooled") == POOL_SIZE


def test_the_reaper_keeps_pooled_objects_and_trims_a_surplus(app, keeper, fake_backend):
    fill(app, keeper)
    for ref in fake_backend.objects:
        fake_backend.created_at[ref] = datetime.now(UTC) - timedelta(days=1)
    state = app.extensions["postgraas"]
    with app.app_context():
        reaper = Reaper(state.backends, state.settings.lifecycle)
        # Older than the orphan grace, but with a row: pooled objects are not orphans.
        assert reaper.run_pass().actions == []
        state.backends.pools["fake"] = 1
        actions = reaper.run_pass().actions
    assert actions == ["removed surplus pooled instance (id 2)"]
    assert statuses(app) == ["pooled"]
    assert len(fake_backend.objects) == 1


def test_a_docker_pool_needs_the_prepared_image(tmp_path):
    from postgraas_server.config import ConfigError

    def registry(prepare_image: bool) -> BackendRegistry:
        docker = {"type": "docker", "pool_size": 2, "prepare_image": prepare_image}
        return BackendRegistry.from_settings(
            settings_from_dict({"backends": {"docker": docker}, "metadb": {"url": "sqlite://"}}), "d"
        )

    with pytest.raises(ConfigError, match=r"pool_size: .*prepare_image: true"):
        registry(prepare_image=False)
    assert registry(prepare_image=True).pools == {"docker": 2}


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        (Conflict("A role named 'alice' already exists in the cluster."), 409),
        (InvalidRequest("The cluster's password policy refused db_pwd: too short.", {"db_pwd": "too short"}), 400),
    ],
)
def test_a_claim_the_backend_refuses_for_the_request_gives_the_instance_back_to_the_pool(
    app, client, keeper, fake_backend, refusal, status
):
    fill(app, keeper)
    before = {ref: spec.db_username for ref, spec in fake_backend.objects.items()}
    fake_backend.fail_claim = refusal
    answer = create(client)
    assert answer.status_code == status
    assert answer.get_json().get("errors", {}) == refusal.errors
    assert statuses(app) == ["pooled", "pooled"]
    assert {ref: spec.db_username for ref, spec in fake_backend.objects.items()} == before
    fake_backend.fail_claim = None
    assert create(client).status_code == 201


def test_a_failing_fill_leaves_no_row_behind(app, keeper, fake_backend):
    fake_backend.fail_create = BackendError("the engine is down")
    assert fill(app, keeper) == 0
    assert fill(app, keeper) == 0
    assert statuses(app) == []


def test_the_pool_stays_within_max_instances(app, keeper, fake_backend):
    app.extensions["postgraas"].backends.limits["fake"] = 1
    assert fill(app, keeper) == 1
    assert statuses(app) == ["pooled"]


def test_pooled_objects_are_made_as_such_and_kept_ready_by_every_keeper_round(app, keeper, fake_backend):
    fill(app, keeper)
    assert len(fake_backend.pooled_specs) == POOL_SIZE
    assert all(
        spec.db_pwd_verifier and spec.db_pwd_verifier.startswith("SCRAM-SHA-256$") for spec in fake_backend.pooled_specs
    )
    # The next round (the keeper's, every second, in every process) keeps them ready.
    assert fill(app, keeper) == 0
    assert sorted(fake_backend.kept_ready) == sorted(fake_backend.objects)


def test_pooled_objects_this_server_cannot_claim_are_replaced(app, client, keeper, fake_backend):
    fill(app, keeper)
    stale = sorted(fake_backend.objects)[0]
    fake_backend.unclaimable = {stale}
    # One round: the stale object is removed (and its row), and a replacement made.
    assert fill(app, keeper) == 1
    assert stale not in fake_backend.objects and (stale, True) in fake_backend.deleted
    assert statuses(app) == ["pooled", "pooled"]
    body = create(client).get_json()
    assert body["container_id"] != stale and fake_backend.claims


def test_names_a_backend_keeps_for_itself_are_made_anew(app, client, keeper, fake_backend):
    fill(app, keeper)
    fake_backend.reserved_names = {"admin"}
    created = create(client, db_username="admin")
    assert created.status_code == 201
    assert fake_backend.claims == []
    assert statuses(app) == ["pooled", "pooled", "ready"]
    # Any other name is claimed as usual.
    assert create(client, postgraas_instance_name="other", db_username="bob").status_code == 201
    assert len(fake_backend.claims) == 1


def test_a_claim_hands_the_backend_the_verifier_of_the_requested_password(app, client, keeper, fake_backend):
    from postgraas_server.scram import scram_keys

    fill(app, keeper)
    body = create(client, db_pwd="the-requested-one").get_json()
    spec = fake_backend.objects[body["container_id"]]
    _, iterations_salt, keys = spec.db_pwd_verifier.split("$")
    iterations, salt = iterations_salt.split(":")
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    assert scram_keys("the-requested-one", base64.b64decode(salt), int(iterations)) == (stored, server)
