"""The ``postgraas_database`` fixture: a real PostgreSQL database per test session (so one per
pytest-xdist worker), created on a Postgraas server and deleted afterwards.

Loaded in every pytest run where postgraas_server is installed, so it costs nothing until the
fixture is used: the client (and requests) are imported only then, and no hook warns or prints.
The hooks use pluggy's ``wrapper=True`` style, so this needs pytest 8 (pluggy 1.2) or newer.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import sys
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

if TYPE_CHECKING:
    from .client import Instance, PostgraasClient

FIXTURE = "postgraas_database"
DEFAULT_TTL = "1h"


class _Pending(NamedTuple):
    client: PostgraasClient
    instance: Instance


# Set on a test report phase that failed while the test used the fixture.
_failed_key = pytest.StashKey[bool]()
# Databases whose fixture was torn down: kept or deleted in pytest_sessionfinish, once every
# report is in (the last test's own teardown is reported after the session fixture's).
_pending_key = pytest.StashKey[list[_Pending]]()
# What was kept, for the summary (the controller's list includes its workers').
_kept_key = pytest.StashKey[list[dict[str, str]]]()
# Deletes (or keeps) that failed, for the summary and the exit status (the controller's includes its workers').
_problems_key = pytest.StashKey[list[str]]()
# Without the cache provider: this session's private directory for kept databases' env files.
_kept_dir_key = pytest.StashKey[Path]()
WORKER_OUTPUT_KEY = "postgraas_kept"
WORKER_PROBLEMS_KEY = "postgraas_problems"


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
    from .client.errors import explain, leftover_of

    try:
        client = PostgraasClient(url, token=config.getoption("postgraas_token"))
    except PostgraasClientError as e:
        # The message names what is wrong with --postgraas-url or --postgraas-token, never their values.
        pytest.fail(f"postgraas_database: {e}", pytrace=False)
    # Unique across concurrent CI jobs and xdist workers of one run.
    name = f"pytest-{_worker_id(config)}-{secrets.token_hex(4)}"
    try:
        instance = client.create(
            name, ttl=config.getoption("postgraas_ttl"), backend=config.getoption("postgraas_backend")
        )
    except PostgraasClientError as e:
        client.close()
        pytest.fail(f"postgraas_database: creating {name} failed: {explain(e)}", pytrace=False)
    except KeyboardInterrupt as e:
        client.close()
        # The client undid the create; say what it could not (pytest shows only "KeyboardInterrupt").
        if leftover := leftover_of(e):
            sys.stderr.write(f"\npostgraas_database: {leftover.describe()}\n")
        raise
    try:
        yield instance
    finally:
        config.stash.setdefault(_pending_key, []).append(_Pending(client, instance))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and FIXTURE in getattr(item, "fixturenames", ()):
        item.config.stash[_failed_key] = True
    return report


# trylast: after pytest's own pytest_sessionfinish, which tears down what an interrupted session
# left set up (our fixture included). xdist's worker sends workeroutput in a hookwrapper, after
# every plain implementation, this one included.
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    pending = config.stash.get(_pending_key, [])
    config.stash[_pending_key] = []
    keep = config.getoption("postgraas_keep_on_failure") and config.stash.get(_failed_key, False)
    for client, instance in pending:
        try:
            if keep:
                try:
                    _keep(config, instance, client.url)
                    continue
                except OSError as e:
                    # Without the file its password would be lost: delete it after all.
                    what = f"{instance.name} (id {instance.id})"
                    _problem(config, f"keeping {what} failed ({type(e).__name__}); it is deleted instead")
            _delete(config, client, instance)
        finally:
            client.close()
    kept, problems = config.stash.get(_kept_key, []), config.stash.get(_problems_key, [])
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        # An xdist worker's terminal and exit status are not the user's: the controller reports them.
        if kept:
            workeroutput[WORKER_OUTPUT_KEY] = json.dumps(kept)
        if problems:
            workeroutput[WORKER_PROBLEMS_KEY] = json.dumps(problems)
    elif problems and session.exitstatus == pytest.ExitCode.OK:
        # A failed run, but no Python warning: projects run with filterwarnings = error.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _delete(config: pytest.Config, client: PostgraasClient, instance: Instance) -> None:
    from .client import PostgraasClientError

    try:
        client.delete(instance.id, password=instance.password, force=True)
    except PostgraasClientError as e:
        expires = instance.expires_at.isoformat() if instance.expires_at else "never"
        _problem(
            config,
            f"deleting {instance.name} (id {instance.id}) failed: {e}; "
            f"the server deletes it when it expires ({expires}).",
        )


def _problem(config: pytest.Config, message: str) -> None:
    config.stash.setdefault(_problems_key, []).append(message)


def _kept_dir(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return cache.mkdir("postgraas")
    if _kept_dir_key not in config.stash:
        # -p no:cacheprovider: a fresh directory, 0700 and ours alone (a fixed name in /tmp could be
        # made beforehand by another user, with a symlink in it).
        config.stash[_kept_dir_key] = Path(tempfile.mkdtemp(prefix="postgraas-kept-"))
    return config.stash[_kept_dir_key]


def _keep(config: pytest.Config, instance: Instance, url: str) -> None:
    """Record the kept database: the password only in a 0600 file, never in the output (CI logs)."""
    from .client.addresses import display_url
    from .client.output import format_env

    path = _kept_dir(config) / f"kept-{instance.id}.env"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # an earlier run's (ids repeat across servers): O_EXCL below refuses any file
    # O_EXCL | O_NOFOLLOW: a file (or symlink) someone put there meanwhile is an error, not a target.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
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


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    # Before the controller's pytest_sessionfinish, which then fails the run for a worker's problem.
    workeroutput = getattr(node, "workeroutput", {})
    if kept := workeroutput.get(WORKER_OUTPUT_KEY):
        node.config.stash.setdefault(_kept_key, []).extend(json.loads(kept))
    if problems := workeroutput.get(WORKER_PROBLEMS_KEY):
        node.config.stash.setdefault(_problems_key, []).extend(json.loads(problems))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    problems = config.stash.get(_problems_key, [])
    if problems:
        terminalreporter.section("postgraas: cleaning up failed", sep="=", red=True)
        for message in problems:
            terminalreporter.line(f"postgraas_database: {message}")
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
            f"delete id:{record['id']} --force)   # with $POSTGRAAS_TOKEN set if the server needs a token"
        )
