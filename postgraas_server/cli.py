"""The postgraas-server console script: init-db and serve."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from . import migrations
from .app import configure_logging, create_app
from .config import ConfigError, Settings, load_settings
from .reaper import Reaper


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
    configure_logging(settings.application.log_level)
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
    help="Threads per worker; a create waits for its database, so several run at once.",
)
@click.pass_obj
def serve(settings: Settings, bind: str, workers: int, threads: int) -> None:
    """Serve the API under gunicorn."""
    from gunicorn.app.base import BaseApplication

    if settings.metadb.auto_migrate:
        _upgrade(settings)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            # A create may wait its backend's ready_timeout for the database.
            slowest = max(backend.ready_timeout for backend in settings.backends.values())
            self.cfg.set("timeout", int(slowest) + 60)
            self.cfg.set("loglevel", settings.application.log_level.lower())
            # One fixed control-socket path per user would be shared by every server on the host.
            self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            # Runs in each worker after the fork: every worker has a reaper, the lease picks one.
            app = create_app(settings)
            if settings.lifecycle.reaper_interval > 0:
                state = app.extensions["postgraas"]
                Reaper(state.backends, settings.lifecycle).start(app)
            return app

    Server().run()


@main.command()
@click.option("--once", is_flag=True, help="Run one pass and exit (for cron); else loop at lifecycle.reaper_interval.")
@click.pass_obj
def reap(settings: Settings, once: bool) -> None:
    """Reconcile the meta db with the backends: expire, clean up, mark lost. Prints what it did."""
    try:
        app = create_app(settings)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    state = app.extensions["postgraas"]
    reaper = Reaper(state.backends, settings.lifecycle)
    with app.app_context():
        if not once:
            if settings.lifecycle.reaper_interval <= 0:
                raise click.UsageError("lifecycle.reaper_interval is 0; use --once")
            reaper.run_forever(app)
            return
        if not reaper.acquire(seconds=300):
            holder, until = reaper.lease_holder()
            click.echo(f"another reaper ({holder}) holds the lease until {until:%Y-%m-%d %H:%M:%S} UTC; nothing done")
            return
        try:
            report = reaper.run_pass()
        finally:
            reaper.release()
    for action in report.actions:
        click.echo(action)
    click.echo(f"{len(report.actions)} action(s)")


def _upgrade(settings: Settings) -> None:
    try:
        # Instances of a 2.x meta db belong to the default backend: 2.x had only one.
        migrations.upgrade(settings.metadb.sqlalchemy_url(), legacy_backend=settings.application.default_backend)
    except SQLAlchemyError as e:
        raise click.ClickException(f"cannot upgrade the meta db: {e.__class__.__name__}: {e.orig or e}") from None
    except RuntimeError as e:
        raise click.ClickException(f"cannot upgrade the meta db: {e}") from None


if __name__ == "__main__":
    main()
