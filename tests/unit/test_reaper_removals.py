"""A pass queues the removals of expired instances and returns; they run after it, a few at once,
beating, so no reaper takes them over; a failed or dropped one is finished by a later pass."""

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from postgraas_server.errors import BackendUnavailable
from postgraas_server.models import DBInstance, Lease, db
from postgraas_server.service import Reaper, ReaperLoop

from ..conftest import make_app
from .api_calls import create, rows

LONG_AGO = datetime.now(UTC) - timedelta(days=30)


def expire(app, *instance_ids):
    with app.app_context():
        db.session.execute(update(DBInstance).where(DBInstance.id.in_(instance_ids)).values(expires_at=LONG_AGO))
        db.session.commit()


def expired_instances(tmp_path, fake_backend, count, **lifecycle):
    """An app (its reaper loop off) with ``count`` instances, all expired; their ids."""
    app = make_app(tmp_path, fake_backend, lifecycle={"reaper_interval": 0, **lifecycle})
    with app.test_client() as client:
        ids = [
            create(client, postgraas_instance_name=f"i{n}", ttl=60).get_json()["postgraas_instance_id"]
            for n in range(count)
        ]
    expire(app, *ids)
    return app, ids


def reapers(app):
    """One reaper with removal threads (as a server runs it), one that removes inside its pass."""
    state = app.extensions["postgraas"]
    lifecycle = state.settings.lifecycle
    return (
        Reaper(state.backends, lifecycle, state.service.heartbeats, app.app_context),
        Reaper(state.backends, lifecycle),
    )


def blocked_deletes(fake_backend):
    """The fake's deletes wait until the returned event is set; the refs asked for, in order."""
    go, asked = threading.Event(), []
    real_delete = fake_backend.delete

    def delete(ref, *args, **kwargs):
        asked.append(ref)
        assert go.wait(30)
        return real_delete(ref, *args, **kwargs)

    fake_backend.delete = delete
    return go, asked


def test_a_pass_returns_before_the_removals_it_queued_and_nobody_takes_them_over(tmp_path, fake_backend):
    app, ids = expired_instances(tmp_path, fake_backend, 6, heartbeat_timeout=1)
    reaper, other = reapers(app)
    go, asked = blocked_deletes(fake_backend)
    with app.app_context():
        assert reaper.acquire(60)
        report = reaper.run_pass(lease_seconds=60)
        reaper.release()
    assert report.actions == []  # none removed yet: every delete waits
    assert {row.status for row in rows(app)} == {"deleting"}
    time.sleep(2.5)  # past heartbeat_timeout: queued and running rows beat
    with app.app_context():
        assert other.run_pass().actions == []
    assert {row.status for row in rows(app)} == {"deleting"}
    go.set()
    assert reaper.wait_for_removals(timeout=30)
    assert rows(app) == [] and fake_backend.objects == {}
    assert sorted(asked) == sorted(f"fake-{i}" for i in ids)  # each removed once
    assert len(report.actions) == 6 and all(a.startswith("deleted expired instance") for a in report.actions)


def test_at_most_reaper_removals_run_at_once(tmp_path, fake_backend):
    app, _ = expired_instances(tmp_path, fake_backend, 5, reaper_removals=2)
    reaper, _ = reapers(app)
    go, asked = blocked_deletes(fake_backend)
    with app.app_context():
        reaper.run_pass()
    time.sleep(0.5)
    assert len(asked) == 2
    go.set()
    assert reaper.wait_for_removals(timeout=30)
    assert len(asked) == 5 and rows(app) == []


def test_a_failed_removal_stops_beating_and_a_later_pass_finishes_it(tmp_path, fake_backend):
    app, (instance_id,) = expired_instances(tmp_path, fake_backend, 1, heartbeat_timeout=1)
    reaper, other = reapers(app)
    fake_backend.fail_delete = BackendUnavailable("engine down")
    with app.app_context():
        assert reaper.run_pass().actions == []
    assert reaper.wait_for_removals(timeout=30)
    assert rows(app)[0].status == "deleting" and fake_backend.objects
    fake_backend.fail_delete = None
    time.sleep(1.5)  # silent past heartbeat_timeout
    with app.app_context():
        assert other.run_pass().actions == [f"finished deleting instance i0 (id {instance_id}) in backend fake"]
    assert rows(app) == [] and fake_backend.objects == {}


def test_a_stopped_reaper_drops_what_it_queued_and_another_finishes_it(tmp_path, fake_backend):
    app, _ = expired_instances(tmp_path, fake_backend, 3, heartbeat_timeout=1, reaper_removals=1)
    reaper, other = reapers(app)
    go, asked = blocked_deletes(fake_backend)
    with app.app_context():
        reaper.run_pass()
    time.sleep(0.3)
    reaper.stop()  # one runs, two queued are dropped
    go.set()
    assert reaper.wait_for_removals(timeout=30)
    assert len(asked) == 1 and len(rows(app)) == 2
    time.sleep(1.5)  # the dropped ones beat no more
    with app.app_context():
        actions = other.run_pass().actions
    assert len(actions) == 2 and all(a.startswith("finished deleting instance") for a in actions)
    assert rows(app) == [] and fake_backend.objects == {}


def test_a_stopped_loop_gives_the_lease_back(tmp_path, fake_backend):
    app = make_app(tmp_path, fake_backend, background=False, lifecycle={"reaper_interval": 1})
    reaper, other = reapers(app)
    loop = ReaperLoop(reaper, app.app_context)
    thread = loop.start()
    with app.app_context():
        deadline = time.monotonic() + 10
        while db.session.execute(select(Lease.holder)).scalar() is None and time.monotonic() < deadline:
            db.session.rollback()
            time.sleep(0.05)
        db.session.rollback()
        assert not other.acquire(60)  # the loop holds it
    loop.stop()
    thread.join(10)
    assert not thread.is_alive()
    with app.app_context():
        assert other.acquire(60)  # at once, not 1.5 intervals later
