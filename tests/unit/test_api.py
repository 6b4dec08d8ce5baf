"""The HTTP contract with an in-memory backend, TESTING=False: status codes, bodies, cleanup."""

import json
import threading

import pytest
from werkzeug.security import generate_password_hash

from postgraas_server.errors import BackendError, BackendTimeout, BackendUnavailable, Conflict
from postgraas_server.models import db
from postgraas_server.passwords import password_matches

from .api_calls import BODY, create, rows, wait_for


def test_create_returns_credentials_once(client, fake_backend):
    response = create(client)
    assert response.status_code == 201
    body = response.get_json()
    assert body["postgraas_instance_name"] == "demo"
    assert body["db_pwd"] == "s3cr@t pw"
    assert body["host"] == "db.example"
    assert isinstance(body["port"], int)
    assert body["container_id"] == f"fake-{body['postgraas_instance_id']}"
    assert body["connection_uri"] == f"postgresql://alice:s3cr%40t%20pw@db.example:{body['port']}/app"
    assert body["creation_timestamp"].endswith("Z") or body["creation_timestamp"].endswith("+00:00")
    assert body["status"] == "ready"
    assert list(fake_backend.objects) == [body["container_id"]]


def test_get_and_list_never_show_the_password(client):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    for path in ("/postgraas_instances", "/api/v2/postgraas_instances", f"/postgraas_instances/{instance_id}"):
        response = client.get(path)
        assert response.status_code == 200
        assert "s3cr" not in response.get_data(as_text=True)
    item = client.get(f"/api/v2/postgraas_instances/{instance_id}").get_json()
    assert item["password"] == ""
    assert "db_pwd" not in item
    assert item["username"] == item["db_username"] == "alice"
    assert item["connection_uri"] == f"postgresql://alice@db.example:{item['port']}/app"


def test_the_list_shows_each_instance_as_its_get_does_without_backend_state(client):
    first = create(client, ttl="1h").get_json()["postgraas_instance_id"]
    second = create(client, postgraas_instance_name="demo2").get_json()["postgraas_instance_id"]
    listed = client.get("/postgraas_instances").get_json()
    assert [entry["postgraas_instance_id"] for entry in listed] == [first, second]
    for entry in listed:
        item = client.get(f"/postgraas_instances/{entry['postgraas_instance_id']}").get_json()
        del item["backend_state"]
        assert entry == item
    assert listed[0]["expires_at"] is not None and listed[1]["expires_at"] is None


def test_password_is_stored_as_a_salted_hash(app, client):
    create(client)
    create(client, postgraas_instance_name="demo2")
    hashes = [row.password_hash for row in rows(app)]
    assert all("s3cr" not in h and h.startswith("scram-salted-hmac-sha256$4096$") for h in hashes)
    assert hashes[0] != hashes[1]


def test_hashes_of_earlier_versions_still_match():
    earlier = generate_password_hash("s3cr@t pw", method="scrypt")
    assert password_matches(earlier, "s3cr@t pw") and not password_matches(earlier, "s3cr@t")


def test_2x_field_alias_and_path(client):
    body = {**BODY, "postgraas_name": "legacy"}
    del body["postgraas_instance_name"]
    response = client.post("/api/v2/postgraas_instances", json=body)
    assert response.status_code == 201
    assert response.get_json()["postgraas_instance_name"] == "legacy"


def test_unknown_id_is_404(client):
    assert client.get("/postgraas_instances/999").status_code == 404
    response = client.delete("/postgraas_instances/999", json={"db_pwd": "x"})
    assert response.status_code == 404
    assert response.get_json() == {"status": "failed", "msg": "There is no instance with id 999."}


def test_delete_checks_the_password_against_the_hash(app, client, fake_backend):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    response = client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": "wrong"})
    assert response.status_code == 401
    assert response.get_json()["errors"] == {"db_pwd": "does not match"}
    assert len(rows(app)) == 1 and fake_backend.objects
    response = client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"]})
    assert response.status_code == 200
    assert response.get_json()["status"] == "success"
    assert rows(app) == [] and not fake_backend.objects


def test_delete_in_use_is_409_unless_forced(app, client, fake_backend):
    body = create(client).get_json()
    fake_backend.sessions[body["container_id"]] = 2
    path = f"/postgraas_instances/{body['postgraas_instance_id']}"
    assert client.delete(path, json={"db_pwd": BODY["db_pwd"]}).status_code == 409
    assert len(rows(app)) == 1
    assert client.delete(path, json={"db_pwd": BODY["db_pwd"], "force": True}).status_code == 200
    assert fake_backend.deleted == [(body["container_id"], True)]


def test_delete_when_backend_unreachable_keeps_the_row(app, client, fake_backend):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    fake_backend.fail_delete = BackendUnavailable("The Docker engine cannot be reached.")
    response = client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"]})
    assert response.status_code == 503
    assert len(rows(app)) == 1


