"""The real server, with hundreds of slowloris and idle connections open at once: the API still answers,
a create still works, and the server itself closes the slow connections at request_header_timeout."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
import requests

from benchmarks.slow_clients import Siege

from .conftest import backend_config, require_local_postgres
from .servers import body, start, stop_server

# Well over what the server has threads for: 2 workers x 16.
SLOW = 300
IDLE = 300
HEADER_TIMEOUT = 3.0
MEASURE_SECONDS = 12.0


@pytest.fixture
def server(request, tmp_path):
    require_local_postgres()
    server = start(
        tmp_path,
        {"local": backend_config("local", request)},
        lifecycle={"default_ttl": "10m"},
        env={"POSTGRAAS_APPLICATION_REQUEST_HEADER_TIMEOUT": str(HEADER_TIMEOUT)},
    )
    yield server
    stop_server(server)


def create_login_delete(server, outcome: dict) -> None:
    request = body("slow")
    started = time.monotonic()
    created = server.post(request)
    outcome["post"] = (created.status_code, time.monotonic() - started, created.text)
    if created.status_code != 201:
        return
    instance = created.json()
    with psycopg.connect(instance["connection_uri"], connect_timeout=10) as conn:
        outcome["login"] = conn.execute("select current_user, current_database()").fetchone()
    deleted = server.delete(instance["postgraas_instance_id"], {"db_pwd": request["db_pwd"]})
    outcome["delete"] = deleted.status_code
    outcome["expected_login"] = (request["db_username"], request["db_name"])


def test_slow_and_idle_clients_do_not_stop_the_api(server):
    port = int(server.url.rsplit(":", 1)[1])
    outcome: dict = {}
    creating = threading.Thread(target=create_login_delete, args=(server, outcome))
    siege = Siege("127.0.0.1", port, slow=SLOW, idle=IDLE, every=2.0).start()
    try:
        assert siege.open_count >= (SLOW + IDLE) * 0.95, f"only {siege.open_count} connections could be opened"
        time.sleep(1.0)  # all accepted, the slow ones halfway through their headers
        creating.start()
        timings, held = [], []
        ends = time.monotonic() + MEASURE_SECONDS
        while time.monotonic() < ends:
            started = time.monotonic()
            response = requests.get(f"{server.url}/health", timeout=10)
            timings.append(time.monotonic() - started)
            held.append(siege.open_count)
            assert response.status_code == 200, response.text
            time.sleep(0.1)
        creating.join(120)
        assert not creating.is_alive(), "the create did not finish"

        # The load stayed on: what the server closed was replaced at once, and it accepted every one.
        assert min(held) >= (SLOW + IDLE) * 0.8, held
        assert siege.failed_connects == 0
        assert max(timings) < 1.0, f"slowest /health {max(timings):.2f}s of {len(timings)}: {sorted(timings)[-5:]}"
        assert len(timings) >= MEASURE_SECONDS * 3
        assert outcome["post"][0] == 201, outcome["post"]
        assert outcome["login"] == outcome["expected_login"]
        assert outcome["delete"] == 200

        # No more replacements: the server closes every one we still hold by its header deadline.
        assert siege.wait_all_closed(HEADER_TIMEOUT + 5.0), f"{siege.open_count} connections still open"
    finally:
        siege.stop()
        if creating.ident is not None:
            creating.join(120)  # also after a failure: the instance is deleted, not left behind
    slow = [c for c in siege.closed if c.kind == "slow"]
    idle = [c for c in siege.closed if c.kind == "idle"]
    # Each held connection was closed at least once, after the deadline and not long after it.
    assert len(slow) >= SLOW and len(idle) >= IDLE
    for closed in slow + idle:
        assert HEADER_TIMEOUT - 0.1 <= closed.lifetime < HEADER_TIMEOUT + 3.0, closed
    # The slow ones had sent bytes: 408; the idle ones nothing: closed without a word.
    assert {c.answer.split(b" ")[1] for c in slow} == {b"408"}
    assert {c.answer for c in idle} == {b""}
    assert "Traceback" not in server.log()
