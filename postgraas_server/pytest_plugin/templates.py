"""--postgraas-template: the template the plugin's databases are cloned from. Every process (each
xdist worker, each CI job) ensures it; the server picks one to build it, through the project's
pytest_postgraas_build_template hook, and the others wait until it is ready."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..client import Instance, PostgraasClient, Template

FIXTURE = "postgraas_template"
_hash_key = pytest.StashKey[str]()


def check_options(config: pytest.Config) -> None:
    """At configure time, so that a wrong option is a usage error before any test runs: the
    content hash of the --postgraas-template-hash-of globs."""
    if not config.getoption("postgraas_template"):
        return
    patterns = config.getoption("postgraas_template_hash_of") or []
    if not patterns:
        raise pytest.UsageError(
            "--postgraas-template needs --postgraas-template-hash-of GLOB (repeatable): the files that build "
            "the template (migrations, fixtures), so that a change to them builds a new one."
        )
    config.stash[_hash_key] = hash_of_globs(config.rootpath, patterns)


def hash_of_globs(rootdir: Path, patterns: list[str]) -> str:
    """The content hash (as `postgraas template ensure --hash-of` makes it) of what the globs match
    under ``rootdir``; a glob that matches nothing is a usage error."""
    from ..client.content_hash import content_hash

    paths: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, root_dir=rootdir, recursive=True))
        if not matches:
            raise pytest.UsageError(f"--postgraas-template-hash-of {pattern!r} matches no file under {rootdir}.")
        paths += matches
    return content_hash(paths, rootdir)


def ensure(config: pytest.Config, client: PostgraasClient) -> Template:
    """The ready template, built here (through the hook) or by another process."""
    from ..client import PostgraasClientError
    from ..client.errors import explain

    name = config.getoption("postgraas_template")
    digest = config.stash[_hash_key]

    def build(database: Instance) -> None:
        hook = config.hook.pytest_postgraas_build_template
        if not hook.get_hookimpls():
            raise pytest.UsageError(
                f"--postgraas-template {name}: this process is to build the template, but no "
                "pytest_postgraas_build_template(database) hook is implemented (in conftest.py) to migrate "
                "and load it."
            )
        hook(database=database)

    try:
        return client.templates.ensure_template(
            name,
            digest,
            build,
            backend=config.getoption("postgraas_backend"),
            pool_size=config.getoption("postgraas_template_pool_size"),
        )
    except pytest.UsageError as e:
        # A note says when the template could not be deleted.
        after = " ".join(getattr(e, "__notes__", [])) or "The template it was to build is deleted."
        failure = f"{FIXTURE}: {e} {after}"
    except PostgraasClientError as e:
        failure = f"{FIXTURE}: ensuring template {name}@{digest} failed: {explain(e)}"
    except Exception as e:
        # The project's hook failed: its traceback says why; the template went with it.
        e.add_note(f"{FIXTURE}: raised by pytest_postgraas_build_template while building template {name}.")
        raise
    # Outside the except clauses: the message says it all, without the exception it came from.
    pytest.fail(failure, pytrace=False)
