"""The postgraas-server console script: init-db, serve, reap and token."""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from . import migrations
from .config import ConfigError, Settings, load_settings
from .durations import parse_duration
from .logs import configure_logging
from .tokens import issue_token, list_tokens, revoke_token

# The app and the reaper are imported inside the commands, not here: they import prometheus_client,
# which decides once, at import, whether to count per process or in PROMETHEUS_MULTIPROC_DIR, and
# `serve` sets that variable first (see _prepare_metrics_dir).


@click.group()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="application.cfg to read (default: $POSTGRAAS_CONFIG, else ./application.cfg).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Postgraas: PostgreSQL databases on demand, over REST."""
    try:
        settings = load_settings(config_path)
    except ConfigError as e:
        raise click.ClickException(f"bad configuration: {e}") from None
    configure_logging(settings.application.log_level, settings.application.log_format)
    ctx.obj = settings


@main.command("init-db")
@click.pass_obj
def init_db(settings: Settings) -> None:
    """Create or upgrade the meta-db schema. Never drops data; safe to run twice."""
    _upgrade(settings)
    click.echo("meta db schema is up to date")


@main.command()
@click.option("--bind", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="gunicorn worker processes.")
@click.option(
    "--threads",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Request threads per worker; a create waits for its database, so several run at once. A request gets "
    "a thread only once all of it has arrived.",
)
@click.option(
    "--worker-class",
    type=click.Choice(["ours", "gthread"]),
    default="ours",
    show_default=True,
    help="For comparisons only (benchmarks/slow_clients.py): gthread is gunicorn's own worker, which slow or idle "
    "clients can stop (docs/serving.md).",
)
@click.pass_obj
def serve(settings: Settings, bind: str, workers: int, threads: int, worker_class: str) -> None:
    """Serve the API under gunicorn."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger

    class ServerLogs(Logger):
        """gunicorn's own lines (listening, workers booting or timing out) go through the root
        handler, so they share the configured format, JSON included."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for handler in list(self.error_log.handlers):
                self.error_log.removeHandler(handler)
            self.error_log.propagate = True

    if settings.metadb.auto_migrate:
        _upgrade(settings)
    _prepare_metrics_dir()
    # Before the workers fork: all of them must derive the same passwords for pooled objects.
    from .backends.postgres.pool_secret import ensure_pool_secret

    ensure_pool_secret()
    if settings.auth.mode == "none" and not _is_loopback(bind):
        logging.getLogger(__name__).warning(
            "auth.mode is none and the server listens on %s: anyone who reaches it can list and delete "
            "every instance; set auth.mode to token",
            bind,
        )

    from .serving import Limits

    class Server(BaseApplication):
        # Read by the worker (postgraas_server/serving/worker.py): the deadlines it puts on clients.
        serving_limits = Limits.from_settings(settings.application)

        def load_config(self) -> None:
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set(
                "worker_class", "gthread" if worker_class == "gthread" else "postgraas_server.serving.worker.Worker"
            )
            # A create may wait its backend's ready_timeout for the database.
            slowest = max(backend.ready_timeout for backend in settings.backends.values())
            self.cfg.set("timeout", int(slowest) + 60)
            self.cfg.set("loglevel", settings.application.log_level.lower())
            # One fixed control-socket path per user would be shared by every server on the host.
            self.cfg.set("control_socket_disable", True)
            self.cfg.set("logger_class", ServerLogs)
            self.cfg.set("worker_exit", _stop_background_work)

        def load(self) -> Any:
            # Runs in each worker after the fork: the factory starts the worker's pool keeper and
            # reaper (every worker has a reaper, the lease picks one).
            from .app import create_app

            return create_app(settings)

    Server().run()


def _stop_background_work(_arbiter: Any, worker: Any) -> None:
    """gunicorn's worker_exit, in the worker leaving: its reaper gives the lease back (so another
    worker's takes over at once) and its pool keeper makes no more."""
    state = getattr(worker.wsgi, "extensions", {}).get("postgraas")
    if state is not None and state.background is not None:
        state.background.stop(wait=STOP_WAIT_S)


# How long a leaving worker waits for its reaper's pass to end before it exits anyway.
STOP_WAIT_S = 5.0


