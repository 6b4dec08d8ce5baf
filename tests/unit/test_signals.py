"""What operators watch: request ids, one log line per request (text or JSON, no secrets), /metrics."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from postgraas_server.errors import BackendTimeout
from postgraas_server.logs import log_handler
from postgraas_server.models import DBInstance, db
from postgraas_server.service.reaper import Reaper

from .api_calls import BODY, create

SECRET = BODY["db_pwd"]


@pytest.fixture(params=["text", "json"])
def log_lines(request) -> Iterator[io.StringIO]:
    """Everything logged while the test runs, as the server's handler writes it."""
    stream = io.StringIO()
    handler = log_handler(request.param, stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    stream.format = request.param  # type: ignore[attr-defined]
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def access_lines(stream: io.StringIO) -> list[dict | str]:
    lines = stream.getvalue().splitlines()
    if stream.format == "json":  # type: ignore[attr-defined]
        return [entry for entry in map(json.loads, lines) if entry["logger"] == "postgraas_server.access"]
    return [line for line in lines if " postgraas_server.access " in line]


def sample(client, name: str, **labels: str) -> float:
    """The value of one sample in /metrics (0 when it has not been counted yet)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_every_answer_has_a_request_id(client):
    generated = client.get("/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert client.get("/health").headers["X-Request-ID"] != generated
    assert client.get("/health", headers={"X-Request-ID": "ci-job-42.7"}).headers["X-Request-ID"] == "ci-job-42.7"
    # An id that could forge log lines is replaced, not echoed.
    forged = client.get("/health", headers={"X-Request-ID": "x y"}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", forged)
    # Error answers have one too.
    assert client.get("/nowhere").headers["X-Request-ID"]


def test_one_line_per_request_with_its_id_and_no_secret(client, log_lines):
    created = create(client, ttl=60)
    assert created.status_code == 201
    instance_id = created.get_json()["postgraas_instance_id"]
    refused = client.delete(f"/postgraas_instances/{instance_id}?db_pwd={SECRET}", json={"db_pwd": SECRET})
    assert refused.status_code == 400
    client.get("/nowhere%0APOST%20/forged%20201", headers={"X-Request-ID": "abc"})

    lines = access_lines(log_lines)
    assert len(lines) == 3
    if log_lines.format == "json":  # type: ignore[attr-defined]
        first, second, third = lines
        assert first["request_id"] == created.headers["X-Request-ID"]
        assert (first["method"], first["route"], first["status"]) == ("POST", "/postgraas_instances", 201)
        assert first["duration_ms"] >= 0
        assert (second["path"], second["status"]) == (f"/postgraas_instances/{instance_id}", 400)
        assert (third["route"], third["request_id"]) == ("unmatched", "abc")
    else:
        assert f"[{created.headers['X-Request-ID']}] POST /postgraas_instances 201 " in lines[0]
        assert f"DELETE /postgraas_instances/{instance_id} 400 " in lines[1]
        assert "[abc] GET /nowhere\\nPOST /forged 201 404 " in lines[2]
    everything = log_lines.getvalue()
    assert SECRET not in everything and "db_pwd=" not in everything
    # The service's own lines carry the request id too.
    assert any(
        "is ready in backend fake" in line and created.headers["X-Request-ID"] in line
        for line in everything.splitlines()
    )


def test_metrics_count_requests_creates_failures_and_instances(client, fake_backend):
    requests_before = sample(
        client, "postgraas_http_requests_total", method="POST", route="/postgraas_instances", status="201"
    )
    durations_before = sample(client, "postgraas_create_duration_seconds_count", backend="fake")
    timeouts_before = sample(client, "postgraas_create_failures_total", backend="fake", reason="timeout")
    conflicts_before = sample(client, "postgraas_create_failures_total", backend="fake", reason="conflict")

    assert create(client).status_code == 201
    assert create(client).status_code == 409
    fake_backend.fail_create = BackendTimeout("not ready in time")
    assert create(client, postgraas_instance_name="slow").status_code == 504
    fake_backend.fail_create = None
    assert create(client, postgraas_instance_name="later", wait=False).status_code == 202

    assert (
        sample(client, "postgraas_http_requests_total", method="POST", route="/postgraas_instances", status="201")
        == requests_before + 1
    )
    assert sample(client, "postgraas_create_failures_total", backend="fake", reason="timeout") == timeouts_before + 1
    assert sample(client, "postgraas_create_failures_total", backend="fake", reason="conflict") == conflicts_before + 1
    client.get("/postgraas_instances/2?wait=ready&timeout=10")
    assert sample(client, "postgraas_create_duration_seconds_count", backend="fake") == durations_before + 2
    assert sample(client, "postgraas_instances", backend="fake", status="ready") == 2
    # Routes are labelled by their rule, not by the path: ids do not grow the label set.
    client.get("/postgraas_instances/1")
    assert sample(client, "postgraas_http_requests_total", route="/postgraas_instances/<instance_id>") >= 1


def test_metrics_count_what_the_reaper_did(app, client):
    created = create(client, ttl=60).get_json()
    before = sample(client, "postgraas_reaper_actions_total", action="expired", backend="fake")
    state = app.extensions["postgraas"]
    with app.app_context():
        db.session.execute(
            update(DBInstance)
            .where(DBInstance.id == created["postgraas_instance_id"])
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
        db.session.commit()
        Reaper(state.backends, state.settings.lifecycle).run_pass()
    assert sample(client, "postgraas_reaper_actions_total", action="expired", backend="fake") == before + 1
    # Zero is said, not left out: an absent series would read as "unknown".
    assert 'postgraas_instances{backend="fake",status="ready"} 0.0' in client.get("/metrics").get_data(as_text=True)


def test_unknown_methods_do_not_grow_the_label_set(client):
    before = sample(client, "postgraas_http_requests_total", method="other", route="unmatched", status="405")
    assert client.open("/health", method="ZZZ123").status_code == 405
    assert client.open("/health", method="QQX1").status_code == 405
    assert (
        sample(client, "postgraas_http_requests_total", method="other", route="unmatched", status="405") == before + 2
    )
    text = client.get("/metrics").get_data(as_text=True)
    assert "ZZZ123" not in text and "QQX1" not in text


def test_a_background_creation_logs_under_the_id_of_its_request(client, log_lines):
    accepted = create(client, wait=False)
    assert accepted.status_code == 202
    instance_id = accepted.get_json()["postgraas_instance_id"]
    assert client.get(f"/postgraas_instances/{instance_id}?wait=ready&timeout=10").get_json()["status"] == "ready"
    ready = [line for line in log_lines.getvalue().splitlines() if "is ready in backend fake" in line]
    assert len(ready) == 1 and accepted.headers["X-Request-ID"] in ready[0]
