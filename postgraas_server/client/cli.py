"""The ``postgraas`` console script: create, list, show, wait for, extend and delete instances;
``postgraas template ...`` (template_cli.py) for templates.

stdout carries only what was asked for (JSON, env lines, a URI, the table), so that
``set -a; eval "$(postgraas create ... --output env)"; set +a`` works; notes and progress go to stderr.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from click.core import ParameterSource

from .addresses import DEFAULT_URL, token_problem, url_problem
from .api import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PostgraasClient
from .errors import ApiError, PostgraasClientError, leftover_of
from .instance import Instance
from .output import UnsafeEnvValue, format_env, format_expires, format_table, has_control_character
from .template_cli import template

OUTPUTS = ("json", "env", "uri")
DEFAULT_WAIT_TIMEOUT = 300.0
# What a shell reports for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def describe(e: PostgraasClientError) -> str:
    """The server's message and its field errors, and what an interrupted create left, for people."""
    lines = [str(e)]
    if isinstance(e, ApiError):
        lines += [f"  {field}: {reason}" for field, reason in e.errors.items()]
        if e.retry_after is not None:
            lines.append(f"  retry after {e.retry_after:.0f} s")
    if leftover := leftover_of(e):
        lines.append(leftover.describe())
    return "\n".join(lines)


