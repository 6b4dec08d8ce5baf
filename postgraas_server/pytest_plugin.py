"""The ``postgraas_database`` fixture: a real PostgreSQL database per test session (so one per
pytest-xdist worker), created on a Postgraas server and deleted afterwards.

Loaded in every pytest run where postgraas_server is installed, so it costs nothing until the
fixture is used: the client (and requests) are imported only then, and no hook warns or prints.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .client import Instance

FIXTURE = "postgraas_database"
DEFAULT_TTL = "1h"
# Set on a test report phase that failed while the test used the fixture.
_failed_key = pytest.StashKey[bool]()
# What was kept, for the summary (the controller's list includes its workers').
_kept_key = pytest.StashKey[list[dict[str, str]]]()
WORKER_OUTPUT_KEY = "postgraas_kept"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("postgraas", "PostgreSQL databases from a Postgraas server (postgraas_database)")
    group.addoption(
        "--postgraas-url",
        default=os.environ.get("POSTGRAAS_URL"),
        help="The Postgraas server that creates postgraas_database (default: $POSTGRAAS_URL).",
    )
    group.addoption(
        "--postgraas-token",
        default=os.environ.get("POSTGRAAS_TOKEN"),
        help="API token for a server in auth.mode token (default: $POSTGRAAS_TOKEN; prefer the env var).",
    )
    group.addoption("--postgraas-backend", default=None, help="Backend to create in (default: the server's).")
    group.addoption(
        "--postgraas-ttl",
        default=DEFAULT_TTL,
        help=f"Lifetime of the database, so that a killed run's is reaped too (default: {DEFAULT_TTL}).",
    )
    group.addoption(
        "--postgraas-keep-on-failure",
        action="store_true",
        default=False,
        help="Keep the database when a test using it failed, and say how to reach and delete it.",
    )


def _worker_id(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


@pytest.fixture(scope="session")
def postgraas_database(request: pytest.FixtureRequest) -> Iterator[Instance]:
    """A database of this session: ``uri``, ``host``, ``port``, ``user``, ``password``, ``dbname``,
    ``id``, ``name``. Deleted at the end unless --postgraas-keep-on-failure and a test using it failed."""
    config = request.config
    url = config.getoption("postgraas_url")
    if not url:
        pytest.fail(
            "postgraas_database needs a Postgraas server: pass --postgraas-url URL or set POSTGRAAS_URL.",
            pytrace=False,
        )
    from .client import PostgraasClient, PostgraasClientError

    client = PostgraasClient(url, token=config.getoption("postgraas_token"))
    # Unique across concurrent CI jobs and xdist workers of one run.
    name = f"pytest-{_worker_id(config)}-{secrets.token_hex(4)}"
    try:
        instance = client.create(
            name, ttl=config.getoption("postgraas_ttl"), backend=config.getoption("postgraas_backend")
        )
    except PostgraasClientError as e:
        client.close()
        pytest.fail(f"postgraas_database: creating {name} failed: {e}", pytrace=False)
    try:
        yield instance
    finally:
        try:
            if config.getoption("postgraas_keep_on_failure") and config.stash.get(_failed_key, False):
                _keep(config, instance, client.url)
            else:
                try:
                    client.delete(instance.id, password=instance.password, force=True)
                except PostgraasClientError as e:
                    expires = instance.expires_at.isoformat() if instance.expires_at else "never"
                    pytest.fail(
                        f"postgraas_database: deleting {name} (id {instance.id}) failed: {e}; "
                        f"the server reaps it when it expires ({expires}).",
                        pytrace=False,
                    )
        finally:
            client.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and FIXTURE in getattr(item, "fixturenames", ()):
        item.config.stash[_failed_key] = True
    return report


def _kept_dir(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return cache.mkdir("postgraas")
    # -p no:cacheprovider: a private directory of this user instead.
    path = Path(tempfile.gettempdir(), f"postgraas-kept-{os.getuid()}")
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _keep(config: pytest.Config, instance: Instance, url: str) -> None:
    """Record the kept database: the password only in a 0600 file, never in the output (CI logs)."""
    from .client.api import display_url
    from .client.output import format_env

    path = _kept_dir(config) / f"kept-{instance.id}.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(format_env(instance) + "\n")
    record = {
        "id": str(instance.id),
        "name": instance.name,
        "uri": instance.uri_without_password or "",
        "expires_at": instance.expires_at.isoformat() if instance.expires_at else "never",
        "password_file": str(path),
        "url": display_url(url),
    }
    config.stash.setdefault(_kept_key, []).append(record)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        # An xdist worker's terminal is not the user's: the controller reports it.
        workeroutput[WORKER_OUTPUT_KEY] = json.dumps(config.stash[_kept_key])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    kept = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
    if kept:
        node.config.stash.setdefault(_kept_key, []).extend(json.loads(kept))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    kept = config.stash.get(_kept_key, [])
    if not kept:
        return
    terminalreporter.section("postgraas: databases kept after failures", sep="=")
    for record in kept:
        env_file = shlex.quote(record["password_file"])
        terminalreporter.line(f"kept instance {record['id']} {record['name']!r}: {record['uri']}")
        terminalreporter.line(f"  expires: {record['expires_at']} (the server deletes it then)")
        terminalreporter.line(f"  password and connection variables (mode 0600): {record['password_file']}")
        terminalreporter.line(f"  connect: (set -a; . {env_file}; psql)")
        terminalreporter.line(
            f"  delete:  (set -a; . {env_file}; postgraas --url {shlex.quote(record['url'])} "
            f"delete {record['id']} --force)   # with $POSTGRAAS_TOKEN set if the server needs a token"
        )
