"""The instance resources: thin, parse -> service -> render."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, request
from flask_restful import Resource
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import InvalidRequest
from ..schemas import (
    CreatedInstanceOut,
    CreateInstanceRequest,
    DeleteInstanceRequest,
    InstanceOut,
    parse_request,
    render,
)
from ..service import InstanceService


def _service() -> InstanceService:
    return current_app.extensions["postgraas"].service


def _json_body() -> Any:
    """The body as JSON whatever its Content-Type (curl -d sends a form type)."""
    data = request.get_data(cache=True)  # 413 when a Content-Length exceeds MAX_CONTENT_LENGTH
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and len(data) >= limit:
        # A chunked body is cut at the limit rather than refused; a body that reaches it is too large.
        raise RequestEntityTooLarge()
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        # RecursionError: deeply nested arrays; ValueError covers bad JSON and bad UTF-8.
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise InvalidRequest(f"The request body is not valid JSON: {reason}.") from None


class InstanceCollection(Resource):
    def get(self) -> list[dict[str, Any]]:
        # backend_state would cost a backend call per instance; the item GET has it.
        return [render(InstanceOut.from_row(row), exclude={"backend_state"}) for row in _service().list()]

    def post(self) -> tuple[dict[str, Any], int]:
        create = parse_request(CreateInstanceRequest, _json_body())
        row = _service().create(create)
        return render(CreatedInstanceOut.from_created(row, create.db_pwd)), 201


class InstanceItem(Resource):
    def get(self, instance_id: int) -> dict[str, Any]:
        service = _service()
        row = service.get(instance_id)
        return render(InstanceOut.from_row(row, backend_state=service.backend_state(row)))

    def delete(self, instance_id: int) -> dict[str, Any]:
        delete = parse_request(DeleteInstanceRequest, _json_body())
        row = _service().delete(instance_id, delete)
        return {"status": "success", "msg": f"Deleted instance {row.postgraas_instance_name!r} (id {row.id})."}
