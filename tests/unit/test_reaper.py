"""The reaper's decisions, against the meta db and an in-memory backend."""

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete as sa_delete
from sqlalchemy import update

from postgraas_server.backends import Credentials, DatabaseSpec, ManagedObject
from postgraas_server.errors import BackendUnavailable
from postgraas_server.models import DBInstance, db
from postgraas_server.service.reaper import Reaper

from ..conftest import make_app
from .api_calls import BODY, create, rows

LONG_AGO = datetime.now(UTC) - timedelta(days=30)


@pytest.fixture
def reaper(app):
    state = app.extensions["postgraas"]
    with app.app_context():
        yield Reaper(state.backends, state.settings.lifecycle)


def set_row(instance_id, **values):
    db.session.execute(update(DBInstance).where(DBInstance.id == instance_id).values(**values))
    db.session.commit()


def test_expired_instances_are_deleted_with_their_objects(app, client, reaper, fake_backend):
    expired = create(client, ttl=60).get_json()
    kept = create(client, postgraas_instance_name="kept", ttl=3600).get_json()
    set_row(expired["postgraas_instance_id"], expires_at=LONG_AGO)
    report = reaper.run_pass()
    assert report.actions == [f"deleted expired instance demo (id {expired['postgraas_instance_id']}) in backend fake"]
    assert [r.id for r in rows(app)] == [kept["postgraas_instance_id"]]
    assert list(fake_backend.objects) == [kept["container_id"]]


def test_an_expired_instance_is_removed_once_not_again_as_an_orphan(app, client, reaper, fake_backend):
    # The pass lists the backends before it deletes: an old instance's object, gone with its row,
    # is still in that listing, past the orphan grace.
    expired = create(client, ttl=60).get_json()
    set_row(expired["postgraas_instance_id"], expires_at=LONG_AGO)
    fake_backend.created_at[expired["container_id"]] = LONG_AGO
    deletes = []
    real_delete = fake_backend.delete
    fake_backend.delete = lambda ref, *args, **kwargs: deletes.append(ref) or real_delete(ref, *args, **kwargs)
    report = reaper.run_pass()
    assert report.actions == [f"deleted expired instance demo (id {expired['postgraas_instance_id']}) in backend fake"]
    assert deletes == [expired["container_id"]]


def test_a_creation_whose_server_died_fails_and_its_objects_go(app, client, reaper, fake_backend):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    # As a crash mid-create leaves it: the row still creating, no heartbeat, an object made.
    set_row(instance_id, status="creating", heartbeat_at=LONG_AGO, container_id=None)
    report = reaper.run_pass()
    assert report.actions[0].startswith("marked instance demo")
    assert "left in backend fake" in report.actions[1]
    assert fake_backend.objects == {}
    (row,) = rows(app)
    assert row.status == "failed" and "creation interrupted" in row.status_detail


def test_a_live_creation_is_left_alone(app, client, reaper, fake_backend):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    set_row(instance_id, status="creating", heartbeat_at=datetime.now(UTC), container_id=None)
    assert reaper.run_pass().actions == []
    assert rows(app)[0].status == "creating" and fake_backend.objects


def test_failed_deletes_are_retried(app, client, reaper, fake_backend):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    fake_backend.fail_delete = BackendUnavailable("engine down")
    assert client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"]}).status_code == 503
    fake_backend.fail_delete = None
    assert reaper.run_pass().actions == []  # too fresh: the request might still be at work
    set_row(instance_id, status_changed_at=LONG_AGO)
    assert reaper.run_pass().actions == [f"finished deleting instance demo (id {instance_id}) in backend fake"]
    assert rows(app) == [] and fake_backend.objects == {}


def test_orphans_go_after_the_grace_period(app, reaper, fake_backend):
    spec = DatabaseSpec(4242, "orphan", "d", "u", "p")
    ref = fake_backend.create(spec).ref
    assert reaper.run_pass().actions == []  # within orphan_grace: maybe a create in flight
    fake_backend.created_at[ref] = LONG_AGO
    assert reaper.run_pass().actions == [
        f"removed orphan {ref} of instance orphan (id 4242) from backend fake: it has no meta row"
    ]
    assert fake_backend.objects == {}


