"""Request and response shapes: one declaration validates input and renders output."""

from __future__ import annotations

import re
from datetime import datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from .durations import parse_duration
from .errors import InvalidRequest, Unprocessable
from .models import DBInstance

# A mapped row, or a snapshot of its columns as attributes (what a status transition returns).
InstanceRow = DBInstance | SimpleNamespace

# Docker container names allow [a-zA-Z0-9][a-zA-Z0-9_.-]; 63 keeps them usable as host names too.
INSTANCE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Plain PostgreSQL identifiers: nothing that would need quoting, so no quoting tricks.
IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
IDENTIFIER_MAX_BYTES = 63
PASSWORD_MAX_CHARS = 1024


def _instance_name(value: str) -> str:
    if not INSTANCE_NAME_RE.fullmatch(value):
        raise PydanticCustomError(
            "invalid",
            "must be 1 to 63 characters: letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    return value


TEMPLATE_REF_RE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,62})(@(?P<hash>[A-Za-z0-9_.:-]{1,128}))?")


def _template_ref(value: str) -> str:
    if not TEMPLATE_REF_RE.fullmatch(value):
        raise PydanticCustomError("invalid", "must be a template's NAME or NAME@HASH")
    return value


def _identifier(value: str) -> str:
    if not IDENTIFIER_RE.fullmatch(value):
        raise PydanticCustomError(
            "invalid",
            "must be a PostgreSQL identifier: letters, digits and '_', not starting with a digit",
        )
    if len(value.encode()) > IDENTIFIER_MAX_BYTES:
        raise PydanticCustomError("invalid", "must be at most 63 bytes")
    return value


def _db_name(value: str) -> str:
    _identifier(value)
    if value.lower() in ("template0", "template1"):
        raise PydanticCustomError("invalid", "template0 and template1 are reserved by PostgreSQL")
    return value


# Role names PostgreSQL refuses (public, none) or reads as something else where a role is named
# (current_user, ...), and the superuser's. Compared in lower case: the docker image's entrypoint
# and some clients fold a name to lower case.
RESERVED_USERNAMES = ("postgres", "public", "none", "current_user", "current_role", "session_user", "system_user")


def _username(value: str) -> str:
    # The superuser name (and 2.x's user@server form of it) would hand out the cluster's admin.
    if value.lower() == "postgres" or value.lower().startswith("postgres@"):
        raise PydanticCustomError("reserved", "'postgres' is reserved; choose another user name")
    _identifier(value)
    if value.lower() in RESERVED_USERNAMES:
        raise PydanticCustomError("invalid", f"{value.lower()!r} is reserved by PostgreSQL; choose another user name")
    if value.lower().startswith("pg_"):
        raise PydanticCustomError("invalid", "names starting with 'pg_' are reserved by PostgreSQL")
    return value


