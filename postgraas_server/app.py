"""The application factory: settings -> meta db -> backends -> service -> routes -> background work.

gunicorn's usual ``gunicorn 'postgraas_server.app:create_app()'`` and ``postgraas-server serve`` run
the same server: the factory runs in each worker after the fork and starts that worker's pool keeper
and reaper.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .api import register_routes
from .backends import BackendRegistry
from .config import ConfigError, Settings, load_settings
from .logs import configure_logging
from .models import Deployment, db
from .service import BackgroundWork, InstanceService, TemplateService, start_background_work
from .sqlite_file import keep_private

# SQLite waits this long for a competing writer before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30


@dataclass
class PostgraasState:
    settings: Settings
    # Stamped on every backend object of this meta db (see migrations 0002).
    deployment: str
    backends: BackendRegistry
    service: InstanceService
    templates: TemplateService
    # None where the factory was asked not to start it (tests, one-shot commands).
    background: BackgroundWork | None


def create_app(
    settings: Settings | None = None, *, backends: BackendRegistry | None = None, background: bool = True
) -> Flask:
    """Build the app. ``backends`` may be injected (tests); otherwise they come from the settings.
    ``background``: start this process's pool keeper and reaper (see start_background_work)."""
    if settings is None:
        # Served by a plain WSGI server (gunicorn 'postgraas_server.app:create_app()'): the factory
        # reads the config and sets logging up, as the CLI does for its commands.
        settings = load_settings()
        configure_logging(settings.application.log_level, settings.application.log_format)
    app = Flask("postgraas_server")
    # Keep fields in declaration order (errors list fields in the order they were checked).
    app.json.sort_keys = False  # type: ignore[attr-defined]
    url = settings.metadb.sqlalchemy_url()
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        # pre_ping: a restarted PostgreSQL meta db costs a reconnect, not a 500.
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(url),
        MAX_CONTENT_LENGTH=settings.application.max_body_bytes,
        DEBUG=settings.application.debug,
    )
    # Also where init-db ran under an older version, or the file was copied in.
    keep_private(url)
    db.init_app(app)
    with app.app_context():
        _tune_sqlite(db.engine)
    with app.app_context():
        deployment = _deployment_id()
    backends = backends or BackendRegistry.from_settings(settings, deployment)
    service = InstanceService(backends, settings.lifecycle, context=app.app_context)
    state = PostgraasState(settings, deployment, backends, service, TemplateService(service), background=None)
    app.extensions["postgraas"] = state
    register_routes(app)
    if background:
        state.background = start_background_work(service, settings, app.app_context)
    return app


def _deployment_id() -> str:
    try:
        deployment = db.session.execute(select(Deployment.id)).scalar_one_or_none()
    except SQLAlchemyError as e:
        raise ConfigError(
            f"the meta db cannot be read or its schema is not up to date; run `postgraas-server init-db` ({e})"
        ) from None
    finally:
        db.session.remove()
    if deployment is None:
        raise ConfigError("the meta db has no deployment id; run `postgraas-server init-db`")
    return deployment


def _engine_options(url: str) -> dict[str, object]:
    # hide_parameters: a failing statement's values (hashes, names) stay out of the log.
    if url.startswith("sqlite"):
        return {"hide_parameters": True, "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"hide_parameters": True, "pool_pre_ping": True}


def _tune_sqlite(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _synchronous(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # The file is in WAL mode already: migrations.upgrade sets it once. Setting it on every
        # connect failed a worker's boot with "database is locked" while another worker wrote.
        cursor = dbapi_connection.cursor()
        # In WAL mode NORMAL cannot corrupt the file; a power cut may lose the last commits, and
        # what they described (a backend object) is then an orphan the reaper removes. It saves an
        # fsync per commit, and a create commits three times.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