def _checked(problem: Callable[[str], str | None]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback: a usage error (exit 2) that names the option but never echoes the value,
    which may be a token or a URL with a password."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value and (why := problem(value)):
            raise click.BadParameter(f"the value {why}.")
        return value

    return check


class _ClientErrors(click.Group):
    """Every command: a client error is exit 1 with the server's message (click's ClickException)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PostgraasClientError as e:
            raise click.ClickException(describe(e)) from None


class Progress:
    """A ticking "waiting for NAME: creating, 3s" on stderr, only when stderr is a terminal and
    erased at the end: piped or captured output stays clean."""

    def __init__(self, label: str, status: str = "creating") -> None:
        self.label = label
        self.status = status
        self._stream = sys.stderr
        self._enabled = self._stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def update(self, instance: Instance) -> None:
        self.status = instance.status

    def __enter__(self) -> Progress:
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._enabled:
            self._stop.set()
            self._thread.join()
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def _run(self) -> None:
        started = time.monotonic()
        while True:
            elapsed = int(time.monotonic() - started)
            self._stream.write(f"\r\x1b[K{self.label}: {self.status}, {elapsed}s")
            self._stream.flush()
            if self._stop.wait(1.0):
                return


def _note(message: str) -> None:
    click.echo(message, err=True)


def _emit(instance: Instance, output: str, with_password: bool) -> None:
    if output == "json":
        click.echo(json.dumps(instance.as_dict(), indent=2))
    elif output == "env":
        click.echo(format_env(instance, with_password=with_password))
    else:
        uri = instance.uri if with_password else instance.uri_without_password
        if uri is None:
            raise click.ClickException(f"{instance.name} (id {instance.id}) has no address yet: {instance.status}.")
        click.echo(uri)


def _output_option(choices: tuple[str, ...], default: str) -> Any:
    return click.option(
        "--output",
        "-o",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="What to print on stdout.",
    )


def _password_option(action: str) -> Any:
    return click.option(
        "--password",
        envvar="PGPASSWORD",
        show_envvar=True,
        help=f"The instance's password; needed to {action} it on a server without tokens. "
        'Defaults to $PGPASSWORD (used only without --token), so after set -a; eval "$(postgraas create '
        'NAME --output env)"; set +a a plain `postgraas delete "$POSTGRAAS_INSTANCE_ID"` works.',
    )


def _password(ctx: click.Context, client: PostgraasClient, password: str | None) -> str | None:
    # A token needs no password but checks one that is sent: an unrelated $PGPASSWORD would be a 401.
    from_env = ctx.get_parameter_source("password") is ParameterSource.ENVIRONMENT
    if not password or (from_env and client.has_token):
        return None
    return password


@click.group(cls=_ClientErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="POSTGRAAS_URL",
    show_envvar=True,
    default=DEFAULT_URL,
    show_default=True,
    callback=_checked(url_problem),
    help="The Postgraas server (http:// or https://).",
)
@click.option(
    "--token",
    envvar="POSTGRAAS_TOKEN",
    show_envvar=True,
    callback=_checked(token_problem),
    help="API token, for servers in auth.mode token (prefer the env var: arguments show in ps).",
)
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None) -> None:
    """PostgreSQL databases on demand, from a Postgraas server.

    ID_OR_NAME is an instance's id or its name. A name may be all digits: then `2` is refused
    when it could mean either, and `id:2` or `name:2` says which.
    """
    client = PostgraasClient(url, token=token)
    ctx.call_on_close(client.close)
    ctx.obj = client


def _instance_command(password_for: str | None = None) -> Callable[[Callable[..., Any]], click.Command]:
    """A command on one instance, given as ID_OR_NAME, which its help explains. With
    ``password_for`` (what it does to the instance) it takes --password and the click context."""

    def decorate(command: Callable[..., Any]) -> click.Command:
        if password_for is not None:
            command = _password_option(password_for)(click.pass_context(command))
        with_ref = click.argument("ref", metavar="ID_OR_NAME")(command)
        return main.command(epilog="ID_OR_NAME: an id or a name; `id:2` or `name:2` when a name is all digits.")(
            with_ref
        )

    return decorate


@main.command()
@click.argument("name")
@click.option("--db", "db_name", help="Database name (default: derived from NAME).")
@click.option("--user", "db_username", help="User name (default: derived from NAME).")
@click.option("--password", help="The user's password (default: a generated one, shown once).")
@click.option("--ttl", help="Lifetime: seconds or 30m, 2h, 7d (default: the server's).")
@click.option("--backend", help="A backend configured on the server (default: the server's).")
@click.option("--template", "template_ref", metavar="NAME[@HASH]", help="Clone a ready template (see `template`).")
@click.option("--no-wait", is_flag=True, help="Answer at once; the instance is still being created.")
@_output_option(OUTPUTS, "json")
@click.pass_context
def create(
    ctx: click.Context,
    name: str,
    db_name: str | None,
    db_username: str | None,
    password: str | None,
    ttl: str | None,
    backend: str | None,
    template_ref: str | None,
    no_wait: bool,
    output: str,
) -> None:
    """Create an instance NAME and print how to connect, password included (shown only now).

    Interrupted (Ctrl-C, a timeout) before the server answered, the instance is deleted again;
    what could not be is named on stderr, with how to delete it.
    """
    client: PostgraasClient = ctx.obj
    if no_wait and output == "uri":
        # The address comes only once it is ready, and the password would be lost meanwhile.
        raise click.UsageError("--output uri needs the address, which --no-wait does not wait for; use env or json.")
    if output == "env" and password is not None and has_control_character(password):
        # Refused before creating: afterwards the instance would exist with nothing printed.
        raise UnsafeEnvValue("PGPASSWORD")
    kwargs: dict[str, Any] = {"db_name": db_name, "db_username": db_username, "password": password}
    kwargs |= {"ttl": ttl, "backend": backend, "wait": not no_wait, "template": template_ref}
    try:
        if no_wait:
            instance = client.create(name, **kwargs)
        else:
            with Progress(f"waiting for {name}"):
                instance = client.create(name, **kwargs)
    except KeyboardInterrupt as e:
        leftover = leftover_of(e)
        _note(f"Interrupted. {leftover.describe() if leftover else f'Nothing of {name!r} was left on the server.'}")
        ctx.exit(EXIT_INTERRUPTED)
    _emit(instance, output, with_password=True)
    if not instance.settled:
        _note(f"{name} (id {instance.id}) is {instance.status}; `postgraas wait id:{instance.id}` waits for it.")


@main.command("list")
@_output_option(("table", "json"), "table")
@click.option("--status", "statuses", multiple=True, help="Only these statuses (repeatable): ready, creating ...")
@click.option("--backend", help="Only this backend's instances.")
@click.option("--name", "name_prefix", help="Only instances whose name starts with this.")
@click.option("--owner", help="Only this owner's instances (an admin token's filter).")
@click.option(
    "--page-size",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
    help="Instances asked for per request.",
)
@click.pass_obj
def list_(
    client: PostgraasClient,
    output: str,
    statuses: tuple[str, ...],
    backend: str | None,
    name_prefix: str | None,
    owner: str | None,
    page_size: int,
) -> None:
    """List the instances this server (or token) shows, a page at a time."""
    instances = client.list(status=statuses, backend=backend, name=name_prefix, owner=owner, page_size=page_size)
    if output == "json":
        click.echo(json.dumps([i.as_dict() for i in instances], indent=2))
    else:
        click.echo(format_table(instances, datetime.now(UTC)))


@_instance_command()
@_output_option(OUTPUTS, "json")
@click.pass_obj
def show(client: PostgraasClient, ref: str, output: str) -> None:
    """Show an instance. The password is not included: the server returns it only to the create."""
    instance = client.find(ref)
    _emit(instance, output, with_password=False)
    if output in ("env", "uri"):
        _note("The password is not included: the server returns it only when it creates the instance.")


@_instance_command(password_for="delete")
@click.option("--force", is_flag=True, help="Terminate open sessions first.")
def delete(ctx: click.Context, ref: str, force: bool, password: str | None) -> None:
    """Delete an instance and its database."""
    client: PostgraasClient = ctx.obj
    click.echo(client.delete(client.resolve(ref), password=_password(ctx, client, password), force=force))


@_instance_command(password_for="extend")
@click.option("--ttl", required=True, help="New lifetime from now: seconds or 30m, 2h, 7d.")
def extend(ctx: click.Context, ref: str, ttl: str, password: str | None) -> None:
    """Give an instance a new lifetime, counted from now."""
    client: PostgraasClient = ctx.obj
    instance = client.extend(client.resolve(ref), ttl, password=_password(ctx, client, password))
    when = instance.expires_at.isoformat() if instance.expires_at else "never"
    expires = format_expires(instance.expires_at, datetime.now(UTC))
    click.echo(f"{instance.name} (id {instance.id}) expires {when} ({expires}).")


@_instance_command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_WAIT_TIMEOUT,
    show_default=True,
    help="Seconds to wait at most.",
)
@click.pass_obj
def wait(client: PostgraasClient, ref: str, timeout: float) -> None:
    """Wait until an instance is ready: exit 0 when it is, 1 when it failed or is still creating."""
    instance = client.find(ref)
    if not instance.settled:
        with Progress(f"waiting for {instance.name}", instance.status) as progress:
            instance = client.wait(instance.id, timeout, on_progress=progress.update)
    label = f"{instance.name} (id {instance.id})"
    if instance.status == "ready":
        click.echo(f"{label} is ready.")
        return
    if instance.status == "creating":
        raise click.ClickException(f"{label} is still creating after {timeout:g} s.")
    detail = f": {instance.status_detail}" if instance.status_detail else ""
    raise click.ClickException(f"{label} is {instance.status}{detail}")


main.add_command(template)

if __name__ == "__main__":
    main()
