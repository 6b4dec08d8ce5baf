"""What happens to the plugin's databases after use: deleted, or kept after a failure with a report
that says how to reach and delete them (the password only in a 0600 file). Problems deleting fail the
run, without a Python warning (projects run with filterwarnings = error)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..client import Instance, PostgraasClient

# The one client of this process (created by the first fixture that needs it), closed at the end.
client_key = pytest.StashKey["PostgraasClient"]()
# Set on a test report phase that failed while the test used postgraas_database.
session_failed_key = pytest.StashKey[bool]()
# Session databases whose fixture was torn down: kept or deleted in pytest_sessionfinish, once every
# report is in (the last test's own teardown is reported after the session fixture's).
_pending_key = pytest.StashKey[list[tuple[str, "Instance"]]]()
# What was kept, for the summary (the controller's list includes its workers').
_kept_key = pytest.StashKey[list[dict[str, str]]]()
# Deletes (or keeps) that failed, for the summary and the exit status (the controller's includes its workers').
_problems_key = pytest.StashKey[list[str]]()
# Without the cache provider: this session's private directory for kept databases' env files.
_kept_dir_key = pytest.StashKey[Path]()
# Per-test databases being deleted on threads of their own (BackgroundDeletes).
_deletes_key = pytest.StashKey["BackgroundDeletes"]()
# Deletes at once: they mostly wait on the server, which serves them side by side.
BACKGROUND_DELETERS = 2
WORKER_OUTPUT_KEY = "postgraas_kept"
WORKER_PROBLEMS_KEY = "postgraas_problems"


def defer(config: pytest.Config, fixture: str, instance: Instance) -> None:
    """Keep or delete the session's database in pytest_sessionfinish."""
    config.stash.setdefault(_pending_key, []).append((fixture, instance))


def release(
    config: pytest.Config, fixture: str, instance: Instance, keep: bool, *, in_background: bool = False
) -> None:
    """Keep the database of ``fixture`` (when ``keep``) or delete it, ``in_background`` on a thread
    of BackgroundDeletes; what failed goes to the summary."""
    client = config.stash[client_key]
    if keep:
        try:
            _keep(config, instance, client.url)
            return
        except OSError as e:
            # Without the file its password would be lost: delete it after all.
            what = f"{instance.name} (id {instance.id})"
            _problem(config, f"{fixture}: keeping {what} failed ({type(e).__name__}); it is deleted instead")
    if in_background:
        if _deletes_key not in config.stash:
            config.stash[_deletes_key] = BackgroundDeletes(client, hold=config.getoption("postgraas_defer_deletes"))
        config.stash[_deletes_key].submit(fixture, instance)
        return
    if problem := _delete(fixture, client, instance):
        _problem(config, problem)


def make_room(config: pytest.Config) -> bool:
    """Delete the databases --postgraas-defer-deletes holds, and wait for it: a create was refused
    for a quota or the server's capacity, which they may be taking. False when none was held."""
    deletes = config.stash.get(_deletes_key, None)
    return deletes is not None and deletes.delete_held()


class BackgroundDeletes:
    """Deletes of per-test databases on threads of their own, so that a test does not wait for the
    delete of the one before it (a delete stops a server, or removes a container). Each thread has
    its own client: a requests Session is not to be shared between threads. pytest_sessionfinish
    waits for them all.

    With ``hold`` (--postgraas-defer-deletes) up to that many used databases are kept until the
    session ends: where the server shares the machine with the tests, its deletes (and the pool's
    replacements they make room for) would take the tests' CPU."""

    def __init__(self, client: PostgraasClient, hold: int = 0) -> None:
        self._client = client
        self._hold = hold
        self._held: list[tuple[str, Instance]] = []
        self._per_thread = threading.local()
        self._clients: list[PostgraasClient] = []
        self._executor = ThreadPoolExecutor(max_workers=BACKGROUND_DELETERS, thread_name_prefix="postgraas-delete")
        self._deletes: list[Future[str | None]] = []

    def submit(self, fixture: str, instance: Instance) -> None:
        self._held.append((fixture, instance))
        while len(self._held) > self._hold:
            self._send(*self._held.pop(0))

    def delete_held(self) -> bool:
        """Send every held delete and wait for every delete sent; False when none was held."""
        if not self._held:
            return False
        sent = [self._send(*held) for held in self._held]
        self._held.clear()
        for delete in sent:
            delete.exception()
        return True

    def finish(self) -> list[str]:
        """Once every delete submitted (the held ones too) is done: what failed."""
        self.delete_held()
        self._executor.shutdown(wait=True)
        for client in self._clients:
            client.close()
        return [problem for delete in self._deletes if (problem := delete.result())]

    def _send(self, fixture: str, instance: Instance) -> Future[str | None]:
        delete = self._executor.submit(self._delete, fixture, instance)
        self._deletes.append(delete)
        return delete

    def _delete(self, fixture: str, instance: Instance) -> str | None:
        client = getattr(self._per_thread, "client", None)
        if client is None:
            client = self._per_thread.client = self._client.with_own_session()
            self._clients.append(client)
        return _delete(fixture, client, instance)


# trylast: after pytest's own pytest_sessionfinish, which tears down what an interrupted session
# left set up (our fixtures included). xdist's worker sends workeroutput in a hookwrapper, after
# every plain implementation, this one included.
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    pending = config.stash.get(_pending_key, [])
    config.stash[_pending_key] = []
    keep = config.getoption("postgraas_keep_on_failure") and config.stash.get(session_failed_key, False)
    if _deletes_key in config.stash:
        for problem in config.stash[_deletes_key].finish():
            _problem(config, problem)
    for fixture, instance in pending:
        release(config, fixture, instance, keep)
    if client_key in config.stash:
        config.stash[client_key].close()
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


def _delete(fixture: str, client: PostgraasClient, instance: Instance) -> str | None:
    """Delete the database; None, or what failed for the summary."""
    from ..client import PostgraasClientError

    try:
        client.delete(instance.id, password=instance.password, force=True)
    except PostgraasClientError as e:
        expires = instance.expires_at.isoformat() if instance.expires_at else "never"
        return (
            f"{fixture}: deleting {instance.name} (id {instance.id}) failed: {e}; "
            f"the server deletes it when it expires ({expires})."
        )
    return None


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
    from ..client.addresses import display_url
    from ..client.output import format_env

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
            terminalreporter.line(message)
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
