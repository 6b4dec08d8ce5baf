"""The pytest plugin: real PostgreSQL databases made on a Postgraas server and deleted afterwards.

- ``postgraas_database``: one per test session (so one per pytest-xdist worker);
- ``postgraas_clean_database``: a fresh one per test;
- with ``--postgraas-template NAME``, both are clones of a template built once per content (the
  files of ``--postgraas-template-hash-of``) by the project's ``pytest_postgraas_build_template``
  hook (hookspecs.py); ``postgraas_template`` is that template.

Loaded in every pytest run where postgraas_server is installed, so it costs nothing until a fixture
is used: the client (and requests) are imported only then, and no hook warns or prints. The hooks
use pluggy's ``wrapper=True`` style, so this needs pytest 8 (pluggy 1.2) or newer.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from . import templates
from .cleanup import (
    client_key,
    defer,
    make_room,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_testnodedown,
    release,
    session_failed_key,
)

if TYPE_CHECKING:
    from ..client import Instance, PostgraasClient, Template

# Hooks pytest finds here, though defined in cleanup.py.
__all__ = ["pytest_sessionfinish", "pytest_terminal_summary", "pytest_testnodedown"]

FIXTURE = "postgraas_database"
CLEAN_FIXTURE = "postgraas_clean_database"
DEFAULT_TTL = "1h"

# Set on a test whose setup or call failed while it used postgraas_clean_database.
_test_failed_key = pytest.StashKey[bool]()


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
    group.addoption(
        "--postgraas-defer-deletes",
        type=_count,
        default=0,
        metavar="N",
        help="Hold up to N used postgraas_clean_database databases and delete them when the session ends "
        "(sooner when more are held, or when a create is refused for a quota or the server's capacity); "
        "for a server on the tests' own machine (default: 0, each deleted in the background after its test).",
    )
    group.addoption(
        "--postgraas-template",
        default=None,
        metavar="NAME",
        help="Make the databases clones of template NAME, built once per content by the "
        "pytest_postgraas_build_template hook.",
    )
    group.addoption(
        "--postgraas-template-hash-of",
        action="append",
        default=[],
        metavar="GLOB",
        help="Files (a glob relative to the rootdir; repeatable) whose content identifies the template.",
    )
    group.addoption(
        "--postgraas-template-pool-size",
        type=int,
        default=0,
        metavar="N",
        help="Clones of the template the server makes ahead (default: 0).",
    )


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0, 1, 2 ...)")
    return int(text)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    templates.check_options(config)


def _worker_id(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


def _client(config: pytest.Config, fixture: str) -> PostgraasClient:
    """This process's client, made by the first fixture that needs it."""
    if client_key in config.stash:
        return config.stash[client_key]
    url = config.getoption("postgraas_url")
    if not url:
        pytest.fail(
            f"{fixture} needs a Postgraas server: pass --postgraas-url URL or set POSTGRAAS_URL.", pytrace=False
        )
    from ..client import PostgraasClient, PostgraasClientError

    try:
        client = PostgraasClient(url, token=config.getoption("postgraas_token"))
    except PostgraasClientError as e:
        # The message names what is wrong with --postgraas-url or --postgraas-token, never their values.
        pytest.fail(f"{fixture}: {e}", pytrace=False)
    config.stash[client_key] = client
    return client


def _create(request: pytest.FixtureRequest, fixture: str) -> Instance:
    """A new database: a clone of the template with --postgraas-template, else an empty one."""
    config = request.config
    client = _client(config, fixture)
    template: Template | None = None
    if config.getoption("postgraas_template"):
        template = request.getfixturevalue(templates.FIXTURE)
    from ..client import PostgraasClientError
    from ..client.errors import ApiError, explain, leftover_of

    # Unique across concurrent CI jobs and xdist workers of one run.
    name = f"pytest-{_worker_id(config)}-{secrets.token_hex(4)}"

    def create() -> Instance:
        return client.create(
            name,
            ttl=config.getoption("postgraas_ttl"),
            backend=config.getoption("postgraas_backend"),
            template=template.ref if template else None,
        )

    try:
        try:
            return create()
        except ApiError as e:
            # A quota (429) or the server's capacity (503) the held deletes may be taking.
            if e.status not in (429, 503) or not make_room(config):
                raise
            return create()
    except PostgraasClientError as e:
        pytest.fail(f"{fixture}: creating {name} failed: {explain(e)}", pytrace=False)
    except KeyboardInterrupt as e:
        # The client undid the create; say what it could not (pytest shows only "KeyboardInterrupt").
        if leftover := leftover_of(e):
            sys.stderr.write(f"\n{fixture}: {leftover.describe()}\n")
        raise


@pytest.fixture(scope="session")
def postgraas_template(request: pytest.FixtureRequest) -> Template:
    """The ready template of --postgraas-template (``id``, ``name``, ``hash``, ``ref``), built by this
    process through pytest_postgraas_build_template, or by another one that this process waited for."""
    config = request.config
    if not config.getoption("postgraas_template"):
        pytest.fail(f"{templates.FIXTURE} needs --postgraas-template NAME.", pytrace=False)
    return templates.ensure(config, _client(config, templates.FIXTURE))


@pytest.fixture(scope="session")
def postgraas_database(request: pytest.FixtureRequest) -> Iterator[Instance]:
    """A database of this session: ``uri``, ``host``, ``port``, ``user``, ``password``, ``dbname``,
    ``id``, ``name``. Deleted at the end unless --postgraas-keep-on-failure and a test using it failed."""
    instance = _create(request, FIXTURE)
    try:
        yield instance
    finally:
        defer(request.config, FIXTURE, instance)


@pytest.fixture
def postgraas_clean_database(request: pytest.FixtureRequest) -> Iterator[Instance]:
    """A fresh database for this test alone, shaped as postgraas_database; deleted after the test
    (in the background, while the next one runs; the session waits for every delete at its end),
    unless --postgraas-keep-on-failure and the test failed."""
    instance = _create(request, CLEAN_FIXTURE)
    try:
        yield instance
    finally:
        config = request.config
        keep = config.getoption("postgraas_keep_on_failure") and request.node.stash.get(_test_failed_key, False)
        # Deleted while the next test runs: pytest_sessionfinish waits for it.
        release(config, CLEAN_FIXTURE, instance, keep, in_background=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed:
        fixtures = getattr(item, "fixturenames", ())
        if FIXTURE in fixtures:
            item.config.stash[session_failed_key] = True
        if CLEAN_FIXTURE in fixtures:
            item.stash[_test_failed_key] = True
    return report