def _any_case(word: str) -> str:
    """A JSON-schema regex (no inline flags there) matching ``word`` in any case."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


def _password(value: str) -> str:
    if not value:
        raise PydanticCustomError("invalid", "must not be empty")
    if "\x00" in value:
        raise PydanticCustomError("invalid", "must not contain a NUL character")
    if len(value) > PASSWORD_MAX_CHARS:
        raise PydanticCustomError("invalid", f"must be at most {PASSWORD_MAX_CHARS} characters")
    return value


def _whole_number(value: Any) -> Any:
    # JSON does not tell 7200 from 7200.0; both are the same whole number of seconds.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _ttl(value: int | str) -> int:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise PydanticCustomError("invalid", str(e)) from None


def _backend_name(value: str) -> str:
    if len(value) > 32:
        raise PydanticCustomError("invalid", "must be at most 32 characters")
    return value


BackendName = Annotated[StrictStr, AfterValidator(_backend_name)]
# Seconds, or a string such as "30m", "2h", "7d" (the document states a safe part of what parses).
# Validated, it is a whole number of seconds, which is what the type checker is told.
_Ttl = Annotated[
    StrictInt | StrictStr,
    BeforeValidator(_whole_number),
    AfterValidator(_ttl),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 315360000},
                {
                    "type": "string",
                    "pattern": "^([1-9][0-9]{0,7}s?|[1-9][0-9]{0,4}m|[1-9][0-9]{0,3}h|[1-9][0-9]{0,2}d)$",
                },
            ]
        }
    ),
]
if TYPE_CHECKING:
    Ttl = int
else:
    Ttl = _Ttl
# The validators give the messages; WithJsonSchema states the same rules in the OpenAPI document.
_IDENT = "[A-Za-z_][A-Za-z0-9_]{0,62}"
InstanceName = Annotated[
    StrictStr,
    AfterValidator(_instance_name),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"}),
]
Identifier = Annotated[
    StrictStr, AfterValidator(_identifier), WithJsonSchema({"type": "string", "pattern": f"^{_IDENT}$"})
]
DbName = Annotated[
    StrictStr,
    AfterValidator(_db_name),
    WithJsonSchema({"type": "string", "pattern": f"^(?![tT][eE][mM][pP][lL][aA][tT][eE][01]$){_IDENT}$"}),
]
_NOT_RESERVED = "".join(f"(?!{_any_case(name)}$)" for name in RESERVED_USERNAMES)
Username = Annotated[
    StrictStr,
    AfterValidator(_username),
    WithJsonSchema({"type": "string", "pattern": f"^{_NOT_RESERVED}(?!{_any_case('pg_')}){_IDENT}$"}),
]
TemplateRef = Annotated[
    StrictStr,
    AfterValidator(_template_ref),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(@[A-Za-z0-9_.:-]{1,128})?$"}),
]
Password = Annotated[
    StrictStr,
    AfterValidator(_password),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": PASSWORD_MAX_CHARS, "pattern": "^[^\\u0000]*$"}),
]


class _Request(BaseModel):
    # Unknown fields are ignored, as postgraas_server 2.x did.
    model_config = ConfigDict(extra="ignore")


class CreateInstanceRequest(_Request):
    postgraas_instance_name: InstanceName = Field(
        validation_alias=AliasChoices("postgraas_instance_name", "postgraas_name")
    )
    db_name: DbName
    db_username: Username
    # Omitted: the server generates a strong one and returns it once.
    db_pwd: Password | None = None
    # The configured backend to create in; default: application.default_backend.
    backend: BackendName | None = None
    # A Postgraas template of the owner's: "NAME" (its newest ready one) or "NAME@HASH"; where there
    # is none, on a cluster backend, a database its admin designated as a template.
    template: TemplateRef | None = None
    ttl: Ttl | None = None
    # False: answer 202 at once and create in the background.
    wait: StrictBool = True
    # "ephemeral": faster writes for a database that may be lost in a crash (tests, CI).
    durability: Literal["durable", "ephemeral"] = "durable"


class DeleteInstanceRequest(_Request):
    # Required without a token (auth.mode none); with one, optional but checked if sent.
    db_pwd: StrictStr | None = None
    force: StrictBool = False


class ExtendInstanceRequest(_Request):
    db_pwd: StrictStr | None = None
    # From now; null: no expiry (only where no max_ttl is configured).
    ttl: Ttl | None


T = TypeVar("T", bound=BaseModel)

_TYPE_MESSAGES = {
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
}
# A ttl is a number or a duration string: its message says both.
_TTL_TYPE = "must be a number of seconds or a string like '30m', '2h', '7d'"


def parse_request(model: type[T], body: Any) -> T:
    """Validate a JSON body; raise InvalidRequest (400) listing every bad field, or
    Unprocessable (422) when the only problem is a reserved value."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors: dict[str, str] = {}
        reserved_only = True
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else "body"
            message = _TTL_TYPE if field == "ttl" and err["type"] == "int_type" else None
            errors.setdefault(field, message or _TYPE_MESSAGES.get(err["type"], err["msg"]))
            reserved_only &= err["type"] == "reserved"
        fields = ", ".join(f"{k} {v}" for k, v in errors.items())
        if reserved_only:
            raise Unprocessable(f"The request cannot be accepted: {fields}.", errors) from None
        raise InvalidRequest(f"The request has invalid fields: {fields}.", errors) from None


def connection_uri(user: str, password: str | None, host: str, port: int, db_name: str) -> str:
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    host_part = f"[{host}]" if ":" in host else host
    return f"postgresql://{auth}@{host_part}:{port}/{quote(db_name, safe='')}"


class InstanceOut(BaseModel):
    """An instance as GET shows it. The 2.x field names (id, username, hostname, password) stay."""

    postgraas_instance_id: int
    postgraas_instance_name: str
    db_name: str
    db_username: str
    host: str | None
    port: int | None
    container_id: str | None
    backend: str
    status: str
    status_detail: str | None
    durability: str
    # The token owner that created it ("" without tokens): an admin token's list holds every owner's.
    owner: str
    expires_at: datetime | None
    # Item GET only: what the backend reports now (running, stopped, missing, unknown).
    backend_state: str | None = None
    connection_uri: str | None
    creation_timestamp: datetime
    id: int
    username: str
    hostname: str | None
    # Always empty: postgraas_server 2.x clients expect the key, nobody gets the value.
    password: str = ""

    @classmethod
    def from_row(cls, row: InstanceRow, backend_state: str | None = None) -> InstanceOut:
        return cls(**cls.fields_of(row, backend_state))

    @staticmethod
    def fields_of(row: Any, backend_state: str | None = None) -> dict[str, Any]:
        """The fields for a row, not yet validated: a list validates them all in one call."""
        return dict(
            backend_state=backend_state,
            postgraas_instance_id=row.id,
            postgraas_instance_name=row.postgraas_instance_name,
            db_name=row.db_name,
            db_username=row.username,
            host=row.hostname,
            port=row.port,
            container_id=row.container_id,
            backend=row.backend,
            status=row.status,
            status_detail=row.status_detail,
            durability=row.durability,
            owner=row.owner,
            expires_at=row.expires_at,
            connection_uri=(
                connection_uri(row.username, None, row.hostname, row.port, row.db_name)
                if row.hostname and row.port
                else None
            ),
            creation_timestamp=row.creation_timestamp,
            id=row.id,
            username=row.username,
            hostname=row.hostname,
        )


class CreatedInstanceOut(InstanceOut):
    """The answer to a create: the only response that carries db_pwd."""

    db_pwd: str

    @classmethod
    def from_created(cls, row: InstanceRow, db_pwd: str) -> CreatedInstanceOut:
        state = "running" if row.status == "ready" else None
        out = InstanceOut.from_row(row, backend_state=state).model_dump()
        if row.hostname and row.port:
            out["connection_uri"] = connection_uri(row.username, db_pwd, row.hostname, row.port, row.db_name)
        return cls(**out, db_pwd=db_pwd)


def render(model: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude=exclude)
