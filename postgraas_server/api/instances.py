"""The instance resources: thin, parse -> service -> render."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Response, after_this_request, current_app, g, has_request_context, request
from flask_restful import Resource
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import InvalidRequest
from ..schemas import (
    CreatedInstanceOut,
    CreateInstanceRequest,
    DeleteInstanceRequest,
    ExtendInstanceRequest,
    InstanceOut,
    parse_request,
    render,
)
from ..service import InstanceService
from .instance_list import list_instances

# A GET ?wait=ready blocks at most this long (and no longer than the client's timeout).
MAX_WAIT_SECONDS = 300.0
DEFAULT_WAIT_SECONDS = 30.0


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
        body = json.loads(data)
        # "\ud800" is valid JSON but no character: nothing downstream could encode it.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
        return body
    except UnicodeEncodeError:
        raise InvalidRequest("The request body is not valid JSON: it has an unpaired surrogate escape.") from None
    except (ValueError, RecursionError) as e:
        # RecursionError: deeply nested arrays; ValueError covers bad JSON and bad UTF-8.
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise InvalidRequest(f"The request body is not valid JSON: {reason}.") from None


def _wait_timeout() -> float | None:
    """None without ?wait; else the seconds to wait for, from ?timeout (checked either way)."""
    wait = request.args.get("wait")
    if wait is not None and wait != "ready":
        raise InvalidRequest("The only wait there is is wait=ready.", {"wait": "must be 'ready'"})
    raw = request.args.get("timeout", str(DEFAULT_WAIT_SECONDS))
    try:
        timeout = float(raw)
    except ValueError:
        timeout = -1.0
    if not 0 <= timeout <= MAX_WAIT_SECONDS:
        raise InvalidRequest(
            f"timeout must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}.",
            {"timeout": f"must be from 0 to {MAX_WAIT_SECONDS:g}"},
        )
    return timeout if wait is not None else None


def _after_response(action: Callable[[], None]) -> None:
    """Run ``action`` once the answer to the current request is sent (at once outside a request)."""
    if not has_request_context():
        action()
        return

    @after_this_request
    def _on_close(response: Response) -> Response:
        response.call_on_close(action)
        return response


class InstanceCollection(Resource):
    def get(self) -> Response:
        return list_instances()

    def post(self) -> tuple[dict[str, Any], int] | tuple[dict[str, Any], int, dict[str, str]]:
        create = parse_request(CreateInstanceRequest, _json_body())
        row = _service().create(create, g.principal, after_response=_after_response)
        # The service generated one where the request had none; this answer is the only one that shows it.
        assert create.db_pwd is not None
        body = render(CreatedInstanceOut.from_created(row, create.db_pwd))
        if create.wait:
            return body, 201
        return body, 202, {"Location": f"{request.path.rstrip('/')}/{row.id}"}


class InstanceItem(Resource):
    def get(self, instance_id: int) -> dict[str, Any]:
        service = _service()
        timeout = _wait_timeout()
        if timeout is None:
            row = service.get(instance_id, g.principal)
        else:
            row = service.wait_until_settled(instance_id, timeout, g.principal)
        return render(InstanceOut.from_row(row, backend_state=service.backend_state(row)))

    def patch(self, instance_id: int) -> dict[str, Any]:
        extend = parse_request(ExtendInstanceRequest, _json_body())
        return render(InstanceOut.from_row(_service().extend(instance_id, extend, g.principal)))

    def delete(self, instance_id: int) -> dict[str, Any]:
        # The body is optional (a token needs no db_pwd): no body at all is an empty object
        # (but a JSON null is no object).
        body = _json_body() if request.get_data(cache=True).strip() else {}
        delete = parse_request(DeleteInstanceRequest, body)
        return {"status": "success", "msg": _service().delete(instance_id, delete, g.principal)}