@main.command()
@click.option("--once", is_flag=True, help="Run one pass and exit (for cron); else loop at lifecycle.reaper_interval.")
@click.pass_obj
def reap(settings: Settings, once: bool) -> None:
    """Reconcile the meta db with the backends: expire, clean up, mark lost. Prints what it did."""
    from .service import Reaper, ReaperLoop

    app = _app(settings)
    state = app.extensions["postgraas"]
    reaper = Reaper(state.backends, settings.lifecycle, state.service.heartbeats, app.app_context)
    if not once:
        if settings.lifecycle.reaper_interval <= 0:
            raise click.UsageError("lifecycle.reaper_interval is 0; use --once")
        ReaperLoop(reaper, app.app_context).run_forever()
        return
    with app.app_context():
        if not reaper.acquire(seconds=300):
            holder, until = reaper.lease_holder()
            click.echo(f"another reaper ({holder}) holds the lease until {until:%Y-%m-%d %H:%M:%S} UTC; nothing done")
            return
        try:
            report = reaper.run_pass(lease_seconds=300)
            # The expired instances' removals run after the pass: what it did is known once they ran.
            reaper.wait_for_removals()
        finally:
            reaper.release()
    for action in report.actions:
        click.echo(action)
    click.echo(f"{len(report.actions)} action(s)")


@main.group()
def token() -> None:
    """API tokens for auth.mode token."""


@token.command("create")
@click.option("--owner", required=True, help="Who the token's instances belong to.")
@click.option("--admin", is_flag=True, help="May see and delete every owner's instances.")
@click.option("--max-instances", type=click.IntRange(min=0), help="At most this many instances at once.")
@click.option("--max-ttl", help="Longest ttl its instances may have (seconds, 30m, 2h, 7d).")
@click.option("--max-templates", type=click.IntRange(min=0), help="At most this many templates at once.")
@click.pass_obj
def token_create(
    settings: Settings,
    owner: str,
    admin: bool,
    max_instances: int | None,
    max_ttl: str | None,
    max_templates: int | None,
) -> None:
    """Make a token and print it once; only its hash is kept."""
    if not OWNER_RE.fullmatch(owner):
        raise click.BadParameter("1 to 63 letters, digits, '_', '.', '-' or '@'", param_hint="--owner")
    try:
        ttl = parse_duration(max_ttl) if max_ttl is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-ttl") from None
    with _app(settings).app_context():
        record, secret = issue_token(
            owner, admin=admin, max_instances=max_instances, max_ttl=ttl, max_templates=max_templates
        )
    click.echo(secret)
    click.echo(f"token {record.id} for {owner} created; it is shown only this once", err=True)


@token.command("list")
@click.pass_obj
def token_list(settings: Settings) -> None:
    """The tokens, without their secrets."""
    with _app(settings).app_context():
        for t in list_tokens():
            limits = f"max_instances={t.max_instances} max_ttl={t.max_ttl} max_templates={t.max_templates}"
            state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
            click.echo(
                f"{t.id}\t{t.owner}\t{'admin' if t.admin else 'user'}\t{limits}\t{t.created_at:%Y-%m-%d}\t{state}"
            )


@token.command("revoke")
@click.argument("token_id", type=int)
@click.pass_obj
def token_revoke(settings: Settings, token_id: int) -> None:
    """Revoke a token by id: it stops working at once."""
    with _app(settings).app_context():
        if revoke_token(token_id) is None:
            raise click.ClickException(f"there is no token {token_id}")
    click.echo(f"token {token_id} revoked")


OWNER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}")


def _is_loopback(bind: str) -> bool:
    host = bind.rsplit(":", 1)[0].strip("[]") if ":" in bind else bind
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # unix sockets and host names: warn rather than guess


def _app(settings: Settings) -> Any:
    from .app import create_app

    try:
        # Commands do their own work: no pool keeper or reaper of a server in the background.
        return create_app(settings, background=False)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _prepare_metrics_dir() -> None:
    """Give the workers one empty directory to count in, so /metrics sums over all of them."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        # The operator's directory: counts of an earlier run would be added to ours.
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return
    path = tempfile.mkdtemp(prefix="postgraas-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    server_pid = os.getpid()

    def remove() -> None:
        # Workers inherit this handler and run it when they exit; only the server's own exit may remove.
        if os.getpid() == server_pid:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    logging.getLogger(__name__).info("the workers count metrics in %s", path)


def _upgrade(settings: Settings) -> None:
    try:
        # Instances of a 2.x meta db belong to the default backend: 2.x had only one.
        legacy_backend = settings.application.default_backend or next(iter(settings.backends))
        migrations.upgrade(settings.metadb.sqlalchemy_url(), legacy_backend=legacy_backend)
    except SQLAlchemyError as e:
        reason = getattr(e, "orig", None) or e  # the driver's error, where SQLAlchemy wraps one
        raise click.ClickException(f"cannot upgrade the meta db: {e.__class__.__name__}: {reason}") from None
    except RuntimeError as e:
        raise click.ClickException(f"cannot upgrade the meta db: {e}") from None


if __name__ == "__main__":
    main()
