"""HTTP routes: the flask-restful resources, /health, and JSON errors everywhere."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, g, request
from flask_restful import Api
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..backends import Backend
from ..console import PUBLIC_ENDPOINTS as CONSOLE_ENDPOINTS
from ..console import console, redirect_browsers_to_console
from ..errors import InvalidRequest, PostgraasError, Unauthenticated
from ..metrics import exposition
from ..models import db
from ..openapi import build_document
from ..service.listing import MAX_ID
from ..tokens import authenticate
from . import request_log
from .errors import error_response
from .instances import InstanceCollection, InstanceItem
from .overview import Overview
from .templates import TemplateCollection, TemplateFinalize, TemplateHeartbeat, TemplateItem

log = logging.getLogger(__name__)

# postgraas_server 2.x clients use the /api/v2 prefix.
PREFIXES = ("", "/api/v2")


# Query parameters that would carry a secret: URLs end up in access logs and proxies.
SECRET_PARAMETERS = ("db_pwd", "password", "pwd", "token", "db_password")


def _refuse_secrets_in_the_url() -> None:
    named = sorted(k for k in request.args if k.lower() in SECRET_PARAMETERS)
    if named:
        raise InvalidRequest(
            "Secrets are not accepted in the URL, where logs and proxies keep them; send them in the JSON body.",
            {name: "not accepted in the query string" for name in named},
        )


# Open without a token: liveness, readiness, metrics (counts, no names), the API's description and
# the console's static files (the page asks for a token itself).
PUBLIC_ENDPOINTS = ("health", "ready", "metrics", "openapi", *CONSOLE_ENDPOINTS)


def _meta_db_check() -> str:
    try:
        db.session.execute(text("select 1"))
        return "ok"
    except SQLAlchemyError as e:
        return f"unreachable: {type(getattr(e, 'orig', None) or e).__name__}"
    finally:
        db.session.remove()


def _backend_check(backend: Backend) -> str:
    try:
        backend.health()
        return "ok"
    except PostgraasError as e:
        return e.msg


def _authenticate() -> None:
    """auth.mode token: every other request needs a valid bearer token; g.principal is its owner."""
    g.principal = None
    if current_app.extensions["postgraas"].settings.auth.mode != "token" or request.endpoint in PUBLIC_ENDPOINTS:
        return
    presented = _bearer_token()
    if presented is None:
        raise Unauthenticated("This server needs a token: send Authorization: Bearer <token>.")
    principal = authenticate(presented)
    if principal is None:
        raise Unauthenticated("The token is not valid (unknown, malformed or revoked).")
    g.principal = principal


def _admin_token_sent() -> bool:
    """An endpoint open to all may tell an admin more: a valid admin token (auth.mode token) was sent."""
    if current_app.extensions["postgraas"].settings.auth.mode != "token":
        return False
    presented = _bearer_token()
    principal = authenticate(presented) if presented is not None else None
    return principal is not None and principal.admin


def _bearer_token() -> str | None:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" and presented.strip() else None


class PostgraasApi(Api):
    def handle_error(self, e: Exception) -> Response:
        # flask-restful answers resource errors itself, bypassing Flask's handlers.
        return error_response(e)


def register_routes(app: Flask) -> None:
    api = PostgraasApi(app, catch_all_404s=True)
    api.add_resource(InstanceCollection, *(f"{p}/postgraas_instances" for p in PREFIXES))
    # Ids beyond a signed 64-bit integer cannot exist; bounding the route makes them a plain 404.
    item = f"/postgraas_instances/<int(max={MAX_ID}):instance_id>"
    api.add_resource(InstanceItem, *(f"{p}{item}" for p in PREFIXES))
    api.add_resource(TemplateCollection, *(f"{p}/postgraas_templates" for p in PREFIXES))
    template = f"/postgraas_templates/<int(max={MAX_ID}):template_id>"
    api.add_resource(TemplateItem, *(f"{p}{template}" for p in PREFIXES))
    api.add_resource(TemplateFinalize, *(f"{p}{template}/finalize" for p in PREFIXES))
    api.add_resource(TemplateHeartbeat, *(f"{p}{template}/heartbeat" for p in PREFIXES))
    api.add_resource(Overview, *(f"{p}/postgraas_overview" for p in PREFIXES))
    app.register_blueprint(console)
    app.register_error_handler(Exception, error_response)
    request_log.install(app)
    # Before a token is asked for: a browser opening / is sent to the console, which signs in itself.
    app.before_request(redirect_browsers_to_console)
    app.before_request(_refuse_secrets_in_the_url)
    app.before_request(_authenticate)

    state = app.extensions["postgraas"]
    document = build_document(
        token_auth=state.settings.auth.mode == "token",
        backends=list(state.backends.backends),
        template_backends=[name for name, b in state.backends.backends.items() if b.why_no_template() is None],
    )

    @app.get("/openapi.json")
    def openapi() -> dict:
        return document

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> tuple[dict[str, object], int]:
        """The meta db and every backend reachable: 200; else 503 saying which is not. Why not
        (addresses, driver errors) goes to the log, and only to an admin token in the answer."""
        checks = {
            "metadb": _meta_db_check(),
            **{name: _backend_check(b) for name, b in state.backends.backends.items()},
        }
        for name, result in checks.items():
            if result != "ok":
                log.warning("readiness: %s is not ready: %s", name, result)
        ok = all(result == "ok" for result in checks.values())
        if not _admin_token_sent():
            checks = {name: "ok" if result == "ok" else "failed" for name, result in checks.items()}
        return {"status": "ok" if ok else "failed", "checks": checks}, 200 if ok else 503

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = exposition(app)
        return Response(body, content_type=content_type)
