"""auth.mode token: bearer tokens, owners, admins and quotas, with an in-memory backend."""

import pytest
from click.testing import CliRunner

from postgraas_server.cli import main
from postgraas_server.errors import BackendTimeout, BackendUnavailable
from postgraas_server.tokens import issue_token, revoke_token

from ..conftest import make_app
from .api_calls import BODY


@pytest.fixture
def app(tmp_path, fake_backend):
    return make_app(
        tmp_path,
        fake_backend,
        auth={"mode": "token"},
        lifecycle={"reaper_interval": 0, "max_ttl": "1d"},
    )


@pytest.fixture
def tokens(app):
    with app.app_context():
        made = {
            "alice": issue_token("alice", admin=False, max_instances=2, max_ttl=3600)[1],
            "bob": issue_token("bob", admin=False, max_instances=None, max_ttl=None)[1],
            "root": issue_token("root", admin=True, max_instances=None, max_ttl=None)[1],
        }
    return made


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_requests_without_a_valid_token_are_401_with_www_authenticate(client, tokens):
    for headers in ({}, {"Authorization": "Basic abc"}, bearer("pgr_1_" + "x" * 43), bearer("nonsense")):
        response = client.get("/postgraas_instances", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="postgraas"'
        assert response.get_json()["status"] == "failed"
    assert client.get("/health").status_code == 200


def test_owners_see_and_touch_only_their_own(client, tokens):
    mine = client.post("/postgraas_instances", json={**BODY, "ttl": 60}, headers=bearer(tokens["alice"])).get_json()
    instance_id = mine["postgraas_instance_id"]
    path = f"/postgraas_instances/{instance_id}"
    assert [
        i["postgraas_instance_id"]
        for i in client.get("/postgraas_instances", headers=bearer(tokens["alice"])).get_json()
    ] == [instance_id]
    assert client.get("/postgraas_instances", headers=bearer(tokens["bob"])).get_json() == []
    # Another owner's id answers exactly like a missing one.
    for method in ("get", "delete", "patch"):
        theirs = getattr(client, method)(path, json={"ttl": 60}, headers=bearer(tokens["bob"]))
        missing = getattr(client, method)("/postgraas_instances/999", json={"ttl": 60}, headers=bearer(tokens["bob"]))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.get_json()["msg"].replace(str(instance_id), "N") == missing.get_json()["msg"].replace("999", "N")
    assert len(client.get("/postgraas_instances", headers=bearer(tokens["root"])).get_json()) == 1
    # The owner's token deletes without db_pwd; a db_pwd sent is still checked.
    assert client.delete(path, json={"db_pwd": "wrong"}, headers=bearer(tokens["alice"])).status_code == 401
    assert client.delete(path, json={}, headers=bearer(tokens["alice"])).status_code == 200


def test_admin_may_delete_anyones(client, tokens):
    created = client.post("/postgraas_instances", json={**BODY, "ttl": 60}, headers=bearer(tokens["bob"])).get_json()
    path = f"/postgraas_instances/{created['postgraas_instance_id']}"
    assert client.delete(path, json={}, headers=bearer(tokens["root"])).status_code == 200


def test_owner_quotas_are_429_saying_which_limit(client, tokens):
    for name in ("one", "two"):
        body = {**BODY, "postgraas_instance_name": name}
        assert client.post("/postgraas_instances", json=body, headers=bearer(tokens["alice"])).status_code == 201
    over = client.post(
        "/postgraas_instances", json={**BODY, "postgraas_instance_name": "three"}, headers=bearer(tokens["alice"])
    )
    assert over.status_code == 429
    assert "max_instances 2" in over.get_json()["msg"]
    long = client.post(
        "/postgraas_instances",
        json={**BODY, "postgraas_instance_name": "x", "ttl": "2h"},
        headers=bearer(tokens["bob"]),
    )
    assert long.status_code == 201  # bob's token has no max_ttl; the global max is 1d
    too_long = client.post("/postgraas_instances", json={**BODY, "ttl": "2h"}, headers=bearer(tokens["alice"]))
    assert too_long.status_code == 429
    assert too_long.get_json()["errors"] == {"ttl": "at most 1h for this token"}


def test_a_limited_token_gives_its_max_ttl_by_default(client, tokens):
    created = client.post("/postgraas_instances", json=BODY, headers=bearer(tokens["alice"])).get_json()
    assert created["expires_at"] is not None


def test_global_capacity_is_503_with_retry_after(tmp_path, fake_backend):
    app = make_app(tmp_path, fake_backend, auth={"mode": "token"})
    app.extensions["postgraas"].backends.limits["fake"] = 1
    with app.app_context():
        secret = issue_token("carol", admin=False, max_instances=None, max_ttl=None)[1]
    with app.test_client() as client:
        assert client.post("/postgraas_instances", json=BODY, headers=bearer(secret)).status_code == 201
        full = client.post(
            "/postgraas_instances", json={**BODY, "postgraas_instance_name": "b"}, headers=bearer(secret)
        )
    assert full.status_code == 503
    assert full.headers["Retry-After"] == "60"
    assert "capacity of 1" in full.get_json()["msg"]


def test_revoked_tokens_stop_working(app, client, tokens):
    assert client.get("/postgraas_instances", headers=bearer(tokens["bob"])).status_code == 200
    with app.app_context():
        revoke_token(int(tokens["bob"].split("_")[1]))
    assert client.get("/postgraas_instances", headers=bearer(tokens["bob"])).status_code == 401


def test_token_cli_prints_the_secret_once_and_lists_no_secret(tmp_path, app):
    config = tmp_path / "application.cfg"
    config.write_text(f'{{"metadb": {{"url": "sqlite:///{tmp_path / "meta.sqlite"}"}}}}')
    runner = CliRunner()
    made = runner.invoke(main, ["--config", str(config), "token", "create", "--owner", "dave", "--max-ttl", "2h"])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith("pgr_")
    listed = runner.invoke(main, ["--config", str(config), "token", "list"])
    assert "dave" in listed.output and secret.split("_", 2)[2] not in listed.output
    bad = runner.invoke(main, ["--config", str(config), "token", "create", "--owner", "x", "--max-ttl", "soon"])
    assert bad.exit_code == 2


def test_the_api_description_needs_no_token_and_names_the_scheme(client, tokens):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["components"]["securitySchemes"] == {"token": {"type": "http", "scheme": "bearer"}}


def test_names_are_per_owner_so_a_409_reveals_nothing_of_others(client, tokens):
    body = {**BODY, "postgraas_instance_name": "shared-name", "ttl": 60}
    assert client.post("/postgraas_instances", json=body, headers=bearer(tokens["alice"])).status_code == 201
    assert client.post("/postgraas_instances", json=body, headers=bearer(tokens["bob"])).status_code == 201
    again = client.post("/postgraas_instances", json=body, headers=bearer(tokens["bob"]))
    assert again.status_code == 409


def test_ready_tells_why_only_to_an_admin_token(client, tokens, fake_backend):
    why = "The Docker engine at tcp://10.1.2.3:2376 cannot be reached."
    fake_backend.health = lambda: (_ for _ in ()).throw(BackendUnavailable(why))
    for headers in ({}, bearer(tokens["alice"]), bearer("nonsense")):
        response = client.get("/ready", headers=headers)
        assert response.status_code == 503
        assert response.get_json()["checks"] == {"metadb": "ok", "fake": "failed"}
    response = client.get("/ready", headers=bearer(tokens["root"]))
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"metadb": "ok", "fake": why}


def test_deletes_the_reaper_must_finish_count_only_beyond_the_limit(client, tokens, fake_backend):
    """alice may hold 2: what she asked to delete does not count while it waits for the reaper, up
    to 2 more; beyond, it does, so deletes that never finish are no way around the limit."""
    headers = bearer(tokens["alice"])
    fake_backend.fail_delete = BackendTimeout("waiting on a lock")
    for n in range(4):
        made = client.post(
            "/postgraas_instances", json={**BODY, "postgraas_instance_name": f"a{n}", "ttl": 60}, headers=headers
        )
        assert made.status_code == 201, made.get_json()
        stuck = client.delete(f"/postgraas_instances/{made.get_json()['postgraas_instance_id']}", headers=headers)
        assert stuck.status_code == 504
    # Four deleting: two beyond the limit count, so alice is at hers.
    refused = client.post(
        "/postgraas_instances", json={**BODY, "postgraas_instance_name": "a9", "ttl": 60}, headers=headers
    )
    assert refused.status_code == 429
