"""``postgraas template``: ensure a template (build it here, or wait for another caller's build),
list and delete templates. Registered on the ``postgraas`` group by cli.py, which turns client
errors into exit 1; stdout carries only what was asked for, notes and the build's output go to stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from .api import PostgraasClient
from .content_hash import MissingPath, content_hash
from .instance import Instance
from .output import SHORT_HASH, env_pairs, format_template_table
from .templates import DEFAULT_BUILD_TIMEOUT, DEFAULT_WAIT_TIMEOUT, Template

# libpq settings of the caller's environment that would send the build elsewhere than PGHOST says.
OVERRIDING_LIBPQ_VARIABLES = ("PGHOSTADDR", "PGSERVICE", "PGSERVICEFILE")
STDERR_FD = 2


class BuildCommandFailed(Exception):
    def __init__(self, returncode: int) -> None:
        super().__init__(f"the build command exited with status {returncode}")
        self.returncode = returncode


def build_environment(database: Instance) -> dict[str, str]:
    """The caller's environment, pointed at the builder's database: DATABASE_URL and PG*."""
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDING_LIBPQ_VARIABLES}
    env.update((key, value) for key, value in env_pairs(database) if key != "POSTGRAAS_INSTANCE_ID")
    return env


def run_build_command(command: str, database: Instance) -> None:
    """``command`` through the shell, its output on our stderr (stdout is for the answer)."""
    sys.stderr.flush()
    returncode = subprocess.run(command, shell=True, env=build_environment(database), stdout=STDERR_FD).returncode
    if returncode != 0:
        raise BuildCommandFailed(returncode)


def _note(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def template() -> None:
    """Templates: a database built once per content (migrations, fixtures), cloned by
    `postgraas create NAME --template NAME[@HASH]`."""


@template.command()
@click.argument("name")
@click.option(
    "--hash-of",
    "hash_of",
    multiple=True,
    required=True,
    metavar="PATH",
    help="A file or directory whose content identifies the template (repeatable); directories are read "
    "whole, except __pycache__. Each file counts with its path from the current directory: run it from the "
    "same directory everywhere.",
)
@click.option(
    "--build",
    "command",
    required=True,
    metavar="COMMAND",
    help="Shell command that migrates and loads the template, run only when this caller builds it, with "
    "DATABASE_URL, PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD set to the builder's database.",
)
@click.option("--backend", help="A backend configured on the server (default: the server's).")
@click.option("--ttl", help="Lifetime of the template: seconds or 30m, 2h, 7d (default: none).")
@click.option("--pool-size", type=click.IntRange(0, 100), default=0, show_default=True, help="Clones made ahead.")
@click.option(
    "--build-timeout",
    type=click.IntRange(10, 86400),
    default=DEFAULT_BUILD_TIMEOUT,
    show_default=True,
    help="Seconds without a heartbeat (sent every third of it) before the server gives the build up.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_WAIT_TIMEOUT,
    show_default=True,
    help="Seconds to wait at most for another caller's build.",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(("ref", "json")),
    default="ref",
    show_default=True,
    help="What to print on stdout: NAME@HASH (what --template takes) or the template as JSON.",
)
@click.pass_obj
def ensure(
    client: PostgraasClient,
    name: str,
    hash_of: tuple[str, ...],
    command: str,
    backend: str | None,
    ttl: str | None,
    pool_size: int,
    build_timeout: int,
    timeout: float,
    output: str,
) -> None:
    """Make sure template NAME exists for the content of the --hash-of paths, and print NAME@HASH.

    Of every caller that ensures the same name and content at once, exactly one builds it: it runs
    the --build command and finalizes the template. The others wait until it is ready. When the
    command fails, the template is deleted and the exit status is 1.
    """
    try:
        digest = content_hash(hash_of, Path.cwd())
    except MissingPath as e:
        raise click.BadParameter(f"{e.path!r} does not exist.", param_hint="'--hash-of'") from None
    what = f"{name}@{digest[:SHORT_HASH]}"
    built_here = False
    waiting_noted = False

    def build(database: Instance) -> None:
        nonlocal built_here
        built_here = True
        _note(f"Building template {what} here: {command}")
        run_build_command(command, database)

    def on_wait(seen: Template) -> None:
        nonlocal waiting_noted
        if not waiting_noted:
            _note(f"Another caller builds template {what} (id {seen.id}); waiting until it is ready.")
            waiting_noted = True

    try:
        ready = client.templates.ensure_template(
            name,
            digest,
            build,
            backend=backend,
            ttl=ttl,
            pool_size=pool_size,
            build_timeout=build_timeout,
            wait_timeout=timeout,
            on_wait=on_wait,
        )
    except BuildCommandFailed as e:
        deleted = "; ".join(getattr(e, "__notes__", [])) or f"Template {what} was deleted, with its builder's database."
        raise click.ClickException(
            f"The build command failed (exit status {e.returncode}; its output is above). {deleted}"
        ) from None
    _note(f"Template {what} (id {ready.id}) is ready{', built here' if built_here else ''}.")
    click.echo(json.dumps(ready.as_dict(), indent=2) if output == "json" else ready.ref)


@template.command("list")
@click.option("--output", "-o", type=click.Choice(("table", "json")), default="table", show_default=True)
@click.pass_obj
def list_(client: PostgraasClient, output: str) -> None:
    """List the templates this server (or token) shows."""
    templates = client.templates.list()
    if output == "json":
        click.echo(json.dumps([t.as_dict() for t in templates], indent=2))
    else:
        click.echo(format_template_table(templates, datetime.now(UTC)))


@template.command()
@click.argument("template_id", metavar="ID", type=click.IntRange(min=1))
@click.pass_obj
def delete(client: PostgraasClient, template_id: int) -> None:
    """Delete a template (a build in progress goes with its builder's database); its clones stay."""
    click.echo(client.templates.delete(template_id))
