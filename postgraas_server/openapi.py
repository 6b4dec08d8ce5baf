"""The OpenAPI 3 document, built from the same pydantic models that validate and render."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import __version__
from .overview_schemas import OverviewOut
from .schemas import (
    INSTANCE_NAME_RE,
    CreatedInstanceOut,
    CreateInstanceRequest,
    DeleteInstanceRequest,
    ExtendInstanceRequest,
    InstanceOut,
)
from .service.listing import LISTED_STATUSES, MAX_ID, MAX_LIMIT
from .template_schemas import BuilderRequest, BuildingTemplateOut, EnsureTemplateRequest, TemplateOut

REF = "#/components/schemas/{model}"


class ErrorBody(BaseModel):
    """Every error: a sentence, and for field problems the fields with their reasons."""

    status: str
    msg: str
    errors: dict[str, str] | None = None


class SuccessBody(BaseModel):
    status: str
    msg: str


class HealthBody(BaseModel):
    status: str


class ReadyBody(BaseModel):
    status: str
    # "ok", or why not, for "metadb" and each configured backend by name.
    checks: dict[str, str]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(model: type[BaseModel], required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "Invalid request; `errors` names the fields",
        401: "Wrong db_pwd, or no valid token",
        403: "Not for this token (an admin's filter)",
        404: "No such instance or template (or another owner's)",
        409: "Name taken, instance in use, or being changed",
        413: "Body too large",
        422: "Reserved user name",
        429: "Over a quota of the token",
        502: "The backend failed",
        503: "The backend cannot be reached or is full; or busy (Retry-After)",
        504: "The database was not ready in time",
    }
    return {str(code): _json(_ref(ErrorBody), reasons[code]) for code in codes}


def _template_paths() -> dict[str, Any]:
    template_id = {
        "name": "template_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
    }
    one = _json(_ref(TemplateOut), "The template")
    return {
        "/postgraas_templates": {
            "get": {
                "summary": "List templates (a token's owner sees its own)",
                "responses": {"200": _json({"type": "array", "items": _ref(TemplateOut)}, "The templates"),
                              **_errors(400, 401)},
            },
            "post": {
                "summary": "Ensure a template of this name and content hash",
                "requestBody": _body(EnsureTemplateRequest, required=True),
                "responses": {
                    "201": _json(_ref(BuildingTemplateOut), "This caller builds it: the builder's database"),
                    "200": _json(_ref(TemplateOut), "Ready"),
                    "202": _json(_ref(TemplateOut), "Another caller builds it; see the Location header"),
                    **_errors(400, 401, 409, 413, 422, 429, 502, 503, 504),
                },
            },
        },
        "/postgraas_templates/{template_id}": {
            "parameters": [template_id],
            "get": {
                "summary": "One template; ?wait=ready waits while it is building",
                "parameters": [
                    {"name": "wait", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["ready"]}},
                    {"name": "timeout", "in": "query", "required": False,
                     "schema": {"type": "number", "minimum": 0, "maximum": 300}},
                ],
                "responses": {"200": one, **_errors(400, 401, 404)},
            },
            "delete": {
                "summary": "Delete the template (instances made from it stay)",
                "responses": {"200": _json(_ref(SuccessBody), "Deleted"), **_errors(400, 401, 404, 409, 503)},
            },
        },
        "/postgraas_templates/{template_id}/finalize": {
            "parameters": [template_id],
            "post": {
                "summary": "Freeze the builder's database into the template",
                "requestBody": _body(BuilderRequest, required=True),
                "responses": {"200": one, **_errors(400, 401, 404, 409, 413, 502, 503)},
            },
        },
        "/postgraas_templates/{template_id}/heartbeat": {
            "parameters": [template_id],
            "post": {
                "summary": "The builder is alive: the build's deadline moves on",
                "requestBody": _body(BuilderRequest, required=True),
                "responses": {"200": one, **_errors(400, 401, 404, 409, 413)},
            },
        },
    }  # fmt: skip


def _list_parameters(backends: list[str]) -> list[dict[str, Any]]:
    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}

    one = f"({'|'.join(LISTED_STATUSES)})"
    return [
        query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "A page of at most this many"),
        query("after", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "Only ids above this (the Link's cursor)"),
        query("status", {"type": "string", "pattern": f"^$|^{one}(,{one})*$"}, "Comma-separated statuses"),
        query("backend", {"type": "string", "enum": backends}, "Only this backend's"),
        query("name", {"type": "string", "pattern": f"^{INSTANCE_NAME_RE.pattern}$"}, "Only names starting with this"),
        query("owner", {"type": "string", "minLength": 1}, "Only this owner's (admin tokens)"),
    ]


def build_document(token_auth: bool, backends: list[str], template_backends: list[str]) -> dict[str, Any]:
    """``backends``: the configured names (what "backend" may be); ``template_backends``: those
    that keep templates."""
    _, definitions = models_json_schema(
        [
            (CreateInstanceRequest, "validation"),
            (DeleteInstanceRequest, "validation"),
            (ExtendInstanceRequest, "validation"),
            (InstanceOut, "serialization"),
            (CreatedInstanceOut, "serialization"),
            (ErrorBody, "serialization"),
            (SuccessBody, "serialization"),
            (HealthBody, "serialization"),
            (ReadyBody, "serialization"),
            (EnsureTemplateRequest, "validation"),
            (BuilderRequest, "validation"),
            (TemplateOut, "serialization"),
            (BuildingTemplateOut, "serialization"),
            (OverviewOut, "serialization"),
        ],
        ref_template=REF,
    )
    instance_id = {
        "name": "instance_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
    }
    collection = {
        "get": {
            "summary": "List instances (a token's owner sees its own), in id order; ?limit= pages",
            "parameters": _list_parameters(backends),
            "responses": {
                "200": {
                    **_json({"type": "array", "items": _ref(InstanceOut)}, "The instances"),
                    "headers": {
                        "Link": {
                            "description": 'With limit, while more follow: <...&after=ID>; rel="next"',
                            "schema": {"type": "string"},
                        }
                    },
                },
                **_errors(400, 401, 403, 503),
            },
        },
        "post": {
            "summary": "Create an instance",
            "requestBody": _body(CreateInstanceRequest, required=True),
            "responses": {
                "201": _json(_ref(CreatedInstanceOut), "Ready: a login works; the only answer with db_pwd"),
                "202": _json(_ref(CreatedInstanceOut), "Accepted (wait: false); see the Location header"),
                **_errors(400, 401, 404, 409, 413, 422, 429, 502, 503, 504),
            },
        },
    }
    item = {
        "parameters": [instance_id],
        "get": {
            "summary": "One instance; ?wait=ready waits while it is creating",
            "parameters": [
                {"name": "wait", "in": "query", "required": False, "schema": {"type": "string", "enum": ["ready"]}},
                {
                    "name": "timeout",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "minimum": 0, "maximum": 300},
                },
            ],
            "responses": {"200": _json(_ref(InstanceOut), "The instance"), **_errors(400, 401, 404)},
        },
        "patch": {
            "summary": "Set a new ttl, from now",
            "requestBody": _body(ExtendInstanceRequest, required=True),
            "responses": {
                "200": _json(_ref(InstanceOut), "The instance"),
                **_errors(400, 401, 404, 409, 413, 429, 503),
            },
        },
        "delete": {
            "summary": "Delete the instance (or cancel its creation)",
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _ref(DeleteInstanceRequest)}},
            },
            "responses": {
                "200": _json(_ref(SuccessBody), "Deleted"),
                **_errors(400, 401, 404, 409, 413, 502, 503),
            },
        },
    }
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _json(_ref(HealthBody), "Up"), **_errors(400)},
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: the meta db and every backend reachable (checks says which is not)",
                "security": [],
                "responses": {
                    "200": _json(_ref(ReadyBody), "All reachable"),
                    "503": _json(_ref(ReadyBody), "Something is not"),
                    **_errors(400),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format), summed over the server's workers",
                "security": [],
                "responses": {
                    "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors(400),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}},
                    **_errors(400),
                },
            }
        },
    }
    overview = {
        "get": {
            "summary": "The auth mode, the token's owner, and each backend: instances against max_instances, pool fill",
            "responses": {"200": _json(_ref(OverviewOut), "The overview"), **_errors(400, 401)},
        }
    }
    for prefix in ("", "/api/v2"):
        paths[f"{prefix}/postgraas_overview"] = overview
        paths[f"{prefix}/postgraas_instances"] = collection
        paths[f"{prefix}/postgraas_instances/{{instance_id}}"] = item
        paths.update({f"{prefix}{path}": shape for path, shape in _template_paths().items()})
    document: dict[str, Any] = {
        # 3.1: its schemas are JSON Schema, as pydantic writes them (null as a type, anyOf).
        "openapi": "3.1.0",
        "info": {"title": "Postgraas", "version": __version__},
        "paths": paths,
        "components": {"schemas": definitions["$defs"]},
    }
    create = definitions["$defs"]["CreateInstanceRequest"]["properties"]
    create["backend"] = {"anyOf": [{"type": "string", "enum": backends}, {"type": "null"}], "default": None}
    ensure = definitions["$defs"]["EnsureTemplateRequest"]["properties"]
    names = [{"type": "string", "enum": template_backends}] if template_backends else []
    ensure["backend"] = {"anyOf": [*names, {"type": "null"}], "default": None}
    if not template_backends:
        create["template"] = {"type": "null", "default": None}
    if not token_auth:
        # Without a token, the password is the only proof: required to delete or extend.
        for name in ("DeleteInstanceRequest", "ExtendInstanceRequest"):
            shape = definitions["$defs"][name]
            shape["properties"]["db_pwd"] = {"type": "string"}
            shape["required"] = sorted({*shape.get("required", []), "db_pwd"})
    if token_auth:
        document["components"]["securitySchemes"] = {"token": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"token": []}]
    return document