def test_vanished_objects_make_the_instance_lost_and_it_can_still_be_deleted(app, client, reaper, fake_backend):
    body = create(client).get_json()
    fake_backend.objects.clear()
    report = reaper.run_pass()
    assert report.actions == [
        f"marked instance demo (id {body['postgraas_instance_id']}) in backend fake lost: "
        f"its fake object {body['container_id']} vanished"
    ]
    item = client.get(f"/postgraas_instances/{body['postgraas_instance_id']}").get_json()
    assert (item["status"], item["backend_state"]) == ("lost", "missing")
    deleted = client.delete(f"/postgraas_instances/{body['postgraas_instance_id']}", json={"db_pwd": BODY["db_pwd"]})
    assert deleted.status_code == 200


def test_old_lost_and_failed_rows_are_forgotten(app, client, reaper, fake_backend):
    lost = create(client).get_json()["postgraas_instance_id"]
    failed = create(client, postgraas_instance_name="failed").get_json()["postgraas_instance_id"]
    set_row(lost, status="lost", status_changed_at=LONG_AGO)
    set_row(failed, status="failed", status_changed_at=LONG_AGO)
    actions = reaper.run_pass().actions
    assert f"forgot lost instance demo (id {lost}) in backend fake" in actions
    assert f"forgot failed instance failed (id {failed}) in backend fake" in actions
    assert rows(app) == []


def test_rows_of_2x_without_a_status_change_are_judged_by_their_creation(app, client, reaper, fake_backend):
    old = create(client).get_json()["postgraas_instance_id"]
    recent = create(client, postgraas_instance_name="recent").get_json()["postgraas_instance_id"]
    set_row(old, status="failed", status_changed_at=None, creation_timestamp=LONG_AGO)
    set_row(recent, status="lost", status_changed_at=None, creation_timestamp=datetime.now(UTC))
    assert f"forgot failed instance demo (id {old}) in backend fake" in reaper.run_pass().actions
    assert [(r.id, r.status) for r in rows(app)] == [(recent, "lost")]


def test_an_unreachable_backend_is_skipped_not_judged(app, client, reaper, fake_backend):
    create(client)
    fake_backend.objects.clear()
    fake_backend.fail_list = BackendUnavailable("engine down")
    assert reaper.run_pass().actions == []
    assert rows(app)[0].status == "ready"
    fake_backend.fail_list = None
    fake_backend.fail_describe = BackendUnavailable("engine down")
    assert reaper.run_pass().actions == []
    assert rows(app)[0].status == "ready"


def test_a_patch_between_listing_and_claim_wins_over_expiry(app, client, reaper, fake_backend, monkeypatch):
    instance_id = create(client, ttl=60).get_json()["postgraas_instance_id"]
    set_row(instance_id, expires_at=LONG_AGO)
    stale = reaper._rows("ready")  # what the reaper saw ...
    set_row(instance_id, expires_at=datetime.now(UTC) + timedelta(hours=1))  # ... then a PATCH
    monkeypatch.setattr(reaper, "_rows", lambda *statuses, **_: stale if "ready" in statuses else [])
    assert reaper.run_pass().actions == []
    assert rows(app)[0].status == "ready" and fake_backend.objects


def test_a_heartbeat_between_listing_and_claim_keeps_the_creation(app, client, reaper, monkeypatch):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    set_row(instance_id, status="creating", heartbeat_at=LONG_AGO)
    stale = reaper._rows("creating")
    set_row(instance_id, heartbeat_at=datetime.now(UTC))
    monkeypatch.setattr(reaper, "_rows", lambda *statuses, **_: stale if "creating" in statuses else [])
    assert reaper.run_pass().actions == []
    assert rows(app)[0].status == "creating"


def test_a_pass_stops_when_another_reaper_took_the_lease(app, client, reaper):
    from postgraas_server.service.reaper import LeaseLost

    state = app.extensions["postgraas"]
    instance_id = create(client, ttl=60).get_json()["postgraas_instance_id"]
    set_row(instance_id, expires_at=LONG_AGO)
    other = Reaper(state.backends, state.settings.lifecycle)
    assert other.acquire(60)
    with pytest.raises(LeaseLost):
        reaper.run_pass(lease_seconds=60)
    assert rows(app)[0].status == "ready"


def test_one_lease_holder_at_a_time(app, reaper):
    state = app.extensions["postgraas"]
    other = Reaper(state.backends, state.settings.lifecycle)
    assert reaper.acquire(60)
    assert not other.acquire(60)
    assert reaper.acquire(60)  # renewing is fine
    reaper.release()
    assert other.acquire(60)
    assert not reaper.acquire(60)


def test_an_expired_lease_can_be_taken(app, reaper):
    state = app.extensions["postgraas"]
    other = Reaper(state.backends, state.settings.lifecycle)
    assert reaper.acquire(0.01)
    time.sleep(0.05)
    assert other.acquire(60)


