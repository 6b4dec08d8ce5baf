"""The template resources: thin, parse -> service -> render."""

from __future__ import annotations

from typing import Any

from flask import current_app, g, request
from flask_restful import Resource

from ..schemas import parse_request, render
from ..service import TemplateService
from ..template_schemas import BuilderRequest, BuildingTemplateOut, EnsureTemplateRequest, TemplateOut
from .instances import _json_body, _wait_timeout


def _service() -> TemplateService:
    return current_app.extensions["postgraas"].templates


class TemplateCollection(Resource):
    def get(self) -> list[dict[str, Any]]:
        return [render(TemplateOut.from_row(row)) for row in _service().list(g.principal)]

    def post(self) -> tuple[dict[str, Any], int] | tuple[dict[str, Any], int, dict[str, str]]:
        ensured = _service().ensure(parse_request(EnsureTemplateRequest, _json_body()), g.principal)
        if ensured.outcome == "build":
            # The only answer that carries the builder's password.
            return render(BuildingTemplateOut.for_builder(ensured.template, ensured.builder, ensured.db_pwd)), 201
        body = render(TemplateOut.from_row(ensured.template))
        if ensured.outcome == "ready":
            return body, 200
        return body, 202, {"Location": f"{request.path.rstrip('/')}/{ensured.template.id}"}


class TemplateItem(Resource):
    def get(self, template_id: int) -> dict[str, Any]:
        timeout = _wait_timeout()
        if timeout is None:
            return render(TemplateOut.from_row(_service().get(template_id, g.principal)))
        return render(TemplateOut.from_row(_service().wait_until_settled(template_id, timeout, g.principal)))

    def delete(self, template_id: int) -> dict[str, Any]:
        return {"status": "success", "msg": _service().delete(template_id, g.principal)}


class TemplateFinalize(Resource):
    def post(self, template_id: int) -> dict[str, Any]:
        builder = parse_request(BuilderRequest, _json_body())
        return render(TemplateOut.from_row(_service().finalize(template_id, builder, g.principal)))


class TemplateHeartbeat(Resource):
    def post(self, template_id: int) -> dict[str, Any]:
        builder = parse_request(BuilderRequest, _json_body())
        return render(TemplateOut.from_row(_service().heartbeat(template_id, builder, g.principal)))