def test_duplicate_name_is_409(client, fake_backend):
    assert create(client).status_code == 201
    response = create(client)
    assert response.status_code == 409
    assert response.get_json()["errors"] == {"postgraas_instance_name": "already exists"}
    assert len(fake_backend.objects) == 1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BackendUnavailable("The Docker engine cannot be reached."), 503),
        (BackendError("Container stopped."), 502),
        (BackendTimeout("Not ready in time."), 504),
        (Conflict("Docker refused to create the container: name in use"), 409),
    ],
)
def test_backend_failure_leaves_no_row(app, client, fake_backend, error, status):
    fake_backend.fail_create = error
    response = create(client)
    assert response.status_code == status
    assert response.get_json() == {"status": "failed", "msg": error.msg}
    assert rows(app) == []
    # The name is free again.
    fake_backend.fail_create = None
    assert create(client).status_code == 201


def test_meta_db_failure_after_create_removes_the_backend_object(app, client, fake_backend, monkeypatch):
    original_commit = db.session.commit
    calls = {"n": 0}

    def failing_second_commit():
        calls["n"] += 1
        if calls["n"] == 2:  # the first commit reserves the row, the second marks it ready
            raise RuntimeError("meta db went away")
        return original_commit()

    monkeypatch.setattr(db.session, "commit", failing_second_commit)
    response = create(client)
    assert response.status_code == 500
    assert fake_backend.objects == {}
    assert fake_backend.deleted and fake_backend.deleted[0][1] is True
    monkeypatch.setattr(db.session, "commit", original_commit)
    assert rows(app) == []


@pytest.mark.parametrize(
    ("kwargs", "status", "msg"),
    [
        ({"data": "not json"}, 400, "The request body is not valid JSON: Expecting value: line 1 column 1 (char 0)."),
        ({"data": "[1, 2]"}, 400, "The request body must be a JSON object."),
        ({"data": ""}, 400, "The request body must be a JSON object."),
        ({"data": "[" * 30000 + "]" * 30000}, 400, "The request body is not valid JSON: nested too deeply."),
        ({"data": b'{"db_name": "\xff"}'}, 400, None),
        ({"data": "x" * 70000}, 413, "The request body is larger than the limit of 65536 bytes."),
    ],
)
def test_bad_bodies(client, kwargs, status, msg):
    response = client.post("/postgraas_instances", content_type="application/json", **kwargs)
    assert response.status_code == status
    assert response.get_json()["status"] == "failed"
    if msg is not None:
        assert response.get_json() == {"status": "failed", "msg": msg}


@pytest.mark.parametrize("instance_id", ["99999999999999999999", str(2**63), "-1", "abc"])
def test_impossible_ids_are_404(client, instance_id):
    for method in (client.get, client.delete):
        response = method(f"/postgraas_instances/{instance_id}", json={"db_pwd": "x"})
        assert response.status_code == 404
        assert response.get_json()["status"] == "failed"


def test_largest_possible_id_is_a_plain_404(client):
    response = client.get(f"/postgraas_instances/{2**63 - 1}")
    assert response.status_code == 404
    assert response.get_json()["msg"] == f"There is no instance with id {2**63 - 1}."


def test_unknown_route_and_method_answer_json(client):
    response = client.get("/nothing-here")
    assert response.status_code == 404 and response.get_json()["status"] == "failed"
    response = client.put("/postgraas_instances")
    assert response.status_code == 405 and response.get_json()["status"] == "failed"
    assert "GET" in response.headers["Allow"]


def test_health(client):
    assert client.get("/health").get_json() == {"status": "ok"}


def test_concurrent_creates_of_one_name_have_one_winner(app, fake_backend):
    results = []
    barrier = threading.Barrier(8)

    def post():
        with app.test_client() as c:
            barrier.wait()
            results.append(create(c).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] + [409] * 7
    assert len(fake_backend.objects) == 1
    assert len(rows(app)) == 1