def test_a_row_deleted_by_a_request_during_a_pass_does_not_stop_it(app, client, reaper, fake_backend, monkeypatch):
    first = create(client, ttl=60).get_json()
    second = create(client, postgraas_instance_name="second", ttl=60).get_json()
    for body in (first, second):
        set_row(body["postgraas_instance_id"], expires_at=LONG_AGO)
    real_delete = fake_backend.delete

    def delete_and_meanwhile_a_request_deletes_the_second(*args, **kwargs):
        # A request in another worker removes the second row while the pass works on the first.
        with db.engine.begin() as other:
            other.execute(sa_delete(DBInstance).where(DBInstance.id == second["postgraas_instance_id"]))
        return real_delete(*args, **kwargs)

    monkeypatch.setattr(fake_backend, "delete", delete_and_meanwhile_a_request_deletes_the_second)
    report = reaper.run_pass()
    assert report.actions == [f"deleted expired instance demo (id {first['postgraas_instance_id']}) in backend fake"]
    assert rows(app) == []


def test_a_delete_still_at_work_is_not_retried_beside_its_request(tmp_path, fake_backend):
    """The request's delete outlives heartbeat_timeout; it beats, so the reaper leaves it alone."""
    app = make_app(tmp_path, fake_backend, lifecycle={"reaper_interval": 0, "heartbeat_timeout": 1})
    state = app.extensions["postgraas"]
    with app.test_client() as client:
        instance_id = create(client).get_json()["postgraas_instance_id"]
    fake_backend.delete_delay = 3.0
    answers = []

    def delete():
        with app.test_client() as client:
            answers.append(
                client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"]}).status_code
            )

    request = threading.Thread(target=delete)
    request.start()
    time.sleep(2.0)  # past heartbeat_timeout, the delete still at work
    with app.app_context():
        assert Reaper(state.backends, state.settings.lifecycle).run_pass().actions == []
    request.join()
    assert answers == [200]
    assert [ref for ref, _ in fake_backend.deleted] == [f"fake-{instance_id}"]  # removed once, by the request


def test_an_object_whose_name_another_instance_took_makes_the_row_lost_and_is_never_removed(
    app, client, reaper, fake_backend
):
    body = create(client).get_json()
    ref, instance_id = body["container_id"], body["postgraas_instance_id"]
    # Its object vanished, and another instance (id 777) holds the same name now.
    fake_backend.objects[ref] = DatabaseSpec(777, "theirs", "app", "someone", "pw")
    report = reaper.run_pass()
    assert report.actions == [
        f"marked instance demo (id {instance_id}) in backend fake lost: its fake object {ref} vanished"
    ]
    assert client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"]}).status_code == 200
    assert fake_backend.objects[ref].instance_id == 777 and fake_backend.deleted == []


def test_a_row_made_ready_after_the_listing_is_not_judged_by_it(app, client, reaper, fake_backend, monkeypatch):
    """The listing is taken first: an instance made meanwhile, with a name another instance held
    at the listing, is alive, not lost (else the reaper would drop it after lost_retention)."""
    body = create(client).get_json()
    ref, instance_id = body["container_id"], body["postgraas_instance_id"]

    def listing_from_before_it_was_made():
        set_row(instance_id, status_changed_at=datetime.now(UTC))  # became ready during the listing
        return [ManagedObject(ref, instance_id + 1, datetime.now(UTC), Credentials("app", "someone", ""))]

    monkeypatch.setattr(fake_backend, "list_objects", listing_from_before_it_was_made)
    assert reaper.run_pass().actions == []
    assert rows(app)[0].status == "ready"


def test_an_unexpected_error_removing_one_object_does_not_stop_the_pass(app, client, reaper, fake_backend):
    broken = create(client, ttl=60).get_json()
    other = create(client, postgraas_instance_name="other", ttl=60).get_json()
    for body in (broken, other):
        set_row(body["postgraas_instance_id"], expires_at=LONG_AGO)
    real_delete = fake_backend.delete

    def delete(ref, credentials, **kwargs):
        if ref == broken["container_id"]:
            raise UnicodeEncodeError("latin-1", "p€", 1, 2, "cannot encode")
        return real_delete(ref, credentials, **kwargs)

    fake_backend.delete = delete
    report = reaper.run_pass()
    assert report.actions == [f"deleted expired instance other (id {other['postgraas_instance_id']}) in backend fake"]
    assert [(r.id, r.status) for r in rows(app)] == [(broken["postgraas_instance_id"], "deleting")]
