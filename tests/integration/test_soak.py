"""benchmarks/soak.py with small numbers, run as a user runs it: under concurrent cycles on every
backend, with bad requests and wrong-password deletes among them, no answer is a 5xx, nothing is
lost or leaked, every refusal names its field and every wrong-password delete is a 401."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from benchmarks.soak_load import BAD_REQUESTS

from .conftest import REPO_ROOT, TEST_IMAGE, require_local_postgres

CYCLES, CLIENTS = 60, 4
# 12 bad requests in 60 cycles: each kind once. 6 wrong-password deletes.
BAD_SHARE, WRONG_SHARE = 0.2, 0.1


@dataclass
class SoakRun:
    process: subprocess.CompletedProcess
    results: dict


@pytest.fixture(scope="module")
def soak_run(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> SoakRun:
    require_local_postgres()
    home = tmp_path_factory.mktemp("soak")
    out = home / "soak.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "soak.py"), "--quick", "--image", TEST_IMAGE]
    command += ["--cycles", str(CYCLES), "--clients", str(CLIENTS), "--json", str(out)]
    command += ["--server-log", str(home / "server.log")]
    command += ["--bad-share", str(BAD_SHARE), "--wrong-password-share", str(WRONG_SHARE)]
    # About a minute here; a loaded CI machine may take several.
    process = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert process.returncode == 0, f"stdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    return SoakRun(process, json.loads(out.read_text()))


def test_every_cycle_ran_on_every_backend(soak_run):
    figures = soak_run.results["figures"]
    assert figures["counted_cycles"] == CYCLES
    assert figures["problems"] == []
    assert set(figures["backends"]) == {"localwarm", "localcold", "cluster", "docker"}
    for cycle in soak_run.results["cycles"]:
        assert None not in (cycle["create_s"], cycle["login_write_s"], cycle["delete_s"]), cycle
    # The warm backend's creates took pooled instances (told apart by the server's log).
    assert figures["backends"]["localwarm"]["create_from_pool"]["n"] > 0


def test_no_answer_is_a_5xx(soak_run):
    figures = soak_run.results["figures"]
    assert figures["server_errors"] == []
    assert all(status.isdigit() and int(status) < 500 for status in figures["by_status"]), figures["by_status"]
    counted_by_server = soak_run.results["server_metrics"]["http_by_status"]
    assert not [status for status in counted_by_server if status.startswith("5")], counted_by_server


def test_nothing_is_lost_or_leaked(soak_run, docker_client):
    results = soak_run.results
    at_end, drained = results["at_end"], results["after_drain"]
    assert at_end["settled"]
    # While the server ran: every row a pooled instance's, every object a pooled row's.
    assert at_end["problems"] == []
    assert at_end["rows"] == at_end["pooled_rows"] == at_end["objects"]["localwarm"] > 0
    assert at_end["objects"]["localcold"] == at_end["objects"]["cluster"] == at_end["objects"]["docker"] == 0
    # Its pools drained: no row, no object.
    assert drained["status"] == "ok", drained["reap"]
    assert drained["problems"] == []
    assert drained["rows"] == 0 and set(drained["objects"].values()) == {0}
    # Nor anything the reaper had to repair meanwhile.
    assert [a for a in results["server_metrics"]["reaper_actions"] if not a.startswith("pool_trimmed")] == []
    cleanup = results["cleanup"]
    assert cleanup["problems"] == [] and cleanup["containers_left"] == [] and cleanup["processes_left"] == []
    assert not Path(cleanup["scratch_dir"]).exists()
    assert docker_client.containers.list(all=True, filters={"label": f"postgraas.bench_run={results['run_id']}"}) == []


def test_every_bad_request_is_refused_naming_its_field(soak_run):
    figures = soak_run.results["figures"]
    assert figures["bad_requests"]["kinds"] == dict.fromkeys(BAD_REQUESTS, 1)
    assert figures["bad_requests"]["as_expected"] == len(BAD_REQUESTS)
    refusals = [a for a in figures["refusals"] if a["what"].startswith("bad:")]
    assert len(refusals) == len(BAD_REQUESTS)
    for answer in refusals:
        expected = BAD_REQUESTS[answer["what"].removeprefix("bad:")]
        body = json.loads(answer["body"])
        assert answer["status"] == expected.status, answer
        assert body["status"] == "failed" and body["msg"], answer
        if expected.field is not None:
            assert expected.field in body["errors"], answer


def test_wrong_password_deletes_are_401_and_leave_the_instance(soak_run):
    figures = soak_run.results["figures"]
    wrong = round(WRONG_SHARE * CYCLES)
    assert figures["wrong_password_deletes"] == {"sent": wrong, "as_expected": wrong}
    refusals = [a for a in figures["refusals"] if a["what"] == "delete_wrong_password"]
    assert [a["status"] for a in refusals] == [401] * wrong
    assert all("db_pwd" in json.loads(a["body"])["errors"] for a in refusals)
    # Each was followed by a GET (ready), a login that read the row back, and the right delete.
    cycles = [c for c in soak_run.results["cycles"] if c["cycle"]["wrong_password"]]
    assert all(c["wrong_password_ok"] and c["delete_s"] is not None for c in cycles)


def test_prints_the_figures_and_targets(soak_run):
    out = soak_run.process.stdout
    assert "localwarm create POST->201" in out and "target (issue 19)" in out
    assert "responses 5xx" in out and "p99 of a warm create" in out