def test_concurrent_deletes_of_one_instance_have_one_winner(app, fake_backend):
    with app.test_client() as c:
        instance_id = create(c).get_json()["postgraas_instance_id"]
    fake_backend.delete_delay = 0.2
    results = []
    barrier = threading.Barrier(3)

    def delete():
        with app.test_client() as c:
            barrier.wait()
            results.append(c.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"]}).status_code)

    threads = [threading.Thread(target=delete) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409, 409]
    assert len(fake_backend.deleted) == 1
    assert rows(app) == []


def test_delete_while_creating_cancels_the_creation(app, client, fake_backend):
    fake_backend.create_delay = 0.5
    response = create(client, wait=False)
    assert response.status_code == 202
    instance_id = response.get_json()["postgraas_instance_id"]
    cancel = client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"]})
    assert cancel.status_code == 200
    assert "Cancelled the creation" in cancel.get_json()["msg"]
    wait_for(lambda: rows(app) == [])
    # What the backend made meanwhile was removed, not left behind.
    assert fake_backend.objects == {}
    assert fake_backend.deleted and fake_backend.deleted[0][1] is True


def test_failed_backend_delete_is_left_for_the_reaper_to_retry(app, client, fake_backend):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    fake_backend.fail_delete = BackendError("The cluster refused.")
    assert client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"]}).status_code == 502
    item = client.get(f"/postgraas_instances/{instance_id}").get_json()
    assert item["status"] == "deleting"
    assert item["status_detail"] == "delete failed, will be retried: The cluster refused."
    # A second delete while it is "deleting" is refused, not run twice.
    assert client.delete(f"/postgraas_instances/{instance_id}", json={"db_pwd": BODY["db_pwd"]}).status_code == 409


def test_item_get_survives_a_failing_backend(client, fake_backend):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    fake_backend.fail_describe = RuntimeError("engine exploded")
    response = client.get(f"/postgraas_instances/{instance_id}")
    assert response.status_code == 200
    assert response.get_json()["backend_state"] == "unknown"


@pytest.mark.parametrize("backend", ["", "kubernetes", 5])
def test_unknown_or_empty_backend_is_400(client, backend):
    response = create(client, backend=backend)
    assert response.status_code == 400
    assert "backend" in response.get_json()["errors"]


@pytest.mark.parametrize("param", ["db_pwd", "password", "Token"])
def test_secrets_in_the_query_string_are_refused(client, param):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    response = client.delete(f"/postgraas_instances/{instance_id}?{param}=s3cr@t", json={"db_pwd": BODY["db_pwd"]})
    assert response.status_code == 400
    assert response.get_json()["errors"] == {param: "not accepted in the query string"}
    assert "s3cr@t" not in response.get_data(as_text=True)
    assert client.get(f"/postgraas_instances/{instance_id}").status_code == 200


def test_omitted_password_is_generated_and_returned_once(app, client):
    body = {k: v for k, v in BODY.items() if k != "db_pwd"}
    created = client.post("/postgraas_instances", json=body).get_json()
    password = created["db_pwd"]
    assert len(password) >= 32
    assert password in created["connection_uri"]
    assert password not in client.get(f"/postgraas_instances/{created['postgraas_instance_id']}").get_data(as_text=True)
    other = client.post("/postgraas_instances", json={**body, "postgraas_instance_name": "other"}).get_json()
    assert other["db_pwd"] != password
    delete = client.delete(f"/postgraas_instances/{created['postgraas_instance_id']}", json={"db_pwd": password})
    assert delete.status_code == 200


def test_delete_without_a_token_needs_the_password(client):
    instance_id = create(client).get_json()["postgraas_instance_id"]
    response = client.delete(f"/postgraas_instances/{instance_id}", json={})
    assert response.status_code == 400
    assert response.get_json()["errors"] == {"db_pwd": "is required"}


def test_openapi_document_covers_every_route(app, client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    documented = {
        (path.replace("{instance_id}", "<instance_id>").replace("{template_id}", "<template_id>"), method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "delete")
    }
    served = set()
    for rule in app.url_map.iter_rules():
        # The console's files are pages, not the API (docs/console.md).
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue
        path = rule.rule.replace(f"<int(max={2**63 - 1}):instance_id>", "<instance_id>")
        path = path.replace(f"<int(max={2**63 - 1}):template_id>", "<template_id>")
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented
    schemas = document["components"]["schemas"]
    assert set(schemas["CreateInstanceRequest"]["properties"]) >= {"postgraas_instance_name", "db_name", "ttl", "wait"}
    assert "db_pwd" in schemas["CreatedInstanceOut"]["properties"]
    assert "db_pwd" not in schemas["InstanceOut"]["properties"]


def test_ready_says_which_part_is_not_and_logs_why(client, fake_backend, caplog):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"metadb": "ok", "fake": "ok"}}
    why = "The cluster at db.internal:5432 cannot be reached (password authentication failed)."
    fake_backend.health = lambda: (_ for _ in ()).throw(BackendUnavailable(why))
    response = client.get("/ready")
    assert response.status_code == 503
    # Open to all: which check failed, not the address or the driver's words.
    assert response.get_json() == {"status": "failed", "checks": {"metadb": "ok", "fake": "failed"}}
    assert why in caplog.text


@pytest.mark.parametrize("field", ["db_pwd", "postgraas_instance_name", "surrogate-key"])
def test_unpaired_surrogates_are_400_not_500(client, field):
    body = json.dumps({**BODY}).replace('"s3cr@t pw"', '"s3cr@t pw"')
    if field == "surrogate-key":
        raw = body[:-1] + ', "\\ud800": 1}'
    else:
        raw = body.replace(f'"{field}": "', f'"{field}": "\\ud800', 1)
    response = client.post("/postgraas_instances", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert "unpaired surrogate" in response.get_json()["msg"]


def test_durability_is_asked_for_recorded_and_checked(client, fake_backend):
    ephemeral = create(client, durability="ephemeral").get_json()
    assert ephemeral["durability"] == "ephemeral"
    assert fake_backend.objects[ephemeral["container_id"]].ephemeral is True
    assert (
        client.get(f"/postgraas_instances/{ephemeral['postgraas_instance_id']}").get_json()["durability"] == "ephemeral"
    )
    durable = create(client, postgraas_instance_name="kept").get_json()
    assert durable["durability"] == "durable"
    assert fake_backend.objects[durable["container_id"]].ephemeral is False
    refused = create(client, postgraas_instance_name="odd", durability="fast")
    assert refused.status_code == 400
    assert "durability" in refused.get_json()["errors"]
