"""States, waiting and time to live through the API, with an in-memory backend."""

from datetime import UTC, datetime, timedelta

import pytest

from postgraas_server.errors import BackendError

from ..conftest import make_app
from .api_calls import BODY, create, rows, wait_for


def close(a: timedelta, b: timedelta) -> bool:
    return abs(a - b) < timedelta(seconds=5)


def parse(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_ttl_sets_expires_at(client):
    before = datetime.now(UTC)
    body = create(client, ttl="30m").get_json()
    expires = parse(body["expires_at"])
    assert before + timedelta(minutes=30) <= expires <= datetime.now(UTC) + timedelta(minutes=30)
    assert create(client, postgraas_instance_name="forever").get_json()["expires_at"] is None


@pytest.mark.parametrize("ttl", ["soon", 0, -5, "5w", 1.5, True, "99999999999d"])
def test_bad_ttl_is_400(client, ttl):
    response = create(client, ttl=ttl)
    assert response.status_code == 400
    assert list(response.get_json()["errors"]) == ["ttl"]


@pytest.fixture
def limited(tmp_path, fake_backend):
    app = make_app(tmp_path, fake_backend, lifecycle={"reaper_interval": 0, "default_ttl": "1h", "max_ttl": "2h"})
    with app.test_client() as client:
        yield client


def test_default_and_maximum_ttl(limited):
    body = create(limited).get_json()
    assert close(parse(body["expires_at"]) - parse(body["creation_timestamp"]), timedelta(hours=1))
    response = create(limited, postgraas_instance_name="too-long", ttl="3h")
    assert response.status_code == 400
    assert response.get_json()["errors"] == {"ttl": "at most 2h"}


def test_patch_extends_within_the_maximum(limited):
    instance_id = create(limited, ttl=60).get_json()["postgraas_instance_id"]
    path = f"/postgraas_instances/{instance_id}"
    assert limited.patch(path, json={"db_pwd": "wrong", "ttl": "2h"}).status_code == 401
    assert limited.patch(path, json={"db_pwd": BODY["db_pwd"], "ttl": "3h"}).status_code == 400
    assert limited.patch(path, json={"db_pwd": BODY["db_pwd"], "ttl": None}).get_json()["errors"] == {
        "ttl": "required, at most 2h"
    }
    response = limited.patch(path, json={"db_pwd": BODY["db_pwd"], "ttl": "2h"})
    assert response.status_code == 200
    expires = parse(response.get_json()["expires_at"])
    assert close(expires - datetime.now(UTC), timedelta(hours=2))
    assert parse(limited.get(path).get_json()["expires_at"]) == expires


def test_patch_may_remove_the_expiry_without_a_maximum(client):
    instance_id = create(client, ttl=60).get_json()["postgraas_instance_id"]
    response = client.patch(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"], "ttl": None})
    assert response.status_code == 200 and response.get_json()["expires_at"] is None


def test_no_wait_answers_202_and_creates_in_the_background(app, client, fake_backend):
    fake_backend.create_delay = 0.3
    response = create(client, wait=False)
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "creating" and body["connection_uri"] is None and body["db_pwd"] == BODY["db_pwd"]
    assert response.headers["Location"] == f"/postgraas_instances/{body['postgraas_instance_id']}"
    settled = client.get(f"{response.headers['Location']}?wait=ready&timeout=10").get_json()
    assert settled["status"] == "ready"
    assert settled["port"] is not None and settled["backend_state"] == "running"


def test_wait_times_out_with_the_current_state(client, fake_backend):
    fake_backend.create_delay = 1.0
    location = create(client, wait=False).headers["Location"]
    assert client.get(f"{location}?wait=ready&timeout=0.2").get_json()["status"] == "creating"
    assert client.get(f"{location}?wait=ready&timeout=10").get_json()["status"] == "ready"


@pytest.mark.parametrize(
    "query", ["wait=yes", "wait=ready&timeout=-1", "wait=ready&timeout=301", "wait=ready&timeout=x"]
)
def test_bad_wait_parameters_are_400(client, query):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    assert client.get(f"/postgraas_instances/{instance_id}?{query}").status_code == 400


def test_background_failure_leaves_a_failed_row_saying_why(app, client, fake_backend):
    fake_backend.fail_create = BackendError("postgres did not start: disk full")
    location = create(client, wait=False).headers["Location"]
    settled = client.get(f"{location}?wait=ready&timeout=10").get_json()
    assert settled["status"] == "failed"
    assert settled["status_detail"] == "postgres did not start: disk full"
    assert fake_backend.objects == {}
    # A failed instance can be deleted, and its name used again.
    assert client.delete(location, json={"db_pwd": BODY["db_pwd"]}).status_code == 200
    fake_backend.fail_create = None
    assert create(client).status_code == 201


def test_sync_failure_leaves_no_row(app, client, fake_backend):
    fake_backend.fail_create = BackendError("nope")
    assert create(client).status_code == 502
    wait_for(lambda: rows(app) == [])
